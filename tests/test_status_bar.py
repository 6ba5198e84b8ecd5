"""The status bar on a real graphic display: the terminal, run against the acquirer
simulator over TCP with a luma panel (luma's dummy device), redraws the bar each time the
link or the store-and-forward queue changes: ONLINE Q:0, OFFLINE Q:1 after an offline
sale while the acquirer is down, ONLINE Q:0 again once the advice is forwarded."""
from __future__ import annotations

import asyncio
import threading

import pytest
from luma.core.device import dummy
from PIL import Image

from conftest import SIM_TOML, run_bounded, sim_overrides
from firmware.config import load_config
from firmware.flows.types import LinkStatus, Screen
from firmware.hal.display_luma import LumaDisplay
from firmware.hal.render import render
from firmware.sim import runner
from scenario import play

BLANK = Screen("KPOS", ())
WAIT = 20.0  # s, for the frame showing a status


class WatchedPanel(dummy):
    """luma's dummy device; a test thread can wait for a frame that passes a check."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._frames = threading.Condition()

    def display(self, image: Image.Image) -> None:
        with self._frames:
            super().display(image)
            self._frames.notify_all()

    def wait_for(self, check, timeout: float) -> bool:
        with self._frames:
            return self._frames.wait_for(lambda: self.image is not None and check(self.image),
                                         timeout)


class StatusBar:
    """The bar region of a panel's frames: from its separator (the lowest full-width line
    of a blank screen with a status) to the bottom."""

    def __init__(self, size: tuple[int, int], mode: str):
        self.size, self.mode = size, mode
        grey = render(BLANK, size, mode=mode, status=LinkStatus(True, 0)).convert("L")
        self.top = next(y for y in reversed(range(size[1]))
                        if all(grey.getpixel((x, y)) for x in range(size[0])))

    def of(self, frame: Image.Image) -> bytes:
        return frame.crop((0, self.top, self.size[0], self.size[1])).tobytes()

    def showing(self, status: LinkStatus) -> bytes:
        return self.of(render(BLANK, self.size, mode=self.mode, status=status))


def config(tmp_path):
    over = sim_overrides(tmp_path, echo_interval=1)
    over["saf"] = {"retry_first": 0.2, "retry_max": 1.0}
    return load_config(SIM_TOML, overrides=over)


@pytest.mark.parametrize("width, height, mode", [(240, 240, "RGB"), (128, 64, "1")])
def test_status_bar_follows_the_link_and_the_queue(tmp_path, width, height, mode):
    panel = WatchedPanel(width=width, height=height, mode=mode)
    display = LumaDisplay(panel)
    bar = StatusBar(panel.size, mode)
    assert bar.showing(LinkStatus(True, 0)) != bar.showing(LinkStatus(False, 1))

    async def shows(status: LinkStatus) -> bool:
        wanted = bar.showing(status)
        return await asyncio.to_thread(panel.wait_for, lambda f: bar.of(f) == wanted, WAIT)

    async def go():
        async with runner.sim_session(config(tmp_path), forward_display=display) as session:
            await play(session, "expect signon")
            assert await shows(LinkStatus(True, 0)), "no ONLINE Q:0 bar after sign-on"
            await play(session, """
                acquirer down
                keys 5000 ENTER
                expect screen "Insert, tap or swipe"
                tap approve
                expect screen "Approved offline"
                expect screen "Take receipts"
                expect queue 1
                keys ENTER
                expect screen "OFFLINE  queued 1"
            """)
            assert await shows(LinkStatus(False, 1)), "no OFFLINE Q:1 bar after the offline sale"
            await play(session, """
                acquirer up
                expect queue 0 within 15
                expect screen "ONLINE  queued 0" within 15
            """)
            assert await shows(LinkStatus(True, 0)), "no ONLINE Q:0 bar after the forward"

    try:
        run_bounded(go(), 90)
    finally:
        display.close()
    assert display.fault == ""
