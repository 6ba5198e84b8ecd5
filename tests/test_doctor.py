"""`kpos doctor` against config/sim.toml with a tmp state dir: real files, a real acquirer
simulator on 127.0.0.1, real pcscd with vpcd (tests/pcscd_fixture.py), the real CLI.

Each test writes the simulator config with its overrides to tmp_path (the CLI reads a file):
the state dir, a 0600 copy of the test TMK and the acquirer port are always overridden.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from firmware.config import load_config
from firmware import doctor
from firmware.doctor import (BUS_HINT, CHECKS, FAIL, OK, RELEASE_YEAR, WARN, Result,
                             check_card_reader, check_clock, check_keypad, main, run_checks)
from firmware.flows.types import CardInserted, CardRemoved
from firmware.journal import Journal
from firmware.sim.acquirer import AcquirerSimulator
from firmware.sim.catalog import load_catalog
from firmware.vault import Vault
from conftest import REPO, SIM_TOML
from pcscd_fixture import READER, pcscd, vpcd_lock  # noqa: F401  (fixtures)
from test_printer_escpos import NetPrinter
from test_printer_usb import NOT_FOUND, UsbPrinter

EVENT_TIMEOUT = 5.0  # s

SIM_HINT = " (kpos sim starts its own acquirer simulator on a free port)"
NAMES = ["data_dir", "journal", "tmk", "vault_key", "capk", "card_reader", "magstripe", "printer",
         "display", "keypad", "buzzer_leds", "scanner", "disk", "clock", "acquirer"]
PRINTER_TIMEOUT = 0.5  # s the doctor waits for the fake printer's status answers


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, port: int, **sections: dict) -> Path:
    """config/sim.toml with the test's state dir, TMK copy, acquirer port and `sections`."""
    tmk = tmp_path / "tmk.key"
    if not tmk.exists():
        tmk.write_bytes((REPO / "config" / "sim-tmk.key").read_bytes())
        tmk.chmod(0o600)
    raw = tomllib.loads(SIM_TOML.read_text(encoding="utf-8"))
    base = {"terminal": {"data_dir": str(tmp_path / "data")}, "acquirer": {"port": port},
            "security": {"tmk_file": str(tmk)},
            "emv": {"capk_file": str(REPO / "config" / "capk.toml")},
            "sim": {"ledger": str(tmp_path / "acquirer.db")}}
    for overrides in (base, sections):
        for name, values in overrides.items():
            raw[name].update(values)
    path = tmp_path / "terminal.toml"
    path.write_text("".join(f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                                     for key, value in table.items())
                            for name, table in raw.items()), encoding="utf-8")
    return path


def config(tmp_path: Path, port: int = 0, **sections: dict):
    return load_config(write_config(tmp_path, port or free_port(), **sections))


def by_check(results: list[Result]) -> dict[str, Result]:
    return {r.check: r for r in results}


def start_journal(cfg) -> None:
    """A real journal and vault key, as the terminal's first start leaves them."""
    data_dir = cfg.terminal.data_dir
    data_dir.mkdir(parents=True)
    Journal(data_dir / "journal.db", Vault.open(cfg.security.vault_key_file)).close()


def kpos_doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware", "doctor", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env)


# ---- in process ---------------------------------------------------------------------------


def test_all_ok_with_the_acquirer_simulator_listening(tmp_path):
    async def go():
        acquirer = AcquirerSimulator(load_catalog(), tmp_path / "acquirer.db")
        port = await acquirer.start("127.0.0.1", 0)
        try:
            cfg = config(tmp_path, port)
            start_journal(cfg)
            return await asyncio.to_thread(run_checks, cfg)
        finally:
            await acquirer.stop()

    results = asyncio.run(go())
    assert [r.check for r in results] == NAMES
    assert [r for r in results if r.status != OK] == []
    checks = by_check(results)
    assert checks["journal"].detail.endswith("journal.db integrity ok")
    assert checks["vault_key"].detail.endswith("mode 0600")
    assert checks["tmk"].detail.endswith("16-byte key, mode 0600")
    assert checks["card_reader"].detail.startswith("sim: ")
    assert checks["acquirer"].detail.startswith("127.0.0.1:")


def test_acquirer_down_is_a_fail(tmp_path):
    port = free_port()
    acquirer = by_check(run_checks(config(tmp_path, port)))["acquirer"]
    assert (acquirer.status, acquirer.detail) == (FAIL, f"127.0.0.1:{port}: Connection refused" + SIM_HINT)


def test_corrupt_journal_is_a_fail_and_left_as_it_was(tmp_path):
    cfg = config(tmp_path)
    start_journal(cfg)
    path = cfg.terminal.data_dir / "journal.db"
    with open(path, "r+b") as f:
        f.seek(4096)  # pages 2-4: the schema's tables
        f.write(b"\xa5" * 3 * 4096)
    before = path.read_bytes()
    journal = by_check(run_checks(cfg))["journal"]
    assert (journal.status, journal.detail) == (FAIL, f"{path}: database disk image is malformed")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["journal.db", "keys"]  # no -wal/-shm


def test_fresh_state_dir_is_ok_and_doctor_creates_nothing(tmp_path):
    cfg = config(tmp_path)
    checks = by_check(run_checks(cfg))
    assert checks["data_dir"].status == OK and "will be created" in checks["data_dir"].detail
    assert checks["journal"].detail.endswith("not created yet (the first start creates it)")
    assert checks["vault_key"].status == OK and "not created yet" in checks["vault_key"].detail
    assert checks["printer"].status == OK and "will be created" in checks["printer"].detail
    assert not cfg.terminal.data_dir.exists()


def test_a_loaded_tmk_wins_and_a_missing_one_is_a_fault(tmp_path):
    from firmware.keyload import store_tmk
    from firmware.config import read_tmk

    def check(cfg, name):
        return by_check(run_checks(cfg))[name]

    cfg = config(tmp_path, security={"tmk_file": ""})
    tmk = check(cfg, "tmk")
    assert tmk.status == FAIL and "kpos keys load" in tmk.detail
    key = read_tmk(config(tmp_path))  # the simulator's TEST key, as a key block would carry it
    info = store_tmk(cfg, key, "T", now=datetime(2026, 11, 22, 9, 30))
    tmk = check(cfg, "tmk")
    assert tmk.status == OK and f"KCV {info.kcv}" in tmk.detail and key.hex() not in tmk.detail.lower()
    sealed = next((cfg.terminal.data_dir / "keys").glob("tmk*"))
    sealed.write_bytes(sealed.read_bytes()[:-1] + b"\0")  # one byte of the seal changed
    tmk = check(cfg, "tmk")
    assert tmk.status == FAIL and "kpos keys load" in tmk.detail


def test_world_readable_tmk_is_a_warning_and_the_key_is_never_shown(tmp_path):
    cfg = config(tmp_path)
    cfg.security.tmk_file.chmod(0o644)
    results = run_checks(cfg)
    tmk = by_check(results)["tmk"]
    assert tmk.status == WARN
    assert tmk.line() == (f"WARN tmk: {cfg.security.tmk_file}: 16-byte key, mode 0644: "
                          "readable by every user, chmod 600 it")
    key_hex = load_catalog().terminal_keys[cfg.terminal.terminal_id].hex()
    assert all(key_hex not in r.detail.lower() for r in results)


@pytest.mark.parametrize("sections,check,status,detail", [
    ({"devices": {"magstripe": "serial", "magstripe_port": "loop://"}},
     "magstripe", OK, "serial loop:// opens at 9600 baud"),
    ({"devices": {"magstripe": "serial", "magstripe_port": "/dev/kpos-no-such-tty"}},
     "magstripe", FAIL, "could not open port /dev/kpos-no-such-tty"),
    ({"devices": {"magstripe": "wedge", "magstripe_port": "/dev/input/kpos-no-such-event"}},
     "magstripe", FAIL, "wedge input device '/dev/input/kpos-no-such-event' does not exist"),
    ({"emv": {"capk_file": "/nonexistent/capk.toml"}}, "capk", FAIL, "/nonexistent/capk.toml"),
    ({"security": {"tmk_file": "/nonexistent/tmk.key"}}, "tmk", FAIL, "cannot read"),
])
def test_one_check(tmp_path, sections, check, status, detail):
    result = by_check(run_checks(config(tmp_path, **sections)))[check]
    assert result.status == status and detail in result.detail, result


def test_vault_key_readable_by_others_is_a_fail(tmp_path):
    cfg = config(tmp_path)
    start_journal(cfg)
    cfg.security.vault_key_file.chmod(0o644)
    vault = by_check(run_checks(cfg))["vault_key"]
    assert vault.status == FAIL and "mode 0644 is readable by group/other" in vault.detail


def test_bad_tmk_content_is_a_fail_that_does_not_echo_it(tmp_path):
    cfg = config(tmp_path)
    cfg.security.tmk_file.write_text("not-a-key-SECRETISH\n")
    tmk = by_check(run_checks(cfg))["tmk"]
    assert tmk.status == FAIL and "not hex digits" in tmk.detail
    assert "SECRETISH" not in tmk.detail


def test_a_hanging_check_does_not_hang_doctor(tmp_path):
    release = threading.Event()
    checks = (("hangs", lambda cfg: (release.wait(), (OK, "late"))[1]),
              ("quick", lambda cfg: (OK, "fine")),
              ("raises", lambda cfg: 1 / 0))
    start = time.monotonic()
    try:
        results = run_checks(config(tmp_path), checks=checks, timeout=0.3)
    finally:
        release.set()
    assert time.monotonic() - start < 2.0
    assert results == [Result("hangs", FAIL, "no answer within 0.3 s"),
                       Result("quick", OK, "fine"), Result("raises", FAIL, "division by zero")]


# ---- PC/SC: pcscd with vpcd ---------------------------------------------------------------


@pytest.fixture
def pcsc_cfg(tmp_path):
    return config(tmp_path, devices={"card_reader": "pcsc", "reader_name": READER})


@pytest.fixture
def card_slot(vpcd_lock):
    """A SimPcscSlot and a queue that gets the vpcd reader's CardInserted/CardRemoved."""
    from firmware.hal.reader_pcsc import PcscCardReader
    from firmware.sim.vpicc import SimPcscSlot
    events: queue.Queue = queue.Queue()
    reader = PcscCardReader(READER)
    reader.attach(events.put)
    assert reader.wait_for(lambda r: r.fault == "" and not r.present(), EVENT_TIMEOUT), reader.status()
    slot = SimPcscSlot(load_catalog(), port=vpcd_lock.vpcd_port)
    yield slot, events
    slot.close()
    reader.close()


def wait_for(events: queue.Queue, kind: type) -> None:
    """Until the reader posts a `kind` event (ReaderStatus events pass by)."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not isinstance(events.get(timeout=max(0.0, deadline - time.monotonic())), kind):
        pass


def test_pcsc_reader_with_card_reports_atr(pcsc_cfg, card_slot, vpcd_lock):
    from firmware.sim.card_emulator import ATR_CONTACT, ATR_CONTACTLESS
    slot, events = card_slot
    assert check_card_reader(pcsc_cfg) == (OK, f"{vpcd_lock.reader}: no card")
    slot.insert("approve")
    wait_for(events, CardInserted)
    assert check_card_reader(pcsc_cfg) == (
        OK, f"{vpcd_lock.reader}: card present, ATR {ATR_CONTACT.hex().upper()}, contact")
    slot.remove()
    wait_for(events, CardRemoved)
    slot.tap("visa")
    wait_for(events, CardInserted)
    assert check_card_reader(pcsc_cfg) == (
        OK, f"{vpcd_lock.reader}: card present, ATR {ATR_CONTACTLESS.hex().upper()}, contactless")


def test_pcsc_reader_pattern_matching_nothing_is_a_fail(tmp_path, vpcd_lock):
    cfg = config(tmp_path, devices={"card_reader": "pcsc", "reader_name": "Omnikey"})
    reader = by_check(run_checks(cfg))["card_reader"]
    assert reader.status == FAIL
    assert reader.detail.startswith(f"no reader matches 'Omnikey' (readers: {vpcd_lock.reader}")


def test_pcscd_stopped_is_a_fail_through_the_cli(tmp_path):
    path = write_config(tmp_path, free_port(), devices={"card_reader": "pcsc"})
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}  # pcscd gone
    done = kpos_doctor("--config", str(path), env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "\nFAIL card_reader: pcscd not running (" in done.stdout


# ---- the real CLI -------------------------------------------------------------------------


def test_cli_exit_0_when_nothing_fails(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as acquirer:  # connects complete in the backlog
        path = write_config(tmp_path, acquirer.getsockname()[1])
        done = kpos_doctor("--config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"OK   config: {path}"
    assert len(lines) == 1 + len(NAMES) and all(line.startswith("OK   ") for line in lines), lines


def test_cli_exit_1_and_json_when_the_acquirer_is_down(tmp_path):
    port = free_port()
    done = kpos_doctor("--config", str(write_config(tmp_path, port)), "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert [set(item) for item in report] == [{"check", "status", "detail"}] * (1 + len(NAMES))
    assert report[-1] == {"check": "acquirer", "status": "FAIL",
                          "detail": f"127.0.0.1:{port}: Connection refused" + SIM_HINT}
    assert {item["status"] for item in report[:-1]} == {"OK"}


def test_cli_exit_2_with_the_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SIM_TOML.read_text().replace("[acquirer]", "[acquirer]\nprot = 1", 1))
    done = kpos_doctor("--config", str(bad))
    assert done.returncode == 2
    assert done.stdout.startswith(f"FAIL config: {bad}: [acquirer] unknown key 'prot'")
    done = kpos_doctor("--config", str(bad), "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout)[0]["status"] == "FAIL"


# ---- devices, disk and clock: each fault in turn, through main() ---------------------------


def doctor_run(tmp_path, capsys, checks=CHECKS, **sections) -> tuple[int, dict[str, str]]:
    """main() on sim.toml + `sections` with a listening acquirer: (exit code, check -> line)."""
    with socket.create_server(("127.0.0.1", 0)) as acquirer:
        code = main(write_config(tmp_path, acquirer.getsockname()[1], **sections), checks=checks)
    lines = capsys.readouterr().out.splitlines()
    return code, {line[5:].split(":", 1)[0]: line for line in lines}


def replaced(name: str, check) -> tuple:
    return tuple((n, check if n == name else c) for n, c in CHECKS)


def test_healthy_simulated_terminal_is_all_ok(tmp_path, capsys):
    code, lines = doctor_run(tmp_path, capsys)
    assert code == 0 and list(lines) == ["config", *NAMES], lines
    assert all(line.startswith("OK   ") for line in lines.values()), lines
    assert lines["display"] == "OK   display: console"
    assert lines["buzzer_leds"] == "OK   buzzer_leds: none configured"
    assert lines["scanner"] == "OK   scanner: sim: the simulator console types the codes"
    assert lines["disk"].endswith(" MB free")


@pytest.fixture
def net_printer():
    server = NetPrinter()
    yield server
    server.close()


def printer_sections(port: int) -> dict:
    return {"devices": {"printer": "network"},
            "printer": {"host": "127.0.0.1", "port": port, "timeout": PRINTER_TIMEOUT}}


@pytest.mark.parametrize("state,code,line", [
    ("ok", 0, "OK   printer: network 127.0.0.1:{port}: ready"),
    ("paper out", 1, "FAIL printer: network 127.0.0.1:{port}: paper out: load paper"),
    ("cover open", 1, "FAIL printer: network 127.0.0.1:{port}: cover open: close the cover"),
    ("offline", 1, "FAIL printer: network 127.0.0.1:{port}: offline: check cable/power/IP"),
])
def test_network_printer_status(tmp_path, capsys, net_printer, state, code, line):
    net_printer.fake.state = state
    got, lines = doctor_run(tmp_path, capsys, **printer_sections(net_printer.port))
    assert (got, lines["printer"]) == (code, line.format(port=net_printer.port))
    assert net_printer.fake.data == b""  # asked, never printed on


def test_network_printer_not_listening_is_offline(tmp_path, capsys):
    port = free_port()
    code, lines = doctor_run(tmp_path, capsys, **printer_sections(port))
    assert code == 1
    assert lines["printer"] == f"FAIL printer: network 127.0.0.1:{port}: offline: check cable/power/IP"


def test_file_printer_missing_is_a_fail_and_not_created(tmp_path, capsys):
    device = tmp_path / "lp0"
    code, lines = doctor_run(tmp_path, capsys, devices={"printer": "file"},
                             printer={"file": str(device)})
    assert code == 1 and not device.exists()
    assert lines["printer"] == (f"FAIL printer: file {device}: does not exist: "
                                "check cable/power and [printer] file")


@pytest.mark.parametrize("plugged,code,line", [
    (True, 0, "OK   printer: usb 0416:5011: ready"),
    (False, 1, f"FAIL printer: {NOT_FOUND}"),
])
def test_usb_printer(tmp_path, capsys, monkeypatch, plugged, code, line):
    import usb.backend.libusb1

    device = UsbPrinter()  # found by pyusb as its libusb1 backend
    device.plugged = plugged
    monkeypatch.setattr(usb.backend.libusb1, "get_backend", lambda *args, **kwargs: device)
    got, lines = doctor_run(tmp_path, capsys, devices={"printer": "usb"},
                            printer={"usb_vendor": "0x0416", "usb_product": "0x5011",
                                     "timeout": PRINTER_TIMEOUT})
    assert (got, lines["printer"]) == (code, line)
    assert device.fake.data == b""  # asked, never printed on


@pytest.mark.parametrize("display,missing", [
    ("hd44780", "display 'hd44780' at I2C 10:0x27: [Errno 2] No such file or directory: "
                "'/dev/i2c-10'"),
    ("luma", "display 'luma' ssd1306: I2C device not found: /dev/i2c-10"),
])
def test_display_whose_bus_is_missing(tmp_path, capsys, display, missing):
    assert not Path("/dev/i2c-10").exists()
    code, lines = doctor_run(tmp_path, capsys,
                             devices={"display": display, "display_kind": "ssd1306",
                                      "display_port": 10})
    assert (code, lines["display"]) == (1, f"FAIL display: {missing}: {BUS_HINT}")


GPIO_KEYPAD = {"keypad": "gpio", "pin_factory": "mock"}


def test_gpio_keypad_and_feedback_pins_on_the_mock_factory(tmp_path, capsys):
    code, lines = doctor_run(tmp_path, capsys, devices={**GPIO_KEYPAD, "buzzer_pin": 12,
                                                        "led_green": 17, "led_red": 27})
    assert code == 0, lines
    assert lines["keypad"] == "OK   keypad: mock: GPIO 5, 6, 13, 19, 26, 16, 20, 21 free"
    assert lines["buzzer_leds"] == "OK   buzzer_leds: mock: GPIO 12, 17, 27 free"


def test_gpio_keypad_with_an_unknown_pin_factory(tmp_path, capsys):
    def keypad(cfg):
        devices = dataclasses.replace(cfg.devices, pin_factory="nope")
        return check_keypad(dataclasses.replace(cfg, devices=devices))

    code, lines = doctor_run(tmp_path, capsys, replaced("keypad", keypad), devices=GPIO_KEYPAD)
    assert code == 1
    assert lines["keypad"] == ("FAIL keypad: [devices] pin_factory 'nope': not one of "
                               "['lgpio', 'mock', 'rpigpio']: fix [devices] pin_factory (lgpio on a Pi 5)")


def test_pin_wired_to_keypad_and_buzzer(tmp_path, capsys):
    code, lines = doctor_run(tmp_path, capsys, devices={**GPIO_KEYPAD, "buzzer_pin": 26})
    assert code == 1
    assert lines["keypad"] == ("FAIL keypad: GPIO26 is both buzzer and keypad column: "
                               "fix the pins in [devices]")


def test_evdev_keypad_path_missing(tmp_path, capsys):
    code, lines = doctor_run(tmp_path, capsys, devices={"keypad": "evdev",
                                                        "keypad_device": "/dev/input/kpos-nope"})
    assert code == 1
    assert lines["keypad"] == ("FAIL keypad: keypad input device '/dev/input/kpos-nope' does not "
                               "exist: plug it in or fix [devices] (ls /dev/input/by-id)")


def test_evdev_keypad_present_needs_the_evdev_package(tmp_path, capsys):
    device = tmp_path / "event7"
    device.write_bytes(b"")
    code, lines = doctor_run(tmp_path, capsys, devices={"keypad": "evdev",
                                                        "keypad_device": str(device)})
    if importlib.util.find_spec("evdev") is None:
        assert (code, lines["keypad"]) == (1, "FAIL keypad: keypad backend \"evdev\" needs the "
                                               "Python package evdev (pip install evdev)")
    else:
        assert (code, lines["keypad"]) == (0, f"OK   keypad: keypad input device {device}")


@pytest.mark.parametrize("port,code,line", [
    ("loop://", 0, "OK   scanner: serial loop:// opens at 9600 baud"),
    ("/dev/kpos-no-such-scanner", 1,
     "FAIL scanner: [Errno 2] could not open port /dev/kpos-no-such-scanner: [Errno 2] No such "
     "file or directory: '/dev/kpos-no-such-scanner': plug in the scanner or fix its port in "
     "[devices] (ls /dev/serial/by-id; the kpos user in group dialout)"),
])
def test_serial_scanner_port(tmp_path, capsys, port, code, line):
    got, lines = doctor_run(tmp_path, capsys, devices={"scanner": "serial", "scanner_port": port})
    assert (got, lines["scanner"]) == (code, line)


@pytest.mark.parametrize("free_mb,code,status", [(150, 0, "OK  "), (50, 0, "WARN"), (5, 1, "FAIL")])
def test_low_disk(tmp_path, capsys, monkeypatch, free_mb, code, status):
    usage = doctor.shutil.disk_usage
    monkeypatch.setattr(doctor.shutil, "disk_usage",
                        lambda path: usage(path)._replace(free=free_mb * 2**20))
    got, lines = doctor_run(tmp_path, capsys)
    assert got == code and lines["disk"].startswith(f"{status} disk: {tmp_path}: {free_mb} MB free")
    hint = ": free space (kpos backup to a USB stick, then delete old backups and logs)"
    assert lines["disk"].endswith(hint) == (status != "OK  ")


def test_clock_before_the_release_year_is_a_warning(tmp_path, capsys):
    def clock(cfg):
        return check_clock(cfg, now=lambda: datetime(2020, 1, 1, 0, 0, 5))

    code, lines = doctor_run(tmp_path, capsys, replaced("clock", clock))
    assert code == 0  # a warning is not a failure
    assert lines["clock"] == (f"WARN clock: 2020-01-01 00:00:05 is before {RELEASE_YEAR}: the clock "
                              "is not set (no RTC, no NTP yet): check the network and timedatectl")
    assert check_clock(None, now=lambda: datetime(RELEASE_YEAR, 1, 1)) == (OK, f"{RELEASE_YEAR}-01-01 00:00:00")
