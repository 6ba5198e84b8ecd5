"""The EMV card path end to end through real pcscd + vpcd + pyscard: the terminal reads with
PcscCardReader, catalog cards sit in vpcd's slot (SimPcscSlot), the acquirer simulator runs
on loopback. The same scenarios with the in-process emulator are in tests/test_e2e_emv.py.

Needs pcscd and vsmartcard-vpcd (tests/pcscd_fixture.py). Every wait is on screens, reader
state or acquirer requests, with a timeout; pcscd sees a card come or go within ~0.4 s.
"""
from __future__ import annotations

import asyncio

import pytest

from firmware.hal.reader_pcsc import PcscCardReader, card_atr, looks_contactless
from firmware.sim.card_emulator import ATR_CONTACTLESS
from firmware.sim.runner import sim_session
import pcscd_fixture
from pcscd_fixture import READER
from scenario import (
    OFFLINE_PIN_THREE_WRONG, OFFLINE_PIN_WRONG_THEN_RIGHT, ONLINE_PIN_APPROVED, REMOVE_TO_IDLE,
    SALE_5000, TAP_OVER_CVM_LIMIT, merchant_copy, play, pull_card_after_the_sale_is_sent, row, run_scenario, tvr_bits,
)

pcscd, vpcd_lock = pcscd_fixture.pcscd, pcscd_fixture.vpcd_lock  # the fixtures, for this module

SLOT_TIMEOUT = 5.0  # s for pcscd to report vpcd's slot empty


@pytest.fixture(autouse=True)
def empty_slot(vpcd_lock):
    """Start from a slot pcscd reports empty: the previous test's card may still be leaving."""
    watcher = PcscCardReader(READER)
    watcher.attach(lambda event: None)
    try:
        assert watcher.wait_for(lambda r: r.fault == "" and r.reader_name == vpcd_lock.reader
                                and not r.present(), SLOT_TIMEOUT), watcher.status()
    finally:
        watcher.close()


def run(cfg, script: str):
    """Run a scenario script in a PC/SC simulator session; the session for after-checks."""
    return run_scenario(cfg, script, pcsc=True)


def run_session(cfg, go):
    """Run `await go(session)` in a PC/SC simulator session; (session, what go returned)."""
    async def main():
        async with sim_session(cfg, pcsc=True) as session:
            return session, await go(session)
    return asyncio.run(main())


async def card_gone(session) -> None:
    """Wait until the terminal's PC/SC reader has seen the card leave."""
    reader = session.terminal.devices.reader
    seen = await asyncio.to_thread(reader.wait_for, lambda r: not r.present(), SLOT_TIMEOUT)
    assert seen, reader.status()


def test_contact_sale_with_online_pin_has_tc_tvr_and_tsi(sim_config):
    session = run(sim_config, SALE_5000 + ONLINE_PIN_APPROVED + REMOVE_TO_IDLE)
    r = row(session)
    assert (r["cryptogram_type"], r["cvm"], r["entry_mode"]) == ("TC", "online_pin", "051")
    assert r["reversal"] == "CANCELLED"
    assert tvr_bits(r["tvr"]) == {"exceeds_floor_limit", "online_pin_entered"}
    assert r["tsi"] == "F800"
    copy = " ".join(merchant_copy(session).split())
    assert f"TVR {r['tvr']}" in copy and r["tsi"] in copy and "PIN VERIFIED" in copy


def test_taps_under_and_over_the_cvm_limit(sim_config, vpcd_lock):
    """The reader is not forced contactless and its name does not say so: only the tapped
    card's ATR (3B80800101) through pcscd makes these taps (entry mode 071)."""
    assert not looks_contactless(vpcd_lock.reader, b"")

    async def go(session):
        await play(session, """
            keys 1250 ENTER
            expect screen "Insert, tap or swipe"
            tap approve
            expect screen "Take receipts"
            expect journal APPROVED
        """)
        assert card_atr(vpcd_lock.reader) == ATR_CONTACTLESS
        quick = row(session), list(session.display.history)
        await play(session, """
            keys ENTER
            expect screen "Key in amount"
            remove
        """)
        await card_gone(session)
        await play(session, TAP_OVER_CVM_LIMIT + """
            expect balance approve 848750
            keys ENTER
            expect screen "Key in amount"
            remove
        """)
        return quick

    session, (quick, screens) = run_session(sim_config, go)
    assert (quick["entry_mode"], quick["cvm"], quick["cryptogram_type"]) == ("071", "none", "ARQC")
    assert not any("Enter PIN" in screen.lines for screen in screens)
    assert (row(session)["entry_mode"], row(session)["cvm"]) == ("071", "online_pin")


def test_offline_pin_wrong_then_right(sim_config):
    session = run(sim_config, SALE_5000 + OFFLINE_PIN_WRONG_THEN_RIGHT + REMOVE_TO_IDLE)
    r = row(session)
    assert (r["cvm"], r["cryptogram_type"], r["entry_mode"]) == ("offline_pin", "TC", "051")


def test_offline_pin_three_wrong_is_declined_by_the_card(sim_config):
    session = run(sim_config, SALE_5000 + OFFLINE_PIN_THREE_WRONG + REMOVE_TO_IDLE)
    assert session.acquirer.requests_seen == 1  # the sign-on only: nothing reached the host


def test_card_removed_at_the_pin_screen_aborts_and_the_next_sale_works(sim_config):
    async def go(session):
        await play(session, "expect signon\n" + SALE_5000 + """
            insert approve
            expect screen "Enter PIN"
            remove
            expect screen "Card removed"
            expect journal NONE
        """)
        sent = session.acquirer.requests_seen
        await play(session, """
            keys ENTER
            expect screen "Key in amount"
        """ + SALE_5000 + ONLINE_PIN_APPROVED + REMOVE_TO_IDLE)
        return sent

    session, sent = run_session(sim_config, go)
    assert sent == 1  # the sign-on only
    assert row(session)["status"] == "APPROVED"


def test_card_removed_after_the_sale_was_sent_is_reversed(sim_config):
    async def go(session):
        await pull_card_after_the_sale_is_sent(session)

    session, _ = run_session(sim_config, go)
    r = row(session)
    assert (r["status"], r["reversal"]) == ("REVERSED", "ACKED")
    assert "no second GENERATE AC" in r["failure"]
