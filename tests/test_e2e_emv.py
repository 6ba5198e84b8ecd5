"""The EMV card path end to end: terminal + acquirer simulator on loopback, catalog cards in
the in-process emulator, driven like a cashier (scenario scripts), then the journal row and
the receipts checked. The same paths over real pcscd + vpcd are in tests/test_pcsc.py."""
from __future__ import annotations

import asyncio

from firmware.sim.runner import sim_session
from scenario import (
    OFFLINE_PIN_THREE_WRONG, OFFLINE_PIN_WRONG_THEN_RIGHT, ONLINE_PIN_APPROVED, SALE_5000,
    TAP_OVER_CVM_LIMIT,
    merchant_copy, pull_card_after_the_sale_is_sent, row, run_scenario as run, tvr_bits,
)

def test_online_pin_sale_has_tc_tvr_and_tsi_on_journal_and_receipt(sim_config):
    session = run(sim_config, SALE_5000 + ONLINE_PIN_APPROVED)
    r = row(session)
    assert (r["cryptogram_type"], r["cvm"], r["entry_mode"]) == ("TC", "online_pin", "051")
    assert r["reversal"] == "CANCELLED"
    # Floor limit 0: every sale "exceeds" it; DDA passed, so no ODA bit.
    assert tvr_bits(r["tvr"]) == {"exceeds_floor_limit", "online_pin_entered"}
    assert r["tsi"] == "F800"  # ODA, CVM, card risk, issuer auth, terminal risk performed
    copy = merchant_copy(session)
    assert f"TVR {r['tvr']}" in " ".join(copy.split()) and r["tsi"] in copy
    assert "TC" in copy and r["arqc"] in copy and "PIN VERIFIED" in copy


def test_offline_pin_wrong_then_right(sim_config):
    session = run(sim_config, SALE_5000 + OFFLINE_PIN_WRONG_THEN_RIGHT)
    r = row(session)
    assert r["cvm"] == "offline_pin" and r["cryptogram_type"] == "TC"
    assert "PIN VERIFIED" in merchant_copy(session)


def test_offline_pin_three_wrong_blocks_and_the_card_declines(sim_config):
    session = run(sim_config, SALE_5000 + OFFLINE_PIN_THREE_WRONG)
    assert session.acquirer.requests_seen == 1  # the sign-on only: nothing reached the host


def test_card_with_pin_tries_exhausted_is_declined_without_asking(sim_config):
    session = run(sim_config, SALE_5000 + """
        insert pin_blocked
        expect screen "Declined by card"
        expect journal NONE
    """)
    assert not any("Enter PIN" in screen.lines for screen in session.display.history)


def test_signature_card_prints_a_signature_line(sim_config):
    session = run(sim_config, SALE_5000 + """
        insert signature
        expect screen "Sign merchant copy"
        expect journal APPROVED
    """)
    assert row(session)["cvm"] == "signature"
    assert "CARDHOLDER SIGNATURE" in merchant_copy(session)
    assert "PIN VERIFIED" not in merchant_copy(session)


def test_card_declining_at_second_generate_ac_is_reversed(sim_config):
    session = run(sim_config, SALE_5000 + """
        insert second_ac_decline
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Card declined,"
        expect journal REVERSED
        expect reversals 0
        expect balance second_ac_decline 1000000
    """)
    r = row(session)
    assert (r["cryptogram_type"], r["reversal"]) == ("AAC", "ACKED")
    assert "after approval" in r["failure"]


def test_card_pulled_before_second_generate_ac_is_reversed(sim_config):
    async def go():
        async with sim_session(sim_config) as session:
            await pull_card_after_the_sale_is_sent(session)
            return session
    session = asyncio.run(go())
    assert "no second GENERATE AC" in row(session)["failure"]


def test_application_choice_on_screen(sim_config):
    session = run(sim_config, SALE_5000 + """
        insert multi_app
        expect screen "Select app"
        expect screen "2 UnionPay Credit"
        keys 2
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
    """)
    assert row(session)["aid"] == "A000000333010102"


def test_broken_chip_falls_back_to_swipe(sim_config):
    session = run(sim_config, SALE_5000 + """
        insert app_blocked
        expect screen "Swipe card"
        swipe app_blocked
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
        expect journal APPROVED
    """)
    r = row(session)
    assert (r["entry_mode"], r["tvr"], r["aid"]) == ("801", None, None)
    assert "FALLBACK SWIPE" in merchant_copy(session)


def test_chip_card_swiped_is_told_to_insert(sim_config):
    session = run(sim_config, SALE_5000 + """
        swipe approve
        expect screen "Please insert card"
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
    """)
    assert row(session)["entry_mode"] == "051"


def test_magstripe_only_card_sale(sim_config):
    session = run(sim_config, SALE_5000 + """
        swipe magstripe_only
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
        expect journal APPROVED
    """)
    r = row(session)
    assert (r["entry_mode"], r["cvm"]) == ("021", "online_pin")
    assert "SWIPE" in merchant_copy(session)


def test_contactless_under_cvm_limit_is_a_quick_tap_without_pin(sim_config):
    session = run(sim_config, """
        keys 1250 ENTER
        expect screen "Insert, tap or swipe"
        tap approve
        expect screen "Take receipts"
        expect journal APPROVED
        keys ENTER
        expect screen "Key in amount"
    """)
    r = row(session)
    assert (r["entry_mode"], r["cvm"], r["cryptogram_type"]) == ("071", "none", "ARQC")
    assert "NO PIN, NO SIGNATURE" in merchant_copy(session)
    assert not any("Enter PIN" in s.lines for s in session.display.history)


def test_contactless_over_cvm_limit_asks_for_online_pin(sim_config):
    session = run(sim_config, TAP_OVER_CVM_LIMIT + """
        expect balance approve 850000
    """)
    assert row(session)["cvm"] == "online_pin"


def test_contactless_over_transaction_limit_must_insert(sim_config):
    session = run(sim_config, """
        keys 600000 ENTER
        expect screen "Insert or swipe card"
        tap approve
        expect screen "Insert card"
        remove
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
    """)
    assert row(session)["entry_mode"] == "051"


def test_sda_card_and_failed_sda_are_in_the_tvr(sim_config):
    good = run(sim_config, SALE_5000 + """
        insert sda
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
    """)
    assert "sda_selected" in tvr_bits(row(good)["tvr"])
    assert "sda_failed" not in tvr_bits(row(good)["tvr"])


def test_failed_sda_goes_online_with_the_tvr_bit(sim_config):
    session = run(sim_config, SALE_5000 + """
        insert bad_sda
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
    """)
    assert {"sda_selected", "sda_failed"} <= tvr_bits(row(session)["tvr"])


def test_issuer_script_is_run_after_the_second_generate_ac(sim_config):
    session = run(sim_config, SALE_5000 + """
        insert script
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
    """)
    tsi = bytes.fromhex(row(session)["tsi"])
    assert tsi[0] & 0x04  # script processing performed
    assert "script_failed_after_final_gen_ac" not in tvr_bits(row(session)["tvr"])
