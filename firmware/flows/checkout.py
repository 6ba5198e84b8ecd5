"""The checkout inside the menu shell (issue 11): the basket, then its tenders (card, QR,
cash, cash + card), change and the cash drawer. firmware.basket does the arithmetic,
`cfg.catalog` holds the products.

Pure functions over the shell's state (firmware.flows.common.ShellState: `cart`, `pending`,
`basket_id`, `due`, `cash`, `change`, `paid`, `asking`, and `entry`/`amount`/`limit`/`note`
for what is being keyed), on the asyncio loop like the shell. firmware.flows.shell.step
hands every event of the phases in HANDLERS to its handler, which returns (state, actions)
or None (the event changes nothing); the shell enters the checkout through open_basket
(menu item Basket), start_scanned (a barcode at idle), pay_cash (menu item Cash) and comes
back to it through to_basket, to_tender and abort (a step given up). Amounts are int minor
units. Nothing here raises on an event.

States it owns:
  BASKET        digits + ENTER add a product by code, BarcodeScanned by barcode (a bad or
                unknown one is refused with its reason); MENU: BASKET_MENU (quantity,
                remove, discount amount or percent: a supervisor CONFIRMs one over the
                limits; pay); CANCEL: CLEAR_BASKET asks first
  SAVING        SaveBasket sent, waiting for BasketSaved
  TENDER        a kept basket's amount due: 1 card (the card flow, TxnSpec.basket_id), 2 QR
                (the shell's payment-code FORM -> QR_WAITING), 3 cash, 4 cash + card; a card
                part not approved comes back here with what is still due
  NUMBER        one number: quantity, line, discount, cash part, amount tendered
  PAYING_CASH   PayCash sent (the app records it and opens the drawer), waiting for CashDone
  CASH_PRINTING Print of the cash receipt, waiting for PrintDone; then the result with the
                change, or the card for the rest of a split
Events taken: Key, BarcodeScanned, BasketSaved, CashDone, PrintDone. Actions returned: Show,
Beep, StartTimer, CancelTimers, SaveBasket, PayCash, Print, Idle (via rest), and the card
flow's actions when the card tender starts (phase CARD). BASKET and TENDER have no timer (a
basket waits for the cashier); the other checkout screens time out back to them (abort).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from firmware.basket import CODE_MAX, MAX_QTY, Basket, Product, barcode_error
from firmware.flows import sale
from firmware.flows.common import (
    ShellConfig, ShellState, Step, cleared, enter, leave_timer, rest, to_card, to_result, wait,
)
from firmware.flows.sale import edit_beep, edit_digits, login_begin, login_screen, money, number_key
from firmware.flows.types import (
    DIGITS, Action, BarcodeScanned, BasketSaved, Beep, CashDone, Event, Key, PayCash, Print,
    PrintDone, SaveBasket, Screen, Show, TxnSpec, fit, wrap,
)
from firmware.money import format_amount
from firmware.txnkinds import role_allows

__all__ = ["HANDLERS", "PHASES", "NUMBERS", "open_basket", "start_scanned", "pay_cash",
           "to_basket", "to_tender", "ask_number", "abort"]


# ---- the checkout: the basket ----

_BASKET_MENU = Screen("BASKET OPTIONS", ("1 Quantity 2 Remove", "3 Discount amount",
                                         "4 Discount percent", "5 Pay"))
_BASKET_OPTIONS = {"1": "qty", "2": "remove", "3": "discount_amount", "4": "discount_percent",
                   "5": "pay"}
_CLEAR_BASKET = Screen("BASKET", ("Clear basket?", "ENTER to clear", "CANCEL to keep"))


def _basket_screen(cfg: ShellConfig, state: ShellState) -> Screen:
    """The item count, the last line, the discount, the total, then the code being keyed,
    the last refusal or a hint."""
    cart = state.cart
    title = f"BASKET {cart.items} item{'s' * (cart.items != 1)}" if cart.lines else "BASKET"
    last = cart.lines[-1] if cart.lines else None
    top = fit(f"{last.qty} x {last.name}") if last else "No items"
    off = format_amount(cart.discount, cfg.sale.currency)
    discount = (fit(f"Discount -{off}"),) if cart.discount else ()
    bottom = state.note or (f"Code {state.entry}" if state.entry else "Key code or scan")
    lines = (top, *discount, fit(f"Total {money(cfg.sale, cart.total)}"), fit(bottom))
    return Screen(fit(title), lines, "error" if state.note else "info")


def open_basket(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    if cfg.catalog is None:
        return to_result(cfg, replace(state, back="IDLE"),
                         Screen("BASKET", ("No product catalog",), "error"), *first)
    return to_basket(cfg, replace(cleared(state, "BASKET"), cart=Basket()), *first)


def to_basket(cfg: ShellConfig, state: ShellState, *first: Action, note: str = "") -> Step:
    """The basket screen (no timer: a basket waits for the cashier); `note` a refusal."""
    state = replace(state, phase="BASKET", entry="", note=note, pending=None, login=None,
                    task="", amount=0)
    state, cancel = leave_timer(state)
    beep = [Beep("error")] if note else []
    return state, [*first, *cancel, Show(_basket_screen(cfg, state)), *beep]


def start_scanned(cfg: ShellConfig, state: ShellState, code: str) -> Step:
    """A product barcode at the idle screen: a new basket with that item (an error beep
    when there is no catalog)."""
    if cfg.catalog is None:
        return state, [Beep("error")]
    return _scanned(cfg, replace(cleared(state, "BASKET"), cart=Basket()), code)


def pay_cash(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    """A cash sale of `state.amount` (no basket): the amount tendered."""
    state = replace(state, due=state.amount, cash=state.amount)
    return ask_number(cfg, state, "tendered", *first)


def _on_basket(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if isinstance(event, BarcodeScanned):
        return _scanned(cfg, state, event.code)
    if not isinstance(event, Key):
        return None
    if event.key == "ENTER":
        if not state.entry:
            return state, [Beep("error")]
        return _add(cfg, state, cfg.catalog.by_code(state.entry))
    if event.key == "MENU":
        return enter(cfg, replace(state, phase="BASKET_MENU"), _BASKET_MENU, Beep("key"))
    if event.key == "CANCEL":
        if not state.cart.lines:
            return rest(cfg, state)
        return enter(cfg, replace(state, phase="CLEAR_BASKET"), _CLEAR_BASKET, Beep("key"))
    edited = edit_digits(state.entry, event.key, CODE_MAX)
    if edited is None:
        return None
    changed = replace(state, entry=edited, note="")
    return changed, [edit_beep(state.entry, edited), Show(_basket_screen(cfg, changed))]


def _scanned(cfg: ShellConfig, state: ShellState, code: str) -> Step:
    reason = barcode_error(code)
    if reason:
        return to_basket(cfg, state, note=reason)
    return _add(cfg, state, cfg.catalog.by_barcode(code))


def _add(cfg: ShellConfig, state: ShellState, product: Product | None) -> Step:
    if product is None:
        return to_basket(cfg, state, note="Unknown product")
    try:
        cart = state.cart.add(product)
    except ValueError as exc:  # a full line or basket: the reason is short, for the screen
        return to_basket(cfg, state, note=str(exc))
    return to_basket(cfg, replace(state, cart=cart), Beep("ok"))


def _on_basket_menu(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event in (Key("CANCEL"), Key("BACK")):
        return to_basket(cfg, state, Beep("key"))
    if not isinstance(event, Key) or event.key not in DIGITS:
        return None
    option = _BASKET_OPTIONS.get(event.key)
    if option is None:
        return state, [Beep("error")]
    if not state.cart.lines:
        return to_basket(cfg, state, note="Basket is empty")
    if option == "pay":
        return _pay(cfg, state)
    return ask_number(cfg, state, option, Beep("key"))


def _on_clear_basket(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event == Key("ENTER"):
        return rest(cfg, state, Beep("key"))
    if event in (Key("CANCEL"), Key("BACK")):
        return to_basket(cfg, state, Beep("key"))
    return None


def _discount(cfg: ShellConfig, state: ShellState, offer: Basket) -> Step:
    """Apply the discount, or have a supervisor confirm it first when over the limits."""
    if not offer.discount_needs_supervisor(cfg) or role_allows(state.role, "supervisor"):
        return to_basket(cfg, replace(state, cart=offer), Beep("key"))
    login, _ = login_begin("confirm", f"Discount {money(cfg.sale, offer.discount)}")
    state = replace(state, phase="CONFIRM", task="discount", login=login, pending=offer)
    return enter(cfg, state, login_screen(login), Beep("key"))


def _pay(cfg: ShellConfig, state: ShellState) -> Step:
    """Keep the basket in the journal (SaveBasket), then the tender menu."""
    cart = state.cart
    if not cart.total:
        return to_basket(cfg, state, note="Nothing to pay")
    if cart.total > cfg.sale.max_amount:
        return to_basket(cfg, state, note=f"Max {money(cfg.sale, cfg.sale.max_amount)}")
    save = SaveBasket(cart.lines, cart.subtotal, cart.discount, cart.total)
    return wait(state, "SAVING", Screen("BASKET", ("Saving...",)), save, Beep("key"))


def _on_saving(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, BasketSaved):
        return None
    if event.basket_id is None:
        return to_basket(cfg, state, note=event.reason or "Basket not kept")
    return to_tender(cfg, replace(state, basket_id=event.basket_id, due=state.cart.total))


# ---- the checkout: tenders ----

def _tender_screen(cfg: ShellConfig, state: ShellState) -> Screen:
    title = "STILL DUE" if state.due < state.cart.total else "PAY"
    note = (fit(state.note),) if state.note else ()
    lines = (money(cfg.sale, state.due), "1 Card  2 QR", "3 Cash  4 Cash+card", *note)
    return Screen(title, lines, "error" if state.note else "info")


def to_tender(cfg: ShellConfig, state: ShellState, *first: Action, note: str = "") -> Step:
    """The tender menu for what is still due (no timer); `note`: why it is back."""
    state = replace(state, phase="TENDER", note=note, entry="", amount=0, login=None, task="",
                    at=0, back="IDLE")
    state, cancel = leave_timer(state)
    return state, [*first, *cancel, Show(_tender_screen(cfg, state))]


def _on_tender(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event == Key("CANCEL"):
        return rest(cfg, state)
    if not isinstance(event, Key) or event.key not in DIGITS:
        return None
    if event.key == "1":
        return _pay_card(cfg, state, Beep("key"))
    if event.key == "2":
        if state.due > cfg.wallet_limit:
            return to_tender(cfg, state, Beep("error"), note="Over QR limit")
        return _pay_qr(cfg, replace(state, amount=state.due, back="TENDER", note=""),
                       Beep("key"))
    if event.key == "3":
        return ask_number(cfg, replace(state, cash=state.due), "tendered", Beep("key"))
    if event.key == "4":
        if state.due < 2:
            return to_tender(cfg, state, Beep("error"), note="Too small to split")
        return ask_number(cfg, state, "cash_part", Beep("key"))
    return state, [Beep("error")]


def _pay_qr(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    """The QR tender: the shell's QR task from its payment-code field, for `state.amount`."""
    from firmware.flows import shell  # shell imports this module: resolved at call time
    return shell.qr_code_field(cfg, state, *first)


def _pay_card(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    """The card pays what is still due of the kept basket."""
    spec = TxnSpec("sale", state.due, basket_id=state.basket_id)
    state, cancel = leave_timer(replace(state, paid=False, note=""))
    return to_card(cfg, state, sale.begin(cfg.sale, state.sale, spec), *first, *cancel)


def _cash_screen(cfg: ShellConfig, state: ShellState, *tail: str) -> Screen:
    lines = (fit(f"Paid {money(cfg.sale, state.cash)}"),
             fit(f"Change {money(cfg.sale, state.change)}"), *(fit(t) for t in tail))
    return Screen("CASH PAID", lines, "ok")


def _on_paying_cash(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if not isinstance(event, CashDone):
        return None
    if event.txn_id is None:
        back = "TENDER" if state.basket_id is not None else "IDLE"
        lines = ("Not recorded", *wrap(event.reason or "Journal error", 3))
        return to_result(cfg, replace(state, back=back), Screen("CASH", lines, "error"))
    state = replace(state, phase="CASH_PRINTING", due=state.due - state.cash,
                    change=event.change)
    return state, [Show(_cash_screen(cfg, state, "Printing...")), Beep("ok"), Print(event.txn_id)]


def _on_cash_printing(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    """The cash receipt printed: the result, or the card for the rest of a split."""
    if not isinstance(event, PrintDone):
        return None
    beep = [] if event.ok else [Beep("error")]
    if state.basket_id is not None and state.due > 0 and not state.stopping:
        return _pay_card(cfg, state, *beep)
    tail = ("Take receipt",) if event.ok else (f"Printer: {event.detail or 'error'}",
                                               "Receipt queued")
    return to_result(cfg, replace(state, back="IDLE"), _cash_screen(cfg, state, *tail), *beep)


# ---- the checkout: one number (quantity, line, discount, cash part, tendered) ----

@dataclass(frozen=True)
class Number:
    title: str
    prompt: str
    money: bool  # an amount in minor units (else a count)


NUMBERS = {
    "qty": Number("BASKET", "Quantity", False),
    "remove": Number("BASKET", "Remove line no.", False),
    "discount_amount": Number("BASKET", "Discount amount", True),
    "discount_percent": Number("BASKET", "Discount percent", False),
    "cash_part": Number("CASH", "Cash part", True),
    "tendered": Number("CASH", "Tendered", True),
}


def _number_limit(cfg: ShellConfig, state: ShellState, name: str) -> int:
    if name == "qty":
        return MAX_QTY
    if name == "remove":
        return len(state.cart.lines)
    if name == "discount_amount":
        return state.cart.subtotal
    if name == "discount_percent":
        return 100
    return state.due - 1 if name == "cash_part" else cfg.sale.max_amount


def _number_text(cfg: ShellConfig, state: ShellState, value: int) -> str:
    if NUMBERS[state.asking].money:
        return money(cfg.sale, value)
    return f"{value}%" if state.asking == "discount_percent" else str(value)


def _number_screen(cfg: ShellConfig, state: ShellState) -> Screen:
    name, cart = state.asking, state.cart
    if name == "qty":
        context = cart.lines[-1].name
    elif name == "remove":
        context = f"Lines 1-{len(cart.lines)}"
    elif name.startswith("discount"):
        context = f"Subtotal {money(cfg.sale, cart.subtotal)}"
    else:
        context = f"Due {money(cfg.sale, state.cash if name == 'tendered' else state.due)}"
    number = NUMBERS[name]
    value = _number_text(cfg, state, state.amount) if state.amount or number.money else ""
    lines = (fit(context), number.prompt, value, fit(state.note or "ENTER to confirm"))
    return Screen(number.title, lines, "error" if state.note else "info")


def ask_number(cfg: ShellConfig, state: ShellState, name: str, *first: Action) -> Step:
    state = replace(state, phase="NUMBER", asking=name, amount=0, note="",
                    limit=_number_limit(cfg, state, name))
    return enter(cfg, state, _number_screen(cfg, state), *first)


def _number_note(cfg: ShellConfig, state: ShellState, note: str) -> Step:
    state = replace(state, note=note)
    return state, [Beep("error"), Show(_number_screen(cfg, state))]


def _on_number(cfg: ShellConfig, state: ShellState, event: Event) -> Step | None:
    if event == Key("CANCEL"):
        return abort(cfg, state, Beep("key"))
    if event == Key("ENTER"):
        return _number_done(cfg, state)
    moved = number_key(state.amount, event.key, state.limit) if isinstance(event, Key) else None
    if moved is None:
        return None
    value, beep = moved
    if not beep:
        return state, []
    note = f"Max {_number_text(cfg, state, state.limit)}" if beep == "error" else ""
    state = replace(state, amount=value, note=note)
    return state, [Beep(beep), Show(_number_screen(cfg, state))]


def _number_done(cfg: ShellConfig, state: ShellState) -> Step:
    name, value, cart = state.asking, state.amount, state.cart
    if name == "qty":
        if not value:
            return _number_note(cfg, state, f"Quantity 1-{MAX_QTY}")
        return to_basket(cfg, replace(state, cart=cart.set_qty(len(cart.lines) - 1, value)),
                         Beep("key"))
    if name == "remove":
        if not value:
            return _number_note(cfg, state, f"Line 1-{len(cart.lines)}")
        return to_basket(cfg, replace(state, cart=cart.remove(value - 1)), Beep("key"))
    if name == "discount_amount":
        return _discount(cfg, state, cart.with_discount(amount=value))
    if name == "discount_percent":
        return _discount(cfg, state, cart.with_discount(percent=value))
    if name == "cash_part":
        if not value:
            return _number_note(cfg, state, "Key the cash part")
        return ask_number(cfg, replace(state, cash=value), "tendered", Beep("key"))
    if value < state.cash:
        return _number_note(cfg, state, "Not enough")
    pay = PayCash(state.cash, value, state.basket_id)
    return wait(replace(state, change=value - state.cash), "PAYING_CASH",
                Screen("CASH", ("Please wait",)), pay, Beep("key"))


def abort(cfg: ShellConfig, state: ShellState, *first: Action) -> Step:
    """A step given up (CANCEL, its timer): back to the tender menu of a kept basket, to
    the basket being built, else to rest."""
    if state.basket_id is not None:
        return to_tender(cfg, state, *first)
    if state.cart is not None:
        return to_basket(cfg, state, *first)
    return rest(cfg, state, *first)


HANDLERS = {
    "BASKET": _on_basket,
    "BASKET_MENU": _on_basket_menu,
    "CLEAR_BASKET": _on_clear_basket,
    "NUMBER": _on_number,
    "SAVING": _on_saving,
    "TENDER": _on_tender,
    "PAYING_CASH": _on_paying_cash,
    "CASH_PRINTING": _on_cash_printing,
}
PHASES = tuple(HANDLERS)
