"""Offline policy: may the terminal approve this payment without the host? (DESIGN §6.3)

Pure functions over immutable values, any thread, never blocks. The app asks `refusal()`
once the host turned out to be unreachable (or before asking it, when the card itself
approves offline); "" means the offline approval may go ahead, anything else is the short
reason the cashier sees on the decline screen (<= 20 characters, no card data).

Rules, in the order they are checked (FIELD-NOTES §3, Square / Adyen / Stripe practice):
- `[offline] mode = "require-online"`: never.
- Only a sale: never a refund, a void, a pre-authorisation, a balance inquiry.
- Only chip (05x) or contactless (07x): never a swipe, a fallback swipe or a keyed card
  (their data cannot be checked offline), and never a wallet QR code (kind "qr").
- Never with an online PIN as the cardholder verification: it cannot be checked offline,
  and a PIN block is never stored for later.
- Caps over the offline approvals still waiting for the acquirer (`QueueStats`): this one
  at most `max_amount`; with it, at most `max_count` waiting and at most `max_total`
  waiting in total; and none while the oldest waiting one is older than `max_age` seconds.
Amounts are int minor units; times naive local datetimes from the terminal's clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from firmware.config import OfflineConfig
from firmware.txnkinds import KINDS

__all__ = ["QueueStats", "OFFLINE_ENTRY", "refusal"]

OFFLINE_ENTRY = ("05", "07")  # field 22 PAN entry digits allowed offline: chip, contactless
_ENTRY_REFUSALS = {"02": "No swipe offline", "80": "No swipe offline",
                   "01": "No keying offline", "03": "No QR code offline"}


@dataclass(frozen=True)
class QueueStats:
    """What waits for the acquirer (the journal's view; firmware.journal.queue_stats)."""

    reversals: int = 0  # reversals pending
    advices: int = 0  # offline approvals not yet acknowledged
    advice_total: int = 0  # their amount, minor units
    oldest_advice_at: datetime | None = None  # when the oldest of them was approved
    alerts: int = 0  # declined or expired items the operator has not acknowledged

    @property
    def queued(self) -> int:
        """Items the forwarder still has to send (shown on the idle screen)."""
        return self.reversals + self.advices


def refusal(cfg: OfflineConfig, *, kind: str, entry_mode: str, cvm: str, amount: int,
            stats: QueueStats, now: datetime) -> str:
    """"" when an offline approval is allowed, else why not (short, shown to the cashier)."""
    if cfg.mode != "prefer-online":
        return "Online only"
    if kind.startswith("qr"):
        return "No QR code offline"
    known = KINDS.get(kind)
    if known is None or not known.offline:
        return f"No {known.label.lower() if known else kind} offline"
    entry = (entry_mode or "")[:2]
    if entry not in OFFLINE_ENTRY:
        return _ENTRY_REFUSALS.get(entry, "Entry not offline")
    if cvm == "online_pin":
        return "PIN needs the host"
    if amount > cfg.max_amount:
        return "Over offline limit"
    if stats.advices + 1 > cfg.max_count:
        return "Offline count full"
    if stats.advice_total + amount > cfg.max_total:
        return "Offline total full"
    oldest = stats.oldest_advice_at
    if oldest is not None and (now - oldest).total_seconds() > cfg.max_age:
        return "Queued too long"
    return ""
