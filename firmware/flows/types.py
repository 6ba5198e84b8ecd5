"""Shared vocabulary of the transaction flows: screens, input events and output actions.

Pure immutable values, any thread. A flow is `step(cfg, state, event) -> (state, actions)`;
the app (on the asyncio loop) feeds it events and executes the actions in list order.
Screens fit a 20x4 character LCD: a title plus at most 4 lines of at most 20 characters,
checked on construction. Times are seconds (float). No event or action carries a PIN;
only CardRead holds card data, and screens show only `CardData.masked_pan`.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Union

from firmware.emv.card import CVMS, CardData

__all__ = [
    "LCD_COLS", "LCD_ROWS", "TONES", "KEYS", "DIGITS", "OUTCOMES", "BEEPS",
    "Screen", "fit", "wrap",
    "Key", "PinLength", "CardInserted", "CardRemoved", "CardRead", "CardReadFailed",
    "AppChoice", "PinVerified", "CardSwiped", "SwipeFailed", "ReaderStatus", "LinkStatus",
    "AuthResult", "PrintDone", "Timeout", "Shutdown", "Event",
    "OriginalRef", "TxnSpec", "TxnSummary", "LoginResult", "TxnFound", "TxnPage", "CodeScanned",
    "QrProgress", "RiskResult", "TaskDone", "RISK_ACTIONS", "TASKS", "BarcodeScanned",
    "BasketLine", "BasketSaved", "CashDone", "TrainingSet", "PrinterStatus",
    "Show", "Beep", "StartTimer", "CancelTimers", "ReadCard", "SelectApp", "StartPin", "StopPin",
    "VerifyPin", "Authorise", "Print", "Idle", "CheckLogin", "Logout", "FindTxn", "ListTxns",
    "Reprint", "RunTask", "QrPay", "CheckRisk", "SaveBasket", "PayCash", "OpenDrawer",
    "SetTraining", "Action", "CVMS", "READ_NEXT",
]

LCD_COLS = 20
LCD_ROWS = 4
TONES = ("info", "ok", "error")
DIGITS = tuple("0123456789")
KEYS = DIGITS + ("ENTER", "BACK", "CLEAR", "CANCEL", "MENU")  # MENU: the F / function key
OUTCOMES = ("approved", "declined", "no_response", "not_sent")
BEEPS = ("key", "ok", "error")


@dataclass(frozen=True)
class Screen:
    """What the display shows; `tone` lets a display backend colour it."""

    title: str
    lines: tuple[str, ...] = ()
    tone: str = "info"

    def __post_init__(self) -> None:
        if self.tone not in TONES:
            raise ValueError(f"Screen {self.title!r}: tone {self.tone!r} not in {TONES}")
        if len(self.lines) > LCD_ROWS:
            raise ValueError(f"Screen {self.title!r}: {len(self.lines)} lines > {LCD_ROWS}")
        for text in (self.title, *self.lines):
            if len(text) > LCD_COLS:
                raise ValueError(f"Screen {self.title!r}: line {text!r} > {LCD_COLS} chars")


def fit(text: str, width: int = LCD_COLS) -> str:
    """One display line: `text` cut to `width` characters ('...' marks a cut)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def wrap(text: str, max_lines: int, width: int = LCD_COLS) -> tuple[str, ...]:
    """`text` word-wrapped to at most `max_lines` display lines, a newline starting a new
    line; a cut ends in '...'."""
    if max_lines <= 0:
        return ()
    lines = [line for part in text.split("\n") for line in textwrap.wrap(part, width)]
    if len(lines) <= max_lines:
        return tuple(lines)
    rest = " ".join(lines[max_lines - 1:])  # longer than `width`, so fit() cuts it
    return (*lines[: max_lines - 1], fit(rest, width))


# ---- what a transaction is about (built by the menu flow, carried by the card flow) ----

@dataclass(frozen=True)
class OriginalRef:
    """The original transaction a void, refund, pre-auth cancel or completion names. From
    the journal when it is this terminal's (`txn_id`), else as keyed (RRN, date, auth code)."""

    txn_id: int | None = None  # journal row, when found in this terminal's journal
    kind: str = ""  # its txnkinds name, "" when not known
    stan: int = 0
    batch: int = 0
    rrn: str = ""  # 12 characters, "" when not known
    date: str = ""  # MMDD of the original (field 13)
    auth_code: str = ""  # 6 characters, "" when not known
    amount: int = 0  # minor units, the original's amount (0 when not known)
    masked_pan: str = ""  # for the confirm screen and the card check


@dataclass(frozen=True, repr=False)
class TxnSpec:
    """What the card flow authorises: a txnkinds kind, an amount (minor units; 0 for a
    balance inquiry), the original it names, and for a card repayment the card being paid
    (`target`: keyed or swiped; its repr is masked)."""

    kind: str = "sale"
    amount: int = 0
    original: OriginalRef | None = None
    target: CardData | None = None
    advice: bool = False  # a pre-auth completion sent as an advice (0220, store-and-forward)
    basket_id: int | None = None  # the kept basket this payment pays (all or part of)

    def __repr__(self) -> str:
        target = f", target={self.target.masked_pan}" if self.target else ""
        return f"TxnSpec({self.kind}, {self.amount}, original={self.original}{target})"


@dataclass(frozen=True)
class TxnSummary:
    """One journal row as the display shows it (masked PAN only)."""

    txn_id: int
    kind: str
    stan: int
    batch: int
    amount: int  # minor units
    currency: int
    status: str  # journal status: APPROVED, DECLINED, REVERSED ...
    created_at: str  # ISO-8601 local time
    operator: str
    masked_pan: str = ""
    rrn: str = ""
    auth_code: str = ""
    entry_mode: str = ""
    wallet: str = ""  # QR payments: wechat | alipay | unionpay_qr
    voided: bool = False  # a void / completion void of it was approved
    refunded: int = 0  # minor units refunded against it so far
    offline: bool = False


# ---- events (inputs to a flow) ----

@dataclass(frozen=True)
class Key:
    key: str  # one of KEYS


@dataclass(frozen=True)
class PinLength:
    """The PIN pad buffer changed; only its length reaches the flow, never the digits."""

    length: int


@dataclass(frozen=True)
class CardInserted:
    pass


@dataclass(frozen=True)
class CardRemoved:
    pass


@dataclass(frozen=True)
class CardRead:
    """The chip (or contactless) card is read and checked up to cardholder verification.

    `cvm` is what the terminal must do next: "online_pin" (PIN screen, block in the
    request), "offline_pin" (PIN screen, then VerifyPin), "signature" or "none" (straight
    to Authorise; signature puts a signature line on the merchant receipt).
    """

    card: CardData
    cvm: str = "online_pin"  # one of CVMS

    def __post_init__(self) -> None:
        if self.cvm not in CVMS:
            raise ValueError(f"CardRead: cvm {self.cvm!r} not in {CVMS}")


# CardReadFailed.next: what the cashier may do instead of giving up.
READ_NEXT = ("", "swipe", "insert")


@dataclass(frozen=True)
class CardReadFailed:
    """The card could not be used. `next`: "" = the sale ends with `reason`; "swipe" = the
    chip failed and a fallback swipe is allowed; "insert" = a tap was refused (over the
    contactless limit, or the card asks for the contact interface): insert the card."""

    reason: str  # short, safe to show and log (no card data)
    next: str = ""  # one of READ_NEXT

    def __post_init__(self) -> None:
        if self.next not in READ_NEXT:
            raise ValueError(f"CardReadFailed: next {self.next!r} not in {READ_NEXT}")


@dataclass(frozen=True)
class AppChoice:
    """The card holds several applications and the cardholder must pick one (SelectApp)."""

    labels: tuple[str, ...]  # display labels in the card's priority order, 2..9 of them


@dataclass(frozen=True)
class PinVerified:
    """Result of an offline PIN VERIFY. ok: PIN right. Otherwise tries_left > 0: ask again;
    tries_left == 0 (or None: unknown, card refused): the PIN is blocked or unusable, and
    `next_cvm` is what the card's CVM list asks for instead ("none" = go on to Authorise,
    the failure is recorded in the TVR and the card or host decides)."""

    ok: bool
    tries_left: int | None = None
    next_cvm: str = "none"  # one of CVMS


@dataclass(frozen=True, repr=False)
class CardSwiped:
    """A magnetic stripe was read and parsed (Luhn and expiry checked by the reader side).

    `card.entry_mode` is ENTRY_MAGSTRIPE; the flow turns it into ENTRY_FALLBACK after a
    failed chip read. `chip`: the service code says the card has a chip (2xx / 6xx), so
    unless the chip already failed the cardholder is told to insert it."""

    card: CardData
    chip: bool

    def __repr__(self) -> str:
        return f"CardSwiped({self.card!r}, chip={self.chip})"


@dataclass(frozen=True)
class SwipeFailed:
    reason: str  # short, safe to show and log: "unreadable stripe", "card expired", ...


@dataclass(frozen=True)
class ReaderStatus:
    """The card reader's health changed: fault "" = working, else a short operator text."""

    fault: str


@dataclass(frozen=True)
class PrinterStatus:
    """The printer's health changed: fault "" = printing, else a short operator text
    ("paper out"); receipts that could not print wait in the journal meanwhile."""

    fault: str


@dataclass(frozen=True)
class LinkStatus:
    """The acquirer link and the store-and-forward queue, for the idle screen."""

    online: bool | None  # None: not known yet (no exchange since the start)
    queued: int = 0  # reversals and advices waiting to be sent
    alerts: int = 0  # declined or expired items the operator has to look at


@dataclass(frozen=True)
class AuthResult:
    """The acquirer's answer (or its absence), prepared by the app."""

    outcome: str  # one of OUTCOMES
    code: str = ""  # field 39 response code
    message: str = ""  # short operator text for the code
    auth_code: str = ""  # field 38
    rrn: str = ""  # field 37
    txn_id: int | None = None  # journal row id, for Print
    offline: str = ""  # approved offline: Y1 | Y3 (by the card) | 00 (store-and-forward)
    balance: int | None = None  # balance inquiry: minor units, shown, never stored


@dataclass(frozen=True)
class PrintDone:
    ok: bool
    detail: str = ""  # why printing failed (e.g. "paper out"); the receipt stays queued


@dataclass(frozen=True)
class Timeout:
    """A StartTimer fired; stale unless name and token match the flow's live timer."""

    name: str
    token: int


@dataclass(frozen=True)
class Shutdown:
    """The service is stopping: cancel anything interactive."""


@dataclass(frozen=True)
class LoginResult:
    """Answer to CheckLogin: `ok` with the operator's role, else the reason to show
    ("Wrong password", "Locked 14 min", "No such operator")."""

    ok: bool
    operator: str = ""
    role: str = ""  # txnkinds.ROLES
    reason: str = ""
    purpose: str = "login"  # echoes CheckLogin.purpose


@dataclass(frozen=True)
class TxnFound:
    """Answer to FindTxn: the row, or None with the reason ("Not found", "Not in batch")."""

    summary: TxnSummary | None
    reason: str = ""


@dataclass(frozen=True)
class TxnPage:
    """Answer to ListTxns: newest first, `offset` rows skipped, `total` rows in the journal."""

    rows: tuple[TxnSummary, ...]
    offset: int
    total: int


@dataclass(frozen=True, repr=False)
class CodeScanned:
    """A wallet payment code (digits) from the scanner; garbage never reaches the flow."""

    code: str

    def __repr__(self) -> str:
        return f"CodeScanned(...{self.code[-4:]})"


@dataclass(frozen=True)
class QrProgress:
    """A QR payment is waiting for the customer (polling); `text` for the screen."""

    text: str


@dataclass(frozen=True)
class BarcodeScanned:
    """A product barcode from the scanner (8, 12 or 13 digits; the check digit is the
    basket's to judge, so a bad one is refused with its reason on screen)."""

    code: str


@dataclass(frozen=True)
class BasketLine:
    """One line of a basket: a product, how many, its unit price and the line amount."""

    code: str  # product code
    name: str
    qty: int
    unit: int  # minor units
    amount: int  # minor units: qty * unit


@dataclass(frozen=True)
class BasketSaved:
    """Answer to SaveBasket: the basket's journal id (None and `reason` when it failed)."""

    basket_id: int | None
    reason: str = ""


@dataclass(frozen=True)
class CashDone:
    """Answer to PayCash: the cash row (printed by a later Print) and the change due."""

    txn_id: int | None
    change: int = 0  # minor units
    reason: str = ""  # why it was not recorded (txn_id None)


@dataclass(frozen=True)
class TrainingSet:
    """Answer to SetTraining: the terminal is (or is not) in training mode now."""

    on: bool
    reason: str = ""  # why the switch was refused (e.g. the host for training failed)


RISK_ACTIONS = ("ok", "confirm", "refuse")


@dataclass(frozen=True)
class RiskResult:
    """Answer to CheckRisk: go on, ask a supervisor to confirm, or refuse (with why)."""

    action: str  # RISK_ACTIONS
    reason: str = ""


@dataclass(frozen=True)
class TaskDone:
    """A menu task (RunTask, Reprint) ended: a result screen's title and lines."""

    ok: bool
    title: str
    lines: tuple[str, ...] = ()


Event = Union[Key, PinLength, CardInserted, CardRemoved, CardRead, CardReadFailed, AppChoice,
              PinVerified, CardSwiped, SwipeFailed, ReaderStatus, LinkStatus, AuthResult, PrintDone,
              Timeout, Shutdown, LoginResult, TxnFound, TxnPage, CodeScanned, QrProgress, RiskResult,
              TaskDone, BarcodeScanned, BasketSaved, CashDone, TrainingSet, PrinterStatus]


# ---- actions (outputs the app executes, in order) ----

@dataclass(frozen=True)
class Show:
    screen: Screen


@dataclass(frozen=True)
class Beep:
    kind: str  # one of BEEPS


@dataclass(frozen=True)
class StartTimer:
    """Post Timeout(name, token) after `seconds`; replaces any running timer."""

    name: str
    seconds: float
    token: int


@dataclass(frozen=True)
class CancelTimers:
    pass


@dataclass(frozen=True)
class ReadCard:
    """Read the inserted chip card on the reader worker -> CardRead or CardReadFailed."""


@dataclass(frozen=True)
class SelectApp:
    """Go on with the card's application number `index` (0-based, from AppChoice.labels)."""

    index: int


@dataclass(frozen=True)
class VerifyPin:
    """Send the PIN pad's PIN to the card (offline plaintext PIN VERIFY), wipe it -> PinVerified
    (or CardReadFailed when the card is gone)."""


@dataclass(frozen=True)
class StartPin:
    """Route digit keys (and BACK/CLEAR) to the PIN pad; it reports PinLength events."""

    max_len: int


@dataclass(frozen=True)
class StopPin:
    """Stop PIN entry and wipe the PIN buffer."""


@dataclass(frozen=True)
class Authorise:
    """Build the PIN block (then wipe the PIN), persist, send -> AuthResult."""

    kind: str  # a txnkinds name
    amount: int  # minor units
    spec: TxnSpec | None = None  # the whole transaction (original, repayment target); None = sale


@dataclass(frozen=True)
class Print:
    """Render and print merchant and customer copies of a journal row -> PrintDone."""

    txn_id: int


@dataclass(frozen=True)
class Idle:
    """The flow is back at idle (the app waits for this before shutting down)."""


@dataclass(frozen=True)
class CheckLogin:
    """Check `operator` with the password in the PIN pad buffer (then wiped) -> LoginResult.
    purpose "login": the terminal's operator changes on success; "confirm": a supervisor
    confirms one step (a risk rule, a supervisor-only item) and the operator stays."""

    operator: str
    purpose: str = "login"


@dataclass(frozen=True)
class Logout:
    """The operator signs off: later rows carry no operator until the next login."""


@dataclass(frozen=True)
class FindTxn:
    """Look a transaction up -> TxnFound. by: "stan" (current batch), "rrn", "last"."""

    by: str
    value: str = ""


@dataclass(frozen=True)
class ListTxns:
    """A page of the journal, newest first -> TxnPage."""

    offset: int
    count: int


@dataclass(frozen=True)
class Reprint:
    """Print a receipt again, marked REPRINT (None: the last one) -> TaskDone."""

    txn_id: int | None = None


TASKS = ("echo", "signon", "settle", "x_report", "info")  # info: admin, ids and key checks


@dataclass(frozen=True)
class RunTask:
    """Run a menu task on the app (one of TASKS) -> TaskDone."""

    name: str


@dataclass(frozen=True, repr=False)
class QrPay:
    """Take a wallet QR payment -> QrProgress while the customer confirms, then AuthResult."""

    amount: int  # minor units
    code: str  # the customer's payment code (digits)
    basket_id: int | None = None  # issue 11: the kept basket this payment pays (all or part of)

    def __repr__(self) -> str:
        return f"QrPay({self.amount}, ...{self.code[-4:]}, basket_id={self.basket_id})"


@dataclass(frozen=True)
class CheckRisk:
    """Apply the limits and velocity rules to what is about to be authorised -> RiskResult."""

    kind: str
    amount: int  # minor units
    entry_mode: str  # field 22 of the card ("051", "071", "021", "801", "011"); "" for QR
    wallet: str = ""  # QR: wechat | alipay | unionpay_qr


@dataclass(frozen=True)
class SaveBasket:
    """Keep the basket in the journal before it is paid -> BasketSaved."""

    lines: tuple[BasketLine, ...]
    subtotal: int  # minor units
    discount: int  # minor units
    total: int  # minor units: subtotal - discount


@dataclass(frozen=True)
class PayCash:
    """Record a cash payment of `amount` (the customer gave `tendered`) -> CashDone; with
    [receipt] drawer the cash drawer is kicked open."""

    amount: int  # minor units
    tendered: int  # minor units, >= amount
    basket_id: int | None = None


@dataclass(frozen=True)
class OpenDrawer:
    """Kick the cash drawer open (no sale: a supervisor's no-sale)."""


@dataclass(frozen=True)
class SetTraining:
    """Switch training mode on or off (the terminal is idle) -> TrainingSet."""

    on: bool


Action = Union[Show, Beep, StartTimer, CancelTimers, ReadCard, SelectApp, StartPin, StopPin,
               VerifyPin, Authorise, Print, Idle, CheckLogin, Logout, FindTxn, ListTxns, Reprint,
               RunTask, QrPay, CheckRisk, SaveBasket, PayCash, OpenDrawer, SetTraining]
