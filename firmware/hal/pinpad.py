"""Soft PIN pad: the PIN-entry buffer behind its own interface (DESIGN §3, §9).

Loop thread only, non-blocking. The clear PIN exists only in this object's bytearray and is
overwritten on every exit (block made, cancel, timeout). A PCI-approved encrypting PIN pad
replaces this class in a production deployment: the flow only ever sees the PIN's length.
"""
from __future__ import annotations

from firmware.keys import pin_block_iso0, pin_block_iso2, pin_block_iso4

__all__ = ["SoftPinPad", "PIN_KEYS"]

PIN_KEYS = frozenset("0123456789") | {"BACK", "CLEAR"}


class SoftPinPad:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._max = 0
        self.active = False

    def start(self, max_len: int) -> None:
        self.wipe()
        self._max = max_len
        self.active = True

    def press(self, key: str) -> int:
        """Apply a digit, BACK or CLEAR; returns the new length (digits never leave)."""
        if key.isdigit() and len(key) == 1:
            if len(self._buf) < self._max:
                self._buf.append(ord(key))
        elif key == "BACK" and self._buf:
            self._buf[-1] = 0
            del self._buf[-1]
        elif key == "CLEAR":
            self._zero()
        return len(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def pin_block(self, pan: str, pik: bytes, pin_format: int = 0) -> bytes:
        """ISO 9564 block under the session PIK ([security] pin_format 0: TDES, 8 bytes;
        4: AES, 16 bytes); wipes the buffer either way."""
        build = {0: pin_block_iso0, 4: pin_block_iso4}[pin_format]
        try:
            return build(self._buf, pan, pik)
        finally:
            self.wipe()

    def offline_pin_block(self) -> bytes:
        """ISO 9564 format 2 plaintext block for the chip's VERIFY; wipes the buffer either way.
        The block itself holds the PIN: the caller hands it to the card and drops it."""
        try:
            return pin_block_iso2(self._buf)
        finally:
            self.wipe()

    def take_password(self) -> bytes:
        """The digits typed (an operator password, not a card PIN) as a copy; the buffer is
        wiped. The caller hashes the copy and drops it."""
        try:
            return bytes(self._buf)
        finally:
            self.wipe()

    def wipe(self) -> None:
        self._zero()
        self.active = False

    def _zero(self) -> None:
        for i in range(len(self._buf)):
            self._buf[i] = 0
        self._buf.clear()
