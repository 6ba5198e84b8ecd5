"""The acquirer simulator's ledger: accounts, session keys, authorisations, advices, reversals.

Blocking sqlite3, one thread: create and use a Ledger on the simulator's single ledger
worker thread only, or on its loop thread when it decides there (ledger_thread=False);
sqlite3's same-thread check enforces it. Every write is one
`BEGIN IMMEDIATE` transaction, so a debit and its authorisation or advice row (or a credit
and its reversal row) land together or not at all. WAL with synchronous=NORMAL: a commit
survives a crash of this process (the power-cut harness kills the terminal, never the
host), only an OS crash or power loss of the test host could lose the last commits; it
spares the host an fsync per decision, so the SAF benchmark measures the terminal.
Amounts are int minor units. Clear PANs are never stored: accounts and authorisations
hold mask_pan() plus a SHA-256 pan key. Session keys are stored in clear: this is a TEST
host (catalog data only).

`authorisations` holds every decision: online sales (kind "sale"), offline sale
advices (kind "advice", 0220/0221) and the other message families' decisions (record():
void, refund, preauth, completion, ...), each with a short log-safe `reason`, the
cryptogram verdict (`arqc`: "verified", "failed", "" = not checked), for advices how many
repeats were answered from the recorded decision (`repeats`), what an approval did to the
account (`money`: debit, credit, none; `counter_key`: the account moved the other way, a
repayment's paid card) and the authorisation it acts on (`original_id`: a void's sale, a
completion's pre-auth). `holds` keeps the amounts pre-authorisations hold: balance() is
what the card may still spend. A reversal undoes whatever its original did (reverse()).
Older ledger files gain the newer columns when opened.
"""
from __future__ import annotations

import functools
import hashlib
import secrets
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from firmware.cardsafe import mask_pan
from firmware.sim.catalog import Catalog
from firmware.dbutil import immediate

__all__ = ["Ledger", "LedgerError", "Authorisation", "ReversalResult", "Hold", "pan_key",
           "PIN_TRIES_LIMIT", "SALE", "ADVICE", "MONEY", "HOLD_PLACE", "HOLD_RELEASE"]

PIN_TRIES_LIMIT = 3
RC_DUPLICATE = "94"
RC_APPROVED = "00"
SALE, ADVICE = "sale", "advice"  # authorisations.kind: an 0200 decision, an 0220/0221 one
DEBIT, CREDIT = "debit", "credit"
MONEY = (DEBIT, CREDIT, "none")  # what an approval does to the card's account
HOLD_PLACE, HOLD_RELEASE = "place", "release"  # what an approval does to a pre-auth hold

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
CREATE TABLE IF NOT EXISTS holds (
    auth_id INTEGER PRIMARY KEY, pan_key TEXT NOT NULL, auth_code TEXT NOT NULL,
    amount INTEGER NOT NULL, held INTEGER NOT NULL DEFAULT 1, released_by INTEGER);
CREATE INDEX IF NOT EXISTS holds_code ON holds (auth_code, pan_key);
"""
# Columns added after the first release, for ledgers created before them.
_ADDED_COLUMNS = (("authorisations", "reason", "TEXT NOT NULL DEFAULT ''"),
                  ("authorisations", "arqc", "TEXT NOT NULL DEFAULT ''"),
                  ("authorisations", "kind", "TEXT NOT NULL DEFAULT 'sale'"),
                  ("authorisations", "repeats", "INTEGER NOT NULL DEFAULT 0"),
                  ("authorisations", "money", "TEXT NOT NULL DEFAULT 'debit'"),
                  ("authorisations", "original_id", "INTEGER"),
                  ("authorisations", "counter_key", "TEXT"))
_AUTH_COLUMNS = ("tid, stan, date, batch, pan_masked, amount, rc, rrn, auth_code, reversed,"
                 " reason, arqc, kind, repeats, id, pan_key, money, original_id, counter_key")
# What approved, unreversed credits acting on authorisation `a` gave back (voids, refunds).
_RETURNED = ("(SELECT COALESCE(SUM(d.amount), 0) FROM authorisations d WHERE d.original_id = a.id"
             " AND d.rc = '00' AND d.reversed = 0 AND d.money = 'credit')")


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
    kind: str = SALE  # SALE (0200), ADVICE (0220/0221), or a message family's kind
    repeats: int = 0  # advice repeats answered from this decision
    id: int = 0  # the row, for original_id links
    pan_key: str = ""  # pan_key() of the card, to compare cards without a clear PAN
    money: str = DEBIT  # MONEY: what the approval did to the card's account
    original_id: int | None = None  # the authorisation this one acts on
    counter_key: str | None = None  # the account moved the other way (repayment)


@dataclass(frozen=True)
class ReversalResult:
    found: bool  # a decision with that tid/stan/date exists
    credited: bool  # this reversal undid an approval (for a sale: credited it back)


@dataclass(frozen=True)
class Hold:
    """The amount a pre-authorisation holds on a card until completed or cancelled."""

    auth_id: int  # the pre-auth's authorisation row
    auth_code: str
    amount: int  # minor units
    held: bool  # False once completed, cancelled or reversed


@functools.lru_cache(maxsize=4096)
def pan_key(pan: str) -> str:
    """Lookup key for a PAN (SHA-256 hex), cached: the catalog's few cards come back on every
    request. Good enough for a simulator (TEST cards), not for production."""
    return hashlib.sha256(pan.encode("ascii")).hexdigest()


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _authorisation(row: tuple) -> Authorisation:
    """An Authorisation from a row selected as _AUTH_COLUMNS."""
    return Authorisation(*row[:9], reversed=bool(row[9]), reason=row[10], arqc=row[11],
                         kind=row[12], repeats=row[13], id=row[14], pan_key=row[15],
                         money=row[16], original_id=row[17], counter_key=row[18])


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
        """Available balance in minor units: the account's balance less what pre-auths
        hold (held()). LedgerError for an unknown card."""
        return self._account(pan)[0] - self.held(pan)

    def held(self, pan: str) -> int:
        """What pre-authorisations hold on the card (minor units)."""
        return self._db.execute("SELECT COALESCE(SUM(amount), 0) FROM holds WHERE pan_key = ?"
                                " AND held = 1", (pan_key(pan),)).fetchone()[0]

    def find_hold(self, auth_code: str, pan: str) -> Hold | None:
        """The hold of the pre-auth approved with `auth_code` on card `pan` (a held one
        first, then the latest), or None."""
        row = self._db.execute("SELECT auth_id, auth_code, amount, held FROM holds WHERE"
                               " auth_code = ? AND pan_key = ? ORDER BY held DESC, auth_id DESC"
                               " LIMIT 1", (auth_code, pan_key(pan))).fetchone()
        return Hold(row[0], row[1], row[2], bool(row[3])) if row else None

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
        value = db.execute("INSERT INTO counters (name, value) VALUES ('rrn', 1)"
                           " ON CONFLICT(name) DO UPDATE SET value = value + 1"
                           " RETURNING value").fetchone()[0]
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

    def repeat_advice(self, tid: str, stan: str, date: str, kind: str = ADVICE
                      ) -> Authorisation | None:
        """The advice decision (of `kind`) recorded for tid + STAN + MMDD, with this repeat
        counted; None (nothing written) when no advice with that key was recorded."""
        row = self._db.execute(f"SELECT {_AUTH_COLUMNS} FROM authorisations WHERE tid = ?"
                               " AND stan = ? AND date = ? AND kind = ? ORDER BY id LIMIT 1",
                               (tid, stan, date, kind)).fetchone()
        if row is None:  # the usual case: a first 0220, no write transaction for it
            return None
        recorded = _authorisation(row)
        with self._tx() as db:  # one thread owns the ledger: the row cannot change meanwhile
            db.execute("UPDATE authorisations SET repeats = repeats + 1 WHERE id = ?",
                       (recorded.id,))
        return replace(recorded, repeats=recorded.repeats + 1)

    def record(self, kind: str, *, tid: str, stan: str, date: str, batch: str, pan: str,
               amount: int, rc: str | None, reason: str = "", arqc: str = "",
               money: str = DEBIT, original_id: int | None = None,
               counter_pan: str | None = None, hold: str = "") -> Authorisation:
        """Record a decision of any message family (`kind`: void, refund, preauth, ...) and,
        on rc "00", what it does, all in one transaction: the account is debited (`money`
        "debit"), credited ("credit") or left alone ("none"); `counter_pan`'s account
        moves the other way (a repayment credits the card it pays); `hold` HOLD_PLACE
        holds `amount` on the card under the new auth code (a pre-auth), HOLD_RELEASE
        releases the hold of pre-auth `original_id` (a completion or cancel). `original_id`
        links the authorisation this one acts on. `pan` may be any token with an account
        (a wallet's payment code has none: use money "none" and keep the wallet's own table).
        LedgerError, with nothing written, if an approval would overdraw, names an unknown
        account or releases a hold that is not held."""
        if money not in MONEY:
            raise LedgerError(f"money must be one of {MONEY}: STAN {stan}")
        if hold not in ("", HOLD_PLACE, HOLD_RELEASE):
            raise LedgerError(f"hold must be place, release or empty: STAN {stan}")
        return self._record(kind, tid=tid, stan=stan, date=date, batch=batch, pan=pan,
                            amount=amount, rc=rc, reason=reason, arqc=arqc, money=money,
                            original_id=original_id, counter_pan=counter_pan, hold=hold)

    def _record(self, kind: str, *, tid: str, stan: str, date: str, batch: str, pan: str,
                amount: int, rc: str | None, reason: str, arqc: str, money: str = DEBIT,
                original_id: int | None = None, counter_pan: str | None = None,
                hold: str = "") -> Authorisation:
        if not isinstance(amount, int) or amount < 0:
            raise LedgerError(f"amount must be non-negative int minor units: STAN {stan}")
        approved = rc == RC_APPROVED
        counter_key = pan_key(counter_pan) if counter_pan else None
        with self._tx() as db:
            if approved and hold == HOLD_RELEASE:
                self._release(db, original_id, stan)
            if approved:
                self._move(db, pan, money, amount, stan)
            if approved and counter_pan:
                self._move(db, counter_pan, DEBIT if money == CREDIT else CREDIT, amount, stan)
            rrn = self._next_rrn(db)
            auth_code = f"{secrets.randbelow(10**6):06d}" if approved else None
            row_id = db.execute(
                "INSERT INTO authorisations (tid, stan, date, batch, pan_masked, pan_key, amount,"
                " rc, rrn, auth_code, created_at, reason, arqc, kind, money, original_id,"
                " counter_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tid, stan, date, batch, mask_pan(pan), pan_key(pan), amount, rc, rrn,
                 auth_code, _now(), reason, arqc, kind, money, original_id, counter_key)
            ).lastrowid
            if approved and hold == HOLD_PLACE:
                db.execute("INSERT INTO holds (auth_id, pan_key, auth_code, amount)"
                           " VALUES (?, ?, ?, ?)", (row_id, pan_key(pan), auth_code, amount))
            if approved and hold == HOLD_RELEASE:
                db.execute("UPDATE holds SET released_by = ? WHERE auth_id = ?",
                           (row_id, original_id))
        return Authorisation(tid, stan, date, batch, mask_pan(pan), amount, rc, rrn, auth_code,
                             reversed=False, reason=reason, arqc=arqc, kind=kind, id=row_id,
                             pan_key=pan_key(pan), money=money, original_id=original_id,
                             counter_key=counter_key)

    def _move(self, db: sqlite3.Connection, pan: str, money: str, amount: int,
              stan: str) -> None:
        """Debit (never below zero) or credit `pan`'s account; "none" moves nothing."""
        if money == DEBIT:
            self._debit(db, pan, amount, stan)
        elif money == CREDIT:
            self._account(pan)
            _add(db, pan_key(pan), amount)

    def _release(self, db: sqlite3.Connection, auth_id: int | None, stan: str) -> None:
        released = db.execute("UPDATE holds SET held = 0 WHERE auth_id = ? AND held = 1",
                              (auth_id,)).rowcount
        if released != 1:
            raise LedgerError(f"no hold to release for pre-auth row {auth_id}: STAN {stan}")

    def _debit(self, db: sqlite3.Connection, pan: str, amount: int, stan: str) -> None:
        debited = db.execute("UPDATE accounts SET balance = balance - ? WHERE pan_key = ?"
                             " AND balance >= ?", (amount, pan_key(pan), amount)).rowcount
        if debited != 1:
            self._account(pan)  # LedgerError when there is no account at all
            raise LedgerError(f"approval would overdraw {mask_pan(pan)}: STAN {stan}")

    # reversals ------------------------------------------------------------------------

    def reverse(self, tid: str, stan: str, date: str, *, mti: str = "0400",
                reason: str = "") -> ReversalResult:
        """Reverse the decision recorded for tid + STAN + MMDD, whatever its kind: if it was
        approved and not yet reversed, undo what is left of it (_undo) and mark it
        reversed. Idempotent; always recorded."""
        with self._tx() as db:
            original = self.find(tid, stan, date)
            credited = bool(original and original.rc == RC_APPROVED and not original.reversed)
            if credited:
                self._undo(db, original)
                db.execute("UPDATE authorisations SET reversed = 1 WHERE id = ?", (original.id,))
            db.execute(
                "INSERT INTO reversals (tid, stan, date, mti, reason, found, credited, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (tid, stan, date, mti, reason, original is not None, credited, _now()))
        return ReversalResult(found=original is not None, credited=credited)

    def _undo(self, db: sqlite3.Connection, auth: Authorisation) -> None:
        """Undo approved `auth`: its money (a debit less what voids and refunds of it gave
        back already; nothing for a credit whose original is reversed, as that reversal
        took the credit into account), its counter account, the hold it placed (released)
        and the hold it released (held again, unless its pre-auth is reversed). Reversals
        always apply: an account may go below zero."""
        if auth.money == DEBIT:
            back = db.execute(f"SELECT a.amount - {_RETURNED} FROM authorisations a"
                              " WHERE a.id = ?", (auth.id,)).fetchone()[0]
        elif auth.money == CREDIT:
            back = 0 if self._reversed(db, auth.original_id) else -auth.amount
        else:
            back = 0
        _add(db, auth.pan_key, back)
        if auth.counter_key:
            _add(db, auth.counter_key, -back)
        db.execute("UPDATE holds SET held = 0 WHERE auth_id = ?", (auth.id,))
        if not self._reversed(db, self._released_hold(db, auth.id)):
            db.execute("UPDATE holds SET held = 1, released_by = NULL WHERE released_by = ?",
                       (auth.id,))

    @staticmethod
    def _reversed(db: sqlite3.Connection, auth_id: int | None) -> bool:
        row = db.execute("SELECT reversed FROM authorisations WHERE id = ?", (auth_id,)).fetchone()
        return bool(row and row[0])

    @staticmethod
    def _released_hold(db: sqlite3.Connection, auth_id: int) -> int | None:
        """The pre-auth whose hold authorisation `auth_id` released, if any."""
        row = db.execute("SELECT auth_id FROM holds WHERE released_by = ?", (auth_id,)).fetchone()
        return row[0] if row else None

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
        """What terminal `tid`'s customers were charged: approved debits (sales, advices,
        completions, repayments) not reversed and not wholly given back by voids or
        refunds, oldest first."""
        rows = self._db.execute(
            f"SELECT {_AUTH_COLUMNS} FROM authorisations a WHERE tid = ? AND rc = '00'"
            f" AND reversed = 0 AND money = 'debit' AND amount > {_RETURNED} ORDER BY id",
            (tid,)).fetchall()
        return [_authorisation(r) for r in rows]

    def find_rrn(self, rrn: str) -> Authorisation | None:
        """The decision that was given RRN `rrn` (any terminal, any batch), or None."""
        row = self._db.execute(f"SELECT {_AUTH_COLUMNS} FROM authorisations WHERE rrn = ?",
                               (rrn,)).fetchone()
        return _authorisation(row) if row else None

    def dependents(self, auth_id: int) -> list[Authorisation]:
        """Approved, unreversed decisions acting on authorisation `auth_id` (its voids,
        refunds, completions, cancels), oldest first."""
        rows = self._db.execute(f"SELECT {_AUTH_COLUMNS} FROM authorisations WHERE"
                                " original_id = ? AND rc = '00' AND reversed = 0 ORDER BY id",
                                (auth_id,)).fetchall()
        return [_authorisation(r) for r in rows]

    def decisions(self, tid: str, stan: str, date: str) -> list[str | None]:
        """Every response code recorded for tid + STAN + MMDD, oldest first (duplicates too)."""
        rows = self._db.execute("SELECT rc FROM authorisations WHERE tid = ? AND stan = ?"
                                " AND date = ? ORDER BY id", (tid, stan, date)).fetchall()
        return [r[0] for r in rows]


def _add(db: sqlite3.Connection, key: str, amount: int) -> None:
    """Add `amount` (negative: subtract) to the account with pan_key `key`."""
    if amount:
        db.execute("UPDATE accounts SET balance = balance + ? WHERE pan_key = ?", (amount, key))
