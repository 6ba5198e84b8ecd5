"""Reversals over real TCP: an unknown outcome is reversed before anything new is sent."""
from __future__ import annotations

import asyncio

from firmware.sim.runner import sim_session
from scenario import run_scenario as run, unanswered_sale


LOST_ANSWER = unanswered_sale("drop") + """
    remove
    keys ENTER
    expect screen "Key in amount"
"""


def test_lost_answer_is_reversed_before_the_next_sale(sim_config):
    session = run(sim_config, LOST_ANSWER + """
        fault none
        keys 200 ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "APPROVED"
        expect reversals 0
        expect balance approve 999800
    """)

    async def reopen():  # the journal is closed now: look through a fresh session on the same files
        async with sim_session(session.cfg) as again:
            first = await again.terminal.journal_call(lambda j: j.get(1))
            second = await again.terminal.journal_call(lambda j: j.get(2))
            return first, second
    first, second = asyncio.run(reopen())
    assert (first.status, first.reversal_status) == ("REVERSED", "ACKED")
    assert second.status == "APPROVED" and second.stan != first.stan


def test_no_new_sale_while_a_reversal_cannot_be_sent(sim_config):
    run(sim_config, LOST_ANSWER + """
        keys 200 ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        # the reversal ahead of it gets no answer: nothing new is sent; offline rules
        # apply, and an online PIN never goes offline
        expect screen "DECLINED"
        expect screen "PIN needs the host"
        expect journal UNKNOWN
        expect reversals 1
        # the host got the 0400 (its answer was dropped) but never saw the new sale
        expect balance approve 1000000
    """)


def test_reversal_left_pending_is_sent_at_the_next_start(sim_config):
    session = run(sim_config, LOST_ANSWER)

    async def restart():
        async with sim_session(session.cfg) as again:
            await asyncio.wait_for(again.terminal.online.wait(), 10)
            pending = await again.terminal.journal_call(lambda j: len(j.pending_reversals()))
            balance = await again.acquirer.in_ledger(lambda ledger: ledger.balance("6226090000000014"))
            return pending, balance
    assert asyncio.run(restart()) == (0, 1000000)
