"""ISO 8583 requests of the full card transaction set: sale, void, refund, pre-auth, its
cancel, completion (online or as an advice) and completion void, balance inquiry, card
repayment. Wire table: docs/acquirer-protocol.md §11.

Pure functions, any thread, no I/O. Same conventions as messages.py: field dicts with "t"
= MTI, str values (bytes for 52 and 55), amounts int minor units, and every error a
MessageError whose text starts with the field ("field 37: a refund needs the original
RRN"). Kinds are firmware.txnkinds names; QR kinds are built by the wallet code (§12).
Kinds whose card is read for the PAN only (void, refund, cancel, completion, completion
void) never carry track 2 (35), a PIN block (52) or chip data (55). Field 103 of a
repayment is a clear PAN: log requests with messages.describe() only.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from firmware.acquirer.messages import (
    MessageError, TerminalIds, amount_field, batch_field, card_fields, card_request, currency_field,
    in_field_order,
)
from firmware.cardsafe import luhn_ok
from firmware.emv.card import CardData
from firmware.flows.types import OriginalRef
from firmware.txnkinds import KINDS

__all__ = ["Wire", "WIRE", "COMPLETION_ADVICE", "COMPLETION_TOLERANCE_PCT", "completion_limit",
           "txn_request",
           "original_field", "parse_balance", "balance_field", "kind_of"]


@dataclass(frozen=True)
class Wire:
    """How a kind travels: MTI, processing code (3), message type (60.1)."""

    mti: str
    processing: str
    msg_type: str


WIRE: dict[str, Wire] = {
    "sale": Wire("0200", "000000", "22"),
    "void": Wire("0200", "200000", "23"),
    "refund": Wire("0200", "200000", "25"),
    "preauth": Wire("0100", "030000", "10"),
    "preauth_cancel": Wire("0100", "200000", "11"),
    "completion": Wire("0200", "000000", "20"),
    "completion_void": Wire("0200", "200000", "21"),
    "balance": Wire("0200", "310000", "01"),
    "repayment": Wire("0200", "400000", "48"),
}
COMPLETION_ADVICE = Wire("0220", "000000", "24")  # a completion sent store-and-forward
_SALE_ADVICE_TYPE = "30"  # 60.1 of messages.advice_request (an offline sale)

COMPLETION_TOLERANCE_PCT = 15  # a completion may exceed its pre-auth by this much

# What a kind must know of its original (checked) and which original fields it carries
# when known: "stan" = field 61 with the original STAN and date, "rrn" = 37, "auth" = 38.
_NEEDS: dict[str, tuple[str, ...]] = {
    "void": ("stan",), "refund": ("rrn",), "preauth_cancel": ("auth",),
    "completion": ("auth",), "completion_void": ("stan",),
}
_CARRIES: dict[str, tuple[str, ...]] = {
    "void": ("rrn", "auth"), "refund": ("rrn",), "preauth_cancel": ("auth",),
    "completion": ("auth",), "completion_void": ("rrn", "auth"),
}
_SAME_AMOUNT = ("void", "preauth_cancel", "completion_void")  # 4 = the original's amount

# Field 54 (balance answer): account type, amount type, currency, C/D, amount (n12).
_BALANCE_ACCOUNT, _BALANCE_AVAILABLE = "10", "02"
_BALANCE_ENTRY = 20


def txn_request(ids: TerminalIds, kind: str, *, stan: int, batch: int, amount: int,
                currency: int, card: CardData, pin_block: bytes | None, now: datetime,
                original: OriginalRef | None = None, target_pan: str | None = None,
                advice: bool = False) -> dict:
    """The request of a card transaction `kind` (a txnkinds name, not qr_*), per the wire
    table. `amount` is minor units (0 for a balance inquiry, which sends no field 4);
    `original` names the transaction a void, refund, cancel or completion acts on;
    `target_pan` is the card a repayment pays (field 103); `advice` sends a completion as
    an 0220 (60.1 24) for the store-and-forward queue."""
    wire = _wire(kind, advice)
    msg = {
        **card_request(wire.mti, wire.processing, wire.msg_type, ids, stan=stan, batch=batch,
                       currency=currency, card=card, now=now),
        **_amount_field(kind, amount, original),
        **_verification(kind, card, pin_block),
        **_original_fields(kind, original),
        **_target(kind, target_pan),
    }
    return in_field_order(msg)


def _wire(kind: str, advice: bool) -> Wire:
    if kind not in WIRE:
        why = "is built by the wallet code (§12)" if kind in KINDS else "is not a kind"
        raise MessageError(f"field 3: {kind!r} {why}")
    if advice and kind != "completion":
        raise MessageError(f"field t: a {kind} is never sent as an advice")
    return COMPLETION_ADVICE if advice else WIRE[kind]


def _amount_field(kind: str, amount: int, original: OriginalRef | None) -> dict:
    if kind == "balance":
        if amount != 0:
            raise MessageError("field 4: a balance inquiry carries no amount")
        return {}
    if original and original.amount and kind in _SAME_AMOUNT and amount != original.amount:
        raise MessageError(f"field 4: a {kind} carries the original amount {original.amount}")
    if original and original.amount and kind == "completion" and amount > completion_limit(
            original.amount):
        raise MessageError(f"field 4: completion above the pre-auth + {COMPLETION_TOLERANCE_PCT}%")
    return {"4": amount_field(amount)}


def completion_limit(preauth_amount: int) -> int:
    """The most a completion of `preauth_amount` may be (minor units, rounded down)."""
    return preauth_amount * (100 + COMPLETION_TOLERANCE_PCT) // 100


def _verification(kind: str, card: CardData, pin_block: bytes | None) -> dict:
    """A PIN kind's 23, 35, 52, 55 as a sale's; the others read the card for its PAN only."""
    if KINDS[kind].card == "pin":
        return card_fields(card, pin_block)
    if pin_block is not None:
        raise MessageError(f"field 52: a {kind} carries no PIN block")
    return {}


def _original_fields(kind: str, original: OriginalRef | None) -> dict:
    needs = _NEEDS.get(kind)
    if needs is None:
        if original is not None:
            raise MessageError(f"field 61: a {kind} names no original transaction")
        return {}
    if original is None:
        raise MessageError(f"field 61: a {kind} needs its original transaction")
    if "stan" in needs and not (original.stan and len(original.date) == 4):
        raise MessageError(f"field 61: a {kind} needs the original STAN and date")
    if "rrn" in needs and not original.rrn:
        raise MessageError(f"field 37: a {kind} needs the original RRN")
    if "auth" in needs and not original.auth_code:
        raise MessageError(f"field 38: a {kind} needs the original auth code")
    msg = {"61": original_field(original)}
    if "rrn" in _CARRIES[kind] and original.rrn:
        msg["37"] = _checked("37", "RRN", original.rrn, 12)
    if "auth" in _CARRIES[kind] and original.auth_code:
        msg["38"] = _checked("38", "auth code", original.auth_code, 6)
    return msg


def _checked(field: str, name: str, value: str, size: int) -> str:
    if len(value) != size or not value.isascii() or not value.isalnum():
        raise MessageError(f"field {field}: original {name} must be {size} letters or digits")
    return value


def _target(kind: str, target_pan: str | None) -> dict:
    if kind != "repayment":
        if target_pan is not None:
            raise MessageError(f"field 103: a {kind} names no card to pay")
        return {}
    if target_pan is None or not luhn_ok(target_pan) or len(target_pan) > 19:
        raise MessageError("field 103: the card to pay must be a valid card number")
    return {"103": target_pan}


def original_field(original: OriginalRef) -> str:
    """Field 61: original batch (6) + STAN (6) + date MMDD (4); zeros for what is not known
    (a refund keyed by RRN names no batch or STAN of this terminal)."""
    date = original.date or "0000"
    if len(date) != 4 or not date.isdigit() or not date.isascii():
        raise MessageError(f"field 61: original date {date!r} is not MMDD")
    if not isinstance(original.stan, int) or not 0 <= original.stan <= 999999:
        raise MessageError(f"field 61: original STAN {original.stan!r} outside 0..999999")
    try:
        batch = batch_field(original.batch)
    except MessageError:
        raise MessageError(f"field 61: original batch {original.batch!r} outside 0..999999"
                           ) from None
    return f"{batch}{original.stan:06d}{date}"


def balance_field(currency: int, amount: int) -> str:
    """Field 54 of a balance answer: one available-balance entry (signed minor units)."""
    if not isinstance(amount, int) or abs(amount) > 999_999_999_999:
        raise MessageError(f"field 54: balance {amount!r} is not 12-digit minor units")
    sign = "C" if amount >= 0 else "D"
    return f"{_BALANCE_ACCOUNT}{_BALANCE_AVAILABLE}{currency_field(currency)}{sign}{abs(amount):012d}"


def parse_balance(f54: str) -> tuple[int, int]:
    """(currency, signed minor units) of the available balance in field 54 (entries of 20
    characters; the one of amount type 02). MessageError naming field 54 on anything else."""
    if not isinstance(f54, str) or not f54 or len(f54) % _BALANCE_ENTRY:
        raise MessageError("field 54: not whole 20-character balance entries")
    entries = [f54[i:i + _BALANCE_ENTRY] for i in range(0, len(f54), _BALANCE_ENTRY)]
    for entry in entries:
        if entry[2:4] != _BALANCE_AVAILABLE:
            continue
        currency, sign, digits = entry[4:7], entry[7], entry[8:]
        if not (currency.isdigit() and digits.isdigit() and entry.isascii() and sign in "CD"):
            raise MessageError(f"field 54: malformed balance entry {entry[:8]!r}...")
        return int(currency), int(digits) * (1 if sign == "C" else -1)
    raise MessageError("field 54: no available-balance entry (amount type 02)")


# (MTI, processing code, 60.1) -> kind; advices and their repeats included.
_KIND_OF: dict[tuple[str, str, str], str] = {
    **{(w.mti, w.processing, w.msg_type): kind for kind, w in WIRE.items()},
    **{(mti, COMPLETION_ADVICE.processing, msg_type): kind
       for mti in ("0220", "0221")
       for msg_type, kind in ((COMPLETION_ADVICE.msg_type, "completion"),
                              (_SALE_ADVICE_TYPE, "sale"))},
}


def kind_of(request: dict) -> str:
    """The kind of a request (an advice or its repeat too) from its MTI, processing code
    and 60.1; "" when unknown, and for reversals (0400/0401: see the request they clone)."""
    key = (str(request.get("t", "")), str(request.get("3", "")), str(request.get("60", ""))[:2])
    return _KIND_OF.get(key, "")
