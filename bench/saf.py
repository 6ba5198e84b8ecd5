"""Benchmark 3: forwarding a long store-and-forward queue to the acquirer simulator.

A fresh journal holds `count` offline approvals (catalog card "approve", a real ARQC in
field 55), each with its 0220 advice queued; the set-up is not measured. Each run copies it,
starts the acquirer simulator in its own process (fresh ledger: every advice is new to it)
and lets StoreAndForward.run() drain the queue (journal commits, sealed-data opening,
encode, send, the host's decision and ledger write, decode, the TRUNCATE checkpoint after
each acknowledged batch). Floor: as many 0800 echoes sent back to back through the same
AcquirerLink, no journal. Row: advices/s per run, target >= 1,000/s.
`fill` is also the keypad benchmark's queue. Async parts run on the caller's loop.
"""
from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.common import Result, Size, Target, acquirer_process, sim_config
from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink
from firmware.bridge import Worker
from firmware.journal import JOURNAL_NAME, Journal
from firmware.saf import LinkState, StoreAndForward
from firmware.vault import Vault

__all__ = ["run", "fill", "build_queue"]

AMOUNT, CNY = 10, 156  # 10 fen each: the card's balance covers 100,000
WAIT = 600.0  # s, upper bound for one drain


def fill(journal: Journal, ids: messages.TerminalIds, count: int) -> None:
    """Journal worker: `count` offline approvals with their 0220 advices."""
    from bench.sale import emulated_card
    card = emulated_card(AMOUNT)
    batch = journal.batch_no()
    for _ in range(count):
        stan = journal.next_stan()
        sale = messages.sale_request(ids, stan=stan, batch=batch, amount=AMOUNT, currency=CNY,
                                     card=card, pin_block=None, now=datetime.now())
        journal.record_offline_approval(
            kind="sale", stan=stan, batch=batch, amount=AMOUNT, currency=CNY, card=card,
            advice=messages.advice_request(sale, code="00", icc_data=None), code="00")


async def build_queue(path: Path, vault: Vault, ids: messages.TerminalIds, count: int) -> None:
    worker = Worker("journal")
    journal = await worker.run(Journal, path, vault)
    try:
        await worker.run(fill, journal, ids, count)
    finally:
        await worker.run(journal.close)
        worker.shutdown()


async def _one_run(cfg, journal_path: Path, vault: Vault, port: int, count: int) -> tuple[float, float]:
    """(advices/s drained by StoreAndForward, echoes/s over the same link)."""
    ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
    worker = Worker("journal")
    journal = await worker.run(Journal, journal_path, vault)
    link = AcquirerLink("127.0.0.1", port, connect_timeout=5.0, response_timeout=5.0)
    drained = asyncio.Event()

    def on_status(state: LinkState) -> None:
        if state.online and state.stats.queued == 0:
            drained.set()
    saf = StoreAndForward(link, lambda fn: worker.run(fn, journal), ids, cfg.saf,
                          echo_interval=3600.0, now=datetime.now, on_status=on_status)
    try:
        t0 = time.perf_counter()
        task = asyncio.create_task(saf.run())
        async with asyncio.timeout(WAIT):
            await drained.wait()
        saf_rate = count / (time.perf_counter() - t0)
        task.cancel()
        await asyncio.wait([task])
        stats = await worker.run(journal.queue_stats)
        if stats.alerts or stats.queued:
            raise RuntimeError(f"drain incomplete: {stats}")
        t0 = time.perf_counter()
        for n in range(count):
            await link.exchange(messages.echo_request(ids, stan=n % 999_999 + 1, batch=1,
                                                      now=datetime.now()))
        bare_rate = count / (time.perf_counter() - t0)
    finally:
        await link.close()
        await worker.run(journal.close)
        worker.shutdown()
    return saf_rate, bare_rate


def run(size: Size) -> list[Result]:
    count, runs = size.pick(100, 2000, 10_000), size.pick(1, 3, 3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = sim_config(tmp)
        ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
        vault = Vault.open(tmp / "vault.key")
        asyncio.run(build_queue(tmp / JOURNAL_NAME, vault, ids, count))
        rates = []
        for n in range(runs):
            run_journal = tmp / f"run{n}.db"
            shutil.copyfile(tmp / JOURNAL_NAME, run_journal)
            with acquirer_process(tmp / f"acquirer{n}.db") as (port, _):
                rates.append(asyncio.run(_one_run(cfg, run_journal, vault, port, count)))
    return [Result(f"SAF drain, {count} advices", "advices/s", [r[0] for r in rates],
                   floor=statistics.median(r[1] for r in rates), target=Target("median", ">=", 1000.0),
                   note=f"floor: 0800 echoes/s on the same link; batch {cfg.saf.batch}")]
