"""Start-up recovery over real files and TCP: what a power cut left in flight is settled
at the next start (DESIGN §6.4): a request in flight is reversed, an approval whose chip
never answered is reversed, an approved receipt never printed is printed."""
from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime

import pytest

from firmware.acquirer import messages
from firmware.app import StartupFault
from firmware.emv.card import ENTRY_CONTACTLESS, CardData
from firmware.journal import JOURNAL_NAME, Journal
from firmware.sim.runner import sim_session
from firmware.vault import Vault

PAN = "6226090000000014"  # catalog card "approve"


def leave_in_flight(cfg, *, answered: bool = False, card_pending: bool = False) -> int:
    """Write the journal a terminal killed mid-sale leaves: one 0200 committed (SENDING),
    optionally answered (APPROVED, the chip's final answer still to come)."""
    cfg.terminal.data_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(cfg.terminal.data_dir / JOURNAL_NAME, Vault.open(cfg.security.vault_key_file))
    try:
        ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
        card = CardData(pan=PAN, expiry="3012", pan_seq="", track2="", aid="", app_label="",
                        icc_data=b"", entry_mode=ENTRY_CONTACTLESS)
        stan, batch = journal.next_stan(), journal.batch_no()
        request = messages.sale_request(ids, stan=stan, batch=batch, amount=700, currency=156,
                                        card=card, pin_block=None, now=datetime.now())
        txn_id = journal.record_request(kind="sale", stan=stan, batch=batch, amount=700,
                                        currency=156, card=card, request=request, reversible=True)
        if answered:
            journal.record_response(txn_id, response_code="00", approved=True, rrn="000000000001",
                                    auth_code="123456", card_pending=card_pending)
        return stan
    finally:
        journal.close()


async def _restart(cfg):
    async with sim_session(cfg) as session:
        await asyncio.wait_for(session.terminal.online.wait(), 10)
        await asyncio.wait_for(session.terminal.backlog_printed.wait(), 10)
        record = await session.terminal.journal_call(lambda j: j.get(1))
        reversals = await session.acquirer.in_ledger(
            lambda ledger: ledger.reversal_count(cfg.terminal.terminal_id, f"{record.stan:06d}",
                                                 datetime.now().strftime("%m%d")))
        await session.display.wait_for("queued 0", timeout=10)
        return session, record, reversals


def test_a_request_in_flight_at_the_cut_is_reversed_at_start(sim_config):
    leave_in_flight(sim_config)
    session, record, reversals = asyncio.run(_restart(sim_config))
    assert session.terminal.recovery.unknown == (1,)
    assert (record.status, record.reversal_status) == ("REVERSED", "ACKED")
    assert reversals == 1
    assert session.printer.printed == []  # nothing approved, nothing printed


def test_an_approval_without_the_cards_final_answer_is_reversed_at_start(sim_config):
    leave_in_flight(sim_config, answered=True, card_pending=True)
    session, record, reversals = asyncio.run(_restart(sim_config))
    assert session.terminal.recovery.card_unfinished == (1,)
    assert (record.status, record.reversal_status) == ("REVERSED", "ACKED")
    assert reversals == 1 and session.printer.printed == []


def test_an_approved_receipt_never_printed_is_printed_at_start(sim_config):
    stan = leave_in_flight(sim_config, answered=True)
    session, record, reversals = asyncio.run(_restart(sim_config))
    assert record.status == "APPROVED" and reversals == 0
    assert sorted(session.printer.printed) == [f"000001-{stan:06d}-customer", f"000001-{stan:06d}-merchant"]
    assert record.printed_merchant_at and record.printed_customer_at


def test_a_corrupt_journal_stops_the_terminal_with_a_visible_fault(sim_config):
    sim_config.terminal.data_dir.mkdir(parents=True)
    path = sim_config.terminal.data_dir / JOURNAL_NAME
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)

    async def go():
        async with sim_session(sim_config):
            pass
    with pytest.raises(StartupFault, match="integrity"):
        asyncio.run(go())
    assert path.read_bytes()[16:32] == b"\xff" * 16  # not reset
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(path).execute("PRAGMA integrity_check").fetchall()
