"""Benchmark: cashier-visible latency of an online chip sale in the simulator.

Runs N sales on loopback (terminal + acquirer simulator in one process) and prints the
median and p90 of: card insert -> PIN screen (chip read), PIN ENTER -> APPROVED (persist,
send, host, record), and APPROVED -> receipts printed. Usage:
    .venv/bin/python bench/sale_latency.py [N]
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from firmware.config import load_config
from firmware.flows.types import Key
from firmware.sim.runner import sim_session

REPO = Path(__file__).resolve().parent.parent


async def one_sale(session, amount: int) -> tuple[float, float, float]:
    display, post = session.display, session.terminal.post
    for key in [*str(amount), "ENTER"]:
        post(Key(key))
    await display.wait_for("Insert", timeout=5, since=len(display.history))
    mark, t0 = len(display.history), time.perf_counter()
    session.reader.insert("approve")
    await display.wait_for("Enter PIN", timeout=5, since=mark)
    t1 = time.perf_counter()
    for key in "1234":
        post(Key(key))
    mark = len(display.history)
    post(Key("ENTER"))
    t2 = time.perf_counter()
    await display.wait_for("APPROVED", timeout=10, since=mark)
    t3 = time.perf_counter()
    await display.wait_for("Take receipts", timeout=10, since=mark)
    t4 = time.perf_counter()
    session.reader.remove()
    post(Key("ENTER"))
    await display.wait_for("Key in amount", timeout=5, since=mark)
    return t1 - t0, t3 - t2, t4 - t3


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "config" / "sim.toml", overrides={
            "terminal": {"data_dir": tmp}, "sim": {"ledger": f"{tmp}/acquirer.db"}})
        async with sim_session(cfg) as session:
            await asyncio.wait_for(session.terminal.online.wait(), 10)
            samples = [await one_sale(session, 100 + i) for i in range(n)]
    for name, values in zip(("chip read (insert -> PIN screen)", "authorise (ENTER -> APPROVED)",
                             "print 2 copies (APPROVED -> done)"), zip(*samples)):
        ms = sorted(v * 1000 for v in values)
        print(f"{name:36s} median {statistics.median(ms):7.2f} ms   p90 {ms[int(len(ms) * 0.9) - 1]:7.2f} ms")
    print(f"sales: {n}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50))
