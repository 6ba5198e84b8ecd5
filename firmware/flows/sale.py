"""The sale flow (amount, card read, cardholder verification, authorisation, receipt) as a
pure state machine.

Pure functions over immutable values; no I/O, no clock, never blocks. The app calls
`step()` on the asyncio loop for each event and executes the returned actions in order
(firmware.flows.types). Amounts are int minor units of `cfg.currency`; timeouts are
seconds. The flow emits every beep, key clicks included, and every screen; a screen shows
the PAN only as `CardData.masked_pan`. Unexpected events leave the state unchanged and
return no actions; `step()` never raises on an event.

Phases: IDLE -> AMOUNT -> PRESENT_CARD -> READING [-> CHOOSE_APP -> READING] -> PIN
[-> VERIFYING (offline PIN)] -> AUTHORISING -> PRINTING -> RESULT -> REMOVE_CARD -> IDLE.
A swipe goes PRESENT_CARD -> PIN; a failed chip read (CardReadFailed next="swipe", with
`cfg.fallback`) or a refused tap (next="insert") goes back to PRESENT_CARD; CVM
"signature"/"none" skips PIN. READING, VERIFYING, AUTHORISING and PRINTING are busy: a
Shutdown there is remembered and applied when the step finishes.

Events: keys and PinLength; CardInserted/CardRemoved (a tapped or swiped card is not held
by the reader, so its removal never ends the sale); CardRead, CardReadFailed, AppChoice,
PinVerified from the reader worker; CardSwiped/SwipeFailed from the stripe reader;
ReaderStatus in any phase (stored, shown on the idle and present-card screens);
LinkStatus in any phase (stored, shown on the idle screen: ONLINE/OFFLINE, queued items,
operator alerts); AuthResult (an offline approval says so on the result screen),
PrintDone, Timeout, Shutdown.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from firmware.emv.card import CardData, ENTRY_CHIP, ENTRY_CONTACTLESS, ENTRY_FALLBACK
from firmware.flows.types import (
    DIGITS, Action, AppChoice, AuthResult, Authorise, Beep, CancelTimers, CardInserted,
    CardRead, CardReadFailed, CardRemoved, CardSwiped, Event, Idle, Key, LinkStatus, PinLength,
    PinVerified, Print, PrintDone, ReadCard, ReaderStatus, Screen, SelectApp, Show, Shutdown,
    StartPin, StartTimer, StopPin, SwipeFailed, Timeout, VerifyPin, fit, wrap,
)
from firmware.money import CURRENCIES, currency_alpha, format_amount

__all__ = ["SaleConfig", "SaleState", "PHASES", "BUSY_PHASES", "start", "step", "busy"]

PHASES = ("IDLE", "AMOUNT", "PRESENT_CARD", "READING", "CHOOSE_APP", "PIN", "VERIFYING",
          "AUTHORISING", "PRINTING", "RESULT", "REMOVE_CARD")
BUSY_PHASES = frozenset({"READING", "VERIFYING", "AUTHORISING", "PRINTING"})

Step = tuple["SaleState", list[Action]]


@dataclass(frozen=True)
class SaleConfig:
    max_amount: int  # minor units, largest amount the keypad accepts
    currency: int = 156  # ISO 4217 numeric
    card_timeout: float = 60  # seconds waiting for a card
    pin_timeout: float = 60  # seconds for the whole PIN entry (and for an app choice)
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


@dataclass(frozen=True)
class SaleState:
    phase: str = "IDLE"
    amount: int = 0  # minor units
    card: CardData | None = None  # its repr masks the PAN
    card_present: bool = False  # a card sits in the chip slot (taps and swipes never set it)
    pin_length: int = 0
    token: int = 0  # token of the last StartTimer; only grows
    timer: str = ""  # name of the live timer, "" when none
    auth_code: str = ""  # field 38 of an approval, for the result screen
    stopping: bool = False  # Shutdown arrived in a busy phase
    cvm: str = ""  # cardholder verification in force: one of CVMS, "" before a card is read
    pin_offline: bool = False  # the PIN being entered goes to the card (VerifyPin)
    chip_failed: bool = False  # the chip read failed; a swipe is a fallback
    reader_fault: str = ""  # the card reader's last reported fault, "" = working
    note: str = ""  # shown on the PIN screen instead of "Enter PIN"
    apps: int = 0  # how many applications CHOOSE_APP offers
    link: LinkStatus = LinkStatus(None)  # the acquirer link and queue, for the idle screen
    offline: str = ""  # the approval was offline: Y1 | Y3 | 00


def start(cfg: SaleConfig) -> Step:
    """The initial idle state and its screen."""
    state = SaleState()
    return state, [Show(_idle_screen(state))]


def busy(state: SaleState) -> bool:
    """True while a step (card read, PIN check, authorisation, printing) must not be interrupted."""
    return state.phase in BUSY_PHASES


def step(cfg: SaleConfig, state: SaleState, event: Event) -> Step:
    """The next state and the actions for `event`."""
    if isinstance(event, Shutdown):
        return _shutdown(state)
    if isinstance(event, ReaderStatus):
        return _reader_status(cfg, state, event.fault)
    if isinstance(event, LinkStatus):
        return _link_status(state, event)
    moved = _HANDLERS[state.phase](cfg, state, event)
    if moved is not None:
        return moved
    if isinstance(event, (CardInserted, CardRemoved)):
        return replace(state, card_present=isinstance(event, CardInserted)), []
    return state, []


# ---- screens (pure; every line fits LCD_COLS) ----

def _money(cfg: SaleConfig, amount: int) -> str:
    return fit(f"{currency_alpha(cfg.currency)} {format_amount(amount, cfg.currency)}")


def _idle_screen(state: SaleState) -> Screen:
    """"Key in amount", the link line, then a reader fault and operator alerts if any."""
    link = state.link
    word = {True: "ONLINE", False: "OFFLINE", None: "CONNECTING"}[link.online]
    lines = ["Key in amount", fit(f"{word}  queued {link.queued}")]
    if state.reader_fault:
        lines.append(fit("Reader: " + state.reader_fault))
    if link.alerts:
        lines.append(fit(f"! {link.alerts} alert{'s' if link.alerts > 1 else ''}: support"))
    return Screen("KPOS", tuple(lines))


def _amount_screen(cfg: SaleConfig, amount: int, note: str = "") -> Screen:
    notes = (fit(note),) if note else ()
    return Screen("SALE", ("Amount", _money(cfg, amount), *notes, "ENTER to confirm"))


def _present_title(cfg: SaleConfig, state: SaleState) -> str:
    return fit(f"SALE {_money(cfg, state.amount)}")


def _present_screen(cfg: SaleConfig, state: SaleState) -> Screen:
    tap = 0 < state.amount <= cfg.contactless_limit
    how = "Insert, tap or swipe" if tap else "Insert or swipe card"
    fault = (fit("Reader: " + state.reader_fault),) if state.reader_fault else ()
    return Screen(_present_title(cfg, state), (how, *fault))


def _pin_screen(cfg: SaleConfig, state: SaleState) -> Screen:
    masked = state.card.masked_pan if state.card else ""
    prompt = fit(state.note or "Enter PIN")
    return Screen(_money(cfg, state.amount), (prompt, "*" * state.pin_length, fit(masked)))


def _choice_screen(labels: tuple[str, ...]) -> Screen:
    return Screen("Select app", tuple(fit(f"{n} {label}") for n, label in enumerate(labels[:4], 1)))


def _approved_screen(cfg: SaleConfig, state: SaleState, *tail: str) -> Screen:
    auth = (f"Auth {fit(state.auth_code, 15)}",) if state.auth_code else ()
    if state.offline:
        auth = ("Approved offline",)
    return Screen("APPROVED", (_money(cfg, state.amount), *auth, *(fit(t) for t in tail)), "ok")


def _outcome_screen(result: AuthResult) -> Screen:
    """Result screen for a declined, unanswered, unsent or unknown authorisation."""
    if result.outcome == "declined":
        code = (fit(f"Code {result.code}"),) if result.code else ()
        return Screen("DECLINED", (*wrap(result.message, 2), *code), "error")
    if result.outcome == "no_response":
        return Screen("NO RESPONSE", ("Reversal pending",), "error")
    if result.outcome == "not_sent":
        return Screen("NOT SENT", ("Host unreachable", *wrap(result.message, 3)), "error")
    return Screen("ERROR", ("Unknown outcome", fit(result.outcome), "Check journal"), "error")


def _read_error_screen(reason: str) -> Screen:
    return Screen("Card read error", wrap(reason, 2), "error")


_CANCELLED = Screen("Cancelled", ("Sale not done",))
_CARD_TIMEOUT = Screen("Timed out", ("No card presented",), "error")
_CHOICE_TIMEOUT = Screen("Timed out", ("No app selected",), "error")
_PIN_TIMEOUT = Screen("PIN timeout", ("Sale not done",), "error")
_CARD_REMOVED = Screen("Card removed", ("Sale not done",), "error")
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
                     reader_fault=state.reader_fault, link=state.link)
    return idle, [*first, CancelTimers(), Show(_idle_screen(idle)), Idle()]


def _to_result(cfg: SaleConfig, state: SaleState, screen: Screen, *first: Action) -> Step:
    """Show a result; after a deferred Shutdown go straight to idle instead."""
    if state.stopping:
        return _to_idle(state, *first)
    state, cancel = _leave_timer(state)
    state, timer = _start_timer(replace(state, phase="RESULT"), "result", cfg.result_timeout)
    beep = [Beep("error")] if screen.tone == "error" else []
    return state, [*first, *cancel, Show(screen), *beep, timer]


def _to_reading(state: SaleState) -> Step:
    state, cancel = _leave_timer(state)
    return replace(state, phase="READING", card_present=True), [*cancel, Show(_READING), ReadCard()]


def _to_present(cfg: SaleConfig, state: SaleState, lines: tuple[str, ...]) -> Step:
    """Wait for a card again after a refused one: an error screen and a fresh card timer."""
    state, timer = _start_timer(replace(state, phase="PRESENT_CARD"), "card", cfg.card_timeout)
    return state, [Show(Screen(_present_title(cfg, state), lines, "error")), Beep("error"), timer]


def _to_pin(cfg: SaleConfig, state: SaleState, *first: Action, offline: bool = False,
            note: str = "") -> Step:
    state = replace(state, phase="PIN", pin_length=0, pin_offline=offline, note=note)
    state, cancel = _leave_timer(state)
    state, timer = _start_timer(state, "pin", cfg.pin_timeout)
    return state, [*first, *cancel, Show(_pin_screen(cfg, state)), StartPin(cfg.pin_max), timer]


def _to_authorising(state: SaleState, screen: Screen = _PROCESSING, *first: Action) -> Step:
    state, cancel = _leave_timer(replace(state, phase="AUTHORISING"))
    return state, [*first, *cancel, Show(screen), Authorise("sale", state.amount)]


def _verify_cardholder(cfg: SaleConfig, state: SaleState, *first: Action) -> Step:
    """Go on with the CVM in `state.cvm`: a PIN screen, or straight to authorisation."""
    if state.cvm in ("online_pin", "offline_pin"):
        return _to_pin(cfg, state, *first, offline=state.cvm == "offline_pin")
    return _to_authorising(state, _PROCESSING, *first)


def _shutdown(state: SaleState) -> Step:
    if state.phase == "IDLE":
        return state, [Idle()]
    if busy(state):
        return replace(state, stopping=True), []
    return _to_idle(state, *([StopPin()] if state.phase == "PIN" else []))


def _reader_status(cfg: SaleConfig, state: SaleState, fault: str) -> Step:
    if fault == state.reader_fault:
        return state, []
    state = replace(state, reader_fault=fault)
    actions: list[Action] = []
    if state.phase == "IDLE":
        actions.append(Show(_idle_screen(state)))
    elif state.phase == "PRESENT_CARD":
        actions.append(Show(_present_screen(cfg, state)))
    return state, actions + ([Beep("error")] if fault else [])


def _link_status(state: SaleState, link: LinkStatus) -> Step:
    if link == state.link:
        return state, []
    state = replace(state, link=link)
    return state, [Show(_idle_screen(state))] if state.phase == "IDLE" else []


def _held_in_slot(state: SaleState) -> bool:
    """The sale's card is (or is being read as) an inserted chip card, not a tap or swipe."""
    return state.card is None or state.card.entry_mode == ENTRY_CHIP


# ---- phase handlers: return None to ignore the event ----

def _on_idle(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if not isinstance(event, Key) or event.key == "0":
        return None
    entering = replace(state, phase="AMOUNT", amount=0)
    if event.key == "ENTER":
        return entering, [Beep("key"), Show(_amount_screen(cfg, 0))]
    return _on_amount(cfg, entering, event) if event.key in DIGITS else None


def _on_amount(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if not isinstance(event, Key):
        return None
    key = event.key
    if key in DIGITS:
        return _amount_digit(cfg, state, int(key))
    if key in ("BACK", "CLEAR"):
        amount = state.amount // 10 if key == "BACK" else 0
        return replace(state, amount=amount), [Beep("key"), Show(_amount_screen(cfg, amount))]
    if key == "CANCEL":
        return _to_idle(state)
    if key == "ENTER":
        return _amount_enter(cfg, state)
    return None


def _amount_digit(cfg: SaleConfig, state: SaleState, digit: int) -> Step | None:
    if state.amount == 0 and digit == 0:
        return None
    amount = state.amount * 10 + digit
    if amount > cfg.max_amount:
        note = f"Max {_money(cfg, cfg.max_amount)}"
        return state, [Beep("error"), Show(_amount_screen(cfg, state.amount, note))]
    return replace(state, amount=amount), [Beep("key"), Show(_amount_screen(cfg, amount))]


def _amount_enter(cfg: SaleConfig, state: SaleState) -> Step:
    if state.amount == 0:
        return state, [Beep("error")]
    if state.card_present:
        return _to_reading(state)
    state, timer = _start_timer(replace(state, phase="PRESENT_CARD"), "card", cfg.card_timeout)
    return state, [Beep("key"), Show(_present_screen(cfg, state)), timer]


def _on_present_card(cfg: SaleConfig, state: SaleState, event: Event) -> Step | None:
    if isinstance(event, CardInserted):
        return _to_reading(state)
    if isinstance(event, CardSwiped):
        return _swiped(cfg, state, event)
    if isinstance(event, SwipeFailed):
        lines = (*wrap(event.reason, 2), "Swipe again")
        return state, [Show(Screen(_present_title(cfg, state), lines, "error")), Beep("error")]
    if event == Key("CANCEL"):
        return _to_result(cfg, state, _CANCELLED)
    if _is_timeout(state, event, "card"):
        return _to_result(cfg, state, _CARD_TIMEOUT)
    return None


def _swiped(cfg: SaleConfig, state: SaleState, event: CardSwiped) -> Step:
    if event.chip and not state.chip_failed:
        return _to_present(cfg, state, ("Chip card", "Please insert card"))
    card = replace(event.card, entry_mode=ENTRY_FALLBACK) if state.chip_failed else event.card
    return _to_pin(cfg, replace(state, card=card, cvm="online_pin"))


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
    return _verify_cardholder(cfg, state, *first)


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
        return _to_result(cfg, state, _outcome_screen(event))
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
    "READING": _on_reading,
    "CHOOSE_APP": _on_choose_app,
    "PIN": _on_pin,
    "VERIFYING": _on_verifying,
    "AUTHORISING": _on_authorising,
    "PRINTING": _on_printing,
    "RESULT": _on_result,
    "REMOVE_CARD": _on_remove_card,
}
