"""Receipt layout: one list of styled lines, emitted as ESC/POS bytes or as plain text.

Pure functions, any thread, no I/O: `render()` returns the bytes that the printer
worker later writes (hal/printer.py); `preview()` returns the same receipt as text.
Both are built from `layout()`, so the paper and the preview cannot drift apart.

Bytes (python-escpos 3.1 `Dummy`, profile "default", so they are deterministic):
  ESC @ (init), ESC t 0 (code page 437 forced: no automatic code-page switching),
  FS & (enter Chinese/Kanji mode, GB18030/GBK only, only when a line is not ASCII),
  per line: the style bytes when the style changes, then the line text and LF,
  FS . (leave Chinese mode, if entered), ESC d 6 (feed), GS V 0 (full cut).
ASCII lines go through `text()`; any other line is sent as `line.encode(encoding)`
through `_raw()`, because python-escpos's own encoding guesser handles GB18030/GBK
badly (python-escpos #491, #678). Sizes use GS ! (applies to Kanji too, unlike ESC !).
Layout counts a wide (CJK) character as 2 columns, as the printer does in Chinese mode.
No expiry date, no full PAN: `ReceiptData` refuses a masked_pan (or target_pan) that is
not masked.

Every transaction kind of firmware.txnkinds has a receipt (TXN_TYPES, keyed by the kind's
name in upper case). Kinds that give money back (refunds, voids: KINDS totals CREDIT or
VOID) print the amount with a leading "-"; the amount in `ReceiptData` is always the
journal's non-negative minor units. A QR payment prints the masked payment code (masked
like a PAN, entry mode "QR") as "PAY CODE" and its wallet, without a cardholder block.
A reprint differs from the first print only by its "*** REPRINT ***" line, on both copies.
A balance inquiry is shown on the screen, never printed.

Checkout (issue 11): a payment of a basket prints its items on the CUSTOMER copy only, each
as its name, then "qty x unit" and the line amount, then SUBTOTAL, DISCOUNT (when there is
one, with a "-") and TOTAL (only when this payment pays part of the basket: split tender),
before the AMOUNT line. A cash payment (txn type CASH, entry mode CASH, no masked PAN)
prints "PAYMENT CASH" instead of a card, CASH TENDERED and CHANGE under the amount, and no
cardholder block. A training receipt prints "*** TRAINING ***" under the copy name and
"NOT A PAYMENT" under the amount, on both copies. Receipts without these fields are
unchanged.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from firmware.escpos_cache import capabilities_cache

with capabilities_cache():  # escpos reads its cache setting once, at import
    from escpos.printer import Dummy

from firmware import wallet as qr_wallets
from firmware.money import CURRENCIES, currency_alpha, format_amount
from firmware.txnkinds import CREDIT, KINDS, VOID

__all__ = ["ReceiptData", "render", "preview", "layout", "text_width", "COPIES", "LANGS", "ENCODINGS",
           "TXN_TYPES", "WALLETS", "NEGATIVE_TYPES", "Line", "render_lines", "lines_text", "center",
           "pair", "wrap_text"]

COPIES = ("merchant", "customer")
LANGS = ("en", "zh")
MIN_WIDTH, MAX_WIDTH = 32, 64  # 32 columns on 58 mm paper, 48 on 80 mm

# Chinese mode per printer encoding: FS & on GB18030/GBK printers; UTF-8 printers
# are switched to UTF-8 by their own setup tool and take the bytes as they are.
ENCODINGS: dict[str, tuple[bytes, bytes]] = {
    "GB18030": (b"\x1c&", b"\x1c."),
    "GBK": (b"\x1c&", b"\x1c."),
    "UTF-8": (b"", b""),
}

# style -> python-escpos set() arguments
STYLES: dict[str, dict] = {
    "normal": {"custom_size": True, "width": 1, "height": 1, "bold": False},
    "bold": {"custom_size": True, "width": 1, "height": 1, "bold": True},
    "big": {"custom_size": True, "width": 1, "height": 2, "bold": True},  # double height only
}

# label key -> (English, Chinese)
LABELS: dict[str, tuple[str, str]] = {
    "merchant": ("MERCHANT COPY", "商户存根"),
    "customer": ("CUSTOMER COPY", "持卡人存根"),
    "merchant_id": ("MERCHANT NO.", "商户编号"),
    "terminal_id": ("TERMINAL NO.", "终端编号"),
    "operator": ("OPERATOR NO.", "操作员号"),
    "card": ("CARD NO.", "卡号"),
    "pay_code": ("PAY CODE", "付款码"),  # QR: the masked payment code instead of a card
    "target_card": ("TO CARD", "还款卡号"),  # repayment: the credit card paid
    "wallet": ("WALLET", "钱包"),
    "entry_mode": ("ENTRY MODE", "输入方式"),
    "txn_type": ("TXN TYPE", "交易类型"),
    "batch": ("BATCH NO.", "批次号"),
    "stan": ("STAN", "凭证号"),
    "when": ("DATE/TIME", "日期时间"),
    "rrn": ("REF NO.", "参考号"),
    "auth_code": ("AUTH NO.", "授权码"),
    "original_stan": ("ORIG. STAN", "原凭证号"),
    "original_rrn": ("ORIG. REF", "原参考号"),
    "original_auth": ("ORIG. AUTH", "原授权码"),
    "original_date": ("ORIG. DATE", "原交易日期"),
    "aid": ("AID", "AID"),
    "app_label": ("APP LABEL", "应用标签"),
    "tc": ("TC", "TC"),
    "arqc": ("ARQC", "ARQC"),
    "aac": ("AAC", "AAC"),
    "tvr": ("TVR", "TVR"),
    "tsi": ("TSI", "TSI"),
    "amount": ("AMOUNT:", "金额:"),
    "offline": ("*** OFFLINE ***", "*** 离线交易 ***"),
    "auto_refund": ("AUTO REFUND (PAID LATE)", "自动退款(超时支付)"),
    "reprint": ("*** REPRINT ***", "*** 重打印 ***"),
    "training": ("*** TRAINING ***", "*** 培训模式 ***"),
    "not_payment": ("NOT A PAYMENT", "非真实交易"),
    "payment": ("PAYMENT", "付款方式"),  # cash: instead of the card and entry mode lines
    "subtotal": ("SUBTOTAL", "小计"),
    "discount": ("DISCOUNT", "折扣"),
    "total": ("TOTAL", "合计"),
    "tendered": ("CASH TENDERED", "实收"),
    "change": ("CHANGE", "找零"),
    "pin_verified": ("PIN VERIFIED", "密码验证"),
    "signature": ("CARDHOLDER SIGNATURE:", "持卡人签名:"),
    "no_cvm": ("NO PIN, NO SIGNATURE", "免密免签"),
    "acknowledge": (
        "I ACKNOWLEDGE SATISFACTORY RECEIPT OF RELATIVE GOODS/SERVICES",
        "本人确认以上交易，同意将其记入本卡账户",
    ),
}

# "SALE", "VOID", "PREAUTH_CANCEL", "QR_SALE" ... -> (English, Chinese), from the kinds table
TXN_TYPES: dict[str, tuple[str, str]] = {name.upper(): (k.label, k.label_zh) for name, k in KINDS.items()}
# the types whose amount is printed with a leading "-": money back to the customer
NEGATIVE_TYPES = frozenset(name.upper() for name, k in KINDS.items() if k.totals in (CREDIT, VOID))

# journal txn.wallet -> (English, Chinese), from the wallets table
WALLETS: dict[str, tuple[str, str]] = {
    name: (w.label, w.label_zh) for name, w in qr_wallets.WALLETS.items()}

ENTRY_MODES: dict[str, tuple[str, str]] = {
    "CHIP": ("CHIP", "插卡"),
    "CONTACTLESS": ("CONTACTLESS", "挥卡"),
    "SWIPE": ("SWIPE", "刷卡"),
    "FALLBACK": ("FALLBACK SWIPE", "降级刷卡"),
    "MANUAL": ("MANUAL", "手输"),
    "QR": ("QR", "扫码"),
    "CASH": ("CASH", "现金"),  # txn type CASH only: printed as the PAYMENT line, no card
}

CURRENCY_SHOWN_ZH = {156: "RMB"}  # Chinese receipts print RMB for CNY

SIGNATURE_BLANK_LINES = 2
MAX_VISIBLE_PAN_DIGITS = 10  # first 6 + last 4 (PCI DSS 3.4.1)

Line = tuple[str, str]  # (style, text already laid out to the paper width)
BasketItem = tuple[str, int, int, int]  # (name, qty, unit price, line amount), minor units


@dataclass(frozen=True)
class ReceiptData:
    """One transaction as printed. Holds no expiry date and only a masked PAN."""

    merchant_name: str
    merchant_id: str
    terminal_id: str
    operator: str
    txn_type: str  # key of TXN_TYPES
    masked_pan: str | None  # mask_pan() output: first 6 / last 4; None only for CASH
    entry_mode: str  # key of ENTRY_MODES
    amount: int  # minor units
    currency: int  # ISO 4217 numeric
    when: datetime
    batch: int
    stan: int
    rrn: str | None
    auth_code: str | None
    aid: str | None = None
    app_label: str | None = None
    tc: str | None = None  # chip cryptogram hex (its type in `ac_type`)
    offline: bool = False
    pin_verified: bool = False
    ac_type: str = "TC"  # "TC" | "ARQC" | "AAC": the label printed for `tc`
    tvr: str | None = None  # EMV TVR hex, merchant copy only
    tsi: str | None = None  # EMV TSI hex, merchant copy only
    no_cvm: bool = False  # no cardholder verification (small contactless): no signature line
    reprint: bool = False
    original_stan: int | None = None  # void, refund, completion ...: the original's STAN
    original_rrn: str | None = None  # the original's RRN (field 37)
    original_auth: str | None = None  # the original's authorisation code (pre-auth code)
    original_date: str | None = None  # the original's date, MMDD
    wallet: str | None = None  # QR: key of WALLETS (the journal's txn.wallet)
    target_pan: str | None = None  # repayment: the credit card paid, masked
    auto_refund: bool = False  # QR paid after the terminal gave up: refunded automatically
    basket_lines: tuple[BasketItem, ...] = ()  # the basket this payment pays (customer copy)
    subtotal: int | None = None  # the basket's: the sum of its line amounts
    discount: int = 0  # the basket's discount (minor units, >= 0)
    tendered: int | None = None  # cash: what the customer handed over
    change: int | None = None  # cash: tendered - amount
    training: bool = False  # training mode: not a payment
    footer: str = ""  # [receipt] footer: the merchant's closing lines ("\n" = a new line)
    qr: str = ""  # the QR code printed under the receipt ("" = none): [receipt] qr filled in

    def __post_init__(self) -> None:
        cash = self.txn_type == "CASH"
        if cash != (self.entry_mode == "CASH") or cash != (self.masked_pan is None):
            raise ValueError("receipt txn_type CASH goes with entry_mode CASH and no masked_pan")
        if not cash:
            _check_masked_pan(self.masked_pan)
        if self.target_pan is not None:
            _check_masked_pan(self.target_pan, "target_pan")
        if self.wallet is not None:
            _check_in("wallet", self.wallet, WALLETS)
        _check_in("txn_type", self.txn_type, TXN_TYPES)
        _check_in("entry_mode", self.entry_mode, ENTRY_MODES)
        _check_in("currency", self.currency, CURRENCIES)
        _check_in("ac_type", self.ac_type, ("TC", "ARQC", "AAC"))
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise ValueError(f"receipt amount must be int minor units, got {self.amount!r}")
        for name in ("batch", "stan", "original_stan"):
            value = getattr(self, name)
            if name == "original_stan" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 999_999:
                raise ValueError(f"receipt {name} must be an int 0..999999, got {value!r}")
        if self.original_date is not None and not _is_mmdd(self.original_date):
            raise ValueError(f"receipt original_date must be MMDD, got {self.original_date!r}")
        _check_basket(self)
        _check_cash(self)


def _check_basket(data: ReceiptData) -> None:
    for number, item in enumerate(data.basket_lines, start=1):
        if not (isinstance(item, tuple) and len(item) == 4 and isinstance(item[0], str)
                and item[0] and all(_is_money(v) for v in item[1:]) and item[1] > 0):
            raise ValueError(f"receipt basket_lines {number}: expected (name, qty > 0, unit, "
                             f"amount) with int minor units, got {item!r}")
    if not data.basket_lines:
        if data.subtotal is not None or data.discount:
            raise ValueError("receipt subtotal and discount need basket_lines")
        return
    if data.subtotal != sum(item[3] for item in data.basket_lines):
        raise ValueError(f"receipt subtotal {data.subtotal!r} is not the sum of the basket lines")
    if not (_is_money(data.discount) and data.discount <= data.subtotal):
        raise ValueError(f"receipt discount must be int 0..subtotal, got {data.discount!r}")
    if data.amount > data.subtotal - data.discount:
        raise ValueError(f"receipt amount {data.amount} is more than the basket's total")


def _check_cash(data: ReceiptData) -> None:
    if data.tendered is None and data.change is None:
        return
    if data.txn_type != "CASH":
        raise ValueError("receipt tendered and change are for txn_type CASH only")
    if not (_is_money(data.tendered) and data.tendered >= data.amount):
        raise ValueError(f"receipt tendered must be int >= amount, got {data.tendered!r}")
    if data.change != data.tendered - data.amount:
        raise ValueError(f"receipt change must be tendered - amount, got {data.change!r}")


def _is_money(value: object) -> bool:
    """A non-negative int (not a bool): minor units or a count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_masked_pan(masked_pan: str, name: str = "masked_pan") -> None:
    digits = sum(ch.isdigit() for ch in masked_pan)
    well_formed = all(ch.isdigit() or ch == "*" for ch in masked_pan)
    if "*" not in masked_pan or not well_formed or digits > MAX_VISIBLE_PAN_DIGITS:
        # the value itself is not repeated: it may be a clear PAN
        raise ValueError(f"receipt {name} is not a masked PAN ({len(masked_pan)} chars, {digits} digits)")


def _is_mmdd(text: str) -> bool:
    return len(text) == 4 and text.isdigit() and 1 <= int(text[:2]) <= 12 and 1 <= int(text[2:]) <= 31


def _check_in(name: str, value: object, table: dict) -> None:
    if value not in table:
        raise ValueError(f"receipt {name} {value!r} unknown; expected one of {sorted(table)}")


def _check_options(copy: str, lang: str, width: int) -> None:
    if copy not in COPIES:
        raise ValueError(f"receipt copy {copy!r} unknown; expected one of {COPIES}")
    if lang not in LANGS:
        raise ValueError(f"receipt lang {lang!r} unknown; expected one of {LANGS}")
    if not isinstance(width, int) or not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"receipt width must be {MIN_WIDTH}..{MAX_WIDTH} columns, got {width!r}")


# ---------------------------------------------------------------- width math


def char_width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    """Printed columns: a wide (CJK) character takes 2."""
    return sum(char_width(ch) for ch in text)


def _wrap(text: str, width: int) -> list[str]:
    """Split into lines of at most `width` columns, breaking at spaces or between CJK
    characters; a word longer than a line is split where it must."""
    lines, current = [], ""
    for token in re.findall(r"[!-~]+| +|.", text):
        if not current and token.isspace():
            continue
        if text_width(current) + text_width(token) <= width:
            current += token
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = "" if token.isspace() else token
        while text_width(current) > width:
            head = _fit(current, width)
            lines.append(head)
            current = current[len(head):]
    return lines + [current.rstrip()] if current.strip() or not lines else lines


def _fit(text: str, width: int) -> str:
    """The longest prefix of `text` that fits in `width` columns."""
    used = 0
    for n, ch in enumerate(text):
        used += char_width(ch)
        if used > width:
            return text[:n]
    return text


def _center(text: str, width: int) -> list[str]:
    return [" " * ((width - text_width(part)) // 2) + part for part in _wrap(text, width)]


def _pair(label: str, value: str, width: int) -> list[str]:
    """Label left, value right; value on its own right-aligned line when both do not fit."""
    gap = width - text_width(label) - text_width(value)
    if gap >= 1:
        return [label + " " * gap + value]
    values = _wrap(value, width)
    return _wrap(label, width) + [" " * (width - text_width(v)) + v for v in values]


# public names of the line builders, for other slips (reports) laid out the same way
center, pair, wrap_text = _center, _pair, _wrap


# ---------------------------------------------------------------- layout


def layout(data: ReceiptData, copy: str, *, lang: str = "en", width: int = 32) -> list[Line]:
    """The receipt as (style, text) lines, each at most `width` columns."""
    _check_options(copy, lang, width)
    i = LANGS.index(lang)

    def label(key: str) -> str:
        return LABELS[key][i]

    def styled(style: str, texts: list[str]) -> list[Line]:
        return [(style, text) for text in texts]

    def pair(key: str, value: str | None) -> list[Line]:
        return [] if value is None else styled("normal", _pair(label(key), value, width))

    rule = [("normal", "-" * width)]
    lines = styled("big", _center(data.merchant_name, width))
    lines += styled("normal", _center(label(copy), width))
    if data.reprint:
        lines += styled("bold", _center(label("reprint"), width))
    if data.training:
        lines += styled("bold", _center(label("training"), width))
    lines += rule
    lines += pair("merchant_id", data.merchant_id)
    lines += pair("terminal_id", data.terminal_id)
    lines += pair("operator", data.operator)
    lines += rule
    lines += pair("pay_code" if data.entry_mode == "QR" else "card", data.masked_pan)
    lines += pair("target_card", data.target_pan)
    lines += pair("wallet", data.wallet and WALLETS[data.wallet][i])
    lines += pair("payment" if data.entry_mode == "CASH" else "entry_mode",
                  ENTRY_MODES[data.entry_mode][i])
    lines += pair("txn_type", TXN_TYPES[data.txn_type][i])
    lines += pair("batch", f"{data.batch:06d}")
    lines += pair("stan", f"{data.stan:06d}")
    lines += pair("when", data.when.strftime("%Y/%m/%d %H:%M:%S"))
    lines += pair("rrn", data.rrn)
    lines += pair("auth_code", data.auth_code)
    lines += pair("original_stan", None if data.original_stan is None else f"{data.original_stan:06d}")
    lines += pair("original_rrn", data.original_rrn)
    lines += pair("original_auth", data.original_auth)
    lines += pair("original_date", _month_day(data.original_date))
    lines += pair("aid", data.aid)
    lines += pair("app_label", data.app_label)
    lines += pair(data.ac_type.lower(), data.tc)
    if copy == "merchant":
        lines += pair("tvr", data.tvr)
        lines += pair("tsi", data.tsi)
    lines += rule
    if copy == "customer" and data.basket_lines:
        lines += _basket_block(data, label, width) + rule
    lines += styled("big", _pair(label("amount"), _amount_text(data, lang), width))
    lines += pair("tendered", _money(data, data.tendered))
    lines += pair("change", _money(data, data.change))
    if data.auto_refund:
        lines += styled("bold", _center(label("auto_refund"), width))
    if data.offline:
        lines += styled("bold", _center(label("offline"), width))
    if data.training:
        lines += styled("bold", _center(label("not_payment"), width))
    lines += rule
    lines += _cardholder_block(data, copy, label, width)
    for part in data.footer.split("\n") if data.footer else ():
        lines += styled("normal", _center(part, width))
    if data.qr:
        lines.append(("qr", data.qr))  # render() prints the code itself; the preview a mark
    return lines


def _basket_block(data: ReceiptData, label, width: int) -> list[Line]:
    """Each item: its name, then "qty x unit" and the line amount; then SUBTOTAL, DISCOUNT
    (if any) and TOTAL (if this payment pays part of the basket)."""
    lines: list[str] = []
    for name, qty, unit, amount in data.basket_lines:
        lines += _wrap(name, width)
        lines += _pair(f"  {qty} x {_money(data, unit)}", _money(data, amount), width)
    total = data.subtotal - data.discount
    lines += _pair(label("subtotal"), _money(data, data.subtotal), width)
    if data.discount:
        lines += _pair(label("discount"), _money(data, -data.discount), width)
    if total != data.amount:
        lines += _pair(label("total"), _money(data, total), width)
    return [("normal", text) for text in lines]


def _money(data: ReceiptData, minor: int | None) -> str | None:
    return None if minor is None else format_amount(minor, data.currency)


def _month_day(mmdd: str | None) -> str | None:
    return None if mmdd is None else f"{mmdd[:2]}/{mmdd[2:]}"


def _amount_text(data: ReceiptData, lang: str) -> str:
    shown = currency_alpha(data.currency)
    if lang == "zh":
        shown = CURRENCY_SHOWN_ZH.get(data.currency, shown)
    sign = -1 if data.txn_type in NEGATIVE_TYPES else 1
    return f"{shown} {format_amount(sign * data.amount, data.currency)}"


def _cardholder_block(data: ReceiptData, copy: str, label, width: int) -> list[Line]:
    """'PIN VERIFIED' on both copies, else a signature area on the merchant copy only;
    nothing for a QR payment (the customer confirmed it in the wallet app) nor for cash."""
    if data.entry_mode in ("QR", "CASH"):
        return []
    if data.pin_verified:
        return [("bold", label("pin_verified"))]
    if data.no_cvm:
        return [("bold", label("no_cvm"))]
    if copy != "merchant":
        return []
    blank = [("normal", "")] * SIGNATURE_BLANK_LINES
    ack = [("normal", text) for text in _wrap(label("acknowledge"), width)]
    return [("normal", label("signature"))] + blank + [("normal", "-" * width)] + ack


# ---------------------------------------------------------------- emitters


def preview(data: ReceiptData, copy: str, *, lang: str = "en", width: int = 32) -> str:
    """The receipt as a person reads it: one text line per printed line."""
    return lines_text(layout(data, copy, lang=lang, width=width))


def render(
    data: ReceiptData, copy: str, *, lang: str = "en", encoding: str = "GB18030", width: int = 32,
    logo: Path | None = None,
) -> bytes:
    """The receipt as ESC/POS bytes (see the module docstring for the exact sequence);
    `logo`: an image printed centred above it (the merchant's logo)."""
    return render_lines(layout(data, copy, lang=lang, width=width), encoding, logo=logo)


def lines_text(lines: list[Line]) -> str:
    """Laid-out lines as text, one per printed line (previews of receipts and reports); a
    QR code shows as [QR] and its content."""
    return "".join((f"[QR] {text}" if style == "qr" else text) + "\n" for style, text in lines)


def render_lines(lines: list[Line], encoding: str = "GB18030", *, logo: Path | None = None) -> bytes:
    """Laid-out (style, text) lines as ESC/POS bytes: init, [the logo image, centred,]
    the lines, feed and cut. Any slip built from `center`/`pair`/`wrap_text` lines (reports
    too) prints through here."""
    _check_in("encoding", encoding, ENCODINGS)
    cjk_on, cjk_off = ENCODINGS[encoding] if not all(t.isascii() for _s, t in lines) else (b"", b"")
    printer = Dummy(profile="default")
    printer.hw("INIT")
    if logo is not None:  # GS v 0 raster, python-escpos converts and dithers the image
        printer.image(str(logo), center=True)
    printer.charcode("CP437")
    printer._raw(cjk_on)
    style = "normal"  # the state ESC @ leaves
    for number, (line_style, text) in enumerate(lines, start=1):
        if line_style == "qr":  # the printer's own QR generator (GS ( k), centred
            printer.set(align="center")
            printer.qr(text, size=5, native=True)
            printer.set(align="left")
            continue
        if line_style != style:
            printer.set(**STYLES[line_style])
            style = line_style
        _emit(printer, text, encoding, number)
    if style != "normal":
        printer.set(**STYLES["normal"])
    printer._raw(cjk_off)
    printer.cut()  # ESC d 6 (feed) then GS V 0
    return printer.output


def _emit(printer: Dummy, text: str, encoding: str, number: int) -> None:
    if text.isascii():
        printer.text(text + "\n")
        return
    try:
        printer._raw(text.encode(encoding) + b"\n")
    except UnicodeEncodeError as err:
        raise ValueError(f"receipt line {number} cannot be printed in {encoding}: {err.reason}") from err
