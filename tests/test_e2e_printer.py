"""Printer trouble at the checkout: with the paper out, the sale is still approved, its
receipts wait in the journal, the idle screen says why, and they print by themselves as
soon as the printer is back (no restart)."""
from __future__ import annotations

import asyncio

from conftest import SIM_TOML, sim_overrides
from firmware.config import load_config
from firmware.sim.runner import sim_session
from firmware.sim.script import parse_script, run_script
from scenario import tap_sale


def test_receipts_wait_while_the_paper_is_out_and_print_when_it_is_back(tmp_path):
    over = sim_overrides(tmp_path)
    over["printer"] = {"retry": 0.1}
    cfg = load_config(SIM_TOML, overrides=over)

    async def go():
        async with sim_session(cfg) as s:
            s.printer.paper = False
            await run_script(s, parse_script("""
                expect signon
                keys 1250 ENTER
                tap approve
                expect screen "Receipt queued"
                keys ENTER
                remove
                expect screen "Printer: paper out"
            """), log=lambda line: None)
            waiting = await s.terminal.journal_call(lambda j: len(j.unprinted()))
            s.terminal.backlog_printed.clear()  # set again when the waiting receipts printed
            s.printer.paper = True  # the cashier loads a new roll
            await asyncio.wait_for(s.terminal.backlog_printed.wait(), 10)
            left = await s.terminal.journal_call(lambda j: len(j.unprinted()))
            await run_script(s, parse_script(tap_sale(500)), log=lambda line: None)
            return waiting, left, list(s.printer.printed), s.display.current

    waiting, left, printed, idle = asyncio.run(go())
    assert (waiting, left) == (1, 0)
    assert printed[:2] == ["000001-000002-merchant", "000001-000002-customer"]
    assert len(printed) == 4  # and the next sale prints at once
    assert not any("Printer" in line for line in idle.lines)
