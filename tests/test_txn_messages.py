"""Requests of the full card transaction set (firmware/acquirer/txn_messages.py): the wire
table per kind, encode/decode round trips, card-data hygiene, field 54, kind_of."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from firmware.acquirer.messages import (
    MessageError, TerminalIds, decode, describe, encode, response_mti, reversal_request,
    sale_request,
)
from firmware.acquirer.txn_messages import (
    WIRE, balance_field, completion_limit, kind_of, original_field, parse_balance, txn_request,
)
from firmware.emv.card import ENTRY_CHIP, CardData
from firmware.flows.types import OriginalRef
from firmware.sim.catalog import load_catalog
from firmware.txnkinds import KINDS

NOW = datetime(2026, 5, 14, 10, 30, 0)
IDS = TerminalIds("10000001", "898310048990001")
PIN_BLOCK = bytes.fromhex("0123456789ABCDEF")
ICC = bytes.fromhex("9F2608A1B2C3D4E5F60708" "9F270180" "9F36020001")
CATALOG = load_catalog()
PAN = CATALOG.cards["approve"].pan
TARGET = CATALOG.cards["visa"].pan
CARD = CardData(pan=PAN, expiry="3012", pan_seq="01", track2=f"{PAN}=30122011234500000",
                aid="A000000333010101", app_label="UnionPay Debit", icc_data=ICC,
                entry_mode=ENTRY_CHIP)
SALE_REF = OriginalRef(txn_id=7, kind="sale", stan=41, batch=3, rrn="000000000123",
                       date="0514", auth_code="654321", amount=5000)
PREAUTH_REF = OriginalRef(txn_id=8, kind="preauth", stan=42, batch=3, rrn="000000000124",
                          date="0514", auth_code="123456", amount=10000)
KEYED_REF = OriginalRef(rrn="000000000123", date="0513")  # a refund keyed by RRN

COMMON = {"t", "2", "3", "11", "12", "13", "14", "22", "25", "41", "42", "49", "60"}
CHIP = {"23", "35", "52", "55"}
# kind -> (MTI, 3, 60.1, fields beyond COMMON, arguments)
TABLE = {
    "sale": ("0200", "000000", "22", {"4"} | CHIP, dict(amount=5000)),
    "void": ("0200", "200000", "23", {"4", "37", "38", "61"},
             dict(amount=5000, original=SALE_REF)),
    "refund": ("0200", "200000", "25", {"4", "37", "61"}, dict(amount=2000, original=KEYED_REF)),
    "preauth": ("0100", "030000", "10", {"4"} | CHIP, dict(amount=10000)),
    "preauth_cancel": ("0100", "200000", "11", {"4", "38", "61"},
                       dict(amount=10000, original=PREAUTH_REF)),
    "completion": ("0200", "000000", "20", {"4", "38", "61"},
                   dict(amount=11500, original=PREAUTH_REF)),
    "completion_void": ("0200", "200000", "21", {"4", "37", "38", "61"},
                        dict(amount=11500, original=OriginalRef(
                            kind="completion", stan=43, batch=3, rrn="000000000125",
                            date="0514", auth_code="777777", amount=11500))),
    "balance": ("0200", "310000", "01", CHIP, dict(amount=0)),
    "repayment": ("0200", "400000", "48", {"4", "103"} | CHIP,
                  dict(amount=30000, target_pan=TARGET)),
}
NO_PIN = [k for k in TABLE if KINDS[k].card == "nopin"]


def build(kind: str, **over) -> dict:
    args = dict(stan=99, batch=3, currency=156, card=CARD, now=NOW,
                pin_block=None if kind in NO_PIN else PIN_BLOCK, **TABLE[kind][4])
    return txn_request(IDS, kind, **{**args, **over})


def test_the_table_covers_every_card_kind():
    assert set(TABLE) == set(WIRE) == {k for k, v in KINDS.items() if v.card != "none"}


@pytest.mark.parametrize("kind", TABLE)
def test_mti_processing_code_message_type_and_fields_per_kind(kind):
    mti, processing, msg_type, extra, _ = TABLE[kind]
    msg = build(kind)
    assert (msg["t"], msg["3"], msg["60"]) == (mti, processing, msg_type + "000003" + "000")
    assert set(msg) == COMMON | extra
    assert list(msg)[0] == "t" and [int(k) for k in list(msg)[1:]] == sorted(
        int(k) for k in list(msg)[1:])


@pytest.mark.parametrize("kind", TABLE)
def test_round_trip_and_kind_of(kind):
    msg = build(kind)
    assert decode(encode(msg)) == msg
    assert kind_of(decode(encode(msg))) == kind


def test_a_sale_is_exactly_the_sale_request():
    want = sale_request(IDS, stan=99, batch=3, amount=5000, currency=156, card=CARD,
                        pin_block=PIN_BLOCK, now=NOW)
    assert build("sale") == want


@pytest.mark.parametrize("kind", NO_PIN)
def test_kinds_without_pin_never_carry_track2_pin_block_or_chip_data(kind):
    msg = build(kind)
    assert not {"23", "35", "52", "55"} & set(msg)
    with pytest.raises(MessageError, match="^field 52: "):
        build(kind, pin_block=PIN_BLOCK)


def test_original_data_and_amounts():
    void = build("void")
    assert (void["4"], void["37"], void["38"], void["61"]) == (
        "000000005000", "000000000123", "654321", "000003" "000041" "0514")
    refund = build("refund")
    assert refund["61"] == "000000" "000000" "0513" and refund["37"] == "000000000123"
    assert "38" not in refund
    completion = build("completion")
    assert completion["38"] == "123456" and "37" not in completion
    assert "4" not in build("balance")
    assert build("repayment")["103"] == TARGET


def test_completion_advice_is_an_0220_with_message_type_24():
    msg = build("completion", advice=True)
    assert (msg["t"], msg["3"], msg["60"][:2]) == ("0220", "000000", "24")
    assert set(msg) == COMMON | {"4", "38", "61"}
    assert kind_of(msg) == kind_of({**msg, "t": "0221"}) == "completion"


@pytest.mark.parametrize("kind, over, field", [
    ("refund", dict(original=OriginalRef(date="0513")), "37"),
    ("refund", dict(original=None), "61"),
    ("void", dict(original=OriginalRef(rrn="000000000123", amount=5000)), "61"),
    ("void", dict(amount=4999), "4"),
    ("preauth_cancel", dict(amount=9999), "4"),
    ("completion", dict(original=OriginalRef(stan=42, date="0514")), "38"),
    ("completion", dict(amount=completion_limit(10000) + 1), "4"),
    ("completion_void", dict(original=OriginalRef(auth_code="777777")), "61"),
    ("repayment", dict(target_pan=None), "103"),
    ("repayment", dict(target_pan=TARGET[:-1] + str((int(TARGET[-1]) + 1) % 10)), "103"),
    ("sale", dict(target_pan=TARGET), "103"),
    ("sale", dict(original=SALE_REF), "61"),
    ("balance", dict(amount=100), "4"),
    ("sale", dict(advice=True), "t"),
    ("void", dict(original=replace(SALE_REF, rrn="12345")), "37"),
    ("void", dict(original=OriginalRef(stan=41, date="05-4", amount=5000)), "61"),
    ("qr_sale", {}, "3"),
    ("nonsense", {}, "3"),
])
def test_bad_input_names_the_field(kind, over, field):
    args = TABLE.get(kind, TABLE["sale"])[4]
    with pytest.raises(MessageError, match=f"^field {field}: "):
        txn_request(IDS, kind, stan=99, batch=3, currency=156, card=CARD, now=NOW,
                    pin_block=None, **{**args, **over})


def test_completion_limit_is_the_preauth_plus_15_percent_rounded_down():
    assert completion_limit(10000) == 11500 and completion_limit(101) == 116


def test_original_field():
    assert original_field(SALE_REF) == "000003000041" "0514"
    assert original_field(OriginalRef()) == "0" * 16
    with pytest.raises(MessageError, match="^field 61: "):
        original_field(OriginalRef(stan=1_000_000))
    with pytest.raises(MessageError, match="^field 61: "):
        original_field(OriginalRef(batch=-1))


@pytest.mark.parametrize("amount", [0, 123456, -250, 999_999_999_999])
def test_balance_field_round_trip(amount):
    text = balance_field(156, amount)
    assert len(text) == 20 and text[:4] == "1002"
    assert parse_balance(text) == (156, amount)


def test_balance_picks_the_available_entry():
    ledger_entry = "1001" "156" "C" + f"{999:012d}"
    assert parse_balance(ledger_entry + balance_field(156, 5000)) == (156, 5000)


@pytest.mark.parametrize("junk", ["", "1002156C00000000100", "1002156X000000001000",
                                  "1002ABCC000000001000", "1001156C000000001000", None])
def test_parse_balance_junk_is_a_field_54_error(junk):
    with pytest.raises(MessageError, match="^field 54: "):
        parse_balance(junk)


def test_kind_of_unknown_and_reversals():
    assert kind_of({"t": "0200", "3": "000000", "60": "99000003000"}) == ""
    assert kind_of({}) == ""
    assert kind_of(reversal_request(build("preauth"), "98")) == ""
    assert kind_of({"t": "0220", "3": "000000", "60": "30000003000"}) == "sale"


def test_preauth_is_answered_by_0110_and_reversed_by_a_clone():
    assert response_mti("0100") == "0110"
    rev = reversal_request(build("preauth"), "98")
    assert rev["t"] == "0400" and rev["3"] == "030000" and rev["60"][:2] == "10"
    assert not {"35", "52"} & set(rev)


def test_describe_shows_no_clear_pan_of_either_card():
    line = describe(build("repayment"))
    assert PAN not in line and TARGET not in line and TARGET[-4:] not in line
