"""The thread behind a serial-style input device (swipe reader, QR scanner): open the
device, read it until it fails or closes, retry every RETRY_S seconds.

Input-device contract (DESIGN §2): `attach(post, on_quit)` (loop thread, once) starts the
daemon thread `THREAD`; it only posts events. `close()` (any thread) stops it within about
POLL_S + 1 s. A missing or unplugged device is not fatal: the thread logs a warning with
the reason, sets `fault` (short operator text: `STARTING` before the first try, `OFFLINE`,
"" while working), calls `on_fault(fault)` on each change (on its thread, so it should
only post), and retries, so a device plugged in later works without a restart.
Subclasses give THREAD, WHAT, OFFLINE, STARTING, `_open()` (a context manager; OSError
when the device is missing) and `_pump(device)` (reads until `_stop` is set, raises
OSError when the device goes).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable

__all__ = ["DeviceThread", "EvdevGrab", "RETRY_S", "POLL_S"]

RETRY_S = 1.0  # seconds between attempts to open a missing device
POLL_S = 0.1  # read timeout: how soon the thread notices close()


class DeviceThread:
    THREAD = "kpos-device"  # the thread's name
    WHAT = "device"  # how logs name it
    OFFLINE = "device offline"
    STARTING = "device starting"

    def __init__(self, device: str, on_fault: Callable[[str], None] | None,
                 log: logging.Logger):
        self.device = device
        self.fault = self.STARTING
        self._log = log
        self._on_fault = on_fault or (lambda fault: None)
        self._post: Callable[[object], None] = lambda event: None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, post: Callable[[object], None], on_quit: Callable[[], None]) -> None:
        self._post = post
        self._thread = threading.Thread(target=self._run, name=self.THREAD, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._open() as device:
                    self._set_fault("", "ready")
                    self._pump(device)
            except OSError as exc:  # serial.SerialException is an OSError
                self._set_fault(self.OFFLINE, f"{exc}; retrying every {RETRY_S:g} s")
                self._stop.wait(RETRY_S)

    def _set_fault(self, fault: str, detail: str) -> None:
        if fault == self.fault:
            return
        self.fault = fault
        (self._log.warning if fault else self._log.info)("%s %s: %s", self.WHAT, self.device,
                                                         detail)
        self._on_fault(fault)

    def _open(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def _pump(self, device) -> None:
        raise NotImplementedError


class EvdevGrab:
    """Mixin for a DeviceThread reading an evdev input device (`self._evdev`: the evdev
    module): `_open()` grabs the device, so its keystrokes reach no console."""

    device: str
    _evdev: object

    @contextlib.contextmanager
    def _open(self):
        device = self._evdev.InputDevice(self.device)
        try:
            device.grab()
            yield device
        finally:
            device.close()
