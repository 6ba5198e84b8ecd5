"""Power-cut harness (issue 4 point 7, DESIGN §6.4): the real terminal process, killed with
SIGKILL at random instants and at crash points, restarted, then reconciled with the host.

`python -m firmware.sim.powercut [--kills 200] [--seed N] [--workdir DIR] [--jobs 2] [--keep]`
or `run(kills, seed, workdir, jobs) -> Report`. One instance (one per job, in parallel on
one asyncio loop) owns a workdir, an AcquirerSimulator on 127.0.0.1 with its ledger, and a
stream of terminal children (a sim_session with start_acquirer=False, its data dir in the
workdir, short timeouts) that each sell at random until killed: half at a random delay
after the start, half by a crash point (crashpoint.arm, firmware/crashpoint.py; a point not
reached in time ends in a random kill). A child settles from the menu, as the merchant
does, when a sale is refused "Batch full" (a small batch: MAX_BATCH) and at its start when
a kill or a failure left a settlement open. Each child is a process of its own, forked by
multiprocessing's fork server, which imported CHILD_MODULES once (no interpreter start-up
per kill); the fork server lives until this process exits, and a script calling run()
needs the `if __name__ == "__main__"` guard (the server imports the main module).
Meanwhile the instance flips acquirer faults and the network, and now and then makes the
next settlement out of balance (a batch upload; always before a child armed with an
upload.* point). After every death the journal gets PRAGMA integrity_check; after the last
kill a clean child finishes a settlement left open, drains the queue and stops; then
`reconcile()` checks the journal against the ledger (settled batches included) and the
receipt and report files.

Parent: one loop; blocking sqlite reads run in threads (asyncio.to_thread), the fault
schedule's waits are the faults themselves, child deaths (the process sentinel, readable
once the fork server reaped it) and stdout (a pipe) are awaited; a child's start blocks the
loop for the fork server's answer (ms; the first one waits for its imports). Child:
its own loop, driven by display events, never sleeps; it prints one JSON line per sale
and settlement (card name, entry, amount, result screen: never card data) for the parent
to count. Amounts are int minor units. Violations name txn ids, STANs, batches and
catalog card names, never a PAN.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from firmware import crashpoint
from firmware.journal import JOURNAL_NAME
from firmware.operators import DEFAULT_OPERATORS

__all__ = ["Report", "Reconciliation", "run", "reconcile", "child_overrides", "main"]

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "sim.toml"
LEDGER_NAME = "ledger.db"  # the acquirer's ledger, in each instance's workdir
TERMINAL_DIR = "terminal"  # the terminal's data_dir inside the workdir
CHILD_LOG = "terminal.log"  # every child's log (stderr), appended
PIN = "1234"  # the catalog PIN of every test card sold here
FLOOR_LIMIT = 150  # minor units: smaller chip sales of "offline_ok" are approved by the card
# (card, how it is presented, needs a PIN); cards missing from the catalog are skipped.
# "low_balance" (10.00) soon runs dry: declines online, offline approvals declined later.
SALES = (("approve", "insert", True), ("approve", "tap", False), ("offline_pin", "insert", True),
         ("offline_ok", "insert", False), ("offline_ok", "tap", False),
         ("low_balance", "tap", False))
AMOUNTS = (1, 300)  # minor units: under the CVM limit (taps need no PIN), balances last long
# Highest n in KPOS_CRASH_AT "point:n", so that the point is usually reached in a few sales
# or in the first settlement (settle.closed: once a settlement; upload.*: once an uploaded
# sale, ~12 of them in a batch upload, which the parent forces for an upload point).
CRASH_N = {"commit.before": 16, "commit.after": 16, "link.sent": 5, "link.received": 5,
           "print.done": 3, "settle.closed": 1, "upload.sent": 4, "upload.acked": 4}
# [settlement] max_batch_txns of the children. The merchant settles when the batch is full,
# the trigger a real counter sees ("Batch full, settle first"), kept in the journal across
# kills (a child sells ~10 times before its kill: a count of its own sales would restart at
# every kill). 20 fills in ~2 children, so a child armed with a settlement point usually
# settles before its crash limit, and a long run settles hundreds of batches.
MAX_BATCH = 20
# Seconds after the fork. A child used to spend its first ~0.5 s importing (a fresh
# interpreter); forked from the fork server it starts the terminal at once, so both windows
# moved 0.5 s earlier: the same start-up (recovery, sign-on) and the same selling time.
RANDOM_KILL_S = (0.05, 2.0)  # a random instant, start-up included
CRASH_LIMIT_S = (2.5, 5.5)  # a crash point not reached by then: killed at that instant
SALE_LIMIT_S = 40.0  # one sale (faults included) longer than this: the terminal is stuck
DRAIN_LIMIT_S = 90.0  # the last child's wait for an empty queue
MAX_BAD_EXITS = 5  # children in a row that died otherwise than by SIGKILL: give up
FAULTS = (("drop",), ("delay", "1.6"), ("disconnect",), ("close_before_read",),
          ("close_mid_frame",), ("garble",), ("wrong_stan",), ("answer_twice",))
# A fault's MTI filter: every request (twice as likely), sales and advices, advices only,
# reversals, sign-on and echo tests.
FAULT_MTIS = ("", "", "02", "022", "04", "08")
COPIES = ("merchant", "customer")
# Manager > Settlement, then the seeded supervisor's number and password (config/sim.toml
# seeds DEFAULT_OPERATORS), keyed at once (the flow takes keys in order); bench/soak.py
# keys them too.
_SUPERVISOR = next(op for op in DEFAULT_OPERATORS if op[1] == "supervisor")
SETTLE_KEYS = ("MENU", "9", "2", *_SUPERVISOR[0], "ENTER", *_SUPERVISOR[2], "ENTER")
# The fork server's imports, done once: a child starts selling without an interpreter
# start-up (a fresh `python` took ~0.5 s of imports per kill). Not this module (~20 ms):
# under `python -m` each child runs it as its main module, which must not be imported yet.
CHILD_MODULES = ("firmware.sim.runner", "firmware.config", "firmware.flows.types")
_FORKS = multiprocessing.get_context("forkserver")
_RECEIPT_NAME = re.compile(r"(\d{6})-(\d{6})-(merchant|customer)\.(bin|txt)")
_REPORT_NAME = re.compile(r"settle-(\d{6})\.(bin|txt)")  # a settlement report (app_menu)


def child_overrides(workdir: Path, port: int) -> dict:
    """config/sim.toml overrides for a child: short timeouts, data in `workdir`, the
    parent's acquirer on `port`."""
    return {
        "terminal": {"data_dir": str(workdir / TERMINAL_DIR)},
        "acquirer": {"host": "127.0.0.1", "port": port, "response_timeout": 1.0,
                     "connect_timeout": 0.5, "echo_interval": 1},
        "timeouts": {"card": 5, "pin": 5, "result": 1},
        "emv": {"floor_limit": FLOOR_LIMIT},
        "settlement": {"max_batch_txns": MAX_BATCH},  # full: the cashier settles
        "saf": {"retry_first": 0.2, "retry_max": 1.0},
        "log": {"level": "INFO", "file": ""},
        "sim": {"ledger": str(workdir / "child-unused-ledger.db"), "acquirer_port": 0},
        "operators": {"login": False},  # the configured operator sells; no login screen
    }


# ---- the report ---------------------------------------------------------------------


@dataclass
class Report:
    """What a run did and found; reports of parallel jobs add up (`+`)."""

    kills: Counter = field(default_factory=Counter)  # "random" or crash point -> SIGKILLs
    crash_missed: int = 0  # crash-point plans not reached in time (killed at random instead)
    integrity_checks: int = 0  # PRAGMA integrity_check after a death, all "ok" unless a violation
    sales: int = 0  # sales started at the counter
    outcomes: Counter = field(default_factory=Counter)  # result screen title -> sales
    settlements: int = 0  # settlements started from the menu (a full batch, or open at a start)
    settle_resumed: int = 0  # of which at a start that found a settlement open
    settle_outcomes: Counter = field(default_factory=Counter)  # settlement result screens
    batches_settled: int = 0  # journal: SETTLED batches
    batches_uploaded: int = 0  # of which out of balance at first, settled after an upload
    uploads: int = 0  # journal: uploaded transactions acknowledged (0330)
    in_flight: int = 0  # txns a kill left SENDING (the next start recovered them)
    receipts_owed: int = 0  # approved txns a kill left without receipts (printed at a restart)
    approved_online: int = 0
    approved_offline: int = 0
    offline_declined: int = 0  # offline approvals the acquirer declined when forwarded
    reversed: int = 0  # txns reversed (acknowledged by the acquirer)
    advices: int = 0  # advices forwarded and answered
    repeats: int = 0  # 0221 and 0401 repeats the acquirer saw
    violations: list[str] = field(default_factory=list)
    wall_time: float = 0.0  # seconds (the longest job when added)

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def __add__(self, other: "Report") -> "Report":
        total = Report()
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(total, f.name, max(a, b) if f.name == "wall_time" else a + b)
        return total

    def text(self) -> str:
        points = ", ".join(f"{p} {self.kills[p]}" for p in crashpoint.POINTS if self.kills[p])
        by_point = self.total_kills - self.kills["random"]
        rows = [
            ("kill points (SIGKILL)", self.total_kills),
            ("  by crash point", f"{by_point} ({points or 'none'})"),
            ("  at a random instant", f"{self.kills['random']} (incl. {self.crash_missed} "
                                      "crash points not reached)"),
            ("integrity checks", self.integrity_checks),
            ("sales attempted", self.sales),
            ("  results on screen", ", ".join(f"{k} {n}" for k, n in self.outcomes.most_common())),
            ("settlements from the menu", f"{self.settlements} ({self.settle_resumed} at a start "
                                          "that found one open)"),
            ("  results on screen", ", ".join(
                f"{k} {n}" for k, n in self.settle_outcomes.most_common())),
            ("batches settled (journal)", f"{self.batches_settled} ({self.batches_uploaded} after "
                                          f"a batch upload, {self.uploads} sales uploaded)"),
            ("approved online", self.approved_online),
            ("approved offline", self.approved_offline),
            ("  declined when forwarded", self.offline_declined),
            ("requests in flight at a kill", self.in_flight),
            ("reversals acknowledged", self.reversed),
            ("advices forwarded", self.advices),
            ("repeats (0221, 0401)", self.repeats),
            ("receipts printed after a restart", self.receipts_owed),
            ("violations", len(self.violations)),
            ("wall time", f"{self.wall_time:.1f} s"),
        ]
        lines = [f"{name:<34}{value}" for name, value in rows]
        return "\n".join(lines + [f"VIOLATION {v}" for v in self.violations])


# ---- reconciliation (pure reads of the three outputs) -------------------------------


@dataclass
class Reconciliation:
    approved_online: int = 0
    approved_offline: int = 0
    offline_declined: int = 0
    reversed: int = 0
    advices: int = 0
    repeats: int = 0
    batches_settled: int = 0
    batches_uploaded: int = 0
    uploads: int = 0
    violations: list[str] = field(default_factory=list)


def _read(path: Path, sql: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def reconcile(journal: Path, ledger: Path, receipts: Path, catalog) -> Reconciliation:
    """Check the terminal's journal against the host's ledger and the receipt files, after
    the queues drained (read-only; blocking). Every broken rule is one violation line."""
    from firmware.sim.ledger import pan_key

    txns = _read(journal, """SELECT t.id, t.terminal_id, t.stan, t.batch, t.amount, t.status,
        t.offline_code, t.printed_merchant_at, t.printed_customer_at, r.status AS reversal,
        a.status AS advice FROM txn t LEFT JOIN reversal r ON r.txn_id = t.id
        LEFT JOIN advice a ON a.txn_id = t.id ORDER BY t.id""")
    auths = _read(ledger, "SELECT tid, stan, date, batch, amount, rc, reversed, kind, repeats, "
                          "pan_key FROM authorisations ORDER BY id")
    balances = {row["pan_key"]: row["balance"] for row in _read(ledger, "SELECT * FROM accounts")}
    settlements = _read(journal, """SELECT s.*, (SELECT COUNT(*) FROM batch_upload u WHERE
        u.batch = s.batch AND u.status = 'ACKED') AS uploaded FROM settlement s ORDER BY batch""")
    out = Reconciliation()
    _check_journal(txns, out)
    _check_debits(txns, auths, out)
    _check_receipts(txns, receipts, settlements, out)
    _check_settlements(settlements, ledger, out)
    for card in catalog.cards.values():
        key = pan_key(card.pan)
        moved = card.balance - balances.get(key, card.balance)
        debits = sum(a["amount"] for a in auths if a["pan_key"] == key and _debit(a))
        if moved != debits:
            out.violations.append(f"card {card.name}: balance moved by {moved}, debits {debits}")
    out.repeats = sum(a["repeats"] for a in auths) + _read(
        ledger, "SELECT COUNT(*) FROM reversals WHERE mti = '0401'")[0][0]
    return out


def _debit(auth: sqlite3.Row) -> bool:
    return auth["rc"] == "00" and not auth["reversed"]


def _ledger_key(auth: sqlite3.Row) -> tuple:
    """(tid, batch, STAN) as the journal keeps them; a malformed one matches no row."""
    return (auth["tid"], *(int(auth[k]) if auth[k].isdigit() else auth[k] for k in ("batch", "stan")))


def _where(txn: sqlite3.Row) -> str:
    return f"txn {txn['id']} STAN {txn['stan']:06d}"


def _check_journal(txns: list[sqlite3.Row], out: Reconciliation) -> None:
    """Nothing left in flight or queued after the drain."""
    for t in txns:
        if t["status"] in ("SENDING", "UNKNOWN"):
            out.violations.append(f"{_where(t)}: left {t['status']}")
        if t["reversal"] in ("ARMED", "PENDING", "SENT", "EXPIRED"):
            out.violations.append(f"{_where(t)}: reversal left {t['reversal']}")
        if t["advice"] in ("PENDING", "EXPIRED"):
            out.violations.append(f"{_where(t)}: advice left {t['advice']}")
        out.reversed += t["status"] == "REVERSED"
        out.advices += t["advice"] in ("ACKED", "DECLINED")


def _check_debits(txns: list[sqlite3.Row], auths: list[sqlite3.Row], out: Reconciliation) -> None:
    """Each approval has exactly one debit of its amount; each debit has an approval; no
    tid + STAN + date is debited twice."""
    by_key: dict[tuple, list[sqlite3.Row]] = {}
    for a in auths:
        by_key.setdefault(_ledger_key(a), []).append(a)
    rows = {(t["terminal_id"], t["batch"], t["stan"]): t for t in txns}
    for key, t in rows.items():
        records = by_key.get(key, [])
        debits = [a for a in records if _debit(a)]
        if t["status"] != "APPROVED":
            continue
        out.approved_offline += t["offline_code"] is not None
        if t["offline_code"] is not None and t["advice"] == "DECLINED":
            out.offline_declined += 1
            if debits or not any(a["rc"] not in (None, "00") for a in records):
                out.violations.append(f"{_where(t)}: advice declined, ledger has no decline")
            continue
        if t["offline_code"] is not None:
            if t["advice"] != "ACKED":
                out.violations.append(f"{_where(t)}: offline approval, advice {t['advice']}")
        else:
            out.approved_online += 1
        if len(debits) != 1 or debits[0]["amount"] != t["amount"]:
            amounts = [a["amount"] for a in debits]
            out.violations.append(f"{_where(t)}: approved {t['amount']}, ledger debits {amounts}")
    for a in filter(_debit, auths):
        t = rows.get(_ledger_key(a))
        if t is None or t["status"] != "APPROVED":
            what = f"journal {t['status']}" if t else "no journal row"
            out.violations.append(f"STAN {a['stan']} batch {a['batch']}: charged {a['amount']}, {what}")
    dates = Counter((a["tid"], a["stan"], a["date"]) for a in auths if _debit(a))
    for (tid, stan, date), n in dates.items():
        if n > 1:
            out.violations.append(f"STAN {stan} date {date}: debited {n} times")


def _check_receipts(txns: list[sqlite3.Row], receipts: Path, settlements: list[sqlite3.Row],
                    out: Reconciliation) -> None:
    """Every receipt file has its APPROVED row; every approved row has both copies. Every
    settlement report file has its SETTLED batch; a report marked printed has its files (a
    kill between the SETTLED commit and the print leaves a settled batch without a report:
    `kpos report settlement` prints it)."""
    rows = {(t["batch"], t["stan"]): t for t in txns}
    settled = {s["batch"] for s in settlements if s["status"] == "SETTLED"}
    files, reports = set(), set()
    for path in sorted(receipts.iterdir()) if receipts.is_dir() else ():
        if path.name.startswith("."):  # a write the kill interrupted (never renamed in)
            continue
        if report := _REPORT_NAME.fullmatch(path.name):
            reports.add((int(report[1]), report[2]))
            if int(report[1]) not in settled:
                out.violations.append(f"settlement report {path.name}: batch not settled")
            continue
        match = _RECEIPT_NAME.fullmatch(path.name)
        if match is None:
            out.violations.append(f"receipt file {path.name}: not a receipt name")
            continue
        batch, stan, copy = int(match[1]), int(match[2]), match[3]
        files.add((batch, stan, copy, match[4]))
        t = rows.get((batch, stan))
        if t is None or t["status"] != "APPROVED":
            what = f"journal {t['status']}" if t else "no journal row"
            out.violations.append(f"receipt {path.name}: {what}")
    for t in txns:
        for copy in COPIES if t["status"] == "APPROVED" else ():
            printed = all((t["batch"], t["stan"], copy, ext) in files for ext in ("bin", "txt"))
            if t[f"printed_{copy}_at"] is None or not printed:
                out.violations.append(f"{_where(t)}: approved, {copy} copy not printed")
    for s in settlements:
        if s["report_printed_at"] and not {(s["batch"], "bin"), (s["batch"], "txt")} <= reports:
            out.violations.append(f"batch {s['batch']:06d}: settlement report marked printed, "
                                  "no report file")


def _check_settlements(settlements: list[sqlite3.Row], ledger: Path, out: Reconciliation) -> None:
    """Every settlement SETTLED (none left open after the drain), balanced in the end; the
    totals it settled are the ones its last first-round 0500 (60.3 201) brought the host
    (the ledger's `settlements` record, firmware/sim/host_settle.py) and the ledger's own
    totals of that batch now (nothing moved in a settled batch afterwards)."""
    from firmware.sim.host_settle import host_totals
    from firmware.settlement import BALANCED, MGMT_SETTLE, parse_totals_field

    has_table = _read(ledger, "SELECT 1 FROM sqlite_master WHERE name = 'settlements'")
    sent = {}  # batch -> (tid, the totals of its last 0500 201)
    for row in _read(ledger, "SELECT * FROM settlements ORDER BY id") if has_table else ():
        if row["mti"] == "0500" and row["mgmt"] == MGMT_SETTLE and row["batch"].isdigit():
            sent[int(row["batch"])] = (row["tid"], parse_totals_field(row["terminal_totals"]))
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        for s in settlements:
            where = f"batch {s['batch']:06d}"
            if s["status"] != "SETTLED":
                out.violations.append(f"{where}: settlement left {s['status']}")
                continue
            out.batches_settled += 1
            out.batches_uploaded += s["result"] != BALANCED
            out.uploads += s["uploaded"]
            totals = (s["debit_count"], s["debit_amount"], s["credit_count"], s["credit_amount"])
            if s["detail"] != BALANCED:
                out.violations.append(f"{where}: settled {s['detail']}")
            if s["batch"] not in sent:
                out.violations.append(f"{where}: settled, the ledger has no 0500 of it")
                continue
            tid, host_saw = sent[s["batch"]]
            ledger_now = host_totals(db, tid, f"{s['batch']:06d}")
            if not totals == host_saw == ledger_now:
                out.violations.append(f"{where}: settled totals {totals}, the host was sent "
                                      f"{host_saw}, the ledger holds {ledger_now}")
    finally:
        db.close()


# ---- the parent: acquirer, faults, children, kills ----------------------------------


async def _chaos(acquirer, rng: random.Random, stop: asyncio.Event) -> None:
    """Flip faults and the network at random, and now and then make the next settlement
    out of balance (a batch upload), until `stop`; each flip completes."""
    from firmware.sim.acquirer import Faults

    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.2, 2.0))  # the fault schedule
            return
        roll = rng.random()
        if roll < 0.10:
            await acquirer.go_down()
        elif roll < 0.40:
            await acquirer.go_up()
        elif roll < 0.46:
            await acquirer.restart()
        elif roll < 0.66:
            acquirer.faults.set_to(Faults())
        elif roll < 0.70:  # the next settlement is out of balance: a batch upload
            acquirer.settle_unbalanced = 1
        else:
            words = [*rng.choice(FAULTS)]
            if rng.random() < 0.5:
                words += ["times", str(rng.randint(1, 3))]
            mti = rng.choice(FAULT_MTIS)
            acquirer.faults.set_to(Faults.parse(words + (["mti", mti] if mti else [])))


def _integrity(path: Path) -> str:
    try:
        return "; ".join(row[0] for row in _read(path, "PRAGMA integrity_check"))
    except sqlite3.DatabaseError as exc:
        return str(exc)


def _left_over(path: Path) -> tuple[set[int], set[int]]:
    """(txns in flight, approved txns missing a receipt copy) as a kill left them; nothing
    when the kill came before the first schema migration committed."""
    if not _read(path, "SELECT 1 FROM sqlite_master WHERE name = 'txn'"):
        return set(), set()
    rows = _read(path, "SELECT id, status FROM txn WHERE status = 'SENDING' OR (status = 'APPROVED' "
                       "AND (printed_merchant_at IS NULL OR printed_customer_at IS NULL))")
    return ({r["id"] for r in rows if r["status"] == "SENDING"},
            {r["id"] for r in rows if r["status"] == "APPROVED"})


async def _death(proc: multiprocessing.Process) -> int:
    """Wait for a child's death (its sentinel turns readable once the fork server reaped it,
    no polling); its exit code (-9: SIGKILL)."""
    loop = asyncio.get_running_loop()
    dead = loop.create_future()
    loop.add_reader(proc.sentinel, lambda: dead.done() or dead.set_result(None))
    try:
        await dead
    finally:
        loop.remove_reader(proc.sentinel)
    code = proc.exitcode
    proc.close()
    return code


async def _kill(proc: multiprocessing.Process) -> int:
    """SIGKILL a child (unless it just died on its own); its exit code."""
    if proc.exitcode is None:
        proc.kill()
    return await _death(proc)


class _Instance:
    """One job: a workdir, an acquirer, children until `kills` SIGKILLs, drain, reconcile."""

    def __init__(self, name: str, kills: int, seed: int, workdir: Path, config: Path):
        self.name, self.kills, self.workdir, self.config = name, kills, workdir, config
        self.rng = random.Random(seed)
        self.report = Report()
        self.journal = workdir / TERMINAL_DIR / JOURNAL_NAME
        self.in_flight: set[int] = set()
        self.owed: set[int] = set()
        self.acquirer = None

    def violation(self, text: str) -> None:
        self.report.violations.append(f"{self.name}: {text}")

    async def run(self) -> Report:
        from firmware.sim.acquirer import AcquirerSimulator, Faults
        from firmware.sim.catalog import load_catalog

        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        catalog = load_catalog()
        self.acquirer = AcquirerSimulator(catalog, self.workdir / LEDGER_NAME)
        port = await self.acquirer.start("127.0.0.1", 0)
        try:
            await self._kill_all(port)
            self.acquirer.faults.set_to(Faults())
            await self.acquirer.go_up()
            await self._drain(port)
        finally:
            await self.acquirer.stop()
        found = await asyncio.to_thread(reconcile, self.journal, self.workdir / LEDGER_NAME,
                                        self.workdir / TERMINAL_DIR / "receipts", catalog)
        for name in ("approved_online", "approved_offline", "offline_declined", "reversed",
                     "advices", "repeats", "batches_settled", "batches_uploaded", "uploads"):
            setattr(self.report, name, getattr(found, name))
        for text in found.violations:
            self.violation(text)
        self.report.in_flight, self.report.receipts_owed = len(self.in_flight), len(self.owed)
        self.report.wall_time = time.monotonic() - started
        return self.report

    async def _kill_all(self, port: int) -> None:
        """Children until `kills` SIGKILLs, faults flipping meanwhile."""
        stop = asyncio.Event()
        chaos = asyncio.create_task(_chaos(self.acquirer, random.Random(self.rng.random()), stop))
        try:
            bad_exits = 0
            while (self.report.total_kills < self.kills and bad_exits < MAX_BAD_EXITS
                   and not chaos.done()):  # a fault flip that failed: raised below
                bad_exits = 0 if await self._cycle(port) else bad_exits + 1
        finally:
            stop.set()
            await chaos

    async def _cycle(self, port: int) -> bool:
        """One child from spawn to death; True when it died by SIGKILL."""
        point, crash, limit = "random", "", self.rng.uniform(*RANDOM_KILL_S)
        if self.rng.random() < 0.5:
            point = self.rng.choice([p for p in crashpoint.POINTS if p in CRASH_N])
            crash, limit = f"{point}:{self.rng.randint(1, CRASH_N[point])}", self.rng.uniform(*CRASH_LIMIT_S)
            if point.startswith("upload."):  # the host finds the next batch out of balance
                self.acquirer.settle_unbalanced = 1
        proc, listener = await self._spawn(port, crash=crash)
        try:
            code = await asyncio.wait_for(_death(proc), limit)  # the kill instant: what this harness is for
        except TimeoutError:
            code = await _kill(proc)
            self.report.crash_missed += bool(crash)
            point = "random"
        last = await listener
        killed = code == -signal.SIGKILL
        if killed:
            self.report.kills[point] += 1
        else:
            self.violation(f"child died with code {code} ({last or 'no output'}); "
                           f"see {self.workdir / CHILD_LOG}")
        await self._after_death()
        return killed

    async def _after_death(self) -> None:
        if not self.journal.exists():
            return
        result = await asyncio.to_thread(_integrity, self.journal)
        self.report.integrity_checks += 1
        if result != "ok":
            self.violation(f"integrity_check after a kill: {result}")
            return
        in_flight, owed = await asyncio.to_thread(_left_over, self.journal)
        self.in_flight |= in_flight
        self.owed |= owed

    async def _drain(self, port: int) -> None:
        proc, listener = await self._spawn(port, drain=DRAIN_LIMIT_S)
        try:
            code = await asyncio.wait_for(_death(proc), DRAIN_LIMIT_S + 30)
        except TimeoutError:
            code = await _kill(proc)
        last = await listener
        if code != 0:
            self.violation(f"last child (drain) ended with code {code}: {last or 'no output'}")

    async def _spawn(self, port: int, *, crash: str = "", drain: float = 0.0):
        """Fork a child from the fork server; (the process, the task reading its stdout)."""
        args = argparse.Namespace(workdir=self.workdir, port=port, config=self.config,
                                  seed=self.rng.randrange(2**32), drain=drain)
        # before the first start, which starts the server (whatever calls _spawn); no
        # effect once it runs
        _FORKS.set_forkserver_preload(["__main__", *CHILD_MODULES])
        out_r, w = os.pipe()  # the child's stdout; a Connection is sent with the child's args
        out_w = multiprocessing.connection.Connection(w, readable=False)
        proc = _FORKS.Process(target=_child_process, args=(crash, out_w, args), daemon=True)
        try:
            proc.start()  # blocks a few ms: the fork server forks and answers the pid
        finally:
            out_w.close()
        stdout = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdout), open(out_r, "rb", buffering=0))
        return proc, asyncio.create_task(self._listen(stdout))

    async def _listen(self, stdout: asyncio.StreamReader) -> str:
        """Count the child's sales; the last line it printed (a result or why it stopped)."""
        last = ""
        async for raw in stdout:
            last = raw.decode("utf-8", "replace").strip()
            with contextlib.suppress(ValueError):  # a line the kill cut short
                message = json.loads(last)
                event = message.get("event")
                self.report.sales += event == "sale"
                if event == "result":
                    self.report.outcomes[message["outcome"]] += 1
                elif event == "settle":
                    self.report.settlements += 1
                    self.report.settle_resumed += message["resume"]
                elif event == "settled":
                    self.report.settle_outcomes[message["outcome"]] += 1
        return last


async def _run_all(kills: int, seed: int, workdir: Path, jobs: int, config: Path) -> Report:
    each = math.ceil(kills / jobs)
    instances = [_Instance(f"job {i + 1}", each, seed * 1000 + i, workdir / f"job{i + 1}", config)
                 for i in range(jobs)]
    reports = await asyncio.gather(*(instance.run() for instance in instances))
    total = Report()
    for report in reports:
        total = total + report
    return total


def run(kills: int = 200, seed: int = 1, workdir: Path | None = None, jobs: int = 2,
        config: Path = REPO_CONFIG) -> Report:
    """Run the harness (blocking; makes its own event loop). `workdir` must be new or
    empty; None: a temporary directory the caller may delete."""
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kpos-powercut-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise ValueError(f"power-cut workdir {workdir} is not empty")
    return asyncio.run(_run_all(kills, seed, workdir, jobs, Path(config)))


# ---- the child: a terminal and its cashier ------------------------------------------


def _child_process(crash: str, out, args: argparse.Namespace) -> None:
    """A child's life in the forked process: arm the crash point `crash` first, stdout to
    the `out` pipe (a write-only Connection), stderr appended to the log; exits with
    `_child`'s code."""
    crashpoint.arm(crash)
    os.dup2(out.fileno(), sys.stdout.fileno())
    out.close()
    log = os.open(args.workdir / CHILD_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, sys.stderr.fileno())
    os.close(log)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,  # escpos set one up
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    sys.exit(asyncio.run(_child(args)))


def _emit(**message) -> None:
    """One JSON line to the parent (card names and amounts only)."""
    print(json.dumps(message), flush=True)


async def _child(args) -> int:
    from firmware.config import load_config
    from firmware.sim.runner import sim_session

    cfg = load_config(args.config, overrides=child_overrides(args.workdir, args.port))
    async with sim_session(cfg, start_acquirer=False) as session:
        terminal = session.terminal
        try:
            if await terminal.journal_call(lambda journal: journal.open_settlement()):
                await _settle(session, resume=True)  # a kill or a failure left it open
            if args.drain:
                return await _drain_queue(session, args.drain)
            await _sell_at_random(session, random.Random(args.seed))
        except TimeoutError:
            _emit(event="stuck", phase=terminal.state.phase, sale=terminal.sale_state.phase)
            return 4


async def _sell_at_random(session, rng: random.Random, count: int | None = None) -> None:
    """`count` random sales (None: until killed); a sale refused "Batch full" is followed
    by a settlement."""
    from firmware.app_menu import BATCH_FULL

    sales = [s for s in SALES if s[0] in session.catalog.cards]
    for _ in itertools.count() if count is None else range(count):
        card, how, pin = rng.choice(sales)
        amount = rng.randint(*AMOUNTS)
        _emit(event="sale", card=card, how=how, amount=amount)
        outcome = await _sell(session, card, how, pin, amount)
        _emit(event="result", outcome=outcome)
        if BATCH_FULL in outcome:
            await _settle(session, resume=False)


async def _screens(display, mark: int, limit: float):
    """Yield at each new screen shown after `mark` (display.mark()); TimeoutError once
    `limit` seconds have passed."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        await display.wait_for("", timeout=max(remaining, 0.001), since=mark)  # any new screen
        mark = display.mark()
        yield


async def _sell(session, card: str, how: str, pin: bool, amount: int) -> str:
    """Key the amount, present the card, key the PIN, take the result, remove the card,
    back to idle: each step on the screen it answers. Returns the result screen's title.
    TimeoutError after SALE_LIMIT_S."""
    from firmware.flows.types import Key

    terminal, display, reader = session.terminal, session.display, session.reader
    if reader.present():
        reader.remove()
    mark, done, outcome, left_idle = display.mark(), set(), "", False
    for key in [*str(amount), "ENTER"]:
        terminal.post(Key(key))
    async for _ in _screens(display, mark, SALE_LIMIT_S):
        state = terminal.sale_state
        step = (state.phase, state.token)  # one answer per screen of a phase
        if state.phase == "IDLE":
            if left_idle:
                return outcome
            continue
        left_idle = True
        if step in done:
            continue
        if state.phase == "PRESENT_CARD":
            if any(s[0] == "PRESENT_CARD" for s in done):  # refused: give up this sale
                terminal.post(Key("CANCEL"))
            else:
                reader.insert(card, contactless=how == "tap")
        elif state.phase == "PIN" and state.pin_length == 0:
            for key in [*PIN, "ENTER"]:
                terminal.post(Key(key))
        elif state.phase == "CHOOSE_APP":
            terminal.post(Key("1"))
        elif state.phase == "RESULT":
            outcome = _outcome(display.history[-1])
            terminal.post(Key("ENTER"))
        elif state.phase == "REMOVE_CARD":
            reader.remove()
        else:
            continue
        done.add(step)


async def _settle(session, *, resume: bool) -> None:
    """Settle from the menu as the merchant does: SETTLE_KEYS, ENTER at "Settle batch?",
    ENTER on the result, back to idle (the terminal finishes a settlement left open first,
    then settles the open batch). Reports "Settled" or the failure, numbers as N (ports
    vary). TimeoutError after SALE_LIMIT_S."""
    from firmware.flows.types import Key

    terminal, display = session.terminal, session.display
    _emit(event="settle", resume=resume)
    mark, done, outcome = display.mark(), set(), ""
    for key in SETTLE_KEYS:
        terminal.post(Key(key))
    async for _ in _screens(display, mark, SALE_LIMIT_S):
        phase = terminal.state.phase
        if phase == "IDLE" and "ASK" in done:  # the result's 1 s may pass before this wakes
            _emit(event="settled", outcome=outcome or "result screen not seen")
            return
        if phase in done or phase not in ("ASK", "RESULT"):
            continue
        if phase == "RESULT":
            screen = display.history[-1]
            failed = re.sub(r"\d[\d.:]*", "N", _outcome(screen))
            outcome = screen.title if screen.tone == "ok" else failed
        done.add(phase)
        terminal.post(Key("ENTER"))


def _outcome(screen) -> str:
    """A result screen in a few words: "APPROVED", "DECLINED: Host unreachable PIN needs
    the host", ... (title and message lines; a result screen holds no card data)."""
    if screen.title == "APPROVED":
        return "APPROVED offline" if "Approved offline" in screen.lines else "APPROVED"
    return " ".join((f"{screen.title}:", *screen.lines[:2]))


async def _drain_queue(session, limit: float) -> int:
    """Sell nothing; return 0 once no reversal or advice is pending, 2 after `limit` s.
    Checked at the start and on each screen (the idle screen shows the queue)."""
    display, terminal = session.display, session.terminal
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        mark = display.mark()
        stats = await terminal.journal_call(lambda journal: journal.queue_stats())
        if stats.reversals == 0 and stats.advices == 0:
            _emit(event="drained")
            return 0
        try:
            remaining = deadline - asyncio.get_running_loop().time()
            await display.wait_for("", timeout=max(remaining, 0.001), since=mark)
        except TimeoutError:
            _emit(event="not drained", reversals=stats.reversals, advices=stats.advices)
            return 2


# ---- command line -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.sim.powercut",
                                     description="Kill the terminal at random, then reconcile.")
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs in all (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="new or empty directory (default: a temp dir)")
    parser.add_argument("--jobs", type=int, default=2, help="independent instances in parallel")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--config", type=Path, default=REPO_CONFIG)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.kills < 1 or args.jobs < 1:
        parser.error("--kills and --jobs must be >= 1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kpos-powercut-"))
    report = run(args.kills, args.seed, workdir, args.jobs, args.config)
    keep = args.keep or args.workdir or report.violations
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"power-cut run: {args.kills} kill points asked, seed {args.seed}, {args.jobs} job(s), "
          f"workdir {workdir}{'' if keep else ' (removed)'}")
    print(report.text())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
