"""Tests for firmware.keys: KCVs, key wrap, ISO 9564 format 0 PIN blocks, no TDES warnings.

Known ciphertexts below were computed independently with `openssl enc -des-ede -nopad`.
"""
import warnings
from dataclasses import dataclass

import pytest

from firmware import keys
from firmware.keys import KeyCheckError

CLASSIC = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TMK = bytes.fromhex("C1D0F8FB4958670DBA40AB1F3752EF0D")  # catalog terminal 10000001


@dataclass(frozen=True)
class _WK:  # same attributes as firmware.acquirer.messages.WorkingKeys
    pik_enc: bytes
    pik_kcv: bytes
    mak_enc: bytes
    mak_kcv: bytes


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_kcv_of_classic_key():
    assert keys.kcv(CLASSIC) == bytes.fromhex("08D7B4FB")


def test_kcv_of_catalog_tmk():
    assert keys.kcv(TMK) == bytes.fromhex("2DAF031D")


def test_kcv_same_for_double_and_triple_length_form():
    assert keys.kcv(CLASSIC + CLASSIC[:8]) == keys.kcv(CLASSIC)


def test_wrap_known_vector():
    assert keys.wrap_key(CLASSIC, CLASSIC) == bytes.fromhex("1A4D672DCA6CB3351FD1B02B237AF9AE")


def test_wrap_unwrap_round_trip():
    session = keys.random_key()
    wrapped = keys.wrap_key(TMK, session)
    assert wrapped != session
    assert keys.unwrap_key(TMK, wrapped, keys.kcv(session)) == session


def test_unwrap_wrong_kcv_names_the_key():
    wrapped = keys.wrap_key(TMK, keys.random_key())
    with pytest.raises(KeyCheckError, match="PIK check value mismatch") as info:
        keys.unwrap_key(TMK, wrapped, b"\x00\x00\x00\x00", name="PIK")
    assert info.value.name == "PIK"


def test_unwrap_under_wrong_kek_fails_check():
    session = keys.random_key()
    wrapped = keys.wrap_key(TMK, session)
    with pytest.raises(KeyCheckError):
        keys.unwrap_key(CLASSIC, wrapped, keys.kcv(session))


def test_wrap_rejects_bad_key_length():
    with pytest.raises(KeyCheckError, match="16 bytes"):
        keys.wrap_key(TMK, b"\x01" * 8)
    with pytest.raises(KeyCheckError, match="16 or 24"):
        keys.kcv(b"\x01" * 10)


def test_session_keys_from_working_and_repr_hides_keys():
    pik, mak = keys.random_key(), keys.random_key()
    wk = _WK(keys.wrap_key(TMK, pik), keys.kcv(pik), keys.wrap_key(TMK, mak), keys.kcv(mak))
    sk = keys.session_keys_from_working(TMK, wk)
    assert (sk.pik, sk.mak) == (pik, mak)
    text = repr(sk)
    assert pik.hex() not in text.lower() and mak.hex() not in text.lower()
    assert keys.kcv(pik).hex().upper() in text


def test_session_keys_bad_mak_check():
    pik, mak = keys.random_key(), keys.random_key()
    wk = _WK(keys.wrap_key(TMK, pik), keys.kcv(pik), keys.wrap_key(TMK, mak), b"\xde\xad\xbe\xef")
    with pytest.raises(KeyCheckError, match="MAK check value mismatch"):
        keys.session_keys_from_working(TMK, wk)


def test_pin_block_iso0_clear_block_by_hand():
    # PIN field 04 12 34 FF FF FF FF FF, PAN field 00 00 11 11 11 11 11 11
    # (12 rightmost PAN digits without the check digit): XOR = 04 12 25 EE EE EE EE EE.
    block = keys.pin_block_iso0(bytearray(b"1234"), "4111111111111111", CLASSIC)
    assert keys.tdes_ecb_decrypt(CLASSIC, block) == bytes.fromhex("041225EEEEEEEEEE")
    assert block == bytes.fromhex("2A3D408A1977DDE9")


def test_pin_block_iso0_psec_textbook_vector():
    block = keys.pin_block_iso0(bytearray(b"1234"), "5544332211009966", CLASSIC)
    assert keys.tdes_ecb_decrypt(CLASSIC, block) == bytes.fromhex("041277CDDEEFF669")


def test_pin_decrypt_round_trip():
    pik = keys.random_key()
    block = keys.pin_block_iso0(bytearray(b"987654"), "6226090000000014", pik)
    assert len(block) == 8
    assert keys.decrypt_pin_iso0(block, "6226090000000014", pik) == "987654"


def test_pin_decrypt_under_wrong_key_does_not_leak_digits():
    block = keys.pin_block_iso0(bytearray(b"1234"), "6226090000000014", keys.random_key())
    with pytest.raises(ValueError, match="does not decode") as info:
        keys.decrypt_pin_iso0(block, "6226090000000014", keys.random_key())
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_pin_block_rejects_short_pin():
    with pytest.raises(ValueError, match="4 to 12 digits"):
        keys.pin_block_iso0(bytearray(b"12"), "6226090000000014", CLASSIC)


def test_random_key_odd_parity_and_fresh():
    a, b = keys.random_key(), keys.random_key()
    assert len(a) == 16 and a != b
    assert all(bin(byte).count("1") % 2 == 1 for byte in a + b)


def test_no_deprecation_warning_even_when_enabled_by_default():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        keys.kcv(CLASSIC)
        keys.decrypt_pin_iso0(keys.pin_block_iso0(b"1234", "4111111111111111", TMK),
                              "4111111111111111", TMK)
    assert [str(w.message) for w in seen] == []
