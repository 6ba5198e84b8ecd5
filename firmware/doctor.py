"""`kpos doctor`: checks a terminal's config, state files, devices and acquirer link.

Contract: `run_checks(cfg)` blocks the calling thread (the CLI's main thread) for at most
CHECK_TIMEOUT s, or the acquirer's connect_timeout + 1 s when that is longer. All checks run
at once, each on its own daemon thread; one that has not answered by then is reported FAIL
"no answer within N s" and left behind, and one that raises is FAIL with the error text.
Checks only look: the journal is opened read-only and never created, a directory is proven
writable by a temporary file deleted at once, the acquirer gets a TCP connect and no message,
a serial port is opened and closed. Details never hold key material or card data (an ATR
is not card data). `main(path, as_json=)` prints one line per check ("OK   name: detail",
"WARN ...", "FAIL ...") or a JSON list of {check, status, detail}, and returns the exit
code: 0 no FAIL, 1 a FAIL, 2 the config does not load.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import sqlite3
import stat
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from firmware.config import Config, ConfigError, load_config, read_tmk
from firmware.journal import JOURNAL_NAME
from firmware.vault import Vault

__all__ = ["Result", "run_checks", "main", "CHECKS", "OK", "WARN", "FAIL"]

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CHECK_TIMEOUT = 10.0  # s for all checks together (at least connect_timeout + 1 s)


@dataclass(frozen=True)
class Result:
    check: str
    status: str  # OK | WARN | FAIL
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.check}: {self.detail}"


Check = Callable[[Config], tuple[str, str]]  # -> (status, detail); raising means FAIL


def _writable(directory: Path) -> tuple[str, str]:
    """OK when `directory` takes a new file, or when its nearest existing parent does."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return FAIL, f"{existing} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return FAIL, f"{existing} is not writable: {exc.strerror or exc}"
    if existing == directory:
        return OK, f"{directory} is writable"
    return OK, f"{directory} will be created (in {existing}, writable)"


def check_data_dir(cfg: Config) -> tuple[str, str]:
    return _writable(cfg.terminal.data_dir)


def check_journal(cfg: Config) -> tuple[str, str]:
    path = cfg.terminal.data_dir / JOURNAL_NAME
    if not path.exists():
        return OK, f"{path} not created yet (the first start creates it)"
    # without a -wal file, immutable: a read-only open must not leave -wal/-shm files
    # owned by whoever runs doctor beside the service's journal
    wal = path.with_name(path.name + "-wal")
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro{'' if wal.exists() else '&immutable=1'}",
                         uri=True, timeout=5.0)
    try:
        rows = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        return FAIL, f"{path}: {exc}"
    finally:
        db.close()
    if rows != ["ok"]:
        return FAIL, f"{path}: integrity check: {'; '.join(rows[:3])}"
    return OK, f"{path} integrity ok"


def check_tmk(cfg: Config) -> tuple[str, str]:
    key = read_tmk(cfg)  # ConfigError names the file, never its content
    path = cfg.security.tmk_file
    mode = stat.S_IMODE(path.stat().st_mode)
    detail = f"{path}: {len(key)}-byte key, mode {mode:04o}"
    if mode & 0o004:
        return WARN, f"{detail}: readable by every user, chmod 600 it"
    return OK, detail


def check_vault_key(cfg: Config) -> tuple[str, str]:
    path = cfg.security.vault_key_file
    if not path.exists():
        return OK, f"{path} not created yet (the first start creates it, mode 0600)"
    Vault.open(path)  # VaultError: not a regular file, readable by group/other, wrong size
    return OK, f"{path}: mode {stat.S_IMODE(path.stat().st_mode):04o}"


def check_capk(cfg: Config) -> tuple[str, str]:
    try:
        from firmware.emv.oda import load_capks
    except ImportError as exc:
        return FAIL, f"offline data authentication not available: {exc}"
    path = cfg.emv.capk_file
    capks = load_capks(path)
    if not capks:
        return WARN, f"{path}: no CA public keys (offline data authentication fails)"
    return OK, f"{path}: {len(capks)} CA public keys"


def check_card_reader(cfg: Config) -> tuple[str, str]:
    d = cfg.devices
    if d.card_reader == "sim":
        from firmware.sim.catalog import load_catalog
        catalog = load_catalog(cfg.sim.catalog if cfg.sim else None)
        return OK, f"sim: {len(catalog.cards)} test cards"
    from firmware.hal import READER_CONTACTLESS, pcsc_module
    pcsc = pcsc_module()
    name = pcsc.probe(d.reader_name)  # PcscReaderError: pcscd down, no reader matches
    atr = pcsc.card_atr(name)
    if atr is None:
        return OK, f"{name}: no card"
    contactless = READER_CONTACTLESS[d.reader_contactless]
    if contactless is None:
        contactless = pcsc.looks_contactless(name, atr)
    return OK, (f"{name}: card present, ATR {atr.hex().upper()}, "
                f"{'contactless' if contactless else 'contact'}")


def check_magstripe(cfg: Config) -> tuple[str, str]:
    d = cfg.devices
    if d.magstripe == "none":
        return OK, "none configured"
    if d.magstripe == "serial":
        import serial
        serial.serial_for_url(d.magstripe_port, baudrate=d.magstripe_baudrate, timeout=0).close()
        return OK, f"serial {d.magstripe_port} opens at {d.magstripe_baudrate} baud"
    device = Path(d.magstripe_port)
    if not d.magstripe_port or not device.exists():
        return FAIL, f"wedge input device {d.magstripe_port!r} does not exist"
    if not os.access(device, os.R_OK):
        return FAIL, f"wedge input device {device} is not readable (input group?)"
    return OK, f"wedge input device {device}"


def check_printer(cfg: Config) -> tuple[str, str]:
    if cfg.devices.printer != "sim":
        return WARN, f"backend {cfg.devices.printer!r} not available in this release"
    return _writable(cfg.terminal.data_dir / "receipts")


def check_acquirer(cfg: Config) -> tuple[str, str]:
    a = cfg.acquirer
    where = f"{a.host}:{a.port}"
    start = time.monotonic()
    try:
        socket.create_connection((a.host, a.port), timeout=a.connect_timeout).close()
    except OSError as exc:
        hint = " (kpos sim starts its own acquirer simulator on a free port)" if cfg.sim else ""
        return FAIL, f"{where}: {exc.strerror or exc}{hint}"
    took = (time.monotonic() - start) * 1000
    return OK, f"{where} accepts connections ({took:.0f} ms{', TLS not checked' if a.tls else ''})"


CHECKS: tuple[tuple[str, Check], ...] = (
    ("data_dir", check_data_dir), ("journal", check_journal), ("tmk", check_tmk),
    ("vault_key", check_vault_key), ("capk", check_capk), ("card_reader", check_card_reader),
    ("magstripe", check_magstripe), ("printer", check_printer), ("acquirer", check_acquirer),
)


def run_checks(cfg: Config, checks=CHECKS, timeout: float | None = None) -> list[Result]:
    """One Result per check, in order (see the module contract for the time bound)."""
    limit = timeout if timeout is not None else max(CHECK_TIMEOUT, cfg.acquirer.connect_timeout + 1)
    running = [(name, _start(name, check, cfg)) for name, check in checks]
    deadline = time.monotonic() + limit
    return [_collect(name, box, deadline, limit) for name, box in running]


def _start(name: str, check: Check, cfg: Config) -> queue.Queue:
    box: queue.Queue = queue.Queue(maxsize=1)
    threading.Thread(target=lambda: box.put(_outcome(check, cfg)), name=f"kpos-doctor-{name}",
                     daemon=True).start()
    return box


def _outcome(check: Check, cfg: Config) -> tuple[str, str]:
    try:
        return check(cfg)
    except Exception as exc:  # a check that fails to run is that check's FAIL, not doctor's
        return FAIL, str(exc) or type(exc).__name__


def _collect(name: str, box: queue.Queue, deadline: float, limit: float) -> Result:
    try:
        status, detail = box.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        status, detail = FAIL, f"no answer within {limit:g} s"
    return Result(name, status, detail)


def main(config: Path, *, as_json: bool = False) -> int:
    """Run every check on the config at `config`, print the report, return the exit code."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _print([Result("config", FAIL, str(exc))], as_json)
        return 2
    results = [Result("config", OK, str(cfg.path)), *run_checks(cfg)]
    _print(results, as_json)
    return 1 if any(r.status == FAIL for r in results) else 0


def _print(results: list[Result], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2, ensure_ascii=False))
    else:
        print("\n".join(r.line() for r in results))
