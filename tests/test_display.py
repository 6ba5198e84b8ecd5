"""RecordingDisplay: every screen by default (tests read history whole), the newest ones
only with `keep` (kpos sim runs for days), and wait_for by mark() either way."""
import asyncio

import pytest

from firmware.flows.types import Screen
from firmware.hal.display import RecordingDisplay


def screen(n: int) -> Screen:
    return Screen(f"S{n}", (f"line {n}",))


def test_without_keep_every_screen_stays():
    display = RecordingDisplay()
    for n in range(5000):
        display.show(screen(n))
    assert len(display.history) == 5000 and display.mark() == 5000 and display.dropped == 0


def test_keep_bounds_the_history_and_mark_keeps_counting():
    display = RecordingDisplay(keep=100)
    for n in range(1000):
        display.show(screen(n))
        assert 1 <= len(display.history) <= 200
    assert display.mark() == 1000
    assert display.current.title == "S999"
    assert display.history[0].title == f"S{display.dropped}"  # oldest kept = count dropped
    assert len(display.history) >= 100


def test_wait_for_counts_screens_across_drops():
    async def main():
        display = RecordingDisplay(keep=10)
        for n in range(25):
            display.show(screen(n))
        mark = display.mark()
        display.history[-1] = Screen("old", ("needle",))  # shown before the mark
        waiter = asyncio.ensure_future(display.wait_for("needle", timeout=2.0, since=mark))
        await asyncio.sleep(0)
        for n in range(25, 60):  # enough to drop again while waiting
            display.show(screen(n))
        display.show(Screen("again", ("needle",)))
        found = await waiter
        assert found.title == "again"
        # since before the oldest kept screen: the search starts there
        assert (await display.wait_for("S5", timeout=0.5, since=0)).title == "S50"
        with pytest.raises(TimeoutError):
            await display.wait_for("S1\n", timeout=0.05, since=0)  # dropped: not searched
        assert (await display.wait_for("line 59", timeout=0.5, since=mark)).title == "S59"
    asyncio.run(main())
