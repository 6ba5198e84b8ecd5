"""SQLite journal: the source of truth for every transaction, reversal, advice and counter
(DESIGN §6).

Contract: blocking sqlite3. Every call, `__init__` included, runs on the one journal worker
thread; the connection keeps check_same_thread=True, so a call from any other thread raises
sqlite3.ProgrammingError. WAL mode, synchronous=FULL, foreign keys on, secure_delete on;
the file is created 0600 (its -wal/-shm take that mode), whatever the umask.
Each public write is one `BEGIN IMMEDIATE ... COMMIT` and has committed (fsync'd) before
it returns: persist before send (invariant 1). Amounts are int minor units; times are
ISO-8601 local time text from the injected `now()`.
Lifecycles: an online request is SENDING (reversal ARMED) until answered (APPROVED /
DECLINED, reversal CANCELLED), unanswered (UNKNOWN, reversal PENDING -> ACKED: REVERSED) or
not sent (FAILED). An offline approval is APPROVED with `offline_code` and an advice
PENDING -> ACKED, or DECLINED by the acquirer later (kept, an alert). A reversal or advice
left unsent past the expiry is EXPIRED: an alert until the operator acknowledges it.
`recover()` settles what a power cut left in flight (start-up).
Settlement and batch upload, and QR payments, are Journal methods written in
firmware/journal_settlement.py and firmware/journal_qr.py (mixins); the row types and
errors are in firmware/journal_rows.py, re-exported here.
Retention (`keep_days`, config [journal]): the commit that makes a settlement SETTLED also
deletes the transactions of batches settled more than keep_days ago (see _prune), so the
file stays bounded; never a row that still has to reach the acquirer or the operator.
Card data: clear columns hold the masked PAN only; the request fields needed to forward
(PAN, expiry, ICC data) are sealed with the Vault, aad bound to the txn id, and deleted once
the acquirer acknowledges or nothing was sent. Track data and the PIN block are never
stored (PCI DSS 3.3.1). The schema moves forward only (PRAGMA user_version); a journal
written by a newer release is still opened, so a rolled-back release can drain its queue,
unless one of its steps declared (MIN_READER, table schema_reader) that it needs a newer
reader: then JournalError "journal schema N needs release with schema >= M", file untouched.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, NamedTuple

from firmware.cardsafe import mask_pan
from firmware.emv.card import CardData
from firmware.offline import QueueStats
from firmware.vault import Vault, VaultError
from firmware.dbutil import immediate
from firmware.journal_qr import QrPayments
from firmware.journal_rows import (
    BATCH_MAX, SELECT_TXN, STAN_MAX, JournalCorrupt, JournalError, TxnExtra, TxnRecord,
    read_counter,
)
from firmware.journal_settlement import Settlement
from firmware.txnkinds import CASH, DEBIT, KINDS, NONE

__all__ = [
    "Journal",
    "JournalError",
    "JournalCorrupt",
    "TxnRecord",
    "TxnExtra",
    "PendingReversal",
    "PendingAdvice",
    "Alert",
    "Recovery",
    "MIGRATIONS",
    "MIN_READER",
    "SCHEMA_VERSION",
    "NEVER_STORED_FIELDS",
    "REVERSAL_REASONS",
    "ALERT_KINDS",
    "STAN_MAX",
    "JOURNAL_NAME",
    "open_existing",
    "RiskRow",
]

log = logging.getLogger("kpos.journal")

JOURNAL_NAME = "journal.db"  # the journal's file name in the terminal's data_dir
# ISO 8583 fields never written to disk, not even sealed: track 2, track 3, track 1, PIN block.
NEVER_STORED_FIELDS = ("35", "36", "45", "52")
# Reversal reason codes (field 39 of the 0400) for an unknown outcome.
REVERSAL_REASONS = {"98": "no response (timeout)", "A0": "bad response MAC", "06": "other error"}
PRINT_COPIES = ("merchant", "customer")

# Forward-only migrations: MIGRATIONS[i] takes the schema from version i to i + 1.
# Never edit a shipped step; append a new one. Statements run one by one in one transaction.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE counter (
            name  TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        )""",
        "INSERT INTO counter (name, value) VALUES ('stan', 0), ('batch', 1)",
        """CREATE TABLE txn (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids never reused: order and aad
            terminal_id   TEXT NOT NULL,
            kind          TEXT NOT NULL,
            stan          INTEGER NOT NULL CHECK (stan BETWEEN 1 AND 999999),
            batch         INTEGER NOT NULL CHECK (batch BETWEEN 1 AND 999999),
            amount        INTEGER NOT NULL CHECK (amount >= 0),
            currency      INTEGER NOT NULL,
            status        TEXT NOT NULL
                          CHECK (status IN ('SENDING', 'APPROVED', 'DECLINED', 'FAILED', 'UNKNOWN', 'REVERSED')),
            operator      TEXT NOT NULL,
            masked_pan    TEXT,
            entry_mode    TEXT,
            aid           TEXT,
            app_label     TEXT,
            arqc          TEXT,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL,
            response_code TEXT,
            rrn           TEXT,
            auth_code     TEXT,
            failure       TEXT,
            printed_merchant_at TEXT,
            printed_customer_at TEXT,
            UNIQUE (terminal_id, batch, stan)
        )""",
        """CREATE TABLE sealed_request (
            txn_id INTEGER PRIMARY KEY REFERENCES txn (id),
            blob   BLOB NOT NULL
        )""",
        """CREATE TABLE reversal (
            txn_id      INTEGER PRIMARY KEY REFERENCES txn (id),
            status      TEXT NOT NULL
                        CHECK (status IN ('ARMED', 'PENDING', 'SENT', 'ACKED', 'CANCELLED', 'EXPIRED')),
            reason_code TEXT,
            detail      TEXT,
            attempts    INTEGER NOT NULL DEFAULT 0,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL
        )""",
        "CREATE INDEX reversal_by_status ON reversal (status, txn_id)",
        "CREATE INDEX txn_by_status ON txn (status, id)",
    ],
    [  # 2: what the chip decided (EMV kernel): TVR, TSI, CVM performed, cryptogram type
        "ALTER TABLE txn ADD COLUMN tvr TEXT",
        "ALTER TABLE txn ADD COLUMN tsi TEXT",
        "ALTER TABLE txn ADD COLUMN cvm TEXT",
        "ALTER TABLE txn ADD COLUMN cryptogram_type TEXT",
    ],
    [  # 3: offline approvals and their advices (store-and-forward); operator alerts
        "ALTER TABLE txn ADD COLUMN offline_code TEXT",  # Y1 | Y3 | 00 (SAF); NULL = online
        """CREATE TABLE advice (
            txn_id        INTEGER PRIMARY KEY REFERENCES txn (id),
            status        TEXT NOT NULL
                          CHECK (status IN ('PENDING', 'ACKED', 'DECLINED', 'EXPIRED')),
            attempts      INTEGER NOT NULL DEFAULT 0,
            response_code TEXT,
            detail        TEXT,
            alert_ack_at  TEXT,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL
        )""",
        "CREATE INDEX advice_by_status ON advice (status, txn_id)",
        "ALTER TABLE reversal ADD COLUMN alert_ack_at TEXT",
    ],
    [  # 4: the full transaction set (originals, wallets) and settlement (batch upload)
        "ALTER TABLE txn ADD COLUMN original_id INTEGER REFERENCES txn (id)",  # void, refund ...
        "ALTER TABLE txn ADD COLUMN original_rrn TEXT",  # the original as keyed (refund by RRN)
        "ALTER TABLE txn ADD COLUMN original_date TEXT",  # MMDD
        "ALTER TABLE txn ADD COLUMN wallet TEXT",  # QR: wechat | alipay | unionpay_qr
        "CREATE INDEX txn_by_batch ON txn (batch, stan)",
        "CREATE INDEX txn_by_rrn ON txn (rrn)",
        "CREATE INDEX txn_by_original ON txn (original_id)",
        """CREATE TABLE settlement (
            batch         INTEGER PRIMARY KEY,
            status        TEXT NOT NULL CHECK (status IN ('STARTED', 'UPLOADING', 'SETTLED')),
            result        TEXT,                  -- balanced | out_of_balance (first 0510)
            debit_count   INTEGER NOT NULL DEFAULT 0,
            debit_amount  INTEGER NOT NULL DEFAULT 0,
            credit_count  INTEGER NOT NULL DEFAULT 0,
            credit_amount INTEGER NOT NULL DEFAULT 0,
            host_code     TEXT,                  -- field 39 of the last 0510
            detail        TEXT,
            report_printed_at TEXT,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL
        )""",
        """CREATE TABLE batch_upload (
            txn_id     INTEGER PRIMARY KEY REFERENCES txn (id),
            batch      INTEGER NOT NULL,
            status     TEXT NOT NULL CHECK (status IN ('PENDING', 'ACKED')),
            attempts   INTEGER NOT NULL DEFAULT 0,
            updated_at TEXT NOT NULL
        )""",
        "CREATE INDEX batch_upload_by_status ON batch_upload (batch, status, txn_id)",
    ],
    [  # 5: a card repayment's paid card, masked (the receipt's TO CARD line)
        "ALTER TABLE txn ADD COLUMN target_pan TEXT",
    ],
    [  # 6: the original's auth code as keyed (pre-auth cancel / completion: 原授权码)
        "ALTER TABLE txn ADD COLUMN original_auth TEXT",
    ],
    [  # 7: the checkout basket (itemised goods, discount) its payments point at
        """CREATE TABLE basket (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            lines      TEXT NOT NULL,              -- JSON: [{code, name, qty, unit, amount}]
            subtotal   INTEGER NOT NULL CHECK (subtotal >= 0),
            discount   INTEGER NOT NULL CHECK (discount >= 0),
            total      INTEGER NOT NULL CHECK (total >= 0),
            operator   TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "ALTER TABLE txn ADD COLUMN basket_id INTEGER REFERENCES basket (id)",
        "ALTER TABLE txn ADD COLUMN tendered INTEGER",  # cash: the amount the customer gave
    ],
    [  # 8: what an older release needs to read this journal (MIN_READER, written by _migrate)
        """CREATE TABLE schema_reader (
            version    INTEGER PRIMARY KEY,  -- the step that declared it
            min_reader INTEGER NOT NULL      -- the least SCHEMA_VERSION that may open the journal
        )""",
    ],
    [  # 9: risk_history and retention read rows by time, not by a scan of the whole table
        "CREATE INDEX txn_by_created ON txn (created_at)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
# Steps an older release cannot work with: {step version: least reader SCHEMA_VERSION}. A step
# that only adds tables, or columns with a default, is left out (every reader >= 8 copes).
# Append with the step; _migrate records it in the journal, where older releases look.
MIN_READER: dict[int, int] = {}

# Retention (Journal._prune): the rows of batches settled before :cutoff that nothing waits on.
_PRUNABLE = """INSERT INTO temp.prune SELECT t.id FROM txn t JOIN settlement s ON s.batch = t.batch
    WHERE s.status = 'SETTLED' AND s.updated_at < :cutoff AND t.created_at < :cutoff
      AND t.created_at <= s.created_at
      AND t.status IN ('APPROVED', 'DECLINED', 'FAILED', 'REVERSED')
      AND NOT EXISTS (SELECT 1 FROM sealed_request x WHERE x.txn_id = t.id)
      AND NOT EXISTS (SELECT 1 FROM reversal r WHERE r.txn_id = t.id AND (r.status IN
          ('ARMED', 'PENDING', 'SENT') OR (r.status = 'EXPIRED' AND r.alert_ack_at IS NULL)))
      AND NOT EXISTS (SELECT 1 FROM advice a WHERE a.txn_id = t.id AND (a.status = 'PENDING'
          OR (a.status IN ('DECLINED', 'EXPIRED') AND a.alert_ack_at IS NULL)))
      AND NOT EXISTS (SELECT 1 FROM batch_upload u WHERE u.txn_id = t.id AND u.status = 'PENDING')"""

# Legal transitions: (what, from status) -> allowed.  Data, checked in SQL by `_move`.
_TXN_FROM = {"not_sent": ("SENDING",), "response": ("SENDING",), "no_response": ("SENDING",),
             "reversed": ("UNKNOWN", "DECLINED"), "card_declined": ("APPROVED",),
             "offline": ("SENDING",), "recover": ("SENDING",)}
_REVERSAL_FROM = {"not_sent": ("ARMED",), "response": ("ARMED",), "no_response": ("ARMED",),
                  "reversed": ("PENDING",), "card_accepted": ("ARMED",), "card_declined": ("ARMED",),
                  "offline": ("ARMED",), "recover": ("ARMED",), "expire": ("PENDING",)}


@dataclass(frozen=True)
class PendingReversal:
    """A reversal waiting to be sent; `request` is the original field dict (unsealed, PAN inside)."""

    txn_id: int
    stan: int
    batch: int
    amount: int
    currency: int
    kind: str
    reason_code: str
    detail: str
    attempts: int
    created_at: str
    request: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class PendingAdvice:
    """An offline approval waiting to be forwarded; `request` is the 0220 field dict (unsealed)."""

    txn_id: int
    stan: int
    batch: int
    amount: int
    currency: int
    kind: str
    code: str  # field 39 of the advice: Y1 | Y3 | 00
    attempts: int
    created_at: str
    request: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Alert:
    """Something the operator must see: an advice the acquirer declined, or an advice or a
    reversal that expired unsent. Kept until acknowledged (never a silent drop)."""

    what: str  # one of ALERT_KINDS
    txn_id: int
    stan: int
    amount: int  # minor units
    currency: int
    response_code: str | None  # the acquirer's answer to a declined advice
    at: str  # when it happened (ISO local time)


ALERT_KINDS = ("advice declined", "advice expired", "reversal expired")


@dataclass(frozen=True)
class Recovery:
    """What start-up recovery found and settled (txn ids)."""

    unknown: tuple[int, ...] = ()  # in flight at the cut: now UNKNOWN, reversal pending
    card_unfinished: tuple[int, ...] = ()  # approved, the card never gave its final answer

    def __bool__(self) -> bool:
        return bool(self.unknown or self.card_unfinished)


class RiskRow(NamedTuple):
    """What firmware.limits reads of a group of rows (Journal.risk_history): `rows`
    approved rows summed to `amount` (minor units), `small_rows` of them at or under the
    velocity_small asked for; created_at is the group's latest."""

    kind: str
    status: str
    amount: int
    entry_mode: str | None
    wallet: str | None
    created_at: str
    rows: int = 1
    small_rows: int | None = None  # None: one row, compare its amount


class Journal(Settlement, QrPayments):
    """One SQLite journal file. Create, use and close it on the journal worker thread only."""

    def __init__(self, path: Path, vault: Vault, *, now: Callable[[], datetime] = datetime.now,
                 keep_days: int | None = None):
        self._path = Path(path)
        self._vault = vault
        self._now = now
        self._keep_days = keep_days  # retention after settlement; None keeps everything
        self._db = _connect(self._path)
        self._purge_due = False  # sealed card data deleted, its old copy still in the -wal file
        try:
            _check_integrity(self._db, self._path)
            _configure(self._db, self._path)
            _migrate(self._db, self._path)
        except BaseException:
            self._db.close()
            raise
        # Every deletion of sealed data (and a sealed request replaced by its advice) marks
        # the -wal file for a purge (purge_card_data), whichever method did it.
        self._db.create_function("kpos_sealed_gone", 0, self._sealed_gone)
        self._db.execute("""CREATE TEMP TRIGGER sealed_gone AFTER DELETE ON sealed_request
                            BEGIN SELECT kpos_sealed_gone(); END""")
        self._db.execute("PRAGMA recursive_triggers = ON")  # INSERT OR REPLACE fires it too

    def _sealed_gone(self) -> None:
        self._purge_due = True

    def purge_card_data(self) -> bool:
        """Rid the -wal file of deleted sealed card data: a TRUNCATE checkpoint (its pages
        copied into the main file, where secure_delete has zeroed the rows, and the -wal
        emptied). Does nothing when nothing was deleted since the last purge. True when
        nothing is left to purge; False when a reader kept the checkpoint from finishing
        (the next call tries again). Blocking: one checkpoint, a few fsyncs."""
        if not self._purge_due:
            return True
        busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        self._purge_due = bool(busy)
        return not busy

    # -- counters ---------------------------------------------------------------------------

    def next_stan(self) -> int:
        """The next STAN, 1..999999 then 1 again; committed before it is returned."""
        with self._write() as db:
            stan = read_counter(db, "stan") % STAN_MAX + 1
            db.execute("UPDATE counter SET value = ? WHERE name = 'stan'", (stan,))
        return stan

    def batch_no(self) -> int:
        return read_counter(self._db, "batch")

    def open_batch_count(self) -> int:
        """Transactions of the open batch (batch_no) that move money at the acquirer (not
        cash, a balance inquiry or a pre-auth), whatever their status: the batch-full rule
        (firmware/app_menu.py). One query over the txn_by_batch index."""
        kinds = tuple(name for name, k in KINDS.items() if k.totals not in (NONE, CASH))
        return self._db.execute(
            "SELECT COUNT(*) FROM txn WHERE batch = (SELECT value FROM counter WHERE name ="
            f" 'batch') AND kind IN ({', '.join('?' * len(kinds))})", kinds).fetchone()[0]

    def close_batch(self) -> int:
        """Start the next batch (settlement done); returns the new batch number, wraps to 1."""
        with self._write() as db:
            batch = read_counter(db, "batch") % BATCH_MAX + 1
            db.execute("UPDATE counter SET value = ? WHERE name = 'batch'", (batch,))
        log.info("batch closed, now batch %06d", batch)
        return batch

    def sync_batch(self, host_batch: int) -> bool:
        """Take the host's batch number (sign-on, 0810 60.2) when it differs and the
        terminal's current batch holds no transaction; True when the number changed. A
        batch with transactions keeps its number: settlement reconciles it."""
        if not 1 <= host_batch <= BATCH_MAX:
            raise ValueError(f"host batch {host_batch} outside 1..{BATCH_MAX}")
        with self._write() as db:
            batch = read_counter(db, "batch")
            used = db.execute("SELECT 1 FROM txn WHERE batch = ? LIMIT 1", (batch,)).fetchone()
            if batch == host_batch or used:
                return False
            db.execute("UPDATE counter SET value = ? WHERE name = 'batch'", (host_batch,))
        log.info("batch number %06d taken from the host (was %06d)", host_batch, batch)
        return True

    # -- the basket and cash ----------------------------------------------------------------

    def save_basket(self, lines: list[dict], *, subtotal: int, discount: int, total: int,
                    operator: str) -> int:
        """Keep a basket (its lines as JSON: code, name, qty, unit, amount) before it is
        paid; its id goes on every payment row (TxnExtra.basket_id)."""
        if not (subtotal >= 0 and 0 <= discount <= subtotal and total == subtotal - discount):
            raise ValueError(f"basket totals do not add up: {subtotal} - {discount} != {total}")
        with self._write() as db:
            basket_id = db.execute(
                "INSERT INTO basket (lines, subtotal, discount, total, operator, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (json.dumps(lines, ensure_ascii=False), subtotal, discount, total, operator,
                 self._stamp())).lastrowid
        log.info("basket %d kept: %d line(s), total %d", basket_id, len(lines), total)
        return basket_id

    def basket(self, basket_id: int) -> dict | None:
        """A kept basket: id, lines (list of dicts), subtotal, discount, total, operator,
        created_at; None when unknown."""
        row = self._db.execute("SELECT * FROM basket WHERE id = ?", (basket_id,)).fetchone()
        if row is None:
            return None
        return {**dict(row), "lines": json.loads(row["lines"])}

    def record_cash(self, *, amount: int, tendered: int, currency: int, operator: str,
                    terminal_id: str, extra: TxnExtra | None = None) -> int:
        """A cash payment (现金): APPROVED at once, a receipt number (STAN) from the counter,
        nothing sealed, nothing queued: cash never reaches the acquirer. One commit."""
        if tendered < amount:
            raise ValueError(f"cash: {tendered} tendered is less than {amount} due")
        extra = replace(extra or TxnExtra(), tendered=tendered)
        stan = self.next_stan()
        txn_id = self._insert_txn(kind="cash", stan=stan, batch=self.batch_no(), amount=amount,
                                  currency=currency, card=None, request={"41": terminal_id},
                                  operator=operator, status="APPROVED", code=None,
                                  then=lambda db, txn_id, now: None, extra=extra)
        log.info("txn %d cash STAN %06d amount %d (tendered %d)", txn_id, stan, amount, tendered)
        return txn_id

    # -- the online request lifecycle -------------------------------------------------------

    def record_request(
        self,
        *,
        kind: str,
        stan: int,
        batch: int,
        amount: int,
        currency: int,
        card: CardData | None,
        request: dict,
        reversible: bool,
        operator: str = "01",
        extra: TxnExtra | None = None,
    ) -> int:
        """Persist a request before it is sent: txn 'SENDING', sealed request, ARMED reversal
        (when `reversible`). `extra`: the original it names, the wallet."""
        def seal_and_arm(db: sqlite3.Connection, txn_id: int, now: str) -> None:
            self._seal_and_arm(db, txn_id, now, request, reversible)

        txn_id = self._insert_txn(kind=kind, stan=stan, batch=batch, amount=amount,
                                  currency=currency, card=card, request=request, operator=operator,
                                  status="SENDING", code=None, then=seal_and_arm, extra=extra)
        log.info("txn %d %s STAN %06d batch %d amount %d recorded (SENDING)", txn_id, kind, stan, batch, amount)
        return txn_id

    def _seal_and_arm(self, db: sqlite3.Connection, txn_id: int, now: str, request: dict,
                      reversible: bool) -> None:
        """Inside a write: the request sealed for `txn_id`, and its reversal ARMED."""
        blob = self._vault.seal(_encode_request(request), aad=_aad(txn_id))
        db.execute("INSERT INTO sealed_request (txn_id, blob) VALUES (?, ?)", (txn_id, blob))
        if reversible:
            db.execute("INSERT INTO reversal (txn_id, status, created_at, updated_at) "
                       "VALUES (?, 'ARMED', ?, ?)", (txn_id, now, now))

    def _insert_txn(self, *, kind: str, stan: int, batch: int, amount: int, currency: int,
                    card: CardData | None, request: dict, operator: str, status: str,
                    code: str | None, then: Callable[[sqlite3.Connection, int, str], None],
                    extra: TxnExtra | None = None) -> int:
        """One commit: a new txn row (`code`: the offline approval's code, also its response
        code) plus what `then(db, txn_id, now)` writes with it, `now` the row's time stamp.
        JournalError on a reused STAN."""
        _check_request_args(kind, stan, batch, amount, currency, request)
        terminal_id = str(request.get("41", "")).strip()
        now = self._stamp()
        extra = extra or TxnExtra()
        try:
            with self._write() as db:
                txn_id = db.execute(
                    """INSERT INTO txn (terminal_id, kind, stan, batch, amount, currency, status,
                           operator, masked_pan, entry_mode, aid, app_label, arqc, tvr, tsi, cvm,
                           cryptogram_type, response_code, offline_code, created_at, updated_at,
                           original_id, original_rrn, original_date, wallet, target_pan,
                           original_auth, basket_id, tendered)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                               ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (terminal_id, kind, stan, batch, amount, currency, status, operator,
                     *_card_columns(card), code, code, now, now, extra.original_id,
                     extra.original_rrn, extra.original_date, extra.wallet,
                     _masked(extra.target_pan), extra.original_auth, extra.basket_id,
                     extra.tendered),
                ).lastrowid
                then(db, txn_id, now)
        except sqlite3.IntegrityError as exc:
            what = f"STAN {stan:06d} already used in batch {batch}" if "UNIQUE" in str(exc) else str(exc)
            raise JournalError(f"cannot record {kind}: {what} (terminal {terminal_id or '?'}): {exc}") from exc
        return txn_id

    def record_not_sent(self, txn_id: int, reason: str) -> None:
        """Nothing left the box: txn FAILED, reversal CANCELLED, sealed data deleted."""
        with self._write() as db:
            self._move(db, txn_id, "not_sent", "FAILED", failure=reason)
            self._move_reversal(db, txn_id, "not_sent", "CANCELLED")
            db.execute("DELETE FROM sealed_request WHERE txn_id = ?", (txn_id,))
        log.info("txn %d not sent: %s", txn_id, reason)

    def record_response(
        self, txn_id: int, *, response_code: str, approved: bool, rrn: str | None, auth_code: str | None,
        card_pending: bool = False,
    ) -> None:
        """The acquirer answered: txn APPROVED/DECLINED, reversal CANCELLED, sealed data deleted.

        `card_pending` (an approval the chip has still to accept at its second GENERATE AC):
        the reversal stays ARMED and the sealed request is kept until record_card_result."""
        status = "APPROVED" if approved else "DECLINED"
        keep = approved and card_pending
        with self._write() as db:
            self._move(db, txn_id, "response", status, response_code=response_code, rrn=rrn, auth_code=auth_code)
            if not keep:
                self._move_reversal(db, txn_id, "response", "CANCELLED")
                db.execute("DELETE FROM sealed_request WHERE txn_id = ?", (txn_id,))
        log.info("txn %d %s (response code %s)%s", txn_id, status, response_code,
                 ", waiting for the card" if keep else "")

    def record_card_result(
        self, txn_id: int, *, accepted: bool, card: CardData | None, detail: str = ""
    ) -> None:
        """The chip's last word after an approval (second GENERATE AC), `card` holding its
        final cryptogram, TVR and TSI. Accepted (TC): reversal CANCELLED, sealed data deleted.
        Refused (AAC, or the card pulled out before it answered): txn DECLINED with
        `detail`, reversal PENDING (reason 06) so it goes before any new request."""
        columns = _chip_columns(card)
        with self._write() as db:
            if accepted:
                if self._move_reversal(db, txn_id, "card_accepted", "CANCELLED"):
                    db.execute("DELETE FROM sealed_request WHERE txn_id = ?", (txn_id,))
                db.execute("UPDATE txn SET arqc = COALESCE(?, arqc), tvr = COALESCE(?, tvr), "
                           "tsi = COALESCE(?, tsi), cryptogram_type = COALESCE(?, cryptogram_type), "
                           "updated_at = ? WHERE id = ?", (*columns, self._stamp(), txn_id))
            else:
                self._move(db, txn_id, "card_declined", "DECLINED", failure=detail,
                           **{k: v for k, v in zip(("arqc", "tvr", "tsi", "cryptogram_type"), columns)
                              if v is not None})
                self._move_reversal(db, txn_id, "card_declined", "PENDING", reason_code="06", detail=detail)
        log.info("txn %d: card %s%s", txn_id, "accepted" if accepted else "refused",
                 f" ({detail})" if detail else "")

    def record_no_response(self, txn_id: int, *, reason_code: str, detail: str) -> None:
        """Outcome unknown: txn UNKNOWN, reversal PENDING; sealed data kept for the reversal."""
        if reason_code not in REVERSAL_REASONS:
            raise ValueError(f"txn {txn_id}: reversal reason code {reason_code!r} not in {sorted(REVERSAL_REASONS)}")
        with self._write() as db:
            self._move(db, txn_id, "no_response", "UNKNOWN", failure=detail)
            moved = self._move_reversal(db, txn_id, "no_response", "PENDING", reason_code=reason_code, detail=detail)
            if not moved:  # not reversible: nothing will ever forward the sealed request
                db.execute("DELETE FROM sealed_request WHERE txn_id = ?", (txn_id,))
        log.warning("txn %d outcome unknown (%s: %s)", txn_id, reason_code, detail)

    def pending_reversals(self) -> list[PendingReversal]:
        """Reversals waiting to be sent, oldest first, each with its unsealed original request.

        Oldest = lowest txn id: ids only grow (AUTOINCREMENT), while the wall clock can jump
        (a Pi has no RTC).
        """
        rows = self._db.execute(
            """SELECT r.txn_id, t.stan, t.batch, t.amount, t.currency, t.kind, r.reason_code, r.detail,
                      r.attempts, r.created_at, s.blob
               FROM reversal r JOIN txn t ON t.id = r.txn_id
               LEFT JOIN sealed_request s ON s.txn_id = r.txn_id
               WHERE r.status = 'PENDING' ORDER BY r.txn_id"""
        ).fetchall()
        return self._readable(rows, "reversal", PendingReversal)

    def record_reversal_attempt(self, txn_id: int) -> int:
        """Commit one more attempt BEFORE the 0400/0401 is written; returns the attempts so far."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE reversal SET attempts = attempts + 1, updated_at = ? WHERE txn_id = ? AND status = 'PENDING'",
                (self._stamp(), txn_id))
            if cur.rowcount != 1:
                raise JournalError(f"txn {txn_id}: no pending reversal to attempt")
            return db.execute("SELECT attempts FROM reversal WHERE txn_id = ?", (txn_id,)).fetchone()[0]

    def record_reversal_acked(self, txn_id: int, response_code: str) -> None:
        """The acquirer answered the reversal: txn REVERSED, reversal ACKED, sealed data deleted."""
        with self._write() as db:
            self._move(db, txn_id, "reversed", "REVERSED")
            self._move_reversal(db, txn_id, "reversed", "ACKED", detail=f"acknowledged with {response_code}")
            db.execute("DELETE FROM sealed_request WHERE txn_id = ?", (txn_id,))
        log.info("txn %d reversal acknowledged (%s)", txn_id, response_code)

    # -- offline approvals and their advices (store-and-forward) ----------------------------

    def record_offline(self, txn_id: int, *, card: CardData | None, advice: dict, code: str) -> None:
        """The request in `txn_id` could not be sent and the terminal approved offline
        (`code` Y3 or 00): txn APPROVED offline, reversal CANCELLED, the sealed request
        replaced by the sealed `advice` (0220 fields), advice PENDING. One commit."""
        with self._write() as db:
            self._move(db, txn_id, "offline", "APPROVED", response_code=code, offline_code=code,
                       **{k: v for k, v in zip(("arqc", "tvr", "tsi", "cryptogram_type"),
                                               _chip_columns(card)) if v is not None})
            self._move_reversal(db, txn_id, "offline", "CANCELLED")
            self._queue_advice(db, txn_id, advice, f"approved offline ({code})", self._stamp())
        log.info("txn %d approved offline (%s), advice queued", txn_id, code)

    def record_offline_approval(
        self, *, kind: str, stan: int, batch: int, amount: int, currency: int,
        card: CardData | None, advice: dict, code: str, operator: str = "01",
        extra: TxnExtra | None = None,
    ) -> int:
        """An offline approval without an online attempt (the card's TC at the first
        GENERATE AC, `code` Y1): txn APPROVED offline plus its PENDING advice, one commit."""
        txn_id = self._insert_txn(kind=kind, stan=stan, batch=batch, amount=amount,
                                  currency=currency, card=card, request=advice, operator=operator,
                                  status="APPROVED", code=code, extra=extra,
                                  then=lambda db, txn_id, now: self._queue_advice(
                                      db, txn_id, advice, f"approved offline ({code})", now))
        log.info("txn %d %s STAN %06d approved offline (%s), advice queued", txn_id, kind, stan, code)
        return txn_id

    def _queue_advice(self, db: sqlite3.Connection, txn_id: int, advice: dict, detail: str,
                      now: str) -> None:
        """Inside a write: `advice` sealed for `txn_id` (replacing its request) and PENDING."""
        blob = self._vault.seal(_encode_request(advice), aad=_aad(txn_id))
        db.execute("INSERT OR REPLACE INTO sealed_request (txn_id, blob) VALUES (?, ?)", (txn_id, blob))
        db.execute("INSERT INTO advice (txn_id, status, detail, created_at, updated_at) "
                   "VALUES (?, 'PENDING', ?, ?, ?)", (txn_id, detail, now, now))

    def pending_advices(self, limit: int | None = None, *, after: int = 0) -> list[PendingAdvice]:
        """Advices waiting to be forwarded with a txn id above `after`, oldest first (lowest
        txn id), unsealed."""
        rows = self._db.execute(
            """SELECT a.txn_id, t.stan, t.batch, t.amount, t.currency, t.kind,
                      t.offline_code AS code, a.attempts, a.created_at, s.blob
               FROM advice a JOIN txn t ON t.id = a.txn_id
               LEFT JOIN sealed_request s ON s.txn_id = a.txn_id
               WHERE a.status = 'PENDING' AND a.txn_id > ? ORDER BY a.txn_id LIMIT ?""",
            (after, -1 if limit is None else limit)).fetchall()
        return self._readable(rows, "advice", PendingAdvice)

    def record_advice_attempts(self, txn_ids: list[int]) -> None:
        """Commit one more attempt for each advice BEFORE any of them is written (so a
        restart sends a 0221 repeat, never a second 0220). One commit, one statement."""
        if not txn_ids:
            return
        with self._write() as db:
            db.execute("UPDATE advice SET attempts = attempts + 1, updated_at = ? WHERE status = "
                       "'PENDING' AND txn_id IN (SELECT value FROM json_each(?))",
                       (self._stamp(), json.dumps(txn_ids)))

    def claim_advices(self, limit: int, *, after: int = 0) -> list[PendingAdvice]:
        """The store-and-forward's next batch: pending_advices(limit, after=after), then
        record_advice_attempts on them (one commit) before they are returned; `attempts` in
        each is the count before this claim (0: never sent, goes as 0220)."""
        advices = self.pending_advices(limit, after=after)
        self.record_advice_attempts([a.txn_id for a in advices])
        return advices

    def record_advice_results(self, results: list[tuple[int, str, bool]]) -> None:
        """The acquirer answered advices: (txn_id, response code, accepted). Accepted: ACKED;
        refused: DECLINED (kept: an operator alert, reported at settlement). Either way the
        sealed card data is deleted. One commit for the lot."""
        if not results:
            return
        rows = json.dumps([[txn_id, code, "ACKED" if accepted else "DECLINED"]
                           for txn_id, code, accepted in results])
        with self._write() as db:  # two statements for the lot (few GIL hand-offs)
            # "+status": look the rows up by txn id, not by a scan of advice_by_status
            done = {r[0] for r in db.execute(
                "UPDATE advice SET status = json_extract(r.value, '$[2]'), response_code = "
                "json_extract(r.value, '$[1]'), updated_at = ? FROM json_each(?) AS r WHERE "
                "advice.txn_id = json_extract(r.value, '$[0]') AND +advice.status = 'PENDING' "
                "RETURNING advice.txn_id", (self._stamp(), rows))}
            if len(done) != len(results):  # one was not pending, or one is named twice
                ids = [txn_id for txn_id, _, _ in results]
                txn_id, code, _ = next(r for r in results if r[0] not in done or ids.count(r[0]) > 1)
                raise JournalError(f"txn {txn_id}: no pending advice to record {code!r} for")
            db.execute("DELETE FROM sealed_request WHERE txn_id IN "
                       "(SELECT json_extract(value, '$[0]') FROM json_each(?))", (rows,))
        declined = [txn_id for txn_id, _, accepted in results if not accepted]
        if declined:
            log.error("advices declined by the acquirer (operator alert): txn %s", declined)

    def expire(self, cutoff: datetime) -> list[Alert]:
        """Advices and reversals still pending that were queued before `cutoff`: EXPIRED,
        each an operator alert (returned). Their sealed data stays until acknowledged."""
        stamp = cutoff.isoformat(timespec="seconds")
        with self._write() as db:
            now = self._stamp()
            adv = db.execute("UPDATE advice SET status = 'EXPIRED', detail = 'expired unsent', "
                             "updated_at = ? WHERE status = 'PENDING' AND created_at < ? "
                             "RETURNING txn_id", (now, stamp)).fetchall()
            rev = db.execute("UPDATE reversal SET status = 'EXPIRED', detail = 'expired unanswered', "
                             "updated_at = ? WHERE status = 'PENDING' AND created_at < ? "
                             "RETURNING txn_id", (now, stamp)).fetchall()
        ids = {r[0] for r in adv} | {r[0] for r in rev}
        expired = [a for a in self.alerts() if a.txn_id in ids and a.what.endswith("expired")]
        for alert in expired:
            log.error("%s: txn %d STAN %06d amount %d (operator alert)", alert.what, alert.txn_id,
                      alert.stan, alert.amount)
        return expired

    def alerts(self) -> list[Alert]:
        """Declined or expired items the operator has not acknowledged, oldest first."""
        rows = self._db.execute(
            """SELECT CASE a.status WHEN 'DECLINED' THEN 'advice declined' ELSE 'advice expired' END
                      AS what, t.id AS txn_id, t.stan, t.amount, t.currency, a.response_code,
                      a.updated_at AS at
               FROM advice a JOIN txn t ON t.id = a.txn_id
               WHERE a.status IN ('DECLINED', 'EXPIRED') AND a.alert_ack_at IS NULL
               UNION ALL
               SELECT 'reversal expired', t.id, t.stan, t.amount, t.currency, NULL, r.updated_at
               FROM reversal r JOIN txn t ON t.id = r.txn_id
               WHERE r.status = 'EXPIRED' AND r.alert_ack_at IS NULL
               ORDER BY txn_id""").fetchall()
        return [Alert(**dict(row)) for row in rows]

    def acknowledge_alerts(self) -> int:
        """The operator has seen every alert: mark them, delete the sealed card data of the
        expired items (nothing will forward it now). Returns how many were acknowledged."""
        with self._write() as db:
            now = self._stamp()
            n = db.execute("UPDATE advice SET alert_ack_at = ? WHERE status IN ('DECLINED', 'EXPIRED') "
                           "AND alert_ack_at IS NULL", (now,)).rowcount
            n += db.execute("UPDATE reversal SET alert_ack_at = ? WHERE status = 'EXPIRED' "
                            "AND alert_ack_at IS NULL", (now,)).rowcount
            db.execute("""DELETE FROM sealed_request WHERE txn_id IN (
                              SELECT txn_id FROM advice WHERE status = 'EXPIRED'
                              UNION SELECT txn_id FROM reversal WHERE status = 'EXPIRED')""")
        log.info("operator acknowledged %d alert(s)", n)
        return n

    def requeue_expired(self) -> int:
        """Support action: put expired advices and reversals (not yet acknowledged, so their
        sealed data is still there) back in the queue. Returns how many."""
        with self._write() as db:
            now = self._stamp()
            n = db.execute("UPDATE advice SET status = 'PENDING', created_at = ?, updated_at = ? "
                           "WHERE status = 'EXPIRED' AND alert_ack_at IS NULL", (now, now)).rowcount
            n += db.execute("UPDATE reversal SET status = 'PENDING', created_at = ?, updated_at = ? "
                            "WHERE status = 'EXPIRED' AND alert_ack_at IS NULL", (now, now)).rowcount
        log.info("%d expired item(s) queued again", n)
        return n

    def schema(self) -> int:
        """The journal's schema version (PRAGMA user_version; above SCHEMA_VERSION when a
        newer release migrated it)."""
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def queue_items(self) -> list[tuple[str, int]]:
        """("reversal" | "advice", txn_id) of every item not yet acknowledged by the acquirer
        (pending, or armed for a request in flight), oldest txn first."""
        rows = self._db.execute(
            "SELECT 'reversal', txn_id FROM reversal WHERE status IN ('ARMED', 'PENDING') "
            "UNION ALL SELECT 'advice', txn_id FROM advice WHERE status = 'PENDING' "
            "ORDER BY 2, 1").fetchall()
        return [(kind, txn_id) for kind, txn_id in rows]

    def missing_items(self, items: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Those of `items` (as queue_items gave them) whose row is gone from the journal;
        one sent, expired or declined since is still there (kept, or an alert)."""
        tables = {"reversal": "reversal", "advice": "advice"}
        return [(kind, txn_id) for kind, txn_id in items if self._db.execute(
            f"SELECT 1 FROM {tables[kind]} WHERE txn_id = ?", (txn_id,)).fetchone() is None]

    def queue_stats(self) -> QueueStats:
        """Pending reversals and advices, the advices' total and oldest time, open alerts."""
        reversals = self._db.execute("SELECT COUNT(*) FROM reversal WHERE status = 'PENDING'").fetchone()[0]
        count, total, oldest = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(t.amount), 0), MIN(a.created_at) FROM advice a "
            "JOIN txn t ON t.id = a.txn_id WHERE a.status = 'PENDING'").fetchone()
        alerts = self._db.execute(
            "SELECT (SELECT COUNT(*) FROM advice WHERE status IN ('DECLINED', 'EXPIRED') "
            "AND alert_ack_at IS NULL) + (SELECT COUNT(*) FROM reversal WHERE status = 'EXPIRED' "
            "AND alert_ack_at IS NULL)").fetchone()[0]
        return QueueStats(reversals=reversals, advices=count, advice_total=total,
                          oldest_advice_at=datetime.fromisoformat(oldest) if oldest else None,
                          alerts=alerts)

    # -- start-up recovery ------------------------------------------------------------------

    def recover(self) -> Recovery:
        """Settle what a power cut or a crash left half done (DESIGN §6.4), one commit:
        - a request still SENDING (cut between the commit and the answer): UNKNOWN, its
          reversal PENDING with reason 06 (a reversal of a request that never left is harmless);
        - an approval whose chip never gave its final answer (APPROVED, reversal ARMED):
          DECLINED, reversal PENDING (06), as when the card is pulled out."""
        with self._write() as db:
            sending = [r[0] for r in db.execute("SELECT id FROM txn WHERE status = 'SENDING' ORDER BY id")]
            unfinished = [r[0] for r in db.execute(
                "SELECT t.id FROM txn t JOIN reversal r ON r.txn_id = t.id "
                "WHERE t.status = 'APPROVED' AND r.status = 'ARMED' ORDER BY t.id")]
            detail = "restart during the exchange"
            for txn_id in sending:
                self._move(db, txn_id, "recover", "UNKNOWN", failure=detail)
                if not self._move_reversal(db, txn_id, "recover", "PENDING", reason_code="06", detail=detail):
                    db.execute("DELETE FROM sealed_request WHERE txn_id = ?", (txn_id,))
            detail = "restart before the card's final answer"
            for txn_id in unfinished:
                self._move(db, txn_id, "card_declined", "DECLINED", failure=detail)
                self._move_reversal(db, txn_id, "card_declined", "PENDING", reason_code="06", detail=detail)
        found = Recovery(tuple(sending), tuple(unfinished))
        if found:
            log.warning("recovery: %d request(s) in flight at the cut now unknown %s, %d approval(s) "
                        "without the card's final answer now reversed %s",
                        len(sending), sending, len(unfinished), unfinished)
        return found

    def unprinted(self, copies: tuple[str, ...] = PRINT_COPIES) -> list[TxnRecord]:
        """Approved transactions with one of `copies` not printed yet, oldest first."""
        for copy in copies:
            if copy not in PRINT_COPIES:
                raise ValueError(f"receipt copy {copy!r} not in {PRINT_COPIES}")
        missing = " OR ".join(f"t.printed_{copy}_at IS NULL" for copy in copies) or "0"
        rows = self._db.execute(SELECT_TXN + f" WHERE t.status = 'APPROVED' AND ({missing}) "
                                "ORDER BY t.id").fetchall()
        return [TxnRecord(**dict(row)) for row in rows]

    # -- reading and receipts ---------------------------------------------------------------

    def get(self, txn_id: int) -> TxnRecord:
        row = self._db.execute(SELECT_TXN + " WHERE t.id = ?", (txn_id,)).fetchone()
        if row is None:
            raise JournalError(f"txn {txn_id}: not in the journal")
        return TxnRecord(**dict(row))

    def last_approved(self) -> TxnRecord | None:
        return self._newest(" WHERE t.status = 'APPROVED'")

    def last(self) -> TxnRecord | None:
        """The newest transaction whatever its status (None on an empty journal)."""
        return self._newest("")

    def _newest(self, where: str) -> TxnRecord | None:
        row = self._db.execute(SELECT_TXN + where + " ORDER BY t.id DESC LIMIT 1").fetchone()
        return TxnRecord(**dict(row)) if row is not None else None

    def page(self, offset: int = 0, count: int = 20) -> list[TxnRecord]:
        """Transactions newest first, `offset` skipped, at most `count`."""
        rows = self._db.execute(SELECT_TXN + " ORDER BY t.id DESC LIMIT ? OFFSET ?",
                                (max(0, count), max(0, offset))).fetchall()
        return [TxnRecord(**dict(row)) for row in rows]

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM txn").fetchone()[0]

    def find_stan(self, stan: int, batch: int | None = None) -> TxnRecord | None:
        """The transaction with `stan` in `batch` (default: the current batch)."""
        batch = self.batch_no() if batch is None else batch
        row = self._db.execute(SELECT_TXN + " WHERE t.batch = ? AND t.stan = ?",
                               (batch, stan)).fetchone()
        return TxnRecord(**dict(row)) if row is not None else None

    def find_rrn(self, rrn: str) -> TxnRecord | None:
        """The newest transaction the host gave `rrn` (field 37)."""
        row = self._db.execute(SELECT_TXN + " WHERE t.rrn = ? ORDER BY t.id DESC LIMIT 1",
                               (rrn,)).fetchone()
        return TxnRecord(**dict(row)) if row is not None else None

    def batch_records(self, batch: int | None = None) -> list[TxnRecord]:
        """Every transaction of `batch` (default: the current one), oldest first."""
        batch = self.batch_no() if batch is None else batch
        rows = self._db.execute(SELECT_TXN + " WHERE t.batch = ? ORDER BY t.id", (batch,)).fetchall()
        return [TxnRecord(**dict(row)) for row in rows]

    def dependents(self, original_id: int) -> list[TxnRecord]:
        """The transactions naming `original_id` (its voids, refunds, completions), oldest first."""
        rows = self._db.execute(SELECT_TXN + " WHERE t.original_id = ? ORDER BY t.id",
                                (original_id,)).fetchall()
        return [TxnRecord(**dict(row)) for row in rows]

    def risk_history(self, midnight: str, recent: str, small: int = 0) -> list["RiskRow"]:
        """What firmware.limits.check needs (ISO local times; limits.window_bounds gives
        the arguments): the APPROVED DEBIT rows since `midnight` or `recent` (the velocity
        window), whichever is earlier, summed per entry mode (first two digits), wallet,
        inside or before the window and inside or before the day: a few RiskRows whatever
        the pace of sales, each with its row count and how many were at most `small`.
        One query over the txn_by_created index."""
        debit = tuple(name for name, k in KINDS.items() if k.totals == DEBIT)
        marks = ", ".join("?" * len(debit))
        rows = self._db.execute(
            "SELECT MIN(kind), 'APPROVED', SUM(amount), MIN(entry_mode), wallet, MAX(created_at),"
            " COUNT(*), SUM(amount <= ?) FROM txn WHERE created_at >= ? AND status = 'APPROVED'"
            f" AND kind IN ({marks}) GROUP BY substr(COALESCE(entry_mode, ''), 1, 2), wallet,"
            " created_at >= ?, created_at >= ?",
            (small, min(midnight, recent), *debit, recent, midnight)).fetchall()
        return [RiskRow(*row) for row in rows]

    def since(self, start: str) -> list[TxnRecord]:
        """Transactions created at or after `start` (ISO-8601 local time), oldest first
        (daily limits, velocity rules)."""
        rows = self._db.execute(SELECT_TXN + " WHERE t.created_at >= ? ORDER BY t.id",
                                (start,)).fetchall()
        return [TxnRecord(**dict(row)) for row in rows]

    def mark_printed(self, txn_id: int, copy: str) -> None:
        """Record the first time a receipt copy was printed; reprints keep the first time."""
        if copy not in PRINT_COPIES:
            raise ValueError(f"txn {txn_id}: receipt copy {copy!r} not in {PRINT_COPIES}")
        column = f"printed_{copy}_at"  # from the fixed tuple above, never from input text
        with self._write() as db:
            cur = db.execute(f"UPDATE txn SET {column} = COALESCE({column}, ?) WHERE id = ?", (self._stamp(), txn_id))
            if cur.rowcount != 1:
                raise JournalError(f"txn {txn_id}: cannot mark {copy} copy printed: not in the journal")

    def close(self) -> None:
        self.purge_card_data()
        self._db.close()

    # -- retention (the SETTLED commit of journal_settlement runs it) ------------------------

    def _prune(self, db: sqlite3.Connection, batch: int) -> int:
        """Delete (in the caller's commit, which settled `batch`) the transactions of batches
        SETTLED before the cutoff (now - keep_days; keep_days 0: when the settlement of
        `batch` began, so only `batch` and the open batch stay), created before it and before
        their batch closed, with their reversal, advice and upload rows; then baskets nothing
        points at. Kept: a row in flight or unknown, with sealed card data, an unfinished
        reversal / advice / upload, an alert not acknowledged, or the original of a kept row.
        Returns the rows deleted."""
        if self._keep_days:
            cutoff = (self._now() - timedelta(days=self._keep_days)).isoformat(timespec="seconds")
        else:
            cutoff = db.execute("SELECT created_at FROM settlement WHERE batch = ?",
                                (batch,)).fetchone()[0]
        db.execute("CREATE TEMP TABLE IF NOT EXISTS prune (id INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM temp.prune")
        db.execute(_PRUNABLE, {"cutoff": cutoff})
        while db.execute("DELETE FROM temp.prune WHERE id IN (SELECT original_id FROM txn WHERE "
                         "id NOT IN temp.prune AND original_id IS NOT NULL)").rowcount:
            pass  # an original stays while anything kept names it (chains: until none)
        for table in ("reversal", "advice", "batch_upload"):
            db.execute(f"DELETE FROM {table} WHERE txn_id IN temp.prune")
        count = db.execute("DELETE FROM txn WHERE id IN temp.prune").rowcount
        db.execute("DELETE FROM basket WHERE created_at < ? AND id NOT IN "
                   "(SELECT basket_id FROM txn WHERE basket_id IS NOT NULL)", (cutoff,))
        return count

    # -- internals --------------------------------------------------------------------------

    def _write(self):
        return immediate(self._db)

    def _stamp(self) -> str:
        return self._now().isoformat(timespec="seconds")

    def _update_status(self, db: sqlite3.Connection, table: str, key: str, txn_id: int,
                       allowed: tuple[str, ...], to: str, columns: dict[str, Any]) -> int:
        """UPDATE one row's status (and `columns`) only from an `allowed` status; rows changed.
        `table`, `key` and column names come from this module, never from input."""
        sets = "".join(f", {name} = ?" for name in columns)
        cur = db.execute(
            f"UPDATE {table} SET status = ?, updated_at = ?{sets} "
            f"WHERE {key} = ? AND status IN ({', '.join('?' * len(allowed))})",
            (to, self._stamp(), *columns.values(), txn_id, *allowed),
        )
        return cur.rowcount

    def _move(self, db: sqlite3.Connection, txn_id: int, what: str, to: str, **columns: Any) -> None:
        """Txn status change, legal only from the statuses in _TXN_FROM[what]."""
        if self._update_status(db, "txn", "id", txn_id, _TXN_FROM[what], to, columns) != 1:
            raise self._illegal(db, txn_id, to)

    def _move_reversal(self, db: sqlite3.Connection, txn_id: int, what: str, to: str, **columns: Any) -> bool:
        """Reversal status change if the txn has a reversal; False when it has none."""
        if self._update_status(db, "reversal", "txn_id", txn_id, _REVERSAL_FROM[what], to, columns) == 1:
            return True
        current = db.execute("SELECT status FROM reversal WHERE txn_id = ?", (txn_id,)).fetchone()
        if current is not None:
            raise JournalError(f"txn {txn_id}: reversal is {current[0]}, cannot become {to}")
        return False

    def _illegal(self, db: sqlite3.Connection, txn_id: int, to: str) -> JournalError:
        row = db.execute("SELECT stan, status FROM txn WHERE id = ?", (txn_id,)).fetchone()
        if row is None:
            return JournalError(f"txn {txn_id}: not in the journal, cannot become {to}")
        return JournalError(f"txn {txn_id} STAN {row['stan']:06d}: is {row['status']}, cannot become {to}")

    def _readable(self, rows: list[sqlite3.Row], what: str, kind: type) -> list:
        """`kind` items for the rows whose sealed request opens. A row whose does not (a
        damaged blob, a lost vault key) must not hold the queue forever: it is set aside as
        EXPIRED with the detail "sealed data unreadable" (an operator alert) and skipped."""
        items, unreadable = [], []
        for row in rows:
            try:
                items.append(kind(**self._unsealed(row, what)))
            except JournalError as exc:
                log.error("%s (set aside: operator alert)", exc)
                unreadable.append(row["txn_id"])
        if unreadable:
            table = {"reversal": "reversal", "advice": "advice"}[what]  # fixed names only
            with self._write() as db:
                db.executemany(f"UPDATE {table} SET status = 'EXPIRED', detail = 'sealed data "
                               "unreadable', updated_at = ? WHERE txn_id = ? AND status = 'PENDING'",
                               [(self._stamp(), txn_id) for txn_id in unreadable])
        return items

    def _unsealed(self, row: sqlite3.Row, what: str) -> dict[str, Any]:
        """The row's columns without `blob`, plus `request` = the opened sealed request."""
        txn_id, stan = row["txn_id"], row["stan"]
        if row["blob"] is None:
            raise JournalError(f"txn {txn_id} STAN {stan:06d}: pending {what} has no sealed request")
        try:
            request = _decode_request(self._vault.open_sealed(row["blob"], aad=_aad(txn_id)))
        except VaultError as exc:
            raise JournalError(f"txn {txn_id} STAN {stan:06d}: sealed request does not open: {exc}") from exc
        return {**{k: row[k] for k in row.keys() if k != "blob"}, "request": request}


# -- opening -------------------------------------------------------------------------------


def open_existing(data_dir: Path, vault_key_file: Path) -> "Journal":
    """A terminal's journal for a tool (kpos queue, txn, settle, report) on this thread:
    never creates a journal or a vault key by looking. FileNotFoundError naming the
    missing file; JournalError when the key or the journal does not open."""
    path = Path(data_dir) / JOURNAL_NAME
    for needed in (path, Path(vault_key_file)):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} not found")
    try:
        vault = Vault.open(vault_key_file)
    except (VaultError, OSError) as exc:
        raise JournalError(f"vault key {vault_key_file}: {exc}") from exc
    return Journal(path, vault)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # service user only; -wal/-shm copy it
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=True, timeout=5.0)
    except (OSError, sqlite3.Error) as exc:
        raise JournalError(f"journal {path}: cannot open: {exc}") from exc
    db.row_factory = sqlite3.Row
    return db


def _check_integrity(db: sqlite3.Connection, path: Path) -> None:
    try:
        rows = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        raise JournalCorrupt(f"journal integrity check failed: {path}: {exc}") from exc
    if rows != ["ok"]:
        raise JournalCorrupt(f"journal integrity check failed: {path}: {'; '.join(rows[:5])}")


def _configure(db: sqlite3.Connection, path: Path) -> None:
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise JournalError(f"journal {path}: journal_mode is {mode}, WAL required")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA secure_delete = ON")  # deleted sealed data is overwritten, not left in free pages


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        _check_reader(db, version)
        log.warning("journal %s: schema %d is newer than this release's %d; opening as is",
                    path, version, SCHEMA_VERSION)
        return
    for target in range(version + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1]:
                db.execute(statement)
            if target in MIN_READER:
                db.execute("INSERT INTO schema_reader (version, min_reader) VALUES (?, ?)",
                           (target, MIN_READER[target]))
            db.execute(f"PRAGMA user_version = {target:d}")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise JournalError(f"journal {path}: migration to schema {target} failed: {exc}") from exc
        db.execute("COMMIT")
        log.info("journal %s: schema migrated to %d", path, target)


def _check_reader(db: sqlite3.Connection, version: int) -> None:
    """JournalError when a step of the newer `version` declared it needs a newer reader
    than this release (nothing is written: the journal stays as the newer release left it)."""
    need = db.execute("SELECT MAX(min_reader) FROM schema_reader").fetchone()[0] or 0
    if need > SCHEMA_VERSION:
        raise JournalError(f"journal schema {version} needs release with schema >= {need} "
                           f"(this release: {SCHEMA_VERSION})")


# -- values --------------------------------------------------------------------------------


def _check_request_args(kind: str, stan: int, batch: int, amount: int, currency: int, request: dict) -> None:
    if not kind:
        raise ValueError("record_request: kind is empty")
    for name, value, low, high in (("stan", stan, 1, STAN_MAX), ("batch", batch, 1, BATCH_MAX),
                                   ("amount", amount, 0, None), ("currency", currency, 1, 999)):
        if type(value) is not int or value < low or (high is not None and value > high):
            raise ValueError(f"record_request {kind}: {name} {value!r} out of range (STAN {stan!r})")
    if "11" in request and str(request["11"]).strip().lstrip("0") != str(stan):
        raise ValueError(f"record_request {kind}: field 11 {request['11']!r} does not match STAN {stan:06d}")


def _card_columns(card: CardData | None) -> tuple[str | None, ...]:
    """masked_pan, entry_mode, aid, app_label, arqc, tvr, tsi, cvm, cryptogram_type."""
    if card is None:
        return (None,) * 9
    return (card.masked_pan, card.entry_mode, card.aid or None, card.app_label or None,
            card.cryptogram or None, card.tvr or None, card.tsi or None, card.cvm or None,
            card.cryptogram_type or None)


def _chip_columns(card: CardData | None) -> tuple[str | None, ...]:
    """arqc, tvr, tsi, cryptogram_type after the second GENERATE AC (None: unchanged)."""
    if card is None:
        return (None,) * 4
    return (card.cryptogram or None, card.tvr or None, card.tsi or None, card.cryptogram_type or None)


def _masked(pan: str | None) -> str | None:
    """A PAN for a clear column: masked (an already masked one stays as it is)."""
    return None if not pan else (pan if "*" in pan else mask_pan(pan))


def _aad(txn_id: int) -> bytes:
    return f"kpos-journal-txn:{txn_id}".encode()


def _encode_request(request: dict) -> bytes:
    """ISO 8583 field dict -> JSON bytes, minus NEVER_STORED_FIELDS, bytes as {"$hex": ...}."""
    kept = {key: value for key, value in request.items() if str(key) not in NEVER_STORED_FIELDS}
    return json.dumps(_to_json(kept, "request"), sort_keys=True, separators=(",", ":")).encode()


def _decode_request(data: bytes) -> dict:
    return json.loads(data, object_hook=_from_json)


def _to_json(value: Any, where: str) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"$hex": bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): _to_json(v, f"{where}: field {k}") for k, v in value.items()}
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise JournalError(f"{where}: cannot store a {type(value).__name__}")


def _from_json(obj: dict) -> Any:
    if obj.keys() == {"$hex"}:
        return bytes.fromhex(obj["$hex"])
    return obj
