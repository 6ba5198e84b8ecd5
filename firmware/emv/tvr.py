"""Terminal Verification Results (95) and Transaction Status Information (9B) as named bits.

Tvr and Tsi are mutable, one pair per transaction, used from the kernel's thread only.
The bit tables are EMV Book 3 Annex C5 (TVR) and C6 (TSI); bits are addressed by name,
and an unknown name is a KeyError naming it. RFU bits in a value are kept as they are
but have no name. `describe_tvr` is pure, any thread, for logs, receipts and tools.
"""
from __future__ import annotations

__all__ = ["TVR_BITS", "TSI_BITS", "Tvr", "Tsi", "describe_tvr"]

# name -> (byte index 0.., mask), in bit order: byte 1 b8 first.
TVR_BITS: dict[str, tuple[int, int]] = {
    "oda_not_performed": (0, 0x80),
    "sda_failed": (0, 0x40),
    "icc_data_missing": (0, 0x20),
    "card_on_exception_file": (0, 0x10),
    "dda_failed": (0, 0x08),
    "cda_failed": (0, 0x04),
    "sda_selected": (0, 0x02),
    "icc_app_versions_differ": (1, 0x80),
    "expired_application": (1, 0x40),
    "application_not_yet_effective": (1, 0x20),
    "service_not_allowed": (1, 0x10),
    "new_card": (1, 0x08),
    "cvm_not_successful": (2, 0x80),
    "unrecognised_cvm": (2, 0x40),
    "pin_try_limit_exceeded": (2, 0x20),
    "pin_pad_not_working": (2, 0x10),
    "pin_not_entered": (2, 0x08),
    "online_pin_entered": (2, 0x04),
    "exceeds_floor_limit": (3, 0x80),
    "lower_consecutive_offline_limit_exceeded": (3, 0x40),
    "upper_consecutive_offline_limit_exceeded": (3, 0x20),
    "random_online": (3, 0x10),
    "merchant_forced_online": (3, 0x08),
    "default_tdol_used": (4, 0x80),
    "issuer_authentication_failed": (4, 0x40),
    "script_failed_before_final_gen_ac": (4, 0x20),
    "script_failed_after_final_gen_ac": (4, 0x10),
}

TSI_BITS: dict[str, tuple[int, int]] = {
    "oda_performed": (0, 0x80),
    "cvm_performed": (0, 0x40),
    "card_risk_management_performed": (0, 0x20),
    "issuer_authentication_performed": (0, 0x10),
    "terminal_risk_management_performed": (0, 0x08),
    "script_processing_performed": (0, 0x04),
}


class _Bits:
    """A fixed-size bit string whose bits are named by BITS."""

    BITS: dict[str, tuple[int, int]] = {}
    SIZE = 0

    def __init__(self, value: bytes | None = None):
        value = bytes(self.SIZE) if value is None else bytes(value)
        if len(value) != self.SIZE:
            raise ValueError(f"{type(self).__name__} must be {self.SIZE} bytes")
        self._value = bytearray(value)

    def _bit(self, name: str) -> tuple[int, int]:
        try:
            return self.BITS[name]
        except KeyError:
            raise KeyError(f"unknown {type(self).__name__} bit {name!r}") from None

    def set(self, name: str) -> None:
        index, mask = self._bit(name)
        self._value[index] |= mask

    def clear(self, name: str) -> None:
        index, mask = self._bit(name)
        self._value[index] &= ~mask

    def is_set(self, name: str) -> bool:
        index, mask = self._bit(name)
        return bool(self._value[index] & mask)

    def names(self) -> list[str]:
        """The names of the set bits, in bit order (byte 1 b8 first)."""
        return [name for name in self.BITS if self.is_set(name)]

    def __bytes__(self) -> bytes:
        return bytes(self._value)

    def hex(self) -> str:
        return self._value.hex().upper()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"


class Tvr(_Bits):
    """Terminal Verification Results, tag 95, 5 bytes."""

    BITS = TVR_BITS
    SIZE = 5


class Tsi(_Bits):
    """Transaction Status Information, tag 9B, 2 bytes (byte 2 is RFU)."""

    BITS = TSI_BITS
    SIZE = 2


def describe_tvr(hex10: str) -> list[str]:
    """Names of the bits set in a TVR given as 10 hex digits; ValueError if malformed."""
    if len(hex10) != 10:
        raise ValueError("TVR must be 10 hex digits")
    return Tvr(bytes.fromhex(hex10)).names()
