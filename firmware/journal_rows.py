"""The journal's row types, errors, counters and row query, shared by firmware.journal and
its parts (firmware.journal_settlement, firmware.journal_qr).

Plain values, no I/O except read_counter (blocking sqlite3, journal worker thread only, like
every journal call). firmware.journal re-exports the public names.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass

__all__ = ["JournalError", "JournalCorrupt", "TxnRecord", "TxnExtra", "SELECT_TXN", "STAN_MAX",
           "BATCH_MAX", "read_counter"]

STAN_MAX = 999999
BATCH_MAX = 999999


class JournalError(Exception):
    """A journal operation was refused or failed; the message names the txn id / STAN."""


class JournalCorrupt(JournalError):
    """The database failed PRAGMA integrity_check (or is not a database): a visible fault."""


@dataclass(frozen=True)
class TxnRecord:
    """The clear columns of one transaction: masked PAN only, no card data."""

    id: int
    terminal_id: str
    kind: str
    stan: int
    batch: int
    amount: int  # minor units
    currency: int  # ISO 4217 numeric
    status: str  # SENDING | APPROVED | DECLINED | FAILED | UNKNOWN
    operator: str
    masked_pan: str | None
    entry_mode: str | None
    aid: str | None
    app_label: str | None
    arqc: str | None
    created_at: str
    updated_at: str
    response_code: str | None
    rrn: str | None
    auth_code: str | None
    failure: str | None
    printed_merchant_at: str | None
    printed_customer_at: str | None
    tvr: str | None  # EMV terminal verification results (95), hex; None for no chip
    tsi: str | None  # EMV transaction status information (9B), hex
    cvm: str | None  # CVM performed: online_pin | offline_pin | signature | none
    cryptogram_type: str | None  # of `arqc` (the latest cryptogram): ARQC | TC | AAC
    offline_code: str | None  # approved offline: Y1 | Y3 (by the card) | 00 (SAF); None online
    reversal_status: str | None  # None when the txn was not reversible
    advice_status: str | None  # PENDING | ACKED | DECLINED | EXPIRED; None when online
    original_id: int | None = None  # void, refund, completion ...: the original's row
    original_rrn: str | None = None  # the original as keyed (when not in this journal)
    original_date: str | None = None  # MMDD
    wallet: str | None = None  # QR payments: wechat | alipay | unionpay_qr
    target_pan: str | None = None  # card repayment: the paid card, masked
    original_auth: str | None = None  # the original's auth code as keyed (pre-auth family)
    basket_id: int | None = None  # the basket this payment pays (part of)
    tendered: int | None = None  # cash: minor units the customer handed over


@dataclass(frozen=True)
class TxnExtra:
    """Columns a new row may carry besides the card's: the original transaction it names
    (`original_id` in this journal, or the keyed RRN and MMDD date), the QR wallet, a
    repayment's paid card (masked before it is stored)."""

    original_id: int | None = None
    original_rrn: str | None = None
    original_date: str | None = None
    wallet: str | None = None
    target_pan: str | None = None  # card repayment: the card paid (stored masked)
    original_auth: str | None = None  # the original's auth code (pre-auth cancel, completion)
    basket_id: int | None = None  # the basket this payment pays (part of)
    tendered: int | None = None  # cash: minor units the customer handed over


# The clear columns of a TxnRecord; callers append WHERE / JOIN / ORDER BY.
SELECT_TXN = """SELECT t.id, t.terminal_id, t.kind, t.stan, t.batch, t.amount, t.currency, t.status,
       t.operator, t.masked_pan, t.entry_mode, t.aid, t.app_label, t.arqc, t.created_at, t.updated_at,
       t.response_code, t.rrn, t.auth_code, t.failure, t.printed_merchant_at, t.printed_customer_at,
       t.tvr, t.tsi, t.cvm, t.cryptogram_type, t.offline_code, r.status AS reversal_status,
       a.status AS advice_status, t.original_id, t.original_rrn, t.original_date, t.wallet,
       t.target_pan, t.original_auth, t.basket_id, t.tendered
    FROM txn t LEFT JOIN reversal r ON r.txn_id = t.id LEFT JOIN advice a ON a.txn_id = t.id"""


def read_counter(db: sqlite3.Connection, name: str) -> int:
    return db.execute("SELECT value FROM counter WHERE name = ?", (name,)).fetchone()[0]
