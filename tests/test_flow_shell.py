"""Menu shell state machine: login, menu, forms, lists, tasks and QR, events in, actions out."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkit import flat, make_drive, shows
from firmware.basket import Catalog, Product
from firmware.emv.card import ENTRY_CHIP, ENTRY_MAGSTRIPE, CardData
from firmware.flows.sale import SaleConfig, keyed_card
from firmware.flows.shell import (
    BUSY_PHASES, PHASES, ShellConfig, busy, resting, start, step,
)
from firmware.flows.types import (
    KEYS, LCD_COLS, LCD_ROWS, AuthResult, Authorise, BarcodeScanned, BasketLine, BasketSaved,
    Beep, CancelTimers, CardInserted, CardRead, CardRemoved, CardSwiped, CashDone, CheckLogin,
    CheckRisk, CodeScanned, FindTxn, Idle, Key, LinkStatus, ListTxns, LoginResult, Logout,
    OpenDrawer, OriginalRef, PayCash, PinLength, Print, PrintDone, QrPay, QrProgress, ReaderStatus,
    Reprint, RiskResult, RunTask, SaveBasket, Screen, SetTraining, Show, Shutdown, StartPin,
    StartTimer, StopPin, TaskDone, Timeout, TrainingSet, TxnFound, TxnPage, TxnSpec, TxnSummary,
    wrap,
)

PAN = "6226090000000014"
KEYED = "4111111111111111"
CODE = "134567890123456789"  # a WeChat-style payment code
CARD = CardData(pan=PAN, expiry="3012", pan_seq="01", track2=PAN + "=3012201",
                aid="A000000333010101", app_label="UnionPay Debit", icc_data=b"\x9f\x26\x08")
STRIPE = replace(CARD, entry_mode=ENTRY_MAGSTRIPE, icc_data=b"", pan=KEYED)
SALE_CFG = SaleConfig(max_amount=9_999_999)
TEA = Product("2", "Green tea 500ml", 350, "6920152400012")
CATALOG = Catalog((Product("1", "Mineral water 550ml", 200, "6901234567892"), TEA,
                   Product("10", "Coffee beans 250g", 6800, "4006381333931"),
                   Product("5", "Rice 5kg", 3990)))
CFG = ShellConfig(SALE_CFG, wallet_limit=500_000, catalog=CATALOG)
OPEN = ShellConfig(SALE_CFG, wallet_limit=500_000, require_login=False)


def row(**kw) -> TxnSummary:
    base = dict(txn_id=3, kind="sale", stan=17, batch=1, amount=1250, currency=156,
                status="APPROVED", created_at="2024-05-14T10:22:33", operator="01",
                masked_pan="622609******0014", rrn="000000000042", auth_code="123456",
                entry_mode="051")
    return TxnSummary(**{**base, **kw})


SALE_ROW = row()
COMPLETION_ROW = row(txn_id=5, kind="completion", stan=21, amount=3000)


def keys(text: str) -> list[Key]:
    return [Key(k) for k in text]


def check_screen(screen: Screen) -> None:
    assert len(screen.lines) <= LCD_ROWS, screen
    for line in (screen.title, *screen.lines):
        assert len(line) <= LCD_COLS, (line, screen)
        assert PAN not in line and KEYED not in line and CODE not in line, screen
        assert not re.search("[0-9]{13}", line), screen


drive = make_drive(start, step, check_screen, CFG)


def login(number: str, role: str) -> list:
    return keys(number) + [Key("ENTER"), PinLength(4), Key("ENTER"),
                           LoginResult(True, number, role)]


def confirm(role: str = "supervisor", ok: bool = True, reason: str = "") -> list:
    return keys("07") + [Key("ENTER"), PinLength(4), Key("ENTER"),
                         LoginResult(ok, "07", role, reason, purpose="confirm")]


CASHIER, _ = drive(login("01", "cashier"))
SUPERVISOR, _ = drive(login("07", "supervisor"))
IDLE_01 = Screen("KPOS     op 01", ("Key in amount", "CONNECTING  queued 0"))


def menu_screen(title: str, *lines: str) -> Screen:
    return Screen(title, lines)


MAIN_1 = menu_screen("MENU 1/3", "1 Sale", "2 Void", "3 Refund", "4 Pre-auth")
MAIN_2 = menu_screen("MENU 2/3", "5 Balance", "6 Repayment", "7 QR pay", "8 Transactions")
MAIN_3 = menu_screen("MENU 3/3", "9 Manager")
PREAUTH_1 = menu_screen("PRE-AUTH 1/2", "1 Pre-auth", "2 Cancel", "3 Completion",
                        "4 Completion advice")
TXNS_1 = menu_screen("TRANSACTIONS 1/2", "1 Last txns", "2 Find by STAN", "3 Find by RRN",
                     "4 Reprint last")
TO_MANAGER = [Key("MENU"), Key("ENTER"), Key("ENTER"), Key("9")]
MANAGER_1 = menu_screen("MANAGER 1/2", "1 X report", "2 Settlement", "3 Echo test", "4 Sign-on")


# ---- start and login ----

def test_start_asks_for_the_operator():
    state, actions = start(CFG)
    assert state.phase == "LOGIN" and resting(state) and not busy(state)
    assert actions == [Show(Screen("LOGIN", ("Operator no.", "", "ENTER to confirm")))]


def test_start_without_login_is_idle_with_the_default_operator():
    state, actions = start(OPEN)
    assert (state.phase, state.operator, state.role) == ("IDLE", "01", "cashier")
    assert (state.sale.operator, state.sale.role) == ("01", "cashier")
    assert actions == [Show(IDLE_01)]


def test_login_step_by_step():
    state, per_step = drive(keys("019") + [Key("BACK"), Key("1"), Key("ENTER"), PinLength(1),
                                            PinLength(2), Key("ENTER"),
                                            LoginResult(True, "01", "cashier")])
    assert per_step[0] == [Beep("key"), Show(Screen("LOGIN", ("Operator no.", "0",
                                                              "ENTER to confirm")))]
    assert per_step[2] == [Beep("error"), Show(Screen("LOGIN", ("Operator no.", "01",
                                                                "ENTER to confirm")))]
    assert per_step[3][-1] == Show(Screen("LOGIN", ("Operator no.", "0", "ENTER to confirm")))
    assert per_step[5] == [Beep("key"), Show(Screen("LOGIN", ("Operator no. 01", "Password", "",
                                                              "ENTER to confirm"))),
                           StartPin(12), StartTimer("shell", 60, 1)]
    assert per_step[7][-1] == Show(Screen("LOGIN", ("Operator no. 01", "Password", "**",
                                                    "ENTER to confirm")))
    assert per_step[8] == [CancelTimers(), Show(Screen("LOGIN", ("Checking", "Please wait"))),
                           CheckLogin("01", "login")]
    assert per_step[9] == [CancelTimers(), Show(IDLE_01), Idle()]
    assert state.phase == "IDLE" and (state.operator, state.role) == ("01", "cashier")
    assert (state.sale.operator, state.sale.role) == ("01", "cashier")


@pytest.mark.parametrize("answer, note", [
    (LoginResult(False, reason="Wrong password"), "Wrong password"),
    (LoginResult(False, reason="Locked 14 min"), "Locked 14 min"),
    (LoginResult(False, reason="No such operator"), "No such operator"),
    (LoginResult(False), "Login failed"),
    (LoginResult(True, "01", "root"), "Unknown role"),
])
def test_failed_login_shows_the_reason_and_asks_again(answer, note):
    state, per_step = drive(keys("01") + [Key("ENTER"), PinLength(4), Key("ENTER"), answer])
    assert state.phase == "LOGIN" and state.operator == "" and state.login.stage == "number"
    assert per_step[-1] == [Beep("error"), Show(Screen("LOGIN", (note, "Operator no.", "",
                                                                 "ENTER to confirm")))]


def test_login_needs_two_digits_and_a_password():
    state, per_step = drive(keys("1") + [Key("ENTER")])
    assert per_step[-1] == [Beep("error")] and state.login.stage == "number"
    state, per_step = drive(keys("1") + [Key("ENTER"), Key("ENTER")], state)
    assert per_step[-1] == [Beep("error")] and state.login.stage == "password"


def test_login_cancel_and_timeout_wipe_the_password():
    state, _ = drive(keys("01") + [Key("ENTER"), PinLength(2)])
    after, actions = step(CFG, state, Key("CANCEL"))
    assert actions[:2] == [StopPin(), CancelTimers()] and after.login.stage == "number"
    after, actions = step(CFG, state, Timeout("shell", state.sale.token))
    assert actions[0] == StopPin()
    assert actions[-1] == Show(Screen("LOGIN", ("Timed out", "Operator no.", "",
                                                "ENTER to confirm")))
    assert step(CFG, state, Timeout("shell", state.sale.token - 1)) == (state, [])


def test_login_ignores_everything_else():
    state, _ = start(CFG)
    for event in (Key("MENU"), CardInserted(), TaskDone(True, "x"), LoginResult(True, "01",
                                                                                "admin")):
        after, actions = step(CFG, state, event)
        assert after.phase == "LOGIN" and after.operator == "" and actions == []


# ---- idle and menu ----

def test_digits_in_idle_start_a_quick_sale_and_its_end_returns_to_idle():
    state, per_step = drive(keys("125") + [Key("CANCEL")], CASHIER)
    assert per_step[0][0] == Beep("key") and shows(per_step)[0].title == "SALE"
    assert state.phase == "IDLE" and per_step[-1][-1] == Idle()
    state, _ = drive(keys("12"), CASHIER)
    assert state.phase == "CARD" and state.sale.phase == "AMOUNT"


def test_menu_pages_and_picks():
    state, per_step = drive([Key("MENU"), Key("ENTER"), Key("MENU"), Key("ENTER"), Key("ENTER"),
                             Key("BACK")], CASHIER)
    assert shows(per_step) == [MAIN_1, MAIN_2, MAIN_3, MAIN_1, MAIN_2, MAIN_1]
    token = CASHIER.sale.token
    assert per_step[0] == [Beep("key"), Show(MAIN_1), StartTimer("shell", 60, token + 1)]
    assert per_step[1][-1] == StartTimer("shell", 60, token + 2)  # each page restarts it
    state, per_step = drive([Key("BACK")], state)
    assert per_step[-1] == [Beep("error")] and state.page == 0
    state, per_step = drive(keys("4"), state)
    assert shows(per_step) == [PREAUTH_1] and state.menu == "preauth_menu"
    state, per_step = drive([Key("BACK"), Key("0")], state)
    assert shows(per_step) == [MAIN_1] and per_step[-1] == [Beep("error")]
    state, per_step = drive([Key("CANCEL")], state)
    assert state.phase == "IDLE" and per_step[-1] == [CancelTimers(), Show(IDLE_01), Idle()]


def test_menu_times_out_to_idle():
    state, _ = drive([Key("MENU")], CASHIER)
    state, actions = step(CFG, state, Timeout("shell", state.sale.token))
    assert state.phase == "IDLE" and actions[-1] == Idle()


def test_menu_sale_opens_the_sale_menu_and_its_amount_screen():
    state, per_step = drive([Key("MENU"), Key("1")], CASHIER)
    assert shows(per_step)[-1] == menu_screen("SALE", "1 Amount", "2 Basket", "3 Cash")
    state, per_step = drive([Key("1")], state)
    assert state.phase == "CARD" and state.sale.phase == "AMOUNT"
    assert per_step[-1] == [CancelTimers(), Beep("key"), Show(Screen("SALE", ("Amount", "CNY 0.00",
                                                                              "ENTER to confirm")))]


def sup(*lines: str) -> Screen:
    return Screen("SUPERVISOR", lines)


def test_supervisor_confirms_an_item_above_the_cashiers_role():
    state, per_step = drive([Key("MENU"), Key("2")], CASHIER)
    assert state.phase == "CONFIRM"
    assert shows(per_step)[-1] == sup("Void", "Supervisor no.", "", "ENTER to confirm")
    state, per_step = drive(confirm()[:-1], state)
    assert per_step[-1][-1] == CheckLogin("07", "confirm") and busy(state)
    state, per_step = drive(confirm()[-1:], state)
    assert state.phase == "FORM" and (state.operator, state.role) == ("01", "cashier")
    assert shows(per_step)[-1] == Screen("VOID", ("STAN", "", "ENTER to confirm"))


@pytest.mark.parametrize("answer, reason", [
    (confirm("cashier"), "Supervisor only"),
    (confirm(ok=False, reason="Wrong password"), "Wrong password"),
    (confirm(ok=False, reason="Locked 14 min"), "Locked 14 min"),
])
def test_refused_confirm_shows_why_and_returns_to_the_same_menu(answer, reason):
    state, _ = drive(TO_MANAGER, CASHIER)
    state, per_step = drive(keys("2") + answer, state)  # Settlement: supervisors only
    assert state.phase == "RESULT"
    assert shows(per_step)[-1] == Screen("Not allowed", (reason,), "error")
    assert not any(isinstance(a, RunTask) for a in flat(per_step))
    state, per_step = drive([Key("ENTER")], state)
    assert state.phase == "MENU" and shows(per_step) == [MANAGER_1] and state.role == "cashier"


def test_confirm_cancel_goes_back_to_the_menu_and_wipes_the_password():
    state, _ = drive([Key("MENU"), Key("3")] + keys("07") + [Key("ENTER")], CASHIER)
    state, actions = step(CFG, state, Key("CANCEL"))
    assert state.phase == "MENU" and actions[0] == StopPin() and Show(MAIN_1) in actions


def test_a_supervisor_needs_no_confirm():
    state, per_step = drive([Key("MENU"), Key("2")], SUPERVISOR)
    assert state.phase == "FORM" and not any(isinstance(a, CheckLogin) for a in flat(per_step))


# ---- void and completion void ----

VOID_SPEC = TxnSpec("void", 1250, OriginalRef(
    txn_id=3, kind="sale", stan=17, batch=1, rrn="000000000042", date="0514",
    auth_code="123456", amount=1250, masked_pan="622609******0014"))


def test_void_finds_confirms_and_begins_the_card_flow():
    state, per_step = drive([Key("MENU"), Key("2")] + keys("17") + [Key("ENTER")], SUPERVISOR)
    assert per_step[-1] == [Beep("key"), CancelTimers(), Show(Screen("Searching", ("Please wait",))),
                            FindTxn("stan", "17")]
    assert state.phase == "FINDING" and busy(state)
    state, per_step = drive([TxnFound(SALE_ROW)], state)
    assert shows(per_step) == [Screen("VOID", ("SALE 000017", "CNY 12.50", "622609******0014",
                                               "ENTER to void"))]
    state, per_step = drive([Key("ENTER")], state)
    assert per_step[-1] == [Beep("key"), CancelTimers(),
                            Show(Screen("VOID CNY 12.50", ("Insert or swipe card",))),
                            StartTimer("card", 60, state.sale.token)]
    assert state.phase == "CARD" and state.sale.spec == VOID_SPEC
    state, per_step = drive([CardInserted(), CardRead(CARD), RiskResult("ok")], state)
    assert per_step[-2] == [CheckRisk("void", 1250, ENTRY_CHIP)]
    assert per_step[-1][-1] == Authorise("void", 1250, VOID_SPEC)


@pytest.mark.parametrize("item, found, reason", [
    ("2", TxnFound(None, "Not found"), "Not found"),
    ("2", TxnFound(None), "Not found"),
    ("2", TxnFound(row(voided=True)), "Already voided"),
    ("2", TxnFound(row(kind="refund")), "Cannot void REFUND"),
    ("2", TxnFound(row(status="DECLINED")), "Cannot void: declined"),
    ("2", TxnFound(row(kind="preauth")), "Cannot void PRE-AUTH"),
])
def test_void_refusals_show_why_and_change_nothing(item, found, reason):
    state, per_step = drive([Key("MENU"), Key(item)] + keys("17") + [Key("ENTER"), found],
                            SUPERVISOR)
    assert state.phase == "RESULT"
    assert per_step[-1] == [Show(Screen("VOID", wrap(reason, 3), "error")), Beep("error"),
                            StartTimer("shell", 5, state.sale.token)]
    state, per_step = drive([Key("ENTER")], state)
    assert state.phase == "IDLE" and state.sale == replace(SUPERVISOR.sale, token=state.sale.token)


def test_void_of_a_completion_and_completion_void_of_a_sale():
    to_void = [Key("MENU"), Key("2")] + keys("21") + [Key("ENTER"), TxnFound(COMPLETION_ROW),
                                                      Key("ENTER")]
    state, _ = drive(to_void, SUPERVISOR)
    assert state.sale.spec.kind == "void" and state.sale.spec.amount == 3000
    to_cv = [Key("MENU"), Key("4"), Key("5")] + keys("17") + [Key("ENTER")]
    state, per_step = drive(to_cv + [TxnFound(SALE_ROW)], SUPERVISOR)
    assert shows(per_step)[-1] == Screen("COMPLETION VOID", ("Cannot void SALE",), "error")
    state, per_step = drive(to_cv + [TxnFound(COMPLETION_ROW), Key("ENTER")], SUPERVISOR)
    assert state.sale.spec.kind == "completion_void" and state.sale.spec.original.stan == 21


def test_void_ask_cancel_goes_idle():
    state, _ = drive([Key("MENU"), Key("2")] + keys("17") + [Key("ENTER"), TxnFound(SALE_ROW)],
                     SUPERVISOR)
    state, actions = step(CFG, state, Key("CANCEL"))
    assert state.phase == "IDLE" and actions[-1] == Idle() and state.sale.spec == TxnSpec()


@pytest.mark.parametrize("typed, note", [("", "1-6 digits"), ("1234567", None)])
def test_stan_field_checks_its_length(typed, note):
    state, per_step = drive([Key("MENU"), Key("2")] + keys(typed) + [Key("ENTER")], SUPERVISOR)
    if note:
        assert per_step[-1] == [Beep("error"), Show(Screen("VOID", ("STAN", "", note)))]
    else:  # the 7th digit was refused, the 6 went to the lookup
        assert per_step[-2] == [Beep("error"), Show(Screen("VOID", ("STAN", "123456",
                                                                    "ENTER to confirm")))]
        assert per_step[-1][-1] == FindTxn("stan", "123456")


# ---- refund ----

RRN = "000000000042"
TO_REFUND = [Key("MENU"), Key("3")] + keys(RRN) + [Key("ENTER")] + keys("0514") + [Key("ENTER")]


def test_refund_of_a_found_sale_is_limited_to_what_is_left():
    state, per_step = drive(TO_REFUND, SUPERVISOR)
    assert per_step[-1][-1] == FindTxn("rrn", RRN)
    state, per_step = drive([TxnFound(row(refunded=1000))] + keys("251"), state)
    assert shows(per_step)[0] == Screen("REFUND", ("Amount", "CNY 0.00", "ENTER to confirm"))
    assert per_step[-1] == [Beep("error"), Show(Screen("REFUND", ("Amount", "CNY 0.25",
                                                                  "Max CNY 2.50",
                                                                  "ENTER to confirm")))]
    state, per_step = drive(keys("0") + [Key("ENTER")], state)
    spec = state.sale.spec
    assert state.phase == "CARD" and spec.kind == "refund" and spec.amount == 250
    assert spec.original.txn_id == 3 and spec.original.rrn == RRN and spec.original.date == "0514"


def test_refund_not_in_this_journal_lets_the_host_decide():
    state, _ = drive(TO_REFUND + [TxnFound(None, "Not found")] + keys("999999")
                     + [Key("ENTER")], SUPERVISOR)
    assert state.sale.spec == TxnSpec("refund", 999999, OriginalRef(rrn=RRN, date="0514"))


@pytest.mark.parametrize("found, reason", [
    (row(refunded=1250), "Nothing left to refund"),
    (row(voided=True), "Already voided"),
    (row(kind="qr_sale"), "Cannot refund QR SALE"),
])
def test_refund_refusals(found, reason):
    state, per_step = drive(TO_REFUND + [TxnFound(found)], SUPERVISOR)
    assert shows(per_step)[-1] == Screen("REFUND", wrap(reason, 3), "error")


@pytest.mark.parametrize("date", ["1332", "0000", "0100", "051"])
def test_bad_original_dates_refused(date):
    state, per_step = drive([Key("MENU"), Key("3")] + keys(RRN) + [Key("ENTER")] + keys(date)
                            + [Key("ENTER")], SUPERVISOR)
    assert state.phase == "FORM" and per_step[-1][0] == Beep("error")
    assert shows(per_step)[-1].lines[-1] in ("Invalid date", "4 digits")


# ---- pre-auth family, balance, repayment ----

def test_preauth_amount_begins():
    state, per_step = drive([Key("MENU"), Key("4"), Key("1")] + keys("5000") + [Key("ENTER")],
                            CASHIER)
    assert state.sale.spec == TxnSpec("preauth", 5000)
    assert Show(Screen("PRE-AUTH CNY 50.00", ("Insert or swipe card",))) in per_step[-1]


@pytest.mark.parametrize("item, kind, advice", [("2", "preauth_cancel", False),
                                                ("3", "completion", False),
                                                ("4", "completion", True)])
def test_preauth_cancel_and_completions_carry_auth_code_and_date(item, kind, advice):
    state, per_step = drive([Key("MENU"), Key("4"), Key(item)] + keys("654321") + [Key("ENTER")]
                            + keys("0514") + [Key("ENTER")] + keys("5750") + [Key("ENTER")],
                            SUPERVISOR)
    original = OriginalRef(kind="preauth", date="0514", auth_code="654321")
    assert state.sale.spec == TxnSpec(kind, 5750, original, advice=advice)
    assert state.phase == "CARD" and state.sale.phase == "PRESENT_CARD"


def test_balance_begins_at_once():
    state, per_step = drive([Key("MENU"), Key("ENTER"), Key("5")], CASHIER)
    assert state.sale.spec == TxnSpec("balance")
    assert per_step[-1][:2] == [Beep("key"), CancelTimers()]
    assert Show(Screen("BALANCE", ("Insert or swipe card",))) in per_step[-1]


def test_repayment_keyed_card_masked_luhn_checked():
    state, per_step = drive([Key("MENU"), Key("6")] + keys(KEYED[:-1] + "2"), CASHIER)
    assert shows(per_step)[-1] == Screen("REPAYMENT", ("Card to pay", "************1112",
                                                       "or swipe the card", "ENTER to confirm"))
    assert KEYED[:-1] not in repr(state)
    state, per_step = drive([Key("ENTER")], state)
    assert shows(per_step)[-1].lines[-1] == "Invalid card no." and state.phase == "FORM"
    state, per_step = drive([Key("BACK"), Key("1"), Key("ENTER")] + keys("10000")
                            + [Key("ENTER")], state)
    spec = state.sale.spec
    assert spec.kind == "repayment" and spec.amount == 10000 and spec.target == keyed_card(KEYED)
    assert KEYED not in repr(spec) and KEYED not in repr(state)


def test_repayment_target_swiped():
    state, per_step = drive([Key("MENU"), Key("6"), CardSwiped(STRIPE, chip=False)] + keys("5")
                            + [Key("ENTER")], CASHIER)
    assert per_step[2][0] == Beep("ok") and state.sale.spec.target is STRIPE


# ---- QR ----

TO_QR = [Key("MENU"), Key("ENTER"), Key("7")]


def test_qr_amount_limited_by_the_wallet_limit():
    state, per_step = drive(TO_QR + keys("5000001"), CASHIER)
    assert state.amount == 500000
    assert shows(per_step)[-1] == Screen("QR SALE", ("Amount", "CNY 5000.00", "Max CNY 5000.00",
                                                     "ENTER to confirm"))


def test_qr_scan_pay_wait_print_result():
    state, per_step = drive(TO_QR + keys("1250") + [Key("ENTER")], CASHIER)
    assert shows(per_step)[-1] == Screen("QR SALE", ("CNY 12.50", "Scan payment code", "",
                                                     "ENTER to confirm"))
    state, per_step = drive([CodeScanned(CODE)], state)
    assert per_step[-1] == [Beep("key"), CancelTimers(),
                            Show(Screen("QR SALE", ("CNY 12.50", "Waiting for payment"))),
                            QrPay(1250, CODE)]
    assert state.phase == "QR_WAITING" and busy(state) and CODE not in repr(state)
    state, per_step = drive([QrProgress("Customer is confirming the payment"), Key("CANCEL")],
                            state)
    assert per_step == [[Show(Screen("QR SALE", ("CNY 12.50", "Customer is",
                                                 "confirming the", "payment")))], []]
    state, per_step = drive([AuthResult("approved", "00", txn_id=9), PrintDone(True)], state)
    assert per_step[0] == [Show(Screen("QR SALE APPROVED", ("CNY 12.50", "Printing..."), "ok")),
                           Beep("ok"), Print(9)]
    assert shows(per_step)[-1] == Screen("QR SALE APPROVED", ("CNY 12.50", "Take receipts"), "ok")
    state, per_step = drive([Key("ENTER")], state)
    assert state.phase == "IDLE" and per_step[-1][-1] == Idle()


@pytest.mark.parametrize("result, screen", [
    (AuthResult("declined", "51", "Insufficient funds"),
     Screen("DECLINED", ("Insufficient funds", "Code 51"), "error")),
    (AuthResult("no_response", message="Cancelled at timeout"),
     Screen("NOT PAID", ("Cancelled at timeout",), "error")),
])
def test_qr_unsuccessful(result, screen):
    state, per_step = drive(TO_QR + keys("1250") + [Key("ENTER"), CodeScanned(CODE), result],
                            CASHIER)
    assert state.phase == "RESULT" and shows(per_step)[-1] == screen
    assert not any(isinstance(a, Print) for a in flat(per_step))


def test_qr_keyed_code_masked_and_checked():
    state, per_step = drive(TO_QR + keys("1250") + [Key("ENTER")] + keys(CODE[:15])
                            + [Key("ENTER")], CASHIER)
    assert shows(per_step)[-1].lines[2:] == ("***********3456", "Invalid code")
    state, per_step = drive(keys(CODE[15:]) + [Key("ENTER")], state)
    assert per_step[-1][-1] == QrPay(1250, CODE)


# ---- lists, find, reprint ----

ROWS = tuple(row(txn_id=10 - n, stan=100 - n, amount=100 * n) for n in range(1, 7))
PAGE1 = TxnPage(ROWS[:4], 0, 6)
PAGE2 = TxnPage(ROWS[4:], 4, 6)
TO_LIST = [Key("MENU"), Key("ENTER"), Key("8"), Key("1")]


def test_last_txns_list_pages_and_detail_reprint():
    state, per_step = drive(TO_LIST, CASHIER)
    assert per_step[-1][-1] == ListTxns(0, 4) and state.phase == "LISTING"
    state, per_step = drive([PAGE1], state)
    assert shows(per_step) == [Screen("TXNS 1-4/6", ("000099 SALE     1.00", "000098 SALE     2.00",
                                                     "000097 SALE     3.00",
                                                     "000096 SALE     4.00"))]
    state, per_step = drive([Key("ENTER"), PAGE2, Key("ENTER")], state)
    assert per_step[0][-1] == ListTxns(4, 4) and per_step[-1] == [Beep("error")]
    assert shows(per_step)[-1].title == "TXNS 5-6/6"
    state, per_step = drive([Key("3"), Key("2")], state)
    assert per_step[0] == [Beep("error")]
    assert shows(per_step)[-1] == Screen("SALE", ("000094 05-14 10:22", "CNY 6.00",
                                                  "622609******0014", "APPROVED"))
    state, per_step = drive([Key("CANCEL"), Key("BACK")], state)
    assert shows(per_step)[0].title == "TXNS 5-6/6" and per_step[-1][-1] == ListTxns(0, 4)
    state, per_step = drive([PAGE1, Key("1"), Key("ENTER")], state)
    assert per_step[-1][-1] == Reprint(9) and state.phase == "TASK"
    state, per_step = drive([TaskDone(True, "REPRINT", ("Receipt printed",))], state)
    assert shows(per_step)[-1] == Screen("REPRINT", ("Receipt printed",), "ok")
    state, per_step = drive([Timeout("shell", state.sale.token)], state)
    assert state.phase == "IDLE"


def test_empty_journal_list():
    state, per_step = drive(TO_LIST + [TxnPage((), 0, 0), Key("ENTER"), Key("1")], CASHIER)
    assert shows(per_step)[-1] == Screen("TRANSACTIONS", ("No transactions",))
    assert per_step[-2:] == [[Beep("error")], [Beep("error")]]


def test_list_lines_fit_big_amounts_and_long_kinds():
    page = TxnPage((row(kind="completion_void", amount=99_999_999, stan=123456, voided=True),), 0, 1)
    state, per_step = drive(TO_LIST + [page, Key("1")], CASHIER)
    assert shows(per_step)[-2].lines == ("123456 COM 999999.99",)
    assert shows(per_step)[-1].lines[-1] == "VOIDED"


def test_find_by_stan_shows_the_detail_and_reprints():
    state, per_step = drive([Key("MENU"), Key("ENTER"), Key("8"), Key("2")] + keys("17")
                            + [Key("ENTER"), TxnFound(row(refunded=500)), Key("ENTER")], CASHIER)
    assert shows(per_step)[-2].lines[-1] == "REFUNDED 5.00"
    assert per_step[-1][-1] == Reprint(3)


def test_find_by_rrn_not_found():
    state, per_step = drive([Key("MENU"), Key("ENTER"), Key("8"), Key("3")] + keys(RRN)
                            + [Key("ENTER"), TxnFound(None, "Not found")], CASHIER)
    assert per_step[-2][-1] == FindTxn("rrn", RRN)
    assert shows(per_step)[-1] == Screen("FIND", ("Not found",), "error")


def test_reprint_last_and_by_stan():
    state, per_step = drive([Key("MENU"), Key("ENTER"), Key("8"), Key("4")], CASHIER)
    assert per_step[-1][-1] == Reprint(None)
    state, per_step = drive([Key("MENU"), Key("ENTER"), Key("8"), Key("ENTER"), Key("5")]
                            + keys("17") + [Key("ENTER"), TxnFound(SALE_ROW)], CASHIER)
    assert per_step[-1][-1] == Reprint(3) and state.phase == "TASK"


# ---- manager tasks ----

@pytest.mark.parametrize("item, task", [("1", "x_report"), ("3", "echo"), ("4", "signon")])
def test_manager_tasks_run_and_show_their_result(item, task):
    state, per_step = drive(TO_MANAGER + [Key(item)], CASHIER)
    assert per_step[-1][-1] == RunTask(task) and state.phase == "TASK" and busy(state)
    long = ("Totals", "Debit 3 CNY 45.00 and a lot more", "Credit 1", "Net", "fifth line")
    state, per_step = drive([TaskDone(True, "A title much too long for the LCD", long)], state)
    screen = shows(per_step)[-1]
    assert screen.tone == "ok" and len(screen.lines) == 4 and screen.title.endswith("...")
    state, per_step = drive([Key("CANCEL")], state)
    assert state.phase == "IDLE"


def test_settlement_asks_first_and_a_failure_is_an_error_result():
    state, per_step = drive(TO_MANAGER + [Key("2")], SUPERVISOR)
    assert shows(per_step)[-1] == Screen("SETTLEMENT", ("Settle batch?", "ENTER to settle"))
    state, per_step = drive([Key("ENTER"), TaskDone(False, "SETTLEMENT", ("Host unreachable",))],
                            state)
    assert per_step[0][-1] == RunTask("settle")
    assert per_step[1][:2] == [Show(Screen("SETTLEMENT", ("Host unreachable",), "error")),
                               Beep("error")]


def test_sign_off_logs_out_and_asks_for_login():
    state, per_step = drive(TO_MANAGER + [Key("ENTER"), Key("5")], CASHIER)
    assert Logout() in per_step[-1] and state.phase == "LOGIN"
    assert state.operator == "" and state.sale.operator == "" and state.role == ""
    assert shows(per_step)[-1] == Screen("LOGIN", ("Operator no.", "", "ENTER to confirm"))


# ---- status, shutdown, timers ----

def test_link_status_in_the_menu_is_kept_but_not_drawn():
    state, _ = drive([Key("MENU")], CASHIER)
    state, actions = step(CFG, state, LinkStatus(True, 2))
    assert actions == [] and state.sale.link == LinkStatus(True, 2)
    state, actions = step(CFG, state, ReaderStatus("jammed"))
    assert actions == [Beep("error")]
    state, actions = step(CFG, state, Key("CANCEL"))
    assert Show(Screen("KPOS     op 01", ("Key in amount", "ONLINE  queued 2",
                                          "Reader: jammed"))) in actions


def test_link_status_in_idle_redraws():
    state, actions = step(CFG, CASHIER, LinkStatus(False, 1))
    assert actions == [Show(Screen("KPOS     op 01", ("Key in amount", "OFFLINE  queued 1")))]


@pytest.mark.parametrize("prefix, answer", [
    ([Key("MENU"), Key("ENTER"), Key("8"), Key("2")] + keys("17") + [Key("ENTER")],
     TxnFound(SALE_ROW)),
    (TO_LIST, PAGE1),
    (TO_MANAGER + [Key("1")], TaskDone(True, "X REPORT")),
    ([Key("MENU"), Key("3")] + keys("07") + [Key("ENTER"), PinLength(4), Key("ENTER")],
     LoginResult(True, "07", "supervisor", purpose="confirm")),
])
def test_shutdown_while_busy_waits_for_the_answer(prefix, answer):
    state, _ = drive(prefix, CASHIER)
    assert busy(state) and not resting(state)
    state, actions = step(CFG, state, Shutdown())
    assert actions == [] and state.stopping
    state, actions = step(CFG, state, answer)
    assert state.phase == "IDLE" and resting(state) and actions[-1] == Idle()
    assert not any(isinstance(a, (RunTask, Reprint, FindTxn)) for a in actions)


def test_shutdown_during_a_qr_payment_still_prints_the_receipt():
    state, _ = drive(TO_QR + keys("1250") + [Key("ENTER"), CodeScanned(CODE), Shutdown()], CASHIER)
    state, per_step = drive([AuthResult("approved", txn_id=4), PrintDone(True)], state)
    assert per_step[0][-1] == Print(4) and state.phase == "IDLE" and per_step[1][-1] == Idle()


@pytest.mark.parametrize("prefix", [[], [Key("MENU")], [Key("MENU"), Key("2")],
                                    TO_LIST + [PAGE1], TO_LIST + [PAGE1, Key("1")]])
def test_shutdown_in_interactive_phases_rests_at_once(prefix):
    state, _ = drive(prefix, CASHIER)
    state, actions = step(CFG, state, Shutdown())
    assert state.phase == "IDLE" and actions[-1] == Idle()


def test_shutdown_at_login_wipes_the_password():
    state, _ = drive(keys("01") + [Key("ENTER"), PinLength(3)])
    state, actions = step(CFG, state, Shutdown())
    assert actions[0] == StopPin() and actions[-1] == Idle() and state.phase == "LOGIN"


def test_shutdown_during_a_card_transaction_is_the_card_flows():
    state, _ = drive(keys("12") + [Key("ENTER"), CardInserted()], CASHIER)
    assert state.phase == "CARD" and busy(state)
    state, actions = step(CFG, state, Shutdown())
    assert state.sale.stopping and actions == []
    state, actions = step(CFG, state, CardRead(CARD))
    assert state.phase == "IDLE" and actions[-1] == Idle() and state.operator == "01"


@pytest.mark.parametrize("prefix", [[Key("MENU"), Key("2")], [Key("MENU"), Key("3")] + keys("1"),
                                    TO_QR + keys("1250") + [Key("ENTER")]])
def test_forms_time_out_and_stale_timers_are_ignored(prefix):
    state, _ = drive(prefix, SUPERVISOR)
    assert state.phase == "FORM"
    for stale in (Timeout("shell", state.sale.token - 1), Timeout("card", state.sale.token)):
        assert step(CFG, state, stale) == (state, [])
    state, actions = step(CFG, state, Timeout("shell", state.sale.token))
    assert state.phase == "IDLE" and actions[-1] == Idle()


def test_cards_inserted_in_the_menu_are_tracked_and_read_at_begin():
    state, _ = drive([Key("MENU"), CardInserted(), Key("ENTER"), Key("5")], CASHIER)
    assert state.phase == "CARD" and state.sale.phase == "READING"


def test_busy_phases():
    assert BUSY_PHASES <= set(PHASES)
    assert not busy(CASHIER) and resting(CASHIER)


def test_config_checks():
    with pytest.raises(ValueError, match="wallet_limit"):
        ShellConfig(SALE_CFG, wallet_limit=0)
    with pytest.raises(ValueError, match="default_role"):
        ShellConfig(SALE_CFG, wallet_limit=1, default_role="boss")


# ---- the checkout: basket, tenders, cash, training, no sale ----

TO_BASKET = [Key("MENU"), Key("1"), Key("2")]
TEA_LINE = BasketLine("2", "Green tea 500ml", 3, 350, 1050)
TEA3 = TO_BASKET + keys("2") + [Key("ENTER"), Key("MENU"), Key("1")] + keys("3") + [Key("ENTER")]
TO_TENDER = TEA3 + [Key("MENU"), Key("5"), BasketSaved(7)]
TENDER = Screen("PAY", ("CNY 10.50", "1 Card  2 QR", "3 Cash  4 Cash+card"))
DECLINE = [CardInserted(), CardRead(CARD), RiskResult("ok"), PinLength(4), Key("ENTER"),
           AuthResult("declined", "51", "Insufficient funds"), Key("ENTER"), CardRemoved()]
EAN_UNKNOWN = "96385074"  # a good EAN-8 that is not in the catalog


def basket(title: str, *lines: str, tone: str = "info") -> Screen:
    return Screen(title, lines, tone)


def test_basket_by_product_code_and_unknown_codes_refused():
    state, per_step = drive(TO_BASKET, CASHIER)
    empty = basket("BASKET", "No items", "Total CNY 0.00", "Key code or scan")
    assert per_step[-1] == [Beep("key"), CancelTimers(), Show(empty)]
    assert state.phase == "BASKET" and not state.timer  # a basket waits for the cashier
    state, per_step = drive(keys("2") + [Key("ENTER")], state)
    assert per_step[0] == [Beep("key"), Show(basket("BASKET", "No items", "Total CNY 0.00",
                                                    "Code 2"))]
    assert per_step[1] == [Beep("ok"), Show(basket("BASKET 1 item", "1 x Green tea 500ml",
                                                   "Total CNY 3.50", "Key code or scan"))]
    before = state.cart
    state, per_step = drive(keys("99") + [Key("ENTER")], state)
    assert per_step[-1] == [Show(basket("BASKET 1 item", "1 x Green tea 500ml", "Total CNY 3.50",
                                        "Unknown product", tone="error")), Beep("error")]
    assert state.cart == before
    state, per_step = drive([Key("ENTER")], state)  # nothing keyed
    assert per_step == [[Beep("error")]] and state.cart == before


@pytest.mark.parametrize("code, reason", [
    ("6920152400013", "Bad check digit"), (EAN_UNKNOWN, "Unknown product"),
])
def test_scanned_barcodes_add_or_are_refused_with_their_reason(code, reason):
    state, per_step = drive([BarcodeScanned("6920152400012")], CASHIER)  # at idle
    assert state.phase == "BASKET" and state.cart.lines == (replace(TEA_LINE, qty=1, amount=350),)
    assert per_step[-1] == [Beep("ok"), Show(basket("BASKET 1 item", "1 x Green tea 500ml",
                                                    "Total CNY 3.50", "Key code or scan"))]
    state, per_step = drive([BarcodeScanned("4006381333931"), BarcodeScanned(code)], state)
    assert shows(per_step)[-1] == basket("BASKET 2 items", "1 x Coffee beans ...",
                                         "Total CNY 71.50", reason, tone="error")
    assert per_step[-1][-1] == Beep("error") and state.cart.subtotal == 7150


def test_a_bad_barcode_at_idle_opens_an_empty_basket_saying_why():
    state, per_step = drive([BarcodeScanned("6920152400013")], CASHIER)
    assert state.phase == "BASKET" and state.cart.lines == ()
    assert shows(per_step)[-1].lines[-1] == "Bad check digit"


def test_without_a_catalog_there_is_no_basket():
    bare = replace(CFG, catalog=None)
    state, actions = step(bare, CASHIER, BarcodeScanned("6920152400012"))
    assert state == CASHIER and actions == [Beep("error")]
    state, per_step = drive(TO_BASKET, CASHIER, bare)
    assert shows(per_step)[-1] == Screen("BASKET", ("No product catalog",), "error")
    state, per_step = drive([Key("ENTER")], state, bare)
    assert state.phase == "IDLE"


def test_quantity_of_the_last_line():
    state, per_step = drive(TEA3[:-2], CASHIER)
    assert shows(per_step)[-2] == Screen("BASKET OPTIONS", ("1 Quantity 2 Remove",
                                                            "3 Discount amount",
                                                            "4 Discount percent", "5 Pay"))
    assert shows(per_step)[-1] == Screen("BASKET", ("Green tea 500ml", "Quantity", "",
                                                    "ENTER to confirm"))
    state, per_step = drive(keys("3") + [Key("ENTER")], state)
    assert shows(per_step)[-1] == basket("BASKET 3 items", "3 x Green tea 500ml",
                                         "Total CNY 10.50", "Key code or scan")
    assert state.cart.lines == (TEA_LINE,)
    state, per_step = drive([Key("MENU"), Key("1"), Key("ENTER")], state)
    assert shows(per_step)[-1].lines[-1] == "Quantity 1-999" and per_step[-1][0] == Beep("error")
    state, per_step = drive(keys("1000"), state)
    assert per_step[-1] == [Beep("error"), Show(Screen("BASKET", ("Green tea 500ml", "Quantity",
                                                                  "100", "Max 999"), "error"))]
    state, per_step = drive([Key("CANCEL")], state)
    assert state.phase == "BASKET" and state.cart.lines == (TEA_LINE,)


def test_remove_a_line_by_its_number():
    state, _ = drive(TEA3 + keys("1") + [Key("ENTER")], CASHIER)
    state, per_step = drive([Key("MENU"), Key("2")] + keys("3"), state)
    assert shows(per_step)[-2] == Screen("BASKET", ("Lines 1-2", "Remove line no.", "",
                                                    "ENTER to confirm"))
    assert shows(per_step)[-1].lines[-1] == "Max 2"
    state, per_step = drive(keys("1") + [Key("ENTER")], state)
    assert state.cart.lines == (BasketLine("1", "Mineral water 550ml", 1, 200, 200),)
    assert shows(per_step)[-1].title == "BASKET 1 item"


def test_options_of_an_empty_basket_are_refused():
    state, per_step = drive(TO_BASKET + [Key("MENU"), Key("5")], CASHIER)
    assert state.phase == "BASKET" and shows(per_step)[-1].lines[-1] == "Basket is empty"
    assert not any(isinstance(a, SaveBasket) for a in flat(per_step))
    state, per_step = drive([Key("MENU"), Key("9"), Key("BACK")], state)
    assert per_step[1] == [Beep("error")] and state.phase == "BASKET"


def test_a_discount_within_the_limits_needs_nobody():
    state, per_step = drive(TEA3 + [Key("MENU"), Key("3")], CASHIER)
    assert shows(per_step)[-1] == Screen("BASKET", ("Subtotal CNY 10.50", "Discount amount",
                                                    "CNY 0.00", "ENTER to confirm"))
    state, per_step = drive(keys("105") + [Key("ENTER")], state)
    assert shows(per_step)[-1] == basket("BASKET 3 items", "3 x Green tea 500ml",
                                         "Discount -1.05", "Total CNY 9.45", "Key code or scan")
    assert state.cart.discount == 105 and state.phase == "BASKET"
    state, _ = drive([Key("MENU"), Key("4")] + keys("10") + [Key("ENTER")], state)
    assert state.cart.discount == 105 and state.cart.percent == 10


def test_a_discount_amount_is_at_most_the_subtotal():
    state, per_step = drive(TEA3 + [Key("MENU"), Key("3")] + keys("10501"), CASHIER)
    assert shows(per_step)[-1].lines[-2:] == ("CNY 10.50", "Max CNY 10.50")


TO_OVER = TEA3 + [Key("MENU"), Key("4")] + keys("20") + [Key("ENTER")]  # 20% = 2.10 > 10%


def test_a_discount_over_the_limits_confirmed_by_a_supervisor():
    state, per_step = drive(TO_OVER, CASHIER)
    assert state.phase == "CONFIRM" and state.cart.discount == 0
    assert shows(per_step)[-1] == sup("Discount CNY 2.10", "Supervisor no.", "", "ENTER to confirm")
    state, per_step = drive(confirm(), state)
    assert state.phase == "BASKET" and state.cart.discount == 210 and state.role == "cashier"
    assert shows(per_step)[-1].lines[1:3] == ("Discount -2.10", "Total CNY 8.40")


@pytest.mark.parametrize("answer, reason", [
    (confirm("cashier"), "Supervisor only"),
    (confirm(ok=False, reason="Wrong password"), "Wrong password"),
])
def test_a_refused_discount_leaves_the_basket_unchanged(answer, reason):
    state, _ = drive(TO_OVER, CASHIER)
    before = state.cart
    state, per_step = drive(answer, state)
    assert shows(per_step)[-1] == Screen("Not allowed", (reason,), "error")
    state, per_step = drive([Key("ENTER")], state)
    assert state.phase == "BASKET" and state.cart == before and state.cart.discount == 0
    assert shows(per_step)[-1].lines[-2] == "Total CNY 10.50"


def test_discount_confirm_cancelled_or_timed_out_goes_back_to_the_basket():
    state, _ = drive(TO_OVER + keys("07") + [Key("ENTER")], CASHIER)
    after, actions = step(CFG, state, Key("CANCEL"))
    assert after.phase == "BASKET" and after.cart.discount == 0 and actions[0] == StopPin()
    after, actions = step(CFG, state, Timeout("shell", state.sale.token))
    assert after.phase == "BASKET" and after.cart.discount == 0 and actions[0] == StopPin()


def test_a_supervisor_gives_any_discount():
    state, _ = drive(TO_OVER, SUPERVISOR)
    assert state.phase == "BASKET" and state.cart.discount == 210


def test_cancel_asks_before_clearing_the_basket():
    state, per_step = drive(TEA3 + [Key("CANCEL")], CASHIER)
    assert shows(per_step)[-1] == Screen("BASKET", ("Clear basket?", "ENTER to clear",
                                                    "CANCEL to keep"))
    kept, _ = drive([Key("CANCEL")], state)
    assert kept.phase == "BASKET" and kept.cart.lines == (TEA_LINE,)
    cleared, per_step = drive([Key("ENTER")], state)
    assert cleared.phase == "IDLE" and cleared.cart is None and per_step[-1][-1] == Idle()
    state, per_step = drive(TO_BASKET + [Key("CANCEL")], CASHIER)  # an empty one: at once
    assert state.phase == "IDLE" and per_step[-1][-1] == Idle()


def test_basket_screens_time_out_back_to_the_basket():
    for prefix in (TEA3[:-2], TEA3 + [Key("MENU")], TEA3 + [Key("CANCEL")]):
        state, _ = drive(prefix, CASHIER)
        state, actions = step(CFG, state, Timeout("shell", state.sale.token))
        assert state.phase == "BASKET" and state.cart.lines and CancelTimers() not in actions[1:]


def test_pay_keeps_the_basket_then_offers_the_tenders():
    state, per_step = drive(TEA3 + [Key("MENU"), Key("5")], CASHIER)
    assert per_step[-1][-1] == SaveBasket((TEA_LINE,), 1050, 0, 1050)
    assert state.phase == "SAVING" and busy(state)
    state, per_step = drive([BasketSaved(7)], state)
    assert per_step[-1] == [Show(TENDER)] and state.phase == "TENDER" and not state.timer
    assert (state.basket_id, state.due) == (7, 1050)


def test_a_basket_that_cannot_be_kept_stays_on_screen():
    state, per_step = drive(TEA3 + [Key("MENU"), Key("5"), BasketSaved(None, "Journal error")],
                            CASHIER)
    assert state.phase == "BASKET" and state.cart.lines == (TEA_LINE,)
    assert shows(per_step)[-1].lines[-1] == "Journal error"


def test_a_basket_over_the_max_amount_or_free_is_not_paid():
    small = replace(CFG, sale=replace(SALE_CFG, max_amount=1000))
    state, per_step = drive(TEA3 + [Key("MENU"), Key("5")], CASHIER, small)
    assert shows(per_step)[-1].lines[-1] == "Max CNY 10.00"
    state, per_step = drive(TEA3 + [Key("MENU"), Key("4")] + keys("100")
                            + [Key("ENTER"), Key("MENU"), Key("5")], SUPERVISOR)
    assert shows(per_step)[-1].lines[-1] == "Nothing to pay"


def test_card_tender_pays_the_whole_basket():
    state, per_step = drive(TO_TENDER + [Key("1")], CASHIER)
    assert state.phase == "CARD" and state.sale.spec == TxnSpec("sale", 1050, basket_id=7)
    assert per_step[-1][:2] == [Beep("key"), Show(Screen("SALE CNY 10.50",
                                                          ("Insert or swipe card",)))]
    state, per_step = drive(DECLINE[:5] + [AuthResult("approved", "00", txn_id=8),
                                           PrintDone(True), Key("ENTER"), CardRemoved()], state)
    assert per_step[4][-1] == Authorise("sale", 1050, TxnSpec("sale", 1050, basket_id=7))
    assert state.phase == "IDLE" and state.cart is None and per_step[-1][-1] == Idle()


def test_a_declined_card_comes_back_to_the_tenders():
    state, per_step = drive(TO_TENDER + [Key("1")] + DECLINE, CASHIER)
    assert state.phase == "TENDER" and state.due == 1050 and state.basket_id == 7
    assert per_step[-1] == [CancelTimers(), Show(Screen("PAY", (*TENDER.lines, "Card not paid"),
                                                        "error"))]
    assert Idle() not in per_step[-1] and state.sale.phase == "IDLE"
    state, per_step = drive([Key("CANCEL")], state)  # the customer walks away
    assert state.phase == "IDLE" and per_step[-1][-1] == Idle()


def test_qr_tender_with_the_basket_id_and_back_to_the_tenders_when_declined():
    state, per_step = drive(TO_TENDER + [Key("2")], CASHIER)
    assert shows(per_step)[-1] == Screen("QR SALE", ("CNY 10.50", "Scan payment code", "",
                                                     "ENTER to confirm"))
    state, per_step = drive([CodeScanned(CODE)], state)
    assert per_step[-1][-1] == QrPay(1250 - 200, CODE, 7)
    declined, per_step = drive([AuthResult("declined", "51", "Insufficient funds"), Key("ENTER")],
                               state)
    assert declined.phase == "TENDER" and shows(per_step)[-1] == TENDER
    paid, per_step = drive([AuthResult("approved", txn_id=9), PrintDone(True), Key("ENTER")], state)
    assert paid.phase == "IDLE" and paid.cart is None and per_step[-1][-1] == Idle()


def test_qr_tender_over_the_wallet_limit_and_cancelled():
    state, per_step = drive(TO_TENDER + [Key("2")], CASHIER, replace(CFG, wallet_limit=1000))
    assert per_step[-1] == [Beep("error"), Show(Screen("PAY", (*TENDER.lines, "Over QR limit"),
                                                       "error"))]
    state, per_step = drive(TO_TENDER + [Key("2"), Key("CANCEL")], CASHIER)
    assert state.phase == "TENDER" and shows(per_step)[-1] == TENDER


def cash_paid(paid: str, change: str, *tail: str) -> Screen:
    return Screen("CASH PAID", (f"Paid CNY {paid}", f"Change CNY {change}", *tail), "ok")


def test_cash_tender_with_change():
    state, per_step = drive(TO_TENDER + [Key("3")], CASHIER)
    assert shows(per_step)[-1] == Screen("CASH", ("Due CNY 10.50", "Tendered", "CNY 0.00",
                                                  "ENTER to confirm"))
    state, per_step = drive(keys("1000") + [Key("ENTER")], state)
    assert per_step[-1] == [Beep("error"), Show(Screen("CASH", ("Due CNY 10.50", "Tendered",
                                                                "CNY 10.00", "Not enough"),
                                                       "error"))]
    state, per_step = drive([Key("CLEAR")] + keys("2000") + [Key("ENTER")], state)
    assert per_step[-1][-1] == PayCash(1050, 2000, 7) and busy(state)
    state, per_step = drive([CashDone(11, 950)], state)
    assert per_step[-1] == [Show(cash_paid("10.50", "9.50", "Printing...")), Beep("ok"), Print(11)]
    state, per_step = drive([PrintDone(False, "paper out")], state)
    assert shows(per_step)[-1] == cash_paid("10.50", "9.50", "Printer: paper out", "Receipt queued")
    state, per_step = drive([Key("ENTER")], state)
    assert state.phase == "IDLE" and per_step[-1][-1] == Idle()


def test_cash_not_recorded_says_why_and_goes_back_to_the_tenders():
    state, per_step = drive(TO_TENDER + [Key("3")] + keys("1050")
                            + [Key("ENTER"), CashDone(None, 0, "Disk full")], CASHIER)
    assert shows(per_step)[-1] == Screen("CASH", ("Not recorded", "Disk full"), "error")
    assert not any(isinstance(a, Print) for a in flat(per_step))
    state, _ = drive([Key("ENTER")], state)
    assert state.phase == "TENDER" and state.due == 1050


def test_split_tender_cash_then_card_declined_then_cash_for_the_rest():
    state, per_step = drive(TO_TENDER + [Key("4"), Key("ENTER")], CASHIER)
    assert shows(per_step)[-2] == Screen("CASH", ("Due CNY 10.50", "Cash part", "CNY 0.00",
                                                  "ENTER to confirm"))
    assert shows(per_step)[-1].lines[-1] == "Key the cash part"
    state, per_step = drive(keys("1050"), state)  # the cash part leaves something for the card
    assert shows(per_step)[-1].lines[-2:] == ("CNY 1.05", "Max CNY 10.49")
    state, per_step = drive([Key("CLEAR")] + keys("500") + [Key("ENTER")] + keys("500")
                            + [Key("ENTER")], state)
    assert shows(per_step)[-2] == Screen("CASH", ("Due CNY 5.00", "Tendered", "CNY 5.00",
                                                  "ENTER to confirm"))
    assert per_step[-1][-1] == PayCash(500, 500, 7)
    state, per_step = drive([CashDone(12, 0), PrintDone(True)], state)
    assert per_step[0][-1] == Print(12)
    assert state.phase == "CARD" and state.sale.spec == TxnSpec("sale", 550, basket_id=7)
    state, per_step = drive(DECLINE, state)
    assert state.phase == "TENDER" and state.due == 550
    assert shows(per_step)[-1] == Screen("STILL DUE", ("CNY 5.50", "1 Card  2 QR",
                                                       "3 Cash  4 Cash+card", "Card not paid"),
                                         "error")
    state, per_step = drive([Key("3")] + keys("1000") + [Key("ENTER")], state)
    assert per_step[-1][-1] == PayCash(550, 1000, 7)
    state, per_step = drive([CashDone(13, 450), PrintDone(True)], state)
    assert shows(per_step)[-1] == cash_paid("5.50", "4.50", "Take receipt")


def test_split_tender_with_the_card_approved_ends_at_idle():
    state, _ = drive(TO_TENDER + [Key("4")] + keys("50") + [Key("ENTER")] + keys("100")
                     + [Key("ENTER"), CashDone(12, 50), PrintDone(True)], CASHIER)
    assert state.sale.spec == TxnSpec("sale", 1000, basket_id=7)
    state, per_step = drive(DECLINE[:5] + [AuthResult("approved", txn_id=14), PrintDone(True),
                                           Key("ENTER"), CardRemoved()], state)
    assert state.phase == "IDLE" and per_step[-1][-1] == Idle()


def test_cash_sale_from_the_sale_menu():
    state, per_step = drive([Key("MENU"), Key("1"), Key("3")], CASHIER)
    assert shows(per_step)[-1] == Screen("CASH", ("Amount", "CNY 0.00", "ENTER to confirm"))
    state, per_step = drive(keys("1234") + [Key("ENTER")], state)
    assert shows(per_step)[-1] == Screen("CASH", ("Due CNY 12.34", "Tendered", "CNY 0.00",
                                                  "ENTER to confirm"))
    state, per_step = drive(keys("5000") + [Key("ENTER"), CashDone(4, 3766), PrintDone(True)],
                            state)
    assert per_step[4][-1] == PayCash(1234, 5000, None)
    assert shows(per_step)[-1] == cash_paid("12.34", "37.66", "Take receipt")
    cancelled, per_step = drive([Key("MENU"), Key("1"), Key("3")] + keys("12")
                                + [Key("ENTER"), Key("CANCEL")], CASHIER)
    assert cancelled.phase == "IDLE" and per_step[-1][-1] == Idle()


def test_shutdown_while_the_basket_is_kept_or_the_cash_paid():
    state, _ = drive(TEA3 + [Key("MENU"), Key("5"), Shutdown()], CASHIER)
    assert state.stopping
    state, actions = step(CFG, state, BasketSaved(7))
    assert state.phase == "IDLE" and resting(state) and actions[-1] == Idle()
    state, _ = drive(TO_TENDER + [Key("4")] + keys("50") + [Key("ENTER")] + keys("50")
                     + [Key("ENTER"), Shutdown()], CASHIER)
    state, per_step = drive([CashDone(3, 0), PrintDone(True)], state)
    assert per_step[0][-1] == Print(3)  # the receipt of the cash taken still prints
    assert state.phase == "IDLE" and per_step[-1][-1] == Idle()  # and no card is asked for


def test_shutdown_at_the_tenders_rests_at_once():
    state, _ = drive(TO_TENDER, CASHIER)
    state, actions = step(CFG, state, Shutdown())
    assert state.phase == "IDLE" and actions[-1] == Idle()


def test_a_declined_card_part_during_shutdown_goes_to_rest():
    state, _ = drive(TO_TENDER + [Key("1")] + DECLINE[:5] + [Shutdown()], CASHIER)
    state, actions = step(CFG, state, AuthResult("declined", "05"))
    assert state.phase == "IDLE" and actions[-1] == Idle()


MANAGER_2 = menu_screen("MANAGER 2/2", "5 Sign off", "6 Terminal info", "7 Training mode",
                        "8 No sale")
TRAINING_IDLE = Screen("TRAINING  op 01", ("Key in amount", "CONNECTING  queued 0"))


def test_training_mode_needs_a_supervisor_and_shows_on_the_idle_screen():
    state, per_step = drive(TO_MANAGER + [Key("ENTER"), Key("7")], CASHIER)
    assert shows(per_step)[-2] == MANAGER_2 and state.phase == "CONFIRM"
    state, per_step = drive(confirm(), state)
    assert per_step[-1][-1] == SetTraining(True) and busy(state)
    state, per_step = drive([TrainingSet(True)], state)
    assert per_step[-1] == [Beep("ok"), CancelTimers(), Show(TRAINING_IDLE), Idle()]
    state, per_step = drive(keys("1") + [Key("CANCEL")], state)  # a sale keeps it
    assert shows(per_step)[-1] == TRAINING_IDLE and state.sale.training
    state, per_step = drive(TO_MANAGER + [Key("ENTER"), Key("7")] + confirm(), state)
    assert per_step[-1][-1] == SetTraining(False)
    state, per_step = drive([TrainingSet(False)], state)
    assert shows(per_step)[-1] == IDLE_01 and not state.sale.training


def test_training_switch_refused_shows_why():
    state, per_step = drive(TO_MANAGER + [Key("ENTER"), Key("7"), TrainingSet(False, "Batch open")],
                            SUPERVISOR)
    assert shows(per_step)[-1] == Screen("TRAINING MODE", ("Batch open", "Training OFF"), "error")
    assert not state.sale.training
    state, per_step = drive([Key("ENTER")], state)
    assert shows(per_step)[-1].title == "KPOS     op 07"


def test_no_sale_opens_the_drawer_for_a_supervisor():
    state, per_step = drive(TO_MANAGER + [Key("ENTER"), Key("8")], CASHIER)
    assert state.phase == "CONFIRM" and OpenDrawer() not in flat(per_step)
    state, per_step = drive(confirm(), state)
    assert OpenDrawer() in per_step[-1]
    assert shows(per_step)[-1] == Screen("NO SALE", ("Drawer open",), "ok")
    state, per_step = drive(confirm("cashier"), drive(TO_MANAGER + [Key("ENTER"), Key("8")],
                                                      CASHIER)[0])
    assert OpenDrawer() not in flat(per_step)


# ---- random event sequences ----

SUMMARIES = st.builds(row, kind=st.sampled_from(["sale", "completion", "refund", "void",
                                                 "qr_sale", "x"]),
                      stan=st.integers(0, 999999), amount=st.integers(0, 10**10),
                      status=st.sampled_from(["APPROVED", "DECLINED", "REVERSED"]),
                      voided=st.booleans(), refunded=st.integers(0, 2000),
                      masked_pan=st.sampled_from(["622609******0014", "", "*" * 16]),
                      created_at=st.sampled_from(["2024-05-14T10:22:33", "", "x"]))
TEXT = st.text(max_size=60)
EVENTS = st.one_of(
    st.sampled_from(KEYS + ("F1",)).map(Key),
    st.integers(-2, 20).map(PinLength),
    st.sampled_from([CardInserted(), CardRemoved(), Shutdown(), RiskResult("ok"),
                     RiskResult("confirm", "velocity"), CardRead(CARD), PrintDone(True),
                     CardSwiped(STRIPE, chip=False), CodeScanned(CODE), CodeScanned("12")]),
    st.builds(LoginResult, st.booleans(), st.sampled_from(["01", "07", ""]),
              st.sampled_from(["cashier", "supervisor", "admin", "x"]), TEXT,
              st.sampled_from(["login", "confirm"])),
    st.builds(TxnFound, st.none() | SUMMARIES, TEXT),
    st.builds(TxnPage, st.lists(SUMMARIES, max_size=5).map(tuple), st.integers(0, 20),
              st.integers(0, 30)),
    st.builds(TaskDone, st.booleans(), TEXT, st.lists(TEXT, max_size=6).map(tuple)),
    st.builds(QrProgress, TEXT),
    st.builds(AuthResult, st.sampled_from(["approved", "declined", "no_response", "?"]),
              st.text(max_size=3), TEXT, st.text(max_size=8), st.text(max_size=12),
              st.none() | st.integers(1, 9), st.just(""), st.none() | st.integers(-10**6, 10**9)),
    st.builds(Timeout, st.sampled_from(["shell", "card", "pin", "result", "entry", "confirm"]),
              st.integers(0, 60)),
    st.builds(LinkStatus, st.none() | st.booleans(), st.integers(0, 9), st.integers(0, 9)),
    st.sampled_from(["6920152400012", "6920152400013", "4006381333931", EAN_UNKNOWN, "12",
                     "036000291452"]).map(BarcodeScanned),
    st.builds(BasketSaved, st.none() | st.integers(1, 9), TEXT),
    st.builds(CashDone, st.none() | st.integers(1, 9), st.integers(0, 10**6), TEXT),
    st.builds(TrainingSet, st.booleans(), st.sampled_from(["", "Batch open", "x" * 70])),
)
STARTS = st.sampled_from([  # from rest, and from deep inside forms, lists and payments
    [], login("01", "cashier"), login("07", "supervisor"),
    login("01", "cashier") + [Key("MENU"), Key("2")],
    login("07", "supervisor") + [Key("MENU"), Key("3")] + keys(RRN) + [Key("ENTER")],
    login("01", "cashier") + TO_QR + keys("1250") + [Key("ENTER")],
    login("01", "cashier") + TO_LIST + [PAGE1],
    login("01", "cashier") + [Key("MENU"), Key("6")] + keys(KEYED[:10]),
    login("07", "supervisor") + [Key("MENU"), Key("4"), Key("3")] + keys("654321")
    + [Key("ENTER")],
    login("01", "cashier") + TEA3,
    login("01", "cashier") + TO_OVER,
    login("01", "cashier") + TO_TENDER,
    login("01", "cashier") + TO_TENDER + [Key("4")] + keys("50") + [Key("ENTER")],
    login("01", "cashier") + TO_TENDER + [Key("1")],
    login("01", "cashier") + [Key("MENU"), Key("1"), Key("3")] + keys("99") + [Key("ENTER")],
    login("07", "supervisor") + TO_MANAGER + [Key("ENTER"), Key("7")],
])


@settings(max_examples=400, deadline=None)
@given(STARTS, st.lists(EVENTS, max_size=60))
def test_random_events_never_raise_screens_fit_and_hide_card_numbers(prefix, events):
    state, _ = start(CFG)
    for event in prefix + events:
        before = state
        state, actions = step(CFG, state, event)  # never raises
        assert state.phase in PHASES and state.sale.token >= before.sale.token
        for action in actions:
            if isinstance(action, Show):
                check_screen(action.screen)
        if state.phase != "CARD":
            assert state.sale.phase == "IDLE"
        if state.phase in ("LOGIN", "CONFIRM"):
            assert state.login is not None
        if state.phase in ("BASKET", "BASKET_MENU", "CLEAR_BASKET", "SAVING"):
            assert state.cart is not None and state.basket_id is None
        if state.phase == "TENDER":
            assert state.basket_id is not None and 0 < state.due <= state.cart.total
        if state.cart is not None:
            assert 0 <= state.cart.discount <= state.cart.subtotal
        assert PAN not in repr(state) and KEYED not in repr(state) and CODE not in repr(state)

