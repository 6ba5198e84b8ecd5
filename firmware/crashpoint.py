"""Crash points for the power-cut harness (firmware/sim/powercut.py): SIGKILL this very
process at a named instant, e.g. between a journal write and its COMMIT, or between
writing a request to the acquirer and reading the answer.

Off unless the environment variable KPOS_CRASH_AT is set when this module is imported, or
`arm()` is called (a process forked after the import, e.g. a power-cut harness child):
"name:n[,name:n...]" kills the process the n-th time `hit(name)` runs (n >= 1). A
production terminal never sets it; an unset variable costs one dict lookup per point.
Any thread. Names in use: see POINTS.
"""
from __future__ import annotations

import os
import signal
import threading

__all__ = ["POINTS", "arm", "hit", "parse_plan"]

POINTS = (
    "commit.before",  # journal: inside a write transaction, before COMMIT
    "commit.after",  # journal: right after COMMIT returned
    "link.sent",  # request written and drained, response not read yet
    "link.received",  # response read and checked, not yet recorded
    "print.done",  # receipt copy printed, not yet marked printed in the journal
    "settle.closed",  # settlement: batch closed (settlement STARTED), nothing sent
    "upload.sent",  # batch upload: an 0330 read, its ACKED not yet committed
    "upload.acked",  # batch upload: ACKED committed
)


def parse_plan(text: str) -> dict[str, int]:
    """{"point": n} from "point:n,point:n"; ValueError naming the bad part."""
    plan: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition(":")
        if name not in POINTS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"KPOS_CRASH_AT: bad entry {part!r} (want one of {POINTS} ':' n >= 1)")
        plan[name] = int(count)
    return plan


_PLAN = parse_plan(os.environ.get("KPOS_CRASH_AT", ""))
_counts: dict[str, int] = {}
_lock = threading.Lock()


def arm(text: str) -> None:
    """Replace the plan by `text` (KPOS_CRASH_AT's format; "" disarms) and restart the
    counts. ValueError as `parse_plan`."""
    global _PLAN
    plan = parse_plan(text)
    with _lock:
        _PLAN = plan
        _counts.clear()


def hit(name: str) -> None:
    """Count one pass through crash point `name`; SIGKILL the process on the planned pass."""
    if not _PLAN or name not in _PLAN:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == _PLAN[name]:
            os.kill(os.getpid(), signal.SIGKILL)
