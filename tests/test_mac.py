"""Message MACs: known-answer vectors (psec, ISO 9797-1, RFC 4493) and field 64/128 rules."""
from __future__ import annotations

import warnings
from datetime import datetime

import psec
import pytest
from hypothesis import given, settings, strategies as st

from firmware.acquirer import messages
from firmware.mac import MacKey, aes_cmac, mac_field, needs_mac, retail_mac

TDES_MAK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
AES_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")  # RFC 4493 §4
RFC4493_MSG = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
IDS = messages.TerminalIds("TERM0001", "MERCHANT0000001")


def test_retail_mac_matches_the_psec_docstring_vector():
    key1 = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    key2 = bytes.fromhex("FEDCBA98765432100123456789ABCDEF")
    assert retail_mac(key1, key2, bytes.fromhex("1234567890ABCDEF")).hex().upper() == "644AA5C915DBDAF8"


def _psec_retail(key1: bytes, key2: bytes, data: bytes) -> bytes:
    with warnings.catch_warnings():  # psec imports TripleDES from its old place
        warnings.simplefilter("ignore")
        return psec.mac.generate_retail_mac(key1, key2, data, padding=2)


def test_x9_19_mac_of_a_double_length_key_is_des_cbc_then_the_right_half():
    # ISO 9797-1 alg 3 with K = left half, K' = right half; the data fills 3 blocks, so
    # padding method 2 adds a fourth (80 00..): checked against psec's implementation.
    data = b"Now is the time for all "
    assert MacKey("retail", TDES_MAK).mac(data) == _psec_retail(TDES_MAK[:8], TDES_MAK[8:], data)
    assert MacKey("retail", TDES_MAK).mac(data) != MacKey("retail", TDES_MAK[::-1]).mac(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(max_size=90))
def test_retail_mac_agrees_with_psec(key, data):
    assert retail_mac(key[:8], key[8:], data) == _psec_retail(key[:8], key[8:], data)


@pytest.mark.parametrize("size, want", [
    (0, "bb1d6929e95937287fa37d129b756746"),
    (16, "070a16b46b4d4144f79bdd9dd04a287c"),
    (40, "dfa66747de9ae63030ca32611497c827"),
    (64, "51f0bebf7e3b9d92fc49741779363cfe"),
])
def test_aes_cmac_rfc4493_vectors(size, want):
    assert aes_cmac(AES_KEY, RFC4493_MSG[:size]).hex() == want
    assert MacKey("cmac", AES_KEY).mac(RFC4493_MSG[:size]).hex() == want[:16]


def _sale() -> dict:
    return {"t": "0200", "2": "6226090000000014", "3": "000000", "4": "000000000100",
            **messages.trace_fields(7, datetime(2026, 11, 22, 10, 0, 0)),
            "41": IDS.terminal_id, "42": IDS.merchant_id, "49": "156"}


@pytest.mark.parametrize("key", [MacKey("retail", TDES_MAK), MacKey("cmac", AES_KEY),
                                 MacKey("cmac", bytes(range(32)))], ids=repr)
def test_signed_message_verifies_and_any_changed_byte_fails(key):
    signed = key.sign(_sale())
    raw = messages.encode(signed)
    assert key.verify(raw, messages.decode(raw))
    # the MAC is over MTI + bitmap + fields before it: the last 8 bytes are the MAC
    assert raw[-8:] == signed["64"] == key.mac(raw[:-8])
    for i in range(len(raw)):
        bad = raw[:i] + bytes([raw[i] ^ 0x04]) + raw[i + 1:]
        try:
            fields = messages.decode(bad)
        except messages.MessageError:
            continue  # no longer a message at all
        assert not key.verify(bad, fields), f"byte {i} changed, MAC still good"


def test_missing_or_misplaced_mac_fails():
    key = MacKey("retail", TDES_MAK)
    raw = messages.encode(_sale())
    assert not key.verify(raw, messages.decode(raw))  # no field 64
    other = MacKey("retail", bytes(16)).sign(_sale())  # another key's MAC
    raw = messages.encode(other)
    assert not key.verify(raw, messages.decode(raw))


def test_field_128_when_the_secondary_bitmap_is_present():
    msg = {**_sale(), "100": "12345678"}
    assert mac_field(msg) == "128" and mac_field(_sale()) == "64"
    key = MacKey("cmac", AES_KEY)
    signed = key.sign(msg)
    assert "64" not in signed and len(signed["128"]) == 8
    raw = messages.encode(signed)
    assert key.verify(raw, messages.decode(raw))
    both = messages.encode({**signed, "64": signed["128"]})  # a stray 64 too: refused
    assert not key.verify(both, messages.decode(both))


def test_sign_replaces_an_old_mac_and_does_not_modify_its_input():
    key = MacKey("retail", TDES_MAK)
    msg = {**_sale(), "64": b"\x00" * 8}
    signed = key.sign(msg)
    assert msg["64"] == bytes(8) and signed["64"] != bytes(8)
    assert key.sign(signed) == signed


def test_only_network_management_goes_without_a_mac():
    assert [needs_mac(m) for m in ("0200", "0220", "0400", "0500", "0800", "0810")] == [
        True, True, True, True, False, False]


@pytest.mark.parametrize("rule, size", [("retail", 8), ("retail", 32), ("cmac", 8), ("x", 16)])
def test_bad_rule_or_key_length_is_refused(rule, size):
    with pytest.raises(ValueError):
        MacKey(rule, bytes(size))


def test_repr_shows_no_key():
    assert repr(MacKey("retail", TDES_MAK)) == "MacKey(rule=retail)"
