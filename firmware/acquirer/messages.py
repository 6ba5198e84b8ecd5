"""ISO 8583 acquirer messages: encode/decode, framing, request builders, response matching.

Pure functions, any thread, no I/O except `read_frame` (a coroutine on the terminal's
event loop, no timeout of its own: the caller bounds it). Field dicts follow pyiso8583:
"t" is the MTI, "2".."128" are fields; values are str, or bytes for binary fields
(52 PIN block, 55 ICC data, 64 MAC). Amounts are int minor units. Field 52 is 8 bytes
(format 0) or 16 (format 4, an AES terminal): `encode` takes the spec its length names,
`decode` the spec of the pin_format it is given (spec.SPECS), `decode_request` the one of
the terminal the request names (field 41, which precedes 52 on the wire). Every error is a
MessageError whose text starts with the field, e.g. "field 4: not numeric".
Field layout: docs/acquirer-protocol.md. Never log a field dict: log `describe(fields)`.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import iso8583

from firmware.acquirer.spec import BINARY_FIELDS, NUMERIC_FIELDS, PIN_BLOCK_LEN, SPECS
from firmware.cardsafe import mask_pan
from firmware.emv.card import CardData
from firmware.money import CURRENCIES, format_amount

__all__ = [
    "MessageError", "encode", "decode", "decode_request", "frame", "read_frame", "MAX_FRAME",
    "TerminalIds", "WorkingKeys", "AesWorkingKeys", "SIGNON_CODES", "signon_request", "echo_request", "sale_request",
    "reversal_request", "advice_request", "ADVICE_CODES", "is_echo",
    "REVERSAL_REASONS", "response_mti", "match_response", "parse_working_keys",
    "working_keys_field", "describe",
    # field builders the other message modules (txn_messages, qrpay, settlement) share
    "trace_fields", "amount_field", "batch_field", "currency_field", "card_request",
    "card_fields", "in_field_order",
]

MAX_FRAME = 8192  # bytes of message after the 2-byte length

# Field 39 of a reversal: why the terminal reverses (UnionPay, FIELD-NOTES §1).
REVERSAL_REASONS = {
    "98": "no response in time",
    "A0": "response MAC failed",
    "06": "other (e.g. mismatched or malformed response)",
}

_PROCESSING_SALE = "000000"
_MSG_TYPE_SALE = "22"  # 60.1
_MSG_TYPE_MGMT = "00"  # 60.1 of network management messages
_MGMT_SIGNON_DOUBLE = "003"  # 60.3: sign-on, double-length keys
_MGMT_SIGNON_AES = "004"  # 60.3: sign-on, AES-256 key blocks (a pin_format 4 terminal)
SIGNON_CODES = {0: _MGMT_SIGNON_DOUBLE, 4: _MGMT_SIGNON_AES}  # [security] pin_format -> 60.3
_MGMT_ECHO = "301"  # 60.3: echo test (link health)
_MGMT_NONE = "000"
_MSG_TYPE_OFFLINE_SALE = "30"  # 60.1 of an offline sale advice (0220)
# Field 39 an advice carries: how the terminal approved it offline (EMV Book 4 A6 codes).
ADVICE_CODES = {
    "Y1": "offline approved by the card (TC at the first GENERATE AC)",
    "Y3": "host unreachable, approved by the card (TC at the second GENERATE AC)",
    "00": "store-and-forward: approved by the terminal, the host authorises later",
}
# Removed when a request is cloned into a reversal: track 2/3, PIN block, security
# control info, MAC (recomputed by the sender).
_REVERSAL_DROP = ("35", "36", "52", "53", "64", "128")
_KEYS_HEX_LEN = 80  # field 62: 16 + 4 + 16 + 4 bytes as hex
_AES_KCV_HEX = 6  # field 62 of an AES sign-on: each TR-31 block is followed by a 3-byte KCV
_FORMAT_OF_PIN_BLOCK = {n: fmt for fmt, n in PIN_BLOCK_LEN.items()}  # 52 length -> pin_format


class MessageError(ValueError):
    """A message cannot be built, encoded or decoded; the text names the field."""


# --- encode / decode ---------------------------------------------------------


def encode(fields: dict) -> bytes:
    """Unframed message bytes (MTI + bitmap + fields). Does not modify `fields`."""
    doc = {k: v for k, v in fields.items() if k not in ("p", "1")}
    _check_types(doc)
    _check_content(doc)
    spec = SPECS[_FORMAT_OF_PIN_BLOCK.get(len(doc.get("52", b"")), 0)]  # else pyiso8583 says
    for key in BINARY_FIELDS & doc.keys():  # pyiso8583 takes binary fields as hex text
        doc[key] = doc[key].hex()
    try:
        raw, _ = iso8583.encode(doc, spec)
    except iso8583.EncodeError as exc:
        raise MessageError(f"field {exc.field}: {exc.msg}") from exc
    except KeyError as exc:
        raise MessageError(f"field {exc.args[0]}: not defined in spec") from exc
    return bytes(raw)


def decode(raw: bytes, pin_format: int = 0) -> dict:
    """Field dict of an unframed message (without bitmap keys), field 52 read at the length
    of `pin_format` (0: 8 bytes, 4: 16). Raises MessageError only."""
    if not isinstance(raw, (bytes, bytearray)):
        raise MessageError(f"field t: message must be bytes, not {type(raw).__name__}")
    try:
        doc, _ = iso8583.decode(bytes(raw), SPECS[pin_format])
    except iso8583.DecodeError as exc:
        raise MessageError(f"field {exc.field}: {exc.msg} (pos {exc.pos})") from exc
    except KeyError as exc:  # bitmap announces a field the spec lacks (e.g. tertiary)
        raise MessageError(f"field {exc.args[0]}: not defined in spec") from exc
    doc.pop("p", None)
    doc.pop("1", None)
    for key in BINARY_FIELDS & doc.keys():  # pyiso8583 returns binary fields as hex text
        doc[key] = bytes.fromhex(doc[key])
    _check_content(doc)
    return doc


def decode_request(raw: bytes, pin_format_of) -> dict:
    """A request whose field 52 is read at the length of its terminal's pin format
    (`pin_format_of(terminal id)` -> 0 or 4, the host's records). Field 41 comes before 52,
    so any spec that reads the message names the terminal. Raises MessageError only."""
    error = None
    for fmt in PIN_BLOCK_LEN:
        try:
            doc = decode(raw, fmt)
        except MessageError as exc:
            error = error or exc
            continue
        want = pin_format_of(doc.get("41", ""))
        if "52" not in doc or want == fmt:
            return doc
        return decode(raw, want)
    raise error


def _check_types(doc: dict) -> None:
    for key, value in doc.items():
        if not isinstance(key, str) or not (key == "t" or key.isdigit()):
            raise MessageError(f"field {key!r}: not a field key")
        want = bytes if key in BINARY_FIELDS else str
        if not isinstance(value, want):
            raise MessageError(f"field {key}: must be {want.__name__}, got {type(value).__name__}")


def _check_content(doc: dict) -> None:
    mti = doc.get("t")
    if mti is None:
        raise MessageError("field t: MTI missing")
    if not (len(mti) == 4 and mti.isdigit() and mti.isascii()):
        raise MessageError(f"field t: MTI {mti!r} is not 4 digits")
    bad = [key for key in NUMERIC_FIELDS & doc.keys()
           if not (doc[key].isdigit() and doc[key].isascii())]
    if bad:
        raise MessageError(f"field {min(bad, key=int)}: not numeric")  # the first one


# --- framing -----------------------------------------------------------------


def frame(msg: bytes) -> bytes:
    """2-byte big-endian length + msg."""
    if not 0 < len(msg) <= MAX_FRAME:
        raise MessageError(f"frame: length {len(msg)} outside 1..{MAX_FRAME}")
    return len(msg).to_bytes(2, "big") + msg


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One unframed message. MessageError on a bad length, IncompleteReadError on EOF."""
    length = int.from_bytes(await reader.readexactly(2), "big")
    if not 0 < length <= MAX_FRAME:
        raise MessageError(f"frame: length {length} outside 1..{MAX_FRAME}")
    return await reader.readexactly(length)


# --- request builders ----------------------------------------------------------


@dataclass(frozen=True)
class TerminalIds:
    terminal_id: str  # field 41, 8 characters
    merchant_id: str  # field 42, 15 characters

    def __post_init__(self) -> None:
        _require_len("41", "terminal id", self.terminal_id, 8)
        _require_len("42", "merchant id", self.merchant_id, 15)


@dataclass(frozen=True, repr=False)
class WorkingKeys:
    pik_enc: bytes  # PIN key under the TMK, 16 bytes
    pik_kcv: bytes  # 4 bytes
    mak_enc: bytes  # MAC key under the TMK, 16 bytes
    mak_kcv: bytes  # 4 bytes

    def __post_init__(self) -> None:
        for name, size in (("pik_enc", 16), ("pik_kcv", 4), ("mak_enc", 16), ("mak_kcv", 4)):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise MessageError(f"field 62: {name} must be {size} bytes")

    def __repr__(self) -> str:  # ciphertext only, but keep key material out of logs
        pik, mak = self.pik_kcv.hex().upper(), self.mak_kcv.hex().upper()
        return f"WorkingKeys(pik_kcv={pik}, mak_kcv={mak})"


@dataclass(frozen=True, repr=False)
class AesWorkingKeys:
    """The working keys of an AES sign-on (60.3 = 004): TR-31 version D key blocks under
    the AES TMK, each with its 3-byte AES KCV (firmware.keys.aes_kcv)."""

    pik_block: str  # TR-31 block, key usage P0
    pik_kcv: bytes  # 3 bytes
    mak_block: str  # TR-31 block, key usage M6 (CMAC)
    mak_kcv: bytes  # 3 bytes

    def __repr__(self) -> str:
        pik, mak = self.pik_kcv.hex().upper(), self.mak_kcv.hex().upper()
        return f"AesWorkingKeys(pik_kcv={pik}, mak_kcv={mak})"


def signon_request(ids: TerminalIds, *, stan: int, batch: int, now: datetime,
                   operator: str = "01", pin_format: int = 0) -> dict:
    """0800 sign-on asking for the working keys of `pin_format` (SIGNON_CODES: 60.3 = 003
    double-length TDES keys, 004 AES-256 key blocks)."""
    if not (operator and len(operator) <= 3 and operator.isascii()):
        raise MessageError("field 63: operator code must be 1-3 ASCII characters")
    return {
        "t": "0800",
        **trace_fields(stan, now),
        "41": ids.terminal_id,
        "42": ids.merchant_id,
        "60": _MSG_TYPE_MGMT + batch_field(batch) + SIGNON_CODES[pin_format],
        "63": operator.ljust(3),
    }


def echo_request(ids: TerminalIds, *, stan: int, batch: int, now: datetime) -> dict:
    """0800 echo test (60.3 = 301): is the host there? Answered 0810 with 39 = 00."""
    return {
        "t": "0800",
        **trace_fields(stan, now),
        "41": ids.terminal_id,
        "42": ids.merchant_id,
        "60": _MSG_TYPE_MGMT + batch_field(batch) + _MGMT_ECHO,
    }


def is_echo(fields: dict) -> bool:
    """True for an 0800/0810 echo test (60.3 = 301)."""
    return str(fields.get("t", ""))[:2] == "08" and str(fields.get("60", ""))[8:11] == _MGMT_ECHO


def sale_request(ids: TerminalIds, *, stan: int, batch: int, amount: int, currency: int,
                 card: CardData, pin_block: bytes | None, now: datetime) -> dict:
    """0200 sale (消费): processing code 000000, 60.1 = 22."""
    msg = {**card_request("0200", _PROCESSING_SALE, _MSG_TYPE_SALE, ids, stan=stan, batch=batch,
                          currency=currency, card=card, now=now),
           "4": amount_field(amount), **card_fields(card, pin_block)}
    return in_field_order(msg)


def card_request(mti: str, processing: str, msg_type: str, ids: TerminalIds, *, stan: int,
                 batch: int, currency: int, card: CardData, now: datetime) -> dict:
    """The fields every card request carries: MTI, PAN, processing code, trace, expiry,
    entry mode, condition code, terminal and merchant ids, currency, 60 (type + batch)."""
    return {
        "t": mti,
        "2": card.pan,
        "3": processing,
        **trace_fields(stan, now),
        "14": card.expiry,
        "22": card.entry_mode,
        "25": "00",
        "41": ids.terminal_id,
        "42": ids.merchant_id,
        "49": currency_field(currency),
        "60": msg_type + batch_field(batch) + _MGMT_NONE,
    }


def card_fields(card: CardData, pin_block: bytes | None) -> dict:
    """Fields 23, 35, 52, 55 of a request whose card is read and verified as for a sale
    (PAN sequence number, track 2, PIN block, chip data), each when there is one."""
    msg: dict = {}
    if card.pan_seq:
        msg["23"] = "0" + card.pan_seq
    if card.track2:
        msg["35"] = card.track2
    if pin_block is not None:
        if not isinstance(pin_block, bytes) or len(pin_block) not in _FORMAT_OF_PIN_BLOCK:
            raise MessageError("field 52: PIN block must be 8 (format 0) or 16 (format 4) bytes")
        msg["52"] = pin_block
    if card.icc_data:
        msg["55"] = bytes(card.icc_data)
    return msg


def in_field_order(msg: dict) -> dict:
    """`msg` with the MTI first, then the fields in ascending number (the wire order)."""
    return dict(sorted(msg.items(), key=lambda kv: -1 if kv[0] == "t" else int(kv[0])))


def reversal_request(original: dict, reason: str, repeat: bool = False) -> dict:
    """0400 (or 0401 repeat) cloned from `original`: same STAN, no track 2/PIN block/MAC,
    39 = reason, 61 = original batch (60.2) + original STAN."""
    if reason not in REVERSAL_REASONS:
        known = sorted(REVERSAL_REASONS)
        raise MessageError(f"field 39: reversal reason {reason!r} not in {known}")
    stan = original.get("11", "")
    batch = original.get("60", "")[2:8]
    if len(stan) != 6 or len(batch) != 6:
        raise MessageError("field 61: original needs field 11 (STAN) and 60.2 (batch)")
    msg = {k: v for k, v in original.items() if k not in _REVERSAL_DROP + ("p", "1")}
    msg["t"] = "0401" if repeat else "0400"
    msg["39"] = reason
    msg["61"] = batch + stan
    return msg


def advice_request(original: dict, *, code: str, icc_data: bytes | None,
                   repeat: bool = False) -> dict:
    """0220 offline sale advice (0221 on a repeat) built from the 0200 the terminal could
    not send (or would have sent): same STAN, time, amount and card fields, without track 2,
    the PIN block and the MAC; 60.1 = 30; 39 = how it was approved (ADVICE_CODES); 55 = the
    chip data of the final cryptogram (`icc_data`; None keeps the original 55, e.g. the
    ARQC of a store-and-forward approval). The repeat is byte-for-byte the same message
    apart from the MTI."""
    if code not in ADVICE_CODES:
        raise MessageError(f"field 39: advice code {code!r} not in {sorted(ADVICE_CODES)}")
    batch = str(original.get("60", ""))[2:8]
    if len(str(original.get("11", ""))) != 6 or len(batch) != 6:
        raise MessageError("field 60: original needs field 11 (STAN) and 60.2 (batch)")
    msg = {k: v for k, v in original.items() if k not in _REVERSAL_DROP + ("p", "1")}
    msg["t"] = "0221" if repeat else "0220"
    msg["39"] = code
    msg["60"] = _MSG_TYPE_OFFLINE_SALE + batch + _MGMT_NONE
    if icc_data is not None:
        msg["55"] = bytes(icc_data)
    return in_field_order(msg)


def trace_fields(stan: int, now: datetime) -> dict:
    if not isinstance(stan, int) or not 1 <= stan <= 999999:
        raise MessageError(f"field 11: STAN {stan!r} outside 1..999999")
    return {"11": f"{stan:06d}", "12": now.strftime("%H%M%S"), "13": now.strftime("%m%d")}


def amount_field(amount: int) -> str:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise MessageError(f"field 4: amount must be int minor units, got {type(amount).__name__}")
    if not 0 < amount <= 999_999_999_999:
        raise MessageError(f"field 4: amount {amount} outside 1..999999999999")
    return f"{amount:012d}"


def batch_field(batch: int) -> str:
    if not isinstance(batch, int) or not 0 <= batch <= 999999:
        raise MessageError(f"field 60: batch {batch!r} outside 0..999999")
    return f"{batch:06d}"


def currency_field(currency: int) -> str:
    if not isinstance(currency, int) or not 0 < currency <= 999:
        raise MessageError(f"field 49: currency {currency!r} is not an ISO 4217 number")
    return f"{currency:03d}"


def _require_len(field: str, name: str, value: str, size: int) -> None:
    if not isinstance(value, str) or len(value) != size or not value.isascii():
        raise MessageError(f"field {field}: {name} must be {size} ASCII characters")


# --- responses -----------------------------------------------------------------


def response_mti(request_mti: str) -> str:
    """MTI that answers `request_mti`: function digit +1, origin 0 (0401 -> 0410)."""
    if not (len(request_mti) == 4 and request_mti.isdigit() and request_mti[2] in "02468"):
        raise MessageError(f"field t: {request_mti!r} is not a request MTI")
    return request_mti[:2] + str(int(request_mti[2]) + 1) + "0"


# (field, label) compared when the request carries the field; the response must echo it.
_ECHOED = (("11", "STAN"), ("41", "terminal id"), ("42", "merchant id"),
           ("3", "processing code"), ("4", "amount"))


def match_response(request: dict, response: dict) -> str | None:
    """None when `response` answers `request`, else a short log-safe reason."""
    try:
        want_mti = response_mti(str(request.get("t", "")))
    except MessageError as exc:
        return str(exc)
    if response.get("t") != want_mti:
        return f"MTI {response.get('t')} does not answer {request.get('t')}"
    for field, label in _ECHOED:
        if field in request and response.get(field) != request[field]:
            return f"{label} {response.get(field, 'missing')} != {request[field]}"
    if "2" in request and "2" in response and request["2"] != response["2"]:
        return "PAN differs"
    return None


def parse_working_keys(signon_response: dict, pin_format: int = 0) -> WorkingKeys | AesWorkingKeys:
    """Working keys from field 62 of an 0810: pin_format 0: hex PIK+KCV+MAK+KCV, 80
    characters; 4: PIK TR-31 block + 6 hex KCV + MAK TR-31 block + 6 hex KCV."""
    text = signon_response.get("62")
    if text is None:
        raise MessageError("field 62: working keys absent")
    if pin_format == 4:
        return _parse_aes_keys(text)
    if len(text) != _KEYS_HEX_LEN:
        raise MessageError(f"field 62: {len(text)} characters, expecting {_KEYS_HEX_LEN}")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise MessageError("field 62: not hexadecimal") from exc
    return WorkingKeys(pik_enc=raw[:16], pik_kcv=raw[16:20], mak_enc=raw[20:36], mak_kcv=raw[36:40])


def _parse_aes_keys(text: str) -> AesWorkingKeys:
    """Two (TR-31 block, KCV) pairs; a block's length is its header's characters 2-5."""
    parts: list = []
    for name in ("PIK", "MAK"):
        size = int(text[1:5]) if text[1:5].isdigit() and text[1:5].isascii() else 0
        kcv = text[size:size + _AES_KCV_HEX]
        if size < 16 or len(kcv) != _AES_KCV_HEX:
            raise MessageError(f"field 62: {name} key block truncated or without its length")
        try:
            parts += [text[:size], bytes.fromhex(kcv)]
        except ValueError:
            raise MessageError(f"field 62: {name} check value not hexadecimal") from None
        text = text[size + _AES_KCV_HEX:]
    if text:
        raise MessageError("field 62: characters after the MAK check value")
    return AesWorkingKeys(*parts)


def working_keys_field(keys: WorkingKeys | AesWorkingKeys) -> str:
    """Field 62 text for `keys`; inverse of parse_working_keys."""
    if isinstance(keys, AesWorkingKeys):
        return (keys.pik_block + keys.pik_kcv.hex().upper()
                + keys.mak_block + keys.mak_kcv.hex().upper())
    return (keys.pik_enc + keys.pik_kcv + keys.mak_enc + keys.mak_kcv).hex().upper()


def describe(fields: dict) -> str:
    """One log-safe line: MTI, STAN, amount, response code, masked PAN. Never raises."""
    parts = [str(fields.get("t", "????"))]
    if "11" in fields:
        parts.append(f"STAN {fields['11']}")
    if "4" in fields:
        parts.append(f"amount {_describe_amount(fields['4'], fields.get('49'))}")
    if "39" in fields:
        parts.append(f"RC {fields['39']}")
    pan = fields.get("2")
    if isinstance(pan, str):
        parts.append(f"PAN {mask_pan(pan)}")
    return " ".join(parts)


def _describe_amount(value: object, currency: object) -> str:
    if not (isinstance(value, str) and value.isdigit() and value.isascii()):
        return repr(value)
    numeric = isinstance(currency, str) and currency.isdigit() and currency.isascii()
    code = int(currency) if numeric else 156
    if code not in CURRENCIES:
        return f"{int(value)} minor ({currency})"
    return f"{format_amount(int(value), code)} {CURRENCIES[code][0]}"
