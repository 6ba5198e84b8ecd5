"""Settlement (结算): close the batch, forward what waits, reconcile the totals with the
acquirer (0500/0510) and, when they differ, upload the batch (0320/0330).

Contract: one Settlement per run, created and awaited on the terminal's asyncio loop; it
never blocks the loop. Journal work goes through `journal_call(fn)` (fn(journal) on the
journal worker: Terminal.journal_call), exchanges through the terminal's AcquirerLink,
one at a time; pending reversals and advices through `saf.flush()` (StoreAndForward).
`now()` is the terminal's local time (fields 12/13). Amounts are int minor units. The
totals and fees are firmware.reports' (cfg.settlement picks T+1 or D0 fees): cash payments
are never in the 0500 totals and never uploaded.

run() (docs/acquirer-protocol.md §13):
1. Resume the settlement a cut or a failure left open (journal: STARTED or UPLOADING);
   else record a STARTED settlement for the current batch and close the batch in one
   commit (new sales go into the next batch at once).
2. STARTED: saf.flush(): pending reversals and advices first. Still pending: stop, the
   settlement stays STARTED (run again later). Then 0500 (60.3 201) with the batch's
   totals (firmware.reports): balanced -> SETTLED; out of balance -> UPLOADING with an
   upload row per transaction in the totals, in one commit.
3. UPLOADING: one 0320 per row still PENDING, the attempt committed before the write,
   ACKED after its 0330; then 0320 with 60.3 202 (end of upload, 48 = the count) and
   0500 with 60.3 207: SETTLED, the host's verdict after the upload kept as `detail`.
A link failure (NotSent/NoResponse) or a refusal leaves the settlement open and resumable:
the result says why. A power cut anywhere resumes without sending anything the host would
count twice: ACKED uploads are not resent; a resent 0320 (cut between the host's answer
and the ACKED commit) names the same original and the host takes it once; a resent 0500
only asks again. Crash points: "settle.closed" (batch closed, nothing sent), "upload.sent"
(an 0330 read, not yet recorded), "upload.acked" (recorded).
Logging: logger "kpos.settlement", messages.describe() only (no card data: the journal
keeps none in clear and the upload carries no PAN).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable

from firmware import crashpoint
from firmware.acquirer import messages
from firmware.acquirer.link import NoResponse, NotSent
from firmware.acquirer.txn_messages import WIRE
from firmware.config import FeesConfig, SettlementConfig
from firmware.journal import Journal, JournalError, TxnRecord, open_existing
from firmware.receipts import Line, lines_text, render_lines
from firmware.reports import (
    BatchTotals, ReportHeader, batch_totals, in_totals, report_header, settlement_lines,
    x_report_lines,
)

__all__ = ["Settlement", "SettlementResult", "settlement_request", "upload_request",
           "upload_done_request", "totals_field", "parse_totals_field", "verdict",
           "BALANCED", "OUT_OF_BALANCE", "MGMT_SETTLE", "MGMT_UPLOAD", "MGMT_UPLOAD_DONE",
           "MGMT_AFTER_UPLOAD", "settle_command", "report_command"]

log = logging.getLogger("kpos.settlement")

BALANCED, OUT_OF_BALANCE = "balanced", "out_of_balance"
MGMT_SETTLE, MGMT_AFTER_UPLOAD = "201", "207"  # 60.3 of an 0500: first request, after upload
MGMT_UPLOAD, MGMT_UPLOAD_DONE = "201", "202"  # 60.3 of an 0320: one item, end of the upload
_MSG_TYPE = "00"  # 60.1 of settlement and upload messages
# Last digit of field 48 in the 0510 -> verdict; the terminal sends "0".
_VERDICT_DIGITS = {"1": BALANCED, "2": OUT_OF_BALANCE, "3": "error"}
_COUNT_MAX, _AMOUNT_MAX = 999, 999_999_999_999

JournalCall = Callable[[Callable[[Journal], Any]], Awaitable[Any]]


@dataclass(frozen=True)
class SettlementResult:
    """How a settlement run ended. `settled` False: it stays open, `detail` says why."""

    batch: int
    result: str  # the first 0510: BALANCED | OUT_OF_BALANCE; "" when not answered yet
    uploaded: int  # transactions uploaded (0330 received)
    totals: BatchTotals
    host_code: str | None  # field 39 of the last 0510
    detail: str  # not settled: why (log-safe); settled: the final verdict
    settled: bool = False

    @property
    def final(self) -> str:
        """The host's last verdict (after the upload, if there was one); "" if not settled."""
        return self.detail if self.settled else ""

    def summary(self) -> str:
        """One short line for the screen: "Balanced", "Uploaded 3, balanced", or why not."""
        if not self.settled:
            return self.detail or "Not settled"
        if self.result == BALANCED:
            return "Balanced"
        return f"Uploaded {self.uploaded}, {self.final.replace('_', ' ')}"

    def report_lines(self, header: ReportHeader, *, lang: str = "en", width: int = 32) -> list[Line]:
        """The settlement report of this result (firmware.reports.settlement_lines)."""
        return settlement_lines(self.totals, header, result=self.result, uploaded=self.uploaded,
                                final=self.final, lang=lang, width=width)


# ---------------------------------------------------------------- messages (pure)


def totals_field(totals: BatchTotals) -> str:
    """Field 48 of an 0500: debit count (3) + amount (12), credit count (3) + amount (12),
    then "0" (the host answers 1 balanced, 2 out of balance, 3 error in its place)."""
    parts = []
    for tally, what in ((totals.debit, "debit"), (totals.credit, "credit")):
        if not (0 <= tally.count <= _COUNT_MAX and 0 <= tally.amount <= _AMOUNT_MAX):
            raise messages.MessageError(f"field 48: {what} totals {tally} do not fit")
        parts.append(f"{tally.count:03d}{tally.amount:012d}")
    return "".join(parts) + "0"


def parse_totals_field(text: str) -> tuple[int, int, int, int]:
    """(debit count, debit amount, credit count, credit amount) of an 0500's field 48."""
    if not (isinstance(text, str) and len(text) == 31 and text.isdigit() and text.isascii()):
        raise messages.MessageError("field 48: settlement totals must be 31 digits")
    return int(text[0:3]), int(text[3:15]), int(text[15:18]), int(text[18:30])


def verdict(response: dict) -> str:
    """BALANCED, OUT_OF_BALANCE or "error" from an 0510's field 48."""
    return _VERDICT_DIGITS.get(str(response.get("48", ""))[-1:], "error")


def _header(ids: messages.TerminalIds, mti: str, stan: int, batch: int, mgmt: str,
            now: datetime) -> dict:
    if not isinstance(batch, int) or not 1 <= batch <= 999999:  # a settled batch is never 0
        raise messages.MessageError(f"field 60: batch {batch!r} outside 1..999999")
    return {"t": mti, **messages.trace_fields(stan, now), "41": ids.terminal_id,
            "42": ids.merchant_id, "60": _MSG_TYPE + messages.batch_field(batch) + mgmt}


def settlement_request(ids: messages.TerminalIds, *, stan: int, batch: int,
                       totals: BatchTotals, currency: int, operator: str, now: datetime,
                       after_upload: bool = False) -> dict:
    """0500 settlement of `batch`: 48 = totals_field, 49 currency, 63 operator; 60.3 201
    (207 `after_upload`)."""
    mgmt = MGMT_AFTER_UPLOAD if after_upload else MGMT_SETTLE
    return {**_header(ids, "0500", stan, batch, mgmt, now), "48": totals_field(totals),
            "49": f"{currency:03d}", "63": operator.ljust(3)[:3]}


def upload_request(ids: messages.TerminalIds, record: TxnRecord, *, stan: int, batch: int,
                   now: datetime) -> dict:
    """0320 batch upload of one journal row: a fresh STAN, 61 = the row's batch + STAN +
    MMDD, 4/37/38/39 as journaled, 3 = the kind's processing code (card kinds: WIRE), 48 =
    the kind (firmware.txnkinds name). No card data."""
    msg = {**_header(ids, "0320", stan, batch, MGMT_UPLOAD, now),
           "4": f"{record.amount:012d}", "39": record.response_code or "00", "48": record.kind,
           "61": f"{record.batch:06d}{record.stan:06d}{record.created_at[5:7]}{record.created_at[8:10]}"}
    if record.kind in WIRE:
        msg["3"] = WIRE[record.kind].processing
    if record.rrn:
        msg["37"] = record.rrn
    if record.auth_code:
        msg["38"] = record.auth_code
    return dict(sorted(msg.items(), key=lambda kv: -1 if kv[0] == "t" else int(kv[0])))


def upload_done_request(ids: messages.TerminalIds, *, stan: int, batch: int, count: int,
                        now: datetime) -> dict:
    """0320 end of the upload (60.3 202), 48 = how many transactions were uploaded."""
    return {**_header(ids, "0320", stan, batch, MGMT_UPLOAD_DONE, now), "48": f"{count:04d}"}


# ---------------------------------------------------------------- the run


class _Stop(Exception):
    """The run stops here; the settlement stays open. `reason` is log-safe."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Settlement:
    """One settlement run (see the module docstring)."""

    def __init__(self, link, journal_call: JournalCall, ids: messages.TerminalIds, *, saf,
                 fees: FeesConfig, operator: str, now: Callable[[], datetime], currency: int,
                 settlement: SettlementConfig | None = None):
        self._link = link  # firmware.acquirer.link.AcquirerLink
        self._journal = journal_call
        self._ids = ids
        self._saf = saf  # firmware.saf.StoreAndForward
        self._fees = fees
        self._settlement = settlement  # cfg.settlement: T+1 or D0 fees; None means T+1
        self._operator = operator
        self._now = now
        self._currency = currency

    async def run(self) -> SettlementResult:
        """Settle the open settlement or the current batch; see SettlementResult."""
        row = await self._journal(lambda j: j.open_settlement())
        if row is None:
            row = await self._journal(lambda j: j.begin_settlement())
            crashpoint.hit("settle.closed")
        batch, status = row["batch"], row["status"]
        try:
            if status == "STARTED":
                status = await self._reconcile(batch)
            if status == "UPLOADING":
                await self._upload(batch)
        except _Stop as stop:
            reason = stop.reason
            log.warning("settlement of batch %06d stopped: %s", batch, reason)
            await self._journal(lambda j: j.record_settlement_result(batch, status=status,
                                                                     detail=reason))
        return await self.result(batch)

    async def result(self, batch: int) -> SettlementResult:
        """The settlement of `batch` as the journal has it, totals recomputed from its rows."""
        row, records = await self._journal(lambda j: (j.settlement(batch), j.batch_records(batch)))
        return SettlementResult(
            batch=batch, result=row["result"] or "", uploaded=row["uploaded"],
            totals=batch_totals(records, self._fees, self._settlement),
            host_code=row["host_code"], detail=row["detail"] or "",
            settled=row["status"] == "SETTLED")

    async def _reconcile(self, batch: int) -> str:
        """Flush, then the first 0500; the new status (SETTLED or UPLOADING)."""
        if not await self._saf.flush():
            raise _Stop("reversals or advices still pending (acquirer unreachable?)")
        records = await self._journal(lambda j: j.batch_records(batch))
        totals = batch_totals(records, self._fees, self._settlement)
        response = await self._settle(batch, totals, after_upload=False)
        found, code = verdict(response), response.get("39")
        sums = (totals.debit.count, totals.debit.amount, totals.credit.count, totals.credit.amount)
        if found == BALANCED:
            await self._journal(lambda j: j.record_settlement_result(
                batch, status="SETTLED", result=BALANCED, totals=sums, host_code=code,
                detail=BALANCED))
            return "SETTLED"
        ids = [r.id for r in records if in_totals(r)]
        await self._journal(lambda j: j.record_settlement_result(batch, status="STARTED",
                                                                 totals=sums))
        await self._journal(lambda j: j.queue_upload(batch, ids, result=OUT_OF_BALANCE,
                                                     host_code=code))
        return "UPLOADING"

    async def _upload(self, batch: int) -> None:
        """Every pending 0320, the end of upload, the 0500 after upload: SETTLED."""
        for record in await self._journal(lambda j: j.pending_uploads(batch)):
            await self._journal(lambda j: j.record_upload_attempt(record.id))
            request = upload_request(self._ids, record, stan=await self._stan(), batch=batch,
                                     now=self._now())
            await self._answered(request, "batch upload")
            crashpoint.hit("upload.sent")
            await self._journal(lambda j: j.record_upload_acked(record.id))
            crashpoint.hit("upload.acked")
        row, records = await self._journal(lambda j: (j.settlement(batch), j.batch_records(batch)))
        done = upload_done_request(self._ids, stan=await self._stan(), batch=batch,
                                   count=row["uploaded"], now=self._now())
        await self._answered(done, "end of batch upload")
        totals = batch_totals(records, self._fees, self._settlement)
        response = await self._settle(batch, totals, after_upload=True)
        final, code = verdict(response), response.get("39")
        if final == "error":
            raise _Stop("settlement after upload: the host answered an error")
        await self._journal(lambda j: j.record_settlement_result(
            batch, status="SETTLED", host_code=code, detail=final))

    async def _settle(self, batch: int, totals: BatchTotals, *, after_upload: bool) -> dict:
        """An 0500 answered 00 with a verdict; _Stop otherwise."""
        request = settlement_request(self._ids, stan=await self._stan(), batch=batch,
                                     totals=totals, currency=self._currency,
                                     operator=self._operator, now=self._now(),
                                     after_upload=after_upload)
        response = await self._answered(request, "settlement")
        if verdict(response) == "error":
            raise _Stop("settlement: the host answered an error (field 48)")
        log.info("settlement of batch %06d%s: %s", batch, " after upload" if after_upload else "",
                 verdict(response).replace("_", " "))
        return response

    async def _answered(self, request: dict, what: str) -> dict:
        """The response to `request` with 39 = 00; _Stop on a link failure or a refusal."""
        try:
            response = await self._link.exchange(request)
        except (NotSent, NoResponse) as exc:
            raise _Stop(f"{what}: {exc.reason}") from exc
        if response.get("39") != "00":
            raise _Stop(f"{what}: refused by the host, code {response.get('39')}")
        return response

    async def _stan(self) -> int:
        return await self._journal(lambda j: j.next_stan())


# ---------------------------------------------------------------- kpos settle / kpos report


async def settle_command(cfg, *, operator: str) -> int:
    """`kpos settle`: settle the batch of a STOPPED terminal (a running terminal settles
    from its menu; two processes must never forward the same queue). Opens the existing
    journal (never creates one) on a worker, settles start-up leftovers (Journal.recover),
    runs a Settlement with a StoreAndForward for the flush, prints the report. Exit code:
    0 settled, 1 not settled (the reason on stderr), 2 no journal or vault key."""
    from firmware.acquirer.link import AcquirerLink
    from firmware.acquirer.tls import TlsClient
    from firmware.bridge import Worker
    from firmware.clock import SystemClock
    from firmware.saf import StoreAndForward

    worker, clock = Worker("journal"), SystemClock()
    journal = await worker.run(_open_journal, cfg)
    if journal is None:
        return 2
    link = AcquirerLink(cfg.acquirer.host, cfg.acquirer.port,
                        connect_timeout=cfg.acquirer.connect_timeout,
                        response_timeout=cfg.acquirer.response_timeout,
                        tls=TlsClient.from_config(cfg.acquirer))
    call = lambda fn: worker.run(fn, journal)  # noqa: E731
    ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
    saf = StoreAndForward(link, call, ids, cfg.saf, echo_interval=cfg.acquirer.echo_interval,
                          now=clock.now, on_status=lambda state: None)
    try:
        await call(lambda j: j.recover())
        try:
            result = await Settlement(link, call, ids, saf=saf, fees=cfg.fees, operator=operator,
                                      now=clock.now, currency=cfg.terminal.currency,
                                      settlement=cfg.settlement).run()
        except (JournalError, messages.MessageError) as exc:
            print(f"kpos settle: not settled: {exc}", file=sys.stderr)
            return 1
        if not result.settled:
            print(f"kpos settle: batch {result.batch:06d} not settled: {result.detail}",
                  file=sys.stderr)
            return 1
        row = await call(lambda j: j.settlement(result.batch))
        lines = result.report_lines(
            report_header(cfg.terminal, batch=result.batch, operator=operator,
                          when=datetime.fromisoformat(row["updated_at"])),
            lang=cfg.terminal.language, width=cfg.printer.width)
        if await worker.run(_print_report, cfg, lines, f"settle-{result.batch:06d}"):
            await call(lambda j: j.mark_report_printed(result.batch))
        return 0
    finally:
        await link.close()
        await worker.run(journal.close)
        worker.shutdown()


def report_command(cfg, *, which: str, batch: int | None, operator: str) -> int:
    """`kpos report x` (the open batch so far) or `kpos report settlement [--batch N]` (a
    settlement report again, default the last one). Blocking; reads the journal only (works
    next to a running terminal: SQLite WAL). Exit code 0, 1 no such settlement, 2 no journal."""
    journal = _open_journal(cfg)
    if journal is None:
        return 2
    try:
        if which == "x":
            batch = journal.batch_no()
            lines = x_report_lines(
                batch_totals(journal.batch_records(batch), cfg.fees, cfg.settlement),
                report_header(cfg.terminal, batch=batch, operator=operator, when=datetime.now()),
                lang=cfg.terminal.language, width=cfg.printer.width)
            _print_report(cfg, lines, f"xreport-{batch:06d}")
            return 0
        row = journal.settlement(batch)
        if row is None or row["status"] != "SETTLED":
            print(f"kpos report: no settled batch {'' if batch is None else f'{batch:06d}'}",
                  file=sys.stderr)
            return 1
        lines = settlement_lines(
            batch_totals(journal.batch_records(row["batch"]), cfg.fees, cfg.settlement),
            report_header(cfg.terminal, batch=row["batch"], operator=operator,
                          when=datetime.fromisoformat(row["updated_at"])),
            result=row["result"], uploaded=row["uploaded"], final=row["detail"],
            lang=cfg.terminal.language, width=cfg.printer.width)
        _print_report(cfg, lines, f"settle-{row['batch']:06d}-copy")
        return 0
    finally:
        journal.close()


def _open_journal(cfg) -> Journal | None:
    """The terminal's existing journal (None, said on stderr, when it or its key is missing)."""
    try:
        return open_existing(cfg.terminal.data_dir, cfg.security.vault_key_file)
    except (FileNotFoundError, JournalError) as exc:
        print(f"kpos: {exc}", file=sys.stderr)
        return None


def _print_report(cfg, lines: list, name: str) -> bool:
    """The report's text on stdout; its ESC/POS bytes to the "sim" printer (files under
    data_dir/receipts). True when it was printed on paper (the sim printer)."""
    from firmware.hal.printer import PrinterError
    from firmware.hal.printer_sim import SimPrinter
    text = lines_text(lines)
    print(text, end="")
    if cfg.devices.printer != "sim":
        print(f"kpos: printer backend {cfg.devices.printer!r} not available here: "
              "report not printed", file=sys.stderr)
        return False
    try:
        SimPrinter(cfg.terminal.data_dir / "receipts").print_receipt(
            render_lines(lines, cfg.printer.encoding), text, name)
    except PrinterError as exc:
        print(f"kpos: report not printed: {exc.reason}", file=sys.stderr)
        return False
    return True
