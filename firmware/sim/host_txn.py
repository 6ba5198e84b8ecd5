"""Acquirer simulator: void, refund, pre-authorisation and its cancel and completion(s), balance inquiry, card repayment.

Being built (issue 5); install() registers this family's handlers with
AcquirerSimulator.route().
"""
from __future__ import annotations

__all__ = ["install"]


def install(sim) -> None:
    """Register the handlers on `sim` (firmware.sim.acquirer.AcquirerSimulator)."""
