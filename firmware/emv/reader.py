"""Chip read building blocks: application selection, GPO, records, identity, field 55.

Synchronous and blocking: runs on the card reader's single worker thread and only talks
to the card through firmware.emv.apdu.Card. Every loop is bounded by the card's own
(checked) lists and by MAX_* constants, so a card answering garbage ends in CardReadError,
never another exception or a hang. The transaction itself (CVM, ODA, risk management,
GENERATE AC 1 and 2) is firmware.emv.kernel.EmvSession, built on these pieces.
Logs carry only the masked PAN and AIDs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from firmware.cardsafe import luhn_ok
from firmware.emv import apdu, tlv
from firmware.emv.action import cryptogram_type
from firmware.emv.apdu import ApduError, Card
from firmware.emv.card import CardReadError

__all__ = ["TerminalParams", "terminal_values", "FIELD55_TAGS"]

log = logging.getLogger("kpos.emv")

PSE = b"1PAY.SYS.DDF01"
PPSE = b"2PAY.SYS.DDF01"
MAX_DIRECTORY_RECORDS = 16
MAX_RECORD_DATA = 256  # a short R-APDU carries at most 256 data bytes (ISO 7816-4 Ne)
MAX_PAN_DIGITS = 19  # 5A is cn..19; field 2 is n..19
MAX_TRACK2 = 37  # 57 as text with its '=' separator; field 35 is z..37
MAX_LABEL = 16  # 50 / 9F12 are ans 1-16; longer labels are cut for screens and receipts
MAX_IAD = 32  # 9F10 issuer application data is b..32
SW_NO_PSE = (0x6A82, 0x6A81, 0x6283)  # not found, function not supported, PSE blocked
SW_RECORD_NOT_FOUND = 0x6A83

# Field 55 content and order (UnionPay style); absent optional tags are skipped.
FIELD55_TAGS = ("9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A",
                "82", "9F1A", "9F03", "9F33", "9F34", "9F35", "9F1E", "84", "9F09", "9F41")
FIELD55_REQUIRED = ("9F26", "9F27", "9F36", "82", "9F37", "9F02")
CVM_RESULTS_NONE = "3F0000"  # no CVM performed; the CVM step will set this later


@dataclass(frozen=True)
class TerminalParams:
    country: str = "0156"  # 9F1A, n4
    terminal_type: str = "22"  # 9F35: attended, merchant, online with offline capability
    # 9F33: manual, magstripe, IC; offline plaintext PIN, online PIN, signature, no CVM; SDA, DDA
    capabilities: str = "E0E8C0"
    additional_capabilities: str = "6000F0A001"  # 9F40
    ifd_serial: str = "KPOS0001"  # 9F1E, an8
    known_aids: tuple[str, ...] = ("A000000333010101", "A000000333010102", "A000000333010103",
                                   "A0000000031010", "A0000000041010")
    app_version: str = "0030"  # 9F09, terminal's application version number
    # 9F66 TTQ: contactless qVSDC/qPBOC, contact EMV, online PIN and signature supported.
    ttq: str = "36000000"


@dataclass(frozen=True)
class _App:
    aid: str
    label: str
    priority: int  # 1 highest .. 15, 16 = no priority given
    confirm: bool = False  # 87 bit 8: the cardholder must confirm this application


def _bcd(number: int, length: int) -> bytes:
    return bytes.fromhex(f"{number:0{length * 2}d}")


def terminal_values(params: TerminalParams, *, amount: int, currency: int, when: datetime,
                    unpredictable: bytes, contactless: bool = False,
                    sequence: int = 1) -> dict[str, bytes]:
    """Terminal-sourced data objects for PDOL/CDOL filling and field 55 (pure)."""
    if not 0 <= amount <= 999_999_999_999:
        raise ValueError(f"amount {amount} out of range for 9F02")
    if not 0 <= currency <= 999 or not 0 <= sequence <= 99_999_999:
        raise ValueError(f"currency {currency} or sequence {sequence} out of range")
    if len(unpredictable) != 4:
        raise ValueError("unpredictable number must be 4 bytes")
    values = {
        "9F02": _bcd(amount, 6), "9F03": bytes(6), "9F1A": bytes.fromhex(params.country),
        "95": bytes(5), "5F2A": _bcd(currency, 2), "9A": bytes.fromhex(when.strftime("%y%m%d")),
        "9F21": bytes.fromhex(when.strftime("%H%M%S")), "9C": b"\x00",
        "9F37": bytes(unpredictable), "9F35": bytes.fromhex(params.terminal_type),
        "9F33": bytes.fromhex(params.capabilities),
        "9F40": bytes.fromhex(params.additional_capabilities),
        "9F1E": params.ifd_serial.encode("ascii")[:8].ljust(8),
        "9F34": bytes.fromhex(CVM_RESULTS_NONE), "9F09": bytes.fromhex(params.app_version),
        "9F41": _bcd(sequence, 4),
    }
    if contactless:
        values["9F66"] = bytes.fromhex(params.ttq)
    return values


# --- application selection -------------------------------------------------------


def _candidates(card: Card, params: TerminalParams, contactless: bool) -> list[_App]:
    resp = card.exchange(apdu.select(PPSE if contactless else PSE))
    apps: list[_App] = []
    if resp.ok:
        apps = _directory(card, tlv.parse(resp.data), contactless)
    elif resp.sw not in SW_NO_PSE:
        raise ApduError("SELECT", resp.sw, "PPSE" if contactless else "PSE")
    supported = [a for a in apps if _supported(a.aid, params.known_aids)]
    if supported:
        return supported
    log.info("no usable directory (SW %04X): trying %d known AIDs", resp.sw,
             len(params.known_aids))
    return _select_known(card, params.known_aids)


def _supported(aid: str, known: tuple[str, ...]) -> bool:
    return any(aid.startswith(k) for k in known)


def _directory(card: Card, fci: list[tlv.Tlv], contactless: bool) -> list[_App]:
    if contactless:
        return _apps_from(tlv.find_all(fci, "BF0C"))
    sfi_node = tlv.find(fci, "88")
    if sfi_node is None or len(sfi_node.value) != 1 or not 1 <= sfi_node.value[0] <= 30:
        raise CardReadError("malformed PSE")
    return _apps_from(_directory_records(card, sfi_node.value[0]))


def _directory_records(card: Card, sfi: int) -> list[tlv.Tlv]:
    records: list[tlv.Tlv] = []
    for number in range(1, MAX_DIRECTORY_RECORDS + 1):
        resp = card.exchange(apdu.read_record(sfi, number))
        if resp.sw == SW_RECORD_NOT_FOUND:
            break
        if not resp.ok:
            raise ApduError("READ RECORD", resp.sw, "PSE directory")
        records += _record(resp.data, "malformed directory record")
    return records


def _apps_from(nodes: list[tlv.Tlv]) -> list[_App]:
    apps = []
    for entry in tlv.find_all(nodes, "61"):
        fields = tlv.flatten(entry.children or ())
        if "4F" in fields and 5 <= len(fields["4F"]) <= 16:
            apps.append(_App(fields["4F"].hex().upper(), _label(fields),
                             _priority(fields.get("87")), _confirm(fields.get("87"))))
    return apps


def _select_known(card: Card, known_aids: tuple[str, ...]) -> list[_App]:
    apps = []
    for aid in known_aids:
        resp = card.exchange(apdu.select(bytes.fromhex(aid)))
        if not resp.ok:  # 6A82 not on this card, 6283 blocked, anything else: skip it
            continue
        fields = tlv.flatten(tlv.parse(resp.data))
        df_name = fields.get("84", b"").hex().upper()
        if df_name.startswith(aid):
            apps.append(_App(df_name, _label(fields), _priority(fields.get("87"))))
    return apps


def _priority(value: bytes | None) -> int:
    return (value[0] & 0x0F) or 16 if value and len(value) == 1 else 16


def _confirm(value: bytes | None) -> bool:
    return bool(value and len(value) == 1 and value[0] & 0x80)


def _label(fields: Mapping[str, bytes]) -> str:
    raw = fields.get("50") or fields.get("9F12") or b""
    text = "".join(ch for ch in raw.decode("latin-1") if ch.isprintable())
    return text[:MAX_LABEL].strip()


def _select_app(card: Card, aid: str) -> dict[str, bytes]:
    fci = tlv.parse(card.command(apdu.select(bytes.fromhex(aid))))
    fields = tlv.flatten(fci)
    if tlv.find(fci, "6F") is None or fields.get("84", b"").hex().upper() != aid:
        raise CardReadError("malformed application FCI")
    log.debug("selected aid=%s", aid)
    return fields


def _record(data: bytes, reason: str) -> list[tlv.Tlv]:
    """The objects in a READ RECORD answer: one 70 template that fits a short R-APDU."""
    if len(data) > MAX_RECORD_DATA:
        raise CardReadError("oversized record")
    return _template(data, "70", reason)


def _template(data: bytes, tag: str, reason: str) -> list[tlv.Tlv]:
    nodes = tlv.parse(data)
    if len(nodes) != 1 or nodes[0].tag != tag:
        raise CardReadError(reason)
    return list(nodes[0].children or ())


# --- GPO, records, GENERATE AC ----------------------------------------------------


def _dol_data(dol_bytes: bytes, terminal: Mapping[str, bytes]) -> tuple[bytes, dict[str, bytes]]:
    dol = tlv.parse_dol(dol_bytes)
    data = tlv.build_dol(dol, terminal)
    return data, tlv.split_dol(dol, data)


def _gpo(card: Card, fci: Mapping[str, bytes],
         terminal: Mapping[str, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    data, sent = _dol_data(fci.get("9F38", b""), terminal)
    if len(data) > 250:
        raise CardReadError("PDOL too long")
    nodes = tlv.parse(card.command(apdu.get_processing_options(data)))
    if len(nodes) != 1 or nodes[0].tag not in ("80", "77"):
        raise CardReadError("malformed GPO response")
    if nodes[0].tag == "80":
        raw = nodes[0].value
        if len(raw) < 2:
            raise CardReadError("malformed GPO response")
        return sent, {"82": raw[:2], "94": raw[2:]}
    fields = tlv.flatten(nodes[0].children or ())
    if "82" not in fields or "94" not in fields:
        raise CardReadError("GPO response lacks AIP or AFL")
    return sent, fields


def _check_cryptogram(card_data: Mapping[str, bytes]) -> str:
    """The cryptogram's type ("AAC", "TC", "ARQC") once its data objects are sane."""
    cid, atc = card_data.get("9F27", b""), card_data.get("9F36", b"")
    ac = card_data.get("9F26", b"")
    if len(cid) != 1 or len(atc) != 2 or len(ac) != 8:
        raise CardReadError("malformed cryptogram")
    if len(card_data.get("9F10", b"")) > MAX_IAD:
        raise CardReadError("malformed tag 9F10")
    kind = cryptogram_type(cid[0])
    if kind == "RFU":
        raise CardReadError(f"unexpected cryptogram type {cid[0]:02X}")
    return kind


# --- results ----------------------------------------------------------------------


def _field55(terminal: Mapping[str, bytes], sent: Mapping[str, bytes],
             card_data: Mapping[str, bytes], aid: str) -> bytes:
    """Field 55: what the card saw (sent DOL data) wins over fresh terminal values."""
    values = {**terminal, **sent, "84": bytes.fromhex(aid)}
    for tag in ("9F26", "9F27", "9F10", "9F36", "82"):
        if tag in card_data:
            values[tag] = card_data[tag]
    missing = [t for t in FIELD55_REQUIRED if t not in values]
    if missing:
        raise CardReadError(f"missing tag {missing[0]}")
    return b"".join(tlv.encode(t, values[t]) for t in FIELD55_TAGS if t in values)


def _digits(raw: bytes, tag: str) -> str:
    text = raw.hex().upper().rstrip("F")
    if not text.isdigit():
        raise CardReadError(f"malformed tag {tag}")
    return text


def _track2(raw: bytes, pan: str) -> str:
    text = raw.hex().upper().rstrip("F").replace("D", "=")
    if (text.count("=") != 1 or not text.replace("=", "").isdigit()
            or len(text) > MAX_TRACK2):
        raise CardReadError("malformed track 2 equivalent")
    if text.split("=", 1)[0] != pan:
        raise CardReadError("track 2 does not match the PAN")
    return text


@dataclass(frozen=True, repr=False)
class _Identity:
    """The card's static data, checked before GENERATE AC (repr hides the PAN)."""

    pan: str
    expiry: str  # YYMM
    pan_seq: str | None
    track2: str


def _identity(fields: Mapping[str, bytes]) -> _Identity:
    for tag in ("5A", "5F24", "57"):
        if tag not in fields:
            raise CardReadError(f"missing tag {tag}")
    pan = _digits(fields["5A"], "5A")
    if len(pan) > MAX_PAN_DIGITS:
        raise CardReadError("malformed tag 5A")
    if not luhn_ok(pan):
        raise CardReadError("PAN fails the Luhn check")
    expiry = _digits(fields["5F24"], "5F24")
    if len(expiry) != 6 or not 1 <= int(expiry[2:4]) <= 12:
        raise CardReadError("malformed tag 5F24")
    psn = fields.get("5F34")
    return _Identity(pan, expiry[:4], _pan_seq(psn) if psn else None,
                     _track2(fields["57"], pan))


def _pan_seq(raw: bytes) -> str:
    """5F34 is n2 in one byte: exactly two decimal digits."""
    text = raw.hex()
    if len(raw) != 1 or not text.isdigit():
        raise CardReadError("malformed tag 5F34")
    return text
