"""QR / barcode scanner on a serial port (CDC-ACM or UART, pyserial) or as a keyboard wedge
(a USB HID scanner's input event device, evdev): wallet payment codes and product barcodes.

Input-device contract, as the magstripe reader (firmware/hal/swipe.py): `attach(post,
on_quit)` (loop thread, once) starts a daemon thread "kpos-scanner" that posts one event
per good scan and nothing else; `close()` (any thread) stops it within 1 s. A good scan is
one line ended by CR, LF or TAB holding ASCII digits once an AIM symbology identifier
("]Q1", "]E0" ...: `aim` True strips any, a string strips only that one, "" none) is taken
off: 16..24 digits are a wallet payment code (CodeScanned), 8, 12 or 13 digits a product
barcode (BarcodeScanned; its check digit is the basket flow's to judge, so a bad one is
refused on screen with its reason). Anything else (letters, binary noise, an over-long or
short line, a partial line left at close) is logged by its length only and dropped: the
flow never sees it. A missing or unplugged scanner is not fatal: the thread logs a warning,
sets `fault` (STARTING before the first try, OFFLINE, "" while working), calls
`on_fault(fault)` on each change (on its thread: it should only post) and retries every
second. Codes are never logged in clear (firmware.wallet.mask_code), barcodes only by
their length (a 13-digit line could be a card number).

A keyboard-wedge scanner types each code: its device is grabbed (no console sees the
keys), key-downs become characters on the US layout with shift (firmware.hal.wedge: set the
scanner to the US keyboard language), Enter, keypad Enter and Tab end the line, and the
line goes through the same rules as a serial scanner's.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Iterable, Iterator, Union

from firmware.flows.types import BarcodeScanned, CodeScanned
from firmware.hal import DeviceError
from firmware.hal.devthread import POLL_S, DeviceThread, EvdevGrab
from firmware.hal.swipe import LineBuffer
from firmware.hal.wedge import import_evdev, typed_chars
from firmware.wallet import CODE_LENGTHS, mask_code

__all__ = ["SerialScanner", "EvdevScanner", "CodeDecoder", "build_scanner", "OFFLINE", "STARTING", "LINE_MAX"]

log = logging.getLogger("kpos.scanner")

LINE_MAX = 64  # bytes: AIM identifier + the longest code, with room; longer is noise
OFFLINE = "scanner offline"
STARTING = "scanner starting"
_AIM = re.compile(r"\][A-Za-z][0-9A-Za-z]")  # ISO/IEC 15424 symbology identifier
_EOL = re.compile(rb"[\r\n]")
BARCODE_LENGTHS = (8, 12, 13)  # EAN-8, UPC-A, EAN-13
Scan = Union[CodeScanned, BarcodeScanned]


class CodeDecoder:
    """Bytes from a scanner -> scans. One thread, pure but for its log lines.

    `feed(data)` returns the scans (CodeScanned, BarcodeScanned) completed by `data`;
    `pending` is the length of a partial line waiting for its end."""

    def __init__(self, aim: bool | str = True):
        self._aim = aim
        self._lines = LineBuffer(LINE_MAX)
        self.pending = 0

    def feed(self, data: bytes) -> list[Scan]:
        data = data.replace(b"\t", b"\n")
        tail = _EOL.split(data)[-1]
        self.pending = len(tail) + (0 if _EOL.search(data) else self.pending)
        return [scan for line in self._lines.feed(data) if (scan := self._scan(line))]

    def _scan(self, line: bytes | None) -> Scan | None:
        if line is None:
            log.info("scanner: over-long line dropped (over %d bytes)", LINE_MAX)
            return None
        text = self._strip_aim(line.decode("ascii", "replace").strip())
        low, high = CODE_LENGTHS
        digits = text.isascii() and text.isdigit()
        if digits and low <= len(text) <= high:
            log.info("scanner: code %s", mask_code(text))
            return CodeScanned(text)
        if digits and len(text) in BARCODE_LENGTHS:
            log.info("scanner: barcode of %d digits", len(text))
            return BarcodeScanned(text)
        log.info("scanner: %d-byte line dropped: not a payment code or barcode", len(line))
        return None

    def _strip_aim(self, text: str) -> str:
        if self._aim is True:
            return _AIM.sub("", text, count=1) if _AIM.match(text) else text
        return text.removeprefix(self._aim) if self._aim else text


class _ScannerThread(DeviceThread):
    """The scanner thread (firmware.hal.devthread); subclasses give `_open()` and `_pump()`,
    which hands what the device sends to `_post_scans`."""

    THREAD, WHAT, OFFLINE, STARTING = "kpos-scanner", "scanner", OFFLINE, STARTING

    def __init__(self, device: str, aim: bool | str, on_fault: Callable[[str], None] | None):
        super().__init__(device, on_fault, log)
        self._aim = aim

    def _post_scans(self, chunks: Iterable[bytes]) -> None:
        """Post the scans in `chunks` (read until the device closes or goes); a partial line
        left at the end is dropped."""
        decoder = CodeDecoder(self._aim)
        try:
            for data in chunks:
                for scan in decoder.feed(data):
                    self._post(scan)
        finally:
            if decoder.pending:
                log.info("scanner: partial %d-byte line dropped (no end of line)", decoder.pending)


class SerialScanner(_ScannerThread):
    """A scanner that sends each code as one line on a serial port. `url` is a device path
    or any pyserial URL (loop://, a pty's path); `aim` as CodeDecoder's."""

    def __init__(self, url: str, baudrate: int, *, aim: bool | str = True,
                 on_fault: Callable[[str], None] | None = None):
        try:
            import serial
        except ImportError as exc:
            raise DeviceError("scanner backend \"serial\" needs the Python package pyserial "
                              "(pip install pyserial)") from exc
        self._serial = serial
        try:  # a malformed URL is a config error, not a device that may come later
            serial.serial_for_url(url, baudrate=baudrate, do_not_open=True)
        except ValueError as exc:
            raise DeviceError(f"[devices] scanner_port {url!r}: {exc}") from exc
        super().__init__(url, aim, on_fault)
        self.baudrate = baudrate

    def _open(self):
        return self._serial.serial_for_url(self.device, baudrate=self.baudrate, timeout=POLL_S)

    def _pump(self, port) -> None:
        self._post_scans(self._reads(port))

    def _reads(self, port) -> Iterator[bytes]:
        while not self._stop.is_set():
            yield port.read(max(1, port.in_waiting))


class EvdevScanner(EvdevGrab, _ScannerThread):
    """A keyboard-wedge scanner on its own input event device (/dev/input/by-id/...-event-kbd);
    `aim` as CodeDecoder's. DeviceError at construction when python-evdev is not installed."""

    def __init__(self, device_path: str, *, aim: bool | str = True,
                 on_fault: Callable[[str], None] | None = None):
        super().__init__(device_path, aim, on_fault)
        self._evdev = import_evdev('scanner backend "wedge"')

    def _pump(self, device) -> None:
        self._post_scans(char.encode() for char in typed_chars(device, self._evdev.ecodes,
                                                               self._stop))


def build_scanner(devices_cfg, *, on_fault: Callable[[str], None] | None = None):
    """The scanner config [devices] asks for ("serial", "wedge": scanner_port is its input
    event device), or None ("none"; "sim": the simulator console posts CodeScanned /
    BarcodeScanned itself). Loop thread, at start."""
    kind = devices_cfg.scanner
    if kind in ("none", "sim"):
        return None
    if kind == "serial":
        return SerialScanner(devices_cfg.scanner_port, devices_cfg.scanner_baudrate,
                             on_fault=on_fault)
    if kind == "wedge":
        if not devices_cfg.scanner_port:
            raise DeviceError('[devices] scanner_port: the input event device of the "wedge" '
                              "scanner is needed")
        return EvdevScanner(devices_cfg.scanner_port, on_fault=on_fault)
    raise DeviceError(f"scanner backend {kind!r} is not available in this release")
