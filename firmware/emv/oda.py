"""Offline data authentication, terminal side: SDA and DDA (EMV Book 2 5-6, Book 3 10.3).

Pure functions, any thread, CPU only: RSA public-key recovery is `pow` on ints (a few
ms per certificate). The one exception is `perform_oda`'s `internal_authenticate`
callable, which it runs on the caller's thread (the card reader's worker): it blocks on
the card, and its OSError / ApduError (card gone, command refused) pass through
unchanged. Everything else that goes wrong with the card's data fails the method: the
TVR bit is set, a short reason is logged and the method name is returned; no exception.
CDA is not supported (AIP bit 0x01 is ignored).

CA public keys come from a TOML file (`load_capks`) whose entries carry the EMV check
value, so a mistyped modulus fails at start, not at the first card. Logs
("kpos.emv.oda") hold the method, the result and a reason; never the PAN or key bytes.
"""
from __future__ import annotations

import hashlib
import logging
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from firmware.emv import tlv

__all__ = [
    "CaPublicKey", "CapkError", "OdaError", "load_capks", "capk_checksum", "static_data",
    "perform_oda", "verify_sdad", "exponent_bytes", "HEADER", "TRAILER", "PAD", "SHA1",
    "RSA", "FORMAT_ISSUER", "FORMAT_SSAD", "FORMAT_ICC", "FORMAT_SDAD", "DEFAULT_DDOL",
]

log = logging.getLogger("kpos.emv.oda")

# Recovered-data framing and indicators (Book 2 tables 6, 7, 14, 17).
HEADER, TRAILER, PAD = 0x6A, 0xBC, 0xBB
SHA1, RSA = 0x01, 0x01  # hash algorithm and public key algorithm indicators
FORMAT_ISSUER, FORMAT_SSAD, FORMAT_ICC, FORMAT_SDAD = 0x02, 0x03, 0x04, 0x05
HASH_LEN = 20
DEFAULT_DDOL = bytes.fromhex("9F3704")  # unpredictable number, 4 bytes (Book 2 6.5.1)
MAX_MODULUS = 248  # bytes; the largest key EMV certificates can carry (1984 bits)
MIN_MODULUS = 64  # bytes (512 bits); below it the recovered frames do not fit

# Owner field of a key certificate: issuer identifier (4) or application PAN (10).
ISSUER_ID_LEN, PAN_LEN = 4, 10
SDA_TAGS = ("8F", "90", "9F32", "5A", "93")
DDA_TAGS = ("8F", "90", "9F32", "5A", "9F46", "9F47")


@dataclass(frozen=True)
class CaPublicKey:
    rid: str  # 10 hex digits, upper, e.g. "A000000333"
    index: int  # 0..255 (tag 8F)
    modulus: bytes
    exponent: int  # 3 or 65537
    expiry: date | None

    def __repr__(self) -> str:
        return f"CaPublicKey({self.rid}, {self.index:02X}, {len(self.modulus) * 8} bits)"


class CapkError(ValueError):
    """Bad CA public key file; str() names the file and the entry."""


class OdaError(Exception):
    """ODA input unusable; `.reason` is short, PAN-free text."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _DataMissing(OdaError):
    """A tag the method needs is absent (TVR "icc_data_missing")."""


# --- CA public keys -------------------------------------------------------------------

def exponent_bytes(exponent: int) -> bytes:
    """Big-endian, minimal length: 3 -> 03, 65537 -> 010001."""
    return exponent.to_bytes((exponent.bit_length() + 7) // 8, "big")


def capk_checksum(rid: str, index: int, modulus: bytes, exponent: int) -> bytes:
    """EMV CA public key check value: SHA-1 of RID || index || modulus || exponent."""
    data = bytes.fromhex(rid) + bytes([index]) + modulus + exponent_bytes(exponent)
    return hashlib.sha1(data).digest()


_CAPK_KEYS = ("rid", "index", "modulus", "exponent", "expiry", "checksum")


def _hex(entry: Mapping[str, Any], key: str, where: str) -> bytes:
    value = entry.get(key)
    if not isinstance(value, str):
        raise CapkError(f"{where}: {key}: must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CapkError(f"{where}: {key}: not hex") from None


def _index(value: Any, where: str) -> int:
    if isinstance(value, str) and value[:2].lower() == "0x":
        try:
            value = int(value, 16)
        except ValueError:
            raise CapkError(f"{where}: index: not hex") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise CapkError(f"{where}: index: must be 0..255 or \"0x00\"..\"0xFF\"")
    return value


def _expiry(value: Any, where: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise CapkError(f"{where}: expiry: must be a date YYYY-MM-DD") from None


def _capk(entry: Mapping[str, Any], where: str) -> CaPublicKey:
    unknown = sorted(set(entry) - set(_CAPK_KEYS))
    if unknown:
        raise CapkError(f"{where}: unknown key {unknown[0]}")
    rid = _hex(entry, "rid", where)
    if len(rid) != 5:
        raise CapkError(f"{where}: rid: must be 10 hex digits")
    modulus = _hex(entry, "modulus", where)
    if not 0 < len(modulus) <= MAX_MODULUS or modulus[0] == 0:
        raise CapkError(f"{where}: modulus: must be 1..{MAX_MODULUS} bytes, no leading 00")
    exponent = entry.get("exponent")
    if type(exponent) is not int or exponent not in (3, 65537):
        raise CapkError(f"{where}: exponent: must be 3 or 65537")
    key = CaPublicKey(rid.hex().upper(), _index(entry.get("index"), where), modulus,
                      exponent, _expiry(entry.get("expiry"), where))
    checksum = _hex(entry, "checksum", where)
    if checksum != capk_checksum(key.rid, key.index, key.modulus, key.exponent):
        raise CapkError(f"{where}: checksum: does not match RID, index, modulus, exponent")
    return key


def load_capks(path: str | Path) -> dict[tuple[str, int], CaPublicKey]:
    """Read `[[capk]]` entries; (RID, index) -> key. Blocks on one small file read.

    Raises CapkError naming the file and the entry for unreadable TOML, unknown keys,
    bad hex, a wrong checksum or a duplicate (RID, index).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CapkError(f"{path}: {exc}") from None
    if set(data) - {"capk"} or not isinstance(data.get("capk", []), list):
        raise CapkError(f"{path}: only [[capk]] entries are allowed")
    keys: dict[tuple[str, int], CaPublicKey] = {}
    for number, entry in enumerate(data.get("capk", []), 1):
        where = f"{path}: [[capk]] #{number}"
        if not isinstance(entry, dict):
            raise CapkError(f"{where}: must be a table")
        key = _capk(entry, where)
        if (key.rid, key.index) in keys:
            raise CapkError(f"{where}: duplicate RID {key.rid} index {key.index:02X}")
        keys[(key.rid, key.index)] = key
    return keys


# --- static data to be authenticated (Book 3 10.3) -------------------------------------

def _record_value(sfi: int, raw: bytes) -> bytes:
    try:
        nodes = tlv.parse(raw)
    except tlv.TlvError:
        raise OdaError(f"record in SFI {sfi} is not TLV") from None
    if len(nodes) != 1 or nodes[0].tag != "70":
        raise OdaError(f"record in SFI {sfi} is not a 70 template")
    return nodes[0].value


def static_data(records: Sequence[tuple[int, bytes]], aip: bytes,
                sda_tag_list: bytes | None) -> bytes:
    """The static data to be authenticated, from the records the AFL marks for ODA.

    `records`: (SFI, raw READ RECORD data) in AFL order. SFI 1..10 contribute the value
    inside their 70 template, SFI 11..30 the whole record. With 9F4A (`sda_tag_list`)
    present it must be "82" and the AIP is appended. OdaError otherwise: the kernel
    then passes `static=None` to `perform_oda`, which fails the chosen method.
    """
    out = bytearray()
    for sfi, raw in records:
        out += _record_value(sfi, raw) if 1 <= sfi <= 10 else raw
    if sda_tag_list is not None:
        if sda_tag_list != b"\x82":
            raise OdaError("SDA tag list names tags other than the AIP")
        out += aip
    return bytes(out)


# --- RSA recovery and certificates (Book 2 5.3, 5.4, 6.3, 6.4, 6.5) ----------------------

@dataclass(frozen=True)
class _Key:
    modulus: bytes
    exponent: int


def _recover(signed: bytes, key: _Key, fmt: int, what: str) -> bytes:
    """RSA-recover `signed` and check length, header, format and trailer."""
    if len(signed) != len(key.modulus):
        raise OdaError(f"{what}: length differs from the key")
    if len(signed) < MIN_MODULUS:
        raise OdaError(f"{what}: key too short")
    n = int.from_bytes(key.modulus, "big")
    value = int.from_bytes(signed, "big")
    if value >= n:
        raise OdaError(f"{what}: not below the modulus")
    plain = pow(value, key.exponent, n).to_bytes(len(signed), "big")
    if plain[0] != HEADER or plain[-1] != TRAILER:
        raise OdaError(f"{what}: bad header or trailer")
    if plain[1] != fmt:
        raise OdaError(f"{what}: wrong format")
    return plain


def _check_hash(plain: bytes, extra: bytes, what: str) -> None:
    """Hash over format .. last field (without header, hash, trailer) || extra."""
    if hashlib.sha1(plain[1:-HASH_LEN - 1] + extra).digest() != plain[-HASH_LEN - 1:-1]:
        raise OdaError(f"{what}: hash mismatch")


def _mmyy_expired(mmyy: bytes, today: date) -> bool:
    text = mmyy.hex()
    if not text.isdigit() or not 1 <= int(text[:2]) <= 12:
        return True
    year = 2000 + int(text[2:]) if int(text[2:]) < 50 else 1900 + int(text[2:])
    return (year, int(text[:2])) < (today.year, today.month)


def _digits(cn: bytes) -> str:
    """Digits of a compressed numeric field (F padding dropped); "" if malformed."""
    text = cn.hex().upper().rstrip("F")
    return text if text.isdigit() else ""


def _key_certificate(signed: bytes, signer: _Key, fmt: int, owner_len: int,
                     remainder: bytes, exponent: bytes, extra: bytes,
                     today: date, what: str) -> tuple[str, _Key]:
    """Recover an issuer (fmt 02) or ICC (fmt 04) public key certificate.

    Layout after the header: format, owner (issuer id / PAN), expiry MMYY, serial (3),
    hash algo, PK algo, PK length, PK exponent length, PK or its leftmost bytes, hash,
    trailer. Returns the owner digits and the certified key.
    """
    plain = _recover(signed, signer, fmt, what)
    _check_hash(plain, remainder + exponent + extra, what)
    pos = 2 + owner_len
    owner, expiry = plain[2:pos], plain[pos:pos + 2]
    hash_algo, pk_algo, pk_len = plain[pos + 5], plain[pos + 6], plain[pos + 7]
    if hash_algo != SHA1 or pk_algo != RSA:
        raise OdaError(f"{what}: unknown algorithm")
    if _mmyy_expired(expiry, today):
        raise OdaError(f"{what}: expired")
    field = plain[pos + 9:-HASH_LEN - 1]
    modulus = field[:pk_len] if pk_len <= len(field) else field + remainder
    if len(modulus) != pk_len or not exponent:
        raise OdaError(f"{what}: key remainder or exponent missing")
    return _digits(owner), _Key(modulus, int.from_bytes(exponent, "big"))


def _ca_key(capks: Mapping[tuple[str, int], CaPublicKey], aid: str, index: bytes,
            today: date) -> _Key:
    if len(index) != 1:
        raise OdaError("CA key index malformed")
    capk = capks.get((aid[:10].upper(), index[0]))
    if capk is None:
        raise OdaError("CA public key not held")
    if capk.expiry is not None and capk.expiry < today:
        raise OdaError("CA public key expired")
    return _Key(capk.modulus, capk.exponent)


def _issuer_key(capks, aid: str, card: Mapping[str, bytes], today: date) -> _Key:
    ca = _ca_key(capks, aid, card["8F"], today)
    issuer_id, key = _key_certificate(card["90"], ca, FORMAT_ISSUER, ISSUER_ID_LEN,
                                      card.get("92", b""), card["9F32"], b"", today,
                                      "issuer certificate")
    pan = _digits(card["5A"])
    if not 3 <= len(issuer_id) <= 8 or not pan.startswith(issuer_id):
        raise OdaError("issuer certificate: issuer identifier does not match the PAN")
    return key


def _verify_ssad(ssad: bytes, issuer: _Key, static: bytes) -> None:
    plain = _recover(ssad, issuer, FORMAT_SSAD, "signed static data")
    if plain[2] != SHA1:
        raise OdaError("signed static data: unknown hash algorithm")
    _check_hash(plain, static, "signed static data")


def _icc_key(issuer: _Key, card: Mapping[str, bytes], static: bytes, today: date) -> _Key:
    pan, key = _key_certificate(card["9F46"], issuer, FORMAT_ICC, PAN_LEN,
                                card.get("9F48", b""), card["9F47"], static, today,
                                "ICC certificate")
    if not pan or pan != _digits(card["5A"]):
        raise OdaError("ICC certificate: PAN does not match")
    return key


def verify_sdad(sdad: bytes, icc_modulus: bytes, icc_exponent: int,
                ddol_data: bytes) -> bytes:
    """Check Signed Dynamic Application Data (Book 2 6.5.2); returns the ICC Dynamic Data.

    The ICC Dynamic Data starts with the ICC Dynamic Number's length and value (9F4C).
    Raises OdaError with a short reason.
    """
    what = "dynamic signature"
    plain = _recover(sdad, _Key(icc_modulus, icc_exponent), FORMAT_SDAD, what)
    if plain[2] != SHA1:
        raise OdaError(f"{what}: unknown hash algorithm")
    end = 4 + plain[3]
    if end > len(plain) - HASH_LEN - 1:
        raise OdaError(f"{what}: dynamic data too long")
    if any(b != PAD for b in plain[end:-HASH_LEN - 1]):
        raise OdaError(f"{what}: bad padding")
    _check_hash(plain, ddol_data, what)
    return plain[4:end]


def _sdad_from(response: bytes) -> bytes:
    """INTERNAL AUTHENTICATE response: 80 (format 1) or 77 with 9F4B (format 2)."""
    try:
        nodes = tlv.parse(response)
    except tlv.TlvError:
        raise OdaError("INTERNAL AUTHENTICATE response is not TLV") from None
    if len(nodes) == 1 and nodes[0].tag == "80":
        return nodes[0].value
    sdad = tlv.find(nodes, "9F4B") if len(nodes) == 1 and nodes[0].tag == "77" else None
    if sdad is None:
        raise OdaError("INTERNAL AUTHENTICATE response holds no signature")
    return sdad.value


def _ddol_data(card: Mapping[str, bytes], terminal_values: Mapping[str, bytes]) -> bytes:
    try:
        dol = tlv.parse_dol(card.get("9F49", DEFAULT_DDOL))
    except tlv.TlvError:
        raise OdaError("DDOL malformed") from None
    if "9F37" not in (tag for tag, _ in dol):
        raise OdaError("DDOL lacks the unpredictable number")
    return tlv.build_dol(dol, terminal_values)


# --- the kernel step (Book 3 10.3) ---------------------------------------------------

def _choose(aip: bytes, terminal_caps: bytes) -> str:
    if len(terminal_caps) != 3:
        raise ValueError("terminal capabilities (9F33) must be 3 bytes")
    card = aip[0] if aip else 0
    if card & 0x20 and terminal_caps[2] & 0x40:
        return "dda"
    if card & 0x40 and terminal_caps[2] & 0x80:
        return "sda"
    return "none"


def _require(card: Mapping[str, bytes], tags: Sequence[str]) -> None:
    missing = [tag for tag in tags if tag not in card]
    if missing:
        raise _DataMissing(f"tag {missing[0]} missing")


def _sda(capks, aid, card, static, today) -> None:
    _require(card, SDA_TAGS)
    _verify_ssad(card["93"], _issuer_key(capks, aid, card, today), static)


def _dda(capks, aid, card, static, today, internal_authenticate, terminal_values) -> None:
    _require(card, DDA_TAGS)
    icc = _icc_key(_issuer_key(capks, aid, card, today), card, static, today)
    ddol_data = _ddol_data(card, terminal_values)
    sdad = _sdad_from(internal_authenticate(ddol_data))
    verify_sdad(sdad, icc.modulus, icc.exponent, ddol_data)


def perform_oda(*, capks: Mapping[tuple[str, int], CaPublicKey], aid: str, aip: bytes,
                card: Mapping[str, bytes], static: bytes | None, terminal_caps: bytes,
                internal_authenticate: Callable[[bytes], bytes],
                terminal_values: Mapping[str, bytes], today: date, tvr, tsi) -> str:
    """Choose and perform SDA or DDA; set TVR/TSI; return "dda", "sda" or "none".

    `card`: the card's tags (flattened records and GPO); `static`: from `static_data`,
    or None when that raised (the chosen method then fails). `terminal_values`: what
    the DDOL may ask for (9F37 at least). `internal_authenticate(ddol_data)` sends
    INTERNAL AUTHENTICATE and returns the response data (80 or 77 template).
    """
    method = _choose(aip, terminal_caps)
    if method == "none":
        tvr.set("oda_not_performed")
        log.info("ODA not performed (card or terminal does not support SDA/DDA)")
        return method
    if method == "sda":
        tvr.set("sda_selected")
    tsi.set("oda_performed")
    try:
        if static is None:
            raise OdaError("records for ODA unusable")
        if method == "sda":
            _sda(capks, aid, card, static, today)
        else:
            _dda(capks, aid, card, static, today, internal_authenticate, terminal_values)
    except OdaError as exc:
        if isinstance(exc, _DataMissing):
            tvr.set("icc_data_missing")
        tvr.set(f"{method}_failed")
        log.warning("ODA %s failed: %s", method.upper(), exc.reason)
        return method
    log.info("ODA %s ok", method.upper())
    return method
