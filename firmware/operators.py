"""Operator store: who may log in to the terminal, with which role, and the login rules.

Contract: blocking sqlite3 on its own file (`OPERATORS_NAME` in the data_dir, created mode
0600; WAL, synchronous=FULL, each write one BEGIN IMMEDIATE ... COMMIT, 5 s busy timeout).
One instance per thread: the connection keeps check_same_thread=True, so a call from
another thread raises sqlite3.ProgrammingError. The terminal uses its instance on a worker
thread; `kpos operator` opens the same file next to a running terminal.
Operators: number "00".."99", role in firmware.txnkinds.ROLES, name of at most 20
characters, password of 4..12 digits (the keypad has digits only). A password is kept only
as a salted scrypt hash in PHC form "$scrypt$ln=14,r=8,p=1$<salt>$<key>": the parameters
travel with the hash, and a login with older parameters stores a fresh hash.
`verify()` costs one scrypt (about 50 ms) whether the operator exists or not (no timing
oracle); a locked-out operator is refused without checking the password. `max_failures`
wrong passwords in a row lock the operator for `lockout` seconds; the count starts again
after the lockout. Times: ISO-8601 local time text from the injected `now()`.
Errors: OperatorError, one line naming the operator (bad input, exists, unknown, the last
admin, unreadable file). Logs logins, wrong passwords and lockouts; never a password or hash.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from firmware.dbutil import immediate
from firmware.txnkinds import ROLES

__all__ = ["OperatorStore", "Operator", "LoginOutcome", "OperatorError", "OPERATORS_NAME",
           "DEFAULT_OPERATORS", "NAME_MAX"]

log = logging.getLogger("kpos.operators")

OPERATORS_NAME = "operators.db"  # the store's file name in the terminal's data_dir
NAME_MAX = 20
# (number, role, password, name) created by seed_defaults() on a terminal with no operators
DEFAULT_OPERATORS = (("00", "supervisor", "123456", "Supervisor"),
                     ("01", "cashier", "0000", "Cashier"),
                     ("99", "admin", "12345678", "Admin"))
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 14, 8, 1  # n = 2**14: about 16 MiB and 50 ms per hash
SALT_SIZE, KEY_SIZE = 16, 32
_NUMBER = re.compile(r"\d{2}")
_PASSWORD = re.compile(r"\d{4,12}")
_PHC = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")

_SCHEMA = [
    """CREATE TABLE operator (
        number        TEXT PRIMARY KEY CHECK (length(number) = 2),
        role          TEXT NOT NULL CHECK (role IN ('cashier', 'supervisor', 'admin')),
        name          TEXT NOT NULL DEFAULT '',
        password      TEXT NOT NULL,  -- PHC scrypt hash, never the password
        failures      INTEGER NOT NULL DEFAULT 0,  -- wrong passwords in a row
        locked_until  TEXT,
        last_login_at TEXT,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    )""",
    "PRAGMA user_version = 1",
]
_COLUMNS = "number, role, name, failures, locked_until, last_login_at"
_INSERT = ("INSERT INTO operator (number, role, name, password, created_at, updated_at) "
           "VALUES (?, ?, ?, ?, ?, ?)")


class OperatorError(ValueError):
    """Bad operator input or a refused change; the message is one line for the operator."""


@dataclass(frozen=True)
class Operator:
    """One operator as listed (never the password hash)."""

    number: str  # "00".."99"
    role: str  # txnkinds.ROLES
    name: str
    failures: int  # wrong passwords in a row since the last login or lockout
    locked_until: str | None  # ISO local time; in the past once the lockout is over
    last_login_at: str | None

    def state(self, now: datetime) -> str:
        """"ok", "2 failures" or "locked 12 min" at `now`."""
        left = _minutes_left(self.locked_until, now)
        if left:
            return f"locked {left} min"
        return f"{self.failures} failure{'s' * (self.failures > 1)}" if self.failures else "ok"


@dataclass(frozen=True)
class LoginOutcome:
    """verify()'s answer: `ok` with the role, else the reason to show ("Wrong password (4
    left)", "Locked 15 min", "No such operator")."""

    ok: bool
    role: str = ""
    reason: str = ""
    operator: str = ""  # the number as keyed


class OperatorStore:
    """Operators and their login state in one SQLite file (see the module contract)."""

    def __init__(self, path: Path, *, now: Callable[[], datetime] = datetime.now,
                 max_failures: int = 5, lockout: float = 900.0):
        self._path = Path(path)
        self._now = now
        self._max_failures = max_failures
        self._lockout = lockout
        self._db = _open(self._path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "OperatorStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM operator LIMIT 1").fetchone() is None

    def list(self) -> list[Operator]:
        """Every operator, by number."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM operator ORDER BY number")
        return [Operator(**dict(row)) for row in rows]

    def add(self, number: str, role: str, password: str, name: str = "") -> None:
        _check_number(number)
        _check_role(role)
        _check_name(name)
        stored = _hash(_checked_password(password))
        stamp = self._stamp()
        try:
            with immediate(self._db) as db:
                db.execute(_INSERT, (number, role, name, stored, stamp, stamp))
        except sqlite3.IntegrityError:
            raise OperatorError(f"operator {number} already exists") from None
        log.info("operator %s added (%s)", number, role)

    def passwd(self, number: str, password: str) -> None:
        """A new password; it also ends a lockout."""
        stored = _hash(_checked_password(password))
        with immediate(self._db) as db:
            self._update(db, number, "password = ?, failures = 0, locked_until = NULL", stored)
        log.info("operator %s: password changed", number)

    def set_role(self, number: str, role: str) -> None:
        _check_role(role)
        with immediate(self._db) as db:
            if role != "admin":
                _keep_an_admin(db, number, "demote")
            self._update(db, number, "role = ?", role)
        log.info("operator %s: role now %s", number, role)

    def remove(self, number: str) -> None:
        with immediate(self._db) as db:
            _keep_an_admin(db, number, "remove")
            db.execute("DELETE FROM operator WHERE number = ?", (number,))
        log.info("operator %s removed", number)

    def seed_defaults(self) -> bool:
        """Create DEFAULT_OPERATORS when there is no operator at all; False if any exists."""
        if not self.empty():
            return False
        rows = [(no, role, name, _hash(pw)) for no, role, pw, name in DEFAULT_OPERATORS]
        stamp = self._stamp()
        with immediate(self._db) as db:
            if db.execute("SELECT 1 FROM operator LIMIT 1").fetchone():
                return False  # another process was first
            db.executemany(_INSERT, [(*row, stamp, stamp) for row in rows])
        log.warning("no operators: created the default ones (%s); change their passwords",
                    ", ".join(no for no, *_ in DEFAULT_OPERATORS))
        return True

    def verify(self, number: str, password: str) -> LoginOutcome:
        """Check a login; counts wrong passwords and locks out (module contract)."""
        valid = isinstance(number, str) and _NUMBER.fullmatch(number)
        row = self._db.execute("SELECT role, password, locked_until FROM operator WHERE "
                               "number = ?", (number,)).fetchone() if valid else None
        if row is None:
            _matches(password, _DUMMY_HASH)  # the same scrypt time as a known operator
            log.warning("login refused: no operator %s", number if valid else "(malformed)")
            return LoginOutcome(False, reason="No such operator", operator=str(number))
        now = self._now()
        left = _minutes_left(row["locked_until"], now)
        if left:
            log.warning("login refused: operator %s locked for %d more min", number, left)
            return LoginOutcome(False, reason=f"Locked {left} min", operator=number)
        if not _matches(password, row["password"], number):
            return LoginOutcome(False, reason=self._failed(number, now), operator=number)
        rehash = _hash(password) if _outdated(row["password"]) else row["password"]
        with immediate(self._db) as db:
            self._update(db, number, "failures = 0, locked_until = NULL, last_login_at = ?, "
                         "password = ?", self._stamp(now), rehash)
        log.info("operator %s logged in (%s)", number, row["role"])
        return LoginOutcome(True, role=row["role"], operator=number)

    # -- internals --------------------------------------------------------------------------

    def _failed(self, number: str, now: datetime) -> str:
        """Count one wrong password; the reason to show."""
        with immediate(self._db) as db:
            self._update(db, number, "failures = failures + 1")
            failures = db.execute("SELECT failures FROM operator WHERE number = ?",
                                  (number,)).fetchone()[0]
            if failures < self._max_failures:
                log.warning("operator %s: wrong password (%d in a row)", number, failures)
                return f"Wrong password ({self._max_failures - failures} left)"
            until = now + timedelta(seconds=self._lockout)
            self._update(db, number, "failures = 0, locked_until = ?", self._stamp(until))
        log.warning("operator %s locked out for %g s after %d wrong passwords",
                    number, self._lockout, failures)
        return f"Locked {_minutes_left(self._stamp(until), now)} min"

    def _update(self, db: sqlite3.Connection, number: str, assignments: str, *values) -> None:
        """UPDATE one operator inside the caller's write transaction; OperatorError if none."""
        cur = db.execute(f"UPDATE operator SET {assignments}, updated_at = ? WHERE number = ?",
                         (*values, self._stamp(), number))
        if cur.rowcount != 1:
            raise OperatorError(f"no operator {number}")

    def _stamp(self, when: datetime | None = None) -> str:
        return (when or self._now()).isoformat(timespec="seconds")


def _open(path: Path) -> sqlite3.Connection:
    db = None
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # -wal/-shm copy this mode
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=True, timeout=5.0)
        db.row_factory = sqlite3.Row
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL required")
        db.execute("PRAGMA synchronous = FULL")
        if db.execute("PRAGMA user_version").fetchone()[0] == 0:
            with immediate(db):
                if db.execute("PRAGMA user_version").fetchone()[0] == 0:  # not made meanwhile
                    for statement in _SCHEMA:
                        db.execute(statement)
        return db
    except (OSError, sqlite3.Error) as exc:
        if db is not None:
            db.close()
        raise OperatorError(f"operators {path}: cannot open: {exc}") from exc


def _keep_an_admin(db: sqlite3.Connection, number: str, what: str) -> None:
    row = db.execute("SELECT role, (SELECT COUNT(*) FROM operator WHERE role = 'admin') "
                     "FROM operator WHERE number = ?", (number,)).fetchone()
    if row is None:
        raise OperatorError(f"no operator {number}")
    if row[0] == "admin" and row[1] == 1:
        raise OperatorError(f"cannot {what} operator {number}: the last admin")


def _minutes_left(locked_until: str | None, now: datetime) -> int:
    """Whole minutes (rounded up) until `locked_until`; 0 when not locked at `now`."""
    if not locked_until:
        return 0
    seconds = (datetime.fromisoformat(locked_until) - now).total_seconds()
    return math.ceil(seconds / 60) if seconds > 0 else 0


def _check_number(number: str) -> None:
    if not (isinstance(number, str) and _NUMBER.fullmatch(number)):
        raise OperatorError(f"operator number must be 2 digits (00..99), got {number!r}")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise OperatorError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def _check_name(name: str) -> None:
    if len(name) > NAME_MAX or not name.isprintable():
        raise OperatorError(f"operator name must be at most {NAME_MAX} printable characters")


def _checked_password(password: str) -> str:
    if not (isinstance(password, str) and _PASSWORD.fullmatch(password)):
        raise OperatorError("password must be 4 to 12 digits")  # never echo it
    return password


# -- password hashes (PHC string format, standard base64 without padding) --------------------

def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int, size: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=size,
                          maxmem=128 * r * (n + p + 2) + 65536)  # OpenSSL's need + slack


def _hash(password: str) -> str:
    salt = os.urandom(SALT_SIZE)
    key = _scrypt(password, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, KEY_SIZE)
    return f"$scrypt$ln={SCRYPT_LOG_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse(stored: str, number: str = "") -> tuple[int, int, int, bytes, bytes]:
    m = _PHC.fullmatch(stored)
    if not m:
        raise OperatorError(f"operator {number}: stored password hash unreadable")
    return int(m[1]), int(m[2]), int(m[3]), _unb64(m[4]), _unb64(m[5])


def _matches(password: str, stored: str, number: str = "") -> bool:
    log_n, r, p, salt, key = _parse(stored, number)
    text = password if isinstance(password, str) else ""
    return hmac.compare_digest(_scrypt(text, salt, log_n, r, p, len(key)), key)


def _outdated(stored: str) -> bool:
    return _parse(stored)[:3] != (SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)


# Checked against for an unknown operator: current parameters, a key nothing hashes to.
_DUMMY_HASH = (f"$scrypt$ln={SCRYPT_LOG_N},r={SCRYPT_R},p={SCRYPT_P}"
               f"${_b64(bytes(SALT_SIZE))}${_b64(bytes(KEY_SIZE))}")
