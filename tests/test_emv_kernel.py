"""The EMV kernel session (firmware.emv.kernel) against the card emulator, step by step:
what it sends, what it decides, and the TVR / TSI it ends with."""
from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from firmware.config import load_config
from firmware.emv import tlv
from firmware.emv.card import CardReadError
from firmware.emv.cryptogram import verify_arqc
from firmware.emv.kernel import EmvSession, kernel_params
from firmware.emv.oda import load_capks
from firmware.emv.risk import RiskParams
from firmware.emv.tvr import Tsi, Tvr
from firmware.keys import pin_block_iso2
from firmware.sim.acquirer import issuer_icc_data
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import load_catalog

from conftest import SIM_TOML

WHEN = datetime(2026, 11, 21, 10, 30)
UN = bytes.fromhex("0A1B2C3D")
CATALOG = load_catalog()
CFG = load_config(SIM_TOML)
PARAMS = kernel_params(CFG, load_capks(CFG.emv.capk_file))


class Recorder:
    def __init__(self, emulator):
        self.emulator = emulator
        self.ins: list[int] = []
        self.apdus: list[bytes] = []

    def __call__(self, apdu: bytes) -> bytes:
        self.ins.append(apdu[1])
        self.apdus.append(apdu)
        return self.emulator.transmit(apdu)


def session(name: str, *, amount: int = 5000, contactless: bool = False, params=PARAMS,
            when=WHEN, card=None, emulator=None, rng=lambda a, b: b):
    """A session on a fresh card (or on `emulator`: the same card, inserted again)."""
    emulator = emulator or CardEmulator(card or CATALOG.cards[name], CATALOG.imk_ac,
                                        contactless=contactless)
    rec = Recorder(emulator)
    s = EmvSession(rec, params, amount=amount, currency=156, when=when, unpredictable=UN,
                   contactless=contactless, rng=rng)
    return s, rec


def names(tvr_hex: str) -> set[str]:
    return set(Tvr(bytes.fromhex(tvr_hex)).names())


def approve_online(s, code="00", tamper=False):
    card = s.first_ac(online_pin=True)
    req = {"2": card.pan, "23": "0" + card.pan_seq, "55": card.icc_data}
    icc = issuer_icc_data(req, CATALOG.imk_ac, code)
    if tamper:
        icc = icc[:2] + bytes([icc[2] ^ 0xFF]) + icc[3:]
    return card, s.complete(approved=code == "00", arc=code, icc_response=icc)


def test_contact_session_sequence_and_results():
    s, rec = session("approve")
    apps = s.candidates()
    assert [a.aid for a in apps] == ["A000000333010101"]
    assert s.select(apps[0]) == "online_pin"
    first, final = approve_online(s)
    # PSE + directory, SELECT, GPO, 4 records, INTERNAL AUTHENTICATE (DDA), GET DATA ATC
    # and last online ATC, GENERATE AC 1, EXTERNAL AUTHENTICATE, GENERATE AC 2.
    assert rec.ins == [0xA4, 0xB2, 0xB2, 0xA4, 0xA8, 0xB2, 0xB2, 0xB2, 0xB2, 0x88, 0xCA, 0xCA,
                       0xAE, 0x82, 0xAE]
    assert s.apdus == len(rec.ins) and s.card_seconds > 0
    assert (first.cryptogram_type, final.cryptogram_type) == ("ARQC", "TC")
    assert names(final.tvr) == {"exceeds_floor_limit", "online_pin_entered"}
    assert set(Tsi(bytes.fromhex(final.tsi)).names()) == {
        "oda_performed", "cvm_performed", "card_risk_management_performed",
        "issuer_authentication_performed", "terminal_risk_management_performed"}
    field55 = tlv.flatten(tlv.parse(first.icc_data))
    assert field55["95"].hex().upper() == first.tvr  # what the card signed is what we send
    assert field55["9F34"].hex().upper() == "420300"  # online PIN, "if supported", unknown


def test_forged_arpc_fails_issuer_authentication_and_the_card_declines():
    s, _ = session("approve")
    s.select(s.candidates()[0])
    _, final = approve_online(s, tamper=True)
    assert final.cryptogram_type == "AAC"
    assert "issuer_authentication_failed" in names(final.tvr)


def test_host_decline_closes_the_card_with_an_aac():
    s, _ = session("approve")
    s.select(s.candidates()[0])
    _, final = approve_online(s, code="51")
    assert final.cryptogram_type == "AAC"


def test_offline_pin_verify_counts_tries_and_blocks():
    s, rec = session("offline_pin")
    assert s.select(s.candidates()[0]) == "offline_pin"
    assert 0xCA in rec.ins  # the PIN try counter was read before asking for the PIN
    assert s.verify_pin(pin_block_iso2("0000")) == (False, 2, "offline_pin")
    assert s.verify_pin(pin_block_iso2("1234")) == (True, None, "none")
    card = s.first_ac()
    assert card.cvm == "offline_pin" and card.cryptogram_type == "ARQC"
    assert tlv.flatten(tlv.parse(card.icc_data))["9F34"].hex().upper() == "010002"

    blocked, _ = session("offline_pin")
    blocked.select(blocked.candidates()[0])
    for left in (2, 1):
        assert blocked.verify_pin(pin_block_iso2("0000")) == (False, left, "offline_pin")
    assert blocked.verify_pin(pin_block_iso2("0000")) == (False, 0, "none")
    card = blocked.first_ac()
    assert card.cryptogram_type == "AAC"  # IAC-Denial holds "PIN try limit exceeded"
    assert {"pin_try_limit_exceeded", "cvm_not_successful"} <= names(card.tvr)
    assert card.icc_data == b""  # nothing to send


def test_card_with_pin_tries_exhausted_skips_the_pin_and_declines():
    s, _ = session("pin_blocked")
    assert s.select(s.candidates()[0]) == "none"
    card = s.first_ac()
    assert card.cryptogram_type == "AAC" and "pin_try_limit_exceeded" in names(card.tvr)


@pytest.mark.parametrize("name, cvm, results", [
    ("signature", "signature", "5E0300"), ("no_cvm", "none", "1F0002")])
def test_signature_and_no_cvm_cards(name, cvm, results):
    s, _ = session(name)
    assert s.select(s.candidates()[0]) == cvm
    card = s.first_ac()
    assert card.cvm == cvm
    assert tlv.flatten(tlv.parse(card.icc_data))["9F34"].hex().upper() == results


def test_multi_application_card_offers_both_by_priority():
    s, _ = session("multi_app")
    apps = s.candidates()
    assert [(a.aid, a.priority, a.confirm) for a in apps] == [
        ("A000000333010101", 1, True), ("A000000333010102", 2, True)]
    s.select(apps[1])
    assert s.card().aid == "A000000333010102"


def test_blocked_application_allows_fallback_and_taps_must_insert():
    s, _ = session("app_blocked")
    with pytest.raises(CardReadError) as info:
        s.select(s.candidates()[0]) if True else None
    assert info.value.next == "swipe"
    big, _ = session("approve", amount=600_000, contactless=True)
    with pytest.raises(CardReadError) as info:
        big.candidates()
    assert (info.value.reason, info.value.next) == ("Over contactless limit", "insert")


def test_contactless_cvm_limit_and_quick_tap():
    small, rec = session("approve", amount=100_000, contactless=True)  # at the limit: no CVM
    assert small.select(small.candidates()[0]) == "none"
    card = small.first_ac()
    assert (card.cryptogram_type, card.cvm, card.entry_mode) == ("ARQC", "none", "071")
    assert small.complete(approved=True, arc="00", icc_response=None) is card  # card gone
    assert 0xAE not in rec.ins and len(rec.ins) <= 6
    big, _ = session("approve", amount=100_001, contactless=True)
    assert big.select(big.candidates()[0]) == "online_pin"
    assert big.first_ac(online_pin=True).cvm == "online_pin"


def test_expired_card_sets_the_tvr_and_still_goes_online():
    s, _ = session("expired")
    s.select(s.candidates()[0])
    card = s.first_ac(online_pin=True)
    assert "expired_application" in names(card.tvr) and card.cryptogram_type == "ARQC"


def test_sda_and_failed_sda():
    good, rec = session("sda")
    good.select(good.candidates()[0])
    assert 0x88 not in rec.ins  # SDA: no INTERNAL AUTHENTICATE
    assert names(good.first_ac(online_pin=True).tvr) >= {"sda_selected"}
    bad, _ = session("bad_sda")
    bad.select(bad.candidates()[0])
    assert {"sda_selected", "sda_failed"} <= names(bad.first_ac(online_pin=True).tvr)


def test_no_ca_keys_means_oda_failed_not_a_crash():
    s, _ = session("approve", params=dataclasses.replace(PARAMS, capks={}))
    s.select(s.candidates()[0])
    assert "dda_failed" in names(s.first_ac(online_pin=True).tvr)


def test_floor_limit_and_random_selection():
    params = dataclasses.replace(PARAMS, risk=RiskParams(10_000, 1_000, 50, 90))
    under, _ = session("approve", amount=5_000, params=params)
    under.select(under.candidates()[0])
    tvr = names(under.first_ac(online_pin=True).tvr)
    assert "exceeds_floor_limit" not in tvr
    assert "random_online" not in tvr  # rng picks 99: above every target percentage
    over, _ = session("approve", amount=10_000, params=params)
    over.select(over.candidates()[0])
    assert "exceeds_floor_limit" in names(over.first_ac(online_pin=True).tvr)
    lucky = EmvSession(CardEmulator(CATALOG.cards["approve"], CATALOG.imk_ac).transmit, params,
                       amount=500, currency=156, when=WHEN, unpredictable=UN,
                       rng=lambda a, b: a)
    lucky.select(lucky.candidates()[0])
    assert "random_online" in names(lucky.first_ac(online_pin=True).tvr)


def test_issuer_script_runs_after_the_second_generate_ac():
    s, rec = session("script")
    s.select(s.candidates()[0])
    card = s.first_ac(online_pin=True)
    req = {"2": card.pan, "23": "0" + card.pan_seq, "55": card.icc_data}
    icc = issuer_icc_data(req, CATALOG.imk_ac, "00")
    script = tlv.encode("72", tlv.encode("9F18", b"\x00\x00\x00\x01")
                        + tlv.encode("86", bytes.fromhex("84DA9F140505") + bytes(4)))
    final = s.complete(approved=True, arc="00", icc_response=icc + script)
    assert final.cryptogram_type == "TC" and rec.ins[-1] == 0xDA
    assert Tsi(bytes.fromhex(final.tsi)).is_set("script_processing_performed")
    assert "script_failed_after_final_gen_ac" not in names(final.tvr)
    rejected, _ = session("approve")
    rejected.select(rejected.candidates()[0])
    card = rejected.first_ac(online_pin=True)
    req = {"2": card.pan, "23": "0" + card.pan_seq, "55": card.icc_data}
    bad = tlv.encode("72", tlv.encode("86", bytes.fromhex("84FE000000")))
    final = rejected.complete(approved=True, arc="00",
                              icc_response=issuer_icc_data(req, CATALOG.imk_ac, "00") + bad)
    assert "script_failed_after_final_gen_ac" in names(final.tvr)


def test_card_removed_between_steps_is_a_read_error():
    s, rec = session("approve")
    s.select(s.candidates()[0])
    rec.emulator = None  # the card left the field

    def gone(apdu):
        raise OSError("card removed")
    s._transmit = gone
    with pytest.raises(CardReadError, match="card removed"):
        s.first_ac(online_pin=True)


# --- offline decisions -----------------------------------------------------------------

FLOOR = 10_000
OFFLINE = dataclasses.replace(PARAMS, offline_capable=True, risk=RiskParams(FLOOR, 0, 0, 0))
ONLINE_ONLY = dataclasses.replace(OFFLINE, offline_capable=False)


def field55(card) -> dict[str, bytes]:
    return tlv.flatten(tlv.parse(card.icc_data))


def verifies(card) -> bool:
    """The acquirer's check of the card's field 55 (any AC, over the data the card used)."""
    return verify_arqc(CATALOG.imk_ac, card.pan, card.pan_seq, card.icc_data)


def offline_sale(name="offline_ok", *, params=OFFLINE, amount=5_000, **kw):
    s, rec = session(name, params=params, amount=amount, **kw)
    s.select(s.candidates()[0])
    return s, rec, s.first_ac()


def second_ac(rec) -> tuple[int, bytes]:
    """P1 and 8A of the last GENERATE AC (8A leads the emulator's CDOL2)."""
    last = [a for a in rec.apdus if a[1] == 0xAE][-1]
    return last[2], last[5:7]


def test_kernel_params_take_the_offline_policy():
    capks = load_capks(CFG.emv.capk_file)
    assert kernel_params(CFG, capks).offline_capable is False
    assert kernel_params(CFG, capks, offline_capable=True).offline_capable is True


def test_tc_at_the_first_generate_ac_under_the_floor_limit():
    s, rec, card = offline_sale()
    assert card.cryptogram_type == "TC" and names(card.tvr) == set()
    assert rec.apdus[-1][2] == 0x40  # the terminal asked for a TC
    f55 = field55(card)
    assert f55["9F27"] == b"\x40" and f55["9F26"].hex().upper() == card.cryptogram
    assert f55["95"].hex().upper() == card.tvr and f55["9F34"].hex().upper() == "1F0002"
    assert int.from_bytes(f55["9F02"], "big") == 0x5000  # n12 BCD: 50.00
    assert {"9F36", "9F10", "9F37", "82"} <= set(f55)
    assert verifies(card) and s.arqc_icc == card.icc_data
    assert s.complete(approved=True, arc="00", icc_response=None) is card
    assert s.complete_offline() is card and s.offline_decision is None
    assert rec.ins.count(0xAE) == 1 and 0x82 not in rec.ins


def test_tc_after_offline_pin():
    card = dataclasses.replace(CATALOG.cards["offline_ok"], cvm="offline_pin")
    s, _ = session("", card=card, params=OFFLINE)
    assert s.select(s.candidates()[0]) == "offline_pin"
    assert s.verify_pin(pin_block_iso2("1234")) == (True, None, "none")
    result = s.first_ac()
    assert (result.cryptogram_type, result.cvm) == ("TC", "offline_pin") and verifies(result)


@pytest.mark.parametrize("params, amount, tvr", [
    (ONLINE_ONLY, 5_000, set()),  # not offline capable: online though nothing is set
    (OFFLINE, FLOOR, {"exceeds_floor_limit"}),  # at the floor limit: TAC online
], ids=["online-only-terminal", "at-floor-limit"])
def test_arqc_when_the_terminal_may_not_approve_offline(params, amount, tvr):
    s, rec, card = offline_sale(params=params, amount=amount)
    assert card.cryptogram_type == "ARQC" and names(card.tvr) == tvr
    assert rec.apdus[-1][2] == 0x80 and field55(card)["9F27"] == b"\x80"


def test_complete_offline_gets_a_tc_from_an_offline_card():
    # random selection sent this sale online; no host answered; the default codes allow it
    random = dataclasses.replace(OFFLINE, risk=RiskParams(FLOOR, 0, 50, 50))
    s, rec, card = offline_sale(params=random, rng=lambda a, b: a)  # rng picks 1: online
    assert card.cryptogram_type == "ARQC" and names(card.tvr) == {"random_online"}
    final = s.complete_offline()
    assert s.offline_decision == "TC" and second_ac(rec) == (0x40, b"Z3")
    assert final.cryptogram_type == "TC"
    f55 = field55(final)
    assert f55["9F27"] == b"\x40" and f55["9F26"].hex().upper() == final.cryptogram
    assert f55["9F36"] == field55(card)["9F36"]  # the same transaction
    assert verifies(final) and verifies(card)
    assert s.arqc_icc == card.icc_data != final.icc_data
    assert 0x82 not in rec.ins  # no issuer authentication without a host


def test_complete_offline_online_only_card_answers_aac():
    s, rec, card = offline_sale("no_cvm", params=ONLINE_ONLY)
    assert card.cryptogram_type == "ARQC"
    final = s.complete_offline()
    assert s.offline_decision == "TC" and second_ac(rec) == (0x40, b"Z3")
    assert final.cryptogram_type == "AAC" and field55(final)["9F27"] == b"\x00"
    assert verifies(final)


def test_terminal_asks_aac_when_the_default_action_codes_match():
    card = dataclasses.replace(CATALOG.cards["bad_sda"], cvm="no_cvm", offline="approve")
    s, rec = session("", card=card, params=OFFLINE)
    s.select(s.candidates()[0])
    first = s.first_ac()
    assert first.cryptogram_type == "ARQC" and "sda_failed" in names(first.tvr)
    final = s.complete_offline()
    assert s.offline_decision == "AAC" and second_ac(rec) == (0x00, b"Z3")
    assert final.cryptogram_type == "AAC" and verifies(final)


def test_consecutive_offline_sales_go_online_past_the_lower_limit():
    emulator = CardEmulator(CATALOG.cards["offline_ok"], CATALOG.imk_ac)
    kinds = []
    for _ in range(5):  # ATC - last online ATC: 2, 3, 4, 5 (LCOL), then 6
        _, _, card = offline_sale(emulator=emulator)
        kinds.append(card.cryptogram_type)
    assert kinds == ["TC"] * 4 + ["ARQC"]
    assert "lower_consecutive_offline_limit_exceeded" in names(card.tvr)


def test_card_past_its_upper_limit_answers_arqc_to_a_tc_request():
    emulator = CardEmulator(CATALOG.cards["offline_ok"], CATALOG.imk_ac)
    s, _, card = offline_sale(emulator=emulator, amount=FLOOR)  # online, approved
    req = {"2": card.pan, "23": "0" + card.pan_seq, "55": card.icc_data}
    ucol_zero = tlv.encode("72", tlv.encode("86", bytes.fromhex("84DA9F230500") + bytes(4)))
    s.complete(approved=True, arc="00",
               icc_response=issuer_icc_data(req, CATALOG.imk_ac, "00") + ucol_zero)
    s, rec, card = offline_sale(emulator=emulator)
    assert names(card.tvr) == set() and rec.apdus[-1][2] == 0x40  # the terminal asked TC
    assert card.cryptogram_type == "ARQC"  # the card's own UCOL (now 0) said no
    assert s.complete_offline().cryptogram_type == "AAC" and s.offline_decision == "TC"


def test_taps_stay_online_with_an_offline_capable_terminal():
    s, rec, card = offline_sale(contactless=True)
    assert card.cryptogram_type == "ARQC" and verifies(card)
    assert s.complete_offline() is card and s.offline_decision == "TC"
    assert 0xAE not in rec.ins and s.arqc_icc == card.icc_data


def test_card_answering_a_stronger_cryptogram_than_asked_is_refused():
    s, rec = session("offline_ok", params=ONLINE_ONLY)
    s.select(s.candidates()[0])

    def tc_for_arqc(apdu: bytes) -> bytes:  # a card that approves what it was asked to check
        answer = rec.emulator.transmit(apdu)
        return answer.replace(b"\x9F\x27\x01\x80", b"\x9F\x27\x01\x40") if apdu[1] == 0xAE else answer
    s._transmit = tc_for_arqc
    with pytest.raises(CardReadError, match="card answered TC to a request for ARQC"):
        s.first_ac()


def test_final_field55_holds_what_the_card_signed_at_the_second_ac():
    s, _ = session("approve")
    s.select(s.candidates()[0])
    first, final = approve_online(s, tamper=True)  # TVR gains "issuer authentication failed"
    assert final.cryptogram_type == "AAC" and verifies(first) and verifies(final)
    assert field55(final)["95"] != field55(first)["95"]
    assert field55(final)["95"].hex().upper() == final.tvr
