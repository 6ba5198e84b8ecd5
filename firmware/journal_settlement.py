"""The journal's settlement and batch upload: a mixin of firmware.journal.Journal
(firmware/settlement.py).

Same contract as Journal: blocking sqlite3 on the journal worker thread, each write one
committed transaction (a SETTLED one also runs Journal._prune, the retention). Uses
Journal's `_db`, `_write`, `_stamp`, `_update_status`, `_prune` and `_keep_days`.
"""
from __future__ import annotations

import logging
import sqlite3

from firmware.journal_rows import BATCH_MAX, SELECT_TXN, JournalError, TxnRecord, read_counter

__all__ = ["Settlement"]

log = logging.getLogger("kpos.journal")


class Settlement:
    """A `settlement` row per settled batch: STARTED (batch closed, nothing answered yet) ->
    UPLOADING (the host said out of balance; batch_upload rows PENDING -> ACKED) ->
    SETTLED. Rows are returned as dicts: the table's columns plus `uploaded` (ACKED
    uploads) and `to_upload` (all upload rows). `detail`: while open, why the last
    attempt stopped; once SETTLED, the host's final verdict (balanced | out_of_balance)."""

    def begin_settlement(self) -> dict:
        """One commit: a STARTED settlement row for the current batch and the batch closed
        (new transactions go into the next batch at once). JournalError when a settlement
        is still open (resume it: open_settlement) or the batch was settled already."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM settlement WHERE status != 'SETTLED'").fetchone():
                raise JournalError("a settlement is still open: resume it before starting another")
            batch, now = read_counter(db, "batch"), self._stamp()
            try:
                db.execute("INSERT INTO settlement (batch, status, created_at, updated_at) "
                           "VALUES (?, 'STARTED', ?, ?)", (batch, now, now))
            except sqlite3.IntegrityError as exc:
                raise JournalError(f"batch {batch:06d} was settled already: {exc}") from exc
            db.execute("UPDATE counter SET value = ? WHERE name = 'batch'", (batch % BATCH_MAX + 1,))
        log.info("settlement of batch %06d started, batch closed", batch)
        return self.settlement(batch)

    def settlement(self, batch: int | None = None) -> dict | None:
        """The settlement row of `batch` (None: the newest), or None."""
        where, args = ("WHERE s.batch = ?", (batch,)) if batch is not None else ("", ())
        row = self._db.execute(
            "SELECT s.*, (SELECT COUNT(*) FROM batch_upload u WHERE u.batch = s.batch AND "
            "u.status = 'ACKED') AS uploaded, (SELECT COUNT(*) FROM batch_upload u WHERE "
            f"u.batch = s.batch) AS to_upload FROM settlement s {where} "
            "ORDER BY s.created_at DESC, s.rowid DESC LIMIT 1", args).fetchone()
        return dict(row) if row is not None else None

    def open_settlement(self) -> dict | None:
        """The settlement a cut or a failure left STARTED or UPLOADING, or None."""
        row = self._db.execute("SELECT batch FROM settlement WHERE status != 'SETTLED' "
                               "ORDER BY rowid LIMIT 1").fetchone()
        return self.settlement(row[0]) if row is not None else None

    def settled(self, batch: int) -> bool:
        row = self._db.execute("SELECT status FROM settlement WHERE batch = ?", (batch,)).fetchone()
        return row is not None and row[0] == "SETTLED"

    def record_settlement_result(self, batch: int, *, status: str, result: str | None = None,
                                 totals: tuple[int, int, int, int] | None = None,
                                 host_code: str | None = None, detail: str | None = None) -> None:
        """The settlement's progress: `status` (SETTLED, or the same open status again after
        a failure), the first 0510's `result`, the `totals` sent (debit count, debit amount,
        credit count, credit amount), the last 0510's field 39, `detail`. None keeps a column."""
        allowed = {"STARTED": ("STARTED",), "UPLOADING": ("UPLOADING",),
                   "SETTLED": ("STARTED", "UPLOADING")}.get(status)
        if allowed is None:
            raise ValueError(f"batch {batch:06d}: settlement status {status!r} unknown")
        columns = {"result": result, "host_code": host_code, "detail": detail}
        columns.update(zip(("debit_count", "debit_amount", "credit_count", "credit_amount"),
                           totals or (None,) * 4))
        with self._write() as db:
            if not self._update_status(db, "settlement", "batch", batch, allowed, status,
                                       {k: v for k, v in columns.items() if v is not None}):
                raise JournalError(f"batch {batch:06d}: no open settlement to become {status}")
            pruned = self._prune(db, batch) if status == "SETTLED" and self._keep_days is not None else 0
        log.info("settlement of batch %06d: %s %s", batch, status, detail or result or "")
        if pruned:
            log.info("retention (keep_days %d): %d transaction(s) of earlier settled batches deleted",
                     self._keep_days, pruned)

    def queue_upload(self, batch: int, txn_ids: list[int], *, result: str, host_code: str) -> None:
        """The host found the batch out of balance: one commit makes the settlement UPLOADING
        (`result`, `host_code` of that 0510) with a PENDING batch_upload row per txn id."""
        with self._write() as db:
            if not self._update_status(db, "settlement", "batch", batch, ("STARTED",), "UPLOADING",
                                       {"result": result, "host_code": host_code}):
                raise JournalError(f"batch {batch:06d}: no STARTED settlement to upload")
            now = self._stamp()
            db.executemany("INSERT OR IGNORE INTO batch_upload (txn_id, batch, status, updated_at) "
                           "VALUES (?, ?, 'PENDING', ?)", [(i, batch, now) for i in txn_ids])
        log.info("batch %06d out of balance: %d transaction(s) to upload", batch, len(txn_ids))

    def pending_uploads(self, batch: int) -> list[TxnRecord]:
        """The transactions of `batch` still to upload (not ACKED), oldest first."""
        rows = self._db.execute(SELECT_TXN + " JOIN batch_upload u ON u.txn_id = t.id "
                                "WHERE u.batch = ? AND u.status = 'PENDING' ORDER BY t.id",
                                (batch,)).fetchall()
        return [TxnRecord(**dict(row)) for row in rows]

    def record_upload_attempt(self, txn_id: int) -> int:
        """Commit one more attempt BEFORE the 0320 is written; returns the attempts so far."""
        with self._write() as db:
            row = db.execute("UPDATE batch_upload SET attempts = attempts + 1, updated_at = ? "
                             "WHERE txn_id = ? AND status = 'PENDING' RETURNING attempts",
                             (self._stamp(), txn_id)).fetchone()
        if row is None:
            raise JournalError(f"txn {txn_id}: no pending batch upload to attempt")
        return row[0]

    def record_upload_acked(self, txn_id: int) -> None:
        """The host answered the 0320 of `txn_id`: ACKED."""
        with self._write() as db:
            if not self._update_status(db, "batch_upload", "txn_id", txn_id, ("PENDING",), "ACKED", {}):
                raise JournalError(f"txn {txn_id}: no pending batch upload to acknowledge")

    def mark_report_printed(self, batch: int) -> None:
        """Record the first time the settlement report of `batch` was printed."""
        with self._write() as db:
            cur = db.execute("UPDATE settlement SET report_printed_at = COALESCE(report_printed_at, ?) "
                             "WHERE batch = ?", (self._stamp(), batch))
            if cur.rowcount != 1:
                raise JournalError(f"batch {batch:06d}: no settlement to mark printed")
