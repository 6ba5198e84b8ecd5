"""End to end over loopback: the acquirer simulator verifies the card's ARQC (and answers an ARPC).

The terminal, the card emulator and the host are the real ones (firmware.sim.runner); the
forged cases wrap the terminal's request builder so field 55 is altered after the card
computed its cryptogram, as a tampered terminal or a man in the middle would.
"""
from __future__ import annotations

import asyncio

import pytest

from firmware.acquirer import messages
from firmware.acquirer.codes import describe_code
from firmware.emv import tlv
from firmware.sim.runner import sim_session
from firmware.sim.script import parse_script, run_script

START_BALANCE = 1000000  # catalog card "approve"

SALE = """
    keys 2500 ENTER
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
"""


def run(cfg, script: str):
    """Run a scenario; returns (session, the host's last recorded sale decision)."""
    async def go():
        async with sim_session(cfg) as session:
            await run_script(session, parse_script(script), log=lambda line: None)
            last = await session.acquirer.in_ledger(lambda ledger: ledger.last_authorisation())
            return session, last
    return asyncio.run(go())


def retag(icc: bytes, tag: str, change) -> bytes:
    """Field 55 with `tag`'s value replaced by change(value)."""
    nodes = tlv.parse(icc)
    assert any(n.tag == tag for n in nodes), tag
    return tlv.encode_nodes([tlv.Tlv(n.tag, change(n.value)) if n.tag == tag else n
                             for n in nodes])


def flip_first_byte(value: bytes) -> bytes:
    return bytes([value[0] ^ 0x01]) + value[1:]


def tamper_requests(monkeypatch, tag: str, change) -> list[dict]:
    """Make the terminal's sale requests carry a field 55 altered after the card's ARQC."""
    original = messages.sale_request
    sent: list[dict] = []

    def tampered(*args, **kwargs):
        msg = original(*args, **kwargs)
        msg["55"] = retag(msg["55"], tag, change)
        sent.append(msg)
        return msg

    monkeypatch.setattr(messages, "sale_request", tampered)
    return sent


def test_genuine_sale_approves_with_arqc_verified(sim_config):
    _, last = run(sim_config, SALE + """
        expect screen "Take receipts"
        expect journal APPROVED
        expect balance approve 997500
    """)
    assert (last.rc, last.amount, last.reason, last.arqc) == ("00", 2500, "approved", "verified")


FORGED = [
    # tag altered, how, ledger reason
    ("9F26", flip_first_byte, "ARQC failed"),  # forged cryptogram
    ("9F02", lambda v: bytes.fromhex("000000002400"), "amount mismatch 9F02"),  # card saw 24.00
]


@pytest.mark.parametrize("tag,change,reason", FORGED, ids=["forged-arqc", "9F02-altered"])
def test_altered_chip_data_is_declined_end_to_end(sim_config, monkeypatch, tag, change, reason):
    sent = tamper_requests(monkeypatch, tag, change)
    session, last = run(sim_config, SALE + f"""
        expect screen "DECLINED"
        expect screen "Code 05"
        expect journal DECLINED
        expect reversals 0
        expect receipts 0
        expect balance approve {START_BALANCE}
    """)
    assert len(sent) == 1 and sent[0]["4"] == "000000002500"
    assert (last.rc, last.reason, last.arqc) == ("05", reason, "failed" if tag == "9F26" else "")
    assert last.stan == sent[0]["11"]
    texts = ["\n".join((s.title, *s.lines)) for s in session.display.history]
    assert any(describe_code("05") in t for t in texts)
