"""Terminal: builds the parts from config and runs them on one asyncio loop.

Contract (DESIGN §2): `Terminal.run()` owns all state on the calling loop. Device threads
reach it only through the EventBridge; sqlite3, the card reader and the printer are used
from their own single-thread Workers. The sale flow is pure (firmware.flows.sale); this
module executes its actions. `request_stop()` is thread-safe: the terminal cancels what the
cashier or customer is doing, finishes a transaction already in flight (card read,
authorisation, printing), then returns from run().

Start-up (DESIGN §6.4, 6.6): the journal's integrity_check (a failure is a visible fault),
`Journal.recover()` (requests in flight at a power cut become unknown and are reversed),
then READY; in the background: sign-on, the store-and-forward task (firmware.saf: echo
tests, reversals, advices, expiry alerts; its status reaches the idle screen as
LinkStatus) and the printing of approved receipts a cut left unprinted.
Offline (DESIGN §6.3, firmware.offline): when the host cannot be reached (nothing was
sent) a chip or contactless sale may still be approved within the [offline] caps: by the
card (TC: Y1 at the first GENERATE AC, Y3 at the second) or by store-and-forward (00, the
ARQC goes to the host later). The approval, its sealed 0220 advice and the journal row
commit together before the customer sees "APPROVED".
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable

from firmware import crashpoint, offline
from firmware.acquirer.codes import APPROVED_CODES, describe_code
from firmware.acquirer.link import AcquirerLink, NoResponse, NotSent
from firmware.acquirer import messages
from firmware.bridge import EventBridge, Worker, WorkerTimeout
from firmware.clock import SystemClock
from firmware.config import Config, read_tmk
from firmware.emv.card import ENTRY_FALLBACK, ENTRY_MAGSTRIPE, CardReadError
from firmware.emv.kernel import ARC_UNABLE_ONLINE, EmvSession, kernel_params
from firmware.emv.oda import load_capks
from firmware.flows import sale
from firmware.flows.types import (
    AppChoice, Authorise, AuthResult, Beep, CancelTimers, CardRead, CardReadFailed, Idle, Key,
    LinkStatus, PinLength, PinVerified, Print, PrintDone, ReadCard, Screen, SelectApp, Show,
    Shutdown, StartPin, StartTimer, StopPin, Timeout, VerifyPin, wrap,
)
from firmware.hal.pinpad import PIN_KEYS, SoftPinPad
from firmware.hal.printer import PrinterError
from firmware.journal import JOURNAL_NAME, Journal
from firmware.keys import KeyCheckError, SessionKeys, session_keys_from_working
from firmware.receipts import ReceiptData, preview, render
from firmware.saf import LinkState, StoreAndForward
from firmware.vault import Vault

__all__ = ["Devices", "Terminal", "StartupFault"]

log = logging.getLogger("kpos.app")

READ_TIMEOUT = 20.0  # s, one kernel step (e.g. SELECT .. CVM start) on the reader worker
PRINT_TIMEOUT = 30.0  # s, one receipt copy on the printer worker
ENTRY_MODE_NAMES = {"051": "CHIP", "071": "CONTACTLESS", "021": "SWIPE", "801": "FALLBACK",
                    "011": "MANUAL"}


class StartupFault(RuntimeError):
    """The terminal cannot start (journal corrupt, keys unreadable ...): shown, logged, fatal."""


@dataclass
class Devices:
    reader: Any  # firmware.hal.reader.CardReader
    display: Any  # firmware.hal.display.Display
    printer: Any  # firmware.hal.printer.Printer
    inputs: list = field(default_factory=list)  # objects with attach(post, on_quit)
    buzzer: Callable[[str], None] = lambda kind: None


class _Stop:
    """Sentinel event: stop when the flow is idle."""


class Terminal:
    def __init__(self, cfg: Config, devices: Devices, *, clock=None):
        self.cfg = cfg
        self.devices = devices
        self.clock = clock or SystemClock()
        self.flow_cfg = sale.SaleConfig(
            max_amount=cfg.limits.max_amount, currency=cfg.terminal.currency,
            card_timeout=cfg.timeouts.card, pin_timeout=cfg.timeouts.pin,
            result_timeout=cfg.timeouts.result, pin_min=cfg.limits.pin_min, pin_max=cfg.limits.pin_max,
            contactless_limit=cfg.emv.contactless_limit if cfg.emv.contactless else 0,
            fallback=cfg.emv.fallback)
        self.ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
        self.link = AcquirerLink(cfg.acquirer.host, cfg.acquirer.port,
                                 connect_timeout=cfg.acquirer.connect_timeout,
                                 response_timeout=cfg.acquirer.response_timeout)
        self.saf = StoreAndForward(self.link, self.journal_call, self.ids, cfg.saf,
                                   echo_interval=cfg.acquirer.echo_interval, now=self.clock.now,
                                   on_status=self._link_status)
        self._saf_task: asyncio.Task | None = None
        self.journal_worker = Worker("journal")
        self.reader_worker = Worker("reader")
        self.printer_worker = Worker("printer")
        self.pinpad = SoftPinPad()
        self.journal: Journal | None = None
        self.session_keys: SessionKeys | None = None
        self._tmk = b""  # terminal master key, read at start
        self._kernel = None  # emv.kernel.KernelParams, built at start (CA keys are read then)
        self._emv: EmvSession | None = None  # the card session of the sale in progress
        self._apps: list = []  # the applications offered in AppChoice
        self.state = sale.SaleState()
        self.ready = asyncio.Event()
        self.signed_on = asyncio.Event()
        self.online = asyncio.Event()  # signed on and no reversal left pending from earlier runs
        self.recovery = None  # what Journal.recover() settled at start
        self.backlog_printed = asyncio.Event()  # receipts a cut left unprinted: done (or failed)
        self._signon_lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self._bridge: EventBridge | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    # ---- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Start the parts, serve events until stopped, then close everything."""
        loop = asyncio.get_running_loop()
        self._bridge = EventBridge(loop)
        try:
            await self._start()
            await self._serve()
        finally:
            await self._close()

    def request_stop(self) -> None:
        """Any thread: stop after the transaction in flight."""
        if self._bridge is not None:
            self._bridge.post(_Stop())

    def post(self, event: object) -> None:
        """Any thread: feed an input event (keys, cards) as a device would."""
        assert self._bridge is not None, "terminal not running"
        self._bridge.post(event)

    async def journal_call(self, fn: Callable[[Journal], Any]) -> Any:
        """Loop only: run fn(journal) on the journal worker (for tools, scripts and tests)."""
        return await self.journal_worker.run(fn, self.journal)

    async def _start(self) -> None:
        data_dir = self.cfg.terminal.data_dir
        try:
            tmk = read_tmk(self.cfg)
            self._kernel = kernel_params(self.cfg, load_capks(self.cfg.emv.capk_file))
            vault = Vault.open(self.cfg.security.vault_key_file)
            data_dir.mkdir(parents=True, exist_ok=True)
            self.journal = await self.journal_worker.run(
                lambda: Journal(data_dir / JOURNAL_NAME, vault, now=self.clock.now))
            self.recovery = await self.journal_worker.run(self.journal.recover)
        except Exception as exc:
            self.devices.display.show(Screen("TERMINAL FAULT", wrap(str(exc), 3), tone="error"))
            raise StartupFault(str(exc)) from exc
        self._tmk = tmk
        for source in self.devices.inputs:
            source.attach(self._bridge.post, self.request_stop)
        self.devices.reader.attach(self._bridge.post)
        self.state, actions = sale.start(self.flow_cfg)
        self._execute_all(actions)
        self._spawn(self._connect(), "sign-on")
        self._spawn(self._print_backlog(), "print-backlog")
        self._saf_task = asyncio.get_running_loop().create_task(self.saf.run(), name="saf")
        self._saf_task.add_done_callback(self._task_done)
        self.ready.set()
        log.info("terminal %s ready (acquirer %s:%d)", self.ids.terminal_id,
                 self.cfg.acquirer.host, self.cfg.acquirer.port)

    async def _serve(self) -> None:
        while True:
            event = await self._bridge.get()
            if isinstance(event, _Stop):
                self._stopping = True
                self._dispatch(Shutdown())
            else:
                self._dispatch(event)
            if self._stopping and self.state.phase == "IDLE" and not self._tasks:
                return

    async def _close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self.pinpad.wipe()
        for task in [*self._tasks, *([self._saf_task] if self._saf_task else [])]:
            task.cancel()
        await self.link.close()
        if self.journal is not None:
            await self.journal_worker.run(self.journal.close)
        for worker in (self.journal_worker, self.reader_worker, self.printer_worker):
            worker.shutdown()
        self.devices.reader.close()
        for source in self.devices.inputs:  # swipe readers own a thread and a port
            close = getattr(source, "close", None)
            if close is not None:
                close()
        self.stopped.set()
        log.info("terminal stopped")

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
        if self._stopping and self._bridge is not None:
            self._bridge.post(_Wake())

    # ---- events and actions ----------------------------------------------------------

    def _dispatch(self, event: object) -> None:
        if isinstance(event, _Wake):
            return
        if isinstance(event, Key) and self.pinpad.active and event.key in PIN_KEYS:
            event = PinLength(self.pinpad.press(event.key))
        self.state, actions = sale.step(self.flow_cfg, self.state, event)
        self._execute_all(actions)

    def _execute_all(self, actions: list) -> None:
        for action in actions:
            self._execute(action)

    def _execute(self, action: object) -> None:
        match action:
            case Show(screen=screen):
                self.devices.display.show(screen)
            case Beep(kind=kind):
                self.devices.buzzer(kind)
            case StartTimer(name=name, seconds=seconds, token=token):
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(seconds, self._bridge.post, Timeout(name, token)))
            case CancelTimers():
                for handle in self._timers:
                    handle.cancel()
                self._timers.clear()
            case ReadCard():
                self._spawn(self._read_card(self.state.amount), "read-card")
            case SelectApp(index=index):
                self._spawn(self._select_app(index), "select-app")
            case VerifyPin():
                self._spawn(self._verify_pin(), "verify-pin")
            case StartPin(max_len=max_len):
                self.pinpad.start(max_len)
            case StopPin():
                self.pinpad.wipe()
            case Authorise(kind=kind, amount=amount):
                self._spawn(self._authorise(kind, amount, self.state.card), "authorise")
            case Print(txn_id=txn_id):
                self._spawn(self._print(txn_id), "print")
            case Idle():
                self._emv, self._apps = None, []
            case _:
                raise TypeError(f"unknown action {action!r}")

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
        request = messages.signon_request(self.ids, stan=stan, batch=batch, now=self.clock.now(),
                                          operator=self.cfg.terminal.operator)
        try:
            response = await self._exchange(request)
        except (NotSent, NoResponse) as exc:
            log.warning("sign-on failed: %s", exc.reason)
            return "unreachable"
        try:
            if response.get("39") != "00":
                raise KeyCheckError(f"sign-on refused: {describe_code(response.get('39', '??'))}")
            working = messages.parse_working_keys(response)
            self.session_keys = session_keys_from_working(self._tmk, working)
        except (KeyCheckError, messages.MessageError) as exc:
            log.warning("sign-on failed: %s", exc)
            return "refused"
        log.info("signed on: %r", self.session_keys)
        self.signed_on.set()
        return "ok"

    async def _exchange(self, request: dict) -> dict:
        """One exchange on the link; its outcome tells the store-and-forward task whether
        the link is up (an answer) or down (NotSent / NoResponse, re-raised)."""
        try:
            response = await self.link.exchange(request)
        except (NotSent, NoResponse):
            self.saf.note_link(False)
            raise
        self.saf.note_link(True)
        return response

    async def _connect(self) -> None:
        """At start: sign on, then send any reversal a previous run left pending."""
        if await self._sign_on() == "ok" and await self.saf.send_reversals():
            self.online.set()

    def _link_status(self, state: LinkState) -> None:
        """From the store-and-forward task: show the link and the queue on the idle screen."""
        if self._bridge is not None:
            stats = state.stats
            self._bridge.post(LinkStatus(state.online, stats.queued, stats.alerts))

    async def _authorise(self, kind: str, amount: int, card) -> None:
        """First cryptogram, persist, send, record, second cryptogram; then AuthResult
        (DESIGN §6 invariants 1-3). A chip that refuses an approved sale (AAC at the second
        GENERATE AC, or pulled out before it answered) gets the sale reversed. When the host
        cannot be reached the offline rules decide (`_go_offline`)."""
        swiped = card.entry_mode in (ENTRY_MAGSTRIPE, ENTRY_FALLBACK)
        session = None if swiped else self._emv
        cvm = self.state.cvm  # "online_pin": the PIN pad holds a PIN for the host
        signon = await self._sign_on()
        if signon == "refused":
            self.pinpad.wipe()
            self._bridge.post(AuthResult("not_sent", message="Sign-on failed"))
            return
        host_up = signon == "ok" and await self.saf.send_reversals()  # DESIGN §6.2: reversals first
        pin_block = None
        if cvm == "online_pin" and host_up and len(self.pinpad):
            pin_block = self.pinpad.pin_block(card.pan, self.session_keys.pik)
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
        await self._go_online(kind, amount, card, pin_block, session)

    async def _go_online(self, kind: str, amount: int, card, pin_block, session) -> None:
        journal = self.journal
        stan, batch, request = await self._sale_request(amount, card, pin_block)
        txn_id = await self.journal_worker.run(lambda: journal.record_request(
            kind=kind, stan=stan, batch=batch, amount=amount, currency=self.cfg.terminal.currency,
            card=card, request=request, reversible=True, operator=self.cfg.terminal.operator))
        try:
            response = await self._exchange(request)
        except NotSent as exc:  # nothing left the box: the offline rules decide
            log.info("stan %06d not sent (%s): offline rules apply", stan, exc.reason)
            await self._go_offline(kind, amount, card, session, txn_id, request)
            return
        except NoResponse as exc:
            detail = exc.reason
            code = "98" if detail.startswith("no response") else "06"
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
        self._bridge.post(AuthResult("approved" if approved else "declined", code=code,
                                     message=describe_code(code), auth_code=response.get("38", ""),
                                     rrn=response.get("37", ""), txn_id=txn_id))

    async def _sale_request(self, amount: int, card, pin_block) -> tuple[int, int, dict]:
        """A fresh STAN (committed), the batch number and the 0200 built with them."""
        stan = await self.journal_worker.run(self.journal.next_stan)
        batch = await self.journal_worker.run(self.journal.batch_no)
        request = messages.sale_request(
            self.ids, stan=stan, batch=batch, amount=amount, currency=self.cfg.terminal.currency,
            card=card, pin_block=pin_block, now=self.clock.now())
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
            _, _, request = await self._sale_request(amount, card, None)
        advice = messages.advice_request(request, code=code, icc_data=icc or card.icc_data or None)
        if txn_id is None:
            txn_id = await self.journal_worker.run(lambda: journal.record_offline_approval(
                kind=kind, stan=int(request["11"]), batch=int(request["60"][2:8]), amount=amount,
                currency=self.cfg.terminal.currency, card=card, advice=advice, code=code,
                operator=self.cfg.terminal.operator))
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

    # ---- receipts --------------------------------------------------------------------

    async def _print(self, txn_id: int) -> None:
        """Render and print the copies (outcome is already committed); post PrintDone."""
        record = await self.journal_worker.run(self.journal.get, txn_id)
        failure = await self._print_copies(record, self._copies())
        self._bridge.post(PrintDone(not failure, failure))

    async def _print_backlog(self) -> None:
        """At start: print the copies of approved receipts a power cut (or the printer)
        left unprinted, oldest first; stop at the first printer failure (logged)."""
        copies = self._copies()
        try:
            for record in await self.journal_worker.run(self.journal.unprinted, copies):
                missing = tuple(c for c in copies if getattr(record, f"printed_{c}_at") is None)
                log.info("printing the %s copy of stan %06d left unprinted", "/".join(missing),
                         record.stan)
                if await self._print_copies(record, missing):
                    return
        finally:
            self.backlog_printed.set()

    def _copies(self) -> tuple[str, ...]:
        copies = self.cfg.printer.copies
        return ("merchant", "customer") if copies == "both" else (copies,)

    async def _print_copies(self, record, copies: tuple[str, ...]) -> str:
        """Print `copies` of `record`, marking each in the journal after it printed;
        "" when all printed, else why not (logged)."""
        data = self.receipt_data(record)
        pcfg = self.cfg.printer
        lang = self.cfg.terminal.language
        try:
            for copy in copies:
                raw = render(data, copy, lang=lang, encoding=pcfg.encoding, width=pcfg.width)
                text = preview(data, copy, lang=lang, width=pcfg.width)
                name = f"{record.batch:06d}-{record.stan:06d}-{copy}"
                await self.printer_worker.run(self.devices.printer.print_receipt, raw, text, name,
                                              timeout=PRINT_TIMEOUT)
                crashpoint.hit("print.done")
                await self.journal_worker.run(self.journal.mark_printed, record.id, copy)
        except (PrinterError, WorkerTimeout) as exc:
            reason = getattr(exc, "reason", str(exc))
            log.warning("receipt for stan %06d not printed: %s", record.stan, reason)
            return reason or "printer error"
        return ""

    def receipt_data(self, record) -> ReceiptData:
        t = self.cfg.terminal
        merchant_name = t.merchant_name_zh if t.language == "zh" and t.merchant_name_zh else t.merchant_name
        return ReceiptData(
            merchant_name=merchant_name, merchant_id=t.merchant_id, terminal_id=t.terminal_id,
            operator=record.operator, txn_type=record.kind.upper(), masked_pan=record.masked_pan,
            entry_mode=ENTRY_MODE_NAMES.get(record.entry_mode, "CHIP"), amount=record.amount,
            currency=record.currency, when=datetime.fromisoformat(record.created_at), batch=record.batch, stan=record.stan,
            rrn=record.rrn, auth_code=record.auth_code or _offline_auth(record.offline_code),
            aid=record.aid, app_label=record.app_label,
            tc=record.arqc, ac_type=record.cryptogram_type or "ARQC", tvr=record.tvr, tsi=record.tsi,
            offline=record.offline_code is not None, pin_verified=record.cvm in ("online_pin", "offline_pin"),
            no_cvm=record.cvm == "none")


def _offline_auth(code: str | None) -> str | None:
    """The authorisation code printed for an offline approval by the card (Y1 / Y3)."""
    return code if code in ("Y1", "Y3") else None


class _Wake:
    """Internal event: re-check the stop condition after a task ended."""
