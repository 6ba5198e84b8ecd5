"""Benchmarks 1 and 6: the terminal's overhead of a sale, and its memory over many sales.

The terminal runs on this process's loop with simulated peripherals (firmware.sim.runner);
the acquirer simulator runs in a process of its own on 127.0.0.1 and answers at once, so
its CPU and its ledger commits are not counted as the terminal's. Each sale is a
contactless tap of the catalog's "approve" card under the CVM limit (no PIN).

Overhead: from the card's last APDU answer (the card read complete) to the merchant copy's
bytes handed to the printer (SimPrinter.print_receipt entered): journal commits, 0200
build, MAC, send, the host's answer, decode, check, the outcome's commit, receipt layout.
Floor, same run, same kinds of parts: Journal.record_request (commit 1), an 0800 echo
exchanged with the same host over an AcquirerLink (encode-send-receive-decode), then
Journal.record_response (commit 2), on a journal worker. A third row times the TRUNCATE
checkpoint (Journal.purge_card_data) the SAF task runs after an acknowledgement.
Memory: RSS of this process after start (online, after the warm-up sales) and every tenth
of the sales; the slope is a least-squares fit over those points, in MB per 1,000 sales.
A second slope over the last half of the points says whether RSS levels off (SQLite's page
cache, 2 MB a connection, fills over the first few thousand sales and then stops).
The simulator's RecordingDisplay (a list of every screen shown, a test aid) is emptied after
each sale so that only the terminal's own memory is measured. "After start" is read after
the warm-up sales, so it includes the terminal's trim at idle (firmware.memtrim).
sim.toml's limits are kept (a 600 s velocity window: at the bench's pace it holds every sale
of the run; Journal.risk_history sums them in SQL, a few rows whatever the pace).
"""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from bench.common import (CARD, Result, Size, Target, acquirer_process, ms, rss_mb, sim_config,
                          tap_sale)
from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink
from firmware.bridge import Worker
from firmware.emv.kernel import read_card
from firmware.emv.reader import TerminalParams
from firmware.journal import Journal
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import load_catalog
from firmware.sim.runner import sim_session
from firmware.vault import Vault

__all__ = ["run_overhead", "run_memory", "emulated_card"]

AMOUNT = 10  # minor units: 0.10 CNY a sale, so 100,000 fit the card's balance
WARM_UP = 5  # sales not timed: first connection, imports, caches
FLAT_MB_PER_1000 = 1.0  # "flat": RSS grows less than this per 1,000 sales
FLAT_JUDGED_FROM = 5000  # sales: fewer cannot tell SQLite's page cache filling from a leak
# Sales per batch: the batch is closed as a settlement's first commit does (no 0500: the
# bench measures sales), under [settlement] max_batch_txns (500 by default).
CLOSE_BATCH_EVERY = 400


def emulated_card(amount: int = AMOUNT, *, contactless: bool = False):
    """The "approve" card's data as the kernel reads it from the emulator (chip by default:
    the host wants a PIN with it; contactless: none under the CVM limit). Blocking."""
    catalog = load_catalog()
    emulator = CardEmulator(catalog.cards[CARD], catalog.imk_ac, contactless=contactless)
    return read_card(emulator.transmit, TerminalParams(), amount=amount, currency=156,
                     when=datetime.now(), unpredictable=bytes(4), contactless=contactless)


class _Stopwatch:
    """Wraps a session's reader and printer: the last APDU answered, the first print entered."""

    def __init__(self, session):
        self.last_apdu = self.printed = 0.0
        reader, printer = session.reader, session.printer
        transmit, print_receipt = reader.transmit, printer.print_receipt

        def timed_transmit(apdu: bytes) -> bytes:
            answer = transmit(apdu)
            if not self.printed:  # not a presence check after the sale
                self.last_apdu = time.perf_counter()
            return answer

        def timed_print(raw: bytes, preview: str, name: str) -> None:
            if not self.printed:
                self.printed = time.perf_counter()
            print_receipt(raw, preview, name)
        reader.transmit, printer.print_receipt = timed_transmit, timed_print

    def take(self) -> float:
        elapsed, self.printed = self.printed - self.last_apdu, 0.0
        return elapsed


async def _session(cfg, port: int, count: int, checkpoints: int = 0):
    """`count` sales; (overhead seconds per sale, [(sales done, RSS MB)])."""
    cfg = replace(cfg, acquirer=replace(cfg.acquirer, host="127.0.0.1", port=port))
    async with sim_session(cfg, start_acquirer=False) as session:
        await asyncio.wait_for(session.terminal.online.wait(), 10)
        watch = _Stopwatch(session)
        for _ in range(WARM_UP):
            await tap_sale(session, AMOUNT)
        rss, every = [(0, rss_mb())], max(1, count // max(1, checkpoints))
        overhead = []
        for done in range(1, count + 1):
            if done % CLOSE_BATCH_EVERY == 0:  # the batch-full rule would refuse sale 501
                await session.terminal.journal_call(lambda journal: journal.close_batch())
            await tap_sale(session, AMOUNT)
            overhead.append(watch.take())
            session.display.history.clear()  # the simulator's screen log, not the terminal's
            if checkpoints and done % every == 0:
                rss.append((done, rss_mb()))
    return overhead, rss


async def _floor(tmp: Path, cfg, port: int, count: int) -> tuple[list[float], list[float]]:
    """(record_request + echo + record_response seconds, purge_card_data seconds) per round."""
    ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
    worker = Worker("journal")
    journal = await worker.run(Journal, tmp / "floor.db", Vault.open(tmp / "floor.key"))
    card = await worker.run(emulated_card)
    link = AcquirerLink("127.0.0.1", port, connect_timeout=5.0, response_timeout=5.0)
    rounds, purges = [], []
    try:
        for _ in range(count + WARM_UP):
            stan = await worker.run(journal.next_stan)
            request = messages.sale_request(ids, stan=stan, batch=1, amount=AMOUNT, currency=156,
                                            card=card, pin_block=None, now=datetime.now())
            t0 = time.perf_counter()
            txn = await worker.run(lambda: journal.record_request(
                kind="sale", stan=stan, batch=1, amount=AMOUNT, currency=156, card=card,
                request=request, reversible=True))
            await link.exchange(messages.echo_request(ids, stan=stan, batch=1, now=datetime.now()))
            await worker.run(lambda: journal.record_response(
                txn, response_code="00", approved=True, rrn="000000000001", auth_code="000001"))
            t1 = time.perf_counter()
            await worker.run(journal.purge_card_data)
            rounds.append(t1 - t0)
            purges.append(time.perf_counter() - t1)
    finally:
        await link.close()
        await worker.run(journal.close)
        worker.shutdown()
    return rounds[WARM_UP:], purges[WARM_UP:]


def run_overhead(size: Size) -> list[Result]:
    count = size.pick(10, 200, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = sim_config(tmp)
        with acquirer_process(tmp / "acquirer.db") as (port, _):
            overhead, _ = asyncio.run(_session(cfg, port, count))
            floor, purge = asyncio.run(_floor(tmp, cfg, port, count))
    floor_ms = statistics.median(ms(floor))
    return [
        Result("sale overhead (card read -> receipt to printer)", "ms", ms(overhead),
               floor=floor_ms, target=Target("median", "<", 10.0)),
        Result("  floor: 2 journal commits + echo round trip", "ms", ms(floor)),
        Result("  TRUNCATE checkpoint after an ack (purge)", "ms", ms(purge),
               note="SAF task, after the sale; not in the sale's path"),
    ]


def run_memory(size: Size) -> list[Result]:
    count = size.pick(20, 1000, 10_000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with acquirer_process(tmp / "acquirer.db") as (port, _):
            _, rss = asyncio.run(_session(sim_config(tmp), port, count, checkpoints=10))
    half = [point for point in rss if point[0] >= count // 2]
    # the "flat" is over 10,000 sales (--long); a shorter run shows its slope unjudged
    flat = Target("max", "<", FLAT_MB_PER_1000) if count >= FLAT_JUDGED_FROM else None
    unjudged = ("" if flat else
                f"; not judged under {FLAT_JUDGED_FROM:,} sales (page cache filling): --long")
    return [
        Result("RSS after start (online)", "MB", [rss[0][1]], target=Target("max", "<", 80.0)),
        Result(f"RSS after {count} sales", "MB", [rss[-1][1]], target=Target("max", "<", 80.0)),
        Result("RSS slope per 1,000 sales", "MB", [_slope(rss) * 1000], target=flat,
               note=f"least squares over {len(rss)} points, {count} sales measured{unjudged}"),
        Result("  RSS slope, last half of the sales", "MB", [_slope(half) * 1000], target=flat,
               note=f"{len(half)} points from sale {half[0][0]}: levelling off?"),
    ]


def _slope(points: list[tuple[int, float]]) -> float:
    """MB per sale, least squares."""
    xs, ys = zip(*points)
    return statistics.linear_regression(xs, ys).slope
