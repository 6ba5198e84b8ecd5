"""The acquirer simulator's ledger: accounts, session keys, authorisations, advices, reversals.

Blocking sqlite3, one thread: create and use a Ledger on the simulator's single ledger
worker thread only (sqlite3's same-thread check enforces it). Every write is one
`BEGIN IMMEDIATE` transaction, so a debit and its authorisation or advice row (or a credit
and its reversal row) land together or not at all. WAL with synchronous=NORMAL: a commit
survives a crash of this process (the power-cut harness kills the terminal, never the
host), only an OS crash or power loss of the test host could lose the last commits; it
spares the host an fsync per decision, so the SAF benchmark measures the terminal.
Amounts are int minor units. Clear PANs are never stored: accounts and authorisations
hold mask_pan() plus a SHA-256 pan key. Session keys are stored in clear: this is a TEST
host (catalog data only).

`authorisations` holds every decision: online sales (kind "sale") and offline sale
advices (kind "advice", 0220/0221), each with a short log-safe `reason`, the cryptogram
verdict (`arqc`: "verified", "failed", "" = not checked) and, for advices, how many
repeats were answered from the recorded decision (`repeats`). Older ledger files gain
the newer columns when opened.
"""
from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from firmware.cardsafe import mask_pan
from firmware.sim.catalog import Catalog
from firmware.dbutil import immediate

__all__ = ["Ledger", "LedgerError", "Authorisation", "ReversalResult", "pan_key", "PIN_TRIES_LIMIT",
           "SALE", "ADVICE"]

PIN_TRIES_LIMIT = 3
RC_DUPLICATE = "94"
RC_APPROVED = "00"
SALE, ADVICE = "sale", "advice"  # authorisations.kind: an 0200 decision, an 0220/0221 one

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    pan_key TEXT PRIMARY KEY, pan_masked TEXT NOT NULL,
    balance INTEGER NOT NULL, pin_tries INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS session_keys (
    tid TEXT PRIMARY KEY, pik BLOB NOT NULL, mak BLOB NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS authorisations (
    id INTEGER PRIMARY KEY, tid TEXT NOT NULL, stan TEXT NOT NULL, date TEXT NOT NULL,
    batch TEXT NOT NULL, pan_masked TEXT NOT NULL, pan_key TEXT NOT NULL,
    amount INTEGER NOT NULL, rc TEXT, rrn TEXT NOT NULL, auth_code TEXT,
    reversed INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', arqc TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'sale', repeats INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS authorisations_one_approval
    ON authorisations (tid, stan, date) WHERE rc = '00';
CREATE INDEX IF NOT EXISTS authorisations_key ON authorisations (tid, stan, date);
CREATE TABLE IF NOT EXISTS reversals (
    id INTEGER PRIMARY KEY, tid TEXT NOT NULL, stan TEXT NOT NULL, date TEXT NOT NULL,
    mti TEXT NOT NULL, reason TEXT NOT NULL, found INTEGER NOT NULL,
    credited INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Columns added after the first release, for ledgers created before them.
_ADDED_COLUMNS = (("authorisations", "reason", "TEXT NOT NULL DEFAULT ''"),
                  ("authorisations", "arqc", "TEXT NOT NULL DEFAULT ''"),
                  ("authorisations", "kind", "TEXT NOT NULL DEFAULT 'sale'"),
                  ("authorisations", "repeats", "INTEGER NOT NULL DEFAULT 0"))
_AUTH_COLUMNS = ("tid, stan, date, batch, pan_masked, amount, rc, rrn, auth_code, reversed,"
                 " reason, arqc, kind, repeats")


class LedgerError(RuntimeError):
    """A ledger operation is impossible (unknown account, overdraft); message has the context."""


@dataclass(frozen=True)
class Authorisation:
    """One recorded sale or advice decision. rc None means the host chose not to answer."""

    tid: str
    stan: str
    date: str  # MMDD, field 13
    batch: str
    pan_masked: str
    amount: int  # minor units
    rc: str | None
    rrn: str
    auth_code: str | None
    reversed: bool
    reason: str = ""  # why, short and log-safe ("ARQC failed", "insufficient funds")
    arqc: str = ""  # "verified", "failed", or "" = not checked (no chip data / not reached)
    kind: str = SALE  # SALE (0200) or ADVICE (0220/0221)
    repeats: int = 0  # advice repeats answered from this decision


@dataclass(frozen=True)
class ReversalResult:
    found: bool  # an original sale with that tid/stan/date exists
    credited: bool  # this reversal gave money back (approved and not yet reversed)


def pan_key(pan: str) -> str:
    """Lookup key for a PAN (SHA-256 hex). Good enough for a simulator, not for production."""
    return hashlib.sha256(pan.encode("ascii")).hexdigest()


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _authorisation(row: tuple) -> Authorisation:
    """An Authorisation from a row selected as _AUTH_COLUMNS."""
    return Authorisation(*row[:9], reversed=bool(row[9]), reason=row[10], arqc=row[11],
                         kind=row[12], repeats=row[13])


class Ledger:
    """Open (creating if needed) the ledger at `path` and seed accounts from `catalog`.

    Accounts already present keep their balance: a restarted simulator remembers.
    The parent directory is created when missing.
    """

    def __init__(self, path: str | Path, catalog: Catalog):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        with self._tx() as db:
            for card in catalog.cards.values():
                db.execute("INSERT OR IGNORE INTO accounts (pan_key, pan_masked, balance)"
                           " VALUES (?, ?, ?)", (pan_key(card.pan), mask_pan(card.pan), card.balance))

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the simulator's message families (their own tables, reads)."""
        return self._db

    def tx(self):
        """One BEGIN IMMEDIATE transaction (context manager yielding the connection)."""
        return self._tx()

    def ensure(self, schema: str) -> None:
        """Create a message family's tables (CREATE ... IF NOT EXISTS statements)."""
        self._db.executescript(schema)

    def close(self) -> None:
        self._db.close()

    def _add_missing_columns(self) -> None:
        with self._tx() as db:
            for table, column, decl in _ADDED_COLUMNS:
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def _tx(self):
        return immediate(self._db)

    # accounts -----------------------------------------------------------------------

    def _account(self, pan: str) -> tuple[int, int]:
        row = self._db.execute("SELECT balance, pin_tries FROM accounts WHERE pan_key = ?",
                               (pan_key(pan),)).fetchone()
        if row is None:
            raise LedgerError(f"no account for card {mask_pan(pan)}")
        return row

    def has_account(self, pan: str) -> bool:
        return self._db.execute("SELECT 1 FROM accounts WHERE pan_key = ?",
                                (pan_key(pan),)).fetchone() is not None

    def balance(self, pan: str) -> int:
        """Balance in minor units; LedgerError for an unknown card."""
        return self._account(pan)[0]

    def pin_tries(self, pan: str) -> int:
        """Consecutive wrong PINs so far."""
        return self._account(pan)[1]

    def record_pin(self, pan: str, ok: bool) -> int:
        """Reset (correct PIN) or count (wrong PIN) the tries; returns the new count."""
        self._account(pan)
        with self._tx() as db:
            db.execute("UPDATE accounts SET pin_tries = CASE WHEN ? THEN 0 ELSE pin_tries + 1 END"
                       " WHERE pan_key = ?", (ok, pan_key(pan)))
        return self.pin_tries(pan)

    # session keys ---------------------------------------------------------------------

    def set_session_keys(self, tid: str, pik: bytes, mak: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO session_keys (tid, pik, mak, updated_at)"
                       " VALUES (?, ?, ?, ?)", (tid, bytes(pik), bytes(mak), _now()))

    def session_keys(self, tid: str) -> tuple[bytes, bytes] | None:
        """(pik, mak) of the terminal's last sign-on, or None if it never signed on."""
        row = self._db.execute("SELECT pik, mak FROM session_keys WHERE tid = ?", (tid,)).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else None

    # RRN ------------------------------------------------------------------------------

    def _next_rrn(self, db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO counters (name, value) VALUES ('rrn', 1)"
                   " ON CONFLICT(name) DO UPDATE SET value = value + 1")
        value = db.execute("SELECT value FROM counters WHERE name = 'rrn'").fetchone()[0]
        return f"{value:012d}"

    def next_rrn(self) -> str:
        """A fresh 12-digit retrieval reference number, unique across restarts."""
        with self._tx() as db:
            return self._next_rrn(db)

    # authorisations -------------------------------------------------------------------

    def find(self, tid: str, stan: str, date: str) -> Authorisation | None:
        """The original (non-duplicate) sale or advice decision for tid + STAN + MMDD, if any."""
        row = self._db.execute(
            f"SELECT {_AUTH_COLUMNS} FROM authorisations WHERE tid = ? AND stan = ? AND date = ?"
            " AND rc IS NOT '94' ORDER BY id LIMIT 1", (tid, stan, date)).fetchone()
        return _authorisation(row) if row else None

    def authorise(self, *, tid: str, stan: str, date: str, batch: str, pan: str, amount: int,
                  rc: str | None, reason: str = "", arqc: str = "") -> Authorisation:
        """Record a sale decision; on rc "00" debit the account in the same transaction.

        `reason` and `arqc` are stored as given (see Authorisation); never card data.

        Allocates an RRN (and an auth code for approvals). LedgerError, with nothing
        written, if an approval would overdraw or the card has no account.
        """
        return self._record(SALE, tid=tid, stan=stan, date=date, batch=batch, pan=pan,
                            amount=amount, rc=rc, reason=reason, arqc=arqc)

    def advise(self, *, tid: str, stan: str, date: str, batch: str, pan: str, amount: int,
               rc: str, reason: str = "", arqc: str = "") -> Authorisation:
        """Record an offline sale advice's decision (kind ADVICE), as authorise() does a sale's.

        The caller answers a repeat from repeat_advice() instead of recording it again.
        """
        return self._record(ADVICE, tid=tid, stan=stan, date=date, batch=batch, pan=pan,
                            amount=amount, rc=rc, reason=reason, arqc=arqc)

    def repeat_advice(self, tid: str, stan: str, date: str) -> Authorisation | None:
        """The advice decision recorded for tid + STAN + MMDD, with this repeat counted;
        None (nothing written) when no advice with that key was recorded."""
        row = self._db.execute(f"SELECT id, {_AUTH_COLUMNS} FROM authorisations WHERE tid = ?"
                               " AND stan = ? AND date = ? AND kind = 'advice' ORDER BY id LIMIT 1",
                               (tid, stan, date)).fetchone()
        if row is None:  # the usual case: a first 0220, no write transaction for it
            return None
        with self._tx() as db:  # one thread owns the ledger: the row cannot change meanwhile
            db.execute("UPDATE authorisations SET repeats = repeats + 1 WHERE id = ?", (row[0],))
        recorded = _authorisation(row[1:])
        return replace(recorded, repeats=recorded.repeats + 1)

    def record(self, kind: str, *, tid: str, stan: str, date: str, batch: str, pan: str,
               amount: int, rc: str | None, reason: str = "", arqc: str = "",
               money: str = "debit") -> Authorisation:
        """Record a decision of any message family (`kind`: void, refund, preauth, ...): on
        rc "00" the account is debited (`money` "debit"), credited ("credit") or left
        alone ("none") in the same transaction. `pan` may be any token with an account
        (a wallet's payment code has none: use money "none" and keep the wallet's own table)."""
        if money not in ("debit", "credit", "none"):
            raise LedgerError(f"money must be debit, credit or none: STAN {stan}")
        return self._record(kind, tid=tid, stan=stan, date=date, batch=batch, pan=pan,
                            amount=amount, rc=rc, reason=reason, arqc=arqc, money=money)

    def _record(self, kind: str, *, tid: str, stan: str, date: str, batch: str, pan: str,
                amount: int, rc: str | None, reason: str, arqc: str,
                money: str = "debit") -> Authorisation:
        if not isinstance(amount, int) or amount < 0:
            raise LedgerError(f"amount must be non-negative int minor units: STAN {stan}")
        approved = rc == RC_APPROVED
        with self._tx() as db:
            if approved and money == "debit":
                self._debit(db, pan, amount, stan)
            elif approved and money == "credit":
                db.execute("UPDATE accounts SET balance = balance + ? WHERE pan_key = ?",
                           (amount, pan_key(pan)))
            rrn = self._next_rrn(db)
            auth_code = f"{secrets.randbelow(10**6):06d}" if approved else None
            db.execute(
                "INSERT INTO authorisations (tid, stan, date, batch, pan_masked, pan_key, amount,"
                " rc, rrn, auth_code, created_at, reason, arqc, kind)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tid, stan, date, batch, mask_pan(pan), pan_key(pan), amount, rc, rrn,
                 auth_code, _now(), reason, arqc, kind))
        return Authorisation(tid, stan, date, batch, mask_pan(pan), amount, rc, rrn, auth_code,
                             reversed=False, reason=reason, arqc=arqc, kind=kind)

    def _debit(self, db: sqlite3.Connection, pan: str, amount: int, stan: str) -> None:
        balance = self._account(pan)[0]
        if balance < amount:
            raise LedgerError(f"approval would overdraw {mask_pan(pan)}: STAN {stan}")
        db.execute("UPDATE accounts SET balance = balance - ? WHERE pan_key = ?",
                   (amount, pan_key(pan)))

    # reversals ------------------------------------------------------------------------

    def reverse(self, tid: str, stan: str, date: str, *, mti: str = "0400",
                reason: str = "") -> ReversalResult:
        """Reverse a sale: credit it back once if it was approved. Idempotent; always recorded."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id, pan_key, amount, rc, reversed FROM authorisations"
                " WHERE tid = ? AND stan = ? AND date = ? AND rc IS NOT '94'"
                " ORDER BY id LIMIT 1", (tid, stan, date)).fetchone()
            credited = bool(row and row[3] == RC_APPROVED and not row[4])
            if credited:
                db.execute("UPDATE accounts SET balance = balance + ? WHERE pan_key = ?",
                           (row[2], row[1]))
                db.execute("UPDATE authorisations SET reversed = 1 WHERE id = ?", (row[0],))
            db.execute(
                "INSERT INTO reversals (tid, stan, date, mti, reason, found, credited, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (tid, stan, date, mti, reason, row is not None, credited, _now()))
        return ReversalResult(found=row is not None, credited=credited)

    def reversal_count(self, tid: str, stan: str, date: str) -> int:
        """How many reversal messages were recorded for that sale (tests, reports)."""
        return self._db.execute("SELECT COUNT(*) FROM reversals WHERE tid = ? AND stan = ?"
                                " AND date = ?", (tid, stan, date)).fetchone()[0]

    def last_authorisation(self) -> Authorisation | None:
        """The most recently recorded sale decision (duplicates too), or None (tests, reports)."""
        row = self._db.execute(f"SELECT {_AUTH_COLUMNS} FROM authorisations"
                               " ORDER BY id DESC LIMIT 1").fetchone()
        return _authorisation(row) if row else None

    def records(self, tid: str) -> list[Authorisation]:
        """Every sale and advice decision of terminal `tid`, declines and duplicates too,
        oldest first (tests, the power-cut harness's reconciliation)."""
        rows = self._db.execute(f"SELECT {_AUTH_COLUMNS} FROM authorisations WHERE tid = ?"
                                " ORDER BY id", (tid,)).fetchall()
        return [_authorisation(r) for r in rows]

    def debits(self, tid: str) -> list[Authorisation]:
        """What terminal `tid`'s customers were charged: approved sales and advices not
        reversed, oldest first."""
        return [r for r in self.records(tid) if r.rc == RC_APPROVED and not r.reversed]

    def decisions(self, tid: str, stan: str, date: str) -> list[str | None]:
        """Every response code recorded for tid + STAN + MMDD, oldest first (duplicates too)."""
        rows = self._db.execute("SELECT rc FROM authorisations WHERE tid = ? AND stan = ?"
                                " AND date = ? ORDER BY id", (tid, stan, date)).fetchall()
        return [r[0] for r in rows]
