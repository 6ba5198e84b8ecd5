"""Terminal lifecycle: clean stop that finishes a transaction in flight, faults at start."""
from __future__ import annotations

import asyncio

import pytest

from firmware.app import StartupFault
from firmware.sim.runner import sim_session
from firmware.sim.script import parse_script, run_script


async def _script(session, text: str) -> None:
    await run_script(session, parse_script(text), log=lambda line: None)


def test_stop_finishes_the_authorisation_in_flight(sim_config):
    async def go():
        async with sim_session(sim_config) as session:
            await _script(session, """
                expect signon
                fault delay 0.5
                keys 4200 ENTER
                insert approve
                expect screen "Enter PIN"
                keys 1234 ENTER
                expect screen "Processing"
            """)
            session.terminal.request_stop()  # SIGTERM arrives while the host is thinking
            await asyncio.wait_for(session.terminal.stopped.wait(), 10)
            return session
    session = asyncio.run(go())
    assert sorted(session.printer.printed) == ["000001-000002-customer", "000001-000002-merchant"]
    assert session.display.current.title.startswith("KPOS")  # back at idle, not waiting for a key

    async def check():
        async with sim_session(session.cfg) as again:
            record = await again.terminal.journal_call(lambda j: j.last())
            return record.status, record.printed_merchant_at is not None
    assert asyncio.run(check()) == ("APPROVED", True)


def test_stop_during_pin_entry_cancels_at_once(sim_config):
    async def go():
        async with sim_session(sim_config) as session:
            await _script(session, """
                keys 100 ENTER
                insert approve
                expect screen "Enter PIN"
                keys 12
            """)
            session.terminal.request_stop()
            await asyncio.wait_for(session.terminal.stopped.wait(), 5)
            assert not session.terminal.pinpad.active and len(session.terminal.pinpad) == 0
            return session
    session = asyncio.run(go())
    assert session.printer.printed == []


def test_corrupt_journal_is_a_visible_fault(sim_config):
    data_dir = sim_config.terminal.data_dir
    data_dir.mkdir(parents=True)
    (data_dir / "journal.db").write_bytes(b"this is not a database" * 200)

    async def go():
        async with sim_session(sim_config):
            pass
    with pytest.raises(StartupFault, match="journal"):
        asyncio.run(go())
    # nothing was reset behind the operator's back
    assert (data_dir / "journal.db").read_bytes().startswith(b"this is not a database")
