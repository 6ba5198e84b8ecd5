"""Terminal: builds the parts from config and runs them on one asyncio loop.

Contract (DESIGN §2): `Terminal.run()` owns all state on the calling loop. Device threads
reach it only through the EventBridge; sqlite3, the card reader and the printer are used
from their own single-thread Workers. The sale flow is pure (firmware.flows.sale); this
module executes its actions. `request_stop()` is thread-safe: the terminal cancels what the
cashier or customer is doing, finishes a transaction already in flight (card read,
authorisation, printing), then returns from run().
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable

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
    PinLength, PinVerified, Print, PrintDone, ReadCard, Screen, SelectApp, Show,
    Shutdown, StartPin, StartTimer, StopPin, Timeout, VerifyPin, wrap,
)
from firmware.hal.pinpad import PIN_KEYS, SoftPinPad
from firmware.hal.printer import PrinterError
from firmware.journal import JOURNAL_NAME, Journal
from firmware.keys import KeyCheckError, SessionKeys, session_keys_from_working
from firmware.receipts import ReceiptData, preview, render
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
        self._signon_lock = asyncio.Lock()
        self._reversal_lock = asyncio.Lock()
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
        for task in list(self._tasks):
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

    async def _sign_on(self) -> bool:
        """0800 sign-on unless already signed on; False (logged) when it fails."""
        async with self._signon_lock:
            return self.signed_on.is_set() or await self._sign_on_now()

    async def _sign_on_now(self) -> bool:
        stan = await self.journal_worker.run(self.journal.next_stan)
        batch = await self.journal_worker.run(self.journal.batch_no)
        request = messages.signon_request(self.ids, stan=stan, batch=batch, now=self.clock.now(),
                                          operator=self.cfg.terminal.operator)
        try:
            response = await self.link.exchange(request)
            if response.get("39") != "00":
                raise KeyCheckError(f"sign-on refused: {describe_code(response.get('39', '??'))}")
            working = messages.parse_working_keys(response)
            self.session_keys = session_keys_from_working(self._tmk, working)
        except (NotSent, NoResponse, KeyCheckError, messages.MessageError) as exc:
            log.warning("sign-on failed: %s", getattr(exc, "reason", exc))
            return False
        log.info("signed on: %r", self.session_keys)
        self.signed_on.set()
        return True

    async def _connect(self) -> None:
        """At start: sign on, then send any reversal a previous run left pending."""
        if await self._sign_on() and await self._send_reversals():
            self.online.set()

    async def _send_reversals(self) -> bool:
        """DESIGN §6 invariant 2: pending reversals go before any new online request, oldest
        first, 0400 then 0401 repeats, each attempt committed before it is sent. False when
        one is still pending (no answer), so the caller must not send anything new."""
        journal = self.journal
        async with self._reversal_lock:
            for rev in await self.journal_worker.run(journal.pending_reversals):
                request = messages.reversal_request(rev.request, rev.reason_code, repeat=rev.attempts > 0)
                await self.journal_worker.run(journal.record_reversal_attempt, rev.txn_id)
                try:
                    response = await self.link.exchange(request)
                except (NotSent, NoResponse) as exc:
                    log.warning("reversal of stan %06d still pending: %s", rev.stan, exc.reason)
                    return False
                await self.journal_worker.run(journal.record_reversal_acked, rev.txn_id, response.get("39", ""))
        return True

    async def _authorise(self, kind: str, amount: int, card) -> None:
        """First cryptogram, persist, send, record, second cryptogram; then AuthResult
        (DESIGN §6 invariants 1-2). A chip that refuses an approved sale (AAC at the second
        GENERATE AC, or pulled out before it answered) gets the sale reversed."""
        swiped = card.entry_mode in (ENTRY_MAGSTRIPE, ENTRY_FALLBACK)
        session = None if swiped else self._emv
        if not await self._sign_on():
            self.pinpad.wipe()
            self._bridge.post(AuthResult("not_sent", message="Sign-on failed"))
            return
        pin_block = self.pinpad.pin_block(card.pan, self.session_keys.pik) if len(self.pinpad) else None
        self.pinpad.wipe()
        if not await self._send_reversals():
            self._bridge.post(AuthResult("not_sent", message="Reversal pending, host unreachable"))
            return
        if session is not None:
            try:
                card = await self._run_card(lambda: session.first_ac(online_pin=pin_block is not None))
            except CardReadError as exc:
                self._bridge.post(AuthResult("declined", message=f"Card error: {exc.reason}"))
                return
            if card.cryptogram_type != "ARQC":
                log.info("card declined offline (%s), tvr %s", card.cryptogram_type, card.tvr)
                self._bridge.post(AuthResult("declined", message="Declined by card"))
                return
        elif pin_block is not None:
            card = replace(card, cvm="online_pin")
        await self._go_online(kind, amount, card, pin_block, session)

    async def _go_online(self, kind: str, amount: int, card, pin_block, session) -> None:
        journal = self.journal
        stan = await self.journal_worker.run(journal.next_stan)
        batch = await self.journal_worker.run(journal.batch_no)
        request = messages.sale_request(
            self.ids, stan=stan, batch=batch, amount=amount, currency=self.cfg.terminal.currency,
            card=card, pin_block=pin_block, now=self.clock.now())
        txn_id = await self.journal_worker.run(lambda: journal.record_request(
            kind=kind, stan=stan, batch=batch, amount=amount, currency=self.cfg.terminal.currency,
            card=card, request=request, reversible=True, operator=self.cfg.terminal.operator))
        try:
            response = await self.link.exchange(request)
        except NotSent as exc:
            await self.journal_worker.run(journal.record_not_sent, txn_id, exc.reason)
            await self._close_card(session)
            self._bridge.post(AuthResult("not_sent", message=exc.reason, txn_id=txn_id))
            return
        except NoResponse as exc:
            detail = exc.reason
            code = "98" if detail.startswith("no response") else "06"
            await self.journal_worker.run(
                lambda: journal.record_no_response(txn_id, reason_code=code, detail=detail))
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
                await self._send_reversals()  # at once; if it fails it stays first in line
                self._bridge.post(AuthResult("declined", message=refusal, txn_id=txn_id))
                return
        elif session is not None:
            await self._close_card(session, arc=code, icc=response.get("55"))
        self._bridge.post(AuthResult("approved" if approved else "declined", code=code,
                                     message=describe_code(code), auth_code=response.get("38", ""),
                                     rrn=response.get("37", ""), txn_id=txn_id))

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
        data = self.receipt_data(record)
        pcfg = self.cfg.printer
        copies = ("merchant", "customer") if pcfg.copies == "both" else (pcfg.copies,)
        lang = self.cfg.terminal.language
        try:
            for copy in copies:
                raw = render(data, copy, lang=lang, encoding=pcfg.encoding, width=pcfg.width)
                text = preview(data, copy, lang=lang, width=pcfg.width)
                name = f"{record.batch:06d}-{record.stan:06d}-{copy}"
                await self.printer_worker.run(self.devices.printer.print_receipt, raw, text, name,
                                              timeout=PRINT_TIMEOUT)
                await self.journal_worker.run(self.journal.mark_printed, txn_id, copy)
        except (PrinterError, WorkerTimeout) as exc:
            reason = getattr(exc, "reason", str(exc))
            log.warning("receipt for stan %06d not printed: %s", record.stan, reason)
            self._bridge.post(PrintDone(False, reason))
            return
        self._bridge.post(PrintDone(True))

    def receipt_data(self, record) -> ReceiptData:
        t = self.cfg.terminal
        merchant_name = t.merchant_name_zh if t.language == "zh" and t.merchant_name_zh else t.merchant_name
        return ReceiptData(
            merchant_name=merchant_name, merchant_id=t.merchant_id, terminal_id=t.terminal_id,
            operator=record.operator, txn_type=record.kind.upper(), masked_pan=record.masked_pan,
            entry_mode=ENTRY_MODE_NAMES.get(record.entry_mode, "CHIP"), amount=record.amount,
            currency=record.currency, when=datetime.fromisoformat(record.created_at), batch=record.batch, stan=record.stan,
            rrn=record.rrn, auth_code=record.auth_code, aid=record.aid, app_label=record.app_label,
            tc=record.arqc, ac_type=record.cryptogram_type or "ARQC", tvr=record.tvr, tsi=record.tsi,
            offline=False, pin_verified=record.cvm in ("online_pin", "offline_pin"),
            no_cvm=record.cvm == "none")


class _Wake:
    """Internal event: re-check the stop condition after a task ended."""
