"""Test helper: run a scenario script against a fresh simulator session."""
from __future__ import annotations

import asyncio

from firmware.sim.runner import SimSession, sim_session
from firmware.sim.script import parse_script, run_script


def run_scenario(cfg, script: str, **session_kw) -> SimSession:
    """Start acquirer + terminal, run `script`, stop; returns the session for after-checks."""
    async def go() -> SimSession:
        async with sim_session(cfg, **session_kw) as session:
            await run_script(session, parse_script(script), log=lambda line: None)
            return session
    return asyncio.run(go())


# --- shared scenario fragments and after-checks (in-process and PC/SC runs use the same) ---

def unanswered_sale(fault: str) -> str:
    """A CNY 1.00 chip sale whose 0210 is lost to acquirer fault `fault` (drop, garble):
    "NO RESPONSE", the outcome unknown, one reversal pending, the money still taken."""
    return f"""
    expect signon
    fault {fault}
    keys 100 ENTER
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
    expect screen "NO RESPONSE"
    expect journal UNKNOWN
    expect reversals 1
    expect balance approve 999900
"""


SALE_5000 = """
    keys 5000 ENTER
    expect screen "Insert"
"""
ONLINE_PIN_APPROVED = """
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
    expect screen "Take receipts"
    expect journal APPROVED
    expect balance approve 995000
"""
OFFLINE_PIN_WRONG_THEN_RIGHT = """
    insert offline_pin
    expect screen "Enter PIN"
    keys 9999 ENTER
    expect screen "Wrong PIN: 2 left"
    keys 1234 ENTER
    expect screen "Take receipts"
    expect journal APPROVED
    expect balance offline_pin 995000
"""
OFFLINE_PIN_THREE_WRONG = """
    insert offline_pin
    expect screen "Enter PIN"
    keys 1111 ENTER
    expect screen "Wrong PIN: 2 left"
    keys 2222 ENTER
    expect screen "Wrong PIN: 1 left"
    keys 3333 ENTER
    expect screen "DECLINED"
    expect screen "Declined by card"
    expect journal NONE
    expect balance offline_pin 1000000
"""
TAP_OVER_CVM_LIMIT = """
    keys 150000 ENTER
    expect screen "Insert, tap or swipe"
    tap approve
    expect screen "Enter PIN"
    keys 1234 ENTER
    expect screen "Take receipts"
"""
REMOVE_TO_IDLE = """
    keys ENTER
    expect screen "Remove card"
    remove
    expect screen "Key in amount"
"""


def row(session):
    """The newest journal row's clear columns (masked PAN only), with its reversal status."""
    import sqlite3
    from firmware.journal import JOURNAL_NAME

    path = session.cfg.terminal.data_dir / JOURNAL_NAME
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT t.*, r.status AS reversal FROM txn t "
                          "LEFT JOIN reversal r ON r.txn_id = t.id ORDER BY t.id DESC").fetchone()
    finally:
        db.close()


def merchant_copy(session) -> str:
    return sorted(session.receipts_dir.glob("*merchant.txt"))[-1].read_text(encoding="utf-8")


def tvr_bits(tvr_hex: str) -> set[str]:
    from firmware.emv.tvr import Tvr
    return set(Tvr(bytes.fromhex(tvr_hex)).names())


async def play(session, script: str) -> None:
    """Run a scenario script in a session that is already running; on a failure the last
    screens are printed first (pytest shows them with the failure)."""
    try:
        await run_script(session, parse_script(script), log=lambda line: None)
    except Exception:
        for screen in session.display.history[-14:]:
            print("DEBUG", screen)
        raise


async def pull_card_after_the_sale_is_sent(session) -> None:
    """A chip sale whose card leaves the reader after the 0200 went out and before the
    second GENERATE AC: the host's approval must be reversed."""
    session.acquirer.faults.delay = 0.5  # the card leaves while the host thinks
    await play(session, SALE_5000 + """
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Processing"
    """)
    await session.acquirer.wait_requests(2, timeout=10)  # sign-on, then the sale
    session.reader.remove()
    await play(session, """
        expect screen "Card removed,"
        expect journal REVERSED
        expect reversals 0
        expect balance approve 1000000
    """)


def chip_sale(amount: int, card: str = "approve", pin: str = "1234") -> str:
    """Script: a chip sale of `amount` (minor units) with its online PIN, approved, the
    receipts taken and the card out: back at the idle screen."""
    return f"""
    keys {amount} ENTER
    insert {card}
    expect screen "Enter PIN"
    keys {pin} ENTER
    expect screen "Take receipts"
    keys ENTER
    remove
    expect screen "Key in amount"
"""


def offline_tap_sale(amount: int, card: str = "approve", queued: int = 1) -> str:
    """Script: the acquirer goes down, a contactless sale of `amount` is approved offline,
    receipts taken, card removed; `queued` advices wait."""
    return f"""
    acquirer down
    keys {amount} ENTER
    tap {card}
    expect screen "Approved offline"
    expect screen "Take receipts"
    keys ENTER
    remove
    expect queue {queued}
"""


def tap_sale(amount: int, card: str = "approve") -> str:
    """Script: a contactless sale of `amount` under the CVM limit (no PIN), approved, back
    at the idle screen."""
    return f"""
    keys {amount} ENTER
    tap {card}
    expect screen "Take receipts"
    keys ENTER
    remove
    expect screen "Key in amount"
"""
