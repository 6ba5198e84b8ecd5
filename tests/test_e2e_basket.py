"""The checkout end to end through the real terminal and the acquirer simulator over TCP:
a basket of scanned and keyed goods with a discount paid by card, refused barcodes and
discounts, cash + card split tender, a cash sale with change, a training sale that leaves
the batch and the simulator's ledger untouched, the D0 settlement report with its cash
line checked against sums computed here, and a backup taken while sales run."""
from __future__ import annotations

import asyncio
import re
import sqlite3

from conftest import SIM_TOML, sim_overrides
from firmware.backup import BackupError, backup, restore
from firmware.config import load_config
from firmware.journal import JOURNAL_NAME, open_existing
from firmware.sim.runner import sim_session
from scenario import chip_sale, tap_sale
from test_e2e_day import TID, play

WATER, CHOCOLATE_UPC = "6901234567892", "036000291452"  # config/products.toml: 2.00, 8.90
BAD_CHECK_DIGIT = "6901234567893"
UNKNOWN_EAN = "5901234123457"  # a valid EAN-13 that is not in the catalog
WECHAT_PAID = "134567890123456780"  # the simulated wallet pays it at once


def config(tmp_path, **sections):
    over = sim_overrides(tmp_path)
    over["operators"] = {"login": True}
    over["wallet"] = {"poll_interval": 0.1, "timeout": 2.0}
    over.update(sections)
    return load_config(SIM_TOML, overrides=over)


async def rows(session):
    return list(reversed(await session.terminal.journal_call(lambda j: j.page(0, 100))))


async def balance(session, card: str) -> int:
    pan = session.catalog.cards[card].pan
    return await session.acquirer.in_ledger(lambda ledger: ledger.balance(pan))


def receipt(session, name: str) -> str:
    return (session.receipts_dir / f"{name}.txt").read_text(encoding="utf-8")


LOGIN_CASHIER = """
    login 01 0000
    expect screen "op 01"
    expect signon
"""
BASKET = """
    keys MENU 1
    expect screen "SALE"
    keys 2
    expect screen "Key code or scan"
"""


def test_a_basket_of_scanned_and_keyed_goods_with_a_discount_paid_by_card(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as s:
            start = await balance(s, "approve")
            await play(s, LOGIN_CASHIER + BASKET + f"""
                scan {BAD_CHECK_DIGIT}
                expect screen "Bad check digit"
                scan {UNKNOWN_EAN}
                expect screen "Unknown product"
                keys 99 ENTER
                expect screen "Unknown product"
                scan {WATER}
                expect screen "1 x Mineral water"
                scan {WATER}
                expect screen "2 x Mineral water"
                keys 3 ENTER
                expect screen "1 x Instant noodles"
                scan {CHOCOLATE_UPC}
                expect screen "Total CNY 17.40"
                # 50 % is over the 10 % limit: a supervisor must agree, and does not
                keys MENU 4
                expect screen "Discount percent"
                keys 50 ENTER
                expect screen "SUPERVISOR"
                keys 00 ENTER 999999 ENTER
                expect screen "Wrong password"
                keys ENTER
                expect screen "Total CNY 17.40"
                # 1.00 off is within the limits
                keys MENU 3
                keys 100 ENTER
                expect screen "Discount -1.00"
                expect screen "Total CNY 16.40"
                keys MENU 5
                expect screen "CNY 16.40"
                keys 1
                insert approve
                expect screen "Enter PIN"
                keys 1234 ENTER
                expect screen "Take receipts"
                keys ENTER
                remove
                expect screen "op 01"
            """)
            [sale] = await rows(s)
            kept = await s.terminal.journal_call(lambda j: j.basket(sale.basket_id))
            return sale, kept, receipt(s, f"000001-{sale.stan:06d}-customer"), \
                start - await balance(s, "approve")

    sale, kept, customer, charged = asyncio.run(go())
    assert (sale.kind, sale.status, sale.amount) == ("sale", "APPROVED", 1640)
    assert charged == 1640  # the simulator debited the basket's total, once
    assert [(line["name"], line["qty"], line["amount"]) for line in kept["lines"]] == [
        ("Mineral water 550ml", 2, 400), ("Instant noodles", 1, 450), ("Chocolate bar", 1, 890)]
    assert (kept["subtotal"], kept["discount"], kept["total"]) == (1740, 100, 1640)
    for text in ("Mineral water 550ml", "2 x 2.00", "Chocolate bar", "SUBTOTAL", "17.40",
                 "DISCOUNT", "1.00", "16.40"):
        assert text in customer, text


def test_cash_and_card_split_tender_kicks_the_drawer_and_sends_only_the_card_part(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as s:
            start, handled = await balance(s, "visa"), None
            await play(s, LOGIN_CASHIER + BASKET + """
                keys 5 ENTER
                expect screen "Total CNY 39.90"
                keys MENU 5
                expect screen "4 Cash+card"
                keys 4
                expect screen "Cash part"
                keys 1000 ENTER
                expect screen "Tendered"
                keys 500 ENTER
                expect screen "Not enough"
                keys CLEAR 2000 ENTER
                expect screen "Change CNY 10.00"
                expect screen "CNY 29.90"
                tap visa
                expect screen "Take receipts"
                keys ENTER
                remove
                expect screen "op 01"
            """)
            handled = await s.acquirer.in_ledger(lambda ledger: ledger.records(TID))
            return await rows(s), start - await balance(s, "visa"), handled, \
                s.printer.drawer_kicks

    (cash, card), charged, host_records, kicks = asyncio.run(go())
    assert (cash.kind, cash.amount, cash.tendered, cash.status) == ("cash", 1000, 2000, "APPROVED")
    assert (card.kind, card.amount, card.status) == ("sale", 2990, "APPROVED")
    assert cash.basket_id == card.basket_id is not None
    assert charged == 2990 and [r.amount for r in host_records] == [2990]  # cash never sent
    assert kicks == 1


def test_a_cash_sale_gives_change_and_never_reaches_the_acquirer(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as s:
            await play(s, LOGIN_CASHIER)
            seen = s.acquirer.requests_seen
            await play(s, """
                keys MENU 1 3
                expect screen "Amount"
                keys 1250 ENTER
                expect screen "Tendered"
                keys 2000 ENTER
                expect screen "Change CNY 7.50"
                expect screen "Take receipt"
            """)
            [cash] = await rows(s)
            return cash, receipt(s, f"000001-{cash.stan:06d}-customer"), \
                s.acquirer.requests_seen - seen

    cash, customer, sent = asyncio.run(go())
    assert (cash.kind, cash.amount, cash.tendered, cash.masked_pan) == ("cash", 1250, 2000, None)
    assert sent == 0
    assert re.search(r"CASH TENDERED +20\.00\n", customer) and re.search(
        r"CHANGE +7\.50\n", customer), customer


def test_a_training_sale_leaves_the_batch_and_the_ledger_untouched(tmp_path):
    async def go():
        async with sim_session(config(tmp_path)) as s:
            start = await balance(s, "approve")
            await play(s, """
                login 00 123456
                expect screen "op 00"
                expect signon
                keys MENU 9 ENTER
                expect screen "MANAGER 2/2"
                keys 7
                expect screen "TRAINING"
                keys ENTER
                expect screen "Key in amount"
            """)
            assert s.terminal.training
            seen = s.acquirer.requests_seen
            await play(s, """
                keys 1250 ENTER
                insert approve
                expect screen "Enter PIN"
                keys 1234 ENTER
                expect screen "Take receipts"
                keys ENTER
                remove
                expect screen "TRAINING"
            """)
            practice = await s.terminal.journal_call(lambda j: (j.count(), j.batch_no()))
            trained = receipt(s, "T-000001-000002-customer")
            after = s.acquirer.requests_seen - seen, await balance(s, "approve") - start
            await play(s, """
                keys MENU 9 ENTER 7
                expect screen "KPOS"
            """)
            real = await s.terminal.journal_call(lambda j: (j.count(), j.batch_no()))
            return practice, trained, after, real

    practice, trained, (sent, moved), real = asyncio.run(go())
    assert practice == (1, 1)  # the training journal holds the practice sale
    assert "*** TRAINING ***" in trained and "NOT A PAYMENT" in trained
    assert (sent, moved) == (0, 0)  # the real host saw nothing, charged nothing
    assert real == (0, 1)  # the real journal: no row, the batch as it was


def test_d0_settlement_report_has_the_cash_line_and_d0_fees(tmp_path):
    cfg = config(tmp_path, settlement={"mode": "D0", "d0_rate": 70, "d0_fixed": 100})

    async def go():
        async with sim_session(cfg) as s:
            await play(s, LOGIN_CASHIER + chip_sale(10000) + """
                keys MENU 1 3
                keys 3000 ENTER 3000 ENTER
                expect screen "Take receipt"
                keys ENTER
                expect screen "op 01"
                keys MENU 7
                keys 5000 ENTER
                expect screen "Scan payment code"
            """)
            await play(s, f"""
                scan {WECHAT_PAID}
                expect screen "Take receipts"
                keys ENTER
                expect screen "op 01"
                keys MENU 9 2
                keys 00 ENTER 123456 ENTER
                expect screen "Settle batch?"
                keys ENTER
                expect screen "Settled" within 20
            """)
            records = await s.acquirer.in_ledger(lambda ledger: ledger.records(TID))
            cash = [r for r in await rows(s) if r.kind == "cash"]
            return records, cash, receipt(s, "settle-000001")

    records, cash, report = asyncio.run(go())
    debits = [r.amount for r in records if r.rc == "00" and r.kind in ("sale", "qr_sale")]
    assert sorted(debits) == [5000, 10000]
    fees = sum((amount * 70 * 2 + 10_000) // 20_000 + 100 for amount in debits)  # half up + fixed
    assert fees == 305
    money = lambda minor: f"{minor // 100}.{minor % 100:02d}"  # noqa: E731
    assert re.search(rf"DEBIT TOTAL\s+2\s+{money(sum(debits))}", report), report
    assert re.search(rf"\nCASH\s+1\s+{money(cash[0].amount)}\n", report), report
    assert re.search(rf"CASH \(NOT SETTLED\)\s+{money(cash[0].amount)}\n", report), report
    assert re.search(rf"FEES\s+{money(fees)}\n", report), report
    assert re.search(rf"NET\s+{money(sum(debits) - fees)}\n", report), report
    assert "SETTLEMENT MODE" in report and "D0" in report and "REAL TIME" in report


def test_a_backup_taken_while_sales_run_is_consistent_and_restores(tmp_path):
    sales = "".join(tap_sale(amount) for amount in (101, 102, 103, 104, 105, 106))

    async def go():
        async with sim_session(config(tmp_path)) as s:
            await play(s, LOGIN_CASHIER)
            data_dir = s.cfg.terminal.data_dir
            (tmp_path / "usb").mkdir()
            copies = []

            async def back_up_now_and_then():
                for _ in range(3):
                    copies.append(await asyncio.to_thread(
                        backup, data_dir, tmp_path / "usb", keep=5))
            await asyncio.gather(play(s, sales), back_up_now_and_then())
            await play(s, "fault drop times 1 mti 0200" + sales.split("remove")[0].replace(
                'expect screen "Take receipts"', 'expect screen "NO RESPONSE"'))
            return copies, data_dir, s.cfg.security.vault_key_file

    copies, live_dir, vault_key = asyncio.run(go())
    for copy in copies:
        db = sqlite3.connect(copy.path / JOURNAL_NAME)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            count = db.execute("SELECT COUNT(*) FROM txn").fetchone()[0]
        finally:
            db.close()
        assert 0 <= count <= 6
    replacement = tmp_path / "replacement"
    restore(copies[-1].path, replacement)
    journal = open_existing(replacement, vault_key)
    try:
        assert journal.count() >= 0 and journal.batch_no() == 1
    finally:
        journal.close()
    # the live terminal's journal now holds an unanswered sale: nothing overwrites it
    try:
        restore(copies[-1].path, live_dir, force=True)
    except BackupError as exc:
        refusal = str(exc)
    else:
        refusal = ""
    assert "unsent" in refusal, refusal
