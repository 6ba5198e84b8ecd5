"""Benchmark 5: keypad-to-display latency while receipts print and the SAF queue drains.

The journal starts with `queue` offline approvals, each with its 0220 advice queued and both
receipt copies unprinted, so at start the terminal drains the advices to the acquirer
simulator (its own process) and prints the receipt backlog on a slow printer (PRINT_S per
copy, on the printer worker: a real printer's transfer time). Meanwhile keys are posted the
way the keypad thread posts them (Terminal.post) at a cashier's pace (KEY_GAP_S): 1, 2, 3, 4
into the amount, then CANCEL. A sample is the time from the post to display.show() called
with the screen that key causes (amount 0.01, 0.12, 1.23, 12.34, then the idle screen).
Samples are taken only while the queue is not empty and printing goes on. Target p99 < 15 ms.
"""
from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import Result, Size, Target, acquirer_process, ms, sim_config
from bench.saf import build_queue
from firmware.acquirer import messages
from firmware.flows.types import Key
from firmware.hal.display import screen_text
from firmware.journal import JOURNAL_NAME
from firmware.sim.runner import sim_session
from firmware.vault import Vault

__all__ = ["run"]

PRINT_S = 0.05  # s per receipt copy: a slow thermal printer
KEY_GAP_S = 0.01  # s between a screen and the next key press
KEYS = (("1", "CNY 0.01"), ("2", "CNY 0.12"), ("3", "CNY 1.23"), ("4", "CNY 12.34"),
        ("CANCEL", "Key in amount"))
TIMEOUT = 5.0


class _Watch:
    """Wraps the session's display and printer: screens shown (with time), copies printing."""

    def __init__(self, session):
        self.shown = asyncio.Event()
        self.last: tuple[float, str] = (0.0, "")
        self.queued = None  # from the status bar (LinkStatus), None until the first one
        self.printing = False
        display, printer = session.display, session.printer
        show, set_status, print_receipt = display.show, display.set_status, printer.print_receipt

        def timed_show(screen) -> None:
            self.last = (time.perf_counter(), screen_text(screen))
            self.shown.set()
            show(screen)

        def watch_status(status) -> None:
            self.queued = getattr(status, "queued", self.queued)
            set_status(status)

        def slow_print(raw: bytes, preview: str, name: str) -> None:
            self.printing = True
            time.sleep(PRINT_S)  # the printer worker thread is busy, as with a real printer
            print_receipt(raw, preview, name)
        display.show, display.set_status, printer.print_receipt = timed_show, watch_status, slow_print

    def busy(self) -> bool:
        return self.printing and self.queued != 0


async def _press(session, watch: _Watch, key: str, expect: str) -> float:
    watch.shown.clear()
    t0 = time.perf_counter()
    session.terminal.post(Key(key))
    async with asyncio.timeout(TIMEOUT):
        while expect not in watch.last[1] or watch.last[0] < t0:
            await watch.shown.wait()
            watch.shown.clear()
    return watch.last[0] - t0


async def _measure(cfg, port: int, samples: int) -> list[float]:
    cfg = replace(cfg, acquirer=replace(cfg.acquirer, host="127.0.0.1", port=port))
    async with sim_session(cfg, start_acquirer=False) as session:
        watch = _Watch(session)
        await session.display.wait_for("Key in amount", timeout=TIMEOUT)
        latencies = []
        while len(latencies) < samples:
            for key, expect in KEYS:
                await asyncio.sleep(KEY_GAP_S)  # the cashier's pace, not a wait for an event
                latency = await _press(session, watch, key, expect)
                if watch.busy():
                    latencies.append(latency)
            if not watch.busy() and watch.queued == 0:
                break
        session.printer.paper = False  # measured: the backlog stops at this "paper out"
    return latencies


def run(size: Size) -> list[Result]:
    queue, samples = size.pick(100, 2000, 10_000), size.pick(20, 300, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = sim_config(tmp)
        cfg.terminal.data_dir.mkdir(parents=True)
        ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
        vault = Vault.open(cfg.security.vault_key_file)
        asyncio.run(build_queue(cfg.terminal.data_dir / JOURNAL_NAME, vault, ids, queue))
        with acquirer_process(tmp / "acquirer.db") as (port, _):
            latencies = asyncio.run(_measure(cfg, port, samples))
    return [Result("key -> display, receipts printing + SAF draining", "ms", ms(latencies),
                   target=Target("p99", "<", 15.0),
                   note=f"{queue} advices queued, {PRINT_S * 1000:.0f} ms per copy")]
