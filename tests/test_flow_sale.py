"""Sale flow state machine: event tables in, actions and screens out; no I/O."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkit import flat, make_drive, shows
from firmware.emv.card import (
    CVMS, ENTRY_CHIP, ENTRY_CONTACTLESS, ENTRY_FALLBACK, ENTRY_MAGSTRIPE, CardData,
)
from firmware.flows.sale import (
    BUSY_PHASES, PHASES, SaleConfig, SaleState, amount_key, begin, busy, idle_screen, number_key,
    start, step,
)
from firmware.flows.types import (
    KEYS, LCD_COLS, LCD_ROWS, READ_NEXT, AppChoice, AuthResult, Authorise, Beep, CancelTimers,
    CardInserted, CardRead, CardReadFailed, CardRemoved, CardSwiped, CheckLogin, CheckRisk, Idle,
    Key, LinkStatus, LoginResult, OriginalRef, PinLength, PinVerified, Print, PrintDone, ReadCard, ReaderStatus,
    RiskResult, Screen, SelectApp, Show, Shutdown, StartPin, StartTimer, StopPin, SwipeFailed,
    Timeout, TxnSpec, VerifyPin, fit, wrap,
)

PAN = "6226090000000014"
CARD = CardData(pan=PAN, expiry="3012", pan_seq="01", track2=PAN + "=3012201",
                aid="A000000333010101", app_label="UnionPay Debit",
                icc_data=b"\x9f\x26\x08" + bytes(8))
CFG = SaleConfig(max_amount=9_999_999)

IDLE = Screen("KPOS", ("Key in amount", "CONNECTING  queued 0"))
READING = Screen("Reading card", ("Do not remove",))
PROCESSING = Screen("Processing", ("Please wait",))
REMOVE = Screen("Remove card", ("Please take card",))
TO_IDLE = [CancelTimers(), Show(IDLE), Idle()]
SEEN: list[Screen] = []  # every screen any test reached


def amount_screen(text: str, note: str | None = None, title: str = "SALE") -> Screen:
    return Screen(title, ("Amount", text) + ((note,) if note else ()) + ("ENTER to confirm",))


def pin_screen(n: int, note: str = "Enter PIN") -> Screen:
    return Screen("CNY 12.50", (note, "*" * n, "622609******0014"))


def keys(text: str) -> list[Key]:
    return [Key(k) for k in text]


def check_screen(screen: Screen) -> None:
    SEEN.append(screen)
    assert len(screen.lines) <= LCD_ROWS, screen
    for line in (screen.title, *screen.lines):
        assert len(line) <= LCD_COLS, (line, screen)
        assert PAN not in line and "0000000014" not in line, screen
        assert not re.search("[0-9]{13}", line), screen  # no keyed card number in clear


drive = make_drive(start, step, check_screen, CFG)


# Prefixes: how far into a sale of CNY 12.50
TO_PRESENT = keys("1250") + [Key("ENTER")]
TO_READING = TO_PRESENT + [CardInserted()]
OK = RiskResult("ok")  # the limits and velocity rules let the card go on
SALE = TxnSpec("sale", 1250)
TO_PIN = TO_READING + [CardRead(CARD), OK]
PIN4 = [PinLength(1), PinLength(2), PinLength(3), PinLength(4)]
TO_AUTH = TO_PIN + PIN4 + [Key("ENTER")]
TO_CHOICE = TO_READING + [AppChoice(("UnionPay Debit", "UnionPay Credit"))]
TO_OFFLINE_PIN = TO_READING + [CardRead(CARD, "offline_pin"), OK]
TO_VERIFYING = TO_OFFLINE_PIN + PIN4 + [Key("ENTER")]
TO_CHECKING = TO_READING + [CardRead(CARD)]
TO_SUPERVISOR = TO_PRESENT + [Key("MENU")]  # key the card in: a cashier needs a supervisor
CONFIRMED = keys("07") + [Key("ENTER"), PinLength(4), Key("ENTER"),
                          LoginResult(True, "07", "supervisor", purpose="confirm")]
TO_MANUAL = TO_SUPERVISOR + CONFIRMED
KEYED = "4111111111111111"  # Luhn-valid test number
TO_EXPIRY = TO_MANUAL + keys(KEYED) + [Key("ENTER")]

TAP = replace(CARD, entry_mode=ENTRY_CONTACTLESS)
STRIPE = replace(CARD, entry_mode=ENTRY_MAGSTRIPE, icc_data=b"", service_code="201")


def approved_screen(last: str) -> Screen:
    return Screen("APPROVED", ("CNY 12.50", "Auth 123456", last), "ok")


HAPPY = [
    (Key("1"), [Beep("key"), Show(amount_screen("CNY 0.01"))]),
    (Key("2"), [Beep("key"), Show(amount_screen("CNY 0.12"))]),
    (Key("5"), [Beep("key"), Show(amount_screen("CNY 1.25"))]),
    (Key("0"), [Beep("key"), Show(amount_screen("CNY 12.50"))]),
    (Key("ENTER"), [Beep("key"), Show(Screen("SALE CNY 12.50", ("Insert or swipe card",))),
                    StartTimer("card", 60, 1)]),
    (CardInserted(), [CancelTimers(), Show(READING), ReadCard()]),
    (CardRead(CARD), [CheckRisk("sale", 1250, ENTRY_CHIP)]),
    (OK, [Show(pin_screen(0)), StartPin(12), StartTimer("pin", 60, 2)]),
    (PinLength(1), [Beep("key"), Show(pin_screen(1))]),
    (PinLength(2), [Beep("key"), Show(pin_screen(2))]),
    (PinLength(3), [Beep("key"), Show(pin_screen(3))]),
    (PinLength(4), [Beep("key"), Show(pin_screen(4))]),
    (Key("ENTER"), [CancelTimers(), Show(PROCESSING), Authorise("sale", 1250, SALE)]),
    (AuthResult("approved", "00", "Approved", "123456", "000000000042", 7),
     [Show(approved_screen("Printing...")), Beep("ok"), Print(7)]),
    (PrintDone(True), [Show(approved_screen("Take receipts")), StartTimer("result", 5, 3)]),
    (Timeout("result", 3), [CancelTimers(), Show(REMOVE)]),
    (CardRemoved(), TO_IDLE),
]


def test_start_shows_idle():
    state, actions = start(CFG)
    assert state == SaleState() and actions == [Show(IDLE)]


def test_happy_path_step_by_step():
    state, _ = start(CFG)
    phases = []
    for event, expected in HAPPY:
        state, actions = step(CFG, state, event)
        for action in actions:
            if isinstance(action, Show):
                check_screen(action.screen)
        assert actions == expected, event
        phases.append(state.phase)
    assert phases == ["AMOUNT"] * 4 + ["PRESENT_CARD", "READING", "CHECKING"] + ["PIN"] * 5 + [
        "AUTHORISING", "PRINTING", "RESULT", "REMOVE_CARD", "IDLE"]
    assert state == SaleState(token=3)  # back to a clean idle, card data dropped


@pytest.mark.parametrize("events, amount, last", [
    (keys("0"), None, None),  # "0" in idle does nothing
    (keys("00") + [Key("ENTER")] + keys("0012"), 12, amount_screen("CNY 0.12")),
    (keys("1234") + [Key("BACK")], 123, amount_screen("CNY 1.23")),
    (keys("12") + [Key("BACK"), Key("BACK"), Key("BACK")], 0, amount_screen("CNY 0.00")),
    (keys("1234") + [Key("CLEAR")] + keys("5"), 5, amount_screen("CNY 0.05")),
    (keys("9999999") + keys("9"), 9_999_999,
     amount_screen("CNY 99999.99", "Max CNY 99999.99")),
    (keys("1000000") + keys("0") + keys("1"), 1_000_000,
     amount_screen("CNY 10000.00", "Max CNY 99999.99")),
])
def test_amount_editing(events, amount, last):
    state, per_step = drive(events)
    if amount is None:
        assert state.phase == "IDLE" and flat(per_step) == []
        return
    assert state.phase == "AMOUNT" and state.amount == amount
    assert shows(per_step)[-1] == last


def test_max_amount_refused_with_error_beep_and_unchanged_amount():
    state, per_step = drive(keys("9999999"))
    after, actions = step(CFG, state, Key("9"))
    assert after == state
    assert actions == [Beep("error"), Show(amount_screen("CNY 99999.99", "Max CNY 99999.99"))]
    # the next accepted key drops the note again
    _, actions = step(CFG, after, Key("BACK"))
    assert actions == [Beep("key"), Show(amount_screen("CNY 9999.99"))]


def test_leading_zero_produces_no_action():
    state, _ = drive([Key("ENTER")])
    assert state.phase == "AMOUNT"
    assert step(CFG, state, Key("0")) == (state, [])


def test_enter_on_zero_amount_refused():
    state, per_step = drive([Key("ENTER"), Key("ENTER")])
    assert state.phase == "AMOUNT" and state.amount == 0
    assert per_step[1] == [Beep("error")]


def test_single_digit_over_a_tiny_max_refused_from_idle():
    cfg = SaleConfig(max_amount=5)
    state, per_step = drive(keys("7"), cfg=cfg)
    assert state.phase == "AMOUNT" and state.amount == 0
    assert per_step[0] == [Beep("error"), Show(amount_screen("CNY 0.00", "Max CNY 0.05"))]


def test_cancel_during_amount_goes_idle():
    state, per_step = drive(keys("12") + [Key("CANCEL")])
    assert state == SaleState()
    assert per_step[-1] == TO_IDLE


CANCELLED = Screen("Cancelled", ("Sale not done",))
RESULT_TIMER = StartTimer("result", 5, 2)


@pytest.mark.parametrize("prefix, event, expected", [
    (TO_PRESENT, Key("CANCEL"), [CancelTimers(), Show(CANCELLED), RESULT_TIMER]),
    (TO_PRESENT, Timeout("card", 1),
     [CancelTimers(), Show(Screen("Timed out", ("No card presented",), "error")), Beep("error"),
      RESULT_TIMER]),
    (TO_PIN, Key("CANCEL"),
     [StopPin(), CancelTimers(), Show(CANCELLED), StartTimer("result", 5, 3)]),
    (TO_PIN, Timeout("pin", 2),
     [StopPin(), CancelTimers(), Show(Screen("PIN timeout", ("Sale not done",), "error")),
      Beep("error"), StartTimer("result", 5, 3)]),
    (TO_PIN, CardRemoved(),
     [StopPin(), CancelTimers(), Show(Screen("Card removed", ("Sale not done",), "error")),
      Beep("error"), StartTimer("result", 5, 3)]),
    (TO_READING, CardRemoved(),
     [Show(Screen("Card removed", ("Sale not done",), "error")), Beep("error"), RESULT_TIMER]),
    (TO_READING, CardReadFailed("no application"),
     [Show(Screen("Card read error", ("no application",), "error")), Beep("error"), RESULT_TIMER]),
])
def test_early_exits_to_result(prefix, event, expected):
    state, _ = drive(prefix)
    state, per_step = drive([event], state)
    assert state.phase == "RESULT"
    assert per_step[0] == expected


def test_result_then_idle_when_no_card():
    state, _ = drive(TO_PRESENT + [Key("CANCEL")])
    assert state.phase == "RESULT" and not state.card_present
    for leave in (Key("ENTER"), Key("CANCEL"), Timeout("result", state.token)):
        after, actions = step(CFG, state, leave)
        assert after.phase == "IDLE" and actions == TO_IDLE, leave


def test_result_then_remove_card_when_card_present():
    state, _ = drive(TO_PIN + [Key("CANCEL")])
    assert state.phase == "RESULT" and state.card_present
    state, per_step = drive([Key("ENTER"), Key("ENTER"), CardRemoved()], state)
    assert per_step == [[CancelTimers(), Show(REMOVE)], [], TO_IDLE]
    assert state.phase == "IDLE" and not state.card_present


def test_card_removed_while_result_shown_skips_remove_card():
    state, _ = drive(TO_PIN + [Key("CANCEL"), CardRemoved()])
    assert state.phase == "RESULT" and not state.card_present
    state, per_step = drive([Timeout("result", state.token)], state)
    assert state.phase == "IDLE" and per_step[0] == TO_IDLE


@pytest.mark.parametrize("prefix, stale", [
    (TO_PRESENT, Timeout("card", 0)),  # old token
    (TO_PRESENT, Timeout("pin", 1)),  # right token, wrong name
    (TO_PRESENT, Timeout("result", 1)),
    (TO_PIN, Timeout("card", 2)),
    (TO_PIN, Timeout("pin", 1)),  # the PIN timer's name, a stale token
    (TO_PIN, Timeout("pin", 3)),  # a token never issued
    (TO_CHOICE, Timeout("choice", 1)),
    (TO_CHOICE, Timeout("card", 2)),
    (TO_CHOICE, Timeout("pin", 2)),
    (TO_CHOICE, Timeout("choice", 3)),
    (TO_READING + [CardReadFailed("chip error", "swipe")], Timeout("card", 1)),  # pre-read timer
    (TO_PRESENT + [CardSwiped(STRIPE, chip=True)], Timeout("card", 1)),  # restarted: token 2
    (TO_VERIFYING + [PinVerified(False, 2)], Timeout("pin", 2)),  # the first PIN entry's timer
])
def test_stale_timer_ignored(prefix, stale):
    state, _ = drive(prefix)
    assert state.timer in ("card", "pin", "choice") and state.token in (1, 2, 3)
    assert step(CFG, state, stale) == (state, [])


def test_timer_of_a_left_phase_ignored_later():
    # card timer token 1 fires late, while the PIN timer (token 2) runs
    state, _ = drive(TO_PIN)
    assert step(CFG, state, Timeout("card", 1)) == (state, [])
    # the result timer of a finished sale does not touch the next sale
    done, _ = drive(TO_PRESENT + [Key("CANCEL"), Key("ENTER")])
    assert done.phase == "IDLE" and done.token == 2
    fresh, _ = drive(keys("5") + [Key("ENTER")], done)
    assert fresh.phase == "PRESENT_CARD" and fresh.token == 3
    assert step(CFG, fresh, Timeout("result", 2)) == (fresh, [])


def test_pin_too_short_stays_in_pin():
    state, _ = drive(TO_PIN + [PinLength(3)])
    after, actions = step(CFG, state, Key("ENTER"))
    assert after == state and actions == [Beep("error")]
    after, actions = step(CFG, state, PinLength(0))
    assert after.pin_length == 0 and actions == [Beep("key"), Show(pin_screen(0))]


def test_pin_length_clamped_to_pin_max():
    state, per_step = drive(TO_PIN + [PinLength(40)])
    assert state.pin_length == 12
    assert shows(per_step)[-1].lines[1] == "*" * 12
    assert step(CFG, state, PinLength(13)) == (state, [Beep("error")])  # pad full


def test_pin_length_unchanged_beeps_error():
    state, _ = drive(TO_PIN)
    assert step(CFG, state, PinLength(0)) == (state, [Beep("error")])  # BACK on empty


def test_keys_ignored_while_authorising_and_card_removal_tracked():
    state, _ = drive(TO_AUTH)
    assert state.phase == "AUTHORISING"
    for event in (Key("CANCEL"), Key("1"), PinLength(2), Timeout("pin", 2), PrintDone(True)):
        assert step(CFG, state, event) == (state, []), event
    state, actions = step(CFG, state, CardRemoved())
    assert state.phase == "AUTHORISING" and not state.card_present and actions == []
    # approved then printed: RESULT, then idle directly (no card to remove)
    state, per_step = drive([AuthResult("approved", "00", auth_code="123456", txn_id=9),
                             PrintDone(True), Key("ENTER")], state)
    assert per_step[0][-1] == Print(9)
    assert state.phase == "IDLE" and per_step[-1] == TO_IDLE


@pytest.mark.parametrize("result, screen", [
    (AuthResult("declined", "51", "Insufficient funds"),
     Screen("DECLINED", ("Insufficient funds", "Code 51"), "error")),
    (AuthResult("declined", "05", "Do not honour - contact your issuing bank please"),
     Screen("DECLINED", ("Do not honour -", "contact your issu...", "Code 05"), "error")),
    (AuthResult("no_response"), Screen("NO RESPONSE", ("Reversal pending",), "error")),
    (AuthResult("not_sent", message="Connection refused"),
     Screen("NOT SENT", ("Host unreachable", "Connection refused"), "error")),
    (AuthResult("not_sent"), Screen("NOT SENT", ("Host unreachable",), "error")),
    (AuthResult("maybe"), Screen("ERROR", ("Unknown outcome", "maybe", "Check journal"), "error")),
])
def test_unsuccessful_outcomes(result, screen):
    state, _ = drive(TO_AUTH)
    state, actions = step(CFG, state, result)
    assert state.phase == "RESULT"
    assert actions == [Show(screen), Beep("error"), StartTimer("result", 5, 3)]
    check_screen(screen)


def test_printer_failure_keeps_approval_and_says_receipt_queued():
    state, per_step = drive(TO_AUTH + [AuthResult("approved", "00", auth_code="123456", txn_id=7),
                                       PrintDone(False, "paper out")])
    assert state.phase == "RESULT"
    screen = Screen("APPROVED", ("CNY 12.50", "Auth 123456", "Printer: paper out",
                                 "Receipt queued"), "ok")
    assert per_step[-1] == [Beep("error"), Show(screen), StartTimer("result", 5, 3)]


def test_approved_without_journal_row_shows_no_receipt():
    state, per_step = drive(TO_AUTH + [AuthResult("approved", "00", auth_code="123456")])
    assert state.phase == "RESULT"
    assert not any(isinstance(a, Print) for a in per_step[-1])
    assert Show(approved_screen("No receipt")) in per_step[-1]


def test_card_already_inserted_before_enter_reads_at_once():
    state, per_step = drive([CardInserted()] + keys("1250") + [Key("ENTER")])
    assert per_step[0] == [] and state.card_present
    assert state.phase == "READING"
    assert per_step[-1] == [Show(READING), ReadCard()]


def test_card_insert_and_remove_in_idle_only_tracked():
    state, per_step = drive([CardInserted()])
    assert state == SaleState(card_present=True) and per_step == [[]]
    state, per_step = drive([CardRemoved()], state)
    assert state == SaleState() and per_step == [[]]


def test_read_failure_reason_too_long_is_cut():
    reason = "the card answered 6A82 to SELECT of every known application id"
    state, per_step = drive(TO_READING + [CardReadFailed(reason)])
    screen = shows(per_step)[-1]
    assert screen.title == "Card read error" and screen.tone == "error"
    assert screen.lines == wrap(reason, 2) and screen.lines[-1].endswith("...")


def test_shutdown_during_pin_goes_idle_with_stoppin():
    state, _ = drive(TO_PIN + [PinLength(2)])
    state, actions = step(CFG, state, Shutdown())
    assert actions == [StopPin()] + TO_IDLE
    assert state == SaleState(card_present=True, token=2)


@pytest.mark.parametrize("prefix", [keys("12"), TO_PRESENT, TO_PRESENT + [Key("CANCEL")],
                                    TO_PIN + [Key("CANCEL"), Key("ENTER")], TO_CHOICE,
                                    TO_READING + [CardReadFailed("chip error", "swipe")]])
def test_shutdown_in_interactive_phases_goes_idle(prefix):
    state, _ = drive(prefix)
    assert state.phase in ("AMOUNT", "PRESENT_CARD", "CHOOSE_APP", "RESULT", "REMOVE_CARD")
    state, actions = step(CFG, state, Shutdown())
    assert state.phase == "IDLE" and actions == TO_IDLE


def test_shutdown_in_idle_just_reports_idle():
    state, _ = start(CFG)
    assert step(CFG, state, Shutdown()) == (state, [Idle()])


def test_shutdown_during_authorising_deferred_until_receipt_printed():
    state, _ = drive(TO_AUTH)
    state, actions = step(CFG, state, Shutdown())
    assert actions == [] and state.phase == "AUTHORISING" and state.stopping
    state, per_step = drive([AuthResult("approved", "00", auth_code="123456", txn_id=7)], state)
    assert state.phase == "PRINTING" and per_step[0][-1] == Print(7)  # receipts still print
    state, per_step = drive([PrintDone(True)], state)
    assert state.phase == "IDLE" and per_step[0] == TO_IDLE
    assert not state.stopping


@pytest.mark.parametrize("result", [AuthResult("declined", "51", "Insufficient funds"),
                                    AuthResult("no_response")])
def test_shutdown_during_authorising_then_failure_goes_idle(result):
    state, _ = drive(TO_AUTH + [Shutdown()])
    state, actions = step(CFG, state, result)
    assert state.phase == "IDLE" and actions == TO_IDLE


@pytest.mark.parametrize("event", [
    CardRead(CARD), CardRead(CARD, "none"), CardReadFailed("mute card"), CardRemoved(),
    CardReadFailed("chip error", "swipe"), CardReadFailed("tap refused", "insert"),
    AppChoice(("UnionPay Debit", "UnionPay Credit")),
])
def test_shutdown_during_reading_deferred(event):
    state, _ = drive(TO_READING + [Shutdown()])
    assert state.phase == "READING" and state.stopping
    state, actions = step(CFG, state, event)
    assert state.phase == "IDLE" and actions == TO_IDLE
    assert not any(isinstance(a, StartPin) for a in actions)


def test_busy_only_in_blocking_phases():
    prefixes = {"IDLE": [], "AMOUNT": keys("1"), "PRESENT_CARD": TO_PRESENT,
                "READING": TO_READING, "CHOOSE_APP": TO_CHOICE, "PIN": TO_PIN,
                "CHECKING": TO_CHECKING, "SUPERVISOR": TO_SUPERVISOR, "MANUAL_PAN": TO_MANUAL,
                "MANUAL_EXPIRY": TO_EXPIRY,
                "VERIFYING": TO_VERIFYING, "AUTHORISING": TO_AUTH,
                "PRINTING": TO_AUTH + [AuthResult("approved", txn_id=1)],
                "RESULT": TO_PRESENT + [Key("CANCEL")],
                "REMOVE_CARD": TO_PIN + [Key("CANCEL"), Key("ENTER")]}
    assert set(prefixes) == set(PHASES)
    for phase, events in prefixes.items():
        state, _ = drive(events)
        assert state.phase == phase
        assert busy(state) == (phase in BUSY_PHASES), phase
    assert BUSY_PHASES == {"READING", "CHECKING", "VERIFYING", "AUTHORISING", "PRINTING"}
    checking_login, _ = drive(TO_SUPERVISOR + CONFIRMED[:-1])
    assert checking_login.phase == "SUPERVISOR" and busy(checking_login)


ODD_EVENTS = [Key("1"), Key("0"), Key("ENTER"), Key("BACK"), Key("CLEAR"), Key("CANCEL"), Key("F1"),
              PinLength(3), CardInserted(), CardRemoved(), CardRead(CARD), CardReadFailed("x"),
              AuthResult("approved", txn_id=1), AuthResult("declined", "51"), PrintDone(True),
              PrintDone(False), Timeout("card", 99), Timeout("pin", 99), Timeout("result", 99),
              Timeout("choice", 99), AppChoice(("a", "b")), AppChoice(()), PinVerified(True),
              PinVerified(False, 2), PinVerified(False, 0, "online_pin"), PinVerified(False),
              CardSwiped(STRIPE, chip=True), CardSwiped(STRIPE, chip=False), SwipeFailed("bad"),
              ReaderStatus("jammed"), ReaderStatus(""), CardRead(TAP, "signature"),
              CardReadFailed("x", "swipe"), CardReadFailed("x", "insert"), LinkStatus(False, 2, 1),
              Key("MENU"), OK, RiskResult("refuse", "Daily limit"), RiskResult("confirm", "Velocity"),
              LoginResult(True, "07", "supervisor", purpose="confirm"), LoginResult(False, reason="x"),
              Timeout("entry", 99), Timeout("confirm", 99)]


def test_every_event_in_every_phase_never_raises_and_screens_fit():
    prefixes = [[], keys("1"), TO_PRESENT, TO_READING, TO_CHOICE, TO_PIN, TO_VERIFYING, TO_AUTH,
                TO_AUTH + [AuthResult("approved", txn_id=1)], TO_PRESENT + [Key("CANCEL")],
                TO_PIN + [Key("CANCEL"), Key("ENTER")], TO_CHECKING, TO_SUPERVISOR, TO_MANUAL,
                TO_EXPIRY, TO_SUPERVISOR + CONFIRMED[:-1]]
    for prefix in prefixes:
        base, _ = drive(prefix)
        for event in ODD_EVENTS:
            state, actions = step(CFG, base, event)  # drive() checks the screens
            assert state.phase in PHASES
            for action in actions:
                if isinstance(action, Show):
                    check_screen(action.screen)


def test_key_ignored_in_reading_leaves_state_identical():
    state, _ = drive(TO_READING)
    for event in (Key("1"), Key("CANCEL"), PinLength(4), PrintDone(True), CardInserted()):
        assert step(CFG, state, event) == (state, [])


def test_all_reached_screens_fit_lcd_and_hide_pan():
    # run every table here, then inspect every screen reached anywhere in this module
    drive([e for e, _ in HAPPY])
    test_every_event_in_every_phase_never_raises_and_screens_fit()
    titles = {s.title for s in SEEN}
    assert {"KPOS", "SALE", "SALE CNY 12.50", "Reading card", "CNY 12.50", "Processing",
            "APPROVED", "Remove card", "Cancelled"} <= titles
    for screen in SEEN:
        assert len(screen.lines) <= 4
        assert all(len(line) <= 20 for line in (screen.title, *screen.lines)), screen
        assert all(PAN not in line for line in (screen.title, *screen.lines)), screen
    assert any("622609******0014" in s.lines for s in SEEN)  # the masked PAN was shown


def test_state_repr_never_holds_full_pan():
    state, _ = drive(TO_PIN)
    assert state.card is CARD
    assert PAN not in repr(state) and "622609******0014" in repr(state)


@pytest.mark.parametrize("bad", [
    dict(title="x" * 21),
    dict(title="t", lines=("y" * 21,)),
    dict(title="t", lines=("a", "b", "c", "d", "e")),
    dict(title="t", tone="blue"),
])
def test_screen_rejects_what_an_lcd_cannot_show(bad):
    with pytest.raises(ValueError):
        Screen(**bad)


@pytest.mark.parametrize("kwargs, name", [
    (dict(max_amount=0), "max_amount"), (dict(max_amount=100, currency=999), "currency"),
    (dict(max_amount=100, pin_timeout=0), "pin_timeout"),
    (dict(max_amount=100, pin_min=6, pin_max=4), "pin_min/pin_max"),
    (dict(max_amount=100, pin_min=3), "pin_min/pin_max"),
])
def test_config_errors_name_the_key(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SaleConfig(**kwargs)


# ---- the real card path: taps, reader faults, app choice, CVMs, offline PIN, swipe ----

TITLE = "SALE CNY 12.50"
PRESENT = Screen(TITLE, ("Insert or swipe card",))
CHECKING = Screen("Checking PIN", ("Please wait",))
PIN_BLOCKED = Screen("PIN blocked", ("Processing",))
CHOICE = Screen("Select app", ("1 UnionPay Debit", "2 UnionPay Credit"))
AUTHORISE = [Show(PROCESSING), Authorise("sale", 1250, SALE)]
BLOCKED = [Beep("error"), Show(PIN_BLOCKED), Authorise("sale", 1250, SALE)]
FAULT = "no reader on /dev/ttyUSB0, check the cable"


def idle_fault(fault: str) -> Screen:
    return Screen("KPOS", ("Key in amount", "CONNECTING  queued 0", fit("Reader: " + fault)))


def pin_entry(token: int, note: str = "Enter PIN") -> list:
    return [Show(pin_screen(0, note)), StartPin(12), StartTimer("pin", 60, token)]


@pytest.mark.parametrize("limit, line", [
    (0, "Insert or swipe card"),  # taps not offered
    (500_000, "Insert, tap or swipe"),
    (1250, "Insert, tap or swipe"),  # the limit itself may be tapped
    (1249, "Insert or swipe card"),
])
def test_present_card_offers_a_tap_only_up_to_the_contactless_limit(limit, line):
    cfg = SaleConfig(max_amount=9_999_999, contactless_limit=limit)
    state, per_step = drive(TO_PRESENT, cfg=cfg)
    assert state.phase == "PRESENT_CARD"
    assert per_step[-1] == [Beep("key"), Show(Screen(TITLE, (line,))), StartTimer("card", 60, 1)]


def test_reader_fault_in_idle_shown_beeped_once_and_cleared():
    state, _ = start(CFG)
    state, actions = step(CFG, state, ReaderStatus(FAULT))
    assert state.reader_fault == FAULT and state.phase == "IDLE"
    assert actions == [Show(idle_fault(FAULT)), Beep("error")]
    assert step(CFG, state, ReaderStatus(FAULT)) == (state, [])  # the same fault again
    state, actions = step(CFG, state, ReaderStatus("jammed"))  # another fault: beeps again
    assert actions == [Show(idle_fault("jammed")), Beep("error")]
    state, actions = step(CFG, state, ReaderStatus(""))
    assert state == SaleState() and actions == [Show(IDLE)]  # cleared: no beep


def test_reader_fault_on_present_card_screen_and_cleared_there():
    state, per_step = drive([ReaderStatus("jammed")] + TO_PRESENT)
    assert per_step[-1][1] == Show(Screen(TITLE, ("Insert or swipe card", "Reader: jammed")))
    token = state.token
    state, actions = step(CFG, state, ReaderStatus(""))
    assert actions == [Show(PRESENT)] and state.phase == "PRESENT_CARD" and state.token == token
    state, actions = step(CFG, state, ReaderStatus(FAULT))
    faulty = Screen(TITLE, ("Insert or swipe card", "Reader: no reader..."))
    assert actions == [Show(faulty), Beep("error")]
    assert state.timer == "card" and state.token == token  # the card timer keeps running


@pytest.mark.parametrize("prefix", [keys("1"), TO_READING, TO_CHOICE, TO_PIN, TO_VERIFYING,
                                    TO_AUTH, TO_AUTH + [AuthResult("approved", txn_id=1)],
                                    TO_PRESENT + [Key("CANCEL")]])
def test_reader_status_elsewhere_only_stored_and_beeped(prefix):
    state, _ = drive(prefix)
    faulty, actions = step(CFG, state, ReaderStatus("jammed"))
    assert faulty == replace(state, reader_fault="jammed") and actions == [Beep("error")]
    assert step(CFG, faulty, ReaderStatus("")) == (state, [])


def test_reader_fault_outlives_the_sale_and_shows_on_idle():
    state, per_step = drive([ReaderStatus("jammed")] + TO_PRESENT + [Key("CANCEL"), Key("ENTER")])
    assert state.phase == "IDLE" and state.reader_fault == "jammed"
    assert per_step[-1] == [CancelTimers(), Show(idle_fault("jammed")), Idle()]
    state, actions = step(CFG, replace(state, phase="AMOUNT"), Shutdown())
    assert state.reader_fault == "jammed" and Show(idle_fault("jammed")) in actions


def test_app_choice_lists_the_apps_and_starts_the_choice_timer():
    cfg = SaleConfig(max_amount=9_999_999, pin_timeout=30)
    state, per_step = drive(TO_CHOICE, cfg=cfg)
    assert state.phase == "CHOOSE_APP" and state.timer == "choice" and not busy(state)
    assert per_step[-1] == [Show(CHOICE), StartTimer("choice", 30, 2)]


def test_app_choice_shows_four_cut_labels_and_accepts_every_number():
    labels = tuple(f"Application number {n} of the card" for n in range(1, 10))
    state, per_step = drive(TO_READING + [AppChoice(labels)])
    assert shows(per_step)[-1].lines == ("1 Application num...", "2 Application num...",
                                         "3 Application num...", "4 Application num...")
    state, actions = step(CFG, state, Key("9"))
    assert actions == [CancelTimers(), Show(READING), SelectApp(8)]


@pytest.mark.parametrize("key, expected", [
    ("1", [CancelTimers(), Show(READING), SelectApp(0)]),
    ("2", [CancelTimers(), Show(READING), SelectApp(1)]),
    ("3", [Beep("error")]),
    ("0", [Beep("error")]),
    ("ENTER", []),
    ("BACK", []),
])
def test_app_choice_keys(key, expected):
    state, _ = drive(TO_CHOICE)
    after, actions = step(CFG, state, Key(key))
    assert actions == expected
    if SelectApp in map(type, expected):
        assert after.phase == "READING" and after.timer == "" and busy(after)
    else:
        assert after == state


def test_app_chosen_then_read_goes_on_and_the_choice_timer_is_stale():
    state, _ = drive(TO_CHOICE + [Key("2")])
    assert step(CFG, state, Timeout("choice", 2)) == (state, [])
    state, per_step = drive([CardRead(CARD), OK], state)
    assert state.phase == "PIN" and per_step[-1] == pin_entry(3)


CARD_REMOVED = Screen("Card removed", ("Sale not done",), "error")


@pytest.mark.parametrize("event, expected, present", [
    (Key("CANCEL"), [CancelTimers(), Show(CANCELLED), StartTimer("result", 5, 3)], True),
    (Timeout("choice", 2), [CancelTimers(), Show(Screen("Timed out", ("No app selected",),
                                                        "error")), Beep("error"),
                            StartTimer("result", 5, 3)], True),
    (CardRemoved(), [CancelTimers(), Show(CARD_REMOVED), Beep("error"),
                     StartTimer("result", 5, 3)], False),
    (CardReadFailed("card mute"), [CancelTimers(), Show(Screen("Card read error", ("card mute",),
                                                               "error")),
                                   Beep("error"), StartTimer("result", 5, 3)], True),
])
def test_app_choice_exits_to_result(event, expected, present):
    state, per_step = drive(TO_CHOICE + [event])
    assert state.phase == "RESULT" and state.card_present == present
    assert per_step[-1] == expected


@pytest.mark.parametrize("card, cvm, expected, phase", [
    (CARD, "online_pin", pin_entry(2), "PIN"),
    (CARD, "offline_pin", pin_entry(2), "PIN"),
    (CARD, "signature", AUTHORISE, "AUTHORISING"),
    (CARD, "none", AUTHORISE, "AUTHORISING"),
    (TAP, "online_pin", pin_entry(2), "PIN"),
    (TAP, "offline_pin", pin_entry(2), "PIN"),
    (TAP, "signature", AUTHORISE, "AUTHORISING"),
    (TAP, "none", AUTHORISE, "AUTHORISING"),
])
def test_card_read_goes_on_by_cvm_and_a_tap_is_over_at_once(card, cvm, expected, phase):
    state, per_step = drive(TO_READING + [CardRead(card, cvm)])
    tap_over = [Beep("ok")] if card is TAP else []
    assert per_step[-1] == tap_over + [CheckRisk("sale", 1250, card.entry_mode)]
    assert state.phase == "CHECKING" and busy(state)
    state, per_step = drive([OK], state)
    assert per_step[-1] == expected
    assert state.phase == phase and state.cvm == cvm and state.card is card
    assert state.pin_offline == (cvm == "offline_pin")
    assert state.card_present == (card is CARD)


def test_offline_pin_enter_checks_the_pin_with_the_card():
    state, per_step = drive(TO_OFFLINE_PIN + PIN4[:3])
    assert step(CFG, state, Key("ENTER")) == (state, [Beep("error")])  # too short
    state, per_step = drive(TO_VERIFYING)
    assert per_step[-1] == [CancelTimers(), Show(CHECKING), VerifyPin()]
    assert state.phase == "VERIFYING" and state.timer == "" and busy(state)
    assert not any(isinstance(a, Authorise) for a in flat(per_step))


@pytest.mark.parametrize("result, expected, phase, cvm, offline", [
    (PinVerified(True), AUTHORISE, "AUTHORISING", "offline_pin", True),
    (PinVerified(False, 2), [Beep("error")] + pin_entry(3, "Wrong PIN: 2 left"),
     "PIN", "offline_pin", True),
    (PinVerified(False, 1, "online_pin"), [Beep("error")] + pin_entry(3, "Wrong PIN: 1 left"),
     "PIN", "offline_pin", True),
    (PinVerified(False, 0, "online_pin"), [Beep("error")] + pin_entry(3, "Offline PIN failed"),
     "PIN", "online_pin", False),
    (PinVerified(False, None, "online_pin"),
     [Beep("error")] + pin_entry(3, "Offline PIN failed"), "PIN", "online_pin", False),
    (PinVerified(False, 0, "signature"), BLOCKED, "AUTHORISING", "signature", True),
    (PinVerified(False, 0, "none"), BLOCKED, "AUTHORISING", "none", True),
    (PinVerified(False, None, "offline_pin"), BLOCKED, "AUTHORISING", "none", True),
])
def test_offline_pin_result(result, expected, phase, cvm, offline):
    state, per_step = drive(TO_VERIFYING + [result])
    assert per_step[-1] == expected
    assert (state.phase, state.cvm, state.pin_offline) == (phase, cvm, offline)
    assert state.pin_length == (0 if phase == "PIN" else 4)


def test_wrong_offline_pin_then_right_one():
    state, per_step = drive(TO_VERIFYING + [PinVerified(False, 1), PinLength(1)])
    assert per_step[-1] == [Beep("key"), Show(pin_screen(1, "Wrong PIN: 1 left"))]
    state, per_step = drive(PIN4[1:] + [Key("ENTER"), PinVerified(True)], state)
    assert per_step[-2] == [CancelTimers(), Show(CHECKING), VerifyPin()]
    assert per_step[-1] == AUTHORISE and state.phase == "AUTHORISING"


def test_offline_pin_failed_then_online_pin_is_sent_with_the_request():
    state, per_step = drive(TO_VERIFYING + [PinVerified(False, 0, "online_pin")] + PIN4
                            + [Key("ENTER")])
    assert per_step[-1] == [CancelTimers()] + AUTHORISE
    assert state.phase == "AUTHORISING"


def test_retry_pin_timer_fires_and_the_old_one_is_stale():
    state, _ = drive(TO_VERIFYING + [PinVerified(False, 2)])
    assert step(CFG, state, Timeout("pin", 2)) == (state, [])
    state, actions = step(CFG, state, Timeout("pin", 3))
    assert state.phase == "RESULT"
    assert actions[:2] == [StopPin(), CancelTimers()]


def test_verifying_ignores_keys_and_timers_and_tracks_removal():
    state, _ = drive(TO_VERIFYING)
    for event in (Key("CANCEL"), Key("1"), PinLength(2), Timeout("pin", 2), AuthResult("approved"),
                  CardSwiped(STRIPE, chip=False), Key("ENTER")):
        assert step(CFG, state, event) == (state, []), event
    state, actions = step(CFG, state, CardRemoved())
    assert state.phase == "VERIFYING" and not state.card_present and actions == []


@pytest.mark.parametrize("event", [CardReadFailed("card removed"),
                                   CardReadFailed("card removed", "swipe")])
def test_card_lost_while_verifying_is_a_read_error(event):
    state, per_step = drive(TO_VERIFYING + [event])
    assert state.phase == "RESULT"
    assert per_step[-1] == [Show(Screen("Card read error", ("card removed",), "error")),
                            Beep("error"), StartTimer("result", 5, 3)]


@pytest.mark.parametrize("event", [PinVerified(True), PinVerified(False, 2),
                                   PinVerified(False, 0, "online_pin"), PinVerified(False, 0),
                                   CardReadFailed("card removed")])
def test_shutdown_during_verifying_deferred(event):
    state, per_step = drive(TO_VERIFYING + [Shutdown()])
    assert per_step[-1] == [] and state.phase == "VERIFYING" and state.stopping
    state, actions = step(CFG, state, event)
    assert state.phase == "IDLE" and actions == TO_IDLE and not state.stopping


@pytest.mark.parametrize("event, retry, chip_failed", [
    (CardReadFailed("chip error 6F00", "swipe"), "Swipe card", True),
    (CardReadFailed("amount over the tap limit of this card", "insert"), "Insert card", False),
])
def test_card_read_failure_offers_another_way(event, retry, chip_failed):
    state, per_step = drive(TO_READING + [event])
    lines = (*wrap(event.reason, 2), retry)
    assert per_step[-1] == [Show(Screen(TITLE, lines, "error")), Beep("error"),
                            StartTimer("card", 60, 2)]
    assert state.phase == "PRESENT_CARD" and state.chip_failed == chip_failed
    assert state.card_present  # the chip card is still in the slot until removed
    state, actions = step(CFG, state, Timeout("card", 2))
    assert state.phase == "RESULT" and Show(Screen("Timed out", ("No card presented",),
                                                   "error")) in actions


def test_no_swipe_offered_without_fallback():
    cfg = SaleConfig(max_amount=9_999_999, fallback=False)
    state, per_step = drive(TO_READING + [CardReadFailed("chip error 6F00", "swipe")], cfg=cfg)
    assert state.phase == "RESULT" and not state.chip_failed
    assert per_step[-1] == [Show(Screen("Card read error", ("chip error 6F00",), "error")),
                            Beep("error"), StartTimer("result", 5, 2)]


def test_fallback_swipe_after_a_failed_chip_goes_to_online_pin():
    state, per_step = drive(TO_READING + [CardReadFailed("chip error", "swipe"), CardRemoved(),
                                          CardSwiped(STRIPE, chip=True), OK])
    assert per_step[-3] == []  # the chip card leaves the slot: only tracked
    assert per_step[-2] == [CancelTimers(), CheckRisk("sale", 1250, ENTRY_FALLBACK)]
    assert per_step[-1] == pin_entry(3)
    assert state.phase == "PIN" and state.cvm == "online_pin" and not state.pin_offline
    assert state.card == replace(STRIPE, entry_mode=ENTRY_FALLBACK)
    assert not state.card_present


def test_reinsert_after_a_failed_chip_reads_again():
    state, per_step = drive(TO_READING + [CardReadFailed("chip error", "swipe"), CardRemoved(),
                                          CardInserted()])
    assert per_step[-1] == [CancelTimers(), Show(READING), ReadCard()]
    assert state.phase == "READING" and state.chip_failed and state.card_present


@pytest.mark.parametrize("card", [STRIPE, replace(STRIPE, service_code="101")])
def test_swipe_of_a_stripe_only_card_goes_to_online_pin(card):
    state, per_step = drive(TO_PRESENT + [CardSwiped(card, chip=False), OK])
    assert per_step[-2] == [CancelTimers(), CheckRisk("sale", 1250, ENTRY_MAGSTRIPE)]
    assert per_step[-1] == pin_entry(2)
    assert state.phase == "PIN" and state.card is card and state.card.entry_mode == ENTRY_MAGSTRIPE
    assert state.cvm == "online_pin" and not state.card_present
    state, per_step = drive(PIN4 + [Key("ENTER")], state)
    assert per_step[-1] == [CancelTimers()] + AUTHORISE


def test_swipe_of_a_chip_card_asks_for_the_chip_and_restarts_the_card_timer():
    state, per_step = drive(TO_PRESENT + [CardSwiped(STRIPE, chip=True)])
    assert per_step[-1] == [Show(Screen(TITLE, ("Chip card", "Please insert card"), "error")),
                            Beep("error"), StartTimer("card", 60, 2)]
    assert state.phase == "PRESENT_CARD" and state.card is None and not state.card_present


def test_swipe_failure_asks_to_swipe_again():
    state, _ = drive(TO_PRESENT)
    after, actions = step(CFG, state, SwipeFailed("unreadable stripe"))
    assert after == state
    assert actions == [Show(Screen(TITLE, ("unreadable stripe", "Swipe again"), "error")),
                       Beep("error")]
    long = "the stripe could not be decoded in either direction at any speed"
    _, actions = step(CFG, state, SwipeFailed(long))
    assert actions[0].screen.lines == (*wrap(long, 2), "Swipe again")


@pytest.mark.parametrize("prefix", [[], keys("1"), TO_READING, TO_CHOICE, TO_PIN, TO_VERIFYING,
                                    TO_AUTH, TO_PRESENT + [Key("CANCEL")],
                                    TO_PIN + [Key("CANCEL"), Key("ENTER")]])
def test_swipes_ignored_outside_present_card(prefix):
    state, _ = drive(prefix)
    for event in (CardSwiped(STRIPE, chip=False), CardSwiped(STRIPE, chip=True), SwipeFailed("x")):
        assert step(CFG, state, event) == (state, []), event


@pytest.mark.parametrize("prefix", [
    TO_READING + [CardRead(TAP), OK],
    TO_PRESENT + [CardSwiped(STRIPE, chip=False), OK],
    TO_READING + [CardReadFailed("chip error", "swipe"), CardSwiped(STRIPE, chip=True), OK],
])
def test_card_removal_does_not_end_pin_entry_of_a_tap_or_swipe(prefix):
    state, _ = drive(prefix)
    assert state.phase == "PIN"
    inserted, actions = step(CFG, state, CardInserted())
    assert inserted == replace(state, card_present=True) and actions == []
    removed, actions = step(CFG, inserted, CardRemoved())
    assert removed == replace(state, card_present=False) and actions == []


def test_tap_result_goes_idle_without_asking_to_remove_the_card():
    state, per_step = drive(TO_READING + [CardRead(TAP, "none"), OK,
                                          AuthResult("declined", "51", "Insufficient funds"),
                                          Key("ENTER")])
    assert state.phase == "IDLE" and per_step[-1] == TO_IDLE


@pytest.mark.parametrize("events, last", [
    (TO_READING + [CardRead(CARD, "signature"), OK], "Sign merchant copy"),
    (TO_READING + [CardRead(TAP, "signature"), OK], "Sign merchant copy"),
    (TO_VERIFYING + [PinVerified(False, 0, "signature")], "Sign merchant copy"),
    (TO_VERIFYING + [PinVerified(False, 0, "none")], "Take receipts"),
    (TO_READING + [CardRead(CARD, "none"), OK], "Take receipts"),
    (TO_VERIFYING + [PinVerified(True)], "Take receipts"),
])
def test_approved_signature_sale_asks_to_sign_the_merchant_copy(events, last):
    state, per_step = drive(events + [AuthResult("approved", "00", auth_code="123456", txn_id=7),
                                      PrintDone(True)])
    assert state.phase == "RESULT"
    assert per_step[-1][0] == Show(approved_screen(last))


def test_signature_sale_with_printer_failure_says_receipt_queued():
    approved = AuthResult("approved", "00", auth_code="123456", txn_id=7)
    state, per_step = drive(TO_READING + [CardRead(CARD, "signature"), OK, approved,
                                          PrintDone(False, "paper out")])
    assert shows(per_step)[-1].lines[-2:] == ("Printer: paper out", "Receipt queued")


def test_config_checks_contactless_limit():
    with pytest.raises(ValueError, match="contactless_limit"):
        SaleConfig(max_amount=100, contactless_limit=-1)


# ---- random event sequences ----

CARDS = st.sampled_from([CARD, TAP, STRIPE, replace(STRIPE, entry_mode=ENTRY_FALLBACK),
                         replace(CARD, entry_mode=ENTRY_CHIP, app_label="")])
TEXT = st.text(max_size=50)
EVENTS = st.one_of(
    st.sampled_from(KEYS + ("F1",)).map(Key),
    st.integers(-2, 20).map(PinLength),
    st.sampled_from([CardInserted(), CardRemoved(), Shutdown()]),
    st.builds(CardRead, CARDS, st.sampled_from(CVMS)),
    st.builds(CardReadFailed, TEXT, st.sampled_from(READ_NEXT)),
    st.builds(AppChoice, st.lists(TEXT, max_size=9).map(tuple)),
    st.builds(PinVerified, st.booleans(), st.none() | st.integers(-1, 15), st.sampled_from(CVMS)),
    st.builds(CardSwiped, CARDS, st.booleans()),
    st.builds(SwipeFailed, TEXT),
    st.builds(ReaderStatus, st.sampled_from(["", "jammed"]) | TEXT),
    st.builds(AuthResult, st.sampled_from(["approved", "declined", "no_response", "not_sent",
                                           "?"]),
              st.text(max_size=3), TEXT, st.text(max_size=20), st.text(max_size=12),
              st.none() | st.integers(1, 9)),
    st.builds(PrintDone, st.booleans(), TEXT),
    st.builds(Timeout, st.sampled_from(["card", "pin", "choice", "result", "entry", "confirm",
                                        "x"]),
              st.integers(0, 40)),
    st.builds(RiskResult, st.sampled_from(["ok", "confirm", "refuse", "?"]), TEXT),
    st.builds(LoginResult, st.booleans(), st.text(max_size=3),
              st.sampled_from(["cashier", "supervisor", "admin", ""]), TEXT,
              st.sampled_from(["confirm", "login"])),
)
PREFIXES = st.sampled_from([[], TO_PRESENT, TO_READING, TO_CHOICE, TO_PIN, TO_VERIFYING, TO_AUTH,
                            TO_CHECKING, TO_SUPERVISOR, TO_MANUAL, TO_EXPIRY])
CONFIGS = st.builds(SaleConfig, max_amount=st.integers(1, 10**12),
                    contactless_limit=st.integers(0, 10**6), fallback=st.booleans(),
                    currency=st.sampled_from([156, 978, 392, 840]))


@settings(max_examples=300, deadline=None)
@given(CONFIGS, PREFIXES, st.lists(EVENTS, max_size=40))
def test_random_event_sequences_never_raise_and_screens_fit(cfg, prefix, events):
    state, _ = start(cfg)
    for event in prefix + events:
        before = state
        state, actions = step(cfg, state, event)  # never raises
        assert state.phase in PHASES and state.token >= before.token
        for action in actions:
            if isinstance(action, Show):
                check_screen(action.screen)
        timers = [a for a in actions if isinstance(a, StartTimer)]
        if timers:
            assert (timers[-1].name, timers[-1].token) == (state.timer, state.token)
        assert all(a.amount == state.amount > 0 for a in actions if isinstance(a, Authorise))
        if any(isinstance(a, (StartPin, VerifyPin, SelectApp)) for a in actions):
            assert not state.stopping


# ---- link status and offline approvals (issue 4) ----

def idle_with(line: str, *extra: str) -> Screen:
    return Screen("KPOS", ("Key in amount", line, *extra))


@pytest.mark.parametrize("link, line", [
    (LinkStatus(True, 0, 0), "ONLINE  queued 0"),
    (LinkStatus(False, 3, 0), "OFFLINE  queued 3"),
    (LinkStatus(None, 1, 0), "CONNECTING  queued 1"),
])
def test_idle_screen_shows_the_link_and_the_queue(link, line):
    state, _ = start(CFG)
    state, actions = step(CFG, state, link)
    assert state.link == link and actions == [Show(idle_with(line))]
    assert step(CFG, state, link) == (state, [])  # the same status again: nothing


def test_alerts_and_reader_fault_share_the_idle_screen():
    state, _ = drive([ReaderStatus("jammed")])
    state, actions = step(CFG, state, LinkStatus(False, 2, 3))
    assert actions == [Show(idle_with("OFFLINE  queued 2", "Reader: jammed", "! 3 alerts: support"))]
    _, actions = step(CFG, state, LinkStatus(False, 2, 1))
    assert actions[0].screen.lines[-1] == "! 1 alert: support"


def test_link_status_during_a_sale_is_kept_for_the_idle_screen():
    state, _ = drive(TO_PIN)
    state, actions = step(CFG, state, LinkStatus(False, 5, 0))
    assert actions == [] and state.phase == "PIN"
    state, per_step = drive([Key("CANCEL"), Key("ENTER"), CardRemoved()], state=state)
    assert state.phase == "IDLE" and Show(idle_with("OFFLINE  queued 5")) in per_step[-1]


def test_training_mode_is_on_the_idle_title_and_survives_a_sale():
    assert idle_screen(SaleState(training=True)).title == "TRAINING"
    assert idle_screen(SaleState(training=True, operator="01")).title == "TRAINING  op 01"
    assert idle_screen(SaleState(operator="01")).title == "KPOS     op 01"
    state, per_step = drive(TO_PRESENT + [Key("CANCEL"), Key("ENTER")],
                            state=SaleState(training=True, operator="01"))
    assert state.phase == "IDLE" and state.training
    assert shows(per_step)[-1].title == "TRAINING  op 01"


@pytest.mark.parametrize("value, key, limit, moved", [
    (12, "3", 999, (123, "key")),
    (123, "4", 999, (123, "error")),  # past the limit: stays
    (0, "0", 999, (0, "")),  # a leading zero: nothing happens
    (123, "BACK", 999, (12, "key")),
    (123, "CLEAR", 999, (0, "key")),
    (0, "BACK", 999, (0, "key")),
    (5, "ENTER", 999, None), (5, "MENU", 999, None),
    (0, "7", 7, (7, "key")), (0, "8", 7, (0, "error")),
])
def test_number_key(value, key, limit, moved):
    assert number_key(value, key, limit) == moved


def test_offline_approval_says_so_on_the_result_screen():
    state, _ = drive(TO_AUTH)
    state, actions = step(CFG, state, AuthResult("approved", code="00", txn_id=7, offline="00"))
    assert state.phase == "PRINTING" and state.offline == "00"
    assert Show(Screen("APPROVED", ("CNY 12.50", "Approved offline", "Printing..."), "ok")) in actions
    state, _ = step(CFG, state, PrintDone(True))
    state, per_step = drive([Key("ENTER"), CardRemoved()], state=state)
    assert state.offline == "" and state.phase == "IDLE"  # not carried into the next sale


def test_wrap_starts_a_new_line_at_a_newline():
    assert wrap("Host unreachable\nNo swipe offline", 2) == ("Host unreachable", "No swipe offline")
    assert wrap("a\nb\nc", 2) == ("a", "b c")


# ---- other kinds (issue 5): begin(), risk check, supervisor confirm, keyed cards, balance ----

VOID_ORIGINAL = OriginalRef(txn_id=3, kind="sale", stan=17, batch=1, rrn="000000000042",
                            date="0514", auth_code="123456", amount=1250,
                            masked_pan="622609******0014")
VOID = TxnSpec("void", 1250, VOID_ORIGINAL)
CASHIER = SaleState(operator="01", role="cashier")
SUPERVISOR = SaleState(operator="07", role="supervisor")


def begun(spec: TxnSpec, state: SaleState = CASHIER, cfg: SaleConfig = CFG):
    state, actions = begin(cfg, state, spec)
    for action in actions:
        if isinstance(action, Show):
            check_screen(action.screen)
    return state, actions


@pytest.mark.parametrize("spec, screen", [
    (VOID, Screen("VOID CNY 12.50", ("Insert or swipe card",))),
    (TxnSpec("balance"), Screen("BALANCE", ("Insert or swipe card",))),
    (TxnSpec("completion_void", 99_999_99),
     Screen("COMPLETION VOID", ("CNY 99999.99", "Insert or swipe card"))),
    (TxnSpec("preauth", 5), Screen("PRE-AUTH CNY 0.05", ("Insert or swipe card",))),
])
def test_begin_names_the_kind_and_amount_and_waits_for_a_card(spec, screen):
    state, actions = begun(spec)
    assert actions == [Show(screen), StartTimer("card", 60, 1)]
    assert (state.phase, state.spec, state.amount) == ("PRESENT_CARD", spec, spec.amount)
    assert (state.operator, state.role) == ("01", "cashier")


def test_begin_reads_a_card_already_in_the_slot():
    state, actions = begun(VOID, replace(CASHIER, card_present=True))
    assert state.phase == "READING" and actions == [Show(READING), ReadCard()]


def test_void_skips_the_pin_and_authorises_the_whole_spec():
    state, _ = begun(VOID)
    state, per_step = drive([CardInserted(), CardRead(CARD, "online_pin"), OK], state)
    assert per_step[-2] == [CheckRisk("void", 1250, ENTRY_CHIP)]
    assert per_step[-1] == [Show(PROCESSING), Authorise("void", 1250, VOID)]
    state, per_step = drive([AuthResult("approved", "00", auth_code="654321", txn_id=4),
                             PrintDone(True)], state)
    assert shows(per_step)[-1] == Screen("VOID APPROVED", ("CNY 12.50", "Auth 654321",
                                                           "Take receipts"), "ok")


@pytest.mark.parametrize("kind, title", [("preauth_cancel", "PRE-AUTH CANCEL OK"),
                                         ("completion", "COMPLETION APPROVED"),
                                         ("repayment", "REPAYMENT APPROVED")])
def test_approved_title_names_the_kind_within_the_lcd(kind, title):
    state, _ = begun(TxnSpec(kind, 1250))
    state, per_step = drive([CardInserted(), CardRead(CARD, "none"), OK,
                             AuthResult("approved", "00", txn_id=4)], state)
    assert shows(per_step)[-1].title == title and Print(4) in per_step[-1]


def test_a_card_other_than_the_originals_is_refused_before_any_check():
    other = replace(CARD, pan="6226090000000022")
    state, _ = begun(VOID)
    state, per_step = drive([CardInserted(), CardRead(other)], state)
    assert state.phase == "RESULT"
    assert per_step[-1][0] == Show(Screen("Wrong card", ("Not the card of", "the original"),
                                          "error"))
    assert not any(isinstance(a, (CheckRisk, Authorise)) for a in flat(per_step))


def test_balance_shows_the_balance_and_prints_nothing():
    state, _ = begun(TxnSpec("balance"))
    state, per_step = drive([CardInserted(), CardRead(CARD), OK], state)
    assert per_step[-2] == [CheckRisk("balance", 0, ENTRY_CHIP)]
    assert shows(per_step)[-1] == Screen("BALANCE", ("Enter PIN", "", "622609******0014"))
    state, per_step = drive(PIN4 + [Key("ENTER")], state)
    assert per_step[-1][-1] == Authorise("balance", 0, TxnSpec("balance"))
    after, actions = step(CFG, state, AuthResult("approved", "00", txn_id=8, balance=123456))
    assert actions == [Beep("ok"), Show(Screen("BALANCE", ("Available", "CNY 1234.56"), "ok")),
                       StartTimer("result", 5, 3)]
    assert after.phase == "RESULT" and not any(isinstance(a, Print) for a in actions)
    _, actions = step(CFG, state, AuthResult("approved", "00", txn_id=8))
    assert Show(Screen("BALANCE", ("No balance given",), "error")) in actions


@pytest.mark.parametrize("risk, screen", [
    (RiskResult("refuse", "Daily limit for swipe reached"),
     Screen("Refused", ("Daily limit for", "swipe reached"), "error")),
    (RiskResult("refuse"), Screen("Refused", ("Risk rules",), "error")),
    (RiskResult("bogus", "?"), Screen("Refused", ("?",), "error")),
])
def test_risk_refusal_shows_why_and_sends_nothing(risk, screen):
    state, per_step = drive(TO_CHECKING + [risk])
    assert state.phase == "RESULT"
    assert per_step[-1] == [Show(screen), Beep("error"), StartTimer("result", 5, 2)]
    assert not any(isinstance(a, (Authorise, StartPin)) for a in flat(per_step))


def sup(*lines: str) -> Screen:
    return Screen("SUPERVISOR", lines)


def test_risk_confirm_by_a_supervisor_then_the_pin():
    state, per_step = drive(TO_CHECKING + [RiskResult("confirm", "5 sales in 10 min")])
    assert state.phase == "SUPERVISOR" and state.timer == "confirm" and not busy(state)
    assert per_step[-1] == [Show(sup("5 sales in 10 min", "Supervisor no.", "",
                                     "ENTER to confirm")), StartTimer("confirm", 60, 2)]
    state, per_step = drive(keys("07") + [Key("ENTER"), PinLength(1), Key("ENTER")], state)
    assert per_step[1][-1] == Show(sup("5 sales in 10 min", "Supervisor no.", "07",
                                       "ENTER to confirm"))
    assert per_step[2] == [Beep("key"), Show(sup("Supervisor no. 07", "Password", "",
                                                 "ENTER to confirm")), StartPin(12)]
    assert per_step[3][-1] == Show(sup("Supervisor no. 07", "Password", "*", "ENTER to confirm"))
    assert per_step[4] == [Show(sup("Checking", "Please wait")), CheckLogin("07", "confirm")]
    assert busy(state)
    state, per_step = drive([LoginResult(True, "07", "admin", purpose="confirm")], state)
    assert per_step[-1] == [CancelTimers()] + pin_entry(3)
    assert state.phase == "PIN" and state.login is None


def test_risk_confirm_skipped_for_a_supervisor_operator():
    state, _ = begun(TxnSpec("sale", 1250), SUPERVISOR)
    state, per_step = drive([CardInserted(), CardRead(CARD), RiskResult("confirm", "velocity")],
                            state)
    assert state.phase == "PIN" and per_step[-1] == pin_entry(2)


@pytest.mark.parametrize("answer, reason", [
    (LoginResult(True, "03", "cashier", purpose="confirm"), "Supervisor only"),
    (LoginResult(False, reason="Wrong password", purpose="confirm"), "Wrong password"),
    (LoginResult(False, reason="Locked 14 min", purpose="confirm"), "Locked 14 min"),
    (LoginResult(False, purpose="confirm"), "Not confirmed"),
])
def test_refused_confirm_shows_the_reason_and_sends_nothing(answer, reason):
    events = TO_CHECKING + [RiskResult("confirm", "velocity")] + CONFIRMED[:-1] + [answer]
    state, per_step = drive(events)
    assert state.phase == "RESULT"
    assert per_step[-1][:3] == [CancelTimers(), Show(Screen("Not confirmed", (reason,), "error")),
                                Beep("error")]
    assert not any(isinstance(a, (Authorise, StartPin)) for a in per_step[-1])


def test_confirm_ignores_a_login_answer_of_another_purpose():
    state, _ = drive(TO_SUPERVISOR + CONFIRMED[:-1])
    assert step(CFG, state, LoginResult(True, "07", "admin", purpose="login")) == (state, [])


@pytest.mark.parametrize("tail, first", [
    ([], []),  # on the number screen
    (keys("07") + [Key("ENTER")], [StopPin()]),  # the password is being keyed
])
def test_confirm_cancel_and_timeout(tail, first):
    state, _ = drive(TO_SUPERVISOR + tail)
    after, actions = step(CFG, state, Key("CANCEL"))
    assert after.phase == "RESULT" and actions[:len(first)] == first
    assert Show(CANCELLED) in actions
    after, actions = step(CFG, state, Timeout("confirm", state.token))
    assert after.phase == "RESULT" and actions[:len(first)] == first
    assert Show(Screen("Timed out", ("No supervisor",), "error")) in actions
    after, actions = step(CFG, state, Shutdown())
    assert after.phase == "IDLE" and actions == first + TO_IDLE


def test_shutdown_while_the_supervisor_is_checked_is_deferred():
    state, _ = drive(TO_SUPERVISOR + CONFIRMED[:-1] + [Shutdown()])
    assert state.stopping and state.phase == "SUPERVISOR"
    state, actions = step(CFG, state, CONFIRMED[-1])
    assert state.phase == "IDLE" and actions == TO_IDLE


def manual(digits: str, note: str = "ENTER to confirm") -> Screen:
    return Screen(TITLE, ("Card no.", digits, note))


def test_keyed_card_by_a_supervisor_operator_needs_no_confirm():
    state, per_step = drive(TO_PRESENT + [Key("MENU")], replace(SUPERVISOR))
    assert state.phase == "MANUAL_PAN"
    assert per_step[-1] == [CancelTimers(), Show(manual("")), StartTimer("entry", 60, 2)]


def test_keyed_card_masks_the_number_checks_luhn_and_expiry_then_authorises_without_pin():
    state, per_step = drive(TO_MANUAL + keys(KEYED[:5]))
    assert shows(per_step)[-1] == manual("*1111")
    state, per_step = drive(keys(KEYED[5:]), state)
    assert shows(per_step)[-1] == manual("************1111")
    assert KEYED not in repr(state) and "411111******1111" in repr(state)
    # a wrong check digit: refused, the digits stay for editing
    bad, actions = step(CFG, replace(state, card=replace(state.card, pan=KEYED[:-1] + "2")),
                        Key("ENTER"))
    assert bad.phase == "MANUAL_PAN"
    assert actions == [Beep("error"), Show(manual("************1112", "Invalid card no."))]
    state, per_step = drive([Key("9"), Key("BACK"), Key("ENTER")] + keys("1330") + [Key("ENTER")],
                            state)
    assert per_step[0][0] == Beep("key") and per_step[1][0] == Beep("key")  # 17 digits, then 16
    assert per_step[2] == [Beep("key"), Show(Screen(TITLE, ("411111******1111", "Expiry MMYY", "",
                                                            "ENTER to confirm")))]
    assert per_step[-1] == [Beep("error"), Show(Screen(TITLE, ("411111******1111", "Expiry MMYY",
                                                               "1330", "Invalid expiry")))]
    state, per_step = drive([Key("CLEAR")] + keys("1230") + [Key("ENTER"), OK], state)
    assert per_step[-2] == [Beep("key"), CancelTimers(), CheckRisk("sale", 1250, "011")]
    assert per_step[-1] == AUTHORISE
    assert state.card.pan == KEYED and state.card.expiry == "3012"
    assert state.card.entry_mode == "011" and state.cvm == "none"


@pytest.mark.parametrize("digits", ["", "411111111111", "4" * 19 + "1"])
def test_keyed_card_number_of_a_wrong_length_refused(digits):
    state, _ = drive(TO_MANUAL + keys(digits))
    after, actions = step(CFG, state, Key("ENTER"))
    assert after.phase == "MANUAL_PAN" and actions[0] == Beep("error")
    assert len(after.card.pan if after.card else "") <= 19


@pytest.mark.parametrize("prefix", [TO_MANUAL + keys("4111"), TO_EXPIRY + keys("12")])
def test_keyed_card_cancel_and_timeout(prefix):
    state, _ = drive(prefix)
    after, actions = step(CFG, state, Key("CANCEL"))
    assert after.phase == "RESULT" and after.card is None and Show(CANCELLED) in actions
    after, actions = step(CFG, state, Timeout("entry", state.token))
    assert after.phase == "RESULT" and after.card is None
    assert Show(Screen("Timed out", ("No card keyed in",), "error")) in actions
    assert step(CFG, state, Timeout("card", state.token)) == (state, [])


def test_menu_key_does_nothing_outside_present_card():
    for prefix in ([], keys("12"), TO_PIN, TO_CHECKING):
        state, _ = drive(prefix)
        assert step(CFG, state, Key("MENU")) == (state, [])


def test_idle_keeps_the_operator_and_shows_it():
    state, _ = begun(TxnSpec("sale", 1250))
    state, actions = step(CFG, state, Key("CANCEL"))
    state, actions = step(CFG, state, Key("ENTER"))
    assert (state.phase, state.operator, state.role, state.spec) == ("IDLE", "01", "cashier",
                                                                     TxnSpec())
    assert Show(Screen("KPOS     op 01", ("Key in amount", "CONNECTING  queued 0"))) in actions


@pytest.mark.parametrize("text, key, limit, amount, expected", [
    ("REFUND", "5", None, 12, [Beep("key"), Show(amount_screen("CNY 1.25", title="REFUND"))]),
    ("QR SALE", "5", 100, 12, [Beep("error"), Show(amount_screen("CNY 0.12", "Max CNY 1.00",
                                                                 "QR SALE"))]),
    ("SALE", "ENTER", None, 12, None),
])
def test_amount_key_is_shared_with_other_titles(text, key, limit, amount, expected):
    result = amount_key(CFG, amount, key, text, limit)
    assert (result[1] if result else None) == expected
