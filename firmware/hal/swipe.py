"""Magnetic stripe readers: serial (CDC-ACM or UART, pyserial) and keyboard wedge (evdev).

Input-device contract, as the console panel: `attach(post, on_quit)` (loop thread, once)
starts a daemon thread "kpos-swipe" that posts one CardSwiped or SwipeFailed per swipe
(firmware.magstripe.swipe_event) and nothing else; `close()` (any thread) stops it within
1 s. A missing or unplugged device is not fatal: the thread logs a warning with the reason,
sets `fault` (short operator text: STARTING before the first try, OFFLINE, "" while working),
calls `on_fault(fault)` on each change (on its thread, so it should only post), and retries
every second, so a reader plugged in later works without a restart. Logs carry masked PANs
and reasons only, never track data.
"""
from __future__ import annotations

import importlib
import logging
import re
import time
from datetime import date
from typing import Callable

from firmware.flows.types import CardSwiped, SwipeFailed
from firmware.hal import DeviceError
from firmware.hal.devthread import POLL_S, DeviceThread, EvdevGrab
from firmware.hal.wedge import import_evdev, typed_chars
from firmware.magstripe import UNREADABLE, swipe_event

__all__ = ["SerialSwipeReader", "EvdevSwipeReader", "WedgeDecoder", "LineBuffer",
           "build_swipe_reader", "LINE_MAX", "OFFLINE", "STARTING"]

log = logging.getLogger("kpos.swipe")

LINE_MAX = 512  # bytes (or keystrokes): a longer line is noise, not a swipe
WEDGE_GAP_S = 0.2  # seconds between two keystrokes of one swipe, at most
OFFLINE = "swipe reader offline"
STARTING = "swipe reader starting"  # `fault` until the first attempt to open the device
SENTINELS = ("%", ";")  # a swipe starts with track 1 or track 2
_EOL = re.compile(rb"[\r\n]")


def _require(module: str, backend: str):
    """Import a backend's library, or DeviceError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeviceError(f'magstripe backend "{backend}" needs the Python package {module} '
                          f"(pip install {module})") from exc


class _SwipeThread(DeviceThread):
    """The reader thread (firmware.hal.devthread); subclasses give `_open()` and `_pump()`."""

    THREAD, WHAT, OFFLINE, STARTING = "kpos-swipe", "swipe reader", OFFLINE, STARTING

    def __init__(self, device: str, today: Callable[[], date],
                 on_fault: Callable[[str], None] | None):
        super().__init__(device, on_fault, log)
        self._today = today

    def _swipe(self, raw: bytes | str | None) -> None:
        """Post the event for one reader output (None: an over-long line, unreadable)."""
        event = SwipeFailed(UNREADABLE) if raw is None else swipe_event(raw, today=self._today())
        if isinstance(event, CardSwiped):
            log.info("swipe: card %s", event.card.masked_pan)
        else:
            log.info("swipe failed: %s", event.reason)
        self._post(event)

class LineBuffer:
    """Bytes from a serial reader -> lines ended by CR or LF (empty lines skipped).

    A line longer than `limit` comes out as None as soon as it overflows, and the rest of it
    is dropped up to its end."""

    def __init__(self, limit: int = LINE_MAX):
        self._limit = limit
        self._line = bytearray()
        self._dropping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        *ended, rest = _EOL.split(data)
        for part in ended:
            self._add(part, out)
            if self._line and not self._dropping:
                out.append(bytes(self._line))
            self._line.clear()
            self._dropping = False
        self._add(rest, out)
        return out

    def _add(self, part: bytes, out: list[bytes | None]) -> None:
        if self._dropping:
            return
        self._line += part
        if len(self._line) > self._limit:
            out.append(None)
            self._line.clear()
            self._dropping = True


class SerialSwipeReader(_SwipeThread):
    """A reader that sends each swipe as one CR- or LF-ended line on a serial port.

    `url` is a device path or any pyserial URL; `today` gives the date expiry is checked on."""

    def __init__(self, url: str, baudrate: int, *, today: Callable[[], date] = date.today,
                 on_fault: Callable[[str], None] | None = None):
        super().__init__(url, today, on_fault)
        self._serial = _require("serial", "serial")
        self.baudrate = baudrate
        try:  # a malformed URL is a config error, not a device that may come later
            self._serial.serial_for_url(url, baudrate=baudrate, do_not_open=True)
        except ValueError as exc:
            raise DeviceError(f"[devices] magstripe_port {url!r}: {exc}") from exc

    def _open(self):
        return self._serial.serial_for_url(self.device, baudrate=self.baudrate, timeout=POLL_S)

    def _pump(self, port) -> None:
        lines = LineBuffer()
        while not self._stop.is_set():
            for line in lines.feed(port.read(max(1, port.in_waiting))):
                self._swipe(line)


class WedgeDecoder:
    """Keystrokes of a keyboard-wedge reader -> whole swipes. One thread, pure but for `clock`.

    `feed(char)` returns the swipe's text at the Enter that ends it, else None. Only input
    that starts with a track sentinel (% or ;) is a swipe, so digits typed on a keypad never
    are. A gap of more than `gap` seconds (by the monotonic `clock`) between two keys drops a
    partial swipe; so does one longer than LINE_MAX keys (a stuck key)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, gap: float = WEDGE_GAP_S):
        self._clock = clock
        self._gap = gap
        self._keys: list[str] = []
        self._last = 0.0

    def feed(self, char: str) -> str | None:
        now = self._clock()
        if self._keys and now - self._last > self._gap:
            log.debug("wedge: partial swipe dropped after %.2f s", now - self._last)
            self._keys.clear()
        self._last = now
        if char in ("\r", "\n"):
            text = "".join(self._keys)
            self._keys.clear()
            return text or None
        if len(self._keys) >= LINE_MAX:
            log.debug("wedge: over-long input dropped")
            self._keys.clear()
        elif self._keys or char in SENTINELS:
            self._keys.append(char)
        return None


class EvdevSwipeReader(EvdevGrab, _SwipeThread):
    """A keyboard-wedge reader on its own input event device (e.g. /dev/input/by-id/...-kbd).

    The device is grabbed, so its keystrokes reach no console. DeviceError at construction
    when python-evdev is not installed."""

    def __init__(self, device_path: str, *, today: Callable[[], date] = date.today,
                 on_fault: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(device_path, today, on_fault)
        self._evdev = import_evdev('magstripe backend "wedge"')
        self._clock = clock

    def _pump(self, device) -> None:
        decoder = WedgeDecoder(self._clock)
        for char in typed_chars(device, self._evdev.ecodes, self._stop):
            text = decoder.feed(char)
            if text is not None:
                self._swipe(text)


def build_swipe_reader(devices_cfg, *, today: Callable[[], date] = date.today,
                       on_fault: Callable[[str], None] | None = None):
    """The magstripe reader config [devices] asks for, or None. Loop thread, at start."""
    kind, port = devices_cfg.magstripe, devices_cfg.magstripe_port
    if kind == "none":
        return None
    if kind == "serial":
        return SerialSwipeReader(port, devices_cfg.magstripe_baudrate, today=today,
                                 on_fault=on_fault)
    if kind == "wedge":
        if not port:
            raise DeviceError('[devices] magstripe_port: the input event device of the "wedge" '
                              "magstripe reader is needed")
        return EvdevSwipeReader(port, today=today, on_fault=on_fault)
    raise DeviceError(f"magstripe backend {kind!r} is not available in this release")
