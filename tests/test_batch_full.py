"""The batch-full rule: an open batch holds at most [settlement] max_batch_txns card and QR
transactions (sales, voids, refunds ...), so its 0500 totals always fit field 48's 3-digit
counts and the batch can always be settled. The journal's count, the rule itself, its
Chinese text, and end to end through the real terminal and the simulator: the batch fills,
the next sale and a void are refused, settlement goes through, the new batch takes sales."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.app_menu import BATCH_FULL, MenuWork
from firmware.config import SettlementConfig, load_config
from firmware.flows.types import Screen, wrap
from firmware.flows.zh import translate
from firmware.journal import Journal
from firmware.receipts import text_width
from firmware.reports import BatchTotals, Tally
from firmware.settlement import parse_totals_field, totals_field
from firmware.sim.runner import sim_session
from firmware.vault import Vault
from scenario import play, tap_sale

TID = "10000001"


# ---- field 48 stays valid ------------------------------------------------------------------

def test_the_largest_batch_allowed_fits_field_48():
    assert SettlementConfig.max_batch_txns < 1000  # the default, 500
    full = totals_field(BatchTotals(debit=Tally(999, 999_999_999_999), credit=Tally(999, 1)))
    assert parse_totals_field(full) == (999, 999_999_999_999, 999, 1)


# ---- the journal's count -------------------------------------------------------------------

@pytest.fixture
def journal(tmp_path):
    ticks = iter(datetime(2026, 3, 1, 9, 30) + timedelta(seconds=i) for i in range(1000))
    j = Journal(tmp_path / "journal.db", Vault.open(tmp_path / "vault.key"), now=lambda: next(ticks))
    yield j
    j.close()


def record(journal: Journal, kind: str) -> int:
    stan = journal.next_stan()
    return journal.record_request(kind=kind, stan=stan, batch=journal.batch_no(), amount=100,
                                  currency=156, card=None, request={"t": "0200", "41": TID},
                                  reversible=False)


def test_open_batch_count_is_what_moves_money_at_the_acquirer_in_any_status(journal):
    for kind in ("sale", "void", "refund", "completion", "qr_sale", "qr_refund"):
        record(journal, kind)
    for kind in ("balance", "preauth", "preauth_cancel"):
        record(journal, kind)
    journal.record_cash(amount=500, tendered=500, currency=156, operator="01", terminal_id=TID)
    declined = record(journal, "sale")
    journal.record_not_sent(declined, "link down")  # conservative: it still counts
    assert journal.open_batch_count() == 7
    journal.close_batch()
    assert journal.open_batch_count() == 0
    record(journal, "sale")
    assert journal.open_batch_count() == 1


# ---- the rule (MenuWork._batch_full over a stand-in terminal) ----------------------------

def rule(most: int):
    return SimpleNamespace(cfg=SimpleNamespace(settlement=SettlementConfig(
        mode="T+1", d0_rate=70, d0_fixed=0, max_batch_txns=most)), _batch_warned=0)


@pytest.mark.parametrize("kind", ["sale", "void", "refund", "completion", "qr_sale"])
def test_a_full_batch_refuses_what_moves_money(kind, caplog):
    terminal = rule(3)
    assert MenuWork._batch_full(terminal, kind, 1, 2) is None
    verdict = MenuWork._batch_full(terminal, kind, 1, 3)
    assert (verdict.action, verdict.reason) == ("refuse", "Batch full, settle first")
    assert f"batch 000001 full (3 of 3): {kind} refused" in caplog.text


@pytest.mark.parametrize("kind", ["balance", "preauth", "cash"])
def test_a_full_batch_lets_what_moves_no_money_through(kind):
    assert MenuWork._batch_full(rule(3), kind, 1, 999) is None


def test_nearly_full_warns_once_per_batch(caplog):
    terminal = rule(500)
    caplog.set_level(logging.WARNING, logger="kpos.app")
    for count in (479, 480, 481, 499):
        assert MenuWork._batch_full(terminal, "sale", 7, count) is None
    MenuWork._batch_full(terminal, "sale", 8, 490)
    warned = [r.getMessage() for r in caplog.records if "nearly full" in r.getMessage()]
    assert warned == ["batch 000007 nearly full (480 of 500): settle soon",
                      "batch 000008 nearly full (490 of 500): settle soon"]


def test_the_refusal_reads_in_chinese_on_one_screen_line():
    shown = translate(Screen("Refused", wrap(BATCH_FULL, 3), "error"))
    assert shown.lines == ("批次已满,请先结算",)
    assert text_width(shown.lines[0]) <= 20


# ---- end to end ------------------------------------------------------------------------------

SETTLE = """
    keys MENU 9 2
    keys 00 ENTER 123456 ENTER
    expect screen "Settle batch?"
    keys ENTER
    expect screen "Settled" within 20
"""


def test_a_full_batch_refuses_sales_and_voids_until_it_is_settled(tmp_path):
    over = sim_overrides(tmp_path)
    over.update(operators={"login": True}, settlement={"max_batch_txns": 3})
    cfg = load_config(SIM_TOML, overrides=over)

    async def go():
        async with sim_session(cfg) as s:
            await play(s, 'login 01 0000\nexpect screen "op 01"\nexpect signon\n'
                       + tap_sale(100) + tap_sale(200) + tap_sale(300))
            stan = (await s.terminal.journal_call(lambda j: j.page(0, 1)))[0].stan
            sent = s.acquirer.requests_seen
            await play(s, """
                keys 400 ENTER
                tap approve
                expect screen "Refused"
                expect screen "Batch full, settle"
                keys ENTER
                remove
                expect screen "Key in amount"
                keys MENU 2
                expect screen "Supervisor no."
                keys 00 ENTER
                expect screen "Password"
                keys 123456 ENTER
                expect screen "STAN"
            """ + f"""
                keys {stan} ENTER
                expect screen "ENTER to void"
                keys ENTER
                tap approve
                expect screen "Batch full, settle"
                keys ENTER
                remove
                expect screen "Key in amount"
            """)
            refused_sent = s.acquirer.requests_seen - sent
            full = await s.terminal.journal_call(lambda j: (j.batch_no(), j.open_batch_count()))
            await play(s, SETTLE + "expect batch 2\nkeys ENTER\nexpect screen \"Key in amount\"\n"
                       + tap_sale(500))
            rows = await s.terminal.journal_call(lambda j: j.page(0, 10))
            return refused_sent, full, [(r.batch, r.amount, r.status) for r in reversed(rows)]

    refused_sent, full, rows = asyncio.run(go())
    assert refused_sent == 0  # the terminal refused them itself
    assert full == (1, 3)
    assert rows == [(1, 100, "APPROVED"), (1, 200, "APPROVED"), (1, 300, "APPROVED"),
                    (2, 500, "APPROVED")]
    report = (tmp_path / "data" / "receipts" / "settle-000001.txt").read_text(encoding="utf-8")
    assert "6.00" in report  # the three sales of the full batch, settled
