"""Virtual ICC: puts an EMV card emulator into pcscd's vpcd reader (vsmartcard protocol).

Contract: `VirtualCard.insert()` connects to vpcd (TCP, default 127.0.0.1:35963, the port
of /etc/reader.conf.d/vpcd) and answers vpcd on its own daemon thread; `remove()` closes the
connection, which pcscd sees as a card removal within its polling period (~0.4 s).
Both are thread-safe, may be called from any thread (also from the card's own serving
thread, e.g. a test removing the card mid-read); insert() blocks at most `connect_timeout` s,
remove() at most JOIN_TIMEOUT s.
Wire: every message either way is a 2-byte big-endian length and a payload. A 1-byte payload
from vpcd is control: 00 power off, 01 power on, 02 reset (no answer to these three) and
04 get ATR (answered with the ATR); a longer one is a C-APDU, answered with the R-APDU.
Power on / reset keep the emulator's state: every EMV read starts with a SELECT anyway.
APDU bytes carry card data: they are never logged. TEST DATA ONLY.
"""
from __future__ import annotations

import logging
import re
import socket
import struct
import threading
from pathlib import Path
from typing import Protocol

from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import Catalog

__all__ = ["VPCD_HOST", "VPCD_PORT", "VPCD_CONF", "Emulated", "VirtualCard", "SimPcscSlot",
           "VpiccError", "vpcd_port", "frame", "answer"]

log = logging.getLogger("kpos.sim.vpicc")

VPCD_HOST = "127.0.0.1"
VPCD_PORT = 0x8C7B  # 35963, vpcd's default CHANNELID
VPCD_CONF = Path("/etc/reader.conf.d/vpcd")
CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0x00, 0x01, 0x02, 0x04
JOIN_TIMEOUT = 2.0  # s, for the serving thread to end after the socket is shut down


class VpiccError(OSError):
    """vpcd cannot be reached or spoke out of protocol; the message says which and where."""


class Emulated(Protocol):
    """What a virtual card needs from an emulator (CardEmulator fits)."""

    atr: bytes

    def transmit(self, apdu: bytes) -> bytes: ...


def vpcd_port(conf: Path = VPCD_CONF) -> int:
    """vpcd's TCP port for its first slot: CHANNELID in pcscd's reader.conf entry for vpcd
    (VPCD_PORT when the file or key is absent). The second slot listens on port + 1."""
    try:
        text = conf.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return VPCD_PORT
    found = re.search(r"^\s*CHANNELID\s+(0[xX][0-9a-fA-F]+|\d+)\s*$", text, re.MULTILINE)
    return int(found.group(1), 0) if found else VPCD_PORT


def frame(payload: bytes) -> bytes:
    """One vpcd message: 2-byte big-endian length + payload (pure)."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"vpcd message of {len(payload)} bytes exceeds 65535")
    return struct.pack(">H", len(payload)) + payload


def answer(card: Emulated, message: bytes) -> bytes | None:
    """The reply to one vpcd message, or None when the message needs none (pure over `card`)."""
    if len(message) == 1:
        if message[0] == CTRL_ATR:
            return bytes(card.atr)
        if message[0] in (CTRL_OFF, CTRL_ON, CTRL_RESET):
            return None
        raise VpiccError(f"vpcd sent unknown control byte {message[0]:02X}")
    if not message:
        raise VpiccError("vpcd sent an empty message")
    return card.transmit(message)


def _quickack(sock: socket.socket) -> None:
    """ACK at once (Linux): older vpcd releases (0.8, as packaged by Debian) write a message's
    length and body in two sends, so our delayed ACK lets Nagle hold the body back ~40 ms
    per APDU (measured: 44 ms -> 0.05 ms). The kernel clears the flag, hence every recv."""
    if hasattr(socket, "TCP_QUICKACK"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """`size` bytes, or None on a clean end of stream before the first byte."""
    buf = b""
    while len(buf) < size:
        _quickack(sock)
        chunk = sock.recv(size - len(buf))
        if not chunk:
            if buf:
                raise VpiccError(f"vpcd closed mid-message ({len(buf)} of {size} bytes)")
            return None
        buf += chunk
    return buf


class VirtualCard:
    """One card in vpcd's slot while inserted. Not reusable across insertions by design:
    each `insert()` is a fresh connection; the emulator (and its ATC) carries over."""

    def __init__(self, card: Emulated, host: str = VPCD_HOST, port: int = VPCD_PORT,
                 *, connect_timeout: float = 2.0):
        self.card = card
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.apdus = 0  # C-APDUs answered, for tests and timing

    @property
    def inserted(self) -> bool:
        with self._lock:
            return self._sock is not None

    def insert(self) -> None:
        """Connect to vpcd and serve it. VpiccError if vpcd is not listening; RuntimeError if
        this card is already inserted."""
        with self._lock:
            if self._sock is not None:
                raise RuntimeError("this virtual card is already inserted")
            try:
                sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            except OSError as exc:
                raise VpiccError(f"vpcd not reachable at {self.host}:{self.port} ({exc}); "
                                 "is pcscd running with the vsmartcard vpcd driver?") from exc
            sock.settimeout(None)  # vpcd may stay silent for as long as the card sits there
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                            name=f"kpos-vpicc-{self.port}")
            self._thread.start()

    def remove(self) -> None:
        """Take the card out (close the connection). No-op when not inserted."""
        with self._lock:
            sock, thread = self._sock, self._thread
            self._sock = self._thread = None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:  # already reset by vpcd: the card is out either way
            log.debug("vpicc shutdown: %s", exc)
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("vpicc thread did not end within %.1f s", JOIN_TIMEOUT)

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._serve_until_closed(sock)
        except OSError as exc:
            if self._owns(sock):  # not removed by us: vpcd (pcscd) went away
                log.warning("vpcd connection %s:%d lost: %s", self.host, self.port, exc)
        finally:
            sock.close()
            with self._lock:
                if self._sock is sock:
                    self._sock = self._thread = None

    def _serve_until_closed(self, sock: socket.socket) -> None:
        while True:
            header = _recv_exact(sock, 2)
            if header is None:
                if self._owns(sock):
                    log.warning("vpcd %s:%d closed the connection", self.host, self.port)
                return
            message = _recv_exact(sock, struct.unpack(">H", header)[0]) or b""
            reply = answer(self.card, message)
            if reply is not None:
                if len(message) > 1:
                    self.apdus += 1
                sock.sendall(frame(reply))

    def _owns(self, sock: socket.socket) -> bool:
        with self._lock:
            return self._sock is sock


class SimPcscSlot:
    """Catalog test cards into vpcd's slot by name: the console's and scripts' `insert approve`,
    `tap visa`, `remove` when the terminal reads through pcscd (`kpos sim --pcsc`).
    Any thread; one card at a time."""

    def __init__(self, catalog: Catalog, host: str = VPCD_HOST, port: int | None = None):
        self._catalog = catalog
        self.host, self.port = host, vpcd_port() if port is None else port
        self._lock = threading.Lock()
        self._card: VirtualCard | None = None

    def insert(self, name: str, *, contactless: bool = False) -> VirtualCard:
        """Insert (or tap) test card `name`. KeyError if unknown; RuntimeError if the slot is
        taken or vpcd is unreachable (the errors SimCardReader's callers already handle)."""
        card = self._catalog.cards[name]
        with self._lock:
            if self._card is not None and self._card.inserted:
                raise RuntimeError("a card is already in the reader; remove it first")
            emulator = CardEmulator(card, self._catalog.imk_ac, contactless=contactless)
            virtual = VirtualCard(emulator, self.host, self.port)
            try:
                virtual.insert()
            except VpiccError as exc:
                raise RuntimeError(str(exc)) from exc
            self._card = virtual
        return virtual

    def tap(self, name: str) -> VirtualCard:
        return self.insert(name, contactless=True)

    def remove(self) -> None:
        with self._lock:
            card, self._card = self._card, None
        if card is not None:
            card.remove()

    def present(self) -> bool:
        with self._lock:
            return self._card is not None and self._card.inserted

    def card_names(self) -> list[str]:
        return list(self._catalog.cards)

    def close(self) -> None:
        self.remove()
