"""python-escpos printer backends against fake printers: a TCP printer on 127.0.0.1, a pty
serial printer and a USB printer on a fake pyusb backend (tests/test_printer_usb.py), all
answering DLE EOT real-time status queries; the file backend."""
from __future__ import annotations

import os
import select
import socket
import threading
from types import SimpleNamespace

import pytest

from firmware.hal import DeviceError
from firmware.hal.printer import (COVER_OPEN, OFFLINE, PAPER_OUT, STATUS_OK, Printer, PrinterError,
                                   drawer_pulse)
from firmware.hal.printer_escpos import STATUS_QUERY, EscposPrinter, build_escpos

TIMEOUT = 0.5  # seconds the printer under test waits for a status answer
RECEIPT = "\x1b@ 商户存根 MERCHANT COPY\n金额 AMOUNT: RMB 12.34\n\x1dV\x00".encode("gb18030")
ASK = {n: STATUS_QUERY + bytes([n]) for n in (1, 2, 4)}

# DLE EOT n answers (n = 1 printer, 2 offline cause, 4 roll paper) per printer state.
ANSWERS = {
    "ok": {1: 0x12, 2: 0x12, 4: 0x12},
    "near end": {1: 0x12, 2: 0x12, 4: 0x1E},
    "paper out": {1: 0x1A, 2: 0x32, 4: 0x72},
    "cover open": {1: 0x1A, 2: 0x16, 4: 0x12},
    "offline": {1: 0x1A, 2: 0x52, 4: 0x12},
    "garbage": {1: 0xFF, 2: 0xFF, 4: 0xFF},
    "silent": {},
}


class FakeEscpos:
    """What a thermal printer does with its input: keeps data bytes, answers DLE EOT n.

    `state` is a key of ANSWERS; with `paper_after` set, the paper runs out once that many
    data bytes arrived. `wire` is every byte received, queries included.
    """

    def __init__(self):
        self.state = "ok"
        self.paper_after: int | None = None
        self.data = bytearray()
        self.wire = bytearray()
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        self.wire += chunk
        buf, self._pending, answers = self._pending + chunk, b"", bytearray()
        while buf:
            if buf[:2] == STATUS_QUERY[:len(buf[:2])] and len(buf) < 3:
                self._pending = buf  # a query split across reads
                break
            if buf[:2] == STATUS_QUERY and buf[2] in (1, 2, 3, 4):
                if buf[2] in ANSWERS[self.state]:
                    answers.append(ANSWERS[self.state][buf[2]])
                buf = buf[3:]
                continue
            self.data.append(buf[0])
            buf = buf[1:]
            if self.paper_after is not None and len(self.data) >= self.paper_after:
                self.state, self.paper_after = "paper out", None
        return bytes(answers)


class NetPrinter:
    """The fake on a TCP port of 127.0.0.1, one connection at a time, on its own thread."""

    def __init__(self):
        self.fake = FakeEscpos()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, name="fake-escpos-net", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            self.connections += 1
            self.conn = conn
            with conn:
                try:
                    while chunk := conn.recv(4096):
                        conn.sendall(self.fake.feed(chunk))
                except OSError:
                    pass  # dropped by the test or the client

    def drop(self) -> None:
        self.conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.server.fileno() >= 0:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self.server.close()
        if self.conn is not None:
            self.conn.close()
        self.thread.join(timeout=5)


class PtyPrinter:
    """The fake on the master side of a pty; pyserial opens the slave's name."""

    def __init__(self):
        self.fake = FakeEscpos()
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="fake-escpos-pty", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                answer = self.fake.feed(os.read(self.master, 4096))
                if answer:
                    os.write(self.master, answer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        os.close(self.master)
        os.close(self.slave)


def printer_config(**keys) -> SimpleNamespace:
    base = dict(usb_vendor=None, usb_product=None, serial_port="", baudrate=9600, host="",
                port=9100, file=None)
    return SimpleNamespace(**{**base, **keys})


@pytest.fixture
def net():
    server = NetPrinter()
    printer = build_escpos(printer_config(host="127.0.0.1", port=server.port), "network",
                           timeout=TIMEOUT)
    yield server, printer
    printer.close()
    server.close()


@pytest.fixture
def pty():
    server = PtyPrinter()
    printer = build_escpos(printer_config(serial_port=server.port, baudrate=19200), "serial",
                           timeout=TIMEOUT)
    yield server, printer
    printer.close()
    server.close()


@pytest.fixture
def usb():
    from test_printer_usb import usb_link  # that module imports this one

    device, printer = usb_link()
    yield device, printer
    printer.close()


@pytest.fixture(params=["network", "serial", "usb"])
def link(request):
    """(fake printer, EscposPrinter on it) for each transport that reads back."""
    return request.getfixturevalue({"network": "net", "serial": "pty", "usb": "usb"}[request.param])


def test_is_a_printer(net):
    assert isinstance(net[1], Printer)


def test_receipt_bytes_framed_by_status_checks(link):
    server, printer = link
    printer.print_receipt(RECEIPT, "preview", "b000001-s000001-merchant")
    check = ASK[1] + ASK[4]
    assert bytes(server.fake.wire) == check + RECEIPT + check
    assert bytes(server.fake.data) == RECEIPT


def test_drawer_pulse_reaches_the_printer(link):
    server, printer = link
    printer.kick_drawer(drawer_pulse(2))
    assert bytes(server.fake.data) == drawer_pulse(2)


@pytest.mark.parametrize("state, reason", [
    ("ok", STATUS_OK), ("near end", STATUS_OK), ("paper out", PAPER_OUT),
    ("cover open", COVER_OPEN), ("offline", OFFLINE), ("garbage", OFFLINE), ("silent", OFFLINE),
])
def test_status_reports_the_printer_state(link, state, reason):
    server, printer = link
    server.fake.state = state
    assert printer.status() == reason


@pytest.mark.parametrize("state, reason", [("paper out", PAPER_OUT), ("cover open", COVER_OPEN),
                                           ("offline", OFFLINE)])
def test_stopped_printer_gets_no_receipt_bytes(link, state, reason):
    server, printer = link
    server.fake.state = state
    with pytest.raises(PrinterError) as exc:
        printer.print_receipt(RECEIPT, "preview", "r1")
    assert exc.value.reason == reason and printer.device in str(exc.value)
    assert server.fake.data == b""


def test_paper_out_in_the_middle_of_a_job(link):
    server, printer = link
    printer.print_receipt(RECEIPT, "preview", "r1-merchant")
    server.fake.paper_after = len(RECEIPT) + 10  # runs out inside the second receipt
    with pytest.raises(PrinterError) as exc:
        printer.print_receipt(RECEIPT, "preview", "r1-customer")
    assert exc.value.reason == PAPER_OUT
    with pytest.raises(PrinterError) as exc:  # still out: nothing more is sent
        printer.print_receipt(RECEIPT, "preview", "r1-customer")
    assert exc.value.reason == PAPER_OUT and len(server.fake.data) == 2 * len(RECEIPT)
    server.fake.state = "ok"  # paper back
    printer.print_receipt(RECEIPT, "preview", "r1-customer")
    assert bytes(server.fake.data) == RECEIPT * 3


def test_silent_printer_is_offline_then_reconnects(net):
    server, printer = net
    server.fake.state = "silent"
    with pytest.raises(PrinterError) as exc:
        printer.print_receipt(RECEIPT, "preview", "r1")
    assert exc.value.reason == OFFLINE and server.fake.data == b""
    server.fake.state = "ok"
    printer.print_receipt(RECEIPT, "preview", "r1")
    assert server.connections == 2 and bytes(server.fake.data) == RECEIPT


def test_dropped_connection_is_offline_once_then_reconnects(net):
    server, printer = net
    assert printer.status() == STATUS_OK
    server.drop()
    assert printer.status() == OFFLINE
    printer.print_receipt(RECEIPT, "preview", "r1")
    assert server.connections == 2 and bytes(server.fake.data) == RECEIPT


def test_no_printer_listening_is_offline(net):
    server, printer = net
    server.close()
    with pytest.raises(PrinterError) as exc:
        printer.print_receipt(RECEIPT, "preview", "r1")
    assert exc.value.reason == OFFLINE


def test_serial_port_missing_is_offline(tmp_path):
    printer = build_escpos(printer_config(serial_port=str(tmp_path / "ttyNONE")), "serial",
                           timeout=TIMEOUT)
    assert printer.status() == OFFLINE


def test_file_backend_writes_the_bytes(tmp_path):
    path = tmp_path / "lp0"
    printer = build_escpos(printer_config(file=path), "file")
    printer.print_receipt(RECEIPT, "preview", "r1")
    printer.kick_drawer(drawer_pulse(5))
    printer.close()
    assert path.read_bytes() == RECEIPT + drawer_pulse(5)


def test_file_backend_missing_device_is_offline(tmp_path):
    printer = build_escpos(printer_config(file=tmp_path / "no" / "lp0"), "file")
    assert printer.status() == OFFLINE
    with pytest.raises(PrinterError) as exc:
        printer.print_receipt(RECEIPT, "preview", "r1")
    assert exc.value.reason == OFFLINE


def test_usb_backend_without_pyusb_is_a_device_error(monkeypatch):
    from escpos.printer import Usb

    monkeypatch.setattr(Usb, "is_usable", staticmethod(lambda: False))  # `import usb` failed
    with pytest.raises(DeviceError, match="pyusb"):
        build_escpos(printer_config(usb_vendor=0x0416, usb_product=0x5011), "usb")


def test_unknown_backend_is_a_device_error():
    with pytest.raises(DeviceError, match="'sim'"):
        build_escpos(printer_config(), "sim")


def test_connect_failure_is_offline_and_retried():
    calls = []

    def connect():
        calls.append(1)
        raise OSError("no route to printer")

    printer = EscposPrinter(connect, device="test", query=False)
    assert printer.status() == OFFLINE and printer.status() == OFFLINE
    assert len(calls) == 2
