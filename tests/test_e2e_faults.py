"""Every acquirer fault of issue 4 point 6, end to end: the real terminal sells through the
simulator with the fault on one exchange; afterwards (reversals and advices drained) the
simulator's ledger and the terminal's journal and receipts agree
(firmware.sim.powercut.reconcile: no debit without an approval, no approval without its
debit, nothing charged twice, every receipt has its row)."""
from __future__ import annotations

import asyncio

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.config import load_config
from firmware.journal import JOURNAL_NAME
from firmware.sim.powercut import reconcile
from firmware.sim.runner import sim_session
from scenario import play

SALE = """
    keys 5000 ENTER
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
"""
DONE = """
    remove
    keys ENTER
    expect screen "Key in amount"
"""


def config(tmp_path):
    over = sim_overrides(tmp_path, echo_interval=1, response_timeout=1.0)
    over["saf"] = {"retry_first": 0.1, "retry_max": 0.5}
    return load_config(SIM_TOML, overrides=over)


async def agree(session) -> None:
    """Wait for the queue to drain, then reconcile journal, ledger and receipts."""
    await play(session, "expect queue 0 within 20")
    await session.terminal.journal_call(lambda j: None)  # the last commit is in
    result = reconcile(session.cfg.terminal.data_dir / JOURNAL_NAME, session.cfg.sim.ledger,
                       session.receipts_dir, session.catalog)
    assert result.violations == []
    return result


async def first_row(session):
    return await session.terminal.journal_call(lambda j: j.get(1))


UNANSWERED = [
    ("delay 2.5", "late answer"),  # answered after the terminal's 1 s timeout
    ("drop", "never answered"),
    ("close_before_read", "closed before the host read it"),
    ("disconnect", "closed after the host read (and decided) it"),
    ("close_mid_frame", "closed in the middle of the answer"),
    ("garble", "garbage answer"),
    ("wrong_stan", "answer for another STAN"),
]


@pytest.mark.parametrize("fault, what", UNANSWERED, ids=[f[0].split()[0] for f in UNANSWERED])
def test_unanswered_sale_is_reversed_and_the_ledger_agrees(tmp_path, fault, what):
    async def go():
        async with sim_session(config(tmp_path)) as session:
            await play(session, f"""
                expect signon
                fault {fault} times 1 mti 0200
            """ + SALE + """
                expect screen "NO RESPONSE"
            """ + DONE)
            result = await agree(session)
            record = await first_row(session)
            assert (record.status, record.reversal_status) == ("REVERSED", "ACKED"), what
            assert result.approved_online == 0 and result.reversed == 1
            balance = await session.acquirer.in_ledger(lambda ledger: ledger.balance(
                session.catalog.cards["approve"].pan))
            assert balance == 1_000_000  # taken (if at all) and given back
            await play(session, SALE + 'expect screen "Take receipts"' + DONE)  # link fine again
            await agree(session)
    asyncio.run(go())


def test_an_answer_sent_twice_is_taken_once_and_the_next_sale_is_not_confused(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as session:
            await play(session, "expect signon\n fault answer_twice times 1 mti 0200" + SALE
                       + 'expect screen "Take receipts"' + DONE
                       + SALE + 'expect screen "Take receipts"' + DONE)
            result = await agree(session)
            assert result.approved_online == 2 and result.reversed == 0
            assert (await first_row(session)).status == "APPROVED"
    asyncio.run(go())


def test_acquirer_restart_while_the_terminal_forwards(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as session:
            await play(session, "expect signon\n acquirer down")
            for amount in (1000, 2000, 3000, 4000):
                await play(session, f"""
                    keys {amount} ENTER
                    tap approve
                    expect screen "Approved offline"
                    expect screen "Take receipts"
                    keys ENTER
                """)
            await play(session, "expect queue 4\n fault delay 0.2 mti 0220")
            handled = session.acquirer.requests_handled
            await session.acquirer.go_up()
            await session.acquirer.wait_handled(handled + 2, timeout=20)  # forwarding has begun
            await session.acquirer.restart()
            await play(session, "fault none")
            result = await agree(session)
            assert result.approved_offline == 4 and result.violations == []
            balance = await session.acquirer.in_ledger(lambda ledger: ledger.balance(
                session.catalog.cards["approve"].pan))
            assert balance == 1_000_000 - 10_000  # each advice charged once
    asyncio.run(go())
