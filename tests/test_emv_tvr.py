"""TVR and TSI named bits (firmware.emv.tvr)."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.emv.tvr import TSI_BITS, TVR_BITS, Tsi, Tvr, describe_tvr

# Every bit with its whole TVR value as 10 hex digits (Book 3 Annex C5).
TVR_TABLE = [
    ("oda_not_performed", "8000000000"), ("sda_failed", "4000000000"),
    ("icc_data_missing", "2000000000"), ("card_on_exception_file", "1000000000"),
    ("dda_failed", "0800000000"), ("cda_failed", "0400000000"), ("sda_selected", "0200000000"),
    ("icc_app_versions_differ", "0080000000"), ("expired_application", "0040000000"),
    ("application_not_yet_effective", "0020000000"), ("service_not_allowed", "0010000000"),
    ("new_card", "0008000000"),
    ("cvm_not_successful", "0000800000"), ("unrecognised_cvm", "0000400000"),
    ("pin_try_limit_exceeded", "0000200000"), ("pin_pad_not_working", "0000100000"),
    ("pin_not_entered", "0000080000"), ("online_pin_entered", "0000040000"),
    ("exceeds_floor_limit", "0000008000"),
    ("lower_consecutive_offline_limit_exceeded", "0000004000"),
    ("upper_consecutive_offline_limit_exceeded", "0000002000"),
    ("random_online", "0000001000"), ("merchant_forced_online", "0000000800"),
    ("default_tdol_used", "0000000080"), ("issuer_authentication_failed", "0000000040"),
    ("script_failed_before_final_gen_ac", "0000000020"),
    ("script_failed_after_final_gen_ac", "0000000010"),
]
TSI_TABLE = [
    ("oda_performed", "8000"), ("cvm_performed", "4000"),
    ("card_risk_management_performed", "2000"), ("issuer_authentication_performed", "1000"),
    ("terminal_risk_management_performed", "0800"), ("script_processing_performed", "0400"),
]


def test_tables_cover_every_named_bit():
    assert [name for name, _ in TVR_TABLE] == list(TVR_BITS)
    assert [name for name, _ in TSI_TABLE] == list(TSI_BITS)


@pytest.mark.parametrize("name, hex10", TVR_TABLE)
def test_each_tvr_bit(name, hex10):
    tvr = Tvr()
    assert not tvr.is_set(name)
    tvr.set(name)
    assert tvr.hex() == hex10 and bytes(tvr) == bytes.fromhex(hex10)
    assert tvr.is_set(name) and tvr.names() == [name]
    assert describe_tvr(hex10) == [name]
    tvr.clear(name)
    assert tvr.hex() == "0000000000" and not tvr.is_set(name)


@pytest.mark.parametrize("name, hex4", TSI_TABLE)
def test_each_tsi_bit(name, hex4):
    tsi = Tsi()
    tsi.set(name)
    assert tsi.hex() == hex4 and tsi.names() == [name]
    tsi.clear(name)
    assert bytes(tsi) == bytes(2)


def test_names_are_in_bit_order_and_rfu_bits_are_kept():
    tvr = Tvr(bytes.fromhex("0100000001"))  # two RFU bits
    for name in ("script_failed_after_final_gen_ac", "cvm_not_successful", "sda_failed"):
        tvr.set(name)
    assert tvr.names() == ["sda_failed", "cvm_not_successful",
                           "script_failed_after_final_gen_ac"]
    assert tvr.hex() == "4100800011"
    assert repr(tvr) == "Tvr(4100800011)"


def test_set_is_idempotent_and_clear_leaves_other_bits():
    tvr = Tvr()
    tvr.set("new_card")
    tvr.set("new_card")
    tvr.set("expired_application")
    tvr.clear("new_card")
    assert tvr.hex() == "0040000000"


@pytest.mark.parametrize("call", ["set", "clear", "is_set"])
def test_unknown_name_is_a_key_error_naming_it(call):
    with pytest.raises(KeyError, match="no_such_bit"):
        getattr(Tvr(), call)("no_such_bit")
    with pytest.raises(KeyError, match="new_card"):
        getattr(Tsi(), call)("new_card")  # a TVR bit is not a TSI bit


@pytest.mark.parametrize("make, value", [(Tvr, bytes(4)), (Tvr, bytes(6)), (Tsi, bytes(5))])
def test_wrong_length_is_rejected(make, value):
    with pytest.raises(ValueError, match="bytes"):
        make(value)


@pytest.mark.parametrize("text", ["00000000", "000000000000", "00000000zz"])
def test_describe_tvr_rejects_malformed_hex(text):
    with pytest.raises(ValueError):
        describe_tvr(text)


def test_describe_tvr_accepts_lower_case():
    assert describe_tvr("c000000000") == ["oda_not_performed", "sda_failed"]


@given(st.binary(min_size=5, max_size=5))
def test_tvr_round_trips_bytes(value):
    tvr = Tvr(value)
    assert bytes(tvr) == value and tvr.hex() == value.hex().upper()
    rebuilt = Tvr(bytes(a & ~b for a, b in zip(value, _named_mask())))  # RFU bits only
    for name in tvr.names():
        rebuilt.set(name)
    assert bytes(rebuilt) == value


def _named_mask() -> bytes:
    mask = bytearray(5)
    for index, bit in TVR_BITS.values():
        mask[index] |= bit
    return bytes(mask)
