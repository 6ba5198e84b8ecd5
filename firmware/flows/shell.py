"""The terminal's menu shell: operator login, the idle screen, the function menu, data-entry
forms, journal lists and menu tasks, around the card flow (firmware.flows.sale).

Pure functions over immutable values, like the card flow: the app calls `step()` on the
asyncio loop for every event and executes the returned actions in order
(firmware.flows.types). Amounts are int minor units; timeouts are seconds (the card
timeout for a screen waiting for keys, the result timeout for result screens). `step()`
never raises on an event and unexpected events change nothing. Screens fit 20x4; card
numbers appear only masked, and keyed card numbers and payment codes only as their last 4
digits.

While a card transaction runs (phase CARD) every event goes to sale.step; when it emits
Idle() the shell is back at IDLE. LinkStatus/ReaderStatus always reach the card flow's state
(the idle screen shows them). Phases:
  LOGIN    operator number, password on the PIN pad -> CheckLogin -> LoginResult
  IDLE     digits or ENTER start a quick sale; MENU opens the menu; a product barcode
           (BarcodeScanned) opens a basket with that item
  MENU     numbered items, 4 a screen: MENU/ENTER next page, BACK previous, digit picks
  CONFIRM  a supervisor confirms an item above the operator's role (same sub-flow as LOGIN)
  FORM     one field of an item: STAN, RRN, date MMDD, auth code, amount, card to pay
           (keyed or swiped), payment code (scanned or keyed)
  ASK      "ENTER to void", "Settle batch?"
  LIST, DETAIL   journal rows (ListTxns pages, one row, ENTER reprints it)
  RESULT   a task's answer or a refusal's reason, then IDLE (or back to MENU, the basket
           or the tender menu)
The checkout (BASKET, BASKET_MENU, CLEAR_BASKET, NUMBER, SAVING, TENDER, PAYING_CASH,
CASH_PRINTING) is firmware.flows.checkout: `step()` hands those phases' events to its
HANDLERS; the menu's Basket and Cash items and a barcode at IDLE enter it, and RESULT, CONFIRM
and a cancelled or timed-out step go back to it. The state, the config and the moves both
use are in firmware.flows.common (ShellConfig and ShellState are re-exported here).
Busy: FINDING (FindTxn), LISTING (ListTxns), TASK (RunTask, Reprint), QR_WAITING (QrPay),
QR_PRINTING, SAVING (SaveBasket), PAYING_CASH (PayCash), CASH_PRINTING, SWITCHING
(SetTraining), and LOGIN/CONFIRM while the password is checked: a Shutdown there waits for
the answer; elsewhere it returns to rest at once (IDLE, or LOGIN when nobody is logged in)
and emits Idle(). `resting()` tells the app the terminal is at rest.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from firmware.cardsafe import luhn_ok
from firmware.flows import checkout, sale
from firmware.flows.checkout import (
    abort, open_basket, pay_cash, start_scanned, to_basket, to_tender,
)
from firmware.flows.common import (
    ShellConfig, ShellState, Step, arm_timer, cleared, enter, is_timeout, leave_timer, rest,
    to_card, to_login, to_result, wait,
)
from firmware.flows.sale import (
    Login, SaleState, amount_key, amount_screen, edit_beep, edit_digits, idle_screen,
    keyed_card, keyed_line, kind_label, login_abort, login_begin, login_screen, login_step, money,
    outcome_screen, result_title, supervisor_refusal,
)
from firmware.flows.types import (
    DIGITS, LCD_COLS, Action, AuthResult, BarcodeScanned, BasketSaved, Beep, CardInserted,
    CardRemoved, CardSwiped, CodeScanned, Event, FindTxn, Idle, Key, LinkStatus, ListTxns,
    LoginResult, Logout, OpenDrawer, OriginalRef, Print, PrintDone, PrinterStatus, QrPay,
    QrProgress, ReaderStatus, Reprint, RunTask, Screen, SetTraining, Show, Shutdown, TaskDone,
    TrainingSet, TxnFound, TxnPage, TxnSpec, TxnSummary, fit, wrap,
)
from firmware.money import CURRENCIES, currency_alpha, format_amount
from firmware.txnkinds import KINDS, ROLES, role_allows

__all__ = ["ShellConfig", "ShellState", "PHASES", "BUSY_PHASES", "MENUS", "STEPS", "Item",
           "start", "step", "busy", "resting"]

PHASES = ("LOGIN", "IDLE", "CARD", "MENU", "CONFIRM", "FORM", "ASK", "FINDING", "LISTING",
          "LIST", "DETAIL", "TASK", "RESULT", "QR_WAITING", "QR_PRINTING", "BASKET",
          "BASKET_MENU", "CLEAR_BASKET", "NUMBER", "SAVING", "TENDER", "PAYING_CASH",
          "CASH_PRINTING", "SWITCHING")
BUSY_PHASES = frozenset({"FINDING", "LISTING", "TASK", "QR_WAITING", "QR_PRINTING", "SAVING",
                         "PAYING_CASH", "CASH_PRINTING", "SWITCHING"})
PAGE = 4  # menu items and journal rows a screen


# ---- the menu and its items, as data ----

@dataclass(frozen=True)
class Item:
    label: str  # as listed, after its number
    task: str  # a MENUS key (a submenu) or a STEPS/_finish task


def _role(task: str) -> str:
    """The least role that may run a menu task: its kind's, supervisor for settlement."""
    kind = _kind(task)
    if kind in KINDS:
        return KINDS[kind].role
    supervisor = ("settle", "training", "no_sale", "discount")
    return "supervisor" if task in supervisor else {"info": "admin"}.get(task, "cashier")


def _kind(task: str) -> str:
    return {"completion_advice": "completion", "qr": "qr_sale"}.get(task, task)


MENUS: dict[str, tuple[str, tuple[Item, ...]]] = {
    "main": ("MENU", (
        Item("Sale", "sale_menu"), Item("Void", "void"), Item("Refund", "refund"),
        Item("Pre-auth", "preauth_menu"), Item("Balance", "balance"),
        Item("Repayment", "repayment"), Item("QR pay", "qr"), Item("Transactions", "txn_menu"),
        Item("Manager", "manager_menu"))),
    "sale_menu": ("SALE", (Item("Amount", "sale"), Item("Basket", "basket"), Item("Cash", "cash"))),
    "preauth_menu": ("PRE-AUTH", (
        Item("Pre-auth", "preauth"), Item("Cancel", "preauth_cancel"),
        Item("Completion", "completion"), Item("Completion advice", "completion_advice"),
        Item("Completion void", "completion_void"))),
    "txn_menu": ("TRANSACTIONS", (
        Item("Last txns", "last_txns"), Item("Find by STAN", "find_stan"),
        Item("Find by RRN", "find_rrn"), Item("Reprint last", "reprint_last"),
        Item("Reprint by STAN", "reprint_stan"))),
    "manager_menu": ("MANAGER", (
        Item("X report", "x_report"), Item("Settlement", "settle"), Item("Echo test", "echo"),
        Item("Sign-on", "signon"), Item("Sign off", "signoff"), Item("Terminal info", "info"),
        Item("Training mode", "training"), Item("No sale", "no_sale"))),
}

# What each task asks for, in order: a field name (FIELDS, "amount", "pan", "code"), "find"
# (FindTxn by the STAN or RRN keyed) or "ask" (a confirm screen); then `_finish` runs it.
STEPS: dict[str, tuple[str, ...]] = {
    "void": ("stan", "find", "ask"),
    "completion_void": ("stan", "find", "ask"),
    "refund": ("rrn", "date", "find", "amount"),
    "preauth": ("amount",),
    "preauth_cancel": ("auth", "date", "amount"),
    "completion": ("auth", "date", "amount"),
    "completion_advice": ("auth", "date", "amount"),
    "repayment": ("pan", "amount"),
    "qr": ("amount", "code"),
    "cash": ("amount",),
    "find_stan": ("stan", "find"),
    "find_rrn": ("rrn", "find"),
    "reprint_stan": ("stan", "find"),
    "settle": ("ask",),
}


@dataclass(frozen=True)
class Field:
    prompt: str
    min_len: int
    max_len: int


FIELDS = {
    "stan": Field("STAN", 1, 6),
    "rrn": Field("RRN", 12, 12),
    "date": Field("Original date MMDD", 4, 4),
    "auth": Field("Auth code", 6, 6),
    "pan": Field("Card to pay", 13, 19),
    "code": Field("Payment code", 16, 24),
}

_TITLES = {"find_stan": "FIND", "find_rrn": "FIND", "reprint_stan": "REPRINT",
           "reprint_last": "REPRINT", "last_txns": "TRANSACTIONS", "x_report": "X REPORT",
           "settle": "SETTLEMENT", "echo": "ECHO TEST", "signon": "SIGN-ON", "info": "TERMINAL",
           "completion_advice": "COMPLETION ADVICE", "basket": "BASKET",
           "training": "TRAINING MODE", "no_sale": "NO SALE", "discount": "DISCOUNT"}
_CARD_TASKS = frozenset({"void", "completion_void", "refund", "preauth", "preauth_cancel",
                         "completion", "completion_advice", "balance", "repayment"})
_RUN_TASKS = frozenset({"x_report", "settle", "echo", "signon", "info"})  # types.TASKS


def _title(task: str) -> str:
    return _TITLES.get(task) or kind_label(_kind(task))


def start(cfg: ShellConfig) -> Step:
    """The login screen, or idle with the default operator when no login is required."""
    if cfg.require_login:
        return to_login(ShellState())
    card = SaleState(operator=cfg.default_operator, role=cfg.default_role)
    state = ShellState("IDLE", card, cfg.default_operator, cfg.default_role)
    return state, [Show(idle_screen(card))]


def busy(state: ShellState) -> bool:
    """True while an answer is awaited (a card step, a lookup, a task, a QR payment, a
    password check): a Shutdown then waits for it."""
    if state.phase == "CARD":
        return sale.busy(state.sale)
    checking = state.login is not None and state.login.stage == "checking"
    return state.phase in BUSY_PHASES or checking and state.phase in ("LOGIN", "CONFIRM")


def resting(state: ShellState) -> bool:
    """At the idle or login screen with nothing in flight (the app may stop now)."""
    return state.phase in ("IDLE", "LOGIN") and not busy(state)


def step(cfg: ShellConfig, state: ShellState, event: Event) -> Step:
    """The next state and the actions for `event`."""
    if isinstance(event, (LinkStatus, ReaderStatus, PrinterStatus)):
        return _status(cfg, state, event)
    if state.phase == "CARD":
        return _in_card(cfg, state, event)
    if isinstance(event, Shutdown):
        return _shutdown(cfg, state)
    if is_timeout(state, event):
        return _timed_out(cfg, state)
    if state.stopping and _answers(state, event):
        return rest(cfg, state)
    moved = _HANDLERS[state.phase](cfg, state, event)
    if moved is not None:
        return moved
    if isinstance(event, (CardInserted, CardRemoved)):
        present = isinstance(event, CardInserted)
        return replace(state, sale=replace(state.sale, card_present=present)), []
    return state, []


# ---- screens ----

def _menu_screen(state: ShellState) -> Screen:
    title, items = MENUS[state.menu]
    pages = _pages(len(items))
    first = state.page * PAGE
    lines = tuple(fit(f"{n} {item.label}") for n, item in
                  enumerate(items[first:first + PAGE], first + 1))
    return Screen(f"{title} {state.page + 1}/{pages}" if pages > 1 else title, lines)


def _pages(count: int) -> int:
    return max(1, -(-count // PAGE))


def _field_screen(cfg: ShellConfig, state: ShellState) -> Screen:
    name, title = _step_name(state), _title(state.task)
    end = state.note or "ENTER to confirm"
    if name == "amount":
        return amount_screen(cfg.sale, state.amount, state.note, title)
    if name == "pan":
        typed = state.target.pan if state.target else ""
        return Screen(title, ("Card to pay", keyed_line(typed), "or swipe the card", end))
    if name == "code":
        return Screen(title, (money(cfg.sale, state.amount), "Scan payment code",
                              keyed_line(state.entry), end))
    return Screen(title, (FIELDS[name].prompt, state.entry, end))


def _row_money(cfg: ShellConfig, row: TxnSummary) -> str:
    currency = row.currency if row.currency in CURRENCIES else cfg.sale.currency
    return fit(f"{currency_alpha(currency)} {format_amount(row.amount, currency)}")


def _row_line(cfg: ShellConfig, row: TxnSummary) -> str:
    """"000123 SALE    12.50": STAN, kind, amount on one line."""
    currency = row.currency if row.currency in CURRENCIES else cfg.sale.currency
    amount = format_amount(row.amount, currency)
    room = max(1, LCD_COLS - 8 - len(amount))
    return fit(f"{row.stan:06d} {kind_label(row.kind)[:room]:<{room}} {amount}")


def _status_line(cfg: ShellConfig, row: TxnSummary) -> str:
    if row.voided:
        return "VOIDED"
    if row.refunded:
        return fit(f"REFUNDED {format_amount(row.refunded, cfg.sale.currency)}")
    return fit(f"{row.status} OFFLINE" if row.offline else row.status)


def _detail_screen(cfg: ShellConfig, row: TxnSummary) -> Screen:
    when = row.created_at[5:16].replace("T", " ")  # MM-DD HH:MM
    card = row.masked_pan or row.wallet
    lines = (fit(f"{row.stan:06d} {when}"), _row_money(cfg, row), fit(card),
             _status_line(cfg, row))
    return Screen(kind_label(row.kind), lines)


def _list_screen(cfg: ShellConfig, page: TxnPage) -> Screen:
    if not page.rows:
        return Screen("TRANSACTIONS", ("No transactions",))
    rows = page.rows[:PAGE]
    title = fit(f"TXNS {page.offset + 1}-{page.offset + len(rows)}/{page.total}")
    return Screen(title, tuple(_row_line(cfg, row) for row in rows))


def _ask_screen(cfg: ShellConfig, state: ShellState) -> Screen:
    if state.task == "settle":
        return Screen("SETTLEMENT", ("Settle batch?", "ENTER to settle"))
    row = state.found
    lines = (fit(f"{kind_label(row.kind)} {row.stan:06d}"), _row_money(cfg, row),
             fit(row.masked_pan), "ENTER to void")
    return Screen(_title(state.task), lines)


def _qr_screen(cfg: ShellConfig, state: ShellState, text: str) -> Screen:
    return Screen(kind_label("qr_sale"), (money(cfg.sale, state.amount), *wrap(text, 3)))


def _qr_approved(cfg: ShellConfig, state: ShellState, *tail: str) -> Screen:
    lines = (money(cfg.sale, state.amount), *(fit(t) for t in tail))
    return Screen(result_title("qr_sale"), lines, "ok")


def _qr_outcome(result: AuthResult) -> Screen:
    if result.outcome == "no_response":
        return Screen("NOT PAID", wrap(result.message or "No answer from wallet", 3), "error")
    return outcome_screen(result)


_SEARCHING = Screen("Searching", ("Please wait",))
_LOADING = Screen("Transactions", ("Please wait",))


# ---- the moves of the shell alone: menu, card flow, shutdown, timeouts ----

def _to_menu(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    state = replace(cleared(state, "MENU"), menu=state.menu, page=state.page)
    return enter(cfg, state, _menu_screen(state), *first)


def _status(cfg: ShellConfig, state: ShellState, event: Event) -> Step:
    card, actions = sale.step(cfg.sale, state.sale, event)
    if state.phase not in ("IDLE", "CARD"):  # the idle screen is not showing
        actions = [a for a in actions if not isinstance(a, Show)]
    return replace(state, sale=card), actions


def _in_card(cfg: ShellConfig, state: ShellState, event: Event) -> Step:
    """The card flow's step; when it ends a kept basket's card part that was not approved
    (declined, not sent, cancelled), the tender menu shows what is still due instead of
    idle."""
    card, actions = sale.step(cfg.sale, state.sale, event)
    stopping = state.sale.stopping or isinstance(event, Shutdown)
    approved = (isinstance(event, AuthResult) and event.outcome == "approved"
                and state.sale.phase == "AUTHORISING")
    state = replace(state, sale=card, paid=state.paid or approved)
    if Idle() not in actions:
        return state, actions
    if state.basket_id is None or state.paid or stopping:
        return cleared(state, "IDLE"), actions
    kept = [a for a in actions if not isinstance(a, (Show, Idle))]
    return to_tender(cfg, state, *kept, note="Card not paid")


def _shutdown(cfg: ShellConfig, state: ShellState) -> Step:
    if busy(state):
        return replace(state, stopping=True), []
    if state.phase == "IDLE":
        return state, [Idle()]
    return rest(cfg, state)


def _answers(state: ShellState, event: Event) -> bool:
    """`event` is the answer a busy phase (other than a payment or the training switch:
    their handlers finish them) waits for."""
    wanted = {"FINDING": TxnFound, "LISTING": TxnPage, "TASK": TaskDone,
              "SAVING": BasketSaved}.get(state.phase)
    if wanted is not None:
        return isinstance(event, wanted)
    login = state.login
    return (state.phase in ("LOGIN", "CONFIRM") and login is not None
            and login.stage == "checking" and isinstance(event, LoginResult)
            and event.purpose == login.purpose)


def _timed_out(cfg: ShellConfig, state: ShellState) -> Step:
    if state.phase == "LOGIN":
        return to_login(state, "Timed out", *login_abort(state.login))
    if state.phase == "CONFIRM":
        return _back_to_menu(cfg, state, *login_abort(state.login))
    if state.phase == "RESULT":
        return _leave_result(cfg, state)
    return abort(cfg, state)


def _back_to_menu(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    """A supervisor's confirm given up: back to the basket (a discount), else the menu."""
    if state.cart is not None:
        return to_basket(cfg, state, *first)
    return _to_menu(cfg, state, *first)


# ---- login, idle, menu, supervisor confirm ----

def _on_login(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    moved = login_step(state.login, event) if state.login else None
    if moved is None:
        return None
    login, actions = moved
    if login.stage == "cancelled":
        return to_login(state, "", *actions)
    if login.stage == "password" and state.login.stage == "number":
        state, timer = arm_timer(cfg, state, cfg.sale.pin_timeout)
        actions = [*actions, timer]
    if login.stage != "done":
        return _login_moved(state, login, actions)
    result = login.result
    if result.ok and result.role in ROLES:
        operator = result.operator or login.number
        card = replace(state.sale, operator=operator, role=result.role)
        return rest(cfg, replace(state, operator=operator, role=result.role, sale=card, login=None))
    reason = result.reason or ("Unknown role" if result.ok else "Login failed")
    return to_login(state, reason, Beep("error"))


def _login_moved(state: ShellState, login: Login, actions: list[Action]) -> Step:
    """The login sub-flow moved on; its timer stops while the password is checked."""
    state = replace(state, login=login)
    if login.stage != "checking":
        return state, actions
    state, cancel = leave_timer(state)
    return state, [*cancel, *actions]


def _on_idle(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event == Key("MENU"):
        return _to_menu(cfg, replace(state, menu="main", page=0), Beep("key"))
    if isinstance(event, BarcodeScanned):
        return start_scanned(cfg, state, event.code)
    card, actions = sale.step(cfg.sale, state.sale, event)  # a quick sale, card tracking
    return replace(state, sale=card, phase="IDLE" if card.phase == "IDLE" else "CARD"), actions


def _on_menu(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, Key):
        return None
    items = MENUS[state.menu][1]
    key = event.key
    if key in ("MENU", "ENTER"):
        page = (state.page + 1) % _pages(len(items))
        return _to_menu(cfg, replace(state, page=page), Beep("key"))
    if key == "BACK":
        if state.page:
            return _to_menu(cfg, replace(state, page=state.page - 1), Beep("key"))
        if state.menu != "main":
            return _to_menu(cfg, replace(state, menu="main", page=0), Beep("key"))
        return state, [Beep("error")]
    if key == "CANCEL":
        return rest(cfg, state)
    if key in DIGITS:
        number = int(key)
        if not 1 <= number <= len(items):
            return state, [Beep("error")]
        return _pick(cfg, state, items[number - 1])
    return None


def _pick(cfg: ShellConfig, state: ShellState, item: Item) -> Step:
    if item.task in MENUS:
        return _to_menu(cfg, replace(state, menu=item.task, page=0), Beep("key"))
    if role_allows(state.role, _role(item.task)):
        return _run(cfg, state, item.task)
    login, _ = login_begin("confirm", item.label)
    state = replace(state, phase="CONFIRM", task=item.task, login=login, at=0, found=None)
    return enter(cfg, state, login_screen(login), Beep("key"))


def _on_confirm(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    moved = login_step(state.login, event) if state.login else None
    if moved is None:
        return None
    login, actions = moved
    if login.stage == "cancelled":
        return _back_to_menu(cfg, state, *actions)
    if login.stage != "done":
        return _login_moved(state, login, actions)
    refusal = supervisor_refusal(login.result, _role(state.task))
    state = replace(state, login=None)
    if refusal:
        refused = Screen("Not allowed", wrap(refusal, 3), "error")
        back = "BASKET" if state.cart is not None else "MENU"
        return to_result(cfg, replace(state, back=back, pending=None), refused)
    if state.pending is not None:  # a discount over the limits, confirmed
        return to_basket(cfg, replace(state, cart=state.pending), Beep("ok"))
    if state.at:  # a void picked from the transaction list: on to its confirm screen
        return _do(cfg, state)
    return _run(cfg, state, state.task)


def _on_result(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event in (Key("ENTER"), Key("CANCEL")):
        return _leave_result(cfg, state)
    return None


def _leave_result(cfg: ShellConfig, state: ShellState) -> Step:
    if state.back == "MENU":
        return _to_menu(cfg, state)
    if state.back == "BASKET":
        return to_basket(cfg, state)
    if state.back == "TENDER":
        return to_tender(cfg, state)
    return rest(cfg, state)


# ---- running a menu task: its steps (fields, lookup, ask), then _finish ----

def _run(cfg: ShellConfig, state: ShellState, task: str) -> Step:
    state = replace(cleared(state, "MENU"), menu=state.menu, page=state.page, task=task,
                    timer=state.timer)
    return _do(cfg, state, Beep("key"))


def qr_code_field(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    """The QR task from its payment-code field, for `state.amount` (the checkout's QR
    tender)."""
    return _do(cfg, replace(state, task="qr", at=STEPS["qr"].index("code")), *first)


def _step_name(state: ShellState) -> str:
    steps = STEPS.get(state.task, ())
    return steps[state.at] if state.at < len(steps) else ""


def _next(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    return _do(cfg, replace(state, at=state.at + 1, note=""), *first)


def _do(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    name = _step_name(state)
    if not name:
        return _finish(cfg, state, *first)
    if name == "find":
        by = "stan" if _value(state, "stan") else "rrn"
        return wait(state, "FINDING", _SEARCHING, FindTxn(by, _value(state, by)), *first)
    if name == "ask":
        return enter(cfg, replace(state, phase="ASK"), _ask_screen(cfg, state), *first)
    state = replace(state, phase="FORM", entry="", limit=_amount_limit(cfg, state))
    return enter(cfg, state, _field_screen(cfg, state), *first)


def _value(state: ShellState, name: str) -> str:
    return dict(state.values).get(name, "")


def _amount_limit(cfg: ShellConfig, state: ShellState) -> int:
    limit = cfg.sale.max_amount
    if state.task == "qr":
        return min(limit, cfg.wallet_limit)
    if state.task == "refund" and state.found is not None:
        return min(limit, state.found.amount - state.found.refunded)
    return limit


def _finish(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    task = state.task
    state, cancel = leave_timer(state)
    if task == "sale":  # the card flow's own amount screen (it beeps for the key)
        return to_card(cfg, state, sale.step(cfg.sale, state.sale, Key("ENTER")), *cancel)
    first = (*first, *cancel)
    if task in _CARD_TASKS:
        return to_card(cfg, state, sale.begin(cfg.sale, state.sale, _spec(state)), *first)
    if task == "qr":
        state, code = replace(state, phase="QR_WAITING", entry=""), state.entry
        screen = _qr_screen(cfg, state, "Waiting for payment")
        return state, [*first, Show(screen), QrPay(state.amount, code, state.basket_id)]
    if task == "cash":
        return pay_cash(cfg, state, *first)
    if task == "basket":
        return open_basket(cfg, state, *first)
    if task == "training":
        switch = SetTraining(not state.sale.training)
        return wait(state, "SWITCHING", Screen("TRAINING MODE", ("Please wait",)), switch, *first)
    if task == "no_sale":
        return to_result(cfg, state, Screen("NO SALE", ("Drawer open",), "ok"), *first,
                         OpenDrawer())
    if task in ("find_stan", "find_rrn"):
        return enter(cfg, replace(state, phase="DETAIL"), _detail_screen(cfg, state.found), *first)
    if task in ("reprint_stan", "reprint_last"):
        txn_id = state.found.txn_id if state.found else None
        return wait(state, "TASK", Screen("REPRINT", ("Printing...",)), Reprint(txn_id), *first)
    if task == "last_txns":
        return wait(state, "LISTING", _LOADING, ListTxns(0, PAGE), *first)
    if task in _RUN_TASKS:
        return wait(state, "TASK", Screen(_title(task), ("Please wait",)), RunTask(task), *first)
    if task == "signoff":
        out = replace(state, operator="", role="", sale=replace(state.sale, operator="", role=""))
        return to_login(cleared(out, "LOGIN"), "", *first, Logout())
    return rest(cfg, state)


def _spec(state: ShellState) -> TxnSpec:
    """The card transaction the form describes."""
    task, row = state.task, state.found
    kind = _kind(task)
    if task in ("void", "completion_void"):
        return TxnSpec(kind, row.amount, _original(row))
    if task == "refund":
        keyed = OriginalRef(rrn=_value(state, "rrn"), date=_value(state, "date"))
        return TxnSpec(kind, state.amount, _original(row) if row else keyed)
    if task in ("preauth_cancel", "completion", "completion_advice"):
        original = OriginalRef(kind="preauth", date=_value(state, "date"),
                               auth_code=_value(state, "auth"))
        return TxnSpec(kind, state.amount, original, advice=task == "completion_advice")
    return TxnSpec(kind, state.amount, target=state.target)


def _original(row: TxnSummary) -> OriginalRef:
    date = row.created_at[5:7] + row.created_at[8:10]  # MMDD of the ISO local time
    return OriginalRef(txn_id=row.txn_id, kind=row.kind, stan=row.stan, batch=row.batch,
                       rrn=row.rrn, date=date, auth_code=row.auth_code, amount=row.amount,
                       masked_pan=row.masked_pan)


# ---- forms ----

def _on_form(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    name = _step_name(state)
    if event == Key("CANCEL"):
        return abort(cfg, state)
    if name == "amount":
        return _amount_field(cfg, state, event)
    if name == "pan" and isinstance(event, CardSwiped):
        return _next(cfg, replace(state, target=event.card), Beep("ok"))
    if name == "code" and isinstance(event, CodeScanned):
        return _field_done(cfg, replace(state, entry=event.code), name, event.code)
    if not isinstance(event, Key):
        return None
    typed = (state.target.pan if state.target else "") if name == "pan" else state.entry
    if event.key == "ENTER":
        return _field_done(cfg, state, name, typed)
    edited = edit_digits(typed, event.key, FIELDS[name].max_len)
    if edited is None:
        return None
    if name == "pan":
        state = replace(state, target=keyed_card(edited) if edited else None, note="")
    else:
        state = replace(state, entry=edited, note="")
    return state, [edit_beep(typed, edited), Show(_field_screen(cfg, state))]


def _field_done(cfg: ShellConfig, state: ShellState, name: str, typed: str) -> Step:
    refusal = _refusal(name, typed)
    if refusal:
        state = replace(state, note=refusal)
        return state, [Beep("error"), Show(_field_screen(cfg, state))]
    if name not in ("pan", "code"):  # a card number or payment code is never kept as text
        state = replace(state, values=(*state.values, (name, typed)))
    return _next(cfg, state, Beep("key"))


def _refusal(name: str, typed: str) -> str:
    """Why a field's value is refused ("" when it is fine)."""
    spec = FIELDS[name]
    if name == "pan" and not (spec.min_len <= len(typed) <= spec.max_len and luhn_ok(typed)):
        return "Invalid card no."
    if name == "code" and not (spec.min_len <= len(typed) <= spec.max_len and typed.isdigit()):
        return "Invalid code"
    if not spec.min_len <= len(typed) <= spec.max_len:
        return f"{spec.max_len} digits" if spec.min_len == spec.max_len else \
            f"{spec.min_len}-{spec.max_len} digits"
    if name == "date" and not ("01" <= typed[:2] <= "12" and "01" <= typed[2:] <= "31"):
        return "Invalid date"
    return ""


def _amount_field(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event == Key("ENTER"):
        return _next(cfg, state, Beep("key")) if state.amount else (state, [Beep("error")])
    if not isinstance(event, Key):
        return None
    edited = amount_key(cfg.sale, state.amount, event.key, _title(state.task), state.limit)
    if edited is None:
        return None
    amount, actions = edited
    return replace(state, amount=amount, note=""), actions


def _on_ask(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event == Key("ENTER"):
        return _next(cfg, state, Beep("key"))
    if event == Key("CANCEL"):
        return rest(cfg, state)
    return None


# ---- lookups, lists, tasks ----

def _on_finding(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, TxnFound):
        return None
    refusal = _found_refusal(state.task, event)
    if refusal:
        return to_result(cfg, state, Screen(_title(state.task), wrap(refusal, 3), "error"))
    return _next(cfg, replace(state, found=event.summary))


def _found_refusal(task: str, found: TxnFound) -> str:
    """Why the row found cannot be used by `task` ("" when it can)."""
    row = found.summary
    if row is None:  # a refund of another terminal's sale: the host decides
        return "" if task == "refund" else (found.reason or "Not found")
    if task not in ("void", "completion_void", "refund"):
        return ""
    verb = "refund" if task == "refund" else "void"
    allowed = ("completion",) if task == "completion_void" else ("sale", "completion")
    if row.kind not in allowed:
        return f"Cannot {verb} {kind_label(row.kind)}"
    if row.status != "APPROVED":
        return f"Cannot {verb}: {row.status.lower()}"
    if row.voided:
        return "Already voided"
    if task == "refund" and row.amount - row.refunded <= 0:
        return "Nothing left to refund"
    return ""


def _on_listing(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, TxnPage):
        return None
    return _show_list(cfg, replace(state, rows=event))


def _show_list(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    return enter(cfg, replace(state, phase="LIST"), _list_screen(cfg, state.rows), *first)


def _on_list(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, Key):
        return None
    page, key = state.rows, event.key
    if key in ("ENTER", "MENU", "BACK"):
        offset = page.offset + (-PAGE if key == "BACK" else PAGE)
        if not 0 <= offset < page.total:
            return state, [Beep("error")]
        return wait(state, "LISTING", _LOADING, ListTxns(offset, PAGE), Beep("key"))
    if key == "CANCEL":
        return rest(cfg, state)
    if key in DIGITS and 1 <= int(key) <= min(len(page.rows), PAGE):
        row = page.rows[int(key) - 1]
        state = replace(state, phase="DETAIL", found=row, back="LIST")
        return enter(cfg, state, _detail_screen(cfg, row), Beep("key"))
    return state, [Beep("error")] if key in DIGITS else []


def _on_detail(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event == Key("MENU") and state.back == "LIST":
        return _void_from_list(cfg, state)
    if event == Key("ENTER"):
        reprint = Reprint(state.found.txn_id)
        return wait(state, "TASK", Screen("REPRINT", ("Printing...",)), reprint, Beep("key"))
    if event in (Key("CANCEL"), Key("BACK")):
        return _show_list(cfg, state, Beep("key")) if state.back == "LIST" else rest(cfg, state)
    return None


def _void_from_list(cfg: ShellConfig, state: ShellState) -> Step:
    """MENU on a listed sale or completion: void it (its confirm screen, after a
    supervisor's password when the operator is a cashier)."""
    row = state.found
    task = "completion_void" if row.kind == "completion" else "void"
    refusal = _found_refusal(task, TxnFound(row))
    if refusal:
        return to_result(cfg, replace(state, back="LIST"),
                         Screen("Cannot void", wrap(refusal, 3), "error"))
    ready = replace(state, task=task, values=(("stan", str(row.stan)),),
                    at=STEPS[task].index("ask"))
    if role_allows(state.role, _role(task)):
        return _do(cfg, ready, Beep("key"))
    login, _ = login_begin("confirm", kind_label(task))
    return enter(cfg, replace(ready, phase="CONFIRM", login=login), login_screen(login),
                 Beep("key"))


def _on_task(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, TaskDone):
        return None
    lines = tuple(fit(line) for line in event.lines[:4])
    screen = Screen(fit(event.title), lines, "ok" if event.ok else "error")
    return to_result(cfg, replace(state, back="IDLE"), screen)


# ---- QR payment ----

def _on_qr_waiting(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if isinstance(event, QrProgress):
        return state, [Show(_qr_screen(cfg, state, event.text))]
    if not isinstance(event, AuthResult):
        return None
    if event.outcome != "approved":  # a basket's tender menu comes back after the result
        return to_result(cfg, state, _qr_outcome(event))
    state = replace(state, back="IDLE")
    if event.txn_id is None:
        return to_result(cfg, state, _qr_approved(cfg, state, "No receipt"), Beep("ok"))
    state = replace(state, phase="QR_PRINTING")
    return state, [Show(_qr_approved(cfg, state, "Printing...")), Beep("ok"), Print(event.txn_id)]


def _on_qr_printing(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, PrintDone):
        return None
    if event.ok:
        return to_result(cfg, state, _qr_approved(cfg, state, "Take receipts"))
    tail = (f"Printer: {event.detail or 'error'}", "Receipt queued")
    return to_result(cfg, state, _qr_approved(cfg, state, *tail), Beep("error"))


# ---- training mode ----

def _on_switching(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, TrainingSet):
        return None
    state = replace(state, sale=replace(state.sale, training=event.on))
    if not event.reason:
        return rest(cfg, state, Beep("ok"))
    lines = (*wrap(event.reason, 3), f"Training {'ON' if event.on else 'OFF'}")
    return to_result(cfg, replace(state, back="IDLE"), Screen("TRAINING MODE", lines, "error"))


_HANDLERS = {
    "LOGIN": _on_login,
    "IDLE": _on_idle,
    "MENU": _on_menu,
    "CONFIRM": _on_confirm,
    "FORM": _on_form,
    "ASK": _on_ask,
    "FINDING": _on_finding,
    "LISTING": _on_listing,
    "LIST": _on_list,
    "DETAIL": _on_detail,
    "TASK": _on_task,
    "RESULT": _on_result,
    "QR_WAITING": _on_qr_waiting,
    "QR_PRINTING": _on_qr_printing,
    "SWITCHING": _on_switching,
    **checkout.HANDLERS,
}
