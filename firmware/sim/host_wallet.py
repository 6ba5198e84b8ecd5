"""Acquirer simulator: wallet QR payments: pay, query, cancel, refund (the wallet's behaviour by code).

Being built (issue 5); install() registers this family's handlers with
AcquirerSimulator.route().
"""
from __future__ import annotations

__all__ = ["install"]


def install(sim) -> None:
    """Register the handlers on `sim` (firmware.sim.acquirer.AcquirerSimulator)."""
