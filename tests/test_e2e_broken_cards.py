"""Broken chip cards end to end: "Card read error", nothing sent, and the loop lives on.

Each catalog card with outcome "broken:KIND" (firmware.sim.card_emulator) goes through the
simulator over real loopback TCP, inserted or tapped: the terminal shows "Card read error"
with the reason, journals nothing, sends no 0200 (the acquirer simulator's request count
stays at the sign-on), and then an ordinary sale with the "approve" card is APPROVED in the
same session.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from firmware.sim.runner import sim_session
from firmware.sim.script import parse_script, run_script

BROKEN = [  # catalog card, reason logged, the part of it on one screen line
    ("broken_tlv_length", "malformed card data", "malformed card"),
    ("broken_oversized_record", "oversized record", "oversized record"),
    ("broken_missing_pan", "missing tag 5A", "missing tag 5A"),
    ("broken_bad_sw", "READ RECORD failed 6F00", "6F00"),
]

BROKEN_READ = """
    keys 500 ENTER
    expect screen "Insert"
    {verb} {card}
    expect screen "Card read error"
    expect screen "{shown}"
    expect journal NONE
    expect reversals 0
    keys ENTER
    expect screen "Remove card"
    remove
    expect screen "Key in amount"
"""

APPROVED_SALE = """
    keys 1250 ENTER
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
    expect screen "APPROVED"
    expect screen "Take receipts"
    expect journal APPROVED
    expect receipts 2
    expect balance approve 998750
    keys ENTER
    remove
    expect screen "Key in amount"
"""


def quiet(line: str) -> None:
    pass


@pytest.mark.parametrize("verb", ["insert", "tap"])
@pytest.mark.parametrize("card, reason, shown", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_card_is_a_read_error_and_the_loop_survives(sim_config, caplog, card, reason,
                                                          shown, verb):
    caplog.set_level(logging.INFO)

    async def go():
        async with sim_session(sim_config) as session:
            await run_script(session, parse_script("expect signon"), log=quiet)
            after_signon = session.acquirer.requests_seen
            script = BROKEN_READ.format(verb=verb, card=card, shown=shown)
            await run_script(session, parse_script(script, card), log=quiet)
            assert session.acquirer.requests_seen == after_signon, "a request left the terminal"
            assert session.printer.printed == []
            await run_script(session, parse_script(APPROVED_SALE, "approve"), log=quiet)
            assert session.acquirer.requests_seen == after_signon + 1  # the one 0200
            return session.catalog.cards[card].pan

    pan = asyncio.run(go())
    assert f"card read failed: {reason}" in caplog.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert pan not in caplog.text


def test_every_broken_kind_has_a_catalog_card(sim_config):
    from firmware.sim.catalog import BROKEN_KINDS, load_catalog
    cards = load_catalog(sim_config.sim.catalog).cards.values()
    kinds = {c.broken for c in cards if c.broken}
    assert kinds == set(BROKEN_KINDS)
    # app_blocked is not a read error but a chip failure that allows a fallback swipe
    # (tests/test_e2e_emv.py::test_broken_chip_falls_back_to_swipe).
    assert kinds - {"app_blocked"} == {name.removeprefix("broken_") for name, *_ in BROKEN}


def test_catalog_refuses_an_unknown_broken_kind(tmp_path):
    from firmware.sim.catalog import CatalogError, default_catalog_path, load_catalog
    text = default_catalog_path().read_text(encoding="utf-8")
    text = text.replace('outcome = "broken:bad_sw"', 'outcome = "broken:bad_sww"')
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match=r"cards\[\d+\]: outcome 'broken:bad_sww' not understood"):
        load_catalog(path)
