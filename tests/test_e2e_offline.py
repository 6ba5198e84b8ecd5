"""Offline approvals end to end: the acquirer simulator goes down, the terminal approves
within the [offline] caps (or declines with the reason), stores advices, and forwards them
when the simulator is back; the ledger and the journal agree at the end."""
from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.clock import FixedClock
from firmware.config import load_config
from firmware.journal import JOURNAL_NAME
from scenario import merchant_copy, play, row, run_scenario as run

DOWN = """
    expect signon
    acquirer down
"""
TAP_5000_OFFLINE = """
    keys 5000 ENTER
    expect screen "Insert, tap or swipe"
    tap approve
    expect screen "Approved offline"
    expect screen "Take receipts"
    expect journal APPROVED
"""


def config(tmp_path, offline=None, saf=None, emv=None, acquirer=None):
    over = sim_overrides(tmp_path, echo_interval=1, **(acquirer or {}))
    over["saf"] = {"retry_first": 0.2, "retry_max": 1.0, **(saf or {})}
    if offline:
        over["offline"] = offline
    if emv:
        over["emv"] = emv
    return load_config(SIM_TOML, overrides=over)


def journal_rows(session) -> list[sqlite3.Row]:
    path = session.cfg.terminal.data_dir / JOURNAL_NAME
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT t.*, a.status AS advice, a.attempts AS advice_attempts, "
                          "r.status AS reversal FROM txn t LEFT JOIN advice a ON a.txn_id = t.id "
                          "LEFT JOIN reversal r ON r.txn_id = t.id ORDER BY t.id").fetchall()
    finally:
        db.close()


def test_tap_offline_then_forwarded_when_the_host_is_back(tmp_path):
    session = run(config(tmp_path), DOWN + TAP_5000_OFFLINE + """
        expect queue 1
        keys ENTER
        expect screen "OFFLINE  queued 1"
        expect balance approve 1000000
        acquirer up
        expect queue 0 within 15
        expect screen "ONLINE  queued 0" within 15
        expect balance approve 995000
    """)
    [txn] = journal_rows(session)
    assert (txn["status"], txn["offline_code"], txn["advice"], txn["reversal"]) == (
        "APPROVED", "00", "ACKED", "CANCELLED")
    assert "OFFLINE" in merchant_copy(session)


def test_offline_pin_card_is_approved_by_store_and_forward_of_its_arqc(tmp_path):
    session = run(config(tmp_path), DOWN + """
        keys 2000 ENTER
        insert offline_pin
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Approved offline"
        expect journal APPROVED
        acquirer up
        expect queue 0 within 15
        expect balance offline_pin 998000
    """)
    txn = row(session)
    assert (txn["offline_code"], txn["cryptogram_type"]) == ("00", "ARQC")


def test_offline_capable_card_approves_at_the_first_generate_ac_under_the_floor_limit(tmp_path):
    session = run(config(tmp_path, emv={"floor_limit": 10_000}), """
        expect signon
        keys 5000 ENTER
        insert offline_ok
        expect screen "Approved offline"
        expect journal APPROVED
        expect queue 0 within 15
        expect balance offline_ok 995000
    """, )
    txn = row(session)
    assert (txn["offline_code"], txn["cryptogram_type"]) == ("Y1", "TC")
    assert "Y1" in merchant_copy(session)


def test_offline_capable_card_approves_at_the_second_generate_ac_when_the_host_is_down(tmp_path):
    # under the floor limit, sent online by random selection (99 %: always); with the host
    # away the default codes let the terminal ask the card for a TC (over the floor limit the
    # card's IAC-Default says AAC and store-and-forward decides, as for offline_pin above)
    cfg = config(tmp_path, emv={"floor_limit": 10_000, "random_target_percent": 99,
                                "random_max_percent": 99})
    session = run(cfg, DOWN + """
        keys 5000 ENTER
        insert offline_ok
        expect screen "Approved offline"
        acquirer up
        expect queue 0 within 15
        expect balance offline_ok 995000
    """)
    txn = row(session)
    assert (txn["offline_code"], txn["cryptogram_type"]) == ("Y3", "TC")


REFUSALS = [
    # what the cashier does, the reason shown, the config changes
    ("keys 5000 ENTER\n insert approve\n expect screen \"Enter PIN\"\n keys 1234 ENTER",
     "PIN needs the host", {}),
    ("keys 5000 ENTER\n swipe magstripe_only\n expect screen \"Enter PIN\"\n keys 1234 ENTER",
     "No swipe offline", {}),
    ("keys 40000 ENTER\n tap approve", "Over offline limit", {}),
    ("keys 5000 ENTER\n tap approve", "Online only", {"mode": "require-online"}),
]


@pytest.mark.parametrize("steps, reason, offline", REFUSALS,
                         ids=["online-pin", "swipe", "over-limit", "require-online"])
def test_refusals_decline_with_the_reason_and_queue_nothing(tmp_path, steps, reason, offline):
    session = run(config(tmp_path, offline=offline), DOWN + steps + f"""
        expect screen "DECLINED"
        expect screen "{reason}"
        expect queue 0
    """)
    assert all(t["status"] != "APPROVED" for t in journal_rows(session))


def test_count_and_total_caps(tmp_path):
    session = run(config(tmp_path, offline={"max_count": 3, "max_total": 9_000}), DOWN + """
        keys 3000 ENTER
        tap approve
        expect screen "Approved offline"
        expect screen "Take receipts"
        keys ENTER
        keys 5000 ENTER
        tap approve
        expect screen "Approved offline"
        expect screen "Take receipts"
        keys ENTER
        keys 1500 ENTER
        tap approve
        expect screen "Offline total full"
        keys ENTER
        keys 500 ENTER
        tap approve
        expect screen "Approved offline"
        expect screen "Take receipts"
        keys ENTER
        keys 100 ENTER
        tap approve
        expect screen "Offline count full"
        expect queue 3
    """)
    approved = [t["amount"] for t in journal_rows(session) if t["status"] == "APPROVED"]
    assert approved == [3000, 5000, 500]


def test_age_cap_stops_offline_approvals_when_the_oldest_is_too_old(tmp_path):
    clock = FixedClock(datetime(2026, 11, 21, 10, 0, 0))

    async def go():
        from firmware.sim.runner import sim_session
        cfg = config(tmp_path, offline={"max_age": 3600})
        async with sim_session(cfg, clock=clock) as session:
            await play(session, DOWN + TAP_5000_OFFLINE + "keys ENTER")
            clock.advance(3601)
            await play(session, """
                keys 1000 ENTER
                tap approve
                expect screen "Queued too long"
            """)
    asyncio.run(go())


def test_an_advice_the_acquirer_declines_is_kept_and_alerts_the_operator(tmp_path):
    session = run(config(tmp_path), DOWN + """
        keys 5000 ENTER
        tap low_balance
        expect screen "Approved offline"
        expect screen "Take receipts"
        keys ENTER
        acquirer up
        expect queue 0 within 15
        expect screen "! 1 alert: support" within 15
        expect balance low_balance 1000
    """)
    [txn] = journal_rows(session)
    assert (txn["status"], txn["advice"]) == ("APPROVED", "DECLINED")


def test_lost_advice_answer_is_repeated_as_0221_and_charged_once(tmp_path):
    session = run(config(tmp_path), DOWN + TAP_5000_OFFLINE + """
        keys ENTER
        fault drop times 1 mti 0220
        acquirer up
        expect queue 0 within 20
        expect balance approve 995000
    """)
    [txn] = journal_rows(session)
    assert txn["advice"] == "ACKED" and txn["advice_attempts"] == 2
