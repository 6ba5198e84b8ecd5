"""Receipt printer over python-escpos: network (raw TCP, port 9100), serial, USB and file
(/dev/usb/lp0) transports, behind the Printer contract of firmware/hal/printer.py.

Every method blocks and runs only on the printer's single worker thread. `connect()` makes
and opens the escpos printer on first use and again after any failure (a dropped socket,
an unplugged cable): a failed call costs one PrinterError and the next call starts afresh.
Nothing is retried inside a call; the app keeps the receipt queued in the journal.

Status, where the transport reads back (network, serial, USB: `query=True`): real-time
status DLE EOT n before and after each write. n=1 (printer) says online or offline; when
offline, n=2 gives the cause: cover open -> COVER_OPEN, paper end -> PAPER_OUT, anything
else -> OFFLINE; when online, n=4 (roll paper sensor) paper end -> PAPER_OUT, near end is
only logged. No answer within `timeout` seconds, a malformed answer, or a failed open or
write -> OFFLINE (the detail goes to the log) and the connection is dropped. Checking
before the write keeps a receipt out of a stopped printer's buffer, where it would print
later as a duplicate of the queued reprint. The file backend cannot answer: for it "ok"
means the device opens and takes the bytes.

USB (pyusb, libusb1 backend): the printer is found by vendor:product id; bytes go to the first
bulk OUT endpoint of its interface 0, status answers come back on the first bulk IN one.
A failure that the operator can fix leaves `hint` set: device not found or unplugged, and
permission denied (the kpos group and the udev rule of boot/99-kpos.rules).
"""
from __future__ import annotations

import errno
import logging
from functools import partial
from typing import Any, Callable

from escpos.exceptions import DeviceNotFoundError, Error as EscposError

from firmware.hal import DeviceError
from firmware.hal.printer import COVER_OPEN, OFFLINE, PAPER_OUT, STATUS_OK, PrinterError

__all__ = ["EscposPrinter", "build_escpos", "DEFAULT_TIMEOUT", "STATUS_QUERY"]

log = logging.getLogger("kpos.printer")

DEFAULT_TIMEOUT = 2.0  # seconds: connect, write and status answer
STATUS_QUERY = b"\x10\x04"  # DLE EOT n: transmit real-time status
_PRINTER, _OFFLINE_CAUSE, _ROLL_PAPER = 1, 2, 4  # the n of DLE EOT n we ask
_FIXED_MASK, _FIXED = 0x93, 0x12  # bits 0, 1, 4, 7 of every status byte read 0, 1, 1, 0
_OFFLINE = 0x08  # n=1
_COVER_OPEN = 0x04  # n=2
_PAPER_STOP = 0x20  # n=2: printing stopped at paper end
_PAPER_END = 0x60  # n=4
_PAPER_NEAR_END = 0x0C  # n=4
_TRANSPORT_ERRORS = (OSError, EscposError)  # socket, pyserial, pyusb and escpos open errors
_UDEV_RULE = "boot/99-kpos.rules"


class EscposPrinter:
    """A Printer over an escpos printer that `connect()` returns opened.

    `device` names it in errors and logs ("network 10.0.0.9:9100"); `query` says whether
    the transport answers DLE EOT (network, serial, USB). `explain(transport error)` is what
    the operator does about it, "" when nothing specific; the last call's answer is `hint`.
    """

    def __init__(self, connect: Callable[[], Any], *, device: str, query: bool = True,
                 explain: Callable[[BaseException], str] = lambda err: ""):
        self._connect = connect
        self._explain = explain
        self.device = device
        self.query = query
        self.hint = ""  # what to do about the last call's transport failure; "" if none
        self._printer: Any = None  # the open escpos printer, None until (re)connected

    def __repr__(self) -> str:
        return f"EscposPrinter({self.device!r})"

    def print_receipt(self, raw: bytes, preview: str, name: str) -> None:
        self._run(partial(self._write, raw))
        log.info("printed receipt %s (%d bytes) on %s", name, len(raw), self.device)

    def kick_drawer(self, raw: bytes) -> None:
        self._run(partial(self._write, raw))
        log.info("cash drawer kicked through %s", self.device)

    def status(self) -> str:
        try:
            self._run(self._require_ok)
        except PrinterError as err:
            return err.reason
        return STATUS_OK

    def close(self) -> None:
        """Close the connection; the next call reconnects. Printer worker thread."""
        printer, self._printer = self._printer, None
        if printer is None:
            return
        try:
            printer.close()
        except _TRANSPORT_ERRORS as err:  # the link is already broken: nothing left to close
            log.debug("printer %s: close: %s", self.device, err)

    def _run(self, job: Callable[[Any], None]) -> None:
        """job(open escpos printer); a transport failure drops the link -> OFFLINE."""
        self.hint = ""
        try:
            if self._printer is None:
                self._printer = self._connect()
            job(self._printer)
        except _TRANSPORT_ERRORS as err:
            self.hint = self._explain(err)
            log.warning("printer %s offline: %s", self.device, self.hint or err)
            self.close()
            raise PrinterError(OFFLINE, device=self.device) from err

    def _write(self, raw: bytes, printer: Any) -> None:
        self._require_ok(printer)
        printer._raw(raw)
        self._require_ok(printer)

    def _require_ok(self, printer: Any) -> None:
        reason = self._state(printer) if self.query else STATUS_OK
        if reason != STATUS_OK:
            raise PrinterError(reason, device=self.device)

    def _state(self, printer: Any) -> str:
        if _ask(printer, _PRINTER) & _OFFLINE:
            cause = _ask(printer, _OFFLINE_CAUSE)
            if cause & _COVER_OPEN:
                return COVER_OPEN
            return PAPER_OUT if cause & _PAPER_STOP else OFFLINE
        paper = _ask(printer, _ROLL_PAPER)
        if paper & _PAPER_END:
            return PAPER_OUT
        if paper & _PAPER_NEAR_END:
            log.warning("printer %s: paper near end", self.device)
        return STATUS_OK


def _ask(printer: Any, n: int) -> int:
    """The status byte answering DLE EOT n; OSError when none, or not a status byte, came."""
    answer = bytes(printer.query_status(STATUS_QUERY + bytes([n])))  # pyusb reads an array
    if len(answer) != 1 or answer[0] & _FIXED_MASK != _FIXED:
        raise OSError(f"DLE EOT {n}: answer {answer.hex() or 'none'}")
    return answer[0]


def build_escpos(cfg, backend: str, *, timeout: float = DEFAULT_TIMEOUT,
                 usb_backend: Any = None) -> EscposPrinter:
    """An EscposPrinter for [devices] printer = `backend` from `cfg` (PrinterConfig).

    Loop thread, at start; opens nothing (the first print connects). `timeout` seconds
    bound the connect, each write and each status answer. `usb_backend`: the pyusb backend
    (usb.backend.IBackend) that finds a "usb" printer, None for libusb1. DeviceError for a
    backend that is not ESC/POS or whose library (pyusb, libusb-1.0) is missing.
    """
    from escpos import printer as escpos

    if backend == "network":
        return EscposPrinter(partial(_opened, escpos.Network, cfg.host, cfg.port, timeout=timeout),
                             device=f"network {cfg.host}:{cfg.port}")
    if backend == "serial":
        return EscposPrinter(partial(_open_serial, escpos.Serial, cfg.serial_port, cfg.baudrate,
                                     timeout),
                             device=f"serial {cfg.serial_port}")
    if backend == "usb":
        if not escpos.Usb.is_usable():
            raise DeviceError("printer backend 'usb' needs the pyusb package (pip install pyusb)")
        ids = f"{cfg.usb_vendor:04x}:{cfg.usb_product:04x}"
        return EscposPrinter(partial(_open_usb, escpos.Usb, cfg.usb_vendor, cfg.usb_product,
                                     _libusb(usb_backend), timeout),
                             device=f"usb {ids}", explain=partial(_usb_hint, ids))
    if backend == "file":
        return EscposPrinter(partial(_opened, escpos.File, str(cfg.file)),
                             device=f"file {cfg.file}", query=False)
    raise DeviceError(f"printer backend {backend!r} is not an ESC/POS backend")


def _opened(cls, *args, **kwargs):
    printer = cls(*args, **kwargs)
    printer.open()
    return printer


def _open_serial(cls, port: str, baudrate: int, timeout: float):
    printer = _opened(cls, port, baudrate, timeout=timeout)
    printer.device.write_timeout = timeout  # a port stalled by flow control fails, not hangs
    # escpos reads 16 bytes, which on serial waits out the whole timeout; a status answer is one
    printer._read = partial(printer.device.read, 1)
    return printer


def _libusb(backend: Any) -> Any:
    """`backend`, or pyusb's libusb1 backend; DeviceError when libusb-1.0 is not installed."""
    import usb.backend.libusb1

    backend = backend or usb.backend.libusb1.get_backend()
    if backend is None:
        raise DeviceError("printer backend 'usb' needs libusb-1.0 (apt install libusb-1.0-0)")
    return backend


def _open_usb(cls, vendor: int, product: int, backend: Any, timeout: float):
    """escpos Usb opened on the first bulk OUT and IN endpoints of the printer's interface 0."""
    import usb.util

    ms = round(timeout * 1000)  # pyusb counts milliseconds
    printer = _opened(cls, vendor, product, usb_args={"backend": backend}, timeout=ms)
    device = printer.device
    device.default_timeout = ms  # escpos reads the status answer with the device's timeout
    interface = device.get_active_configuration()[(0, 0)]
    printer.out_ep, printer.in_ep = (_bulk_endpoint(interface, way)
                                     for way in (usb.util.ENDPOINT_OUT, usb.util.ENDPOINT_IN))
    return printer


def _bulk_endpoint(interface, way: int) -> int:
    """The address of the interface's first bulk endpoint going `way` (usb.util.ENDPOINT_IN/OUT)."""
    import usb.util

    for endpoint in interface:
        if (usb.util.endpoint_direction(endpoint.bEndpointAddress) == way
                and usb.util.endpoint_type(endpoint.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK):
            return endpoint.bEndpointAddress
    raise OSError(f"interface 0 has no bulk {'IN' if way else 'OUT'} endpoint: not a printer?")


def _usb_hint(ids: str, err: BaseException) -> str:
    """What the operator does about `err`, raised opening or using USB printer `ids`."""
    chain = [err]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    errnos = {getattr(e, "errno", None) for e in chain}
    if errno.EACCES in errnos:
        return (f"USB printer {ids}: permission denied: the service user needs group kpos "
                f"and the udev rule ({_UDEV_RULE})")
    if errno.ENODEV in errnos or isinstance(err, DeviceNotFoundError) and errnos == {None}:
        return f"USB printer {ids} not found: check the cable and the udev rule ({_UDEV_RULE})"
    return ""
