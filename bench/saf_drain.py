"""Benchmark: forwarding a long store-and-forward queue to the acquirer simulator.

A fresh journal holds --count offline approvals (catalog card "approve", a real ARQC in
field 55), each with its 0220 advice queued; the set-up is not measured. Each run starts
the acquirer simulator in a process of its own on 127.0.0.1 (fresh ledger: every advice
is new to it), lets StoreAndForward.run() drain the queue (journal commits, sealed-data
opening, encode, send, the host's decision and ledger write, decode), then times the bare
floor over the same connection: as many echo tests (0800/0810) sent back to back through
the same AcquirerLink, no journal. Prints advices/s, echoes/s and their ratio per run and
the median of the runs; exits 1 when the median advices/s is under --target.

    .venv/bin/python bench/saf_drain.py [--count 10000] [--runs 3] [--target 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink
from firmware.bridge import Worker
from firmware.config import load_config
from firmware.emv.kernel import read_card
from firmware.emv.reader import TerminalParams
from firmware.journal import JOURNAL_NAME, Journal
from firmware.saf import LinkState, StoreAndForward
from firmware.sim.acquirer import AcquirerSimulator
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import load_catalog
from firmware.vault import Vault

REPO = Path(__file__).resolve().parent.parent
CARD, AMOUNT, CNY = "approve", 10, 156  # 10 fen each: the card's balance covers 100,000
WAIT = 600.0  # s, upper bound for one drain


def host(ledger: str, conn) -> None:
    """Child process: the acquirer simulator on 127.0.0.1; sends its port, serves until killed."""
    async def serve() -> None:
        sim = AcquirerSimulator(load_catalog(), Path(ledger))
        conn.send(await sim.start())
        await asyncio.Event().wait()
    asyncio.run(serve())


def fill(journal: Journal, ids: messages.TerminalIds, count: int) -> None:
    """Journal worker: `count` offline approvals with their 0220 advices."""
    catalog = load_catalog()
    card = read_card(CardEmulator(catalog.cards[CARD], catalog.imk_ac).transmit, TerminalParams(),
                     amount=AMOUNT, currency=CNY, when=datetime.now(), unpredictable=bytes(4))
    if count * AMOUNT > catalog.cards[CARD].balance:
        raise SystemExit(f"--count {count}: over the {CARD} card's balance")
    batch = journal.batch_no()
    for _ in range(count):
        stan = journal.next_stan()
        sale = messages.sale_request(ids, stan=stan, batch=batch, amount=AMOUNT, currency=CNY,
                                     card=card, pin_block=None, now=datetime.now())
        journal.record_offline_approval(
            kind="sale", stan=stan, batch=batch, amount=AMOUNT, currency=CNY, card=card,
            advice=messages.advice_request(sale, code="00", icc_data=None), code="00")


async def build(path: Path, vault: Vault, ids: messages.TerminalIds, count: int) -> None:
    worker = Worker("journal")
    journal = await worker.run(Journal, path, vault)
    try:
        await worker.run(fill, journal, ids, count)
    finally:
        await worker.run(journal.close)
        worker.shutdown()


async def one_run(cfg, journal_path: Path, vault: Vault, port: int, count: int) -> tuple[float, float]:
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
            raise SystemExit(f"drain incomplete: {stats}")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="queued advices (default 10000)")
    parser.add_argument("--runs", type=int, default=3, help="runs, median printed (default 3)")
    parser.add_argument("--target", type=float, default=1000.0, help="advices/s (default 1000)")
    args = parser.parse_args()
    if not 1 <= args.count <= 999_998 or args.runs < 1:
        parser.error("--count must be 1..999998 and --runs >= 1")
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = load_config(REPO / "config" / "sim.toml", overrides={"terminal": {"data_dir": str(tmp)}})
        ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
        vault = Vault.open(tmp / "vault.key")
        t0 = time.perf_counter()
        asyncio.run(build(tmp / JOURNAL_NAME, vault, ids, args.count))
        print(f"set-up: {args.count} queued advices in {time.perf_counter() - t0:.1f} s "
              f"(batch {cfg.saf.batch})")
        rows = []
        for run in range(1, args.runs + 1):
            run_journal = tmp / f"run{run}.db"
            shutil.copyfile(tmp / JOURNAL_NAME, run_journal)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=host, args=(str(tmp / f"acquirer{run}.db"), child), daemon=True)
            proc.start()
            try:
                if not parent.poll(30):
                    raise SystemExit("acquirer simulator did not start")
                rows.append(asyncio.run(one_run(cfg, run_journal, vault, parent.recv(), args.count)))
            finally:
                proc.kill()
                proc.join()
    print(f"{'run':>6} {'advices/s':>10} {'echoes/s':>10} {'ratio':>6}")
    for run, (saf_rate, bare_rate) in enumerate(rows, 1):
        print(f"{run:>6} {saf_rate:10.0f} {bare_rate:10.0f} {saf_rate / bare_rate:6.2f}")
    median = statistics.median(r[0] for r in rows)
    bare = statistics.median(r[1] for r in rows)
    print(f"{'median':>6} {median:10.0f} {bare:10.0f} {median / bare:6.2f}")
    verdict = "OK" if median >= args.target else "UNDER TARGET"
    print(f"target {args.target:.0f} advices/s: {verdict}")
    return 0 if median >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
