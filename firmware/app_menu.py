"""The terminal's menu work: operator login, transaction lookups and lists, reprints, the
manager's tasks (echo test, sign-on, X report, settlement), limits and wallet QR payments.

A mixin of firmware.app.Terminal (loop thread only). Each handler runs as a task the
terminal spawns for one flow action and ends by posting the flow's answer event
(LoginResult, TxnFound, TxnPage, TaskDone, RiskResult, QrProgress + AuthResult). Password
hashing (scrypt, slow on purpose) runs on the operators worker, journal reads on the journal
worker, printing on the printer worker: never on the loop.
"""
from __future__ import annotations

import logging
import time

from firmware import __version__, limits
from firmware.acquirer import messages
from firmware.acquirer.link import NoResponse, NotSent
from firmware.flows.types import (
    AuthResult, LoginResult, QrProgress, RiskResult, TaskDone, TxnFound, TxnPage, TxnSummary,
    wrap,
)
from firmware.journal import Journal, TxnRecord
from firmware.keys import kcv
from firmware.qrpay import QrPayment
from firmware.reports import batch_totals, report_header, x_report_lines
from firmware.receipts import lines_text, render_lines
from firmware.settlement import Settlement
from firmware.txnkinds import CASH, KINDS, NONE, VOID
from firmware.wallet import ENTRY_QR, identify

__all__ = ["MenuWork", "summary_of"]

log = logging.getLogger("kpos.app")
BATCH_FULL = "Batch full, settle first"  # the batch-full refusal (flows.zh translates it)


class MenuWork:
    """Terminal mixin: what the menu flow asks of the terminal."""

    # ---- operators ---------------------------------------------------------------------

    async def _check_login(self, operator: str, purpose: str) -> None:
        password = self.pinpad.take_password()
        try:
            outcome = await self.operators_worker.run(
                lambda: self.operators.verify(operator, password.decode("ascii")))
        finally:
            password = b""
        if outcome.ok and purpose == "login":
            self.operator, self.role = operator, outcome.role
            log.info("operator %s (%s) logged in", operator, outcome.role)
        elif not outcome.ok:
            log.info("operator %s: %s refused: %s", operator, purpose, outcome.reason)
        self._bridge.post(LoginResult(outcome.ok, operator, outcome.role, outcome.reason, purpose))

    def _logout(self) -> None:
        if self.operator:
            log.info("operator %s logged out", self.operator)
        self.operator, self.role = self._default_operator()

    # ---- lookups and lists ---------------------------------------------------------------

    async def _find_txn(self, by: str, value: str) -> None:
        def find(journal: Journal) -> TxnSummary | None:
            if by == "stan" and value.isdigit():
                record = journal.find_stan(int(value))
            elif by == "rrn":
                record = journal.find_rrn(value)
            elif by == "last":
                record = journal.last()
            else:
                record = None
            return summary_of(journal, record) if record is not None else None

        found = await self.journal_call(find)
        where = "in this batch" if by == "stan" else ""
        self._bridge.post(TxnFound(found, "" if found else f"Not found {where}".strip()))

    async def _list_txns(self, offset: int, count: int) -> None:
        def page(journal: Journal) -> TxnPage:
            rows = journal.page(offset, count)
            return TxnPage(tuple(summary_of(journal, r) for r in rows), offset, journal.count())

        self._bridge.post(await self.journal_call(page))

    async def _reprint(self, txn_id: int | None) -> None:
        def find(journal: Journal) -> TxnRecord | None:
            return journal.get(txn_id) if txn_id is not None else journal.last_approved()

        record = await self.journal_call(find)
        if record is None or record.status not in ("APPROVED", "REVERSED"):
            self._bridge.post(TaskDone(False, "Reprint", ("Nothing to reprint",)))
            return
        failure = await self._print_copies(record, self._copies(), reprint=True)
        lines = (f"STAN {record.stan:06d}", f"Printer: {failure}" if failure else "Printed")
        self._bridge.post(TaskDone(not failure, "Reprint", lines))

    # ---- manager tasks ---------------------------------------------------------------------

    async def _run_task(self, name: str) -> None:
        task = {"echo": self._echo_task, "signon": self._signon_task,
                "x_report": self._x_report_task, "settle": self._settle_task,
                "info": self._info_task}.get(name)
        if task is None:
            self._bridge.post(TaskDone(False, "Error", (f"Unknown task {name}",)))
            return
        try:
            done = await task()
        except Exception as exc:  # a task must always end on a screen
            log.exception("task %s failed", name)
            done = TaskDone(False, name.title(), wrap(f"Error: {exc}", 3))
        self._bridge.post(done)

    async def _echo_task(self) -> TaskDone:
        stan = await self.journal_worker.run(self.journal.next_stan)
        batch = await self.journal_worker.run(self.journal.batch_no)
        request = messages.echo_request(self.ids, stan=stan, batch=batch, now=self.clock.now())
        start = time.monotonic()
        try:
            response = await self._exchange(request)
        except (NotSent, NoResponse) as exc:
            return TaskDone(False, "Echo test", wrap(f"No answer: {exc.reason}", 3))
        ms = round((time.monotonic() - start) * 1000)
        code = response.get("39", "??")
        return TaskDone(code == "00", "Echo test", (f"Host answered {code}", f"in {ms} ms"))

    async def _signon_task(self) -> TaskDone:
        self.signed_on.clear()
        result = await self._sign_on()
        lines = {"ok": ("Signed on", "New working keys"), "unreachable": ("Host unreachable",),
                 "refused": ("Sign-on refused",)}[result]
        return TaskDone(result == "ok", "Sign-on", lines)

    async def _info_task(self) -> TaskDone:
        """Admin: the terminal's identity and the check values of its keys (never a key)."""
        t, keys = self.cfg.terminal, self.session_keys
        key_line = (f"PIK {kcv(keys.pik).hex().upper()[:4]} MAK {kcv(keys.mak).hex().upper()[:4]}"
                    if keys else "Not signed on")
        return TaskDone(True, "Terminal", (f"TID {t.terminal_id}", f"MID {t.merchant_id}",
                                           key_line, f"KPOS {__version__}"))

    async def _x_report_task(self) -> TaskDone:
        batch, records = await self.journal_call(
            lambda journal: (journal.batch_no(), journal.batch_records()))
        totals = batch_totals(records, self.cfg.fees, self.cfg.settlement)
        lines = x_report_lines(totals, self._report_header(batch), lang=self.cfg.terminal.language,
                               width=self.cfg.printer.width)
        failure = await self._print_slip(lines, f"x-report-{batch:06d}")
        shown = (f"Debits {totals.debit.count}", f"Credits {totals.credit.count}",
                 f"Printer: {failure}" if failure else "Printed")
        return TaskDone(not failure, "X report", shown)

    async def _settle_task(self) -> TaskDone:
        """Settle; a settlement a power cut left unfinished is finished first (its report
        printed), then the current batch is settled."""
        settlement = Settlement(self.link, self.journal_call, self.ids, saf=self.saf,
                                fees=self.cfg.fees, operator=self.operator or "00",
                                now=self.clock.now, currency=self.cfg.terminal.currency,
                                settlement=self.cfg.settlement)
        resumed = await self.journal_call(lambda journal: journal.open_settlement())
        result = await settlement.run()
        failure = await self._print_settlement(result) if result.settled else ""
        if resumed is not None and result.settled:
            log.info("unfinished settlement of batch %06d finished; now the current batch",
                     result.batch)
            result = await settlement.run()
            failure = await self._print_settlement(result) if result.settled else failure
        if not result.settled:
            return TaskDone(False, "Settlement", wrap(result.summary() or "Not settled", 3))
        shown = (f"Batch {result.batch:06d}", *wrap(result.summary(), 2),
                 f"Printer: {failure}" if failure else "Report printed")
        return TaskDone(True, "Settled", shown)

    async def _print_settlement(self, result) -> str:
        lines = result.report_lines(self._report_header(result.batch),
                                    lang=self.cfg.terminal.language, width=self.cfg.printer.width)
        failure = await self._print_slip(lines, f"settle-{result.batch:06d}")
        if not failure:
            await self.journal_call(lambda journal: journal.mark_report_printed(result.batch))
        return failure

    def _report_header(self, batch: int):
        return report_header(self.cfg.terminal, batch=batch, operator=self.operator or "00",
                             when=self.clock.now())

    async def _print_slip(self, lines: list, name: str) -> str:
        """Print a report slip; "" when printed, else why not."""
        raw, text = render_lines(lines, self.cfg.printer.encoding), lines_text(lines)
        try:
            await self.printer_worker.run(self.devices.printer.print_receipt, raw, text, name,
                                          timeout=30.0)
        except Exception as exc:  # PrinterError, WorkerTimeout
            log.warning("%s not printed: %s", name, exc)
            return getattr(exc, "reason", str(exc)) or "printer error"
        return ""

    # ---- limits and wallet QR ----------------------------------------------------------------

    async def _check_risk(self, kind: str, amount: int, entry_mode: str, wallet: str) -> None:
        verdict = await self._risk_verdict(kind, amount, entry_mode, wallet)
        self._bridge.post(RiskResult(verdict.action, verdict.reason))

    async def _risk_verdict(self, kind: str, amount: int, entry_mode: str, wallet: str):
        """The batch-full rule, then the limits (firmware.limits): one journal read."""
        now = self.clock.now()
        bounds = limits.window_bounds(self.cfg.risk, now)
        history, batch, count = await self.journal_call(lambda journal: (
            journal.risk_history(*bounds), journal.batch_no(), journal.open_batch_count()))
        return (self._batch_full(kind, batch, count)
                or limits.check(self.cfg.risk, kind=kind, amount=amount, entry_mode=entry_mode,
                                wallet=wallet, history=history, now=now,
                                currency=self.cfg.terminal.currency))  # logs what it refuses

    _batch_warned = 0  # the batch last warned about as nearly full (0: none yet)

    def _batch_full(self, kind: str, batch: int, count: int) -> limits.Verdict | None:
        """Refuse a kind that moves money at the acquirer (sale, void, refund ...) when the
        open `batch` already holds `count` >= [settlement] max_batch_txns such transactions:
        the 0500 counts in 3 digits, so a bigger batch could never be settled. Warns once
        per batch from 20 below the maximum. None when the rule lets it through."""
        if KINDS[kind].totals in (NONE, CASH):
            return None
        most = self.cfg.settlement.max_batch_txns
        if count >= most:
            log.warning("batch %06d full (%d of %d): %s refused, settle first",
                        batch, count, most, kind)
            return limits.Verdict("refuse", BATCH_FULL)
        if count >= most - 20 and self._batch_warned != batch:
            self._batch_warned = batch
            log.warning("batch %06d nearly full (%d of %d): settle soon", batch, count, most)
        return None

    async def _qr_pay(self, amount: int, code: str, basket_id: int | None = None) -> None:
        """A wallet QR payment: the limits first (a velocity rule that wants a supervisor
        refuses here: there is no card step to confirm at), then firmware.qrpay."""
        wallet = identify(code)
        if wallet is not None:
            verdict = await self._risk_verdict("qr_sale", amount, ENTRY_QR, wallet.name)
            if verdict.action != "ok":
                self._bridge.post(AuthResult("declined", message=verdict.reason))
                return
        outcome = await self._qr_payment().pay(amount, code, basket_id)
        result, answer, message = outcome.outcome, outcome.code, outcome.message
        if outcome.refunded:  # paid after the cancel: the customer gets a refund slip
            result, answer, message = "declined", "", "Paid late: refunded"
            await self._print_refund_slip(outcome.txn_id)
        elif result == "cancelled":  # the 00 that closed the order is not an approval
            result, answer = "declined", ""
        elif result == "not_sent":
            message = "No QR code offline"
        self._bridge.post(AuthResult(result, code=answer, message=message,
                                     auth_code=outcome.auth_code, rrn=outcome.rrn,
                                     txn_id=outcome.txn_id))

    async def _print_refund_slip(self, payment_id: int | None) -> None:
        """Print the automatic refund of a QR payment paid after its cancel."""
        if payment_id is None:
            return
        refunds = await self.journal_call(lambda journal: [
            r for r in journal.dependents(payment_id) if r.kind == "qr_refund"])
        for refund in refunds:
            await self._print_copies(refund, self._copies())


    async def _refund_paid_late(self) -> None:
        """QR payments whose cancel store-and-forward delivered and the wallet answered
        "already paid": refund them (firmware.qrpay; the refunds are queued advices)."""
        refunds = await self._qr_payment().refund_paid_late()
        if refunds:
            log.warning("%d QR payment(s) paid after their cancel: refunds queued %s",
                        len(refunds), refunds)
            self.saf.poke()

    def _qr_payment(self) -> QrPayment:
        return QrPayment(self.link, self.journal_call, self.ids, cfg_wallet=self.cfg.wallet,
                         saf=self.saf, now=self.clock.now, operator=self.operator,
                         currency=self.cfg.terminal.currency,
                         on_progress=lambda text: self._bridge.post(QrProgress(text)))


def summary_of(journal: Journal, record: TxnRecord) -> TxnSummary:
    """The display's view of a journal row: voided / refunded worked out from the rows
    that name it."""
    voided, refunded = False, 0
    for dependent in journal.dependents(record.id):
        if dependent.status != "APPROVED":
            continue
        totals = KINDS[dependent.kind].totals if dependent.kind in KINDS else ""
        voided = voided or totals == VOID
        refunded += dependent.amount if dependent.kind in ("refund", "qr_refund") else 0
    return TxnSummary(
        txn_id=record.id, kind=record.kind, stan=record.stan, batch=record.batch,
        amount=record.amount, currency=record.currency, status=record.status,
        created_at=record.created_at, operator=record.operator,
        masked_pan=record.masked_pan or "", rrn=record.rrn or "", auth_code=record.auth_code or "",
        entry_mode=record.entry_mode or "", wallet=record.wallet or "", voided=voided,
        refunded=refunded, offline=record.offline_code is not None)
