"""Receipt printer device contract: the Protocol every printer backend implements.

Both methods block and are called only from the printer's single worker thread
(DESIGN §2), never from the event loop. The bytes come ready-made from
firmware.receipts.render(); a backend only writes them. Failures raise PrinterError
with a short operator-facing reason; the caller queues the receipt for a later
print (DESIGN §7), so a backend never retries or swallows an error itself.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Printer", "PrinterError", "STATUS_OK", "PAPER_OUT", "OFFLINE", "COVER_OPEN", "drawer_pulse"]

STATUS_OK = "ok"
PAPER_OUT = "paper out"
OFFLINE = "offline"
COVER_OPEN = "cover open"


class PrinterError(Exception):
    """The printer did not print; `reason` is short and safe to show and log.

    reason: "paper out" | "offline" | "cover open" | "write failed: <detail>".
    `device` names the backend or device path, for the log.
    """

    def __init__(self, reason: str, *, device: str = ""):
        super().__init__(f"{device}: {reason}" if device else reason)
        self.reason = reason
        self.device = device


@runtime_checkable
class Printer(Protocol):
    def print_receipt(self, raw: bytes, preview: str, name: str) -> None:
        """Print `raw` ESC/POS bytes. Blocking; printer worker thread only.

        `preview` is the same receipt as text (backends that keep a copy store it);
        `name` identifies the receipt (e.g. "b000001-s000042-merchant"), never card data.
        Raises PrinterError; returns only once the bytes were handed to the device.
        """
        ...

    def kick_drawer(self, raw: bytes) -> None:
        """Send the cash drawer pulse `raw` (ESC p, drawer_pulse()) to the drawer
        port. Blocking; printer worker thread only. Raises PrinterError."""
        ...

    def status(self) -> str:
        """STATUS_OK or a PrinterError reason. Blocking; printer worker thread only."""
        ...


def drawer_pulse(pin: int = 2) -> bytes:
    """The ESC/POS cash drawer kick (ESC p m t1 t2) for drawer connector pin 2 or 5, as
    python-escpos builds it."""
    from escpos.printer import Dummy

    printer = Dummy(profile="default")
    printer.cashdraw(pin)
    return printer.output
