"""The ARQC the card emulator computes and the acquirer simulator verifies (pyemv).

Pure functions, blocking only on CPU (a few TDES blocks), any thread. Key derivation
is EMV Option A (ICC master key from IMK, PAN, PSN) then the EMV common session key
(R = ATC || 00..00); the MAC is ISO 9797-1 algorithm 3 with padding method 2
(pyemv.ac.generate_ac defaults).

ARQC input: the values of ARQC_TAGS concatenated in that order. The Card Verification
Results from 9F10 are NOT included: our emulator's IAD is a fixed stand-in, and a
scheme-specific cryptogram version (CVN) that adds the CVR belongs in its own function.

pyemv calls cryptography's TripleDES with 16- and 8-byte keys, which emits three
CryptographyDeprecationWarnings (algorithm moved to `decrepit`, two-key TDES, single-key
DES inside the ISO 9797-1 algorithm 3 MAC). They are suppressed by message: before each
pyemv call, _quiet_tdes() makes sure three "ignore" filters for exactly those messages lead
the process's warning filters (re-adding them when a `warnings.catch_warnings` block, such
as the one pytest runs each test in, restored an older list). Filters stay installed:
swapping them per call with catch_warnings cost more than the TDES itself (~25 us per call,
three calls per ARQC check) and was not thread-safe.

The AC session key of (IMK, PAN, PSN, ATC) is cached (a few hundred entries): the issuer
derives it for the ARQC check and again for the ARPC of the same transaction.
"""
from __future__ import annotations

import functools
import logging
import warnings
from typing import Mapping

import pyemv
from cryptography.utils import CryptographyDeprecationWarning

from firmware.emv import tlv

__all__ = ["ARQC_TAGS", "arqc_input", "ac_session_key", "compute_arqc", "compute_arpc", "verify_arqc",
           "CryptogramError"]

log = logging.getLogger("kpos.emv")

ARQC_TAGS = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36")
ARQC_LENGTHS = {"9F02": 6, "9F03": 6, "9F1A": 2, "95": 5, "5F2A": 2, "9A": 3, "9C": 1,
                "9F37": 4, "82": 2, "9F36": 2}
_TDES_WARNINGS = (r"TripleDES has been moved", r"Two-key TripleDES", r"Single-key TripleDES")


class CryptogramError(ValueError):
    """Input to the cryptogram is unusable; the message names the tag or key, no values."""


def arqc_input(values: Mapping[str, bytes]) -> bytes:
    """ARQC_TAGS values concatenated in order; each must be present at its EMV length."""
    out = bytearray()
    for tag in ARQC_TAGS:
        value = values.get(tag)
        if value is None:
            raise CryptogramError(f"ARQC input: tag {tag} missing")
        if len(value) != ARQC_LENGTHS[tag]:
            raise CryptogramError(f"ARQC input: tag {tag} is {len(value)} bytes, "
                                  f"want {ARQC_LENGTHS[tag]}")
        out += value
    return bytes(out)


def _double_length(key: bytes) -> bytes:
    """pyemv wants 16-byte keys; a 24-byte key is accepted only when K3 == K1."""
    if len(key) == 16:
        return key
    if len(key) == 24 and key[16:] == key[:8]:
        return key[:16]
    raise CryptogramError(f"IMK-AC must be a double-length TDES key, got {len(key)} bytes")


_TDES_FILTERS: list[tuple] = []  # the filter entries _quiet_tdes() keeps in front


def _quiet_tdes() -> None:
    """pyemv's TDES calls warn on every use under cryptography >= 43: make sure the filters
    ignoring only those warnings lead warnings.filters (module docstring). Cheap when they do."""
    if _TDES_FILTERS and warnings.filters[:len(_TDES_FILTERS)] == _TDES_FILTERS:
        return
    for message in _TDES_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=CryptographyDeprecationWarning)
    _TDES_FILTERS[:] = warnings.filters[:len(_TDES_WARNINGS)]


def ac_session_key(imk_ac: bytes, pan: str, psn: str | None, atc: bytes) -> bytes:
    """The card's AC session key: ICC master key by EMV option A, then the common session key."""
    if len(atc) != 2:
        raise CryptogramError(f"ATC must be 2 bytes, got {len(atc)}")
    return _session_key(_double_length(imk_ac), pan, psn or "00", bytes(atc))


@functools.lru_cache(maxsize=512)
def _session_key(imk_ac: bytes, pan: str, psn: str, atc: bytes) -> bytes:
    _quiet_tdes()
    return pyemv.kd.derive_common_sk(_icc_master_key(imk_ac, pan, psn), atc + bytes(6))


@functools.lru_cache(maxsize=256)
def _icc_master_key(imk_ac: bytes, pan: str, psn: str) -> bytes:
    """EMV option A derivation, cached: the simulated issuer and cards (the only users of
    an IMK, TEST keys) derive the same few cards' keys over and over."""
    _quiet_tdes()
    return pyemv.kd.derive_icc_mk_a(imk_ac, pan, psn)


def compute_arqc(imk_ac: bytes, pan: str, psn: str | None, values: Mapping[str, bytes]) -> bytes:
    """8-byte ARQC for `values` (tag -> bytes, must hold ARQC_TAGS) under the card's key."""
    data = arqc_input(values)
    session_key = ac_session_key(imk_ac, pan, psn, values["9F36"])
    _quiet_tdes()
    return pyemv.ac.generate_ac(session_key, data)


def compute_arpc(imk_ac: bytes, pan: str, psn: str | None, atc: bytes, arqc: bytes, arc: str) -> bytes:
    """8-byte ARPC, EMV method 1: TDES under the AC session key of ARQC XOR (ARC || 00..00).

    `arc` is the 2-character authorisation response code (field 39), sent as ASCII.
    """
    arc_bytes = arc.encode("ascii")
    if len(arc_bytes) != 2:
        raise CryptogramError(f"ARC must be 2 characters, got {len(arc_bytes)}")
    session_key = ac_session_key(imk_ac, pan, psn, atc)
    _quiet_tdes()
    return pyemv.ac.generate_arpc_1(session_key, arqc, arc_bytes)


def verify_arqc(imk_ac: bytes, pan: str, psn: str | None, icc_data: bytes) -> bool:
    """True when field 55 carries a 9F26 that matches its own ARQC_TAGS values.

    Malformed TLV or a missing tag is a failed verification (False), logged with the
    reason; the host declines either way. A bad key raises CryptogramError.
    """
    _double_length(imk_ac)
    try:
        values = tlv.parse_flat(bytes(icc_data))
        arqc = values.get("9F26")
        if arqc is None or len(arqc) != 8:
            raise CryptogramError("field 55: 9F26 missing or not 8 bytes")
        expected = compute_arqc(imk_ac, pan, psn, values)
    except (tlv.TlvError, CryptogramError) as exc:
        log.warning("ARQC not verifiable: %s", exc)
        return False
    return expected == arqc
