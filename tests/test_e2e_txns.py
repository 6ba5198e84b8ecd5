"""Every card transaction type end to end over real TCP on loopback, driven through the
menu like a merchant: void (by STAN; found in the Transactions list first), partial refunds
against an original, pre-auth, its cancel, completion online and as an advice, completion
void, balance inquiry, card repayment (the card paid keyed or swiped), manual key entry.
Each is checked on the screens, in the journal (kind, status, original, amount), on the
receipts (the kind's label, the original's lines) and in the simulator's ledger (the
card's available balance before and after, the decision recorded). Then the refusals
(role, limit, velocity, offline, keying): each shows its reason and changes nothing: no
new approved journal row, the ledger balance as it was, no request to the acquirer."""
from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager
from datetime import datetime

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.config import load_config
from firmware.journal import JOURNAL_NAME
from firmware.sim.ledger import pan_key
from firmware.sim.runner import sim_session
from scenario import merchant_copy
from test_e2e_day import TID, mmdd, newest, play

APPROVE = "6226090000000014"  # catalog card "approve": chip, online PIN 1234
START = 1000000  # the "approve" card's balance in the catalog, minor units
VISA = "4761730000000011"
BAD_LUHN = "6226090000000015"
IDLE = """
    expect screen "Key in amount"
"""
TAKE_RECEIPTS = """
    expect screen "Take receipts"
    keys ENTER
    remove
""" + IDLE  # an approval's receipts printed, the card taken, back at idle


def config(tmp_path, **sections):
    """The simulator config with operator login, result screens that wait for ENTER (30 s)
    and quick store-and-forward retries; `sections` are merged over it."""
    over = sim_overrides(tmp_path)
    over.update(operators={"login": True}, timeouts={"result": 30},
                saf={"retry_first": 0.2, "retry_max": 1.0})
    for name, values in sections.items():
        over[name] = {**over.get(name, {}), **values}
    return load_config(SIM_TOML, overrides=over)


@asynccontextmanager
async def terminal(tmp_path, *, who: str = "00 123456", **sections):
    """A running session, operator `who` ("NO PASSWORD", the supervisor by default)
    logged in, signed on."""
    async with sim_session(config(tmp_path, **sections)) as session:
        await play(session, f"login {who}\nexpect screen \"op {who[:2]}\"\nexpect signon")
        yield session


async def rows(session):
    """The journal, oldest first."""
    return list(reversed(await session.terminal.journal_call(lambda j: j.page(0, 100))))


async def balance(session, pan: str) -> int:
    """The card's available balance at the simulated host (holds taken off)."""
    return await session.acquirer.in_ledger(lambda ledger: ledger.balance(pan))


async def decisions(session):
    """Everything the simulated host decided for this terminal, oldest first."""
    return await session.acquirer.in_ledger(lambda ledger: ledger.records(TID))


def month_day(created_at: str) -> str:
    """The receipts' ORIG. DATE: MM/DD."""
    return datetime.fromisoformat(created_at).strftime("%m/%d")


def chip_sale(amount: str) -> str:
    """Script: an online-PIN chip sale from the idle screen, back to it."""
    return f"""
        keys {amount} ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
    """ + TAKE_RECEIPTS


def menu(*path: str) -> str:
    """Script: open the menu and pick an item (a path of digits)."""
    return "keys MENU\nexpect screen \"MENU\"\n" + "".join(f"keys {k}\n" for k in path)


def void_by_stan(stan: int, *path: str) -> str:
    """Script: void (menu `path`, default 2) the row with `stan`, approved."""
    return menu(*(path or ("2",))) + f"""
        expect screen "STAN"
        keys {stan} ENTER
        expect screen "ENTER to void"
        keys ENTER
        insert approve
    """ + TAKE_RECEIPTS


def assert_lines(receipt: str, *pairs: tuple[str, str]) -> None:
    """Each (label, value) is one receipt line: the label, spaces, the value."""
    for label, value in pairs:
        assert re.search(rf"^{re.escape(label)} +{re.escape(value)}$", receipt, re.M), \
            f"no line {label} ... {value} in\n{receipt}"


@asynccontextmanager
async def nothing_changes(session, *pans: str, sent: int = 0):
    """What the block does is refused: no new approved journal row, no receipt, the cards'
    balances at the host as they were, and `sent` requests reaching the acquirer (0: the
    terminal refused it itself)."""
    async def snapshot(sent: int = 0):
        approved = [r.id for r in await rows(session) if r.status == "APPROVED"]
        balances = [await balance(session, pan) for pan in pans or (APPROVE,)]
        printed = len(session.printer.printed)
        return approved, balances, session.acquirer.requests_seen - sent, printed

    before = await snapshot()
    yield
    assert await snapshot(sent) == before


# ---- void --------------------------------------------------------------------------------

def test_void_by_stan_credits_the_sale_back_and_a_second_void_is_refused(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, chip_sale("12345"))
            sale = await newest(session, "sale")
            after_sale = await balance(session, APPROVE)
            await play(session, void_by_stan(sale.stan) + 'expect receipt customer "VOID"')
            receipt, after_void = merchant_copy(session), await balance(session, APPROVE)
            async with nothing_changes(session):
                await play(session, menu("2") + f"""
                    keys {sale.stan} ENTER
                    expect screen "Already voided"
                    keys ENTER
                """ + IDLE)
            return sale, await newest(session, "void"), receipt, after_sale, after_void, \
                await decisions(session)

    sale, void, receipt, after_sale, after_void, ledger = asyncio.run(go())
    assert (after_sale, after_void) == (START - 12345, START)
    assert (void.status, void.amount, void.original_id, void.original_rrn) == (
        "APPROVED", 12345, sale.id, sale.rrn)
    assert_lines(receipt, ("TXN TYPE", "VOID"), ("AMOUNT:", "CNY -123.45"),
                 ("ORIG. STAN", f"{sale.stan:06d}"), ("ORIG. REF", sale.rrn),
                 ("ORIG. AUTH", sale.auth_code), ("STAN", f"{void.stan:06d}"))
    host_sale, host_void = ledger
    assert (host_void.kind, host_void.rc, host_void.original_id, host_void.amount) == (
        "void", "00", host_sale.id, 12345)


def test_void_of_a_row_picked_from_the_transactions_list(tmp_path):
    """The list shows the row; its detail's MENU key voids it (the terminal's operator is a
    supervisor here), the list then shows it VOIDED."""
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, chip_sale("2000") + chip_sale("3000"))
            first = (await rows(session))[0]
            await play(session, menu("8", "1") + f"""
                expect screen "TXNS 1-2/2"
                expect screen "{first.stan:06d} SALE"
                keys 2
                expect screen "CNY 20.00"
                expect screen "APPROVED"
                keys MENU
                expect screen "ENTER to void"
                keys ENTER
                insert approve
            """ + TAKE_RECEIPTS + menu("8", "1") + """
                expect screen "TXNS 1-3/3"
                keys 3
                expect screen "VOIDED"
                keys MENU
                expect screen "Already voided"
            """)
            return first, await newest(session, "void"), await balance(session, APPROVE)

    first, void, after = asyncio.run(go())
    assert (void.original_id, void.amount, void.status) == (first.id, 2000, "APPROVED")
    assert after == START - 3000


# ---- refund ------------------------------------------------------------------------------

def refund(rrn: str, date: str, amount: str) -> str:
    """Script: a refund of the original with `rrn` and `date` (MMDD), approved."""
    return menu("3") + f"""
        expect screen "RRN"
        keys {rrn} ENTER
        expect screen "MMDD"
        keys {date} ENTER
        expect screen "Amount"
        keys {amount} ENTER
        insert approve
        expect screen "REFUND APPROVED"
    """ + TAKE_RECEIPTS


def test_partial_refunds_up_to_the_remaining_amount_then_refused(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, chip_sale("10000"))
            sale = await newest(session, "sale")
            date = mmdd(sale.created_at)
            await play(session, refund(sale.rrn, date, "3000"))
            receipt = merchant_copy(session)
            await play(session, refund(sale.rrn, date, "5000"))
            after = await balance(session, APPROVE)
            async with nothing_changes(session):  # 20.00 left: 20.01 cannot be keyed
                await play(session, menu("3") + f"""
                    keys {sale.rrn} ENTER {date} ENTER
                    expect screen "Amount"
                    keys 2001
                    expect screen "Max CNY 20.00"
                    keys CANCEL
                """ + IDLE)
            refunds = [r for r in await rows(session) if r.kind == "refund"]
            return sale, refunds, receipt, after, await decisions(session)

    sale, refunds, receipt, after, ledger = asyncio.run(go())
    assert after == START - 10000 + 8000
    assert [(r.amount, r.status, r.original_id, r.original_rrn) for r in refunds] == [
        (3000, "APPROVED", sale.id, sale.rrn), (5000, "APPROVED", sale.id, sale.rrn)]
    assert_lines(receipt, ("TXN TYPE", "REFUND"), ("AMOUNT:", "CNY -30.00"),
                 ("ORIG. REF", sale.rrn), ("ORIG. DATE", month_day(sale.created_at)))
    host_sale = ledger[0]
    assert [(a.kind, a.rc, a.amount, a.original_id) for a in ledger[1:]] == [
        ("refund", "00", 3000, host_sale.id), ("refund", "00", 5000, host_sale.id)]


def test_the_host_refuses_refunds_over_the_original_it_alone_knows(tmp_path):
    """A refund of a sale this terminal's journal does not hold (e.g. a replaced
    terminal): the form cannot cap the amount, the host does: 61, nothing credited."""
    async def first_terminal():
        async with terminal(tmp_path) as session:
            await play(session, chip_sale("10000"))
            sale = await newest(session, "sale")
            await play(session, refund(sale.rrn, mmdd(sale.created_at), "6000"))
            return sale

    sale = asyncio.run(first_terminal())
    replaced = {"data_dir": str(tmp_path / "replaced")}

    async def second_terminal():
        async with terminal(tmp_path, terminal=replaced) as session:
            # echo tests take the STANs the host already saw from this terminal id
            echo = menu("9", "3") + 'expect screen "Host answered 00"\nkeys ENTER\n'
            await play(session, echo * 3)
            async with nothing_changes(session, sent=1):
                await play(session, menu("3") + f"""
                    keys {sale.rrn} ENTER {mmdd(sale.created_at)} ENTER
                    expect screen "Amount"
                    keys 4001 ENTER
                    insert approve
                    expect screen "DECLINED"
                    expect screen "AMOUNT LIMIT"
                    expect screen "Code 61"
                    expect journal DECLINED
                    keys ENTER
                    remove
                """ + IDLE)
            await play(session, refund(sale.rrn, mmdd(sale.created_at), "4000"))
            return await newest(session, "refund"), await decisions(session)

    last, ledger = asyncio.run(second_terminal())
    assert (last.amount, last.status, last.original_id, last.original_rrn) == (
        4000, "APPROVED", None, sale.rrn)
    assert [(a.kind, a.rc, a.amount) for a in ledger] == [
        ("sale", "00", 10000), ("refund", "00", 6000), ("refund", "61", 4001),
        ("refund", "00", 4000)]


# ---- pre-authorisation, cancel, completion, completion void --------------------------------

def preauth(amount: str) -> str:
    """Script: a pre-auth of the "approve" card, approved."""
    return menu("4") + f"""
        expect screen "PRE-AUTH"
        keys 1
        expect screen "Amount"
        keys {amount} ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "PRE-AUTH APPROVED"
    """ + TAKE_RECEIPTS


def against_preauth(item: str, code: str, date: str, amount: str) -> str:
    """Script: pre-auth menu item `item` (2 cancel, 3 completion, 4 completion advice) for
    the pre-auth `code` of `date`, the card inserted; stops at the outcome."""
    return menu("4", item) + f"""
        expect screen "Auth code"
        keys {code} ENTER
        expect screen "MMDD"
        keys {date} ENTER
        expect screen "Amount"
        keys {amount} ENTER
        insert approve
    """


async def held(session) -> int:
    return await session.acquirer.in_ledger(lambda ledger: ledger.held(APPROVE))


def test_completion_above_the_preauth_plus_15_percent_is_declined_then_completed(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, preauth("20000"))
            hold = await newest(session, "preauth")
            holding = await balance(session, APPROVE), await held(session)
            date = mmdd(hold.created_at)
            async with nothing_changes(session, sent=1):
                await play(session, against_preauth("3", hold.auth_code, date, "23001") + """
                    expect screen "DECLINED"
                    expect screen "AMOUNT LIMIT"
                    expect screen "Code 61"
                    expect journal DECLINED
                    keys ENTER
                    remove
                """ + IDLE)
            await play(session, against_preauth("3", hold.auth_code, date, "23000") + """
                expect screen "COMPLETION APPROVED"
            """ + TAKE_RECEIPTS)
            completed = await balance(session, APPROVE), await held(session)
            return (hold, await newest(session, "completion"), merchant_copy(session),
                    holding, completed, await decisions(session))

    hold, completion, receipt, holding, completed, ledger = asyncio.run(go())
    assert holding == (START - 20000, 20000)
    assert completed == (START - 23000, 0)  # exactly 115%, the hold released
    assert (hold.status, hold.amount) == ("APPROVED", 20000)
    assert (completion.status, completion.amount, completion.original_date) == (
        "APPROVED", 23000, mmdd(hold.created_at))
    assert_lines(receipt, ("TXN TYPE", "COMPLETION"), ("AMOUNT:", "CNY 230.00"),
                 ("ORIG. DATE", month_day(hold.created_at)))
    host_hold = ledger[0]
    assert [(a.kind, a.rc, a.amount, a.original_id) for a in ledger] == [
        ("preauth", "00", 20000, None), ("completion", "61", 23001, host_hold.id),
        ("completion", "00", 23000, host_hold.id)]


def test_completion_advice_is_queued_then_forwarded(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, preauth("10000"))
            hold = await newest(session, "preauth")
            await play(session, "acquirer down\n" + against_preauth(
                "4", hold.auth_code, mmdd(hold.created_at), "9000") + """
                expect screen "COMPLETION APPROVED"
                expect screen "Approved offline"
                expect queue 1
            """ + TAKE_RECEIPTS)
            queued = await balance(session, APPROVE)
            await play(session, "acquirer up\nexpect queue 0 within 15")
            return (hold, await newest(session, "completion"), merchant_copy(session), queued,
                    await balance(session, APPROVE), await held(session),
                    await decisions(session))

    hold, completion, receipt, queued, after, still_held, ledger = asyncio.run(go())
    assert queued == START - 10000  # the host has not heard of it yet
    assert (after, still_held) == (START - 9000, 0)
    assert (completion.status, completion.amount, completion.offline_code,
            completion.advice_status) == ("APPROVED", 9000, "00", "ACKED")
    assert_lines(receipt, ("TXN TYPE", "COMPLETION"), ("ORIG. DATE", month_day(hold.created_at)),
                 ("AMOUNT:", "CNY 90.00"))
    assert [(a.kind, a.rc, a.amount) for a in ledger] == [
        ("preauth", "00", 10000), ("completion_advice", "00", 9000)]
    assert ledger[1].original_id == ledger[0].id


def test_completion_void_gives_the_completion_back(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, preauth("20000"))
            hold = await newest(session, "preauth")
            await play(session, against_preauth("3", hold.auth_code, mmdd(hold.created_at),
                                                "15000") + TAKE_RECEIPTS)
            completion = await newest(session, "completion")
            completed = await balance(session, APPROVE)
            await play(session, void_by_stan(completion.stan, "4", "5")
                       + 'expect receipt merchant "COMPLETION VOID"')
            return (completion, await newest(session, "completion_void"), merchant_copy(session),
                    completed, await balance(session, APPROVE), await decisions(session))

    completion, void, receipt, completed, after, ledger = asyncio.run(go())
    assert (completed, after) == (START - 15000, START)
    assert (void.status, void.amount, void.original_id, void.original_rrn) == (
        "APPROVED", 15000, completion.id, completion.rrn)
    assert_lines(receipt, ("TXN TYPE", "COMPLETION VOID"), ("AMOUNT:", "CNY -150.00"),
                 ("ORIG. STAN", f"{completion.stan:06d}"), ("ORIG. REF", completion.rrn))
    assert [(a.kind, a.rc, a.amount) for a in ledger] == [
        ("preauth", "00", 20000), ("completion", "00", 15000), ("completion_void", "00", 15000)]
    assert ledger[2].original_id == ledger[1].id


def test_preauth_cancel_releases_the_hold(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, preauth("30000"))
            hold = await newest(session, "preauth")
            holding = await balance(session, APPROVE)
            date = mmdd(hold.created_at)
            await play(session, against_preauth("2", hold.auth_code, date, "30000") + """
                expect screen "PRE-AUTH CANCEL OK"
            """ + TAKE_RECEIPTS)
            receipt, released = merchant_copy(session), await balance(session, APPROVE)
            async with nothing_changes(session, sent=1):  # nothing left to complete
                await play(session, against_preauth("3", hold.auth_code, date, "1000") + """
                    expect screen "DECLINED"
                    expect screen "INVALID TRANSACTION"
                    expect screen "Code 12"
                    keys ENTER
                    remove
                """ + IDLE)
            return (hold, await newest(session, "preauth_cancel"), receipt, holding, released,
                    await decisions(session))

    hold, cancel, receipt, holding, released, ledger = asyncio.run(go())
    assert (holding, released) == (START - 30000, START)
    assert (cancel.status, cancel.amount, cancel.original_date) == (
        "APPROVED", 30000, mmdd(hold.created_at))
    assert_lines(receipt, ("TXN TYPE", "PRE-AUTH CANCEL"), ("AMOUNT:", "CNY 300.00"),
                 ("ORIG. DATE", month_day(hold.created_at)))
    assert [(a.kind, a.rc, a.money) for a in ledger] == [
        ("preauth", "00", "none"), ("preauth_cancel", "00", "none"), ("completion", "12", "debit")]
    assert ledger[1].original_id == ledger[0].id


def test_completion_receipt_names_the_preauth_code(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, preauth("10000"))
            hold = await newest(session, "preauth")
            await play(session, against_preauth("3", hold.auth_code, mmdd(hold.created_at),
                                                "10000") + TAKE_RECEIPTS)
            return hold, merchant_copy(session)

    hold, receipt = asyncio.run(go())
    assert_lines(receipt, ("ORIG. AUTH", hold.auth_code))


# ---- balance inquiry ---------------------------------------------------------------------

def test_balance_inquiry_is_shown_and_never_stored(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    async def go():
        async with terminal(tmp_path) as session:
            await play(session, chip_sale("12345"))  # the balance becomes 9876.55
            printed = len(session.printer.printed)
            await play(session, menu("5") + """
                expect screen "BALANCE"
                insert approve
                expect screen "Enter PIN"
                keys 1234 ENTER
                expect screen "Available"
                expect screen "CNY 9876.55"
                keys ENTER
                remove
            """ + IDLE)
            assert len(session.printer.printed) == printed  # no receipt
            return await newest(session, "balance"), await decisions(session)

    inquiry, ledger = asyncio.run(go())
    assert (inquiry.status, inquiry.amount) == ("APPROVED", 0)
    assert [(a.kind, a.rc, a.amount, a.money) for a in ledger][1:] == [("balance", "00", 0, "none")]
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert any(p.name.startswith(JOURNAL_NAME) for p in files)
    blobs = {str(p): p.read_bytes() for p in files}
    blobs["log"] = caplog.text.encode()
    for digits in (b"987655", b"9876.55", b"9,876.55"):
        for name, blob in blobs.items():
            assert digits not in blob, f"balance {digits!r} in {name}"


# ---- card repayment ----------------------------------------------------------------------

def repayment(target: str, amount: str) -> str:
    """Script: menu 6, the card to pay (`keys PAN ENTER` or `swipe CARD`), the amount, then
    the paying card with its PIN."""
    return menu("6") + f"""
        expect screen "Card to pay"
        {target}
        expect screen "Amount"
        keys {amount} ENTER
        insert approve
        expect screen "Enter PIN"
        keys 1234 ENTER
        expect screen "REPAYMENT APPROVED"
    """ + TAKE_RECEIPTS


@pytest.mark.parametrize("how, card, masked", [
    (f"keys {VISA} ENTER", VISA, "476173******0011"),
    ("swipe magstripe_only", "6226090000000196", "622609******0196")], ids=["keyed", "swiped"])
def test_repayment_debits_the_paying_card_and_credits_the_card_paid(tmp_path, how, card, masked):
    async def go():
        async with terminal(tmp_path) as session:
            before = await balance(session, card)
            await play(session, repayment(how, "50000"))
            return (before, await balance(session, card), await balance(session, APPROVE),
                    await newest(session, "repayment"), merchant_copy(session),
                    await decisions(session))

    before, after, payer, row, receipt, ledger = asyncio.run(go())
    assert (after - before, payer) == (50000, START - 50000)
    assert (row.status, row.amount, row.target_pan, row.masked_pan) == (
        "APPROVED", 50000, masked, "622609******0014")
    assert_lines(receipt, ("TXN TYPE", "REPAYMENT"), ("TO CARD", masked),
                 ("CARD NO.", "622609******0014"), ("AMOUNT:", "CNY 500.00"))
    [paid] = ledger
    assert (paid.kind, paid.rc, paid.amount, paid.money, paid.counter_key) == (
        "repayment", "00", 50000, "debit", pan_key(card))
    assert card not in receipt


# ---- manual key entry --------------------------------------------------------------------

def keyed_sale(amount: str, pan: str, expiry: str = "1230") -> str:
    """Script: a sale whose card is keyed in (MENU on the present-card screen); a
    supervisor is logged in. Stops after the expiry's ENTER."""
    return f"""
        keys {amount} ENTER
        expect screen "Insert"
        keys MENU
        expect screen "Card no."
        keys {pan} ENTER
        expect screen "Expiry MMYY"
        keys {expiry} ENTER
    """


def test_manual_entry_by_a_supervisor_is_approved(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, keyed_sale("5000", APPROVE) + """
                expect screen "Take receipts" within 3
                keys ENTER
            """ + IDLE)
            return await newest(session, "sale"), merchant_copy(session), \
                await balance(session, APPROVE)

    sale, receipt, after = asyncio.run(go())
    assert (sale.status, sale.entry_mode, sale.amount) == ("APPROVED", "011", 5000)
    assert_lines(receipt, ("ENTRY MODE", "MANUAL"), ("CARD NO.", "622609******0014"))
    assert after == START - 5000


def test_manual_entry_refuses_a_bad_luhn_number(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            async with nothing_changes(session):
                await play(session, f"""
                    keys 5000 ENTER
                    expect screen "Insert"
                    keys MENU
                    expect screen "Card no."
                    keys {BAD_LUHN} ENTER
                    expect screen "Invalid card no."
                    keys CANCEL
                    expect screen "Cancelled"
                    keys ENTER
                """ + IDLE)
            return await rows(session)

    assert asyncio.run(go()) == []


def test_manual_entry_by_a_cashier_needs_a_supervisor_password(tmp_path):
    async def go():
        async with terminal(tmp_path, who="01 0000") as session:
            async with nothing_changes(session):
                await play(session, """
                    keys 5000 ENTER
                    expect screen "Insert"
                    keys MENU
                    expect screen "Key in card"
                    expect screen "Supervisor no."
                    keys 00 ENTER
                    expect screen "Password"
                    keys 654321 ENTER
                    expect screen "Not confirmed"
                    expect screen "Wrong password"
                    keys ENTER
                """ + IDLE + """
                    keys 5000 ENTER
                    expect screen "Insert"
                    keys MENU
                    expect screen "Supervisor no."
                    keys 00 ENTER
                    expect screen "Password"
                    keys 123456 ENTER
                    expect screen "Card no."
                    keys CANCEL
                    expect screen "Cancelled"
                    keys ENTER
                """ + IDLE)
            return await rows(session)

    assert asyncio.run(go()) == []


def test_manual_entry_with_the_host_down_is_refused(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, "acquirer down")
            async with nothing_changes(session):
                await play(session, keyed_sale("5000", APPROVE) + """
                    expect screen "DECLINED"
                    expect screen "No keying offline"
                    expect queue 0
                    keys ENTER
                """ + IDLE)
            return await rows(session)

    assert all(r.status != "APPROVED" for r in asyncio.run(go()))


# ---- refusals: each shows its reason and changes nothing ---------------------------------

@pytest.mark.parametrize("who, password, reason", [
    ("01", "0000", "Supervisor only"),  # a cashier cannot confirm
    ("00", "654321", "Wrong password")], ids=["cashier", "wrong-password"])
def test_a_cashier_picking_void_needs_a_supervisor(tmp_path, who, password, reason):
    async def go():
        async with terminal(tmp_path, who="01 0000") as session:
            await play(session, chip_sale("2000"))
            sale = await newest(session, "sale")
            async with nothing_changes(session):
                await play(session, menu("2") + f"""
                    expect screen "Supervisor no."
                    keys {who} ENTER
                    expect screen "Password"
                    keys {password} ENTER
                    expect screen "Not allowed"
                    expect screen "{reason}"
                    keys ENTER
                    expect screen "MENU"
                    keys CANCEL
                """ + IDLE)
            return sale, await rows(session)

    sale, journal = asyncio.run(go())
    assert journal == [sale]


def test_over_the_contactless_limit_is_refused(tmp_path):
    async def go():
        async with terminal(tmp_path, risk={"max_contactless": 5000}) as session:
            async with nothing_changes(session, VISA):
                await play(session, """
                    keys 5001 ENTER
                    tap visa
                    expect screen "Refused"
                    expect screen "Over CONTACTLESS"
                    expect screen "limit 50.00"
                    keys ENTER
                """ + IDLE)
            await play(session, "remove\nkeys 5000 ENTER\ntap visa" + TAKE_RECEIPTS)
            return await rows(session)

    assert [(r.amount, r.status) for r in asyncio.run(go())] == [(5000, "APPROVED")]


def test_over_the_daily_chip_limit_is_refused(tmp_path):
    async def go():
        async with terminal(tmp_path, risk={"daily_chip": 15000}) as session:
            await play(session, chip_sale("10000"))
            async with nothing_changes(session):
                await play(session, """
                    keys 6000 ENTER
                    insert approve
                    expect screen "Refused"
                    expect screen "Over CHIP daily"
                    expect screen "limit 150.00"
                    keys ENTER
                    remove
                """ + IDLE)
            await play(session, chip_sale("5000"))  # exactly the limit
            return await rows(session)

    assert [(r.amount, r.status) for r in asyncio.run(go())] == [
        (10000, "APPROVED"), (5000, "APPROVED")]


VELOCITY = {"velocity_count": 1, "velocity_small": 10000}  # a second small sale trips it


def test_velocity_refuse_refuses_the_second_small_sale(tmp_path):
    async def go():
        async with terminal(tmp_path, risk={**VELOCITY, "velocity_action": "refuse"}) as session:
            await play(session, chip_sale("1000"))
            async with nothing_changes(session):
                await play(session, """
                    keys 2000 ENTER
                    insert approve
                    expect screen "Refused"
                    expect screen "2 sales in 10 min"
                    keys ENTER
                    remove
                """ + IDLE)
            return await rows(session)

    assert [r.amount for r in asyncio.run(go())] == [1000]


def test_velocity_confirm_needs_a_supervisor_for_the_total(tmp_path):
    risk = {"velocity_total": 15000, "velocity_action": "confirm"}

    async def go():
        async with terminal(tmp_path, who="01 0000", risk=risk) as session:
            await play(session, chip_sale("10000"))
            over = """
                keys 6000 ENTER
                insert approve
                expect screen "SUPERVISOR"
                expect screen "Total 160.00 in 10"
                keys 00 ENTER
                expect screen "Password"
            """
            async with nothing_changes(session):
                await play(session, over + """
                    keys 654321 ENTER
                    expect screen "Not confirmed"
                    expect screen "Wrong password"
                    keys ENTER
                    remove
                """ + IDLE)
            await play(session, over + """
                keys 123456 ENTER
                expect screen "Enter PIN"
                keys 1234 ENTER
            """ + TAKE_RECEIPTS)
            return await rows(session), await balance(session, APPROVE)

    journal, after = asyncio.run(go())
    assert [(r.amount, r.status) for r in journal] == [(10000, "APPROVED"), (6000, "APPROVED")]
    assert after == START - 16000


def test_void_refund_and_preauth_are_never_offline(tmp_path):
    async def go():
        async with terminal(tmp_path) as session:
            await play(session, chip_sale("10000"))
            sale = await newest(session, "sale")
            await play(session, "acquirer down")
            async with nothing_changes(session):
                await play(session, menu("2") + f"""
                    keys {sale.stan} ENTER
                    expect screen "ENTER to void"
                    keys ENTER
                    insert approve
                    expect screen "DECLINED"
                    expect screen "Host unreachable"
                    expect screen "No void offline"
                    keys ENTER
                    remove
                """ + IDLE + menu("3") + f"""
                    keys {sale.rrn} ENTER {mmdd(sale.created_at)} ENTER
                    expect screen "Amount"
                    keys 1000 ENTER
                    insert approve
                    expect screen "DECLINED"
                    expect screen "No refund offline"
                    keys ENTER
                    remove
                """ + IDLE + menu("4", "1") + """
                    expect screen "Amount"
                    keys 1000 ENTER
                    insert approve
                    expect screen "Enter PIN"
                    keys 1234 ENTER
                    expect screen "DECLINED"
                    expect screen "No pre-auth offline"
                    expect queue 0
                    keys ENTER
                    remove
                """ + IDLE)
            return sale, await rows(session)

    sale, journal = asyncio.run(go())
    assert [r for r in journal if r.status == "APPROVED"] == [sale]
