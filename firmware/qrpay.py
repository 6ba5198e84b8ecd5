"""Wallet QR payments, the terminal's side: pay with the customer's payment code, poll while
the customer confirms, cancel at the timeout, refund a payment that completes after its
cancel (docs/qr.md, docs/acquirer-protocol.md §12).

Contract: a QrPayment is used on the terminal's asyncio loop only and never blocks it.
Journal work goes through `journal_call(fn)` (fn(journal) on the journal worker), requests
through the terminal's AcquirerLink, one exchange at a time; `saf` is the terminal's
StoreAndForward (reversals first, link state, delivery of the refunds). The caller has
signed on. Amounts are int minor units; `cfg_wallet` times are seconds on the loop clock;
`now()` is the terminal's local time (message fields 12/13). `on_progress(text)` runs on
the loop while the customer confirms (text for the screen, "\\n" between lines).

Every step is committed before it is sent (DESIGN §6): the payment row (qr_sale, reversal
ARMED) before the 0200; the cancel is that row's reversal, so a cut while it is in flight
leaves it PENDING (journal.recover) for store-and-forward; a refund row and its advice
before the 0220. Queries are not financial: a fresh STAN each, no journal row. The
payment code reaches no log, screen or journal column: wallet.mask_code only; the sealed
request (encrypted) holds it until the payment is answered.
Outcomes: approved (paid), declined (by the wallet, or refused before anything was sent:
unknown code, over the limit), cancelled (nothing charged, or charged late and refunded:
`refunded`), no_response (the cancel is not answered yet: it stays queued), not_sent
(the host cannot be reached: nothing left the box).
"""
from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable

from firmware.acquirer import messages
from firmware.acquirer.codes import APPROVED_CODES
from firmware.acquirer.link import NoResponse, NotSent
from firmware.acquirer.messages import (
    TerminalIds, amount_field, batch_field, currency_field, in_field_order, trace_fields,
)
from firmware.journal import Journal, TxnRecord
from firmware.wallet import (
    ALREADY_PAID, ENTRY_QR, USER_PAYING, check_limit, describe_wallet_code, identify, mask_code,
)

__all__ = ["QrPayment", "QrOutcome", "QR_OUTCOMES", "payment_request", "query_request",
           "refund_advice", "original_data", "MSG_PAY", "MSG_QUERY", "MSG_REFUND",
           "PROCESSING_PAY", "PROCESSING_REFUND", "CODE_FIELD", "PAID_LATE"]

log = logging.getLogger("kpos.qrpay")

MSG_PAY, MSG_QUERY, MSG_REFUND = "60", "61", "63"  # 60.1 message types
PROCESSING_PAY, PROCESSING_REFUND = "000000", "200000"  # field 3
CODE_FIELD = "57"  # the payment code (ans LLLVAR); never field 2
_MGMT_NONE = "000"
QR_OUTCOMES = ("approved", "declined", "cancelled", "no_response", "not_sent")
PAID_LATE = "Paid late: refunded"

JournalCall = Callable[[Callable[[Journal], Any]], Awaitable[Any]]


# ---- messages (pure, any thread) ------------------------------------------------------------

def original_data(batch: int, stan: int, mmdd: str) -> str:
    """Field 61 naming a payment: its batch (6) + STAN (6) + date MMDD (4)."""
    if not (1 <= stan <= 999999 and len(mmdd) == 4 and mmdd.isdigit()):
        raise messages.MessageError(f"field 61: STAN {stan!r} or date {mmdd!r} out of range")
    return batch_field(batch) + f"{stan:06d}" + mmdd


def payment_request(ids: TerminalIds, *, stan: int, batch: int, amount: int, currency: int,
                    code: str, now: datetime) -> dict:
    """0200 QR payment: 3 = 000000, 22 = 031, 57 = the payment code, 60.1 = 60."""
    return in_field_order({
        "t": "0200", "3": PROCESSING_PAY, "4": amount_field(amount), **trace_fields(stan, now),
        "22": ENTRY_QR, "25": "00", "41": ids.terminal_id, "42": ids.merchant_id,
        "49": currency_field(currency), CODE_FIELD: code, "60": MSG_PAY + batch_field(batch) + _MGMT_NONE,
    })


def query_request(payment: dict, *, stan: int, batch: int, now: datetime) -> dict:
    """0200 query of `payment` (its 0200): 60.1 = 61, 61 names it, a STAN of its own; no code."""
    return in_field_order({
        "t": "0200", "3": PROCESSING_PAY, "4": payment["4"], **trace_fields(stan, now),
        "41": payment["41"], "42": payment["42"], "49": payment["49"],
        "60": MSG_QUERY + batch_field(batch) + _MGMT_NONE,
        "61": payment["60"][2:8] + payment["11"] + payment["13"],
    })


def refund_advice(ids: TerminalIds, payment: TxnRecord, *, rrn: str | None, stan: int,
                  batch: int, now: datetime) -> dict:
    """0220 refund of a QR payment paid after its cancel: 3 = 200000, 4 = the payment's
    amount, 39 = 00 (store-and-forward), 60.1 = 63, 61 names the payment, 37 its RRN
    when known; no code (the wallet refunds the payer of the order)."""
    msg = {
        "t": "0220", "3": PROCESSING_REFUND, "4": amount_field(payment.amount), **trace_fields(stan, now),
        "22": ENTRY_QR, "25": "00", "39": "00", "41": ids.terminal_id, "42": ids.merchant_id,
        "49": currency_field(payment.currency), "60": MSG_REFUND + batch_field(batch) + _MGMT_NONE,
        "61": original_data(payment.batch, payment.stan,
                            payment.created_at[5:7] + payment.created_at[8:10]),
    }
    if rrn:
        msg["37"] = rrn
    return in_field_order(msg)


# ---- the payment (loop) ------------------------------------------------------------------

@dataclass(frozen=True)
class QrOutcome:
    """How a QR payment ended; `message` is short operator text (no code in clear)."""

    outcome: str  # QR_OUTCOMES
    code: str = ""  # field 39 of the answer that decided it
    message: str = ""
    txn_id: int | None = None  # the qr_sale row (None: refused before anything was recorded)
    rrn: str = ""
    auth_code: str = ""
    wallet: str = ""  # wechat | alipay | unionpay_qr
    refunded: bool = False  # paid after the cancel: a refund is queued (qr_refund row)


class QrPayment:
    """One terminal's QR payments (see the module docstring)."""

    def __init__(self, link, journal_call: JournalCall, ids: TerminalIds, *, cfg_wallet, saf,
                 now: Callable[[], datetime], operator: str, currency: int,
                 on_progress: Callable[[str], None]):
        self._link = link
        self._journal = journal_call
        self._ids = ids
        self._cfg = cfg_wallet
        self._saf = saf
        self._now = now
        self._operator = operator
        self._currency = currency
        self._on_progress = on_progress

    async def pay(self, amount: int, code: str, basket_id: int | None = None) -> QrOutcome:
        """Take a QR payment of `amount` with the customer's payment `code` (paying the
        kept basket `basket_id`, if any)."""
        wallet = identify(code)
        if wallet is None:
            return QrOutcome("declined", message="Unknown QR code")
        refusal = check_limit(self._cfg, amount, self._currency)
        if refusal:
            return QrOutcome("declined", message=refusal, wallet=wallet.name)
        if not await self._saf.send_reversals():  # DESIGN §6.2: reversals first
            return QrOutcome("not_sent", message="Host unreachable", wallet=wallet.name)
        await self.refund_paid_late()
        deadline = asyncio.get_running_loop().time() + self._cfg.timeout
        txn_id, request = await self._journal(
            lambda j: self._record(j, amount, code, wallet.name, basket_id))
        log.info("QR payment txn %d: %s %s amount %d", txn_id, wallet.name, mask_code(code), amount)
        try:
            response = await self._exchange(request)
        except NotSent as exc:
            why = exc.reason
            await self._journal(lambda j: j.record_not_sent(txn_id, why))
            return QrOutcome("not_sent", message="Host unreachable", txn_id=txn_id,
                             wallet=wallet.name)
        except NoResponse as exc:
            reason = "98" if exc.reason.startswith("no response") else "06"
            return await self._cancel(txn_id, request, wallet.name, reason, exc.reason)
        return await self._poll(txn_id, request, response, deadline, wallet.name)

    async def refund_paid_late(self) -> list[int]:
        """Refund the payments whose cancel store-and-forward delivered and the wallet
        answered "already paid" (their RRN was not kept). The refund txn ids. Finding and
        recording them is one journal job, so callers at the same time (the app after the
        queue drained, a new payment) refund each payment once and never fail on it."""
        def refund_all(journal: Journal) -> list[int]:
            return [self._record_refund(journal, payment.id, ALREADY_PAID, None, None)
                    for payment in journal.qr_paid_late(ALREADY_PAID)]
        refunds = await self._journal(refund_all)
        if refunds:
            self._saf.poke()
        return refunds

    # ---- steps ----

    def _record(self, journal: Journal, amount: int, code: str, wallet: str,
                basket_id: int | None = None) -> tuple[int, dict]:
        """Journal worker: a fresh STAN, the 0200, its row committed (reversal ARMED)."""
        stan, batch = journal.next_stan(), journal.batch_no()
        request = payment_request(self._ids, stan=stan, batch=batch, amount=amount,
                                  currency=self._currency, code=code, now=self._now())
        txn_id = journal.record_qr_payment(
            stan=stan, batch=batch, amount=amount, currency=self._currency,
            masked_code=mask_code(code), wallet=wallet, entry_mode=ENTRY_QR, request=request,
            operator=self._operator, basket_id=basket_id)
        return txn_id, request

    async def _poll(self, txn_id: int, payment: dict, response: dict | None, deadline: float,
                    wallet: str) -> QrOutcome:
        """Query while the customer confirms (09 or no answer), cancel at `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        while response is None or response.get("39") == USER_PAYING:
            left = deadline - loop.time()
            if left <= 0:
                detail = f"not paid in {self._cfg.timeout:g} s: cancelled"
                return await self._cancel(txn_id, payment, wallet, "98", detail)
            self._on_progress(f"Waiting for customer\n{math.ceil(left)} s left")
            await asyncio.sleep(min(self._cfg.poll_interval, left))  # the product's poll period
            response = await self._query(payment)
        return await self._answered(txn_id, response, wallet)

    async def _query(self, payment: dict) -> dict | None:
        """The payment's status, or None when the query got no answer (poll again)."""
        def build(journal: Journal) -> dict:
            return query_request(payment, stan=journal.next_stan(), batch=journal.batch_no(),
                                 now=self._now())
        try:
            return await self._exchange(await self._journal(build))
        except (NotSent, NoResponse) as exc:
            log.info("QR query of STAN %s unanswered: %s", payment["11"], exc.reason)
            return None

    async def _answered(self, txn_id: int, response: dict, wallet: str) -> QrOutcome:
        code = response.get("39", "")
        approved = code in APPROVED_CODES
        await self._journal(lambda j: j.record_response(
            txn_id, response_code=code, approved=approved, rrn=response.get("37"),
            auth_code=response.get("38")))
        log.info("QR payment txn %d: %s", txn_id, messages.describe(response))
        return QrOutcome("approved" if approved else "declined", code, describe_wallet_code(code),
                         txn_id, response.get("37", ""), response.get("38", ""), wallet)

    async def _cancel(self, txn_id: int, payment: dict, wallet: str, reason: str,
                      detail: str) -> QrOutcome:
        """Cancel the payment (its reversal, sent now). The row is still SENDING with its
        reversal ARMED, so a cut meanwhile leaves the cancel to store-and-forward; each
        outcome below is committed in one journal job, so the queue never sends it too."""
        log.info("QR payment txn %d: cancelling (%s)", txn_id, detail)
        try:
            response = await self._exchange(messages.reversal_request(payment, reason))
        except (NotSent, NoResponse) as exc:
            await self._journal(lambda j: (j.record_no_response(txn_id, reason_code=reason,
                                                                detail=detail),
                                           j.record_reversal_attempt(txn_id)))
            self._saf.poke()
            return QrOutcome("no_response", reason, f"Cancel pending\n{exc.reason}", txn_id,
                             wallet=wallet)
        code = response.get("39", "")
        if code == ALREADY_PAID:
            await self._refund(txn_id, code, response.get("37"), response.get("38"))
            return QrOutcome("cancelled", code, PAID_LATE, txn_id, response.get("37", ""),
                             response.get("38", ""), wallet, refunded=True)
        await self._journal(lambda j: (j.record_no_response(txn_id, reason_code=reason, detail=detail),
                                       j.record_reversal_attempt(txn_id),
                                       j.record_reversal_acked(txn_id, code)))
        return QrOutcome("cancelled", code, "QR payment cancelled", txn_id, wallet=wallet)

    async def _refund(self, payment_id: int, code: str, rrn: str | None,
                      auth_code: str | None) -> int:
        """Record the payment paid late and its refund, then have the queue deliver the
        refund's 0220 now."""
        refund_id = await self._journal(
            lambda j: self._record_refund(j, payment_id, code, rrn, auth_code))
        self._saf.poke()
        return refund_id

    def _record_refund(self, journal: Journal, payment_id: int, code: str, rrn: str | None,
                       auth_code: str | None) -> int:
        """Journal worker: the payment paid late and its refund with its 0220 (one commit)."""
        stan, batch = journal.next_stan(), journal.batch_no()
        refund = refund_advice(self._ids, journal.get(payment_id), rrn=rrn, stan=stan,
                               batch=batch, now=self._now())
        return journal.record_paid_late(payment_id, response_code=code, rrn=rrn,
                                        auth_code=auth_code, stan=stan, batch=batch,
                                        refund=refund, operator=self._operator)

    async def _exchange(self, request: dict) -> dict:
        """One exchange; its outcome tells store-and-forward whether the link is up."""
        try:
            response = await self._link.exchange(request)
        except (NotSent, NoResponse):
            self._saf.note_link(False)
            raise
        self._saf.note_link(True)
        return response
