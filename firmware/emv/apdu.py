"""EMV command APDUs and a `Card` wrapper that handles 61xx/6Cxx over a transmit callable.

Synchronous and blocking: every call runs `transmit` on the caller's thread, which must
be the card reader's single worker (DESIGN §2). `transmit(apdu: bytes) -> bytes` returns
response data followed by SW1 SW2; it may raise OSError when the card or reader goes
away, which is passed through unchanged. Timeouts belong to the transmit backend.
Nothing here logs or puts APDU bytes in messages: they carry PAN and track 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = [
    "Apdu", "Response", "ApduError", "Card", "Transmit", "SW_OK",
    "select", "get_processing_options", "read_record", "generate_ac", "get_data",
    "verify_plaintext_pin", "internal_authenticate", "external_authenticate", "script_command",
    "get_response", "with_le", "split_response",
]

Transmit = Callable[[bytes], bytes]

SW_OK = 0x9000
MAX_GET_RESPONSE = 32  # 32 x 256 bytes is far more than any EMV response

# GENERATE AC reference control parameter (P1 bits 8-7), Book 3 6.5.5.
AC_AAC, AC_TC, AC_ARQC = 0x00, 0x40, 0x80


@dataclass(frozen=True)
class Apdu:
    """A command: `name` for errors and logs ("SELECT", "GPO", ...), `raw` the bytes."""

    name: str
    raw: bytes

    def __repr__(self) -> str:  # header only: the body may carry card or terminal data
        return f"Apdu({self.name}, {self.raw[:4].hex().upper()}, {len(self.raw)} bytes)"


@dataclass(frozen=True)
class Response:
    data: bytes
    sw: int  # SW1 SW2 as one int, e.g. 0x9000

    @property
    def ok(self) -> bool:
        return self.sw == SW_OK

    def __repr__(self) -> str:
        return f"Response({len(self.data)} bytes, SW {self.sw:04X})"


class ApduError(Exception):
    """A command failed: `command` is its name, `sw` the status word (None: no SW at all)."""

    def __init__(self, command: str, sw: int | None, detail: str = ""):
        status = f" {sw:04X}" if sw is not None else ""
        super().__init__(f"{command} failed{status}" + (f": {detail}" if detail else ""))
        self.command = command
        self.sw = sw


def _case4(cla: int, ins: int, p1: int, p2: int, data: bytes) -> bytes:
    if not 0 < len(data) <= 255:
        raise ValueError(f"command data must be 1..255 bytes, got {len(data)}")
    return bytes([cla, ins, p1, p2, len(data)]) + data + b"\x00"


def select(name: bytes, *, next_occurrence: bool = False) -> Apdu:
    """SELECT by DF name (PSE, PPSE or AID); P2 02 asks for the next occurrence."""
    return Apdu("SELECT", _case4(0x00, 0xA4, 0x04, 0x02 if next_occurrence else 0x00, name))


def get_processing_options(pdol_data: bytes) -> Apdu:
    """GPO with command template 83 around the PDOL-related data (83 00 when no PDOL)."""
    body = bytes([0x83, len(pdol_data)]) + pdol_data
    return Apdu("GPO", _case4(0x80, 0xA8, 0x00, 0x00, body))


def read_record(sfi: int, record: int) -> Apdu:
    if not (1 <= sfi <= 30 and 1 <= record <= 255):
        raise ValueError(f"READ RECORD sfi {sfi} record {record} out of range")
    return Apdu("READ RECORD", bytes([0x00, 0xB2, record, (sfi << 3) | 0x04, 0x00]))


def generate_ac(p1: int, cdol_data: bytes) -> Apdu:
    """GENERATE AC; p1 is AC_ARQC / AC_TC / AC_AAC (plus 0x10 for CDA)."""
    return Apdu("GENERATE AC", _case4(0x80, 0xAE, p1, 0x00, cdol_data))


def get_data(tag: str) -> Apdu:
    """GET DATA for a 2-byte tag such as 9F36 (ATC) or 9F17 (PIN try counter)."""
    raw = bytes.fromhex(tag)
    if len(raw) != 2:
        raise ValueError(f"GET DATA needs a 2-byte tag, got {tag!r}")
    return Apdu("GET DATA", bytes([0x80, 0xCA, raw[0], raw[1], 0x00]))


def verify_plaintext_pin(pin_block: bytes) -> Apdu:
    """VERIFY with an ISO 9564 format 2 plaintext PIN block (P2 80). Never logged."""
    if len(pin_block) != 8 or pin_block[0] >> 4 != 0x2:
        raise ValueError("VERIFY needs an 8-byte format 2 PIN block")
    return Apdu("VERIFY", bytes([0x00, 0x20, 0x00, 0x80, 0x08]) + pin_block)


def internal_authenticate(ddol_data: bytes) -> Apdu:
    """INTERNAL AUTHENTICATE (DDA) with the DDOL-related data."""
    return Apdu("INTERNAL AUTHENTICATE", _case4(0x00, 0x88, 0x00, 0x00, ddol_data))


def external_authenticate(issuer_auth_data: bytes) -> Apdu:
    """EXTERNAL AUTHENTICATE with tag 91 (ARPC + ARC) from the issuer; case 3, no Le."""
    if not 8 <= len(issuer_auth_data) <= 16:
        raise ValueError("issuer authentication data must be 8..16 bytes")
    return Apdu("EXTERNAL AUTHENTICATE",
                bytes([0x00, 0x82, 0x00, 0x00, len(issuer_auth_data)]) + issuer_auth_data)


def script_command(raw: bytes) -> Apdu:
    """An issuer script command (tag 86), sent as the issuer built it (header checked)."""
    if len(raw) < 4 or len(raw) > 261:
        raise ValueError(f"issuer script command of {len(raw)} bytes")
    return Apdu("ISSUER SCRIPT", bytes(raw))


def get_response(le: int) -> Apdu:
    return Apdu("GET RESPONSE", bytes([0x00, 0xC0, 0x00, 0x00, le & 0xFF]))


def with_le(cmd: Apdu, le: int) -> Apdu:
    """The same command with its Le set to `le` (case 2/4: replace it; case 1/3: add it)."""
    raw = cmd.raw
    has_le = len(raw) == 5 or (len(raw) > 5 and len(raw) == 6 + raw[4])
    body = raw[:-1] if has_le else raw
    return Apdu(cmd.name, body + bytes([le & 0xFF]))


def split_response(command: str, raw: bytes) -> Response:
    if not isinstance(raw, (bytes, bytearray)):
        raise ApduError(command, None, f"transmit returned {type(raw).__name__}")
    if len(raw) < 2:
        raise ApduError(command, None, f"{len(raw)}-byte response")
    if not (0x61 <= raw[-2] <= 0x6F or 0x90 <= raw[-2] <= 0x9F):
        # Not an ISO 7816-4 status word: most likely a cut-off answer whose last two
        # bytes are card data, so they must not reach the message.
        raise ApduError(command, None, "invalid status word")
    return Response(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))


class Card:
    """A card behind `transmit`, with T=0 style 61xx and 6Cxx handled transparently."""

    def __init__(self, transmit: Transmit):
        self._transmit = transmit

    def exchange(self, cmd: Apdu) -> Response:
        """Send `cmd`; follow 6Cxx once and 61xx up to MAX_GET_RESPONSE times."""
        resp = self._send(cmd)
        if resp.sw >> 8 == 0x6C:
            resp = self._send(with_le(cmd, resp.sw & 0xFF))
        data = resp.data
        for _ in range(MAX_GET_RESPONSE):
            if resp.sw >> 8 != 0x61:
                return Response(data, resp.sw)
            resp = self._send(get_response(resp.sw & 0xFF), command=cmd.name)
            data += resp.data
        raise ApduError(cmd.name, resp.sw, "too many GET RESPONSE rounds")

    def command(self, cmd: Apdu) -> bytes:
        """Send `cmd` and return its data; any status but 9000 raises ApduError."""
        resp = self.exchange(cmd)
        if not resp.ok:
            raise ApduError(cmd.name, resp.sw)
        return resp.data

    def _send(self, cmd: Apdu, *, command: str | None = None) -> Response:
        return split_response(command or cmd.name, self._transmit(cmd.raw))
