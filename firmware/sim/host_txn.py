"""Acquirer simulator: void, refund, pre-authorisation and its cancel and completion(s),
balance inquiry, card repayment (docs/acquirer-protocol.md §11).

install(sim) registers one handler per (MTI, 60.1) with AcquirerSimulator.route(). The
handlers run on the simulator's ledger thread and return the response fields (the caller
sets the MTI) or None for no answer. Every decision past the format check is recorded in
the ledger with its money move in one transaction (Ledger.record); a missing field is
answered 30 and not recorded. Reversals of these kinds need no handler here: the
simulator's 0400 handler calls Ledger.reverse(), which undoes whatever the original did.
Kinds with a PIN (pre-auth, balance, repayment) are judged by the sale's own decision
(chip data, swipe, card, ARQC, expiry, PIN, funds) for the same card and amount; the
others are judged against their original. Logs carry masked PANs only.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable

from firmware.acquirer.txn_messages import (
    COMPLETION_ADVICE, WIRE, balance_field, completion_limit,
)
from firmware.cardsafe import mask_pan
from firmware.sim import acquirer as acq  # imports this module: use acq.X at call time
from firmware.sim.ledger import (
    ADVICE, CREDIT, DEBIT, HOLD_PLACE, HOLD_RELEASE, SALE, Authorisation, Hold, pan_key,
)
from firmware.txnkinds import KINDS

__all__ = ["install", "COMPLETION_ADVICE_KIND", "RC_NOT_FOUND", "RC_OVER_AMOUNT",
           "RC_WRONG_AMOUNT"]

log = logging.getLogger("kpos.sim.txn")

RC_NOT_FOUND = "25"  # the original transaction cannot be found
RC_OVER_AMOUNT = "61"  # refunds above the original, completion above pre-auth + 15%
RC_WRONG_AMOUNT = "64"  # the amount is not the original's
COMPLETION_ADVICE_KIND = "completion_advice"  # ledger kind of a 0220 completion
CNY = 156  # field 54 currency when the request has no field 49

# kind -> (money, hold) its approval does in the ledger (Ledger.record).
_MOVES: dict[str, tuple[str, str]] = {
    "void": (CREDIT, ""), "refund": (CREDIT, ""), "preauth": ("none", HOLD_PLACE),
    "preauth_cancel": ("none", HOLD_RELEASE), "completion": (DEBIT, HOLD_RELEASE),
    "completion_void": (CREDIT, ""), "balance": ("none", ""), "repayment": (DEBIT, ""),
}
# The ledger kinds a void or completion void, and a refund, may act on.
_VOIDABLE = {"void": (SALE, ADVICE), "completion_void": ("completion", COMPLETION_ADVICE_KIND)}
_REFUNDABLE = (SALE, ADVICE, "completion", COMPLETION_ADVICE_KIND)
# Judged as a sale of the same card (the sale itself has the simulator's own handler).
_PIN_KINDS = tuple(k for k in WIRE if KINDS[k].card == "pin" and k != "sale")
_FIELDS = ("2", "3", "11", "41")  # every request: the ledger key and the card
_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "void": ("4", "61"), "refund": ("4", "37", "61"), "preauth": ("4",),
    "preauth_cancel": ("4", "38", "61"), "completion": ("4", "38", "61"),
    "completion_void": ("4", "61"), "balance": (), "repayment": ("4", "103"),
}
_ORIGINAL_LEN = 16  # field 61: batch (6) + STAN (6) + MMDD (4)


def install(sim) -> None:
    """Register the handlers on `sim` (firmware.sim.acquirer.AcquirerSimulator)."""
    host = TxnHost(sim)
    for kind, wire in WIRE.items():
        if kind != "sale":  # the simulator's own 0200 handler
            sim.route(wire.mti, wire.msg_type, host.handler(kind))
    for mti in ("0220", "0221"):
        sim.route(mti, COMPLETION_ADVICE.msg_type, host.completion_advice)


class TxnHost:
    """The decisions of this family, over the simulator's catalog and ledger."""

    def __init__(self, sim):
        self.sim = sim

    def handler(self, kind: str) -> Callable[[dict, datetime], dict | None]:
        return lambda req, now: self.online(kind, req, now)

    def online(self, kind: str, req: dict, now: datetime) -> dict | None:
        """An 0100 / 0200 of `kind`: decide, record, answer (None: no answer)."""
        missing = _missing(kind, req)
        if missing:
            return _format_error(req, missing)
        decision, original_id = self._decide(kind, req, now)
        rc = None if decision.rc == acq.NO_ANSWER else decision.rc
        auth = self._record(kind, kind, req, now, decision, rc, original_id)
        if rc is None:
            return None
        resp = acq.sale_response(req, auth, acq.issuer_icc_data(req, self.sim.catalog.imk_ac, rc))
        if kind == "balance" and rc == acq.RC_APPROVED:
            currency = int(req.get("49", CNY))
            resp["54"] = balance_field(currency, self.sim.ledger.balance(req["2"]))
        return resp

    def completion_advice(self, req: dict, now: datetime) -> dict:
        """0220 / 0221 completion: the recorded answer again for a known advice (nothing
        moves twice), else decided as an online completion and recorded."""
        missing = _missing("completion", req)
        if missing:
            return _format_error(req, missing)
        date = req.get("13") or acq.mmdd(now)
        recorded = self.sim.ledger.repeat_advice(req["41"], req["11"], date,
                                                 kind=COMPLETION_ADVICE_KIND)
        if recorded is not None:
            log.info("completion advice %s STAN %s: repeat %d, answering %s again", req["t"],
                     req["11"], recorded.repeats, recorded.rc)
            return acq.advice_response(req, recorded)
        decision, original_id = self._decide("completion", req, now)
        auth = self._record("completion", COMPLETION_ADVICE_KIND, req, now, decision,
                            decision.rc, original_id)
        return acq.advice_response(req, auth)

    def _record(self, kind: str, ledger_kind: str, req: dict, now: datetime,
                decision: acq.Decision, rc: str | None, original_id: int | None) -> Authorisation:
        money, hold = _MOVES[kind]
        auth = self.sim.ledger.record(
            ledger_kind, tid=req["41"], stan=req["11"], date=req.get("13") or acq.mmdd(now),
            batch=acq.batch_of(req), pan=req["2"], amount=int(req.get("4", "0")), rc=rc,
            reason=decision.reason, arqc=decision.arqc, money=money, original_id=original_id,
            counter_pan=req.get("103") if kind == "repayment" else None, hold=hold)
        log.info("%s STAN %s card %s amount %d: %s (%s)", ledger_kind, auth.stan,
                 auth.pan_masked, auth.amount, rc or "no answer", decision.reason)
        return auth

    # decisions (ledger thread) ---------------------------------------------------------

    def _decide(self, kind: str, req: dict, now: datetime) -> tuple[acq.Decision, int | None]:
        """Terminal (03), processing code (12), duplicate STAN (94), then the kind's rules."""
        tid = req["41"]
        if tid not in self.sim.catalog.terminal_keys:
            return acq.Decision(acq.RC_BAD_TERMINAL, "unknown terminal"), None
        if req["3"] != WIRE[kind].processing:
            return acq.Decision(acq.RC_BAD_TXN, f"processing code is not a {kind}"), None
        if self.sim.ledger.find(tid, req["11"], req.get("13") or acq.mmdd(now)) is not None:
            return acq.Decision(acq.RC_DUPLICATE, "duplicate STAN"), None
        if kind in _PIN_KINDS:
            return self._as_sale(kind, req, now), None
        if not self.sim.ledger.has_account(req["2"]):
            return acq.Decision(acq.RC_BAD_CARD, "unknown card"), None
        refused, original_id = _DECIDERS[kind](self, kind, req)
        return refused or acq.Decision(acq.RC_APPROVED, "approved"), original_id

    def _as_sale(self, kind: str, req: dict, now: datetime) -> acq.Decision:
        """Pre-auth, balance, repayment: the sale's decision for the same card and amount
        (a balance inquiry: amount 0, which its chip data carries too); a repayment's
        target must be another card with an account."""
        if kind == "repayment":
            target = req["103"]
            if not self.sim.ledger.has_account(target):
                return acq.Decision(acq.RC_BAD_CARD, "unknown card to pay")
            if pan_key(target) == pan_key(req["2"]):
                return acq.Decision(acq.RC_BAD_TXN, "a card cannot repay itself")
        view = {**req, "3": acq.SALE_PROCESSING_CODE, "4": req.get("4", f"{0:012d}")}
        return self.sim._sale_decision(view, now)

    def _void(self, kind: str, req: dict) -> tuple[acq.Decision | None, int | None]:
        """Void / completion void: the original (61) is an approved, unreversed, unvoided
        and unrefunded sale (completion) of this terminal and batch, same card, same amount."""
        batch, stan, date = _original(req)
        original = self.sim.ledger.find(req["41"], stan, date)
        if original is None or original.rc != acq.RC_APPROVED or original.batch != batch:
            return acq.Decision(RC_NOT_FOUND, "original not found"), None
        refused = (_names_other(req, original) or _same_card(req, original)
                   or _usable(original, _VOIDABLE[kind], kind))
        if not refused and original.batch != acq.batch_of(req):
            refused = acq.Decision(acq.RC_BAD_TXN, "original in another batch")
        if not refused and self.sim.ledger.dependents(original.id):
            refused = acq.Decision(acq.RC_BAD_TXN, "original already voided or refunded")
        if not refused and int(req["4"]) != original.amount:
            refused = acq.Decision(RC_WRONG_AMOUNT, "amount is not the original's")
        return refused, original.id

    def _refund(self, kind: str, req: dict) -> tuple[acq.Decision | None, int | None]:
        """Refund: the original by RRN (any batch), approved, unreversed, unvoided, same
        card; the refunds of it may add up to its amount (64 for one above it, 61 for
        the sum)."""
        original = self.sim.ledger.find_rrn(req["37"])
        date = _original(req)[2]
        if (original is None or original.rc != acq.RC_APPROVED
                or date not in ("0000", original.date)):
            return acq.Decision(RC_NOT_FOUND, "original not found"), None
        refused = _same_card(req, original) or _usable(original, _REFUNDABLE, kind)
        earlier = self.sim.ledger.dependents(original.id)
        amount = int(req["4"])
        if not refused and any(d.kind in _VOIDABLE for d in earlier):
            refused = acq.Decision(acq.RC_BAD_TXN, "original voided")
        if not refused and amount > original.amount:
            refused = acq.Decision(RC_WRONG_AMOUNT, "refund above the original amount")
        if not refused and amount + sum(d.amount for d in earlier) > original.amount:
            refused = acq.Decision(RC_OVER_AMOUNT, "refunds exceed the original amount")
        return refused, original.id

    def _preauth_cancel(self, kind: str, req: dict) -> tuple[acq.Decision | None, int | None]:
        """Pre-auth cancel: the hold (auth code 38 + card) is still held, same amount."""
        hold, refused = self._hold(req)
        if not refused and int(req["4"]) != hold.amount:
            refused = acq.Decision(RC_WRONG_AMOUNT, "amount is not the pre-auth's")
        return refused, hold.auth_id if hold else None

    def _completion(self, kind: str, req: dict) -> tuple[acq.Decision | None, int | None]:
        """Completion: the hold (auth code 38 + card) is still held and the amount at most
        the hold + 15% and within the funds the hold frees; it is released and debited."""
        hold, refused = self._hold(req)
        amount = int(req["4"])
        if not refused and amount > completion_limit(hold.amount):
            refused = acq.Decision(RC_OVER_AMOUNT, "above the pre-auth + 15%")
        if not refused and amount > self.sim.ledger.balance(req["2"]) + hold.amount:
            refused = acq.Decision(acq.RC_LOW_FUNDS, "insufficient funds")
        return refused, hold.auth_id if hold else None

    def _hold(self, req: dict) -> tuple[Hold | None, acq.Decision | None]:
        """The pre-auth's hold named by auth code (38) and card, and 25 when there is
        none, 12 when it is no longer held (completed, cancelled, reversed)."""
        hold = self.sim.ledger.find_hold(req["38"], req["2"])
        if hold is None:
            return None, acq.Decision(RC_NOT_FOUND, "pre-auth not found")
        if not hold.held:
            return hold, acq.Decision(acq.RC_BAD_TXN, "pre-auth completed or cancelled")
        return hold, None


# The kinds judged against their original: (kind, request) -> (refusal or None, the
# original's authorisation row).
_DECIDERS: dict[str, Callable] = {
    "void": TxnHost._void, "completion_void": TxnHost._void, "refund": TxnHost._refund,
    "preauth_cancel": TxnHost._preauth_cancel, "completion": TxnHost._completion,
}


def _missing(kind: str, req: dict) -> str:
    """The first required field `req` lacks (or has malformed: 61), "" when complete."""
    for field in _FIELDS + _KIND_FIELDS[kind]:
        if field not in req:
            return field
    if "61" in req and len(req["61"]) != _ORIGINAL_LEN:
        return "61"
    return ""


def _format_error(req: dict, field: str) -> dict:
    log.warning("MTI %s STAN %s: field %s missing or malformed", req["t"], req.get("11"), field)
    return {**acq.echo(req, ("3", "4") + acq.ECHO_OTHER), "39": acq.RC_FORMAT}


def _original(req: dict) -> tuple[str, str, str]:
    """Field 61 as (batch, STAN, MMDD)."""
    f61 = req["61"]
    return f61[:6], f61[6:12], f61[12:16]


def _names_other(req: dict, original: Authorisation) -> acq.Decision | None:
    """25 when the request's 37 / 38 name another transaction than the one found."""
    if req.get("37", original.rrn) != original.rrn:
        return acq.Decision(RC_NOT_FOUND, "original RRN differs")
    if req.get("38", original.auth_code) != original.auth_code:
        return acq.Decision(RC_NOT_FOUND, "original auth code differs")
    return None


def _same_card(req: dict, original: Authorisation) -> acq.Decision | None:
    if pan_key(req["2"]) != original.pan_key:
        log.info("card %s is not the original's %s", mask_pan(req["2"]), original.pan_masked)
        return acq.Decision(acq.RC_BAD_TXN, "not the original's card")
    return None


def _usable(original: Authorisation, kinds: tuple[str, ...], what: str) -> acq.Decision | None:
    """12 when the original is of another kind or reversed."""
    if original.kind not in kinds:
        return acq.Decision(acq.RC_BAD_TXN, f"a {what} cannot act on a {original.kind}")
    if original.reversed:
        return acq.Decision(acq.RC_BAD_TXN, "original reversed")
    return None
