"""A merchant's whole day through the real terminal and the acquirer simulator over TCP:
operator login, chip / contactless / QR sales, a void, a partial refund, a pre-auth and
its completion, an offline sale forwarded later, then settlement from the menu with one
forced out-of-balance answer and the batch upload; the printed settlement report's totals
equal the sums computed here, independently, from the simulator's ledger; the next sale
goes into the new batch."""
from __future__ import annotations

import asyncio
import re
from datetime import datetime

from conftest import SIM_TOML, sim_overrides
from firmware.config import load_config
from firmware.sim.runner import sim_session
from scenario import chip_sale, play, tap_sale

TID = "10000001"
WECHAT_PAID = "134567890123456780"  # a WeChat Pay code the simulated wallet pays at once
DEBIT_KINDS = ("sale", "advice", "completion", "repayment", "qr_sale")


def config(tmp_path):
    over = sim_overrides(tmp_path, echo_interval=1)
    over["operators"] = {"login": True}
    over["saf"] = {"retry_first": 0.2, "retry_max": 1.0}
    over["wallet"] = {"poll_interval": 0.1, "timeout": 2.0}
    return load_config(SIM_TOML, overrides=over)


def mmdd(created_at: str) -> str:
    return datetime.fromisoformat(created_at).strftime("%m%d")


def money(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


async def newest(session, kind: str):
    rows = await session.terminal.journal_call(lambda j: j.page(0, 50))
    return next(r for r in rows if r.kind == kind)


def ledger_sums(records, batch: str) -> tuple[int, int, int, int]:
    """(debit count, debit amount, credit count, credit amount) of `batch`, from the
    simulator's own records: approved, unreversed debits minus the voided ones; refunds."""
    mine = [r for r in records if r.batch == batch and r.rc == "00" and not r.reversed]
    debits = [r for r in mine if r.kind in DEBIT_KINDS]
    voids = [r for r in mine if r.kind in ("void", "completion_void")]
    credits = [r for r in mine if r.kind in ("refund", "qr_refund")]
    return (len(debits) - len(voids), sum(r.amount for r in debits) - sum(r.amount for r in voids),
            len(credits), sum(r.amount for r in credits))


def ledger_fees(records, batch: str, *, card_bp: int, qr_bp: int) -> int:
    """The merchant's fees for `batch`: per item, rounded half up to the fen; a refund gives
    its fee back; a voided sale pays none."""
    mine = [r for r in records if r.batch == batch and r.rc == "00" and not r.reversed]
    voided = {r.original_id for r in mine if r.kind in ("void", "completion_void")}

    def fee(r) -> int:
        bp = qr_bp if r.kind.startswith("qr") else card_bp
        return (r.amount * bp * 2 + 10_000) // 20_000  # half up

    return (sum(fee(r) for r in mine if r.kind in DEBIT_KINDS and r.id not in voided)
            - sum(fee(r) for r in mine if r.kind in ("refund", "qr_refund")))


def test_a_merchant_day_ends_in_a_settled_batch_that_matches_the_ledger(tmp_path):
    async def day():
        async with sim_session(config(tmp_path)) as session:
            # chip 100.00 with online PIN, contactless 50.00, chip 20.00 the supervisor voids
            await play(session, """
                login 01 0000
                expect screen "op 01"
                expect signon
            """ + chip_sale(10000) + tap_sale(5000, "visa") + chip_sale(2000) + """
                # QR sale 30.00 (WeChat Pay, paid at once)
                keys MENU
                expect screen "MENU"
                keys 7
                expect screen "Amount"
                keys 3000 ENTER
                expect screen "Scan payment code"
            """)
            await play(session, f"""
                scan {WECHAT_PAID}
                expect screen "Take receipts"
                keys ENTER
                expect screen "op 01"
            """)
            to_void = await newest(session, "sale")
            assert to_void.amount == 2000
            await play(session, f"""
                # void: a cashier needs the supervisor's password
                keys MENU
                keys 2
                expect screen "Supervisor no."
                keys 00 ENTER
                expect screen "Password"
                keys 123456 ENTER
                expect screen "STAN"
                keys {to_void.stan} ENTER
                expect screen "ENTER to void"
                keys ENTER
                insert approve
                expect screen "Take receipts"
                expect receipt merchant "VOID"
                keys ENTER
                remove
                expect screen "op 01"
            """)
            tapped = (await session.terminal.journal_call(lambda j: j.page(0, 50)))[-2]
            assert tapped.amount == 5000 and tapped.entry_mode == "071"
            await play(session, f"""
                # partial refund 10.00 of the contactless sale, by RRN and date
                keys MENU
                keys 3
                keys 00 ENTER 123456 ENTER
                expect screen "RRN"
                keys {tapped.rrn} ENTER
                expect screen "MMDD"
                keys {mmdd(tapped.created_at)} ENTER
                expect screen "Amount"
                keys 1000 ENTER
                tap visa
                expect screen "Take receipts"
                expect receipt customer "REFUND"
                keys ENTER
                remove
                expect screen "op 01"
                # pre-auth 200.00
                keys MENU
                keys 4
                expect screen "PRE-AUTH"
                keys 1
                keys 20000 ENTER
                insert approve
                expect screen "Enter PIN"
                keys 1234 ENTER
                expect screen "Take receipts"
                keys ENTER
                remove
                expect screen "op 01"
            """)
            preauth = await newest(session, "preauth")
            assert preauth.status == "APPROVED" and preauth.auth_code
            await play(session, f"""
                # its completion, 180.00 (supervisor)
                keys MENU
                keys 4
                keys 3
                keys 00 ENTER 123456 ENTER
                expect screen "Auth code"
                keys {preauth.auth_code} ENTER
                keys {mmdd(preauth.created_at)} ENTER
                expect screen "Amount"
                keys 18000 ENTER
                insert approve
                expect screen "Take receipts"
                keys ENTER
                remove
                expect screen "op 01"
                # an offline sale while the host is away, forwarded when it is back
                acquirer down
                keys 4000 ENTER
                tap approve
                expect screen "Approved offline"
                expect screen "Take receipts"
                keys ENTER
                remove
                expect queue 1
                acquirer up
                expect queue 0 within 15
                # settlement from the menu: the host says "out of balance" once
                acquirer unbalance 1
                keys MENU
                keys 9
                expect screen "MANAGER"
                keys 2
                keys 00 ENTER 123456 ENTER
                expect screen "Settle batch?"
                keys ENTER
                expect screen "Settled" within 20
                expect batch 2
            """)
            records = await session.acquirer.in_ledger(lambda ledger: ledger.records(TID))
            report = (session.receipts_dir / "settle-000001.txt").read_text(encoding="utf-8")
            settled = await session.terminal.journal_call(lambda j: j.settlement(1))
            uploads = await session.terminal.journal_call(lambda j: j.pending_uploads(1))
            await play(session, """
                keys ENTER
                expect screen "op 01"
                keys 700 ENTER
                tap approve
                expect screen "Take receipts"
            """)
            last = await session.terminal.journal_call(lambda j: j.last())
            return records, report, settled, uploads, last

    records, report, settled, uploads, last = asyncio.run(day())
    debit_count, debit_amount, credit_count, credit_amount = ledger_sums(records, "000001")
    # the day as the ledger saw it: 100 + 50 + 30 (QR) + 180 (completion) + 40 (offline);
    # the voided 20.00 is out; one refund of 10.00
    assert (debit_count, debit_amount, credit_count, credit_amount) == (5, 40000, 1, 1000)
    assert settled["status"] == "SETTLED" and settled["result"] == "out_of_balance"
    assert uploads == []  # every upload acknowledged
    assert re.search(rf"DEBIT TOTAL\s+{debit_count}\s+{money(debit_amount)}", report), report
    assert re.search(rf"CREDIT TOTAL\s+{credit_count}\s+{money(credit_amount)}", report), report
    assert "BATCH UPLOAD" in report and "AFTER UPLOAD            BALANCED" in report, report
    fees = ledger_fees(records, "000001", card_bp=60, qr_bp=38)  # [fees] in config/sim.toml
    assert re.search(rf"FEES\s+{money(fees)}\n", report), report
    net = debit_amount - credit_amount - fees
    assert re.search(rf"NET\s+{money(net)}\n", report), report
    assert (last.batch, last.status, last.amount) == (2, "APPROVED", 700)
