"""The merchant's menu end to end, through the real terminal and the simulator over TCP:
operator login and lockout, the operator on rows and receipts, the transaction list with
scrolling, find by RRN, reprints marked REPRINT, the X report (batch stays open), the echo
test and sign-on from the menu, sign off, the scheduled sign-on and the batch number sync."""
from __future__ import annotations

import asyncio
from dataclasses import replace

from conftest import SIM_TOML, sim_overrides
from firmware.config import load_config
from firmware.journal import JOURNAL_NAME, Journal
from firmware.sim.runner import sim_session
from firmware.vault import Vault
from scenario import play, tap_sale

TID = "10000001"


def config(tmp_path, **sections):
    over = sim_overrides(tmp_path)
    over["operators"] = {"login": True}
    over.update(sections)
    return load_config(SIM_TOML, overrides=over)


def receipt(session, name: str) -> str:
    return (session.receipts_dir / f"{name}.txt").read_text(encoding="utf-8")


def test_wrong_passwords_lock_the_operator_out_and_nothing_is_sold(tmp_path):
    async def go():
        async with sim_session(config(tmp_path, operators={"login": True, "max_failures": 3})) as s:
            await play(s, """
                login 01 1111
                expect screen "Wrong password (2"
                login 01 2222
                expect screen "Wrong password (1"
                login 01 3333
                expect screen "Locked 15 min"
                login 01 0000
                expect screen "Locked 15 min"
                keys 1250 ENTER
                expect screen "Operator no."
            """)
            return await s.terminal.journal_call(lambda j: j.count())

    assert asyncio.run(go()) == 0  # the keys at the login screen sold nothing


def test_the_menu_lists_finds_reprints_reports_and_signs_off(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as s:
            await play(s, """
                login 01 0000
                expect screen "op 01"
                expect signon
            """ + "".join(tap_sale(amount) for amount in (101, 102, 103, 104, 105)))
            rows = await s.terminal.journal_call(lambda j: j.page(0, 10))
            await play(s, """
                # the last transactions, four a screen, newest first
                keys MENU 8
                expect screen "TRANSACTIONS"
                keys 1
                expect screen "TXNS 1-4/5"
                expect screen "SALE"
                keys ENTER
                expect screen "TXNS 5-5/5"
                keys BACK
                expect screen "TXNS 1-4/5"
                # the newest one in detail, then reprinted from there
                keys 1
                expect screen "APPROVED"
                keys ENTER
                expect screen "Printed"
                keys CANCEL
            """)
            reprinted = receipt(s, f"000001-{rows[0].stan:06d}-customer")
            await play(s, f"""
                keys CANCEL
                expect screen "Key in amount"
                # find by RRN
                keys MENU 8 3
                expect screen "RRN"
                keys {rows[2].rrn} ENTER
                expect screen "CNY 1.03"
                keys CANCEL
                keys CANCEL
                # reprint the last receipt
                keys MENU 8 4
                expect screen "Printed"
                keys ENTER
                # X report: totals printed, the batch stays open
                keys MENU 9 1
                expect screen "Debits 5"
                expect batch 1
                keys ENTER
                # echo test and sign-on from the menu
                keys MENU 9 3
                expect screen "Host answered 00"
                keys ENTER
                keys MENU 9 4
                expect screen "Signed on"
                keys ENTER
                # sign off: back at the login screen
                keys MENU 9 5
                expect screen "Operator no."
            """)
            x_report = receipt(s, "x-report-000001")
            return rows, reprinted, x_report

    rows, reprinted, x_report = asyncio.run(go())
    assert [r.amount for r in rows] == [105, 104, 103, 102, 101]
    assert all(r.operator == "01" for r in rows)
    assert "*** REPRINT ***" in reprinted and "OPERATOR NO." in reprinted
    assert "X REPORT" in x_report and "5.15" in x_report  # 1.01 + ... + 1.05, batch open


def test_the_scheduled_sign_on_fetches_new_working_keys(tmp_path):
    cfg = config(tmp_path)
    cfg = replace(cfg, acquirer=replace(cfg.acquirer, signon_interval=0.3))  # below the
    # config's 60 s floor on purpose: the schedule itself is what is tested

    async def go():
        async with sim_session(cfg) as s:
            await asyncio.wait_for(s.terminal.signed_on.wait(), 10)
            first = s.terminal.session_keys
            handled = s.acquirer.requests_handled
            await s.acquirer.wait_handled(handled + 1, 10)  # the next sign-on
            while s.terminal.session_keys is first:
                await s.acquirer.wait_handled(s.acquirer.requests_handled + 1, 10)
            return first, s.terminal.session_keys

    first, second = asyncio.run(go())
    assert first.pik != second.pik


def test_sign_on_takes_the_hosts_batch_number_only_for_an_empty_batch(tmp_path):
    journal = Journal(tmp_path / JOURNAL_NAME, Vault.open(tmp_path / "vault.key"))
    try:
        assert journal.sync_batch(7) and journal.batch_no() == 7
        assert not journal.sync_batch(7)
        journal.record_request(kind="sale", stan=journal.next_stan(), batch=7, amount=100,
                               currency=156, card=None, request={"41": TID}, reversible=False)
        assert not journal.sync_batch(9) and journal.batch_no() == 7  # settlement reconciles
    finally:
        journal.close()


def test_an_upload_cut_short_is_finished_first_then_the_current_batch_settles(tmp_path):
    cfg = config(tmp_path)
    settle = """
        keys MENU 9 2
        keys 00 ENTER 123456 ENTER
        expect screen "Settle batch?"
        keys ENTER
    """

    async def first_day():
        async with sim_session(cfg) as s:
            await play(s, 'login 01 0000\nexpect screen "op 01"\nexpect signon\n' + tap_sale(300) + tap_sale(400) + f"""
                acquirer unbalance 1
                fault drop times 1 mti 0320
                {settle}
                expect screen "Settlement" within 15
                expect screen "batch upload"
                expect batch 2
                keys ENTER
                expect screen "Key in amount"
            """ + tap_sale(500))
            return await s.terminal.journal_call(lambda j: (j.settlement(1), j.pending_uploads(1)))

    async def next_morning():
        async with sim_session(cfg) as s:
            await play(s, f"""
                login 01 0000
                expect screen "op 01"
                expect signon
                {settle}
                expect screen "Settled" within 20
                expect batch 3
            """)
            return await s.terminal.journal_call(lambda j: (j.settlement(1), j.settlement(2)))

    cut, pending = asyncio.run(first_day())
    assert cut["status"] == "UPLOADING" and len(pending) == 2
    old, current = asyncio.run(next_morning())
    assert old["status"] == current["status"] == "SETTLED"
    assert (tmp_path / "data" / "receipts" / "settle-000001.txt").exists()
    report = (tmp_path / "data" / "receipts" / "settle-000002.txt").read_text(encoding="utf-8")
    assert "5.00" in report  # the sale made after the cut, in batch 2


def test_terminal_info_is_for_an_admin_and_shows_key_check_values_only(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as s:
            await play(s, """
                login 01 0000
                expect screen "op 01"
                expect signon
                keys MENU 9 ENTER
                expect screen "MANAGER 2/2"
                keys 6
                expect screen "SUPERVISOR"
                keys 00 ENTER 123456 ENTER
                expect screen "Admin only"
                keys ENTER
                keys MENU 9 ENTER 6
                keys 99 ENTER 12345678 ENTER
                expect screen "TID 10000001"
            """)
            return s.display.current, s.terminal.session_keys

    shown, keys = asyncio.run(go())
    text = " ".join(shown.lines)
    assert "PIK" in text and keys.pik.hex().upper() not in text
