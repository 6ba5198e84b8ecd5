"""Transaction limits and velocity rules: may a payment go ahead, does a supervisor have to
confirm it, or is it refused.

Pure functions over values, any thread (the app reads the journal once with
`journal.risk_history(*window_bounds(risk, now))` and passes the rows as `history`: the
day's and the velocity window's approved DEBIT rows summed per entry mode and wallet, each
group with its row count and how many were small, so a busy day or a fast checkout costs one
small read, not one row per sale; single rows, such as journal TxnRecords, do as well). Amounts are int
minor units; `now` is a naive local datetime and a row's `created_at` ISO-8601 local time
text, as the journal writes them. Entry modes come from field 22 ("051" chip, "071"
contactless, "021" and "801" swipe, "011" manual); a QR payment has entry_mode "" and its
wallet (wechat | alipay | unionpay_qr).
Only money-moving kinds (txnkinds DEBIT: sale, completion, repayment, QR sale) are limited;
voids, refunds, pre-auths and balance inquiries always pass. A history row counts when it is
APPROVED (online or offline) and of a DEBIT kind. Rules, first hit wins, a limit of 0 is no
limit, exactly at a limit is allowed:
1. per transaction, by entry mode (max_chip ... max_qr) -> refuse;
2. per day since local midnight, approved amount of the same entry mode plus this one
   (daily_<mode>; a QR payment also daily_<wallet>) -> refuse;
3. in the last velocity_window seconds, any entry mode, counting this one: more than
   velocity_count payments of at most velocity_small, or a total over velocity_total ->
   risk.velocity_action ("confirm" | "refuse").
Logging: `check()` itself logs every verdict other than ok (INFO: kind, entry mode, amount,
reason; no card data), so the caller need not. Errors: ValueError for an unknown kind,
entry mode or wallet (a programming error, not a card problem).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Iterable

from firmware.config import RiskConfig
from firmware.money import format_amount
from firmware.txnkinds import DEBIT, KINDS

__all__ = ["Verdict", "OK", "check", "window_start", "window_bounds", "entry_class",
           "ENTRY_CLASSES", "WALLETS"]

log = logging.getLogger("kpos.limits")

# field 22, first two digits (PAN entry mode) -> the entry class the limits are set for
ENTRY_CLASSES = {"05": "chip", "07": "contactless", "02": "swipe", "80": "swipe",
                 "01": "manual"}
WALLETS = ("wechat", "alipay", "unionpay_qr")
_LABELS = {"chip": "CHIP", "contactless": "CONTACTLESS", "swipe": "SWIPE", "manual": "MANUAL",
           "qr": "QR", "wechat": "WECHAT", "alipay": "ALIPAY", "unionpay_qr": "UNIONPAY QR"}


@dataclass(frozen=True)
class Verdict:
    action: str  # flows.types.RISK_ACTIONS: ok | confirm | refuse
    reason: str = ""  # short, for the display (wrapped) and the log; "" when ok


OK = Verdict("ok")


def entry_class(entry_mode: str, wallet: str = "") -> str:
    """chip | contactless | swipe | manual | qr for a field 22 value (QR: a wallet)."""
    if wallet:
        if wallet not in WALLETS:
            raise ValueError(f"wallet {wallet!r} not in {WALLETS}")
        return "qr"
    mode = ENTRY_CLASSES.get((entry_mode or "")[:2])
    if mode is None:
        raise ValueError(f"entry mode {entry_mode!r} unknown")
    return mode


def window_start(risk: RiskConfig, now: datetime) -> str:
    """ISO time of the earliest row check() needs: local midnight or the velocity window."""
    start = min(_midnight(now), now - timedelta(seconds=risk.velocity_window))
    return start.isoformat(timespec="seconds")


def window_bounds(risk: RiskConfig, now: datetime) -> tuple[str, str, int]:
    """(local midnight, start of the velocity window as ISO times, velocity_small):
    Journal.risk_history's arguments."""
    start = now - timedelta(seconds=risk.velocity_window)
    return (_midnight(now).isoformat(timespec="seconds"), start.isoformat(timespec="seconds"),
            risk.velocity_small)


def check(risk: RiskConfig, *, kind: str, amount: int, entry_mode: str, wallet: str,
          history: Iterable, now: datetime, currency: int = 156) -> Verdict:
    """The verdict on authorising `amount` of `kind` now (module contract)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} unknown")
    if KINDS[kind].totals != DEBIT:
        return OK
    mode = entry_class(entry_mode, wallet)
    rows = [row for row in history if _counts(row)]
    money = partial(format_amount, currency=currency)
    verdict = (_per_txn(risk, mode, amount, money)
               or _daily(risk, mode, wallet, amount, rows, now, money)
               or _velocity(risk, amount, rows, now, money) or OK)
    if verdict is not OK:
        log.info("risk %s: %s %s %s: %s", verdict.action, kind, mode, money(amount),
                 verdict.reason)
    return verdict


def _per_txn(risk: RiskConfig, mode: str, amount: int, money) -> Verdict | None:
    limit = getattr(risk, f"max_{mode}")
    if limit and amount > limit:
        return Verdict("refuse", f"Over {_LABELS[mode]} limit {money(limit)}")
    return None


def _daily(risk: RiskConfig, mode: str, wallet: str, amount: int, rows: list, now: datetime,
           money) -> Verdict | None:
    midnight = _midnight(now)
    today = [row for row in rows if _at(row) >= midnight]
    scopes = [(mode, [row for row in today if _row_class(row) == mode])]
    if mode == "qr":
        scopes.append((wallet, [row for row in today if row.wallet == wallet]))
    for scope, same in scopes:
        limit = getattr(risk, f"daily_{scope}")
        if limit and sum(row.amount for row in same) + amount > limit:
            return Verdict("refuse", f"Over {_LABELS[scope]} daily limit {money(limit)}")
    return None


def _velocity(risk: RiskConfig, amount: int, rows: list, now: datetime,
              money) -> Verdict | None:
    start = now - timedelta(seconds=risk.velocity_window)
    recent = [row for row in rows if _at(row) >= start]
    span = _span(risk.velocity_window)
    if risk.velocity_count:
        small = sum(_small_rows(row, risk.velocity_small) for row in recent)
        small += amount <= risk.velocity_small
        if small > risk.velocity_count:
            return Verdict(risk.velocity_action, f"{small} sales in {span}")
    if risk.velocity_total:
        total = sum(row.amount for row in recent) + amount
        if total > risk.velocity_total:
            return Verdict(risk.velocity_action, f"Total {money(total)} in {span}")
    return None


def _counts(row) -> bool:
    kind = KINDS.get(row.kind)
    return row.status == "APPROVED" and kind is not None and kind.totals == DEBIT


def _small_rows(row, small: int) -> int:
    """How many payments of at most `small` the history row stands for (a group of rows
    from Journal.risk_history counted them, for its own `small`: the same config)."""
    counted = getattr(row, "small_rows", None)
    return int(row.amount <= small) if counted is None else counted


def _row_class(row) -> str | None:
    return "qr" if row.wallet else ENTRY_CLASSES.get((row.entry_mode or "")[:2])


def _at(row) -> datetime:
    return datetime.fromisoformat(row.created_at)


def _midnight(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _span(seconds: float) -> str:
    """600 -> "10 min", 90 -> "90 s"."""
    return f"{int(seconds // 60)} min" if seconds % 60 == 0 else f"{seconds:g} s"
