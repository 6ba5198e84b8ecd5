"""The terminal's card and acquirer work: reading the card on the reader worker, sign-on,
and authorising a transaction of any kind (firmware.txnkinds) online or offline.

A mixin of firmware.app.Terminal (loop thread only; it uses the terminal's workers, link,
journal, PIN pad and bridge). DESIGN §6 invariants: every request is committed to the
journal before it is written; reversals go first; the chip's final word decides.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from typing import Any, Callable

from firmware import offline
from firmware.acquirer import messages
from firmware.acquirer.codes import APPROVED_CODES, describe_code
from firmware.acquirer.link import NoResponse, NotSent
from firmware.bridge import WorkerTimeout
from firmware.emv.card import ENTRY_FALLBACK, ENTRY_MAGSTRIPE, ENTRY_MANUAL, CardReadError
from firmware.emv.kernel import ARC_UNABLE_ONLINE, EmvSession
from firmware.acquirer import txn_messages
from firmware.flows.types import (
    AppChoice, AuthResult, CardRead, CardReadFailed, LinkStatus, PinVerified, TxnSpec,
)
from firmware.journal import TxnExtra
from firmware.notify import link_status
from firmware.txnkinds import KINDS
from firmware.keys import KeyCheckError, session_keys_from_working
from firmware.keyload import key_change_requested
from firmware.mac import MAC_FAILED, session_mac
from firmware.saf import LinkState

__all__ = ["CardWork", "READ_TIMEOUT"]

log = logging.getLogger("kpos.app")

READ_TIMEOUT = 20.0  # s, one kernel step (e.g. SELECT .. CVM start) on the reader worker


class CardWork:
    """Terminal mixin: card sessions, sign-on and authorisation."""

    _key_change_due = False  # the acquirer asked for new working keys (keyload.key_change_requested)
    key_alert = ""  # operator alert: why the last delivered working keys were refused
    # ---- card ------------------------------------------------------------------------

    async def _read_card(self, amount: int) -> None:
        """Start a kernel session: candidates, then AppChoice or straight to select()."""
        reader = self.devices.reader
        self._emv = EmvSession(reader.transmit, self._kernel, amount=amount,
                               currency=self.cfg.terminal.currency, when=self.clock.now(),
                               unpredictable=os.urandom(4), contactless=reader.contactless)
        session = self._emv

        def start():
            apps = session.candidates()
            if len(apps) > 1 and session.needs_choice:
                return apps, None
            return apps, session.select(apps[0])

        outcome = await self._card_step(start, "read")
        if outcome is None:
            return
        apps, cvm = outcome
        if cvm is None:
            self._apps = apps
            self._bridge.post(AppChoice(tuple(app.label or app.aid for app in apps[:9])))
        else:
            self._card_read(session, cvm)

    async def _select_app(self, index: int) -> None:
        session, apps = self._emv, self._apps
        if session is None or not 0 <= index < len(apps):
            self._bridge.post(CardReadFailed("no such application"))
            return
        cvm = await self._card_step(lambda: session.select(apps[index]), "select")
        if cvm is not None:
            self._card_read(session, cvm)

    def _card_read(self, session: EmvSession, cvm: str) -> None:
        card = session.card()
        log.info("card read: %r, cvm %s, %d APDUs", card, cvm, session.apdus)
        self._bridge.post(CardRead(card, cvm))

    async def _verify_pin(self) -> None:
        """Offline plaintext PIN: the block goes to the card and is dropped at once."""
        session = self._emv
        block = self.pinpad.offline_pin_block() if len(self.pinpad) else None
        if session is None or block is None:
            self.pinpad.wipe()
            self._bridge.post(PinVerified(False, None, "none"))
            return
        outcome = await self._card_step(lambda: session.verify_pin(block), "verify")
        if outcome is not None:
            self._bridge.post(PinVerified(*outcome))

    async def _card_step(self, step: Callable[[], Any], what: str) -> Any:
        """Run one kernel step on the reader worker; on failure post CardReadFailed, None."""
        try:
            return await self._run_card(step)
        except CardReadError as exc:
            log.warning("card %s failed: %s", what, exc.reason)
            self._bridge.post(CardReadFailed(exc.reason, exc.next))
        return None

    # ---- acquirer --------------------------------------------------------------------

    async def _sign_on(self) -> str:
        """0800 sign-on unless already signed on: "ok", "unreachable" (no answer: nothing
        financial was sent, offline rules apply) or "refused" (logged)."""
        async with self._signon_lock:
            return "ok" if self.signed_on.is_set() else await self._sign_on_now()

    async def _sign_on_now(self) -> str:
        stan = await self.journal_worker.run(self.journal.next_stan)
        batch = await self.journal_worker.run(self.journal.batch_no)
        pin_format = self.cfg.security.pin_format  # 4: AES key blocks (60.3 004), else TDES
        request = messages.signon_request(self.ids, stan=stan, batch=batch, now=self.clock.now(),
                                          operator=self.operator or self.cfg.terminal.operator,
                                          pin_format=pin_format)
        try:
            response = await self._exchange(request)
        except (NotSent, NoResponse) as exc:
            log.warning("sign-on failed: %s", exc.reason)
            return "unreachable"
        try:
            if response.get("39") != "00":
                raise KeyCheckError(f"sign-on refused: {describe_code(response.get('39', '??'))}")
            working = messages.parse_working_keys(response, pin_format)
            self.session_keys = session_keys_from_working(self._tmk, working)
            self.link.mac = session_mac(self.cfg.security.mac, self.session_keys)
        except (KeyCheckError, messages.MessageError) as exc:
            log.warning("sign-on failed: %s", exc)
            if response.get("39") == "00":  # keys delivered but not verified: never used
                self._working_key_alert(exc)
            return "refused"
        self.key_alert = ""
        log.info("signed on: %r", self.session_keys)
        await self._sync_batch(response, batch)
        self.signed_on.set()
        return "ok"

    async def _sync_batch(self, response: dict, batch: int) -> None:
        """The host's batch number (0810 60.2) against ours: an empty batch takes the
        host's; a batch with transactions keeps its number (settlement reconciles it)."""
        host = str(response.get("60", ""))[2:8]
        if not host.isdigit() or int(host) in (0, batch):
            return
        if not await self.journal_worker.run(self.journal.sync_batch, int(host)):
            log.warning("host batch %s, terminal batch %06d (kept: it holds transactions)",
                        host, batch)

    async def _exchange(self, request: dict) -> dict:
        """One exchange on the link; its outcome tells the store-and-forward task whether
        the link is up (an answer) or down (NotSent / NoResponse, re-raised)."""
        try:
            response = await self.link.exchange(request)
        except (NotSent, NoResponse):
            self.saf.note_link(False)
            raise
        self.saf.note_link(True)
        if key_change_requested(request, response):
            log.info("acquirer asks for new working keys: sign-on at the next idle moment")
            self._key_change_due = True
        return response

    def _key_change_if_idle(self) -> None:
        """Loop only (after each event and task): start the key change the acquirer asked
        for once the terminal is at rest with nothing in flight."""
        if self._key_change_due and self._quiet() and not self._stopping:
            self._key_change_due = False
            self._spawn_background(self._key_change(), "key-change")

    async def _key_change(self) -> None:
        """Sign on again while still signed on: a sale waits on the sign-on lock, and when
        the new keys fail their check values the old (verified) keys stay in use."""
        async with self._signon_lock:
            log.info("key change sign-on: %s", await self._sign_on_now())

    def _working_key_alert(self, exc: Exception) -> None:
        """Delivered working keys failed their check: log, alert the operator (idle screen
        alert count, service status) until a sign-on succeeds."""
        self.key_alert = "working key check failed"
        log.error("working key check failed: %s (keys in use: %r)", exc, self.session_keys)
        self.notifier.status("alert: working key check failed")
        self._link_status(self.saf.state)

    async def _connect(self) -> None:
        """At start: sign on, then send any reversal a previous run left pending."""
        if await self._sign_on() == "ok" and await self.saf.send_reversals():
            self.online.set()

    async def _sign_on_daily(self) -> None:
        """Sign on again every [acquirer] signon_interval seconds (fresh working keys, the
        batch number checked); a failed one is retried by the next transaction."""
        while True:
            await asyncio.sleep(self.cfg.acquirer.signon_interval)
            async with self._signon_lock:
                self.signed_on.clear()
                log.info("scheduled sign-on: %s", await self._sign_on_now())

    def _link_status(self, state: LinkState) -> None:
        """From the store-and-forward task (loop thread, after each change): show the link
        and the queue on the idle screen and on the display's status bar, if it has one."""
        if self._bridge is not None:
            stats = state.stats
            status = LinkStatus(state.online, stats.queued, stats.alerts + bool(self.key_alert))
            self._bridge.post(status)
            set_status = getattr(self.devices.display, "set_status", None)
            if set_status is not None:  # graphic and character displays: their status bar
                set_status(status)
            self.notifier.status(link_status(state.online, stats.queued, stats.alerts))
            if stats.reversals < self._reversals_queued:  # a QR cancel may have been answered
                self._spawn_background(self._refund_paid_late(), "qr-late-refunds")  # "paid"
            self._reversals_queued = stats.reversals

    async def _authorise(self, kind: str, amount: int, card, spec: TxnSpec | None) -> None:
        """Authorise a transaction of `kind` (firmware.txnkinds), then post AuthResult.
        Card-number kinds (void, refund, pre-auth cancel, completions) go to
        `_authorise_plain`; the others (sale, pre-auth, balance, repayment): first cryptogram,
        persist, send, record, second cryptogram (DESIGN §6 invariants 1-3). A chip that
        refuses an approval (AAC at the second GENERATE AC, or pulled out before it
        answered) gets it reversed. When the host cannot be reached the offline rules decide
        (`_go_offline`: only sales may go offline)."""
        spec = spec or TxnSpec(kind, amount)
        if KINDS[kind].card == "nopin":
            await self._authorise_plain(kind, amount, card, spec)
            return
        swiped = card.entry_mode in (ENTRY_MAGSTRIPE, ENTRY_FALLBACK, ENTRY_MANUAL)
        session = None if swiped else self._emv
        cvm = self.sale_state.cvm  # "online_pin": the PIN pad holds a PIN for the host
        signon = await self._sign_on()
        if signon == "refused":
            self.pinpad.wipe()
            self._bridge.post(AuthResult("not_sent", message="Sign-on failed"))
            return
        host_up = signon == "ok" and await self.saf.send_reversals()  # DESIGN §6.2: reversals first
        pin_block = None
        if cvm == "online_pin" and host_up and len(self.pinpad):
            pin_block = self.pinpad.pin_block(card.pan, self.session_keys.pik,
                                              self.cfg.security.pin_format)
        self.pinpad.wipe()
        refusal = await self._offline_refusal(kind, amount, replace(card, cvm=cvm), "")
        if not host_up and refusal:  # decline now what the offline rules refuse (a swipe ...)
            self._bridge.post(AuthResult("declined", message=f"Host unreachable\n{refusal}"))
            return
        if session is not None:
            offline_ok = not refusal  # may the card approve offline at GENERATE AC 1
            try:
                card = await self._run_card(lambda: session.first_ac(
                    online_pin=pin_block is not None, offline_capable=offline_ok))
            except CardReadError as exc:
                self._bridge.post(AuthResult("declined", message=f"Card error: {exc.reason}"))
                return
            if card.cryptogram_type == "TC":  # the card approved offline (Y1)
                await self._approve_offline(kind, amount, card, None, None, code="Y1")
                return
            if card.cryptogram_type != "ARQC":
                log.info("card declined offline (%s), tvr %s", card.cryptogram_type, card.tvr)
                self._bridge.post(AuthResult("declined", message="Declined by card"))
                return
        elif pin_block is not None:
            card = replace(card, cvm="online_pin")
        if not host_up:
            await self._go_offline(kind, amount, card, session, None, None)
            return
        await self._go_online(kind, amount, card, pin_block, session, spec)

    async def _authorise_plain(self, kind: str, amount: int, card, spec: TxnSpec) -> None:
        """A kind that needs the card number only (no PIN, no cryptogram): the card must be
        the original's; never offline; a completion advice is queued for store-and-forward
        (committed with its row) instead of sent."""
        self.pinpad.wipe()
        original = spec.original
        if original is not None and original.masked_pan and card.masked_pan != original.masked_pan:
            self._bridge.post(AuthResult("declined", message="Card does not match original"))
            return
        card = replace(card, icc_data=b"", track2="")  # the card number and expiry only
        if spec.advice:
            await self._queue_completion_advice(amount, card, spec)
            return
        signon = await self._sign_on()
        host_up = signon == "ok" and await self.saf.send_reversals()
        if not host_up:
            refusal = await self._offline_refusal(kind, amount, card, "")
            message = "Sign-on failed" if signon == "refused" else f"Host unreachable\n{refusal}"
            self._bridge.post(AuthResult("declined", message=message))
            return
        await self._go_online(kind, amount, card, None, None, spec)

    async def _queue_completion_advice(self, amount: int, card, spec: TxnSpec) -> None:
        """Pre-auth completion as an advice (预授权完成通知): approved by the terminal, its
        0220 committed with the row and forwarded by the store-and-forward task."""
        journal = self.journal
        stan, batch, advice = await self._request("completion", amount, card, None, spec)
        txn_id = await self.journal_worker.run(lambda: journal.record_offline_approval(
            kind="completion", stan=stan, batch=batch, amount=amount,
            currency=self.cfg.terminal.currency, card=card, advice=advice, code="00",
            operator=self.operator, extra=txn_extra(spec)))
        self.saf.poke()
        self._bridge.post(AuthResult("approved", code="00", message="Advice queued",
                                     txn_id=txn_id, offline="00"))

    async def _go_online(self, kind: str, amount: int, card, pin_block, session,
                         spec: TxnSpec | None = None) -> None:
        journal = self.journal
        spec = spec or TxnSpec(kind, amount)
        stan, batch, request = await self._request(kind, amount, card, pin_block, spec)
        txn_id = await self.journal_worker.run(lambda: journal.record_request(
            kind=kind, stan=stan, batch=batch, amount=amount, currency=self.cfg.terminal.currency,
            card=card, request=request, reversible=KINDS[kind].reversible,
            operator=self.operator, extra=txn_extra(spec)))
        try:
            response = await self._exchange(request)
        except NotSent as exc:  # nothing left the box: the offline rules decide
            log.info("stan %06d not sent (%s): offline rules apply", stan, exc.reason)
            await self._go_offline(kind, amount, card, session, txn_id, request)
            return
        except NoResponse as exc:
            detail = exc.reason
            code = "98" if detail.startswith("no response") else "06"
            code = "A0" if detail == MAC_FAILED else code  # a bad MAC is no answer either
            await self.journal_worker.run(
                lambda: journal.record_no_response(txn_id, reason_code=code, detail=detail))
            self.saf.poke()
            await self._close_card(session)
            self._bridge.post(AuthResult("no_response", code=code, message=detail, txn_id=txn_id))
            return
        code = response.get("39", "")
        approved = code in APPROVED_CODES
        card_pending = approved and session is not None and not session.contactless
        await self.journal_worker.run(lambda: journal.record_response(
            txn_id, response_code=code, approved=approved, rrn=response.get("37"),
            auth_code=response.get("38"), card_pending=card_pending))
        log.info("stan %06d: %s", stan, messages.describe(response))
        if card_pending:
            refusal = await self._complete_card(txn_id, session, code, response.get("55"))
            if refusal:
                await self.saf.send_reversals()  # at once; if it fails it stays first in line
                self._bridge.post(AuthResult("declined", message=refusal, txn_id=txn_id))
                return
        elif session is not None:
            await self._close_card(session, arc=code, icc=response.get("55"))
        balance = _balance(response) if approved and kind == "balance" else None
        self._bridge.post(AuthResult("approved" if approved else "declined", code=code,
                                     message=describe_code(code), auth_code=response.get("38", ""),
                                     rrn=response.get("37", ""), txn_id=txn_id, balance=balance))

    async def _request(self, kind: str, amount: int, card, pin_block,
                       spec: TxnSpec | None = None) -> tuple[int, int, dict]:
        """A fresh STAN (committed), the batch number and the request of `kind` built with
        them (docs/acquirer-protocol.md §3, §11)."""
        stan = await self.journal_worker.run(self.journal.next_stan)
        batch = await self.journal_worker.run(self.journal.batch_no)
        now = self.clock.now()
        currency = self.cfg.terminal.currency
        if kind == "sale":
            request = messages.sale_request(self.ids, stan=stan, batch=batch, amount=amount,
                                            currency=currency, card=card, pin_block=pin_block,
                                            now=now)
        else:
            spec = spec or TxnSpec(kind, amount)
            request = txn_messages.txn_request(
                self.ids, kind, stan=stan, batch=batch, amount=amount, currency=currency,
                card=card, pin_block=pin_block, now=now, original=spec.original,
                target_pan=spec.target.pan if spec.target else None, advice=spec.advice)
        return stan, batch, request

    async def _offline_refusal(self, kind: str, amount: int, card, what: str) -> str:
        """Why this sale may not be approved offline now ("" = it may), from the policy and
        the journal's queue; `what` prefixes a refusal for the cashier."""
        stats = await self.journal_worker.run(self.journal.queue_stats)
        reason = offline.refusal(self.cfg.offline, kind=kind, entry_mode=card.entry_mode,
                                 cvm=card.cvm, amount=amount, stats=stats, now=self.clock.now())
        return f"{what}{reason}" if reason else ""

    async def _go_offline(self, kind: str, amount: int, card, session, txn_id: int | None,
                          request: dict | None) -> None:
        """The host cannot be reached and nothing was sent: approve offline within the
        policy (the card's TC at the second GENERATE AC: Y3; else store-and-forward of the
        first cryptogram: 00) or decline with the reason. `txn_id`/`request`: the unsent
        0200 already in the journal, if any."""
        refusal = await self._offline_refusal(kind, amount, card, "Host unreachable\n")
        code, icc, card_done = "00", None, False
        if not refusal and session is not None and not session.contactless:
            try:
                final = await self._run_card(session.complete_offline)
                card_done = True
            except CardReadError as exc:
                refusal = f"Card error: {exc.reason}"
            else:
                if session.offline_decision == "AAC" and not session.saf_allowed:
                    refusal = "Declined offline"  # not only "go online" bits: ODA failed ...
                elif final.cryptogram_type == "TC":
                    card, code, icc = final, "Y3", final.icc_data
                else:  # the card will not approve offline: forward its ARQC (deferred)
                    icc = session.arqc_icc
        if refusal:
            log.info("offline approval refused: %s", refusal)
            if txn_id is not None:
                await self.journal_worker.run(self.journal.record_not_sent, txn_id, "host unreachable")
            if not card_done:
                await self._close_card(session)
            self._bridge.post(AuthResult("declined", message=refusal, txn_id=txn_id))
            return
        await self._approve_offline(kind, amount, card, txn_id, request, code=code, icc=icc)

    async def _approve_offline(self, kind: str, amount: int, card, txn_id: int | None,
                               request: dict | None, *, code: str, icc: bytes | None = None) -> None:
        """Commit the offline approval and its sealed advice (one commit: into the unsent
        row `txn_id`, or a new row), then AuthResult. `icc`: field 55 of the advice
        (default: the card's)."""
        journal = self.journal
        if request is None:
            _, _, request = await self._request(kind, amount, card, None)
        advice = messages.advice_request(request, code=code, icc_data=icc or card.icc_data or None)
        if txn_id is None:
            txn_id = await self.journal_worker.run(lambda: journal.record_offline_approval(
                kind=kind, stan=int(request["11"]), batch=int(request["60"][2:8]), amount=amount,
                currency=self.cfg.terminal.currency, card=card, advice=advice, code=code,
                operator=self.operator))
        else:
            await self.journal_worker.run(
                lambda: journal.record_offline(txn_id, card=card, advice=advice, code=code))
        self.saf.poke()
        self._bridge.post(AuthResult("approved", code=code, message="Approved offline",
                                     auth_code=code if code != "00" else "", txn_id=txn_id,
                                     offline=code))

    async def _complete_card(self, txn_id: int, session: EmvSession, code: str,
                             icc: bytes | None) -> str:
        """Second GENERATE AC after an approval; "" when the card accepted (TC), else the
        reason the approved sale is now being reversed (recorded in the journal first)."""
        final = None
        try:
            final = await self._run_card(lambda: session.complete(approved=True, arc=code,
                                                                  icc_response=icc))
            refusal = "" if final.cryptogram_type == "TC" else "Card declined, reversed"
            detail = "card declined after approval (AAC)"
        except CardReadError as exc:
            refusal, detail = "Card removed, reversed", f"no second GENERATE AC: {exc.reason}"
        await self.journal_worker.run(lambda: self.journal.record_card_result(
            txn_id, accepted=not refusal, card=final, detail="" if not refusal else detail))
        if refusal:
            log.warning("txn %d approved by the host but %s: reversing", txn_id, detail)
        return refusal

    async def _close_card(self, session: EmvSession | None, *, arc: str = ARC_UNABLE_ONLINE,
                          icc: bytes | None = None) -> None:
        """End the chip's transaction with an AAC after a decline or no answer (best effort:
        the outcome is already decided and recorded)."""
        if session is None:
            return
        try:  # complete() itself has nothing to send for a tap or a card that declined
            await self._run_card(lambda: session.complete(approved=False, arc=arc, icc_response=icc))
        except CardReadError as exc:
            log.info("card not closed after the decline: %s", exc.reason)

    async def _run_card(self, step: Callable[[], Any]) -> Any:
        """One kernel step on the reader worker; every failure becomes CardReadError."""
        try:
            return await self.reader_worker.run(step, timeout=READ_TIMEOUT)
        except CardReadError:
            raise
        except WorkerTimeout as exc:
            raise CardReadError("card did not answer in time") from exc
        except Exception as exc:  # a kernel bug must not leave the customer at "Processing"
            log.exception("card step crashed")
            raise CardReadError("internal error") from exc


def txn_extra(spec: TxnSpec | None) -> TxnExtra:
    """The journal columns naming `spec`'s original (and nothing else for a plain sale)."""
    original = spec.original if spec else None
    target = spec.target.pan if spec and spec.target else None
    basket_id = spec.basket_id if spec else None
    if original is None:
        return TxnExtra(target_pan=target, basket_id=basket_id)
    return TxnExtra(original_id=original.txn_id, original_rrn=original.rrn or None,
                    original_date=original.date or None, target_pan=target,
                    original_auth=original.auth_code or None, basket_id=basket_id)


def _balance(response: dict) -> int | None:
    """The available balance a balance inquiry's answer carries (field 54), or None."""
    try:
        return txn_messages.parse_balance(response["54"])[1]
    except (KeyError, messages.MessageError) as exc:
        log.warning("balance inquiry approved without a readable balance: %s", exc)
        return None
