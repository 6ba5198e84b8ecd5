"""Field update, terminal side: the hold/idle gate, the queue snapshot and the health check.

Files in the terminal's data_dir (another process's view, so plain files):
- kpos.lock         the running terminal holds an exclusive flock on it (InstanceLock);
                    a second terminal on the same data_dir is refused (StartupFault, exit 3).
- update-hold.json  a hold request {token, requester, created (unix s), ttl (s)}, written
                    atomically (tmp + rename) by `kpos update hold`, removed by `release`.
                    A hold older than its ttl is ignored, so a crashed deploy never leaves
                    the terminal refusing sales. It survives a terminal restart.
- update-idle.json  the terminal's acknowledgement {token}: it has seen that hold and has
                    nothing in flight; from then on it starts no transaction.
The terminal side is HoldGate (a Terminal mixin, loop only): it re-reads the hold every
HOLD_POLL s; while held, at rest (shell.resting) an input that would start something shows
HOLD_SCREEN instead and never reaches the flow; what was already begun (card read,
authorisation, receipt, a menu the cashier is in) finishes first, then the acknowledgement
is written. Store-and-forward goes on while held: it starts no transaction, every item is
committed before it is sent, and draining before the switch leaves less for the new release.

Commands (blocking, the CLI's thread; exit codes as the deploy contract says):
`hold_command` 0 idle, 1 still busy at the timeout (the hold is lifted again); `release_command`
0; `snapshot_command` 0 (2 no journal); `health_command` 0 all ok, 1 a check failed.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from firmware.files import write_private
from firmware.flows import shell
from firmware.flows.sale import idle_screen, login_screen
from firmware.flows.types import (
    BarcodeScanned, CardInserted, CardSwiped, CodeScanned, Key, Screen, Show,
)

__all__ = ["Hold", "HoldGate", "InstanceLock", "AlreadyRunning", "request_hold", "read_hold",
           "release_hold", "acknowledge", "acknowledged", "terminal_running", "hold_command",
           "release_command", "snapshot_command", "health_command", "HOLD_SCREEN"]

LOCK_NAME, HOLD_NAME, IDLE_NAME = "kpos.lock", "update-hold.json", "update-idle.json"
HOLD_POLL = 0.5  # s between the terminal's looks at the hold file
WAIT_POLL = 0.1  # s between `kpos update hold`'s looks at the acknowledgement
LOCK_TRIES = 5  # a probe (terminal_running) holds the lock for microseconds: try again
HOLD_SCREEN = Screen("Updating", ("Please wait",))
HOLD_INPUTS = (Key, CardInserted, CardSwiped, BarcodeScanned, CodeScanned)  # would start a txn


class AlreadyRunning(RuntimeError):
    """Another terminal process holds the data_dir's lock."""


class InstanceLock:
    """The exclusive flock on <data_dir>/kpos.lock, held while a terminal runs."""

    def __init__(self, fd: int):
        self._fd = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> "InstanceLock":
        """Blocks at most ~0.1 s; AlreadyRunning when another process holds it."""
        fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd)
            except BlockingIOError:
                time.sleep(0.02)  # a probe's instant, not a wait for an event
        os.close(fd)
        raise AlreadyRunning(f"another terminal is running on {data_dir} "
                             f"({LOCK_NAME} is locked): stop it first")

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def terminal_running(data_dir: Path) -> bool:
    """True when a terminal process holds the data_dir's lock (probe: a shared try-lock)."""
    try:
        fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's shared lock


# ---- the hold files ------------------------------------------------------------------------

@dataclass(frozen=True)
class Hold:
    token: str
    requester: str
    created: float  # unix time, s
    ttl: float  # s

    def stale(self, now: float) -> bool:
        return now - self.created > self.ttl


def _write_atomic(path: Path, data: dict) -> None:
    write_private(path, json.dumps(data).encode("utf-8"))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def request_hold(data_dir: Path, *, ttl: float, requester: str = "") -> Hold:
    """Write a new hold request (replacing any older one and its acknowledgement)."""
    hold = Hold(secrets.token_hex(8), requester or f"{socket.gethostname()}:{os.getpid()}",
                time.time(), ttl)
    (Path(data_dir) / IDLE_NAME).unlink(missing_ok=True)
    _write_atomic(Path(data_dir) / HOLD_NAME, asdict(hold))
    return hold


def read_hold(data_dir: Path) -> Hold | None:
    """The hold in force: None when there is none, it is unreadable or past its ttl."""
    data = _read_json(Path(data_dir) / HOLD_NAME)
    try:
        hold = Hold(str(data["token"]), str(data["requester"]), float(data["created"]),
                    float(data["ttl"]))
    except (TypeError, KeyError, ValueError):
        return None
    return None if hold.stale(time.time()) else hold


def release_hold(data_dir: Path) -> None:
    """Lift the hold (idempotent)."""
    for name in (HOLD_NAME, IDLE_NAME):
        (Path(data_dir) / name).unlink(missing_ok=True)


def acknowledge(data_dir: Path, hold: Hold) -> None:
    """The terminal: idle under `hold`."""
    _write_atomic(Path(data_dir) / IDLE_NAME, {"token": hold.token, "at": time.time()})


def acknowledged(data_dir: Path, hold: Hold) -> bool:
    return (_read_json(Path(data_dir) / IDLE_NAME) or {}).get("token") == hold.token


# ---- the terminal side ---------------------------------------------------------------------

class HoldGate:
    """Terminal mixin (loop only). Needs self.cfg, self.state, self.devices, self._tasks.
    The app runs _watch_holds() from start (its own task, like the daily sign-on), calls
    _held_back(event) first in _dispatch and passes the flow's actions through _under_hold()."""

    _hold: Hold | None = None  # the hold seen at the last look
    _hold_acked: str = ""  # the token acknowledged

    async def _watch_holds(self) -> None:
        """Every HOLD_POLL s: take up, acknowledge or lift the hold (a file read on a thread)."""
        data_dir = self.cfg.terminal.data_dir
        while True:
            hold = await asyncio.to_thread(read_hold, data_dir)
            if hold is None and self._hold is not None:
                self._hold, self._hold_acked = None, ""
                self._hold_lifted()
            elif hold is not None:
                self._hold = hold
                if self._hold_acked != hold.token and self._quiet():
                    self.devices.display.show(HOLD_SCREEN)
                    await asyncio.to_thread(acknowledge, data_dir, hold)
                    self._hold_acked = hold.token
            await asyncio.sleep(HOLD_POLL)  # the poll period itself

    def _quiet(self) -> bool:
        """At rest with nothing in flight (no card step, authorisation, print or task)."""
        return shell.resting(self.state) and not self._tasks

    def _held_back(self, event: object) -> bool:
        """True (HOLD_SCREEN shown, the event dropped) when `event` would start something
        while a hold is in force and the terminal is at rest."""
        if self._hold is None or not isinstance(event, HOLD_INPUTS) or not shell.resting(self.state):
            return False
        self.devices.display.show(HOLD_SCREEN)
        return True

    def _under_hold(self, actions: list) -> list:
        """The flow's actions, with its screens replaced by HOLD_SCREEN while a hold is in
        force and the terminal is (back) at rest (a link status, the end of a sale)."""
        if self._hold is None or not shell.resting(self.state):
            return actions
        return [Show(HOLD_SCREEN) if isinstance(a, Show) else a for a in actions]

    def _hold_lifted(self) -> None:
        """Redraw the resting screen the hold covered."""
        if self.state.phase == "IDLE":
            self.devices.display.show(idle_screen(self.state.sale))
        elif self.state.phase == "LOGIN" and self.state.login is not None:
            self.devices.display.show(login_screen(self.state.login))


# ---- commands ------------------------------------------------------------------------------

def hold_command(cfg, *, timeout: float, ttl: float) -> int:
    """`kpos update hold`: 0 once the terminal is idle under the hold (at once when none
    runs), 1 when it is still busy after `timeout` s (the hold is then lifted)."""
    data_dir = cfg.terminal.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    hold = request_hold(data_dir, ttl=ttl)
    deadline = time.monotonic() + timeout
    while not acknowledged(data_dir, hold):
        if not terminal_running(data_dir):
            print("kpos update hold: no terminal running: held")
            return 0
        if time.monotonic() >= deadline:
            release_hold(data_dir)
            print(f"kpos update hold: terminal still busy after {timeout:g} s "
                  "(transaction in flight)", file=sys.stderr)
            return 1
        time.sleep(WAIT_POLL)  # another process: poll its acknowledgement file
    print("kpos update hold: terminal idle: held")
    return 0


def release_command(cfg) -> int:
    release_hold(cfg.terminal.data_dir)
    print("kpos update release: hold lifted")
    return 0


def snapshot_command(cfg, out: Path) -> int:
    """`kpos update snapshot`: the unsent reversals and advices as JSON in `out`."""
    from firmware.journal import JournalError, open_existing
    try:
        journal = open_existing(cfg.terminal.data_dir, cfg.security.vault_key_file)
    except (FileNotFoundError, JournalError) as exc:
        print(f"kpos update snapshot: {exc}", file=sys.stderr)
        return 2
    try:
        items = journal.queue_items()
    finally:
        journal.close()
    _write_atomic(Path(out), {"taken": time.time(), "items": [
        {"kind": kind, "txn_id": txn_id} for kind, txn_id in items]})
    print(f"kpos update snapshot: {len(items)} queued item(s) in {out}")
    return 0


# ---- health ---------------------------------------------------------------------------------

def health_command(cfg, *, snapshot: Path | None, timeout: float, echo: bool) -> int:
    """`kpos health`: one line per check ("ok  name: detail" / "FAIL name: why"); 0 all ok."""
    from firmware.doctor import FAIL, check_journal
    status, detail = check_journal(cfg)
    results = [("journal integrity", "" if status != FAIL else detail)]
    results += _journal_checks(cfg, snapshot, timeout if echo else None)
    for name, failure in results:
        print(f"FAIL {name}: {failure}" if failure else f"ok  {name}")
    return 1 if any(failure for _, failure in results) else 0


def _journal_checks(cfg, snapshot: Path | None, echo_timeout: float | None) -> list[tuple[str, str]]:
    """(name, failure or "") for the schema, the snapshot's queue and the echo test."""
    from firmware.journal import SCHEMA_VERSION, JournalError, open_existing
    try:
        journal = open_existing(cfg.terminal.data_dir, cfg.security.vault_key_file)
    except (FileNotFoundError, JournalError) as exc:
        return [("journal schema", str(exc))]
    try:
        results = [(f"journal schema {journal.schema()} (release {SCHEMA_VERSION})", "")]
        if snapshot is not None:
            results.append(("queue", _vanished(journal, snapshot)))
        if echo_timeout is not None:
            request = _echo_request(cfg, journal)
            results.append(("echo", asyncio.run(_echo(cfg, request, echo_timeout))))
        return results
    finally:
        journal.close()


def _vanished(journal, snapshot: Path) -> str:
    """"" when every item of the snapshot is still in the journal, else which are not."""
    try:
        items = [(i["kind"], int(i["txn_id"])) for i in json.loads(snapshot.read_text())["items"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"snapshot {snapshot} unreadable: {exc}"
    gone = journal.missing_items(items)
    if gone:
        return f"{len(gone)} items vanished: " + ", ".join(f"{k} txn {t}" for k, t in gone)
    return ""


def _echo_request(cfg, journal) -> dict:
    """An 0800 echo test with the next STAN (BEGIN IMMEDIATE: safe next to the terminal)."""
    from firmware.acquirer import messages
    from firmware.clock import SystemClock
    ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
    return messages.echo_request(ids, stan=journal.next_stan(), batch=journal.batch_no(),
                                 now=SystemClock().now())


async def _echo(cfg, request: dict, timeout: float) -> str:
    """"" when the acquirer answers the echo 00 within `timeout` s (its own connection)."""
    from firmware.acquirer.link import AcquirerLink, LinkError
    from firmware.acquirer.tls import TlsClient
    a = cfg.acquirer
    link = AcquirerLink(a.host, a.port, connect_timeout=min(a.connect_timeout, timeout),
                        response_timeout=min(a.response_timeout, timeout),
                        tls=TlsClient.from_config(a))
    try:
        response = await link.exchange(request)
    except LinkError as exc:
        return f"{a.host}:{a.port}: {exc.reason}"
    finally:
        await link.close()
    code = response.get("39", "??")
    return "" if code == "00" else f"{a.host}:{a.port} answered {code}"
