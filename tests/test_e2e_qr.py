"""End-to-end wallet QR payments over real TCP on loopback: the cashier picks QR pay in the
menu, keys the amount, the customer's payment code is scanned (or keyed); the simulated
wallet behaves by the code's last digit (docs/qr.md). Each outcome is checked on the
screens, the journal, the receipts and the simulator's ledger (wallet tables included);
each refusal shows its reason and changes nothing."""
from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.config import load_config
from firmware.sim.host_wallet import PAID_AFTER
from firmware.sim.runner import sim_session
from firmware.wallet import mask_code
from scenario import play, run_scenario as run
from test_e2e_offline import journal_rows

WECHAT_PAID = "134567890123456780"  # last digit 0: paid at once
WECHAT_LATER = "134567890123456781"  # 1: user paying, paid at the PAID_AFTER-th query
WECHAT_LOW_FUNDS = "134567890123456782"  # 2: declined 51
WECHAT_SILENT = "134567890123456783"  # 3: the payment is never answered
ALIPAY_FOREVER = "2812345678901234"  # 4: user paying until the terminal gives up
ALIPAY_PAID = "2812345678901230"
UNIONPAY_LATE = "6212345678901234565"  # 5: paid just as the cancel arrives
WECHAT_INVALID = "134567890123456786"  # 6: code invalid Q1
UNKNOWN_PREFIX = "9912345678901234"  # 16 digits, no wallet starts with 99


def config(tmp_path, **sections):
    """The simulator config with a fast wallet (poll 0.1 s, give up at 1 s), short result
    screens and quick store-and-forward retries; `sections` are merged over it."""
    over = sim_overrides(tmp_path)
    over.update(wallet={"poll_interval": 0.1, "timeout": 1.0}, timeouts={"result": 1},
                saf={"retry_first": 0.2, "retry_max": 1.0})
    for name, values in sections.items():
        over[name] = {**over.get(name, {}), **values}
    return load_config(SIM_TOML, overrides=over)


def qr_pay(amount_keys: str, code: str, keyed: bool = False) -> str:
    """Script: menu item 7 "QR pay", the amount, the code scanned (or keyed); the QR
    waiting screen is up."""
    entry = f"keys {code} ENTER" if keyed else f"scan {code}"
    return f"""
        keys MENU 7
        expect screen "QR SALE"
        keys {amount_keys} ENTER
        expect screen "Scan payment code"
        {entry}
        expect screen "Waiting for payment"
    """


BACK_TO_IDLE = """
    expect screen "Key in amount"
"""


def ledger_rows(session, table: str) -> list[dict]:
    """The simulator's `table` rows, oldest first ([] when the wallet never made its tables:
    no QR message ever reached it)."""
    db = sqlite3.connect(f"file:{session.cfg.sim.ledger}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY id")]
    except sqlite3.OperationalError as exc:
        assert "no such table" in str(exc)
        return []
    finally:
        db.close()


async def wallet_refunded(session, within: float) -> None:
    """Return once the simulated wallet has decided a refund of this terminal (checked again
    after every request the acquirer handles); TimeoutError after `within` s."""
    tid = session.cfg.terminal.terminal_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        handled = session.acquirer.requests_handled
        records = await session.acquirer.in_ledger(lambda ledger: ledger.records(tid))
        if any(r.kind == "qr_refund" for r in records):
            return
        await session.acquirer.wait_handled(handled + 1, deadline - loop.time())


def screens(session) -> list[str]:
    return ["\n".join((s.title, *s.lines)) for s in session.display.history]


def receipt_texts(session) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(session.receipts_dir.glob("*.txt"))}


def assert_nothing_changed(session, requests: int = 1) -> None:
    """A refusal: no journal row, no receipt, no wallet order or decision, and the acquirer
    saw only `requests` requests (the sign-on, plus what the test did before)."""
    assert journal_rows(session) == []
    assert receipt_texts(session) == {}
    assert ledger_rows(session, "wallet_orders") == []
    assert ledger_rows(session, "authorisations") == []
    assert session.acquirer.requests_seen == requests


# ---- the wallet's behaviours ----------------------------------------------------------------

def test_paid_at_once_prints_the_qr_receipt(tmp_path):
    cfg = config(tmp_path, operators={"login": True})
    session = run(cfg, """
        expect signon
        login 00 123456
        expect screen "op 00"
    """ + qr_pay("1250", WECHAT_PAID) + """
        expect screen "QR SALE APPROVED"
        expect screen "Take receipts"
        expect journal APPROVED
        expect receipts 2
        expect receipt merchant "WeChat Pay"
        expect receipt customer "134567********6780"
    """ + BACK_TO_IDLE)
    [txn] = journal_rows(session)
    assert (txn["kind"], txn["status"], txn["amount"], txn["wallet"], txn["masked_pan"],
            txn["entry_mode"], txn["operator"], txn["response_code"], txn["reversal"]) == (
        "qr_sale", "APPROVED", 1250, "wechat", mask_code(WECHAT_PAID), "031", "00", "00",
        "CANCELLED")
    [order] = ledger_rows(session, "wallet_orders")
    assert (order["wallet"], order["amount"], order["status"], order["polls"], order["cancels"],
            order["rrn"], order["auth_code"]) == (
        "wechat", 1250, "PAID", 0, 0, txn["rrn"], txn["auth_code"])
    [auth] = ledger_rows(session, "authorisations")
    assert (auth["kind"], auth["rc"], auth["amount"], auth["money"], auth["pan_masked"]) == (
        "qr_sale", "00", 1250, "none", mask_code(WECHAT_PAID))
    for name, text in receipt_texts(session).items():
        for line in ("QR SALE", "WALLET                WeChat Pay", "ENTRY MODE                    QR",
                     "OPERATOR NO.                  00", f"AUTH NO.                  {txn['auth_code']}",
                     "CNY 12.50"):
            assert line in text, (name, line)


def test_paid_after_polls(tmp_path):
    session = run(config(tmp_path), "expect signon" + qr_pay("8800", WECHAT_LATER) + """
        expect screen "Waiting for customer"
        expect screen "QR SALE APPROVED"
        expect screen "Take receipts"
        expect journal APPROVED
        expect receipts 2
    """)
    waiting = [s for s in session.display.history if s.lines[1:2] == ("Waiting for customer",)]
    assert waiting and all(s.title == "QR SALE" and s.lines[0] == "CNY 88.00"
                           and s.lines[2].endswith(" s left") for s in waiting)
    [txn] = journal_rows(session)
    assert (txn["status"], txn["wallet"], txn["reversal"]) == ("APPROVED", "wechat", "CANCELLED")
    [order] = ledger_rows(session, "wallet_orders")
    assert (order["status"], order["polls"], order["cancels"]) == ("PAID", PAID_AFTER, 0)


@pytest.mark.parametrize("code,rc,reason", [
    (WECHAT_LOW_FUNDS, "51", "INSUFFICIENT FUNDS"),
    (WECHAT_INVALID, "Q1", "QR code invalid"),
], ids=["low-funds", "code-invalid"])
def test_declined_by_the_wallet(tmp_path, code, rc, reason):
    session = run(config(tmp_path), "expect signon" + qr_pay("1250", code) + f"""
        expect screen "DECLINED"
        expect screen "{reason}"
        expect screen "Code {rc}"
        expect journal DECLINED
        expect reversals 0
        expect receipts 0
    """ + BACK_TO_IDLE)
    [txn] = journal_rows(session)
    assert (txn["kind"], txn["response_code"], txn["wallet"], txn["masked_pan"],
            txn["auth_code"]) == ("qr_sale", rc, "wechat", mask_code(code), None)
    [order] = ledger_rows(session, "wallet_orders")
    assert (order["status"], order["rc"]) == ("DECLINED", rc)
    assert [(a["kind"], a["rc"]) for a in ledger_rows(session, "authorisations")] == [("qr_sale", rc)]


def test_payment_never_answered_is_cancelled_at_once(tmp_path):
    session = run(config(tmp_path), "expect signon" + qr_pay("1250", WECHAT_SILENT) + """
        expect screen "QR payment cancelled" within 15
        expect journal REVERSED
        expect queue 0
        expect receipts 0
    """ + BACK_TO_IDLE)
    assert not any("Waiting for customer" in s for s in screens(session))  # no answer, no polls
    [txn] = journal_rows(session)
    assert (txn["status"], txn["reversal"], txn["response_code"]) == ("REVERSED", "ACKED", None)
    assert txn["failure"].startswith("no response")
    [order] = ledger_rows(session, "wallet_orders")
    assert (order["status"], order["polls"], order["cancels"]) == ("CLOSED", 0, 1)
    assert ledger_rows(session, "authorisations") == []  # the wallet never decided: no money


def test_paying_forever_is_cancelled_at_the_timeout(tmp_path):
    session = run(config(tmp_path), "expect signon" + qr_pay("2000", ALIPAY_FOREVER) + """
        expect screen "Waiting for customer"
        expect screen "QR payment cancelled"
        expect journal REVERSED
        expect queue 0
        expect receipts 0
    """)
    [txn] = journal_rows(session)
    assert (txn["status"], txn["reversal"], txn["wallet"], txn["masked_pan"]) == (
        "REVERSED", "ACKED", "alipay", mask_code(ALIPAY_FOREVER))
    assert txn["failure"] == "not paid in 1 s: cancelled"
    [order] = ledger_rows(session, "wallet_orders")
    assert (order["status"], order["cancels"]) == ("CLOSED", 1)
    assert order["polls"] >= 1
    assert ledger_rows(session, "authorisations") == []


PAID_LATE = "expect signon" + qr_pay("3000", UNIONPAY_LATE) + """
    expect screen "Waiting for customer"
    expect screen "Paid late: refunded"
    expect journal APPROVED
    expect queue 0
"""


def test_paid_as_the_cancel_arrives_is_refunded(tmp_path):
    session = run(config(tmp_path), PAID_LATE + BACK_TO_IDLE + """
        keys MENU 8
        expect screen "TRANSACTIONS"
        keys 4
        expect screen "Printed"
        expect receipts 4
        expect receipt merchant "AUTO REFUND (PAID LATE)"
        expect receipt customer "UnionPay QR"
        expect receipt customer "621234*********4565"
    """)
    payment, refund = journal_rows(session)
    assert (payment["kind"], payment["status"], payment["response_code"], payment["reversal"]) == (
        "qr_sale", "APPROVED", "Q2", "ACKED")
    assert payment["rrn"] and payment["auth_code"]
    assert (refund["kind"], refund["status"], refund["original_id"], refund["original_rrn"],
            refund["amount"], refund["wallet"], refund["masked_pan"], refund["advice"],
            refund["offline_code"]) == (
        "qr_refund", "APPROVED", payment["id"], payment["rrn"], 3000, "unionpay_qr",
        mask_code(UNIONPAY_LATE), "ACKED", None)
    [order] = ledger_rows(session, "wallet_orders")
    assert (order["status"], order["refunded"], order["cancels"], order["rrn"]) == (
        "PAID", 3000, 1, payment["rrn"])
    [wallet_refund] = ledger_rows(session, "wallet_refunds")
    assert (wallet_refund["order_id"], wallet_refund["amount"], wallet_refund["rc"],
            wallet_refund["stan"]) == (order["id"], 3000, "00", f"{refund['stan']:06d}")
    assert [(a["kind"], a["rc"], a["amount"]) for a in ledger_rows(session, "authorisations")] == [
        ("qr_sale", "00", 3000), ("qr_refund", "00", 3000)]
    [reprint] = [t for n, t in receipt_texts(session).items() if n.endswith("merchant.txt")]
    for line in ("*** REPRINT ***", "TXN TYPE               QR REFUND", "CNY -30.00",
                 f"ORIG. STAN                {payment['stan']:06d}", f"ORIG. REF           {payment['rrn']}"):
        assert line in reprint, line


def test_paid_late_prints_the_auto_refund_slip(tmp_path):
    session = run(config(tmp_path), PAID_LATE + """
        expect receipt customer "AUTO REFUND (PAID LATE)"
    """)
    assert journal_rows(session)[-1]["printed_customer_at"]


def test_unanswered_cancel_stays_queued_until_the_wallet_closes_it(tmp_path):
    session = run(config(tmp_path), "expect signon\nfault drop times 1 mti 0400"
                  + qr_pay("1250", WECHAT_SILENT) + """
        expect screen "NOT PAID" within 15
        expect screen "Cancel pending"
        expect journal UNKNOWN
        expect reversals 1
        expect queue 0 within 15
        expect journal REVERSED
        expect receipts 0
    """)
    [txn] = journal_rows(session)
    assert (txn["status"], txn["reversal"]) == ("REVERSED", "ACKED")
    [order] = ledger_rows(session, "wallet_orders")
    assert (order["status"], order["cancels"]) == ("CLOSED", 2)  # the 0400 lost, the 0401 answered
    assert ledger_rows(session, "authorisations") == []


def test_paid_late_after_a_queued_cancel_is_refunded_by_the_queue(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as session:
            await play(session, "expect signon\nfault drop times 1 mti 0400"
                       + qr_pay("4500", UNIONPAY_LATE) + """
                expect screen "Cancel pending" within 15
                expect journal UNKNOWN
            """)
            await wallet_refunded(session, within=15)  # the 0401 answered Q2, then the 0220
            await play(session, "expect queue 0")
            return session

    session = asyncio.run(go())
    payment, refund = journal_rows(session)
    assert (payment["status"], payment["reversal"]) == ("APPROVED", "ACKED")
    assert (refund["kind"], refund["original_id"], refund["amount"], refund["advice"]) == (
        "qr_refund", payment["id"], 4500, "ACKED")
    [order] = ledger_rows(session, "wallet_orders")
    assert (order["status"], order["refunded"], order["cancels"]) == ("PAID", 4500, 2)
    assert [(a["kind"], a["rc"]) for a in ledger_rows(session, "authorisations")] == [
        ("qr_sale", "00"), ("qr_refund", "00")]


# ---- refusals: the reason on the screen, nothing changed ------------------------------------

def test_over_the_qr_limit_is_refused(tmp_path):
    session = run(config(tmp_path), """
        expect signon
        keys MENU 7
        expect screen "QR SALE"
        keys 500001
        expect screen "Max CNY 5000.00"
        keys CANCEL
    """ + BACK_TO_IDLE)
    assert not any("CNY 5000.01" in s for s in screens(session))
    assert_nothing_changed(session)


def test_exactly_the_qr_limit_is_paid(tmp_path):
    session = run(config(tmp_path), "expect signon" + qr_pay("500000", WECHAT_PAID) + """
        expect screen "QR SALE APPROVED"
        expect journal APPROVED
    """)
    assert [o["amount"] for o in ledger_rows(session, "wallet_orders")] == [500000]


def test_unknown_prefix_is_refused(tmp_path):
    session = run(config(tmp_path), "expect signon" + qr_pay("1250", UNKNOWN_PREFIX) + """
        expect screen "DECLINED"
        expect screen "Unknown QR code"
        expect journal NONE
    """ + BACK_TO_IDLE)
    assert_nothing_changed(session)


def test_daily_qr_limit_refuses_across_wallets_and_allows_up_to_it(tmp_path):
    session = run(config(tmp_path, risk={"daily_qr": 10000}),
                  "expect signon" + qr_pay("6000", WECHAT_PAID) + """
        expect screen "Take receipts"
    """ + BACK_TO_IDLE + qr_pay("5000", ALIPAY_PAID) + """
        expect screen "DECLINED"
        expect screen "Over QR daily limit"
        expect screen "100.00"
    """ + BACK_TO_IDLE + qr_pay("4000", ALIPAY_PAID) + """
        expect screen "Take receipts"
    """)
    assert [(t["wallet"], t["amount"], t["status"]) for t in journal_rows(session)] == [
        ("wechat", 6000, "APPROVED"), ("alipay", 4000, "APPROVED")]
    assert [o["amount"] for o in ledger_rows(session, "wallet_orders")] == [6000, 4000]
    assert session.acquirer.requests_seen == 3  # sign-on and the two payments


def test_velocity_rule_refuses_a_qr_payment(tmp_path):
    # "confirm" asks a supervisor for a card; a QR payment has no step for it: refused.
    risk = {"velocity_count": 1, "velocity_small": 10000, "velocity_action": "confirm"}
    session = run(config(tmp_path, risk=risk), "expect signon" + qr_pay("6000", WECHAT_PAID) + """
        expect screen "Take receipts"
    """ + BACK_TO_IDLE + qr_pay("5000", ALIPAY_PAID) + """
        expect screen "DECLINED"
        expect screen "2 sales in 10 min"
        expect journal APPROVED
    """)
    assert [t["wallet"] for t in journal_rows(session)] == ["wechat"]
    assert [o["wallet"] for o in ledger_rows(session, "wallet_orders")] == ["wechat"]
    assert session.acquirer.requests_seen == 2


def test_acquirer_down_refuses_and_approves_nothing(tmp_path):
    session = run(config(tmp_path), "expect signon\nacquirer down"
                  + qr_pay("1250", WECHAT_PAID, keyed=True) + """
        expect screen "NOT SENT"
        expect screen "Host unreachable"
        expect journal FAILED
        expect reversals 0
        expect queue 0
        expect receipts 0
    """ + BACK_TO_IDLE)
    [txn] = journal_rows(session)
    assert (txn["kind"], txn["status"], txn["reversal"], txn["rrn"]) == (
        "qr_sale", "FAILED", "CANCELLED", None)
    assert ledger_rows(session, "wallet_orders") == []
    assert session.acquirer.requests_seen == 1


# ---- card data hygiene ------------------------------------------------------------------

def test_payment_codes_never_in_clear(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    codes = (WECHAT_PAID, UNIONPAY_LATE)
    session = run(config(tmp_path), "expect signon" + qr_pay("100", WECHAT_PAID, keyed=True) + """
        expect screen "Take receipts"
    """ + BACK_TO_IDLE + qr_pay("200", UNIONPAY_LATE) + """
        expect screen "Paid late: refunded"
        expect queue 0
    """)
    blobs = {"log": caplog.text.encode(), "screens": "\n".join(screens(session)).encode()}
    blobs.update((str(p), p.read_bytes()) for p in session.cfg.terminal.data_dir.rglob("*")
                 if p.is_file())
    assert any(name.endswith("journal.db") for name in blobs)
    assert any(name.endswith("merchant.txt") for name in blobs)
    for code in codes:
        for name, blob in blobs.items():
            assert code.encode() not in blob, f"payment code in clear in {name}"
