"""Acquirer simulator: settlement (0500/0510) and batch upload (0320/0330).

Being built (issue 5); install() registers this family's handlers with
AcquirerSimulator.route().
"""
from __future__ import annotations

__all__ = ["install"]


def install(sim) -> None:
    """Register the handlers on `sim` (firmware.sim.acquirer.AcquirerSimulator)."""
