"""ISO 8583 messages: golden frames, round trips, builders, matching, malformed input, codes."""
from __future__ import annotations

import asyncio
import os
import random
import unicodedata
from datetime import datetime
from pathlib import Path

import pytest

from firmware.acquirer import codes
from firmware.acquirer.messages import (
    MAX_FRAME, MessageError, TerminalIds, WorkingKeys, decode, describe, encode, frame,
    match_response, parse_working_keys, read_frame, response_mti, reversal_request,
    sale_request, signon_request, working_keys_field,
)
from firmware.acquirer.spec import SPEC
from firmware.emv.card import ENTRY_CHIP, CardData
from firmware.sim.catalog import load_catalog

GOLDEN = Path(__file__).parent / "golden" / "iso8583"
NOW = datetime(2024, 3, 5, 14, 7, 9)
IDS = TerminalIds("10000001", "123456789012345")
PIN_BLOCK = bytes.fromhex("0123456789ABCDEF")
ICC = bytes.fromhex("9F2608A1B2C3D4E5F60708" "9F270180" "9F36020001")
PAN = load_catalog().cards["approve"].pan


def _card(**over) -> CardData:
    base = dict(pan=PAN, expiry="3012", pan_seq="01", track2=f"{PAN}=30122011234500000",
                aid="A000000333010101", app_label="UnionPay Debit", icc_data=ICC,
                entry_mode=ENTRY_CHIP)
    return CardData(**{**base, **over})


def _sale(**over) -> dict:
    args = dict(stan=123, batch=7, amount=1250, currency=156, card=_card(),
                pin_block=PIN_BLOCK, now=NOW)
    return sale_request(IDS, **{**args, **over})


def _sale_response(request: dict, **over) -> dict:
    resp = {k: request[k] for k in ("2", "3", "4", "11", "12", "13", "41", "42", "49")}
    resp.update({"t": "0210", "37": "240305000123", "38": "A1B2C3", "39": "00"})
    resp.update(over)
    return resp


def _golden(name: str, data: bytes) -> bytes:
    path = GOLDEN / name
    if os.environ.get("KPOS_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"{path} missing: run with KPOS_REGEN_GOLDEN=1 once"
    return path.read_bytes()


# --- golden frames ------------------------------------------------------------


def test_signon_golden_frame():
    framed = frame(encode(signon_request(IDS, stan=1, batch=7, now=NOW)))
    assert framed == _golden("signon_0800.bin", framed)
    body = (b"000001" b"140709" b"0305" b"10000001" b"123456789012345"
            b"011" b"00000007003" b"003" b"01 ")
    # fields 11, 12, 13 | 41, 42 | 60, 63  ->  00 38 00 00 00 C0 00 12
    assert framed[:6] == len(framed[2:]).to_bytes(2, "big") + b"0800"
    assert framed[6:14] == bytes.fromhex("0038000000C00012")
    assert framed[14:] == body


def test_sale_golden_frame():
    framed = frame(encode(_sale()))
    assert framed == _golden("sale_0200.bin", framed)
    assert int.from_bytes(framed[:2], "big") == len(framed) - 2
    assert framed[2:6] == b"0200"
    # fields 2 3 4 | 11 12 13 14 | 22 23 | 25 | 35 | 41 42 | 49 52 55 | 60
    assert framed[6:14] == bytes.fromhex("703C068020C09210")
    assert framed[14:50] == b"16" + PAN.encode() + b"000000" + b"000000001250"
    assert framed[50:78] == b"000123" b"140709" b"0305" b"3012" b"051" b"001" b"00"
    pin_at = framed.index(PIN_BLOCK)
    assert framed[pin_at - 3:pin_at] == b"156"
    assert framed[pin_at + 8:pin_at + 11] == b"%03d" % len(ICC)
    assert framed.endswith(ICC + b"011" b"22000007000")


def test_reversal_golden_frame():
    framed = frame(encode(reversal_request(_sale(), "98")))
    assert framed == _golden("reversal_0400.bin", framed)
    assert framed[2:6] == b"0400"
    assert PIN_BLOCK not in framed and b"=3012" not in framed
    assert framed.endswith(b"011" b"22000007000" b"012" b"000007000123")


# --- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda: signon_request(IDS, stan=999999, batch=0, now=NOW, operator="123"),
    lambda: _sale(),
    lambda: _sale(card=_card(pan_seq=None, icc_data=b"", track2=""), pin_block=None),
    lambda: reversal_request(_sale(), "A0", repeat=True),
    lambda: _sale_response(_sale(), **{"55": bytes.fromhex("910A0102030405060708090A")}),
])
def test_round_trip(build):
    msg = build()
    assert decode(encode(msg)) == msg


def test_encode_does_not_touch_input():
    msg = _sale()
    copy = dict(msg)
    encode(msg)
    assert msg == copy and "p" not in msg


def test_long_icc_data_fits_field_55():
    icc = bytes(300)  # beyond pyiso8583's default max_len 255
    msg = _sale(card=_card(icc_data=icc))
    assert decode(encode(msg))["55"] == icc
    assert SPEC["55"]["max_len"] == 999


# --- builders --------------------------------------------------------------------


def test_sale_fields():
    msg = _sale()
    assert msg["t"] == "0200" and msg["3"] == "000000" and msg["4"] == "000000001250"
    assert (msg["11"], msg["12"], msg["13"], msg["14"]) == ("000123", "140709", "0305", "3012")
    assert (msg["22"], msg["23"], msg["25"], msg["49"]) == ("051", "001", "00", "156")
    assert msg["60"] == "22" + "000007" + "000"
    assert msg["52"] == PIN_BLOCK and msg["55"] == ICC


def test_sale_optional_fields_absent():
    msg = _sale(card=_card(pan_seq=None, icc_data=b"", track2=""), pin_block=None)
    assert not {"23", "35", "52", "55"} & msg.keys()


@pytest.mark.parametrize("over, field", [
    ({"amount": 0}, "field 4"),
    ({"amount": 12.5}, "field 4"),
    ({"amount": 10**12}, "field 4"),
    ({"stan": 0}, "field 11"),
    ({"stan": 1_000_000}, "field 11"),
    ({"batch": -1}, "field 60"),
    ({"currency": 1560}, "field 49"),
    ({"pin_block": b"\x00" * 7}, "field 52"),
])
def test_sale_rejects_bad_values(over, field):
    with pytest.raises(MessageError, match=f"^{field}:"):
        encode(_sale(**over))


def test_terminal_ids_checked():
    with pytest.raises(MessageError, match="^field 41:"):
        TerminalIds("1234567", "123456789012345")
    with pytest.raises(MessageError, match="^field 42:"):
        TerminalIds("12345678", "12345")


def test_reversal_from_sale():
    sale = _sale()
    rev = reversal_request(sale, "98")
    assert rev["t"] == "0400" and rev["11"] == sale["11"] == "000123"
    assert not {"35", "52", "53", "64"} & rev.keys()
    assert rev["39"] == "98" and rev["61"] == "000007" + "000123"
    assert rev["4"] == sale["4"] and rev["2"] == sale["2"] and rev["55"] == ICC
    assert "35" in sale and "52" in sale  # the original is not modified
    assert reversal_request(sale, "06", repeat=True)["t"] == "0401"


def test_reversal_rejects_unknown_reason():
    with pytest.raises(MessageError, match="^field 39:"):
        reversal_request(_sale(), "00")


def test_signon_fields():
    msg = signon_request(IDS, stan=42, batch=123456, now=NOW)
    assert msg["t"] == "0800" and msg["11"] == "000042"
    assert msg["60"] == "00" "123456" "003" and msg["63"] == "01 "
    assert (msg["41"], msg["42"]) == (IDS.terminal_id, IDS.merchant_id)


# --- working keys -------------------------------------------------------------------


def test_working_keys_round_trip():
    keys = WorkingKeys(bytes(range(16)), bytes.fromhex("AABBCCDD"),
                       bytes(range(16, 32)), bytes.fromhex("01020304"))
    text = working_keys_field(keys)
    assert len(text) == 80 and text == text.upper()
    assert text.startswith("000102") and text[32:40] == "AABBCCDD"
    assert parse_working_keys({"t": "0810", "62": text}) == keys
    assert "000102" not in repr(keys)


@pytest.mark.parametrize("f62, why", [(None, "absent"), ("AB" * 39, "78"), ("ZZ" * 40, "hex")])
def test_working_keys_malformed(f62, why):
    resp = {"t": "0810", "39": "00"} if f62 is None else {"t": "0810", "62": f62}
    with pytest.raises(MessageError, match=f"^field 62: .*{why}"):
        parse_working_keys(resp)


# --- matching ------------------------------------------------------------------------


def test_match_good_response():
    req = _sale()
    assert match_response(req, _sale_response(req)) is None
    resp = _sale_response(req)
    del resp["2"]  # PAN echo is optional
    assert match_response(req, resp) is None


@pytest.mark.parametrize("over, reason", [
    ({"t": "0410"}, "MTI 0410 does not answer 0200"),
    ({"11": "000124"}, "STAN 000124 != 000123"),
    ({"41": "10000002"}, "terminal id 10000002 != 10000001"),
    ({"42": "999999999999999"}, "merchant id"),
    ({"3": "200000"}, "processing code 200000 != 000000"),
    ({"4": "000000001000"}, "amount 000000001000 != 000000001250"),
    ({"2": "6226090000000022"}, "PAN differs"),
])
def test_match_mismatches(over, reason):
    req = _sale()
    got = match_response(req, _sale_response(req, **over))
    assert got is not None and got.startswith(reason)
    assert PAN not in got and "6226090000000022" not in got


def test_match_missing_echo_is_a_mismatch():
    req = _sale()
    resp = _sale_response(req)
    del resp["4"]
    assert match_response(req, resp) == "amount missing != 000000001250"


@pytest.mark.parametrize("req, resp", [
    ("0200", "0210"), ("0800", "0810"), ("0400", "0410"), ("0401", "0410"),
    ("0100", "0110"), ("0220", "0230"), ("0221", "0230"),
])
def test_response_mti_pairs(req, resp):
    assert response_mti(req) == resp


def test_signon_response_matches_without_amount():
    req = signon_request(IDS, stan=5, batch=1, now=NOW)
    resp = {"t": "0810", "11": "000005", "39": "00", "41": IDS.terminal_id, "42": IDS.merchant_id}
    assert match_response(req, resp) is None
    assert match_response(req, {**resp, "t": "0210"}) == "MTI 0210 does not answer 0800"


# --- malformed input ----------------------------------------------------------------------


def test_decode_truncated_names_field():
    raw = encode(_sale())
    with pytest.raises(MessageError, match="^field 60:"):
        decode(raw[:-3])
    with pytest.raises(MessageError, match="^field p:"):
        decode(raw[:9])


def test_decode_bad_mti():
    raw = encode(_sale())
    with pytest.raises(MessageError, match="^field t:"):
        decode(b"02X0" + raw[4:])


def test_decode_non_numeric_amount():
    raw = encode(_sale())
    at = raw.index(b"000000001250")
    with pytest.raises(MessageError, match="^field 4: not numeric"):
        decode(raw[:at] + b"0000000012A0" + raw[at + 12:])


def test_decode_llvar_length_past_end():
    raw = encode({"t": "0800", "2": PAN})
    # field 2 declares 16 digits; cut the message to 5 of them
    assert raw[12:14] == b"16"
    with pytest.raises(MessageError, match="^field 2:"):
        decode(raw[:19])


def test_decode_extra_bytes():
    with pytest.raises(MessageError, match="^field "):
        decode(encode(_sale()) + b"X")


def test_decode_never_raises_other_exceptions():
    raw = encode(_sale())
    rnd = random.Random(8583)
    for _ in range(3000):
        mutated = bytearray(raw)
        for _ in range(rnd.randint(1, 4)):
            mutated[rnd.randrange(len(mutated))] = rnd.randrange(256)
        try:
            decode(bytes(mutated[:rnd.randint(0, len(mutated))]))
        except MessageError:
            pass
    with pytest.raises(MessageError):
        decode("0200")  # not bytes


def test_encode_rejects_wrong_value_types():
    with pytest.raises(MessageError, match="^field 52: must be bytes"):
        encode({**_sale(), "52": PIN_BLOCK.hex()})
    with pytest.raises(MessageError, match="^field 4: must be str"):
        encode({**_sale(), "4": 1250})
    with pytest.raises(MessageError, match="^field 4: not numeric"):
        encode({**_sale(), "4": "00000000125X"})


# --- framing ------------------------------------------------------------------------------


def _read(data: bytes, eof: bool = True) -> bytes:
    async def run():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return await read_frame(reader)
    return asyncio.run(run())


def test_read_frame():
    assert _read(frame(b"0800abc") + b"trailing") == b"0800abc"


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 0xFFFF])
def test_read_frame_bad_length(length):
    with pytest.raises(MessageError, match=f"^frame: length {length}"):
        _read(length.to_bytes(2, "big") + b"x" * 10)


def test_read_frame_truncated():
    with pytest.raises(asyncio.IncompleteReadError):
        _read(frame(b"0800abcdef")[:-2])
    with pytest.raises(asyncio.IncompleteReadError):
        _read(b"\x00")


def test_frame_limits():
    assert frame(b"x" * MAX_FRAME)[:2] == MAX_FRAME.to_bytes(2, "big")
    with pytest.raises(MessageError, match="^frame:"):
        frame(b"x" * (MAX_FRAME + 1))
    with pytest.raises(MessageError, match="^frame:"):
        frame(b"")


# --- describe -----------------------------------------------------------------------------


def test_describe_is_log_safe():
    sale = _sale()
    for msg in (sale, reversal_request(sale, "98"), _sale_response(sale)):
        line = describe(msg)
        assert PAN not in line and PIN_BLOCK.hex() not in line.lower()
        assert "622609******0014" in line and "STAN 000123" in line
    assert describe(sale) == "0200 STAN 000123 amount 12.50 CNY PAN 622609******0014"
    assert describe(_sale_response(sale, **{"39": "51"})).endswith("RC 51 PAN 622609******0014")
    assert describe({"t": "0800", "4": "bad", "2": 5}) == "0800 amount 'bad'"


# --- response codes --------------------------------------------------------------------------


def _columns(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def test_response_codes_fit_display():
    for code, (en, zh) in codes.RESPONSE_CODES.items():
        assert len(code) == 2 and len(en) <= 20 and _columns(zh) <= 20, code
    for code in ("00", "05", "14", "25", "30", "41", "43", "51", "54", "55", "61", "75",
                 "91", "94", "96", "98", "A0"):
        assert code in codes.RESPONSE_CODES


def test_describe_code():
    assert codes.describe_code("51") == "INSUFFICIENT FUNDS"
    assert codes.describe_code("51", "zh") == "余额不足"
    assert codes.describe_code("43", "zh") == "被窃卡"
    assert codes.describe_code("Q9") == "DECLINED (Q9)"
    assert codes.describe_code("Q9", "zh") == "交易失败(Q9)"
    with pytest.raises(ValueError, match="lang 'fr'"):
        codes.describe_code("00", "fr")


def test_approved_codes():
    assert {"00", "11", "A2", "A4", "A5", "A6"} == codes.APPROVED_CODES
    assert "10" not in codes.APPROVED_CODES and "05" not in codes.APPROVED_CODES
    assert codes.APPROVED_CODES <= codes.RESPONSE_CODES.keys()
