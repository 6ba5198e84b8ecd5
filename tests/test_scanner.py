"""QR / barcode scanner: the line decoder (payment codes and product barcodes), the serial
scanner over a pty and pyserial's loop://, the keyboard-wedge scanner on stand-in evdev
input devices, the fault when unplugged, and the config choice.
Waits are bounded queue reads, never sleeps."""
from __future__ import annotations

import logging
import os
import queue
import sys
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.flows.types import BarcodeScanned, CodeScanned
from firmware.hal import DeviceError
from firmware.hal.scanner import OFFLINE, CodeDecoder, EvdevScanner, SerialScanner, build_scanner
from tests import test_keypad
from tests.test_keypad import taps, typing

WECHAT = "134567890123456780"
ALIPAY = "2812345678901234"
UNIONPAY = "6212345678901234560"
CODES = (WECHAT, ALIPAY, UNIONPAY)
EAN13, UPC_A, EAN8 = "4006381333931", "036000291452", "73513537"
WAIT = 3.0  # seconds to wait for an event that must come
input_devices = test_keypad.input_devices  # the fixture: stand-ins for evdev.InputDevice


@pytest.fixture(autouse=True)
def no_code_in_logs(caplog):
    caplog.set_level(logging.DEBUG)
    yield
    assert not [code for code in CODES if code in caplog.text]


# ---- the decoder ----

def test_good_codes_end_with_cr_lf_or_tab():
    decoder = CodeDecoder()
    assert decoder.feed(f"{WECHAT}\r{ALIPAY}\n{UNIONPAY}\t".encode()) == [
        CodeScanned(WECHAT), CodeScanned(ALIPAY), CodeScanned(UNIONPAY)]
    assert decoder.feed(f"{WECHAT}\r\n".encode()) == [CodeScanned(WECHAT)]


def test_a_code_may_come_in_pieces():
    decoder = CodeDecoder()
    assert decoder.feed(WECHAT[:5].encode()) == []
    assert decoder.pending == 5
    assert decoder.feed(WECHAT[5:].encode()) == []
    assert decoder.feed(b"\r") == [CodeScanned(WECHAT)]
    assert decoder.pending == 0


@pytest.mark.parametrize("aim, line, codes", [
    (True, f"]Q1{WECHAT}", [WECHAT]),
    (True, f"]C0{ALIPAY}", [ALIPAY]),
    (True, WECHAT, [WECHAT]),  # no identifier
    ("]Q1", f"]Q1{WECHAT}", [WECHAT]),
    ("]Q1", f"]C0{WECHAT}", []),  # only that identifier is taken off
    ("", f"]Q1{WECHAT}", []),  # none is
])
def test_aim_symbology_identifier(aim, line, codes):
    assert CodeDecoder(aim).feed(line.encode() + b"\r") == [CodeScanned(c) for c in codes]


@pytest.mark.parametrize("line, scan", [
    (EAN13, BarcodeScanned(EAN13)),
    (UPC_A, BarcodeScanned(UPC_A)),
    (EAN8, BarcodeScanned(EAN8)),
    ("]E0" + EAN13, BarcodeScanned(EAN13)),
    ("4006381333932", BarcodeScanned("4006381333932")),  # a bad check digit: the flow says so
    ("123456789", None), ("12345678901", None), ("12345678901234", None),  # 9, 11, 14 digits
    ("400638133393X", None),
])
def test_barcodes_of_8_12_13_digits_are_barcode_scans(line, scan, caplog):
    decoder = CodeDecoder()
    assert decoder.feed(line.encode() + b"\r" + WECHAT.encode() + b"\n") == [
        *([scan] if scan else []), CodeScanned(WECHAT)]
    assert (EAN13 not in caplog.text) and ("dropped" in caplog.text) == (scan is None)


@pytest.mark.parametrize("garbage", [
    b"hello world", b"\x00\x13\xff\xfe" + WECHAT.encode(), b"1" * 15, b"1" * 25,
    b"9" * 300, b"]Q1", WECHAT.encode() + b"x", b"1234 5678 9012 3456",
    "١٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٠".encode(),
])
def test_garbage_is_dropped_and_logged_without_content(garbage, caplog):
    decoder = CodeDecoder()
    assert decoder.feed(garbage + b"\n" + WECHAT.encode() + b"\n") == [CodeScanned(WECHAT)]
    assert "dropped" in caplog.text


@given(st.binary(max_size=200))
def test_decoder_only_ever_yields_codes_of_16_to_24_and_barcodes_of_8_12_13_digits(data):
    for scan in CodeDecoder().feed(data + b"\n"):
        assert scan.code.isascii() and scan.code.isdigit()
        if isinstance(scan, CodeScanned):
            assert 16 <= len(scan.code) <= 24
        else:
            assert isinstance(scan, BarcodeScanned) and len(scan.code) in (8, 12, 13)


# ---- the serial scanner ----

@pytest.fixture
def pty():
    """(master fd, slave path) of a pseudo-terminal: the test writes what a scanner sends."""
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass  # closed by the test to unplug the scanner


def start(scanner: SerialScanner) -> tuple[queue.Queue, queue.Queue]:
    events, faults = queue.Queue(), queue.Queue()
    scanner._on_fault = faults.put
    scanner.attach(events.put, lambda: None)
    return events, faults


def test_pty_scanner_posts_good_codes_only(pty, caplog):
    master, slave = pty
    scanner = SerialScanner(slave, 9600)
    events, faults = start(scanner)
    try:
        assert faults.get(timeout=WAIT) == ""
        os.write(master, f"]Q1{WECHAT}\r".encode())
        assert events.get(timeout=WAIT) == CodeScanned(WECHAT)
        os.write(master, b"\x00\xffnoise\n" + b"7" * 80 + b"\r" + b"12345\r")
        os.write(master, f"{ALIPAY}\t]E0{EAN13}\r".encode())
        assert events.get(timeout=WAIT) == CodeScanned(ALIPAY)  # nothing came before it
        assert events.get(timeout=WAIT) == BarcodeScanned(EAN13)
        os.write(master, UNIONPAY[:8].encode())  # a partial line, then the port closes
    finally:
        scanner.close()
    assert not scanner._thread.is_alive()
    assert events.empty()  # the partial line never reaches the flow
    assert "134567********6780" in caplog.text  # good codes are logged masked


def test_scanner_unplugged_is_a_fault_and_comes_back(pty, tmp_path, caplog):
    master, slave = pty
    link = tmp_path / "ttyQR"
    scanner = SerialScanner(str(link), 9600)
    events, faults = start(scanner)
    try:
        assert faults.get(timeout=WAIT) == OFFLINE
        assert scanner.fault == OFFLINE
        assert any(r.levelno == logging.WARNING and str(link) in r.getMessage()
                   for r in caplog.records)
        link.symlink_to(slave)  # plugged in
        assert faults.get(timeout=WAIT) == ""
        os.write(master, f"{WECHAT}\n".encode())
        assert events.get(timeout=WAIT) == CodeScanned(WECHAT)
        os.close(master)  # unplugged
        assert faults.get(timeout=WAIT) == OFFLINE
    finally:
        scanner.close()
    assert not scanner._thread.is_alive()


class LoopScanner(SerialScanner):
    """A loop:// scanner whose open port the test can write into (loopback)."""

    opened: queue.Queue

    def _open(self):
        port = super()._open()
        self.opened.put(port)
        return port


def test_loop_url_scanner():
    scanner = LoopScanner("loop://", 115200)
    scanner.opened = queue.Queue()
    events, faults = start(scanner)
    try:
        assert faults.get(timeout=WAIT) == ""
        port = scanner.opened.get(timeout=WAIT)
        port.write(f"garbage\r{UNIONPAY}\r\n]Q1{ALIPAY}\r".encode())
        assert [events.get(timeout=WAIT) for _ in range(2)] == [CodeScanned(UNIONPAY),
                                                                CodeScanned(ALIPAY)]
    finally:
        scanner.close()
    assert events.empty()


def test_bad_url_is_a_config_error_and_close_before_attach():
    SerialScanner("loop://", 9600).close()
    with pytest.raises(DeviceError, match="scanner_port 'bogus://x'"):
        SerialScanner("bogus://x", 9600)


def test_build_scanner(sim_config):
    devices = sim_config.devices
    assert build_scanner(replace(devices, scanner="none")) is None
    assert build_scanner(replace(devices, scanner="sim")) is None
    scanner = build_scanner(replace(devices, scanner="serial", scanner_port="loop://",
                                    scanner_baudrate=19200))
    assert isinstance(scanner, SerialScanner)
    assert (scanner.device, scanner.baudrate, scanner.fault) == ("loop://", 19200, "scanner starting")
    wedge = build_scanner(replace(devices, scanner="wedge", scanner_port=GM65))
    assert isinstance(wedge, EvdevScanner)
    assert (wedge.device, wedge.fault) == (GM65, "scanner starting")
    with pytest.raises(DeviceError, match="scanner_port"):
        build_scanner(replace(devices, scanner="wedge", scanner_port=""))


# ---- the keyboard-wedge scanner ----

GM65 = "/dev/input/by-id/usb-GM65_Barcode_Scanner-event-kbd"


def test_wedge_scanner_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "evdev", None)  # import evdev: ImportError
    with pytest.raises(DeviceError, match=r'scanner backend "wedge" .*pip install evdev'):
        EvdevScanner(GM65)


def test_wedge_scanner_posts_good_codes_only(input_devices, no_card_data_in_logs, caplog):
    device = input_devices.plug(GM65)
    scanner = EvdevScanner(GM65)
    events, faults = start(scanner)
    try:
        assert faults.get(timeout=WAIT) == ""
        assert device.grabbed
        device.send(typing(f"]Q1{WECHAT}\n"))  # shift for Q
        assert events.get(timeout=WAIT) == CodeScanned(WECHAT)
        device.send(typing("Hello world\n" + "7" * 80 + "\n12345\n]q1!" + ALIPAY[1:] + "\n"))
        device.send(typing(f"{ALIPAY}\t]E0{EAN13}") + taps("KEY_KPENTER"))
        assert events.get(timeout=WAIT) == CodeScanned(ALIPAY)  # nothing came before it
        assert events.get(timeout=WAIT) == BarcodeScanned(EAN13)
        device.send(taps(*(f"KEY_KP{d}" for d in UNIONPAY), "KEY_ENTER"))
        assert events.get(timeout=WAIT) == CodeScanned(UNIONPAY)  # keypad digits
        device.send(typing(UNIONPAY[:8]))  # a partial line, then the scanner closes
    finally:
        scanner.close()
    assert not scanner._thread.is_alive() and device.closed
    assert events.empty()  # the partial line never reaches the flow
    assert "partial 8-byte line dropped" in caplog.text
    assert "134567********6780" in caplog.text  # good codes are logged masked


def test_wedge_scanner_unplugged_is_a_fault_and_comes_back(input_devices, caplog):
    scanner = EvdevScanner(GM65)
    events, faults = start(scanner)
    try:
        assert faults.get(timeout=WAIT) == OFFLINE  # not plugged in yet
        assert any(r.levelno == logging.WARNING and GM65 in r.getMessage()
                   for r in caplog.records)
        device = input_devices.plug(GM65)
        assert faults.get(timeout=WAIT) == ""
        device.send(typing(UNIONPAY[:9]))
        device.unplug()  # mid-code: the partial code is dropped
        assert faults.get(timeout=WAIT) == OFFLINE
        assert scanner.fault == OFFLINE and device.closed
        again = input_devices.plug(GM65)
        assert faults.get(timeout=WAIT) == ""
        again.send(typing(UNIONPAY[9:] + "\n" + WECHAT + "\n"))  # 10 digits: no code
        assert events.get(timeout=WAIT) == CodeScanned(WECHAT)
    finally:
        scanner.close()
    assert not scanner._thread.is_alive()
    assert events.empty()
