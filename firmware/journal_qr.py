"""The journal's QR payments: a mixin of firmware.journal.Journal (firmware/qrpay.py,
docs/qr.md).

Same contract as Journal: blocking sqlite3 on the journal worker thread, each write one
committed transaction, amounts in int minor units. Uses Journal's `_db`, `get`,
`_insert_txn`, `_seal_and_arm` and `_queue_advice`.
"""
from __future__ import annotations

import logging
import sqlite3

from firmware.journal_rows import SELECT_TXN, JournalError, TxnExtra, TxnRecord

__all__ = ["QrPayments"]

log = logging.getLogger("kpos.journal")


class QrPayments:
    """A wallet QR payment is a qr_sale row with the masked code, entry mode 031 and its
    wallet, reversible (the cancel is its reversal). Paid after the cancel: the row ends
    APPROVED (the wallet has the money) and a qr_refund row (original_id = the payment,
    APPROVED, no offline_code) gives it back through the advice queue (0220 60.1 "63")."""

    def record_qr_payment(self, *, stan: int, batch: int, amount: int, currency: int,
                          masked_code: str, wallet: str, entry_mode: str, request: dict,
                          operator: str = "01", basket_id: int | None = None) -> int:
        """record_request for a QR payment (reversal ARMED), with the masked code and the
        entry mode in the card columns, in the same commit."""
        def seal_arm_and_mark(db: sqlite3.Connection, txn_id: int, now: str) -> None:
            self._seal_and_arm(db, txn_id, now, request, True)
            db.execute("UPDATE txn SET masked_pan = ?, entry_mode = ? WHERE id = ?",
                       (masked_code, entry_mode, txn_id))

        txn_id = self._insert_txn(kind="qr_sale", stan=stan, batch=batch, amount=amount,
                                  currency=currency, card=None, request=request, operator=operator,
                                  status="SENDING", code=None, then=seal_arm_and_mark,
                                  extra=TxnExtra(wallet=wallet, basket_id=basket_id))
        log.info("txn %d qr_sale STAN %06d batch %d amount %d recorded (SENDING)", txn_id, stan,
                 batch, amount)
        return txn_id

    def record_paid_late(self, payment_id: int, *, response_code: str, rrn: str | None,
                         auth_code: str | None, stan: int, batch: int, refund: dict,
                         operator: str = "01") -> int:
        """The wallet says the customer paid after all (answer to the cancel): one commit
        makes the payment APPROVED (from SENDING, UNKNOWN or REVERSED: a cancel the queue
        delivered), its reversal ACKED, its sealed request deleted, and records the
        qr_refund row (APPROVED) with its PENDING advice `refund` (0220 fields, sealed).
        Returns the refund's txn id. JournalError when the payment is not such a row."""
        payment = self.get(payment_id)
        if payment.kind != "qr_sale" or payment.status not in ("SENDING", "UNKNOWN", "REVERSED"):
            raise JournalError(f"txn {payment_id}: a {payment.kind} {payment.status} cannot be paid late")

        def settle(db: sqlite3.Connection, refund_id: int, now: str) -> None:
            db.execute("UPDATE txn SET status = 'APPROVED', response_code = ?, rrn = COALESCE(?, rrn), "
                       "auth_code = COALESCE(?, auth_code), failure = NULL, updated_at = ? WHERE id = ?",
                       (response_code, rrn, auth_code, now, payment_id))
            db.execute("UPDATE reversal SET status = 'ACKED', detail = ?, updated_at = ? WHERE txn_id = ?",
                       (f"already paid ({response_code}): refunded by txn {refund_id}", now, payment_id))
            db.execute("DELETE FROM sealed_request WHERE txn_id = ?", (payment_id,))
            db.execute("UPDATE txn SET masked_pan = ?, entry_mode = ? WHERE id = ?",
                       (payment.masked_pan, payment.entry_mode, refund_id))
            self._queue_advice(db, refund_id, refund, "refund of a QR payment paid late", now)

        refund_id = self._insert_txn(
            kind="qr_refund", stan=stan, batch=batch, amount=payment.amount,
            currency=payment.currency, card=None, request=refund, operator=operator,
            status="APPROVED", code=None, then=settle,
            extra=TxnExtra(original_id=payment_id, original_rrn=rrn or payment.rrn,
                           original_date=payment.created_at[5:7] + payment.created_at[8:10],
                           wallet=payment.wallet))
        log.warning("txn %d qr_sale STAN %06d paid after its cancel: refund txn %d queued",
                    payment_id, payment.stan, refund_id)
        return refund_id

    def qr_paid_late(self, code: str) -> list[TxnRecord]:
        """QR payments whose cancel the store-and-forward queue delivered and the wallet
        answered `code` ("already paid"), not refunded yet, oldest first."""
        rows = self._db.execute(
            SELECT_TXN + " WHERE t.kind = 'qr_sale' AND t.status = 'REVERSED' AND r.detail = ? "
            "AND NOT EXISTS (SELECT 1 FROM txn d WHERE d.original_id = t.id AND d.kind = 'qr_refund') "
            "ORDER BY t.id", (f"acknowledged with {code}",)).fetchall()
        return [TxnRecord(**dict(row)) for row in rows]
