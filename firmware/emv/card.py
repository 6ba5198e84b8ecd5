"""What the terminal learns from a card: the result of a chip read.

Immutable value, any thread. Its repr masks the PAN; the clear PAN, track 2
equivalent and ICC data leave this object only towards the acquirer message
builder and the journal's encrypted store (DESIGN §6 invariant 5).
"""
from __future__ import annotations

from dataclasses import dataclass

from firmware.cardsafe import mask_pan

__all__ = ["CardData", "CardReadError", "ENTRY_CHIP", "ENTRY_CONTACTLESS", "ENTRY_MAGSTRIPE",
           "ENTRY_FALLBACK", "ENTRY_MANUAL", "CVMS"]

# Field 22 POS entry mode: 2 digits PAN entry + 1 digit PIN capability (1 = can accept PIN).
ENTRY_CHIP = "051"
ENTRY_CONTACTLESS = "071"
ENTRY_MAGSTRIPE = "021"
ENTRY_FALLBACK = "801"  # magstripe read after the chip failed (fallback)
ENTRY_MANUAL = "011"  # PAN and expiry keyed by a supervisor (never offline)

# Cardholder verification the kernel asks the terminal to perform next (or has performed).
CVMS = ("online_pin", "offline_pin", "signature", "none")


class CardReadError(Exception):
    """The card could not be read; `reason` is short and safe to log (no card data).

    `next`: "" the sale ends; "swipe" the chip failed before an application was usable, so
    a fallback swipe may follow; "insert" a tap was refused and the chip must be inserted.
    """

    def __init__(self, reason: str, next: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.next = next


@dataclass(frozen=True, repr=False)
class CardData:
    pan: str
    expiry: str  # YYMM
    pan_seq: str | None  # PAN sequence number, 2 digits (tag 5F34), None if absent
    track2: str  # track 2 equivalent (tag 57) as text, separator '=' e.g. "6226...=3012201..."
    aid: str  # hex, upper case
    app_label: str  # tag 50 (or 9F12), printable
    icc_data: bytes  # field 55 TLV (ARQC and terminal/card data)
    entry_mode: str = ENTRY_CHIP
    cryptogram: str = ""  # application cryptogram hex (tag 9F26) for the receipt; "" if none
    cryptogram_type: str = ""  # "ARQC" | "TC" | "AAC" for `cryptogram`; "" if none
    service_code: str = ""  # 3 digits from track 2 (or its chip equivalent); "" if unknown
    tvr: str = ""  # terminal verification results (95), 10 hex digits; "" for magstripe
    tsi: str = ""  # transaction status information (9B), 4 hex digits; "" for magstripe
    cvm: str = ""  # CVM performed: one of CVMS; "" before cardholder verification

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.pan)

    def __repr__(self) -> str:
        return f"CardData(pan={self.masked_pan}, aid={self.aid}, label={self.app_label!r})"

    __str__ = __repr__
