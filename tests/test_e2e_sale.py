"""End-to-end sales over real TCP on loopback: terminal + acquirer simulator, driven like a cashier."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.acquirer.codes import describe_code
from firmware.config import load_config
from firmware.sim.runner import sim_session
from firmware.sim.script import ScriptError, load_script, run_script
from scenario import run_scenario as run, unanswered_sale

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.kpos"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_files(tmp_path, path):
    over = sim_overrides(tmp_path)
    over["operators"] = {"login": True}  # the files log in, as at a real terminal
    cfg = load_config(SIM_TOML, overrides=over)

    async def go():
        async with sim_session(cfg) as session:
            await run_script(session, load_script(path), log=lambda line: None)
    asyncio.run(go())


def test_approved_sale_records_and_prints(sim_config):
    session = run(sim_config, """
        keys 9999 ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
        expect balance approve 990001
    """)
    receipts = sorted(p.name for p in session.receipts_dir.iterdir())
    assert [n.rsplit("-", 1)[1] for n in receipts] == ["customer.bin", "customer.txt",
                                                       "merchant.bin", "merchant.txt"]
    merchant = next(session.receipts_dir.glob("*merchant.txt")).read_text(encoding="utf-8")
    for field in ("KPOS DEMO STORE", "898310048990001", "10000001", "622609******0014", "99.99",
                  "A000000333010101", "UnionPay Debit", "PIN VERIFIED"):
        assert field in merchant, field


DECLINES = [
    # card, amount keys, PIN, expected response code
    ("low_balance", "5000", "1234", "51"),
    ("expired", "100", "1234", "54"),
    ("approve", "100", "9999", "55"),
    ("stolen", "100", "1234", "43"),
    ("do_not_honour", "100", "1234", "05"),
    ("issuer_down", "100", "1234", "91"),
    ("approve", "90051", "1234", "51"),  # magic amount
]


@pytest.mark.parametrize("card,amount,pin,code", DECLINES, ids=[f"{d[0]}-{d[3]}" for d in DECLINES])
def test_declines_show_reason_and_code(sim_config, card, amount, pin, code):
    balance_before = 1000000 if card not in ("low_balance",) else 1000
    session = run(sim_config, f"""
        keys {amount} ENTER
        insert {card}
        expect screen "Enter PIN"
        keys {pin} ENTER
        expect screen "DECLINED"
        expect screen "Code {code}"
        expect journal DECLINED
        expect reversals 0
        expect receipts 0
        expect balance {card} {balance_before}
    """)
    texts = ["\n".join((s.title, *s.lines)) for s in session.display.history]
    assert any(describe_code(code) in t for t in texts), describe_code(code)


def test_cancel_during_amount_and_pin(sim_config):
    run(sim_config, """
        keys 12 CANCEL
        expect screen "Key in amount"
        keys 12 ENTER
        insert approve
        expect screen "Enter PIN"
        keys 12 CANCEL
        expect screen "Cancelled"
        expect journal NONE
        remove
        keys ENTER
        expect screen "Key in amount"
    """)


def test_amount_over_maximum_refused(sim_config):
    # max_amount 9999999 fen: an eighth digit is refused and the amount stays.
    run(sim_config, """
        keys 9999999
        expect screen "CNY 99999.99"
        keys 9
        expect screen "Max CNY 99999.99"
        keys BACK
        expect screen "CNY 9999.99"
    """)


def test_garbled_response_never_approves(sim_config):
    run(sim_config, unanswered_sale("garble"))


def test_host_down_online_pin_sale_is_declined_and_nothing_sent(tmp_path):
    from firmware.config import load_config
    from conftest import SIM_TOML, sim_overrides
    import socket
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = load_config(SIM_TOML, overrides=sim_overrides(tmp_path, port=port))
    run(cfg, """
        keys 100 ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Host unreachable"
        expect screen "PIN needs the host"
        expect reversals 0
        expect queue 0
    """, start_acquirer=False)


def test_failed_expectation_names_the_line(sim_config):
    with pytest.raises(ScriptError, match="line 2"):
        run(sim_config, 'keys 5\nexpect screen "no such text" within 0.2\n')


def test_no_full_pan_in_logs_journal_or_receipts(sim_config, caplog, test_pans):
    caplog.set_level(logging.DEBUG)
    session = run(sim_config, """
        keys 100 ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "Take receipts"
        remove
        keys ENTER
        expect screen "Key in amount"
        keys 100 ENTER
        insert no_response
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "NO RESPONSE" within 10
    """)
    data_dir = session.cfg.terminal.data_dir
    blobs = {"log": caplog.text.encode()}
    for path in data_dir.rglob("*"):
        if path.is_file() and path.name != "acquirer.db":
            blobs[str(path)] = path.read_bytes()
    assert any("journal.db" in name for name in blobs)
    for pan in test_pans:
        for name, blob in blobs.items():
            assert pan.encode() not in blob, f"full PAN in {name}"
            assert bytes.fromhex(pan if len(pan) % 2 == 0 else pan + "F") not in blob, f"BCD PAN in {name}"
