"""Batch totals and the settlement and X reports laid out for the receipt printer.

Pure functions over values, any thread, no I/O. `batch_totals()` reads the journal's rows
of one batch (Journal.batch_records, TxnRecord values); `settlement_lines()` and
`x_report_lines()` lay the totals out with firmware.receipts' line builders, so the slip
prints through `receipts.render_lines` and previews through `receipts.lines_text`.

What counts (firmware.txnkinds, UnionPay settlement): only APPROVED rows, minus offline
approvals whose advice the host declined (no money moved; listed apart). A debit kind
(sale, completion, repayment, QR sale) adds to the debit count and amount unless an
approved void or completion void names it (`original_id`): then it is out of the debit
totals and the void is counted under voids. Credit kinds (refund, QR refund) add to the
credit totals and to refunds. Cash (现金) is counted apart (`cash`, and its own line in
`by_kind`): never in the debit or credit totals, so never in the 0500 nor uploaded, no fee,
not in the net. Pre-auths, their cancels and balance inquiries count nowhere.
REVERSED, DECLINED, FAILED and UNKNOWN rows count nowhere.

Fees (merchant discount), by the settlement mode (cfg.settlement; None means "T+1"), each
percent part rounded half up to the minor unit once per item, (amount * rate + 5000) // 10000,
with rates in basis points:
- "T+1" (credited the next business day): amount * the [fees] rate (card_rate for cards,
  <wallet>_rate for QR payments). A credit gives its fee back: its fee is negative.
- "D0" (实时到账, credited in real time): amount * d0_rate for every card and QR item, plus
  d0_fixed per debit item. A credit gives back its percent part only (-amount * d0_rate);
  the fixed fee charged on the original is not refunded and a credit is charged none.
Net credited by the acquirer = debit amount - credit amount - fees (cash excluded).
Money is int minor units throughout, never float.

Crediting date (T+1): the next business day, Monday to Friday (a Friday, Saturday or Sunday
settlement is credited on Monday); public holidays are not known here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Iterable

from firmware.config import FeesConfig, SettlementConfig, TerminalConfig
from firmware.journal import TxnRecord
from firmware.money import currency_alpha, format_amount
from firmware.receipts import WALLETS, Line, center, pair, text_width
from firmware.txnkinds import CASH, CREDIT, DEBIT, KINDS, NONE, VOID

__all__ = ["Tally", "BatchTotals", "ReportHeader", "report_header", "batch_totals", "counted", "in_totals",
           "fee", "card_scheme", "SCHEMES", "settlement_lines", "x_report_lines", "VERDICTS",
           "credit_date", "T1", "D0"]

T1, D0 = "T+1", "D0"  # settlement modes (cfg.settlement.mode)

# Card schemes in report order: (name, English, Chinese).
SCHEMES = (("unionpay", "UnionPay", "银联"), ("visa", "Visa", "VISA"),
           ("mastercard", "Mastercard", "万事达"), ("amex", "Amex", "美国运通"),
           ("jcb", "JCB", "JCB"), ("other", "Other", "其他"))
_AID_SCHEMES = {"A000000333": "unionpay", "A000000003": "visa", "A000000004": "mastercard",
                "A000000025": "amex", "A000000065": "jcb"}  # registered application provider ids
# The host's verdicts on a settlement (firmware.settlement): value -> (English, Chinese).
VERDICTS = {"balanced": ("BALANCED", "对账平"), "out_of_balance": ("OUT OF BALANCE", "对账不平")}


@dataclass(frozen=True)
class Tally:
    """A count of items and their amount (minor units)."""

    count: int = 0
    amount: int = 0

    def plus(self, amount: int) -> "Tally":
        return Tally(self.count + 1, self.amount + amount)


@dataclass(frozen=True)
class BatchTotals:
    """One batch's totals. `by_kind` holds every item in the debit or credit totals, the
    voids and the cash payments, each kind with its own (positive) amount; `by_scheme`
    (cards) and `by_wallet` (QR) hold the debit and credit items with their net amount:
    debits minus credits."""

    debit: Tally = Tally()
    credit: Tally = Tally()
    voids: Tally = Tally()  # the voids and completion voids (their originals are out of debit)
    refunds: Tally = Tally()  # refunds and QR refunds (also in credit)
    offline: Tally = Tally()  # approved offline, in the totals
    declined_advices: Tally = Tally()  # approved offline, refused by the host: in no total
    by_kind: dict[str, Tally] = field(default_factory=dict)  # txnkinds name, KINDS order
    by_scheme: dict[str, Tally] = field(default_factory=dict)  # SCHEMES name, cards only
    by_wallet: dict[str, Tally] = field(default_factory=dict)  # wallet name, QR only
    fees: int = 0  # minor units, credits' fees negative
    cash: Tally = Tally()  # cash payments: counted here only, never settled with the acquirer
    mode: str = T1  # the settlement mode the fees were computed for

    @property
    def net(self) -> int:
        """What the acquirer credits: debits - credits - fees (cash is not in it)."""
        return self.debit.amount - self.credit.amount - self.fees


@dataclass(frozen=True)
class ReportHeader:
    """Who and when, printed at the top of a report."""

    merchant_name: str
    merchant_id: str
    terminal_id: str
    operator: str
    batch: int
    when: datetime
    currency: int  # ISO 4217 numeric


def report_header(terminal: TerminalConfig, *, batch: int, operator: str,
                  when: datetime) -> ReportHeader:
    """The header for this terminal ([terminal] config), the merchant's name in its language."""
    name = terminal.merchant_name_zh if terminal.language == "zh" else ""
    return ReportHeader(name or terminal.merchant_name, terminal.merchant_id,
                        terminal.terminal_id, operator, batch, when, terminal.currency)


def counted(record: TxnRecord) -> bool:
    """True when the row stands in the batch: approved, and not an offline approval whose
    advice the host declined."""
    return record.status == "APPROVED" and record.advice_status != "DECLINED"


def in_totals(record: TxnRecord) -> bool:
    """True for a counted row of a kind that moves money at the acquirer (debit, credit or
    void; never cash): the rows a batch upload sends."""
    kind = KINDS.get(record.kind)
    return counted(record) and kind is not None and kind.totals not in (NONE, CASH)


def fee(record: TxnRecord, fees: FeesConfig, settlement: SettlementConfig | None = None) -> int:
    """A debit or credit item's fee in the settlement mode (None: T+1), see the module
    docstring; negative for a credit."""
    d0 = _mode(settlement) == D0
    rate = settlement.d0_rate if d0 else (
        fees.card_rate if record.wallet is None else _wallet_rate(record, fees))
    percent = (record.amount * rate + 5000) // 10000
    if KINDS[record.kind].totals == CREDIT:
        return -percent
    return percent + (settlement.d0_fixed if d0 else 0)


def _mode(settlement: SettlementConfig | None) -> str:
    return T1 if settlement is None else settlement.mode


def credit_date(settled: date) -> date:
    """T+1: the business day (Mon-Fri) after `settled`; Fri, Sat and Sun go to Monday."""
    ahead = {4: 3, 5: 2}.get(settled.weekday(), 1)
    return settled + timedelta(days=ahead)


def _wallet_rate(record: TxnRecord, fees: FeesConfig) -> int:
    rate = getattr(fees, f"{record.wallet}_rate", None) if record.wallet in WALLETS else None
    if rate is None:
        raise ValueError(f"txn {record.id}: wallet {record.wallet!r} has no fee rate")
    return rate


def card_scheme(record: TxnRecord) -> str:
    """The card's scheme (a SCHEMES name) from its AID's RID, else from the masked PAN's BIN."""
    by_aid = _AID_SCHEMES.get((record.aid or "")[:10].upper())
    if by_aid:
        return by_aid
    bin6 = (record.masked_pan or "")[:6]
    if not bin6.isdigit():
        return "other"
    two, four = int(bin6[:2]), int(bin6[:4])
    if two == 62:
        return "unionpay"
    if bin6[0] == "4":
        return "visa"
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return "mastercard"
    if two in (34, 37):
        return "amex"
    if 3528 <= four <= 3589:
        return "jcb"
    return "other"


def batch_totals(records: Iterable[TxnRecord], fees: FeesConfig,
                 settlement: SettlementConfig | None = None) -> BatchTotals:
    """The totals of one batch's rows, fees in the settlement mode (None: T+1); see the
    module docstring for what counts."""
    records = list(records)
    voided = {r.original_id for r in records if counted(r) and KINDS[r.kind].totals == VOID}
    t = _Sums()
    for r in records:
        if r.status == "APPROVED" and r.advice_status == "DECLINED":
            t.declined_advices = t.declined_advices.plus(r.amount)
        if counted(r) and KINDS[r.kind].totals == CASH:
            t.add_cash(r)
        if not in_totals(r) or r.id in voided:
            continue
        totals = KINDS[r.kind].totals
        t.add(r, totals, fee(r, fees, settlement) if totals != VOID else 0)
    order = list(KINDS)
    return BatchTotals(
        debit=t.debit, credit=t.credit, voids=t.voids, refunds=t.credit, offline=t.offline,
        declined_advices=t.declined_advices,
        by_kind=dict(sorted(t.by_kind.items(), key=lambda kv: order.index(kv[0]))),
        by_scheme={name: t.by_scheme[name] for name, *_ in SCHEMES if name in t.by_scheme},
        by_wallet={name: t.by_wallet[name] for name in WALLETS if name in t.by_wallet},
        fees=t.fees, cash=t.cash, mode=_mode(settlement))


class _Sums:
    """Running sums while batch_totals walks the rows."""

    def __init__(self) -> None:
        self.debit = self.credit = self.voids = self.offline = self.declined_advices = Tally()
        self.cash = Tally()
        self.by_kind: dict[str, Tally] = {}
        self.by_scheme: dict[str, Tally] = {}
        self.by_wallet: dict[str, Tally] = {}
        self.fees = 0

    def add(self, r: TxnRecord, totals: str, item_fee: int) -> None:
        signed = -r.amount if totals == CREDIT else r.amount
        if totals == DEBIT:
            self.debit = self.debit.plus(r.amount)
        elif totals == CREDIT:
            self.credit = self.credit.plus(r.amount)
        else:
            self.voids = self.voids.plus(r.amount)
        if r.offline_code is not None:
            self.offline = self.offline.plus(r.amount)
        self.fees += item_fee
        _bump(self.by_kind, r.kind, r.amount)
        if totals != VOID:
            group = self.by_wallet if r.wallet is not None else self.by_scheme
            _bump(group, r.wallet or card_scheme(r), signed)

    def add_cash(self, r: TxnRecord) -> None:
        self.cash = self.cash.plus(r.amount)
        _bump(self.by_kind, r.kind, r.amount)


def _bump(group: dict[str, Tally], key: str, amount: int) -> None:
    group[key] = group.get(key, Tally()).plus(amount)


# ---------------------------------------------------------------- layout

# label key -> (English, Chinese)
LABELS: dict[str, tuple[str, str]] = {
    "settlement": ("SETTLEMENT REPORT", "结算总计单"),
    "x_report": ("X REPORT - BATCH OPEN", "交易汇总(批次未结)"),
    "merchant_id": ("MERCHANT NO.", "商户编号"),
    "terminal_id": ("TERMINAL NO.", "终端编号"),
    "operator": ("OPERATOR NO.", "操作员号"),
    "batch": ("BATCH NO.", "批次号"),
    "when": ("DATE/TIME", "日期时间"),
    "currency": ("CURRENCY", "币种"),
    "host": ("HOST RESULT", "对账结果"),
    "uploaded": ("BATCH UPLOAD", "批上送"),
    "after_upload": ("AFTER UPLOAD", "上送后"),
    "type": ("TYPE", "类型"),
    "count": ("COUNT", "笔数"),
    "amount": ("AMOUNT", "金额"),
    "debit": ("DEBIT TOTAL", "借记总计"),
    "credit": ("CREDIT TOTAL", "贷记总计"),
    "by_scheme": ("BY CARD SCHEME", "按卡组织"),
    "by_wallet": ("BY WALLET", "按钱包"),
    "refunds": ("REFUNDS", "退货"),
    "voids": ("VOIDS", "撤销"),
    "offline": ("OFFLINE", "离线交易"),
    "declined_advices": ("ADVICE DECLINED", "离线被拒"),
    "fees": ("FEES", "手续费"),
    "net": ("NET", "净额"),
    "cash": ("CASH (NOT SETTLED)", "现金(不结算)"),
    "mode": ("SETTLEMENT MODE", "结算方式"),
    "credited": ("CREDITED", "到账时间"),
    "real_time": ("IN REAL TIME", "实时到账"),
    "items": ("ITEMS", "笔"),
}
COUNT_COLUMNS, AMOUNT_COLUMNS = 5, 10  # right-aligned count, a space, amount; label before


def settlement_lines(totals: BatchTotals, header: ReportHeader, *, result: str,
                     uploaded: int = 0, final: str = "", lang: str = "en",
                     width: int = 32) -> list[Line]:
    """The settlement report: header, the host's verdict (`result` on the first 0510, a
    VERDICTS key; out of balance: `uploaded` items then the `final` verdict), the totals,
    then the settlement mode and when the net is credited (T+1: credit_date of the
    header's date; D0: in real time)."""
    text = _Text(lang, width, header.currency)
    verdict = [*text.pair("host", text.verdict(result))]
    if result != "balanced":
        verdict += text.pair("uploaded", f"{uploaded} {text.label('items')}")
        verdict += text.pair("after_upload", text.verdict(final or result))
    credited = (text.label("real_time") if totals.mode == D0
                else credit_date(header.when.date()).strftime("%Y/%m/%d"))
    return (_report(totals, header, text, "settlement", verdict)
            + text.pair("mode", totals.mode) + text.pair("credited", credited))


def x_report_lines(totals: BatchTotals, header: ReportHeader, *, lang: str = "en",
                   width: int = 32) -> list[Line]:
    """The X report: the open batch's totals so far, no host verdict."""
    return _report(totals, header, _Text(lang, width, header.currency), "x_report", [])


def _report(totals: BatchTotals, h: ReportHeader, text: "_Text", title: str,
            verdict: list[Line]) -> list[Line]:
    rule = [("normal", "-" * text.width)]
    lines = [("big", s) for s in center(h.merchant_name, text.width)]
    lines += [("bold", s) for s in center(text.label(title), text.width)] + rule
    for key, value in (("merchant_id", h.merchant_id), ("terminal_id", h.terminal_id),
                       ("operator", h.operator), ("batch", f"{h.batch:06d}"),
                       ("when", h.when.strftime("%Y/%m/%d %H:%M:%S")),
                       ("currency", currency_alpha(h.currency))):
        lines += text.pair(key, value)
    lines += rule + (verdict + rule if verdict else [])
    lines += text.columns(text.label("type"), text.label("count"), text.label("amount"))
    lines += [row for kind, tally in totals.by_kind.items() for row in text.row(text.kind(kind), tally)]
    lines += text.row(text.label("debit"), totals.debit, "bold")
    lines += text.row(text.label("credit"), totals.credit, "bold")
    lines += text.pair("cash", text.money(totals.cash.amount)) if totals.cash.count else []
    lines += rule
    lines += _breakdown(text, "by_scheme", totals.by_scheme, text.scheme)
    lines += _breakdown(text, "by_wallet", totals.by_wallet, text.wallet)
    for key in ("refunds", "voids", "offline", "declined_advices"):
        lines += text.row(text.label(key), getattr(totals, key))
    lines += rule + text.pair("fees", text.money(totals.fees))
    return lines + [("bold", s) for s in pair(text.label("net"), text.money(totals.net), text.width)]


def _breakdown(text: "_Text", title: str, group: dict[str, Tally], name) -> list[Line]:
    if not group:
        return []
    rows = [row for key, tally in group.items() for row in text.row(name(key), tally)]
    return [("normal", text.label(title))] + rows + [("normal", "-" * text.width)]


class _Text:
    """Labels in one language and rows at one paper width."""

    def __init__(self, lang: str, width: int, currency: int):
        if lang not in ("en", "zh"):
            raise ValueError(f"report lang {lang!r} unknown; expected en or zh")
        if width not in (32, 48):
            raise ValueError(f"report width must be 32 or 48 columns, got {width!r}")
        self.i, self.width, self.currency = ("en", "zh").index(lang), width, currency

    def label(self, key: str) -> str:
        return LABELS[key][self.i]

    def kind(self, name: str) -> str:
        return (KINDS[name].label, KINDS[name].label_zh)[self.i]

    def scheme(self, name: str) -> str:
        return next(names[self.i] for key, *names in SCHEMES if key == name)

    def wallet(self, name: str) -> str:
        return WALLETS[name][self.i]

    def verdict(self, name: str) -> str:
        return VERDICTS[name][self.i]

    def money(self, minor: int) -> str:
        return format_amount(minor, self.currency)

    def pair(self, key: str, value: str) -> list[Line]:
        return [("normal", s) for s in pair(self.label(key), value, self.width)]

    def row(self, label: str, tally: Tally, style: str = "normal") -> list[Line]:
        return self.columns(label, str(tally.count), self.money(tally.amount), style)

    def columns(self, label: str, count: str, amount: str, style: str = "normal") -> list[Line]:
        """Label left; count and amount right-aligned in their columns (wide characters
        count 2); the value goes on a line of its own when both do not fit."""
        value = _rjust(count, COUNT_COLUMNS) + " " + _rjust(amount, AMOUNT_COLUMNS)
        return [(style, s) for s in pair(label, value, self.width)]


def _rjust(text: str, columns: int) -> str:
    return " " * (columns - text_width(text)) + text
