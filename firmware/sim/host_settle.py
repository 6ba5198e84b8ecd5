"""Acquirer simulator: settlement (0500/0510) and batch upload (0320/0330).

install(sim) routes both MTIs to this family (AcquirerSimulator.route). Handlers run on
the simulator's ledger thread; they read the ledger's `authorisations` and keep their own
tables (`settlements`: every 0500 and end of upload; `batch_uploads`: one row per uploaded
transaction). docs/acquirer-protocol.md §13:
- 0500, 60.3 201: the terminal's totals (48) against the ledger's for its terminal id and
  batch (60.2): approved, unreversed decisions, by firmware.txnkinds totals (an offline
  sale advice is a debit; a void or completion void takes one debit of its amount out).
  Equal: 48 answered with last digit "1" (balanced), else "2" (out of balance). While
  `sim.settle_unbalanced` > 0 (a knob, set on the loop thread) the answer is "2" anyway
  and the knob counts down: a forced batch upload.
- 0320, 60.3 201: one uploaded transaction, keyed by terminal + its batch and STAN (61):
  recorded once; a repeat is answered 00 again and counted in `repeats`. 60.3 202: the
  end of the upload, recorded. Both answered 00.
- 0500, 60.3 207 (after upload): "1" when the approved uploaded items (STAN, amount) are
  exactly the ledger's counted decisions of that batch, else "2"; the host takes the
  terminal's totals for its report either way.
Unknown terminal: 03; a malformed 48 or 61: 30; another 60.3: 12. No card data is read or
stored (an upload carries none).
"""
from __future__ import annotations

import logging
from datetime import datetime

from firmware.acquirer.messages import MessageError
from firmware.settlement import (
    MGMT_AFTER_UPLOAD, MGMT_SETTLE, MGMT_UPLOAD, MGMT_UPLOAD_DONE, parse_totals_field,
)
from firmware.txnkinds import CREDIT, DEBIT, KINDS, VOID

__all__ = ["install", "host_totals", "SCHEMA"]

log = logging.getLogger("kpos.sim.acquirer")

SCHEMA = """
CREATE TABLE IF NOT EXISTS settlements (
    id INTEGER PRIMARY KEY, tid TEXT NOT NULL, batch TEXT NOT NULL, mti TEXT NOT NULL,
    mgmt TEXT NOT NULL, terminal_totals TEXT NOT NULL, host_totals TEXT NOT NULL,
    verdict TEXT NOT NULL, forced INTEGER NOT NULL DEFAULT 0, operator TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batch_uploads (
    tid TEXT NOT NULL, batch TEXT NOT NULL, stan TEXT NOT NULL, date TEXT NOT NULL,
    kind TEXT NOT NULL, amount INTEGER NOT NULL, rc TEXT NOT NULL, rrn TEXT, auth_code TEXT,
    repeats INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
    PRIMARY KEY (tid, batch, stan));
"""
RC_APPROVED, RC_BAD_TERMINAL, RC_BAD_TXN, RC_FORMAT = "00", "03", "12", "30"
ECHO = ("3", "4", "11", "12", "13", "41", "42", "49", "60")
ADVICE_KIND = "advice"  # the ledger's kind of an offline sale advice: a debit
APPROVED_UPLOAD_CODES = ("00", "Y1", "Y3")  # field 39 of an uploaded approval


def install(sim) -> None:
    """Register the handlers on `sim` (firmware.sim.acquirer.AcquirerSimulator)."""
    host = _SettleHost(sim)
    sim.settle_unbalanced = 0
    sim.route("0500", "", host.settle)
    sim.route("0320", "", host.upload)


def _totals_kind(kind: str) -> str | None:
    if kind == ADVICE_KIND:
        return DEBIT
    known = KINDS.get(kind)
    return known.totals if known is not None else None


def _counted(db, tid: str, batch: str) -> list[tuple[str, str, int]]:
    """(totals kind, STAN, amount) of the ledger's approved, unreversed decisions that
    count in the batch totals."""
    rows = db.execute("SELECT kind, stan, amount FROM authorisations WHERE tid = ? AND batch = ?"
                      " AND rc = '00' AND reversed = 0 ORDER BY id", (tid, batch)).fetchall()
    return [(t, stan, amount) for kind, stan, amount in rows
            if (t := _totals_kind(kind)) in (DEBIT, CREDIT, VOID)]


def host_totals(db, tid: str, batch: str) -> tuple[int, int, int, int]:
    """(debit count, debit amount, credit count, credit amount) the ledger holds for the
    terminal's batch (60.2 text)."""
    sums = {DEBIT: [0, 0], CREDIT: [0, 0]}
    for totals, _stan, amount in _counted(db, tid, batch):
        key, sign = (DEBIT, -1) if totals == VOID else (totals, 1)
        sums[key][0] += sign
        sums[key][1] += sign * amount
    return (*sums[DEBIT], *sums[CREDIT])


class _SettleHost:
    """The handlers, bound to one simulator (ledger thread)."""

    def __init__(self, sim):
        self._sim = sim
        self._ready = None  # the Ledger whose tables were ensured (a restart opens another)

    def _db(self):
        """The ledger's connection, this family's tables created on first use."""
        ledger = self._sim.ledger
        if self._ready is not ledger:
            ledger.ensure(SCHEMA)
            self._ready = ledger
        return ledger.db

    def _tx(self):
        self._db()
        return self._sim.ledger.tx()

    def settle(self, req: dict, now: datetime) -> dict:
        resp = {k: req[k] for k in ECHO if k in req}
        tid, batch, mgmt = req.get("41", ""), req.get("60", "")[2:8], req.get("60", "")[8:11]
        if tid not in self._sim.catalog.terminal_keys:
            return {**resp, "39": RC_BAD_TERMINAL}
        try:
            terminal = parse_totals_field(req.get("48", ""))
        except MessageError:
            return {**resp, "39": RC_FORMAT}
        if mgmt not in (MGMT_SETTLE, MGMT_AFTER_UPLOAD):
            return {**resp, "39": RC_BAD_TXN}
        db = self._db()
        host = host_totals(db, tid, batch)
        forced = mgmt == MGMT_SETTLE and self._sim.settle_unbalanced > 0
        if forced:
            self._sim.settle_unbalanced -= 1
        if mgmt == MGMT_SETTLE:
            balanced = host == terminal and not forced
        else:
            balanced = self._uploaded(db, tid, batch) == self._ledger_items(db, tid, batch)
        digit = "1" if balanced else "2"
        self._record(req, now, terminal=req["48"], host=host, verdict=digit, forced=forced)
        log.info("settlement %s of terminal %s batch %s: %s%s", mgmt, tid, batch,
                 "balanced" if balanced else "out of balance", " (forced)" if forced else "")
        return {**resp, "39": RC_APPROVED, "48": req["48"][:-1] + digit}

    def upload(self, req: dict, now: datetime) -> dict:
        resp = {k: req[k] for k in ECHO if k in req}
        tid, mgmt = req.get("41", ""), req.get("60", "")[8:11]
        if tid not in self._sim.catalog.terminal_keys:
            return {**resp, "39": RC_BAD_TERMINAL}
        if mgmt == MGMT_UPLOAD_DONE:
            self._record(req, now, terminal=req.get("48", ""), host=None, verdict="", forced=False)
            return {**resp, "39": RC_APPROVED}
        original = req.get("61", "")
        if mgmt != MGMT_UPLOAD:
            return {**resp, "39": RC_BAD_TXN}
        if len(original) != 16 or not req.get("4", "").isdigit() or "39" not in req:
            return {**resp, "39": RC_FORMAT}
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO batch_uploads (tid, batch, stan, date, kind, amount, rc, rrn,"
                " auth_code, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tid, batch, stan) DO UPDATE SET repeats = repeats + 1",
                (tid, original[:6], original[6:12], original[12:16], req.get("48", ""),
                 int(req["4"]), req["39"], req.get("37"), req.get("38"), _stamp(now)))
        return {**resp, "39": RC_APPROVED}

    @staticmethod
    def _uploaded(db, tid: str, batch: str) -> set[tuple[str, int]]:
        rows = db.execute("SELECT stan, amount, kind FROM batch_uploads WHERE tid = ? AND batch = ?"
                          f" AND rc IN ({', '.join('?' * len(APPROVED_UPLOAD_CODES))})",
                          (tid, batch, *APPROVED_UPLOAD_CODES)).fetchall()
        return {(stan, amount) for stan, amount, kind in rows if _totals_kind(kind)}

    @staticmethod
    def _ledger_items(db, tid: str, batch: str) -> set[tuple[str, int]]:
        return {(stan, amount) for _t, stan, amount in _counted(db, tid, batch)}

    def _record(self, req: dict, now: datetime, *, terminal: str, host, verdict: str,
                forced: bool) -> None:
        with self._tx() as tx:
            tx.execute("INSERT INTO settlements (tid, batch, mti, mgmt, terminal_totals,"
                       " host_totals, verdict, forced, operator, created_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (req["41"], req["60"][2:8], req["t"], req["60"][8:11], terminal,
                        "" if host is None else ",".join(map(str, host)), verdict, forced,
                        req.get("63", "").strip(), _stamp(now)))


def _stamp(now: datetime) -> str:
    return now.isoformat(timespec="seconds")
