"""The card transaction flow (amount, card read, risk check, cardholder verification,
authorisation, receipt) as a pure state machine, for every card kind of firmware.txnkinds.

Pure functions over immutable values; no I/O, no clock, never blocks. The app (through
firmware.flows.shell) calls `step()` on the asyncio loop for each event and executes the
returned actions in order (firmware.flows.types). Amounts are int minor units of
`cfg.currency`; timeouts are seconds. The flow emits every beep, key clicks included, and
every screen; a screen shows the PAN only masked (`CardData.masked_pan`, or "*" for all but
the last 4 digits of a keyed one). Unexpected events leave the state unchanged and return
no actions; `step()` never raises on an event.

A transaction is a `TxnSpec` (kind, amount, original, repayment target): a quick sale from
idle keys its amount here (spec "sale"); the menu shell starts any other kind with
`begin()`. Phases: IDLE -> AMOUNT -> PRESENT_CARD -> READING [-> CHOOSE_APP -> READING] ->
CHECKING [-> SUPERVISOR] -> PIN [-> VERIFYING (offline PIN)] -> AUTHORISING -> PRINTING ->
RESULT -> REMOVE_CARD -> IDLE. A swipe goes PRESENT_CARD -> CHECKING; the MENU key there
keys the card in (MANUAL_PAN -> MANUAL_EXPIRY -> CHECKING, no PIN; a supervisor confirms
first unless the operator is one). CHECKING waits for the limits and velocity rules
(CheckRisk -> RiskResult: go on, refuse, or a supervisor confirms). Kinds whose card is
"nopin" (void, refund, completion ...) and keyed cards skip the PIN; CVM
"signature"/"none" too. A failed chip read (CardReadFailed next="swipe", with
`cfg.fallback`) or a refused tap (next="insert") goes back to PRESENT_CARD. READING,
CHECKING, VERIFYING, AUTHORISING, PRINTING and SUPERVISOR while its login check runs are
busy: a Shutdown there is remembered and applied when the step finishes. An approved
balance inquiry shows the balance and prints nothing.

Events: keys and PinLength; CardInserted/CardRemoved (a tapped or swiped card is not held
by the reader, so its removal never ends the sale); CardRead, CardReadFailed, AppChoice,
PinVerified from the reader worker; CardSwiped/SwipeFailed from the stripe reader;
RiskResult; LoginResult (purpose "confirm"); ReaderStatus in any phase (stored, shown on
the idle and present-card screens); LinkStatus in any phase (stored, shown on the idle
screen: ONLINE/OFFLINE, queued items, operator alerts); AuthResult (an offline approval
says so on the result screen), PrintDone, Timeout, Shutdown.

Shared with the menu shell: the amount and number entry (`amount_key`, `number_key`,
`amount_screen`), digit editing (`edit_digits`, `edit_beep`), keyed cards (`keyed_card`,
`keyed_line`) and the operator number + password sub-flow (`Login`, `login_begin`,
`login_step`) used for the login and for a supervisor's confirmation. `SaleState.training`
(set by the shell) only changes the idle screen's title.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from firmware.cardsafe import luhn_ok
from firmware.emv.card import (
    CardData, ENTRY_CHIP, ENTRY_CONTACTLESS, ENTRY_FALLBACK, ENTRY_MANUAL,
)
from firmware.flows.types import (
    DIGITS, LCD_COLS, LCD_ROWS, Action, AppChoice, AuthResult, Authorise, Beep, CancelTimers,
    CardInserted, CardRead, CardReadFailed, CardRemoved, CardSwiped, CheckLogin, CheckRisk,
    Event, Idle, Key, LinkStatus, LoginResult, PinLength, PinVerified, Print, PrintDone,
    PrinterStatus, ReadCard, ReaderStatus, RiskResult, Screen, SelectApp, Show, Shutdown,
    StartPin, StartTimer, StopPin, SwipeFailed, Timeout, TxnSpec, VerifyPin, fit, wrap,
)
from firmware.money import CURRENCIES, currency_alpha, format_amount
from firmware.txnkinds import KINDS, role_allows

__all__ = ["SaleConfig", "SaleState", "PHASES", "BUSY_PHASES", "start", "step",
           "busy", "begin", "idle_screen", "amount_screen", "amount_key", "outcome_screen",
           "result_title", "kind_label", "money", "number_key", "edit_digits", "edit_beep",
           "keyed_card", "keyed_line", "Login", "login_begin", "login_step", "login_abort",
           "login_screen", "supervisor_refusal", "PASSWORD_MAX"]

PHASES = ("IDLE", "AMOUNT", "PRESENT_CARD", "MANUAL_PAN", "MANUAL_EXPIRY", "READING",
          "CHOOSE_APP", "CHECKING", "SUPERVISOR", "PIN", "VERIFYING", "AUTHORISING", "PRINTING",
          "RESULT", "REMOVE_CARD")
BUSY_PHASES = frozenset({"READING", "CHECKING", "VERIFYING", "AUTHORISING", "PRINTING"})
PAN_MIN, PAN_MAX = 13, 19  # digits of a keyed card number
PASSWORD_MAX = 12  # digits of an operator password on the PIN pad

Step = tuple["SaleState", list[Action]]


@dataclass(frozen=True)
class SaleConfig:
    max_amount: int  # minor units, largest amount the keypad accepts
    currency: int = 156  # ISO 4217 numeric
    card_timeout: float = 60  # seconds waiting for a card (and for a keyed card)
    pin_timeout: float = 60  # seconds for the whole PIN entry (app choice, supervisor confirm)
    result_timeout: float = 5  # seconds a result stays before moving on
    pin_min: int = 4
    pin_max: int = 12
    contactless_limit: int = 0  # minor units; taps are offered up to it, 0 = never
    fallback: bool = True  # a swipe is allowed after a failed chip read

    def __post_init__(self) -> None:
        amount_ok = isinstance(self.max_amount, int) and self.max_amount > 0
        _check(amount_ok, "max_amount", self.max_amount)
        _check(self.currency in CURRENCIES, "currency", self.currency)
        for name in ("card_timeout", "pin_timeout", "result_timeout"):
            _check(getattr(self, name) > 0, name, getattr(self, name))
        pins = (self.pin_min, self.pin_max)
        _check(4 <= self.pin_min <= self.pin_max <= 12, "pin_min/pin_max", pins)
        limit_ok = isinstance(self.contactless_limit, int) and self.contactless_limit >= 0
        _check(limit_ok, "contactless_limit", self.contactless_limit)


def _check(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise ValueError(f"SaleConfig: bad {name}: {value!r}")


# ---- operator number and password: a login, or a supervisor confirming one step ----

@dataclass(frozen=True)
class Login:
    """An operator number and password being keyed. The password digits stay in the PIN
    pad (StartPin); only their count is here. Stages: number -> password -> checking ->
    done (`result` holds the LoginResult), or cancelled."""

    purpose: str = "login"  # CheckLogin.purpose: "login" | "confirm"
    stage: str = "number"
    number: str = ""  # the operator number, 2 digits
    pin_length: int = 0
    note: str = ""  # first line: what is being confirmed, or why the last login failed
    result: LoginResult | None = None


def login_screen(login: Login) -> Screen:
    who, title = ("Operator", "LOGIN") if login.purpose == "login" else ("Supervisor", "SUPERVISOR")
    if login.stage == "number":
        # why the last try failed, or what is confirmed (two lines at most), then the number
        lines = (*wrap(login.note, 2), f"{who} no.", login.number, "ENTER to confirm")
        return Screen(title, lines[:LCD_ROWS])
    if login.stage == "password":
        stars = "*" * login.pin_length
        return Screen(title, (f"{who} no. {login.number}", "Password", stars, "ENTER to confirm"))
    return Screen(title, ("Checking", "Please wait"))


def login_begin(purpose: str, note: str = "") -> tuple[Login, list[Action]]:
    """A fresh number screen; `note` (two lines at most) says what is confirmed or what failed."""
    login = Login(purpose, note=note)
    return login, [Show(login_screen(login))]


def login_abort(login: Login | None) -> list[Action]:
    """What leaving the sub-flow early needs: wipe the password being keyed."""
    return [StopPin()] if login is not None and login.stage == "password" else []


def login_step(login: Login, event: Event) -> tuple[Login, list[Action]] | None:
    """One event for the sub-flow; None when it does not concern it."""
    if event == Key("CANCEL") and login.stage in ("number", "password"):
        return replace(login, stage="cancelled"), login_abort(login)
    if login.stage == "number" and isinstance(event, Key):
        return _login_number(login, event.key)
    if login.stage == "password" and isinstance(event, PinLength):
        length = max(0, min(event.length, PASSWORD_MAX))
        if length == login.pin_length:
            return login, [Beep("error")]
        login = replace(login, pin_length=length)
        return login, [Beep("key"), Show(login_screen(login))]
    if login.stage == "password" and event == Key("ENTER"):
        if not login.pin_length:
            return login, [Beep("error")]
        login = replace(login, stage="checking")  # CheckLogin wipes the PIN pad
        return login, [Show(login_screen(login)), CheckLogin(login.number, login.purpose)]
    if (login.stage == "checking" and isinstance(event, LoginResult)
            and event.purpose == login.purpose):
        return replace(login, stage="done", result=event), []
    return None


def _login_number(login: Login, key: str) -> tuple[Login, list[Action]] | None:
    if key == "ENTER":
        if len(login.number) != 2:
            return login, [Beep("error")]
        login = replace(login, stage="password", pin_length=0)
        return login, [Beep("key"), Show(login_screen(login)), StartPin(PASSWORD_MAX)]
    number = edit_digits(login.number, key, 2)
    if number is None:
        return None
    changed = replace(login, number=number)
    return changed, [edit_beep(login.number, number), Show(login_screen(changed))]


def supervisor_refusal(result: LoginResult | None, needed: str = "supervisor") -> str:
    """"" when `result` is an operator with at least the `needed` role confirming, else the
    reason to show ("Supervisor only", "Admin only", the login's own reason)."""
    if result is None or not result.ok:
        return (result.reason if result else "") or "Not confirmed"
    return "" if role_allows(result.role, needed) else f"{needed.title()} only"


# ---- digit fields and keyed cards (shared with the menu shell) ----

def edit_digits(text: str, key: str, max_len: int) -> str | None:
    """`text` after a digit, BACK or CLEAR (a digit past `max_len` changes nothing); None
    for any other key."""
    if key in DIGITS:
        return text + key if len(text) < max_len else text
    if key == "BACK":
        return text[:-1]
    if key == "CLEAR":
        return ""
    return None


def edit_beep(before: str, after: str) -> Beep:
    return Beep("key") if after != before else Beep("error")


def keyed_card(pan: str, expiry: str = "") -> CardData:
    """A card keyed in by hand (expiry YYMM): no track, no chip data, no PIN."""
    return CardData(pan=pan, expiry=expiry, pan_seq=None, track2="", aid="", app_label="",
                    icc_data=b"", entry_mode=ENTRY_MANUAL, cvm="none")


def keyed_line(digits: str) -> str:
    """A card number (or payment code) being keyed: '*' for all but the last 4 digits."""
    return fit("*" * max(0, len(digits) - 4) + digits[-4:])


@dataclass(frozen=True)
class SaleState:
    phase: str = "IDLE"
    amount: int = 0  # minor units
    card: CardData | None = None  # its repr masks the PAN (a keyed one too, while keyed)
    card_present: bool = False  # a card sits in the chip slot (taps and swipes never set it)
    pin_length: int = 0
    token: int = 0  # token of the last StartTimer; only grows (the shell's timers use it too)
    timer: str = ""  # name of the live timer, "" when none
    auth_code: str = ""  # field 38 of an approval, for the result screen
    stopping: bool = False  # Shutdown arrived in a busy phase
    cvm: str = ""  # cardholder verification in force: one of CVMS, "" before a card is read
    pin_offline: bool = False  # the PIN being entered goes to the card (VerifyPin)
    chip_failed: bool = False  # the chip read failed; a swipe is a fallback
    reader_fault: str = ""  # the card reader's last reported fault, "" = working
    printer_fault: str = ""  # the printer's last reported fault, "" = printing
    note: str = ""  # shown on the PIN screen instead of "Enter PIN", or a keyed-entry error
    apps: int = 0  # how many applications CHOOSE_APP offers
    link: LinkStatus = LinkStatus(None)  # the acquirer link and queue, for the idle screen
    offline: str = ""  # the approval was offline: Y1 | Y3 | 00
    spec: TxnSpec = TxnSpec()  # what is being authorised
    operator: str = ""  # the logged-in operator (kept across transactions)
    role: str = ""  # their txnkinds role
    login: Login | None = None  # a supervisor confirming (SUPERVISOR)
    entry: str = field(default="", repr=False)  # digits being keyed (expiry MMYY)
    training: bool = False  # training mode: the idle screen says TRAINING (kept across sales)


def start(cfg: SaleConfig) -> Step:
    """The initial idle state and its screen."""
    state = SaleState()
    return state, [Show(idle_screen(state))]


def busy(state: SaleState) -> bool:
    """True while a step (card read, risk or login check, PIN check, authorisation,
    printing) must not be interrupted."""
    checking_login = state.phase == "SUPERVISOR" and state.login is not None \
        and state.login.stage == "checking"
    return state.phase in BUSY_PHASES or checking_login


def begin(cfg: SaleConfig, state: SaleState, spec: TxnSpec) -> Step:
    """Start the transaction `spec` (amount already keyed) from idle: wait for a card, or
    read the one already in the slot. The caller beeps for the key that started it."""
    state = replace(state, spec=spec, amount=spec.amount)
    if state.card_present:
        return _to_reading(state)
    state, timer = _start_timer(replace(state, phase="PRESENT_CARD"), "card", cfg.card_timeout)
    return state, [Show(_present_screen(cfg, state)), timer]


def step(cfg: SaleConfig, state: SaleState, event: Event) -> Step:
    """The next state and the actions for `event`."""
    if isinstance(event, Shutdown):
        return _shutdown(state)
    if isinstance(event, ReaderStatus):
        return _reader_status(cfg, state, event.fault)
    if isinstance(event, PrinterStatus):
        return _printer_status(state, event.fault)
    if isinstance(event, LinkStatus):
        return _link_status(state, event)
    moved = _HANDLERS[state.phase](cfg, state, event)
    if moved is not None:
        return moved
    if isinstance(event, (CardInserted, CardRemoved)):
        return replace(state, card_present=isinstance(event, CardInserted)), []
    return state, []


# ---- screens (pure; every line fits LCD_COLS) ----

def money(cfg: SaleConfig, amount: int) -> str:
    return fit(f"{currency_alpha(cfg.currency)} {format_amount(amount, cfg.currency)}")


def kind_label(kind: str) -> str:
    return KINDS[kind].label if kind in KINDS else fit(kind.upper())


def result_title(kind: str, word: str = "APPROVED") -> str:
    """"APPROVED" for a sale, "VOID APPROVED" (or "... OK" when too long) for the others."""
    if kind == "sale":
        return word
    title = f"{kind_label(kind)} {word}"
    return title if len(title) <= LCD_COLS else fit(f"{kind_label(kind)} OK")


def idle_screen(state: SaleState) -> Screen:
    """"Key in amount", the link line, then a reader fault and operator alerts if any; the
    logged-in operator in the title, which starts TRAINING in training mode."""
    link = state.link
    word = {True: "ONLINE", False: "OFFLINE", None: "CONNECTING"}[link.online]
    lines = ["Key in amount", fit(f"{word}  queued {link.queued}")]
    if state.reader_fault:
        lines.append(fit("Reader: " + state.reader_fault))
    if state.printer_fault:
        lines.append(fit("Printer: " + state.printer_fault))
    if link.alerts:
        lines.append(fit(f"! {link.alerts} alert{'s' if link.alerts > 1 else ''}: support"))
    if len(lines) > LCD_ROWS:  # the faults matter more than the prompt
        lines.remove("Key in amount")
    word = "TRAINING  " if state.training else "KPOS     "
    title = fit(f"{word}op {state.operator}") if state.operator else word.strip()
    return Screen(title, tuple(lines))


def amount_screen(cfg: SaleConfig, amount: int, note: str = "", title: str = "SALE") -> Screen:
    notes = (fit(note),) if note else ()
    return Screen(title, ("Amount", money(cfg, amount), *notes, "ENTER to confirm"))


def amount_key(cfg: SaleConfig, amount: int, key: str, title: str = "SALE",
               limit: int | None = None) -> tuple[int, list[Action]] | None:
    """A digit, BACK or CLEAR on an amount screen: the new amount and the beep and screen
    (a digit past `limit`, default `cfg.max_amount`, is refused with a "Max" note); None for
    any other key."""
    limit = cfg.max_amount if limit is None else limit
    moved = number_key(amount, key, limit)
    if moved is None:
        return None
    amount, beep = moved
    if not beep:
        return amount, []
    note = f"Max {money(cfg, limit)}" if beep == "error" else ""
    return amount, [Beep(beep), Show(amount_screen(cfg, amount, note, title))]


def number_key(value: int, key: str, limit: int) -> tuple[int, str] | None:
    """A digit, BACK or CLEAR on a number field (an amount, a quantity): the new value and
    the beep: "key", "error" (a digit past `limit`: the value stays) or "" (a leading zero:
    nothing happens). None for any other key."""
    if key in ("BACK", "CLEAR"):
        return (value // 10 if key == "BACK" else 0), "key"
    if key not in DIGITS:
        return None
    grown = value * 10 + int(key)
    if grown > limit:
        return value, "error"
    return grown, "key" if grown != value else ""


def _head(cfg: SaleConfig, state: SaleState) -> tuple[str, tuple[str, ...]]:
    """The title naming the kind and amount ("VOID CNY 12.50", "BALANCE"), and the amount
    as a line of its own when both do not fit in the title."""
    label = kind_label(state.spec.kind)
    if not state.amount:
        return label, ()
    title = f"{label} {money(cfg, state.amount)}"
    return (title, ()) if len(title) <= LCD_COLS else (label, (money(cfg, state.amount),))


def _present_screen(cfg: SaleConfig, state: SaleState) -> Screen:
    tap = 0 < state.amount <= cfg.contactless_limit
    how = "Insert, tap or swipe" if tap else "Insert or swipe card"
    fault = (fit("Reader: " + state.reader_fault),) if state.reader_fault else ()
    title, amount = _head(cfg, state)
    return Screen(title, (*amount, how, *fault))


def _pin_screen(cfg: SaleConfig, state: SaleState) -> Screen:
    masked = state.card.masked_pan if state.card else ""
    prompt = fit(state.note or "Enter PIN")
    title = money(cfg, state.amount) if state.amount else kind_label(state.spec.kind)
    return Screen(title, (prompt, "*" * state.pin_length, fit(masked)))


def _manual_pan_screen(cfg: SaleConfig, state: SaleState) -> Screen:
    title, amount = _head(cfg, state)
    digits = state.card.pan if state.card else ""
    return Screen(title, (*amount, "Card no.", keyed_line(digits), state.note or "ENTER to confirm"))


def _expiry_screen(cfg: SaleConfig, state: SaleState) -> Screen:
    masked = state.card.masked_pan if state.card else ""
    lines = (fit(masked), "Expiry MMYY", state.entry, state.note or "ENTER to confirm")
    return Screen(_head(cfg, state)[0], lines)


def _choice_screen(labels: tuple[str, ...]) -> Screen:
    return Screen("Select app", tuple(fit(f"{n} {label}") for n, label in enumerate(labels[:4], 1)))


def _approved_screen(cfg: SaleConfig, state: SaleState, *tail: str) -> Screen:
    auth = (f"Auth {fit(state.auth_code, 15)}",) if state.auth_code else ()
    if state.offline:
        auth = ("Approved offline",)
    lines = (money(cfg, state.amount), *auth, *(fit(t) for t in tail))
    return Screen(result_title(state.spec.kind), lines, "ok")


def _balance_screen(cfg: SaleConfig, balance: int | None) -> Screen:
    if balance is None:
        return Screen("BALANCE", ("No balance given",), "error")
    return Screen("BALANCE", ("Available", money(cfg, balance)), "ok")


def outcome_screen(result: AuthResult) -> Screen:
    """Result screen for a declined, unanswered, unsent or unknown authorisation."""
    if result.outcome == "declined":
        code = (fit(f"Code {result.code}"),) if result.code else ()
        return Screen("DECLINED", (*wrap(result.message, 2), *code), "error")
    if result.outcome == "no_response":
        why = ("Bad response MAC",) if result.code == "A0" else ()  # reversal reason A0
        return Screen("NO RESPONSE", (*why, "Reversal pending"), "error")
    if result.outcome == "not_sent":
        return Screen("NOT SENT", ("Host unreachable", *wrap(result.message, 3)), "error")
    return Screen("ERROR", ("Unknown outcome", fit(result.outcome), "Check journal"), "error")


def _read_error_screen(reason: str) -> Screen:
    return Screen("Card read error", wrap(reason, 2), "error")


_CANCELLED = Screen("Cancelled", ("Sale not done",))
_CARD_TIMEOUT = Screen("Timed out", ("No card presented",), "error")
_ENTRY_TIMEOUT = Screen("Timed out", ("No card keyed in",), "error")
_CONFIRM_TIMEOUT = Screen("Timed out", ("No supervisor",), "error")
_CHOICE_TIMEOUT = Screen("Timed out", ("No app selected",), "error")
_PIN_TIMEOUT = Screen("PIN timeout", ("Sale not done",), "error")
_CARD_REMOVED = Screen("Card removed", ("Sale not done",), "error")
_WRONG_CARD = Screen("Wrong card", ("Not the card of", "the original"), "error")
_READING = Screen("Reading card", ("Do not remove",))
_CHECKING_PIN = Screen("Checking PIN", ("Please wait",))
_PROCESSING = Screen("Processing", ("Please wait",))
_PIN_BLOCKED = Screen("PIN blocked", ("Processing",))
_REMOVE_CARD = Screen("Remove card", ("Please take card",))


# ---- transitions ----

def _start_timer(state: SaleState, name: str, seconds: float) -> tuple[SaleState, StartTimer]:
    token = state.token + 1
    return replace(state, token=token, timer=name), StartTimer(name, seconds, token)


def _leave_timer(state: SaleState) -> tuple[SaleState, list[Action]]:
    """Drop the live timer (if any) on leaving its phase."""
    if not state.timer:
        return state, []
    return replace(state, timer=""), [CancelTimers()]


def _is_timeout(state: SaleState, event: Event, name: str) -> bool:
    return (isinstance(event, Timeout) and event.name == name == state.timer
            and event.token == state.token)


def _to_idle(state: SaleState, *first: Action) -> Step:
    idle = SaleState(card_present=state.card_present, token=state.token,
                     reader_fault=state.reader_fault, printer_fault=state.printer_fault,
                     link=state.link,
                     operator=state.operator, role=state.role, training=state.training)
    return idle, [*first, CancelTimers(), Show(idle_screen(idle)), Idle()]


def _to_result(cfg: SaleConfig, state: SaleState, screen: Screen, *first: Action) -> Step:
    """Show a result; after a deferred Shutdown go straight to idle instead."""
    if state.stopping:
        return _to_idle(state, *first)
    state, cancel = _leave_timer(replace(state, login=None))
    state, timer = _start_timer(replace(state, phase="RESULT"), "result", cfg.result_timeout)
    beep = [Beep("error")] if screen.tone == "error" else []
    return state, [*first, *cancel, Show(screen), *beep, timer]


def _to_reading(state: SaleState) -> Step:
    state, cancel = _leave_timer(state)
    return replace(state, phase="READING", card_present=True), [*cancel, Show(_READING), ReadCard()]


def _to_present(cfg: SaleConfig, state: SaleState, lines: tuple[str, ...]) -> Step:
    """Wait for a card again after a refused one: an error screen and a fresh card timer."""
    state, timer = _start_timer(replace(state, phase="PRESENT_CARD"), "card", cfg.card_timeout)
    title, amount = _head(cfg, state)
    return state, [Show(Screen(title, (*amount, *lines), "error")), Beep("error"), timer]


def _to_pin(cfg: SaleConfig, state: SaleState, *first: Action, offline: bool = False,
            note: str = "") -> Step:
    state = replace(state, phase="PIN", pin_length=0, pin_offline=offline, note=note)
    state, cancel = _leave_timer(state)
    state, timer = _start_timer(state, "pin", cfg.pin_timeout)
    return state, [*first, *cancel, Show(_pin_screen(cfg, state)), StartPin(cfg.pin_max), timer]


def _to_authorising(state: SaleState, screen: Screen = _PROCESSING, *first: Action) -> Step:
    state, cancel = _leave_timer(replace(state, phase="AUTHORISING"))
    spec = state.spec
    return state, [*first, *cancel, Show(screen), Authorise(spec.kind, spec.amount, spec)]


def _verify_cardholder(cfg: SaleConfig, state: SaleState, *first: Action) -> Step:
    """Go on with the CVM in `state.cvm`: a PIN screen, or straight to authorisation; kinds
    without a PIN (void, refund ...) always go straight on."""
    pin = state.cvm in ("online_pin", "offline_pin")
    if pin and state.spec.kind in KINDS and KINDS[state.spec.kind].card != "nopin":
        return _to_pin(cfg, state, *first, offline=state.cvm == "offline_pin")
    return _to_authorising(state, _PROCESSING, *first)


def _card_known(cfg: SaleConfig, state: SaleState, *first: Action) -> Step:
    """The card is read, swiped or keyed: check it is the original's, then the risk rules."""
    original = state.spec.original
    if original and original.masked_pan and state.card.masked_pan != original.masked_pan:
        return _to_result(cfg, state, _WRONG_CARD, *first)
    state, cancel = _leave_timer(replace(state, phase="CHECKING"))
    check = CheckRisk(state.spec.kind, state.amount, state.card.entry_mode)
    return state, [*first, *cancel, check]


def _to_supervisor(cfg: SaleConfig, state: SaleState, why: str) -> Step:
    """A supervisor confirms the next step (number, then password on the PIN pad)."""
    login, shown = login_begin("confirm", why)
    state, cancel = _leave_timer(replace(state, phase="SUPERVISOR", login=login))
    state, timer = _start_timer(state, "confirm", cfg.pin_timeout)
    return state, [*cancel, *shown, timer]


def _after_confirm(cfg: SaleConfig, state: SaleState) -> Step:
    """Confirmed: key the card in (no card yet), or go on to verification."""
    state = replace(state, login=None)
    return _to_manual(cfg, state) if state.card is None else _verify_cardholder(cfg, state)


def _to_manual(cfg: SaleConfig, state: SaleState) -> Step:
    state = replace(state, phase="MANUAL_PAN", card=None, note="", entry="")
    state, cancel = _leave_timer(state)
    state, timer = _start_timer(state, "entry", cfg.card_timeout)
    return state, [*cancel, Show(_manual_pan_screen(cfg, state)), timer]


def _shutdown(state: SaleState) -> Step:
    if state.phase == "IDLE":
        return state, [Idle()]
    if busy(state):
        return replace(state, stopping=True), []
    return _to_idle(state, *([StopPin()] if state.phase == "PIN" else login_abort(state.login)))


def _reader_status(cfg: SaleConfig, state: SaleState, fault: str) -> Step:
    if fault == state.reader_fault:
        return state, []
    state = replace(state, reader_fault=fault)
    actions: list[Action] = []
    if state.phase == "IDLE":
        actions.append(Show(idle_screen(state)))
    elif state.phase == "PRESENT_CARD":
        actions.append(Show(_present_screen(cfg, state)))
    return state, actions + ([Beep("error")] if fault else [])


def _printer_status(state: SaleState, fault: str) -> Step:
    if fault == state.printer_fault:
        return state, []
    state = replace(state, printer_fault=fault)
    return state, [Show(idle_screen(state))] if state.phase == "IDLE" else []


def _link_status(state: SaleState, link: LinkStatus) -> Step:
    if link == state.link:
        return state, []
    state = replace(state, link=link)
    return state, [Show(idle_screen(state))] if state.phase == "IDLE" else []


def _held_in_slot(state: SaleState) -> bool:
    """The sale's card is (or is being read as) an inserted chip card, not a tap or swipe."""
    return state.card is None or state.card.entry_mode == ENTRY_CHIP


# ---- phase handlers: return None to ignore the event ----

def _on_idle(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if not isinstance(event, Key) or event.key not in (*DIGITS[1:], "ENTER"):
        return None
    entering = replace(state, phase="AMOUNT", amount=0)
    if event.key == "ENTER":
        return entering, [Beep("key"), Show(amount_screen(cfg, 0))]
    return _on_amount(cfg, entering, event)


def _on_amount(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if event == Key("CANCEL"):
        return _to_idle(state)
    if event == Key("ENTER"):
        return _amount_enter(cfg, state)
    edited = amount_key(cfg, state.amount, event.key) if isinstance(event, Key) else None
    if edited is None:
        return None
    amount, actions = edited
    return replace(state, amount=amount), actions


def _amount_enter(cfg: SaleConfig, state: SaleState) -> Step:
    if state.amount == 0:
        return state, [Beep("error")]
    state, actions = begin(cfg, state, TxnSpec("sale", state.amount))
    return state, [Beep("key")] * (state.phase == "PRESENT_CARD") + actions


def _on_present_card(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if isinstance(event, CardInserted):
        return _to_reading(state)
    if isinstance(event, CardSwiped):
        return _swiped(cfg, state, event)
    if isinstance(event, SwipeFailed):
        title, amount = _head(cfg, state)
        lines = (*amount, *wrap(event.reason, 2), "Swipe again")
        return state, [Show(Screen(title, lines, "error")), Beep("error")]
    if event == Key("MENU") and _keyable(state.spec.kind):
        if role_allows(state.role, "supervisor"):
            return _to_manual(cfg, state)
        return _to_supervisor(cfg, state, "Key in card")
    if event == Key("CANCEL"):
        return _to_result(cfg, state, _CANCELLED)
    if _is_timeout(state, event, "card"):
        return _to_result(cfg, state, _CARD_TIMEOUT)
    return None


def _keyable(kind: str) -> bool:
    """The kind takes a card, so its number may be keyed in."""
    return kind in KINDS and KINDS[kind].card != "none"


def _swiped(cfg: SaleConfig, state: SaleState, event: CardSwiped) -> Step:
    if event.chip and not state.chip_failed:
        return _to_present(cfg, state, ("Chip card", "Please insert card"))
    card = replace(event.card, entry_mode=ENTRY_FALLBACK) if state.chip_failed else event.card
    return _card_known(cfg, replace(state, card=card, cvm="online_pin"))


def _on_manual_pan(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    digits = state.card.pan if state.card else ""
    if event == Key("ENTER"):
        if PAN_MIN <= len(digits) <= PAN_MAX and luhn_ok(digits):
            state = replace(state, phase="MANUAL_EXPIRY", note="", entry="")
            return state, [Beep("key"), Show(_expiry_screen(cfg, state))]
        state = replace(state, note="Invalid card no.")
        return state, [Beep("error"), Show(_manual_pan_screen(cfg, state))]
    edited = edit_digits(digits, event.key, PAN_MAX) if isinstance(event, Key) else None
    if edited is not None:
        state = replace(state, card=keyed_card(edited), note="")
        return state, [edit_beep(digits, edited), Show(_manual_pan_screen(cfg, state))]
    return _keyed_exit(cfg, state, event)


def _on_manual_expiry(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if event == Key("ENTER"):
        mmyy = state.entry
        if len(mmyy) == 4 and "01" <= mmyy[:2] <= "12":
            card = keyed_card(state.card.pan, expiry=mmyy[2:] + mmyy[:2])
            return _card_known(cfg, replace(state, card=card, cvm="none", entry="", note=""),
                               Beep("key"))
        state = replace(state, note="Invalid expiry")
        return state, [Beep("error"), Show(_expiry_screen(cfg, state))]
    edited = edit_digits(state.entry, event.key, 4) if isinstance(event, Key) else None
    if edited is not None:
        changed = replace(state, entry=edited, note="")
        return changed, [edit_beep(state.entry, edited), Show(_expiry_screen(cfg, changed))]
    return _keyed_exit(cfg, state, event)


def _keyed_exit(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    """CANCEL or the entry timer while a card is keyed in."""
    if event == Key("CANCEL"):
        return _to_result(cfg, replace(state, card=None), _CANCELLED)
    if _is_timeout(state, event, "entry"):
        return _to_result(cfg, replace(state, card=None), _ENTRY_TIMEOUT)
    return None


def _on_reading(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if isinstance(event, CardRead):
        return _card_read(cfg, state, event)
    if isinstance(event, AppChoice):
        return _app_choice(cfg, state, event.labels)
    if isinstance(event, CardReadFailed):
        return _read_failed(cfg, state, event)
    if isinstance(event, CardRemoved):
        return _to_result(cfg, replace(state, card_present=False), _CARD_REMOVED)
    return None


def _card_read(cfg: SaleConfig, state: SaleState, event: CardRead) -> Step:
    tap = event.card.entry_mode == ENTRY_CONTACTLESS
    state = replace(state, card=event.card, cvm=event.cvm,
                    card_present=state.card_present and not tap)
    first = [Beep("ok")] if tap else []  # the tap is over: the card may leave
    if state.stopping:
        return _to_idle(state, *first)
    return _card_known(cfg, state, *first)


def _app_choice(cfg: SaleConfig, state: SaleState, labels: tuple[str, ...]) -> Step:
    if state.stopping:
        return _to_idle(state)
    state = replace(state, phase="CHOOSE_APP", apps=len(labels))
    state, timer = _start_timer(state, "choice", cfg.pin_timeout)
    return state, [Show(_choice_screen(labels)), timer]


def _read_failed(cfg: SaleConfig, state: SaleState, event: CardReadFailed) -> Step:
    retry = {"swipe": "Swipe card" if cfg.fallback else "", "insert": "Insert card"}.get(event.next)
    if state.stopping or not retry:
        return _to_result(cfg, state, _read_error_screen(event.reason))
    state = replace(state, chip_failed=state.chip_failed or event.next == "swipe")
    return _to_present(cfg, state, (*wrap(event.reason, 2), retry))


def _on_choose_app(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if isinstance(event, Key) and event.key in DIGITS:
        number = int(event.key)
        if not 1 <= number <= state.apps:
            return state, [Beep("error")]
        state, cancel = _leave_timer(replace(state, phase="READING"))
        return state, [*cancel, Show(_READING), SelectApp(number - 1)]
    if event == Key("CANCEL"):
        return _to_result(cfg, state, _CANCELLED)
    if _is_timeout(state, event, "choice"):
        return _to_result(cfg, state, _CHOICE_TIMEOUT)
    if isinstance(event, CardRemoved):
        return _to_result(cfg, replace(state, card_present=False), _CARD_REMOVED)
    if isinstance(event, CardReadFailed):
        return _to_result(cfg, state, _read_error_screen(event.reason))
    return None


def _on_checking(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if isinstance(event, CardRemoved) and state.card_present and _held_in_slot(state):
        return _to_result(cfg, replace(state, card_present=False), _CARD_REMOVED)
    if not isinstance(event, RiskResult):
        return None
    if state.stopping:
        return _to_idle(state)
    if event.action == "ok" or event.action == "confirm" and role_allows(state.role, "supervisor"):
        return _verify_cardholder(cfg, state)
    if event.action == "confirm":
        return _to_supervisor(cfg, state, event.reason or "Risk rule")
    refused = Screen("Refused", wrap(event.reason or "Risk rules", 3), "error")
    return _to_result(cfg, state, refused)


def _on_supervisor(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    abort = login_abort(state.login)
    if _is_timeout(state, event, "confirm"):
        return _to_result(cfg, state, _CONFIRM_TIMEOUT, *abort)
    chip = state.card is not None and _held_in_slot(state) and state.card_present
    if isinstance(event, CardRemoved) and chip:
        return _to_result(cfg, replace(state, card_present=False), _CARD_REMOVED, *abort)
    moved = login_step(state.login, event) if state.login else None
    if moved is None:
        return None
    login, actions = moved
    state = replace(state, login=login)
    if login.stage == "cancelled":
        return _to_result(cfg, state, _CANCELLED, *actions)
    if login.stage != "done":
        return state, actions
    if state.stopping:
        return _to_idle(state)
    refusal = supervisor_refusal(login.result)
    if refusal:
        return _to_result(cfg, state, Screen("Not confirmed", wrap(refusal, 3), "error"))
    return _after_confirm(cfg, state)


def _on_pin(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if isinstance(event, PinLength):
        return _pin_length(cfg, state, max(0, min(event.length, cfg.pin_max)))
    if event == Key("ENTER"):
        return _pin_enter(cfg, state)
    if event == Key("CANCEL"):
        return _to_result(cfg, state, _CANCELLED, StopPin())
    if _is_timeout(state, event, "pin"):
        return _to_result(cfg, state, _PIN_TIMEOUT, StopPin())
    if isinstance(event, CardRemoved) and _held_in_slot(state):
        return _to_result(cfg, replace(state, card_present=False), _CARD_REMOVED, StopPin())
    return None


def _pin_length(cfg: SaleConfig, state: SaleState, length: int) -> Step:
    if length == state.pin_length:  # a digit past pin_max, or BACK on an empty PIN
        return state, [Beep("error")]
    state = replace(state, pin_length=length)
    return state, [Beep("key"), Show(_pin_screen(cfg, state))]


def _pin_enter(cfg: SaleConfig, state: SaleState) -> Step:
    if not cfg.pin_min <= state.pin_length <= cfg.pin_max:
        return state, [Beep("error")]
    if not state.pin_offline:
        return _to_authorising(state)
    state, cancel = _leave_timer(replace(state, phase="VERIFYING"))
    return state, [*cancel, Show(_CHECKING_PIN), VerifyPin()]


def _on_verifying(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if isinstance(event, PinVerified):
        return _pin_verified(cfg, state, event)
    if isinstance(event, CardReadFailed):
        return _to_result(cfg, state, _read_error_screen(event.reason))
    return None


def _pin_verified(cfg: SaleConfig, state: SaleState, event: PinVerified) -> Step:
    if state.stopping:
        return _to_idle(state)
    if event.ok:
        return _to_authorising(state)
    if event.tries_left is not None and event.tries_left > 0:
        note = f"Wrong PIN: {event.tries_left} left"
        return _to_pin(cfg, state, Beep("error"), offline=True, note=note)
    if event.next_cvm == "online_pin":
        state = replace(state, cvm="online_pin")
        return _to_pin(cfg, state, Beep("error"), note="Offline PIN failed")
    state = replace(state, cvm="signature" if event.next_cvm == "signature" else "none")
    return _to_authorising(state, _PIN_BLOCKED, Beep("error"))


def _on_authorising(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if not isinstance(event, AuthResult):
        return None
    if event.outcome != "approved":
        return _to_result(cfg, state, outcome_screen(event))
    if state.spec.kind == "balance":  # shown, never printed or kept
        return _to_result(cfg, state, _balance_screen(cfg, event.balance), Beep("ok"))
    state = replace(state, auth_code=event.auth_code, offline=event.offline)
    if event.txn_id is None:  # nothing in the journal to print from
        return _to_result(cfg, state, _approved_screen(cfg, state, "No receipt"), Beep("ok"))
    state = replace(state, phase="PRINTING")
    printing = _approved_screen(cfg, state, "Printing...")
    return state, [Show(printing), Beep("ok"), Print(event.txn_id)]


def _on_printing(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if not isinstance(event, PrintDone):
        return None
    if event.ok:
        done = "Sign merchant copy" if state.cvm == "signature" else "Take receipts"
        return _to_result(cfg, state, _approved_screen(cfg, state, done))
    tail = (f"Printer: {event.detail or 'error'}", "Receipt queued")
    return _to_result(cfg, state, _approved_screen(cfg, state, *tail), Beep("error"))


def _on_result(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if event not in (Key("ENTER"), Key("CANCEL")) and not _is_timeout(state, event, "result"):
        return None
    if not state.card_present:
        return _to_idle(state)
    state, cancel = _leave_timer(replace(state, phase="REMOVE_CARD"))
    return state, [*cancel, Show(_REMOVE_CARD)]


def _on_remove_card(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if isinstance(event, CardRemoved):
        return _to_idle(replace(state, card_present=False))
    return None


_HANDLERS = {
    "IDLE": _on_idle,
    "AMOUNT": _on_amount,
    "PRESENT_CARD": _on_present_card,
    "MANUAL_PAN": _on_manual_pan,
    "MANUAL_EXPIRY": _on_manual_expiry,
    "READING": _on_reading,
    "CHOOSE_APP": _on_choose_app,
    "CHECKING": _on_checking,
    "SUPERVISOR": _on_supervisor,
    "PIN": _on_pin,
    "VERIFYING": _on_verifying,
    "AUTHORISING": _on_authorising,
    "PRINTING": _on_printing,
    "RESULT": _on_result,
    "REMOVE_CARD": _on_remove_card,
}
