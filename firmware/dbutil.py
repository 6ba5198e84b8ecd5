"""SQLite helpers shared by the journal and the simulator's ledger.

Blocking; call on the thread that owns the connection (opened with isolation_level=None).
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Iterator

from firmware import crashpoint

__all__ = ["immediate"]


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE ... COMMIT); rolled back if the body raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    crashpoint.hit("commit.before")
    db.execute("COMMIT")
    crashpoint.hit("commit.after")
