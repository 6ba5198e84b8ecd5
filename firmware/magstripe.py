"""Magnetic stripe: what a swipe reader sends -> checked track 2 data -> a flow event.

Pure functions over values, any thread, never blocking. Only track 2 is kept (ISO/IEC 7813:
`;PAN=YYMMSSS<discretionary>?`). Track 1 (it holds the cardholder name) and track 3 are
checked for their framing and dropped: never stored, logged or returned. Bad input raises
SwipeError whose `reason` is short and holds no card data; reprs mask the PAN.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from firmware.cardsafe import luhn_ok, mask_pan
from firmware.emv.card import ENTRY_MAGSTRIPE, CardData
from firmware.flows.types import CardSwiped, SwipeFailed

__all__ = ["SwipeError", "Track2", "UNREADABLE", "parse_track2", "parse_swipe", "chip_card",
           "swipe_event", "track_data"]

UNREADABLE = "unreadable stripe"
TRACK2_MAX = 37  # characters between the sentinels (ISO/IEC 7813: 40 with sentinels and LRC)

# Track 2 without sentinels: PAN, '=' (or 'D' in the chip's hex form), then digits;
# the hex form may end in one 'F' pad nibble.
_TRACK2 = re.compile(r"([0-9]+)[=D]([0-9]*)F?")
# Whole reader output: track 1 %...?, track 2 ;...?, track 3 ;...?, each optional, CR/LF
# around and between them. A track that failed to read comes as "%E?" / ";E?".
_SWIPE = re.compile(r"(?:%[^%;?]*\?)?[\r\n]*(?:;(?P<track2>[^%;?]*)\?)?[\r\n]*(?:;[^%;?]*\?)?")
_TRACK1_NAME = re.compile(r"[A-Z0-9 /._-]{2,26}")
_TEST_DISCRETIONARY = "00000"


class SwipeError(ValueError):
    """A swipe cannot be used; `reason` is short and safe to show and log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, repr=False)
class Track2:
    pan: str
    expiry: str  # YYMM
    service_code: str  # 3 digits
    discretionary: str  # issuer data (may hold a card verification value): never shown

    @property
    def text(self) -> str:
        """Track 2 as CardData.track2 holds it: "PAN=YYMMSSS<discretionary>"."""
        return f"{self.pan}={self.expiry}{self.service_code}{self.discretionary}"

    def __repr__(self) -> str:
        return f"Track2(pan={mask_pan(self.pan)}, service_code={self.service_code})"

    __str__ = __repr__


def parse_track2(text: str) -> Track2:
    """Track 2 ("PAN=YYMMSSS..." or the chip's "PAN D YYMM..."), with or without ';' '?'.

    Checks the form, PAN length (13..19) and Luhn digit, expiry month and service code;
    not whether the card has expired (see parse_swipe)."""
    body = text.removeprefix(";").removesuffix("?")
    match = _TRACK2.fullmatch(body)
    if match is None or len(body) > TRACK2_MAX:
        raise SwipeError(UNREADABLE)
    pan, rest = match.groups()
    if not 13 <= len(pan) <= 19:
        raise SwipeError("bad PAN length")
    if not luhn_ok(pan):
        raise SwipeError("PAN fails the Luhn check")
    expiry, service_code, discretionary = rest[:4], rest[4:7], rest[7:]
    if len(expiry) < 4 or not 1 <= int(expiry[2:]) <= 12:
        raise SwipeError("bad expiry date")
    if len(service_code) < 3:
        raise SwipeError("bad service code")
    return Track2(pan, expiry, service_code, discretionary)


def parse_swipe(raw: str | bytes, *, today: date) -> Track2:
    """Track 2 of one whole reader output; SwipeError if it is unusable or expired on `today`.

    Scanner noise, partial reads, error codes and a swipe without track 2 are all
    SwipeError(UNREADABLE)."""
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise SwipeError(UNREADABLE) from None
    match = _SWIPE.fullmatch(text.strip("\r\n"))
    if match is None or match["track2"] is None:
        raise SwipeError(UNREADABLE)
    track = parse_track2(match["track2"])
    if (2000 + int(track.expiry[:2]), int(track.expiry[2:])) < (today.year, today.month):
        raise SwipeError("card expired")
    return track


def chip_card(service_code: str) -> bool:
    """The service code says the card has a chip (first digit 2 or 6): insert it instead."""
    return service_code[:1] in ("2", "6")


def swipe_event(raw: str | bytes, *, today: date) -> CardSwiped | SwipeFailed:
    """The flow event for one reader output."""
    try:
        track = parse_swipe(raw, today=today)
    except SwipeError as exc:
        return SwipeFailed(exc.reason)
    card = CardData(pan=track.pan, expiry=track.expiry, pan_seq=None, track2=track.text, aid="",
                    app_label="", icc_data=b"", entry_mode=ENTRY_MAGSTRIPE,
                    service_code=track.service_code)
    return CardSwiped(card, chip=chip_card(track.service_code))


def track_data(pan: str, expiry_yymm: str, service_code: str, name: str) -> bytes:
    """What a reader sends for a test card: tracks 1 and 2, then CR. Values are not checked
    (tests build bad cards with it); ValueError if `name` does not fit track 1 (2..26 of
    A-Z 0-9 space / . _ -, upper-cased here)."""
    name = name.upper()
    if not _TRACK1_NAME.fullmatch(name):
        raise ValueError(f"track 1 name {name!r}: 2..26 of A-Z 0-9 space / . _ -")
    tail = f"{expiry_yymm}{service_code}{_TEST_DISCRETIONARY}"
    return f"%B{pan}^{name}^{tail}?;{pan}={tail}?\r".encode("ascii")
