"""The menu shell's state and config, and the moves the shell (firmware.flows.shell) and
the checkout (firmware.flows.checkout) share: the shell timer, busy waits, rest, login,
result screens and handing over to the card flow.

Pure functions over immutable values on the asyncio loop, returning (state, actions) like
the flows (firmware.flows.types). The shell's one timer is named TIMER; its token is
SaleState.token, so a stale Timeout is ignored. Seconds for timeouts, int minor units for
amounts.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from firmware.basket import Basket, Catalog
from firmware.emv.card import CardData
from firmware.flows.sale import Login, SaleConfig, SaleState, idle_screen, login_abort, login_begin
from firmware.flows.types import (
    Action, Beep, CancelTimers, Event, Idle, Screen, Show, StartTimer, Timeout, TxnPage,
    TxnSummary,
)
from firmware.txnkinds import ROLES

__all__ = ["ShellConfig", "ShellState", "Step", "TIMER", "arm_timer", "leave_timer",
           "is_timeout", "enter", "wait", "cleared", "rest", "to_login", "to_result", "to_card"]

TIMER = "shell"  # the name of the shell's timer; its token comes from SaleState.token

Step = tuple["ShellState", list[Action]]


@dataclass(frozen=True)
class ShellConfig:
    sale: SaleConfig
    wallet_limit: int  # minor units, the largest QR payment
    require_login: bool = True
    default_operator: str = "01"  # the operator when no login is required
    default_role: str = "cashier"
    catalog: Catalog | None = None  # the basket's products ([basket] products); None: no basket
    discount_percent: int = 10  # a basket discount above this percent needs a supervisor
    discount_amount: int = 5_000  # minor units: a discount above this needs a supervisor

    def __post_init__(self) -> None:
        if not isinstance(self.wallet_limit, int) or self.wallet_limit <= 0:
            raise ValueError(f"ShellConfig: bad wallet_limit: {self.wallet_limit!r}")
        if self.default_role not in ROLES:
            raise ValueError(f"ShellConfig: bad default_role: {self.default_role!r}")
        if not 0 <= self.discount_percent <= 100:
            raise ValueError(f"ShellConfig: bad discount_percent: {self.discount_percent!r}")
        if self.discount_amount < 0:
            raise ValueError(f"ShellConfig: bad discount_amount: {self.discount_amount!r}")


@dataclass(frozen=True)
class ShellState:
    phase: str = "LOGIN"
    sale: SaleState = SaleState()  # the card flow (IDLE unless phase is CARD)
    operator: str = ""  # logged in ("" = nobody)
    role: str = ""
    timer: str = ""  # TIMER while a shell timer runs (its token is sale.token)
    stopping: bool = False  # Shutdown arrived in a busy phase
    login: Login | None = None  # LOGIN and CONFIRM
    menu: str = "main"
    page: int = 0  # menu page
    task: str = ""  # the menu item being run
    at: int = 0  # index in STEPS[task] of the step in progress
    entry: str = field(default="", repr=False)  # digits of the field (a payment code too)
    note: str = ""  # why the field's last ENTER was refused
    amount: int = 0  # minor units keyed in the amount field
    limit: int = 0  # the largest amount the amount field takes
    values: tuple[tuple[str, str], ...] = ()  # fields done: (name, digits)
    found: TxnSummary | None = None  # the original (or the row to show)
    target: CardData | None = None  # the card being paid (repayment); its repr is masked
    rows: TxnPage | None = None  # the journal page listed
    back: str = "IDLE"  # where RESULT and DETAIL lead: IDLE, MENU, LIST, BASKET or TENDER
    # the checkout: `amount` and `limit` also hold the NUMBER being keyed
    asking: str = ""  # NUMBER: which number (a NUMBERS key)
    cart: Basket | None = None  # the basket being built or paid
    pending: Basket | None = None  # the basket with a discount a supervisor must confirm
    basket_id: int | None = None  # the kept basket being paid (from TENDER on)
    due: int = 0  # minor units still to pay (a kept basket, or a cash sale)
    cash: int = 0  # minor units being paid in cash (all that is due, or the cash part)
    change: int = 0  # minor units of change for the last cash payment
    paid: bool = False  # the card paying a kept basket was approved


def arm_timer(cfg: ShellConfig, state: ShellState, seconds: float) -> tuple[ShellState, StartTimer]:
    token = state.sale.token + 1
    state = replace(state, timer=TIMER, sale=replace(state.sale, token=token))
    return state, StartTimer(TIMER, seconds, token)


def leave_timer(state: ShellState) -> tuple[ShellState, list[Action]]:
    if not state.timer:
        return state, []
    return replace(state, timer=""), [CancelTimers()]


def is_timeout(state: ShellState, event: Event) -> bool:
    return (isinstance(event, Timeout) and event.name == TIMER == state.timer
            and event.token == state.sale.token)


def enter(cfg: ShellConfig, state: ShellState, screen: Screen, *first: Action) -> Step:
    """Show an interactive screen with a fresh timer (the card timeout)."""
    state, timer = arm_timer(cfg, state, cfg.sale.card_timeout)
    return state, [*first, Show(screen), timer]


def wait(state: ShellState, phase: str, screen: Screen, ask: Action, *first: Action) -> Step:
    """Go busy until `ask` is answered."""
    state, cancel = leave_timer(replace(state, phase=phase))
    return state, [*first, *cancel, Show(screen), ask]


def cleared(state: ShellState, phase: str) -> ShellState:
    return ShellState(phase, state.sale, state.operator, state.role)


def rest(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    """Back to the idle screen (the login screen when nobody is logged in)."""
    first = (*login_abort(state.login), *first)
    if cfg.require_login and not state.operator:
        state, shown = to_login(cleared(state, "LOGIN"))
        return state, [*first, CancelTimers(), *shown, Idle()]
    state = cleared(state, "IDLE")
    return state, [*first, CancelTimers(), Show(idle_screen(state.sale)), Idle()]


def to_login(state: ShellState, note: str = "", *first: Action) -> Step:
    login, shown = login_begin("login", note)
    state, cancel = leave_timer(replace(state, phase="LOGIN", login=login))
    return state, [*first, *cancel, *shown]


def to_result(cfg: ShellConfig, state: ShellState, screen: Screen, *first: Action) -> Step:
    if state.stopping:
        return rest(cfg, state)
    state = replace(state, phase="RESULT", login=None)
    state, timer = arm_timer(cfg, state, cfg.sale.result_timeout)
    beep = [Beep("error")] if screen.tone == "error" else []
    return state, [*first, Show(screen), *beep, timer]


def to_card(cfg: ShellConfig, state: ShellState, moved: tuple[SaleState, list[Action]],
            *first: Action) -> Step:
    """The card flow took over (quick sale or begin())."""
    card, actions = moved
    return replace(state, phase="CARD", sale=card), [*first, *actions]
