"""Session fixture `pcscd`: a pcscd with vsmartcard's vpcd driver for the PC/SC tests.

Uses the pcscd already running if there is one, else starts `pcscd --foreground` (as root,
with the system reader.conf.d where vsmartcard-vpcd puts its entry) and stops it at the end
of the session. Readiness is a bounded poll (READY_TIMEOUT) until pcscd lists "Virtual PCD".
vpcd's slot is one fixed TCP port and pcscd's socket is one fixed path, so test sessions
running at the same time take turns through an flock: tests use `vpcd_lock` (module scope,
yields a Pcscd), which checks or starts pcscd while holding it; the session that started
pcscd stops it at its end, also under the lock (LOCK_TIMEOUT bounds every wait). Missing pcscd or vpcd FAILS (not skips):
./dev.sh test installs them.
"""
from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware.sim.vpicc import VPCD_CONF, vpcd_port

__all__ = ["Pcscd", "pcscd", "vpcd_lock", "READER"]

READER = "Virtual PCD"
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
LOCK_FILE = Path(tempfile.gettempdir()) / "kpos-vpcd-tests.lock"
READY_TIMEOUT = 10.0  # s for a fresh pcscd to list the vpcd reader
LOCK_TIMEOUT = 90.0  # s for another test session to finish with vpcd
POLL = 0.05  # s between readiness checks
INSTALL_HINT = "run ./dev.sh test once (it installs pcscd and vsmartcard-vpcd)"


@dataclass(frozen=True)
class Pcscd:
    reader: str  # the full reader name pcscd gives vpcd's first slot
    vpcd_port: int  # where a VirtualCard connects for that slot
    started_here: bool


def _reader_name() -> str | None:
    """The vpcd reader's name if pcscd answers and lists it; None otherwise."""
    from firmware.hal.reader_pcsc import PcscReaderError, probe
    try:
        return probe(READER)
    except PcscReaderError:
        return None


def _pcscd_running() -> bool:
    from firmware.hal.reader_pcsc import PcscReaderError, _establish, _release
    try:
        _release(_establish())
    except PcscReaderError:
        return False
    return True


def _lock(timeout: float):
    handle = open(LOCK_FILE, "a")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                pytest.fail(f"another test session held {LOCK_FILE} (vpcd) for {timeout:.0f} s")
            time.sleep(POLL)  # bounded wait for another process's lock; no event to wait on


def _unlock(handle) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def _start(log_path: Path) -> subprocess.Popen:
    pcscd_bin = shutil.which("pcscd") or "/usr/sbin/pcscd"
    if not Path(pcscd_bin).exists():
        pytest.fail(f"pcscd is not installed: {INSTALL_HINT}")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([pcscd_bin, "--foreground", "--info"], stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + READY_TIMEOUT
    while _reader_name() is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            tail = log_path.read_text(errors="replace")[-1500:]
            pytest.fail(f"pcscd did not list {READER!r} within {READY_TIMEOUT} s "
                        f"(exit {proc.returncode}); log {log_path}:\n{tail}")
        time.sleep(POLL)  # bounded readiness poll of a daemon we just started
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class _Daemon:
    """The session's view of pcscd: started at most once here, stopped at session end."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    def ensure(self) -> Pcscd:
        """Call with the lock held: pcscd running with the vpcd reader, started if needed."""
        if not _pcscd_running():
            self.proc = _start(self.log_dir / f"pcscd-{time.monotonic_ns()}.log")
        name = _reader_name()
        if name is None:
            pytest.fail(f"pcscd is running but lists no {READER!r} reader: restart it after "
                        f"installing vsmartcard-vpcd ({INSTALL_HINT})")
        return Pcscd(reader=name, vpcd_port=vpcd_port(), started_here=self.proc is not None)


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory) -> _Daemon:
    """Owns a pcscd started by this session (stopped at the end, under the lock)."""
    if not VPCD_CONF.exists() or not VPCD_DRIVER.exists():
        pytest.fail(f"vsmartcard's vpcd driver is missing ({VPCD_CONF}, {VPCD_DRIVER}): "
                    f"{INSTALL_HINT}")
    daemon = _Daemon(tmp_path_factory.mktemp("pcscd"))
    yield daemon
    if daemon.proc is not None:
        handle = _lock(LOCK_TIMEOUT)
        try:
            _stop(daemon.proc)
        finally:
            _unlock(handle)


@pytest.fixture(scope="module")
def vpcd_lock(pcscd) -> Pcscd:
    """Exclusive use of pcscd's vpcd slot for one test module (other sessions wait), with
    pcscd checked (or started) under the lock."""
    handle = _lock(LOCK_TIMEOUT)
    try:
        yield pcscd.ensure()
    finally:
        _unlock(handle)
