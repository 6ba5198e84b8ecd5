"""`kpos doctor`: checks a terminal's config, state files, devices and acquirer link.

Contract: `run_checks(cfg)` blocks the calling thread (the CLI's main thread) for at most
CHECK_TIMEOUT s, or the acquirer's connect_timeout + 1 s when that is longer. All checks run
at once, each on its own daemon thread; one that has not answered by then is reported FAIL
"no answer within N s" and left behind, and one that raises is FAIL with the error text.
Checks only look: the journal is opened read-only and never created, a directory is proven
writable by a temporary file deleted at once, the acquirer gets a TCP connect and no message,
a serial port is opened and closed, GPIO pins are claimed and freed at once, a printer is
asked its real-time status (DLE EOT; a "file" printer's device must already exist). The
one exception: a luma or HD44780 display is built (initialised, so its screen clears) and
closed, which is how a missing bus or panel shows. Every WARN and FAIL of a device, the
disk and the clock ends with a hint: what the operator does about it ("paper out: load
paper"). Details never hold key material or card data (an ATR is not card data). `main(path, as_json=, checks=)` prints one line per check ("OK   name: detail",
"WARN ...", "FAIL ...") or a JSON list of {check, status, detail}, and returns the exit
code: 0 no FAIL, 1 a FAIL, 2 the config does not load.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import sqlite3
import stat
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from firmware.config import Config, ConfigError, load_config, read_tmk
from firmware.hal import DeviceError
from firmware.hal.printer import COVER_OPEN, OFFLINE, PAPER_OUT, STATUS_OK
from firmware.journal import JOURNAL_NAME
from firmware.vault import Vault

__all__ = ["Result", "run_checks", "main", "CHECKS", "OK", "WARN", "FAIL", "RELEASE_YEAR"]

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CHECK_TIMEOUT = 10.0  # s for all checks together (at least connect_timeout + 1 s)
DISK_WARN, DISK_FAIL = 100 * 2**20, 10 * 2**20  # bytes free under data_dir
RELEASE_YEAR = 2026  # a clock before it has never been set (a Pi has no RTC; NTP not yet)
BUS_HINT = "enable SPI/I2C in /boot/firmware/config.txt (boot/config.txt.fragment)"
PRINTER_HINTS = {PAPER_OUT: "load paper", COVER_OPEN: "close the cover",
                 OFFLINE: "check cable/power/IP"}


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
    from firmware.keyload import KeyLoadError, open_stored_tmk, stored_tmk
    try:
        info = stored_tmk(cfg)
        if info is not None:  # loaded with `kpos keys load`: it wins over [security] tmk_file
            open_stored_tmk(cfg)  # unseals and checks its KCV
            return OK, f"loaded {info.loaded_at}: {info.length}-byte {info.algorithm} key, KCV {info.kcv}"
    except KeyLoadError as exc:
        return FAIL, f"{exc.reason} (load it again with `kpos keys load`)"
    path = cfg.security.tmk_file
    if path is None:
        return FAIL, "no terminal master key: load one with `kpos keys load` (docs/security.md)"
    key = read_tmk(cfg)  # ConfigError names the file, never its content
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


def _hinted(detail: str, hint: str) -> str:
    """`detail: hint`, unless the detail already says what to install."""
    return detail if "pip install" in detail else f"{detail}: {hint}"


def _serial_opens(port: str, baudrate: int, what: str) -> tuple[str, str]:
    import serial
    try:
        serial.serial_for_url(port, baudrate=baudrate, timeout=0).close()
    except (OSError, serial.SerialException) as exc:
        return FAIL, _hinted(str(exc), f"plug in the {what} or fix its port in [devices] "
                                       "(ls /dev/serial/by-id; the kpos user in group dialout)")
    return OK, f"serial {port} opens at {baudrate} baud"


def _input_device(path: str, what: str) -> tuple[str, str]:
    """An evdev input device node: it exists and this user may read it."""
    device = Path(path)
    if not path or not device.exists():
        return FAIL, (f"{what} input device {path!r} does not exist: plug it in or fix "
                      "[devices] (ls /dev/input/by-id)")
    if not os.access(device, os.R_OK):
        return FAIL, f"{what} input device {device} is not readable: add the kpos user to group input"
    return OK, f"{what} input device {device}"


def _pins_free(cfg: Config, pins: dict[int, str]) -> tuple[str, str]:
    """Claim and free each BCM pin (name -> what uses it) on [devices] pin_factory."""
    from firmware.hal.keypad import pin_factory
    name = cfg.devices.pin_factory
    try:
        factory = pin_factory(name)
    except DeviceError as exc:
        return FAIL, _hinted(str(exc), "fix [devices] pin_factory (lgpio on a Pi 5)")
    try:
        for number, user in pins.items():
            try:
                factory.pin(number).close()
            except Exception as exc:  # gpiozero's PinInvalidPin, lgpio's "GPIO busy"
                return FAIL, (f"GPIO{number} ({user}): {exc}: is kpos still running, "
                              "or another program using the pin?")
    finally:
        factory.close()
    return OK, f"{name}: GPIO {', '.join(map(str, pins))} free"


def _gpio_users(pins: dict[str, tuple[int, ...]]) -> tuple[dict[int, str], str]:
    """pin -> what uses it, and the first pin wired to two things ("" when none)."""
    users: dict[int, str] = {}
    for user, numbers in pins.items():
        for number in numbers:
            if number in users:
                return users, f"GPIO{number} is both {users[number]} and {user}"
            users[number] = user
    return users, ""


def check_magstripe(cfg: Config) -> tuple[str, str]:
    d = cfg.devices
    if d.magstripe == "none":
        return OK, "none configured"
    if d.magstripe == "serial":
        return _serial_opens(d.magstripe_port, d.magstripe_baudrate, "swipe reader")
    return _input_device(d.magstripe_port, "wedge")


def check_printer(cfg: Config) -> tuple[str, str]:
    backend = cfg.devices.printer
    if backend == "sim":
        return _writable(cfg.terminal.data_dir / "receipts")
    if backend == "file" and not cfg.printer.file.exists():  # opening would create a file
        return FAIL, f"file {cfg.printer.file}: does not exist: check cable/power and [printer] file"
    from firmware.hal.printer_escpos import build_escpos
    printer = build_escpos(cfg.printer, backend, timeout=cfg.printer.timeout)
    try:
        reason = printer.status()
    finally:
        printer.close()
    if printer.hint:  # names the device: "USB printer 0416:5011 not found: check the cable ..."
        return FAIL, printer.hint
    if reason != STATUS_OK:
        return FAIL, f"{printer.device}: {reason}: {PRINTER_HINTS.get(reason, 'see the log')}"
    return OK, f"{printer.device}: ready" if printer.query else f"{printer.device}: opens"


def check_display(cfg: Config) -> tuple[str, str]:
    if cfg.devices.display == "console":
        return OK, "console"
    from firmware.hal import build_display
    try:
        display = build_display(cfg.devices, cfg.terminal.language)
    except DeviceError as exc:
        return FAIL, _hinted(str(exc), BUS_HINT)
    display.close()
    return OK, f"{cfg.devices.display} answers"


def check_keypad(cfg: Config) -> tuple[str, str]:
    d = cfg.devices
    if d.keypad == "console":
        return OK, "console"
    if d.keypad == "evdev":
        from firmware.hal.keypad import EvdevKeypad
        status, detail = _input_device(d.keypad_device, "keypad")
        if status == OK:
            EvdevKeypad(d.keypad_device)  # DeviceError without the evdev package; opens nothing
        return status, detail
    users, clash = _gpio_users(_feedback_pins(d) | {"keypad row": d.keypad_rows,
                                                    "keypad column": d.keypad_cols})
    if clash:
        return FAIL, f"{clash}: fix the pins in [devices]"
    return _pins_free(cfg, {n: u for n, u in users.items() if u.startswith("keypad")})


def _feedback_pins(d) -> dict[str, tuple[int, ...]]:
    return {user: (pin,) for user, pin in (("buzzer", d.buzzer_pin), ("green LED", d.led_green),
                                           ("red LED", d.led_red)) if pin}


def check_feedback(cfg: Config) -> tuple[str, str]:
    """The buzzer and LED pins (the keypad check reports pins they share with the keypad)."""
    users, clash = _gpio_users(_feedback_pins(cfg.devices))
    if clash:
        return FAIL, f"{clash}: fix the pins in [devices]"
    if not users:
        return OK, "none configured"
    return _pins_free(cfg, users)


def check_scanner(cfg: Config) -> tuple[str, str]:
    d = cfg.devices
    if d.scanner == "none":
        return OK, "none configured"
    if d.scanner == "sim":
        return OK, "sim: the simulator console types the codes"
    if d.scanner == "wedge":
        return _input_device(d.scanner_port, "scanner")
    return _serial_opens(d.scanner_port, d.scanner_baudrate, "scanner")


def check_disk(cfg: Config) -> tuple[str, str]:
    where = cfg.terminal.data_dir
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    detail = f"{where}: {free // 2**20} MB free"
    hint = "free space (kpos backup to a USB stick, then delete old backups and logs)"
    if free < DISK_FAIL:
        return FAIL, f"{detail}, under {DISK_FAIL // 2**20} MB: {hint}"
    if free < DISK_WARN:
        return WARN, f"{detail}, under {DISK_WARN // 2**20} MB: {hint}"
    return OK, detail


def check_clock(cfg: Config, now: Callable[[], datetime] = datetime.now) -> tuple[str, str]:
    time_now = now()
    detail = f"{time_now:%Y-%m-%d %H:%M:%S}"
    if time_now.year < RELEASE_YEAR:
        return WARN, (f"{detail} is before {RELEASE_YEAR}: the clock is not set (no RTC, no NTP "
                      "yet): check the network and timedatectl")
    return OK, detail


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
    if a.tls:
        return _check_tls(cfg, where, took)
    return OK, f"{where} accepts connections ({took:.0f} ms)"


def _check_tls(cfg: Config, where: str, took: float) -> tuple[str, str]:
    """The link's own TLS handshake (CA, host name, pin, client certificate); the reason
    names the [acquirer] key or file to fix."""
    import asyncio
    from firmware.acquirer.tls import TlsClient, TlsError
    a = cfg.acquirer
    try:
        asyncio.run(TlsClient.from_config(a).probe(a.host, a.port, a.connect_timeout))
    except TlsError as exc:
        return FAIL, f"{where}: {exc.reason}"
    except TimeoutError:
        return FAIL, (f"{where}: acquirer TLS: no handshake in {a.connect_timeout:.1f} s "
                      "(does this port speak TLS? check [acquirer] tls and port)")
    except OSError as exc:
        return FAIL, f"{where}: {exc.strerror or exc}"
    return OK, f"{where} accepts connections ({took:.0f} ms), TLS handshake and client certificate accepted"


CHECKS: tuple[tuple[str, Check], ...] = (
    ("data_dir", check_data_dir), ("journal", check_journal), ("tmk", check_tmk),
    ("vault_key", check_vault_key), ("capk", check_capk), ("card_reader", check_card_reader),
    ("magstripe", check_magstripe), ("printer", check_printer), ("display", check_display),
    ("keypad", check_keypad), ("buzzer_leds", check_feedback), ("scanner", check_scanner),
    ("disk", check_disk), ("clock", check_clock), ("acquirer", check_acquirer),
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


def main(config: Path, *, as_json: bool = False, checks=CHECKS) -> int:
    """Run `checks` on the config at `config`, print the report, return the exit code."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _print([Result("config", FAIL, str(exc))], as_json)
        return 2
    results = [Result("config", OK, str(cfg.path)), *run_checks(cfg, checks)]
    _print(results, as_json)
    return 1 if any(r.status == FAIL for r in results) else 0


def _print(results: list[Result], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2, ensure_ascii=False))
    else:
        print("\n".join(r.line() for r in results))
