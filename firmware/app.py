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
Field update (firmware.update.HoldGate): one terminal per data_dir (flock on kpos.lock,
else StartupFault); under a hold from `kpos update hold` the resting terminal shows
"Updating" and starts nothing new, finishes what is in flight, then acknowledges.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable

from firmware import crashpoint, memtrim
from firmware.acquirer import messages
from firmware.acquirer.tls import TlsClient
from firmware.app_card import CardWork
from firmware.app_checkout import CheckoutWork
from firmware.app_menu import MenuWork
from firmware.app_training import TrainingWork
from firmware.basket import load_products
from firmware.bridge import EventBridge, Worker, WorkerTimeout
from firmware.clock import SystemClock
from firmware.config import Config
from firmware.emv.kernel import EmvSession, kernel_params
from firmware.emv.oda import load_capks
from firmware.flows import sale, shell
from firmware.flows.types import (
    Authorise, Beep, CancelTimers, CheckLogin, CheckRisk, FindTxn, Idle, Key, ListTxns, Logout,
    OpenDrawer, PayCash, PinLength, Print, PrintDone, PrinterStatus, QrPay, ReadCard, Reprint,
    RunTask,
    SaveBasket, Screen, SelectApp, SetTraining, Show, Shutdown, StartPin, StartTimer, StopPin,
    Timeout, VerifyPin, wrap,
)
from firmware.hal.pinpad import PIN_KEYS, SoftPinPad
from firmware.hal.printer import STATUS_OK, PrinterError
from firmware.journal import JOURNAL_NAME, Journal
from firmware.notify import Notifier, watchdog_interval, watchdog_pings
from firmware.operators import OPERATORS_NAME, OperatorStore
from firmware.keys import SessionKeys
from firmware.keyload import terminal_master_key
from firmware.update import AlreadyRunning, HoldGate, InstanceLock, read_hold
from firmware.receipts import ReceiptData, preview, render
from firmware.vault import Vault
from firmware.wallet import ENTRY_QR

__all__ = ["Devices", "Terminal", "StartupFault"]

log = logging.getLogger("kpos.app")

PRINT_TIMEOUT = 30.0  # s, one receipt copy on the printer worker
ENTRY_MODE_NAMES = {"051": "CHIP", "071": "CONTACTLESS", "021": "SWIPE", "801": "FALLBACK",
                    "011": "MANUAL", ENTRY_QR: "QR"}


class StartupFault(RuntimeError):
    """The terminal cannot start (journal corrupt, keys unreadable ...): shown, logged, fatal."""


@dataclass
class Devices:
    reader: Any  # firmware.hal.reader.CardReader
    display: Any  # firmware.hal.display.Display
    printer: Any  # firmware.hal.printer.Printer
    inputs: list = field(default_factory=list)  # objects with attach(post, on_quit)
    buzzer: Callable[[str], None] = lambda kind: None
    outputs: list = field(default_factory=list)  # buzzer, LEDs: objects with close()


class _Stop:
    """Sentinel event: stop when the flow is idle."""


class Terminal(CardWork, MenuWork, CheckoutWork, TrainingWork, HoldGate):
    def __init__(self, cfg: Config, devices: Devices, *, clock=None):
        self.cfg = cfg
        self.devices = devices
        self.clock = clock or SystemClock()
        sale_cfg = sale.SaleConfig(
            max_amount=cfg.limits.max_amount, currency=cfg.terminal.currency,
            card_timeout=cfg.timeouts.card, pin_timeout=cfg.timeouts.pin,
            result_timeout=cfg.timeouts.result, pin_min=cfg.limits.pin_min, pin_max=cfg.limits.pin_max,
            contactless_limit=cfg.emv.contactless_limit if cfg.emv.contactless else 0,
            fallback=cfg.emv.fallback)
        self.flow_cfg = shell.ShellConfig(
            sale=sale_cfg, wallet_limit=min(cfg.wallet.limit, cfg.limits.max_amount),
            require_login=cfg.operators.login, default_operator=cfg.terminal.operator,
            default_role="cashier", catalog=None,  # the product catalog is read at start
            discount_percent=cfg.basket.discount_percent,
            discount_amount=cfg.basket.discount_amount)
        self.ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
        self.link = self._make_link(cfg.acquirer.host, cfg.acquirer.port,
                                    TlsClient.from_config(cfg.acquirer))
        self.saf = self._make_saf(self.link, self.journal_call)
        self._saf_task: asyncio.Task | None = None
        memtrim.configure()  # before the workers' threads: shared arenas, big buffers unmapped
        self.journal_worker = Worker("journal")
        self.reader_worker = Worker("reader")
        self.printer_worker = Worker("printer")
        self.operators_worker = Worker("operators")  # scrypt checks: slow on purpose
        self.operators: OperatorStore | None = None
        self.operator, self.role = self._default_operator()  # who is logged in
        self._daily_signon: asyncio.Task | None = None
        self._hold_watch: asyncio.Task | None = None  # firmware.update.HoldGate._watch_holds
        self._background: set[asyncio.Task] = set()  # housekeeping that never holds up a stop
        self.notifier = Notifier.from_env()  # systemd Type=notify (a no-op elsewhere)
        self._printer_fault = ""  # why the last print failed, "" = printing
        self._printer_watch: asyncio.Task | None = None
        self._reversals_queued = 0  # pending reversals at the last link status
        self.pinpad = SoftPinPad()
        self.journal: Journal | None = None
        self.session_keys: SessionKeys | None = None
        self._tmk = b""  # terminal master key, read at start
        self._kernel = None  # emv.kernel.KernelParams, built at start (CA keys are read then)
        self._emv: EmvSession | None = None  # the card session of the sale in progress
        self._apps: list = []  # the applications offered in AppChoice
        self.state = shell.ShellState()
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
        self._instance: InstanceLock | None = None  # the data_dir's kpos.lock, while running

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
        try:  # first, before any device shows anything: one terminal per data_dir
            data_dir.mkdir(parents=True, exist_ok=True)
            self._instance = InstanceLock.acquire(data_dir)
        except (AlreadyRunning, OSError) as exc:
            raise StartupFault(str(exc)) from exc
        try:
            tmk = terminal_master_key(self.cfg)  # stored (kpos keys load), else tmk_file
            self._kernel = kernel_params(self.cfg, load_capks(self.cfg.emv.capk_file))
            vault = Vault.open(self.cfg.security.vault_key_file)
            data_dir.mkdir(parents=True, exist_ok=True)
            self.journal = await self.journal_worker.run(
                lambda: Journal(data_dir / JOURNAL_NAME, vault, now=self.clock.now,
                                keep_days=self.cfg.journal.keep_days))
            self.recovery = await self.journal_worker.run(self.journal.recover)
            await self._open_operators(data_dir)
            if self.cfg.basket.products is not None:
                catalog = load_products(self.cfg.basket.products)
                self.flow_cfg = replace(self.flow_cfg, catalog=catalog)
        except Exception as exc:
            self.devices.display.show(Screen("TERMINAL FAULT", wrap(str(exc), 3), tone="error"))
            self.notifier.status(f"fault: {exc}")
            raise StartupFault(str(exc)) from exc
        self._tmk = tmk
        for source in self.devices.inputs:
            source.attach(self._bridge.post, self.request_stop)
        self.devices.reader.attach(self._bridge.post)
        self.state, actions = shell.start(self.flow_cfg)
        self._hold = read_hold(data_dir)  # restarted under a hold: "Updating" from the start
        self._execute_all(self._under_hold(actions))
        self._spawn(self._connect(), "sign-on")
        self._spawn(self._print_backlog(), "print-backlog")
        self._start_saf()
        loop = asyncio.get_running_loop()
        self._daily_signon = loop.create_task(self._sign_on_daily(), name="daily-sign-on")
        self._daily_signon.add_done_callback(self._task_done)
        self._hold_watch = loop.create_task(self._watch_holds(), name="update-hold")  # HoldGate
        self._hold_watch.add_done_callback(self._task_done)
        self.ready.set()
        self.notifier.ready(f"terminal {self.ids.terminal_id} ready")
        interval = watchdog_interval()
        if interval:  # WatchdogSec: pings from the loop itself, so a stuck loop is restarted
            self._spawn_background(watchdog_pings(self.notifier, interval, self._alive),
                                   "watchdog")
        log.info("terminal %s ready (acquirer %s:%d)", self.ids.terminal_id,
                 self.cfg.acquirer.host, self.cfg.acquirer.port)

    async def _serve(self) -> None:
        while True:
            event = await self._bridge.get()
            if isinstance(event, _Stop):
                self._stopping = True
                self.notifier.stopping("stopping after the transaction in flight")
                self._dispatch(Shutdown())
            else:
                self._dispatch(event)
            if self._stopping and shell.resting(self.state) and not self._tasks:
                return

    async def _close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self.pinpad.wipe()
        await self._close_training()  # the real journal, link and SAF are back for the close
        for task in [*self._tasks, *self._background,
                     *(t for t in (self._saf_task, self._daily_signon, self._hold_watch) if t)]:
            task.cancel()
        await self.link.close()
        if self.journal is not None:
            await self.journal_worker.run(self.journal.close)
        if self.operators is not None:
            await self.operators_worker.run(self.operators.close)
        for worker in (self.journal_worker, self.reader_worker, self.printer_worker,
                       self.operators_worker):
            worker.shutdown()
        self.devices.reader.close()
        for source in [*self.devices.inputs, *self.devices.outputs]:  # threads, ports, pins
            close = getattr(source, "close", None)
            if close is not None:
                close()
        self.notifier.close()
        if self._instance is not None:
            self._instance.release()
        self.stopped.set()
        log.info("terminal stopped")

    async def _open_operators(self, data_dir) -> None:
        """The operator store (its own file in data_dir), seeded with the documented
        default operators on a first start when [operators] seed is set."""
        ops = self.cfg.operators
        self.operators = await self.operators_worker.run(lambda: OperatorStore(
            data_dir / OPERATORS_NAME, now=self.clock.now, max_failures=ops.max_failures,
            lockout=ops.lockout))
        if ops.seed and await self.operators_worker.run(self.operators.seed_defaults):
            log.warning("no operators: created the default ones (change their passwords: "
                        "kpos operator passwd)")
        elif ops.login and await self.operators_worker.run(self.operators.empty):
            log.error("no operators: nobody can log in (kpos operator add NO --role admin)")

    def _alive(self) -> bool:
        """For the watchdog: the terminal is serving (the pings come from its loop)."""
        return not self.stopped.is_set()

    @property
    def sale_state(self) -> sale.SaleState:
        """The card flow's state inside the menu flow's."""
        return self.state.sale

    def _default_operator(self) -> tuple[str, str]:
        """Who works the terminal when nobody is logged in: the configured operator as a
        cashier without login, else nobody."""
        if self.cfg.operators.login:
            return "", ""
        return self.cfg.terminal.operator, "cashier"

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _spawn_background(self, coro, name: str) -> asyncio.Task:
        """A housekeeping task (cancelled at stop, errors logged)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
        if self._stopping and self._bridge is not None:
            self._bridge.post(_Wake())
        self._key_change_if_idle()

    # ---- events and actions ----------------------------------------------------------

    def _dispatch(self, event: object) -> None:
        if isinstance(event, _Wake) or self._held_back(event):
            return
        if isinstance(event, Key) and self.pinpad.active and event.key in PIN_KEYS:
            event = PinLength(self.pinpad.press(event.key))
        self.state, actions = shell.step(self.flow_cfg, self.state, event)
        self._execute_all(self._under_hold(actions))
        self._key_change_if_idle()

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
                self._spawn(self._read_card(self.sale_state.amount), "read-card")
            case SelectApp(index=index):
                self._spawn(self._select_app(index), "select-app")
            case VerifyPin():
                self._spawn(self._verify_pin(), "verify-pin")
            case StartPin(max_len=max_len):
                self.pinpad.start(max_len)
            case StopPin():
                self.pinpad.wipe()
            case Authorise(kind=kind, amount=amount, spec=spec):
                self._spawn(self._authorise(kind, amount, self.sale_state.card, spec), "authorise")
            case Print(txn_id=txn_id):
                self._spawn(self._print(txn_id), "print")
            case CheckLogin(operator=operator, purpose=purpose):
                self._spawn(self._check_login(operator, purpose), "check-login")
            case Logout():
                self._logout()
            case FindTxn(by=by, value=value):
                self._spawn(self._find_txn(by, value), "find-txn")
            case ListTxns(offset=offset, count=count):
                self._spawn(self._list_txns(offset, count), "list-txns")
            case Reprint(txn_id=txn_id):
                self._spawn(self._reprint(txn_id), "reprint")
            case RunTask(name=name):
                self._spawn(self._run_task(name), f"task-{name}")
            case QrPay(amount=amount, code=code, basket_id=basket_id):
                self._spawn(self._qr_pay(amount, code, basket_id), "qr-pay")
            case CheckRisk(kind=kind, amount=amount, entry_mode=entry_mode, wallet=wallet):
                self._spawn(self._check_risk(kind, amount, entry_mode, wallet), "check-risk")
            case SaveBasket():
                self._spawn(self._save_basket(action), "save-basket")
            case PayCash(amount=amount, tendered=tendered, basket_id=basket_id):
                self._spawn(self._pay_cash(amount, tendered, basket_id), "pay-cash")
            case OpenDrawer():
                self._spawn(self._open_drawer(), "open-drawer")
            case SetTraining(on=on):
                self._spawn(self._set_training(on), "training")
            case Idle():
                self._emv, self._apps = None, []
                memtrim.trim()  # the transaction's freed memory back to the OS (~0.05 ms)
            case _:
                raise TypeError(f"unknown action {action!r}")

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

    async def _print_copies(self, record, copies: tuple[str, ...], *, reprint: bool = False) -> str:
        """Print `copies` of `record`, marking each in the journal after it printed (a
        reprint, marked REPRINT on the paper, keeps the first print's time); "" when all
        printed, else why not (logged)."""
        original = basket = None
        if record.original_id is not None:
            original = await self.journal_worker.run(self.journal.get, record.original_id)
        if record.basket_id is not None:
            basket = await self.journal_worker.run(self.journal.basket, record.basket_id)
        data = self.receipt_data(record, original, basket, reprint=reprint)
        pcfg = self.cfg.printer
        lang = self.cfg.terminal.language
        try:
            for copy in copies:
                raw = render(data, copy, lang=lang, encoding=pcfg.encoding, width=pcfg.width,
                             logo=self.cfg.receipt.logo)
                text = preview(data, copy, lang=lang, width=pcfg.width)
                name = f"{'T-' if self.training else ''}{record.batch:06d}-{record.stan:06d}-{copy}"
                await self.printer_worker.run(self.devices.printer.print_receipt, raw, text, name,
                                              timeout=PRINT_TIMEOUT)
                crashpoint.hit("print.done")
                await self.journal_worker.run(self.journal.mark_printed, record.id, copy)
        except (PrinterError, WorkerTimeout) as exc:
            reason = getattr(exc, "reason", str(exc)) or "printer error"
            log.warning("receipt for stan %06d not printed: %s", record.stan, reason)
            self._printer_down(reason)
            return reason
        return ""

    def _printer_down(self, reason: str) -> None:
        """A print failed: say so on the idle screen and watch the printer until it is back,
        then print what waits in the journal (oldest first)."""
        if reason != self._printer_fault:
            self._printer_fault = reason
            self._bridge.post(PrinterStatus(reason))
            self.notifier.status(f"printer: {reason}")
        if self._printer_watch is None or self._printer_watch.done():
            self._printer_watch = self._spawn_background(self._watch_printer(), "printer-watch")

    async def _watch_printer(self) -> None:
        """Every [printer] retry seconds ask the printer; once it is ready, clear the
        warning and print the backlog (a new failure sets the fault again: go on)."""
        while self._printer_fault:
            await asyncio.sleep(self.cfg.printer.retry)  # the retry period itself
            try:
                status = await self.printer_worker.run(self.devices.printer.status,
                                                       timeout=PRINT_TIMEOUT)
            except (PrinterError, WorkerTimeout) as exc:
                status = getattr(exc, "reason", "") or "printer error"
            if status != STATUS_OK:
                continue
            log.info("printer back: printing the receipts that waited")
            self._printer_fault = ""
            self._bridge.post(PrinterStatus(""))
            await self._print_backlog()

    def _receipt_qr(self, record) -> str:
        """[receipt] qr filled in for `record` ("" when not configured)."""
        template = self.cfg.receipt.qr
        return template.format(**_qr_fields(self.cfg, record)) if template else ""

    def receipt_data(self, record, original=None, basket: dict | None = None, *,
                     reprint: bool = False) -> ReceiptData:
        """What the receipt of journal row `record` prints; `original`: the row it names
        (void, refund, completion ...) when it is in this journal; `basket`: the kept
        basket it pays (Journal.basket), itemised on the customer copy."""
        t = self.cfg.terminal
        merchant_name = t.merchant_name_zh if t.language == "zh" and t.merchant_name_zh else t.merchant_name
        if original is not None:
            extra = dict(original_stan=original.stan, original_rrn=original.rrn or record.original_rrn,
                         original_auth=original.auth_code, original_date=record.original_date)
        else:
            extra = dict(original_rrn=record.original_rrn, original_date=record.original_date,
                         original_auth=record.original_auth)
        if basket is not None:
            extra.update(basket_lines=tuple((line["name"], line["qty"], line["unit"],
                                             line["amount"]) for line in basket["lines"]),
                         subtotal=basket["subtotal"], discount=basket["discount"])
        if record.kind == "cash":
            extra.update(tendered=record.tendered, change=record.tendered - record.amount)
        return ReceiptData(
            footer=self.cfg.receipt.footer, qr=self._receipt_qr(record),
            reprint=reprint, wallet=record.wallet, target_pan=record.target_pan,
            auto_refund=record.kind == "qr_refund", training=self.training, **extra,
            merchant_name=merchant_name, merchant_id=t.merchant_id, terminal_id=t.terminal_id,
            operator=record.operator, txn_type=record.kind.upper(),
            masked_pan=None if record.kind == "cash" else record.masked_pan,
            entry_mode="CASH" if record.kind == "cash" else ENTRY_MODE_NAMES.get(record.entry_mode,
                                                                                 "CHIP"),
            amount=record.amount,
            currency=record.currency, when=datetime.fromisoformat(record.created_at), batch=record.batch, stan=record.stan,
            rrn=record.rrn, auth_code=record.auth_code or _offline_auth(record.offline_code),
            aid=record.aid, app_label=record.app_label,
            tc=record.arqc, ac_type=record.cryptogram_type or "ARQC", tvr=record.tvr, tsi=record.tsi,
            offline=record.offline_code is not None, pin_verified=record.cvm in ("online_pin", "offline_pin"),
            no_cvm=record.cvm == "none")


def _qr_fields(cfg: Config, record) -> dict:
    t = cfg.terminal
    return {"merchant_id": t.merchant_id, "terminal_id": t.terminal_id, "batch": record.batch,
            "stan": f"{record.stan:06d}", "rrn": record.rrn or "", "amount": record.amount}


def _offline_auth(code: str | None) -> str | None:
    """The authorisation code printed for an offline approval by the card (Y1 / Y3)."""
    return code if code in ("Y1", "Y3") else None


class _Wake:
    """Internal event: re-check the stop condition after a task ended."""
