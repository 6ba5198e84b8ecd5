"""The terminal's checkout work: keeping a basket, cash payments and the cash drawer.

A mixin of firmware.app.Terminal (loop thread only). Journal writes run on the journal
worker, the drawer pulse on the printer worker. Cash never reaches the acquirer: its row
is APPROVED at once with a receipt number (STAN) and nothing sealed or queued
(Journal.record_cash); the flow prints it with Print like any approval.
"""
from __future__ import annotations

import logging
from dataclasses import asdict

from firmware.flows.types import BasketSaved, CashDone, SaveBasket
from firmware.hal.printer import drawer_pulse
from firmware.journal import JournalError, TxnExtra

__all__ = ["CheckoutWork"]

log = logging.getLogger("kpos.app")

DRAWER_TIMEOUT = 5.0  # s: the pulse is a few bytes


class CheckoutWork:
    """Terminal mixin: what the basket and cash screens ask of the terminal."""

    async def _save_basket(self, basket: SaveBasket) -> None:
        lines = [asdict(line) for line in basket.lines]
        try:
            basket_id = await self.journal_call(lambda journal: journal.save_basket(
                lines, subtotal=basket.subtotal, discount=basket.discount, total=basket.total,
                operator=self.operator))
        except (JournalError, ValueError) as exc:
            log.error("basket not kept: %s", exc)
            self._bridge.post(BasketSaved(None, "Basket not saved"))
            return
        self._bridge.post(BasketSaved(basket_id))

    async def _pay_cash(self, amount: int, tendered: int, basket_id: int | None) -> None:
        try:
            txn_id = await self.journal_call(lambda journal: journal.record_cash(
                amount=amount, tendered=tendered, currency=self.cfg.terminal.currency,
                operator=self.operator, terminal_id=self.cfg.terminal.terminal_id,
                extra=TxnExtra(basket_id=basket_id)))
        except (JournalError, ValueError) as exc:
            log.error("cash payment not recorded: %s", exc)
            self._bridge.post(CashDone(None, reason="Not recorded"))
            return
        if self.cfg.receipt.drawer:
            await self._open_drawer()
        self._bridge.post(CashDone(txn_id, change=tendered - amount))

    async def _open_drawer(self) -> None:
        """Kick the cash drawer; a printer fault is logged (the cashier opens it by key)."""
        try:
            await self.printer_worker.run(self.devices.printer.kick_drawer, drawer_pulse(),
                                          timeout=DRAWER_TIMEOUT)
        except Exception as exc:  # PrinterError, WorkerTimeout, a printer without a drawer port
            log.warning("cash drawer not opened: %s", getattr(exc, "reason", exc))
