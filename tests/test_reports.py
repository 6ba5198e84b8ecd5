"""Batch totals (what counts, voids, refunds, offline items, cash apart, fees rounded half
up in T+1 and D0 modes, card schemes, wallets), the crediting date, and the settlement and X
report layouts (en and zh, 32 and 48 columns), over journal-shaped TxnRecord values. Pure:
no I/O."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.config import FeesConfig, SettlementConfig
from firmware.journal import TxnRecord
from firmware.money import format_amount
from firmware.receipts import lines_text, render_lines, text_width
from firmware.reports import (
    BatchTotals, ReportHeader, Tally, batch_totals, card_scheme, credit_date, fee, in_totals,
    settlement_lines, x_report_lines,
)

FEES = FeesConfig(card_rate=60, wechat_rate=38, alipay_rate=30, unionpay_qr_rate=25)
HEADER = ReportHeader("KPOS DEMO STORE", "898310048990001", "10000001", "01", 12,
                      datetime(2026, 5, 14, 18, 5, 0), 156)
UNIONPAY, VISA = "622609******0014", "476173******0011"


def rec(id: int, kind: str = "sale", amount: int = 1000, *, status: str = "APPROVED",
        pan: str | None = UNIONPAY, aid: str | None = None, wallet: str | None = None,
        original_id: int | None = None, offline: str | None = None,
        advice: str | None = None, tendered: int | None = None) -> TxnRecord:
    return TxnRecord(
        id=id, terminal_id="10000001", kind=kind, stan=id, batch=12, amount=amount, currency=156,
        status=status, operator="01", masked_pan=None if wallet else pan, entry_mode="051",
        aid=aid, app_label=None, arqc=None, created_at="2026-05-14T10:00:00",
        updated_at="2026-05-14T10:00:00", response_code="00", rrn=f"{id:012d}", auth_code="123456",
        failure=None, printed_merchant_at=None, printed_customer_at=None, tvr=None, tsi=None,
        cvm=None, cryptogram_type=None, offline_code=offline, reversal_status=None,
        advice_status=advice, original_id=original_id, wallet=wallet, tendered=tendered)


# A batch with one of everything.
BATCH = [
    rec(1, amount=12345),  # UnionPay sale
    rec(2, amount=5000, pan=VISA),  # Visa sale ...
    rec(3, "void", 5000, pan=VISA, original_id=2),  # ... voided
    rec(4, "refund", 1000, original_id=None),  # refund keyed by RRN (another batch)
    rec(5, "qr_sale", 2500, wallet="wechat"),
    rec(6, "qr_refund", 500, wallet="wechat", original_id=5),
    rec(7, amount=300, offline="Y1", advice="ACKED"),  # approved offline, forwarded
    rec(8, amount=700, offline="00", advice="DECLINED"),  # the host refused the advice later
    rec(9, "preauth", 9999),  # holds money, moves none
    rec(10, "completion", 8000, pan="552233******4444", original_id=9),  # Mastercard
    rec(11, "completion_void", 8000, pan="552233******4444", original_id=10),
    rec(12, amount=100, status="REVERSED"),
    rec(13, amount=200, status="DECLINED"),
    rec(14, amount=400, status="UNKNOWN"),
    rec(15, "void", 12345, status="DECLINED", original_id=1),  # a refused void voids nothing
    rec(16, "balance", 0),
    rec(17, "repayment", 20000, pan="356900******0002"),  # JCB card paying a credit card
]


def test_what_counts_in_the_batch_totals():
    t = batch_totals(BATCH, FEES)
    assert t.debit == Tally(4, 12345 + 2500 + 300 + 20000)
    assert t.credit == t.refunds == Tally(2, 1500)
    assert t.voids == Tally(2, 13000)
    assert t.offline == Tally(1, 300)
    assert t.declined_advices == Tally(1, 700)
    assert t.by_kind == {"sale": Tally(2, 12645), "void": Tally(1, 5000), "refund": Tally(1, 1000),
                         "completion_void": Tally(1, 8000), "repayment": Tally(1, 20000),
                         "qr_sale": Tally(1, 2500), "qr_refund": Tally(1, 500)}
    assert t.by_scheme == {"unionpay": Tally(3, 12345 + 300 - 1000), "jcb": Tally(1, 20000)}
    assert t.by_wallet == {"wechat": Tally(2, 2000)}


def test_fees_are_per_item_rounded_half_up_and_refunds_give_theirs_back():
    # 123.45 * 0.60% = 0.7407 -> 0.74; 3.00 -> 0.018 -> 0.02; 200.00 -> 1.20; 10.00 refund
    # -> -0.06; WeChat 25.00 * 0.38% = 0.095 -> 0.10, its refund 5.00 -> 0.019 -> -0.02
    t = batch_totals(BATCH, FEES)
    assert t.fees == 74 + 2 + 120 - 6 + 10 - 2
    assert t.net == t.debit.amount - t.credit.amount - t.fees == 35145 - 1500 - 198
    half = FeesConfig(card_rate=40, wechat_rate=38, alipay_rate=30, unionpay_qr_rate=25)
    assert fee(rec(1, amount=125), half) == 1  # exactly 0.5 fen rounds up
    assert fee(rec(1, amount=124), half) == 0  # 0.496
    assert fee(rec(1, "refund", 125), half) == -1
    assert fee(rec(1, "qr_sale", 1000, wallet="alipay"), FEES) == 3
    assert fee(rec(1, "qr_sale", 1000, wallet="unionpay_qr"), FEES) == 3  # 2.5 -> 3
    with pytest.raises(ValueError, match="txn 1: wallet 'paypal' has no fee rate"):
        fee(rec(1, "qr_sale", 1000, wallet="paypal"), FEES)


@pytest.mark.parametrize("pan, aid, scheme", [
    ("622609******0014", None, "unionpay"), ("476173******0011", None, "visa"),
    ("510000******0000", None, "mastercard"), ("550000******0000", None, "mastercard"),
    ("222100******0000", None, "mastercard"), ("272099******0000", None, "mastercard"),
    ("272100******0000", None, "other"), ("560000******0000", None, "other"),
    ("340000******000", None, "amex"), ("370000******000", None, "amex"),
    ("352800******0000", None, "jcb"), ("358999******0000", None, "jcb"),
    ("359000******0000", None, "other"), ("601100******0000", None, "other"),
    ("476173******0011", "A000000333010101", "unionpay"),  # the AID decides first
    ("622609******0014", "A0000000031010", "visa"),
    (None, None, "other"),
])
def test_card_scheme_from_aid_then_bin(pan, aid, scheme):
    assert card_scheme(rec(1, pan=pan, aid=aid)) == scheme


def test_an_empty_batch_has_zero_totals():
    assert batch_totals([], FEES) == BatchTotals()
    assert batch_totals([], FEES).net == 0


CASH_ROWS = [rec(40, "cash", 1200, pan=None, tendered=2000), rec(41, "cash", 5000, pan=None,
                                                                tendered=5000)]


def test_cash_is_counted_apart_and_never_in_the_acquirers_totals():
    t = batch_totals(BATCH + CASH_ROWS, FEES)
    assert t.cash == Tally(2, 6200)
    assert t.by_kind["cash"] == Tally(2, 6200) and list(t.by_kind)[-1] == "cash"  # KINDS order
    without = batch_totals(BATCH, FEES)
    assert (t.debit, t.credit, t.fees, t.net) == (without.debit, without.credit, without.fees,
                                                 without.net)  # no fee, not credited
    assert (t.by_scheme, t.by_wallet, t.voids, t.offline) == (
        without.by_scheme, without.by_wallet, without.voids, without.offline)
    assert not [r for r in CASH_ROWS if in_totals(r)]  # never uploaded either
    assert in_totals(BATCH[0])
    assert batch_totals([replace(CASH_ROWS[0], status="FAILED")], FEES).cash == Tally()
    assert batch_totals(CASH_ROWS, FEES).net == 0


D0 = SettlementConfig(mode="D0", d0_rate=55, d0_fixed=30)
T1 = SettlementConfig(mode="T+1", d0_rate=55, d0_fixed=30)


def half_up(amount: int, bp: int) -> int:
    """amount * bp / 10000 rounded half up, worked out in decimal (not the firmware's way)."""
    return int((Decimal(amount) * bp / 10000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_d0_fees_are_the_d0_rate_plus_a_fixed_fee_and_refunds_return_only_the_percent():
    t = batch_totals(BATCH + CASH_ROWS, FEES, D0)
    # in the totals: debits 12345, 2500 (QR), 300 (offline), 20000; credits 1000, 500 (QR)
    debits, credits = (12345, 2500, 300, 20000), (1000, 500)
    expected = (sum(half_up(a, 55) + 30 for a in debits) - sum(half_up(a, 55) for a in credits))
    assert t.fees == expected == 68 + 30 + 14 + 30 + 2 + 30 + 110 + 30 - 6 - 3
    assert t.net == 35145 - 1500 - expected and t.mode == "D0"
    assert (t.debit, t.credit, t.cash) == (batch_totals(BATCH, FEES).debit,
                                          batch_totals(BATCH, FEES).credit, Tally(2, 6200))
    assert fee(rec(1, amount=10000), FEES, D0) == 55 + 30
    assert fee(rec(1, amount=10000), FEES, T1) == fee(rec(1, amount=10000), FEES) == 60
    assert fee(rec(1, "refund", 10000), FEES, D0) == -55  # the fixed fee stays charged
    assert fee(rec(1, "qr_sale", 10000, wallet="alipay"), FEES, D0) == 85  # wallets alike
    half = replace(D0, d0_rate=50, d0_fixed=0)
    assert [fee(rec(1, amount=a), FEES, half) for a in (99, 100, 101)] == [0, 1, 1]  # 0.495, 0.5
    assert batch_totals(BATCH, FEES, T1) == batch_totals(BATCH, FEES)


@pytest.mark.parametrize("settled, credited", [
    (date(2026, 5, 11), date(2026, 5, 12)),  # Monday -> Tuesday
    (date(2026, 5, 14), date(2026, 5, 15)),  # Thursday -> Friday
    (date(2026, 5, 15), date(2026, 5, 18)),  # Friday -> Monday
    (date(2026, 5, 16), date(2026, 5, 18)),  # Saturday -> Monday
    (date(2026, 5, 17), date(2026, 5, 18)),  # Sunday -> Monday
    (date(2026, 12, 31), date(2027, 1, 1)),  # Thursday, across the year
])
def test_t1_credits_the_next_business_day(settled, credited):
    assert credit_date(settled) == credited and credited.weekday() < 5


records = st.builds(
    lambda i, kind, amount, status, wallet, advice: rec(
        i, kind, amount, status=status, wallet=wallet if kind.startswith("qr") else None,
        offline="Y1" if advice and kind != "cash" else None,
        advice=None if kind == "cash" else advice),  # cash: no advice, never offline
    st.integers(1, 10**6), st.sampled_from(["sale", "refund", "completion", "repayment",
                                            "qr_sale", "qr_refund", "preauth", "balance",
                                            "cash"]),
    st.integers(0, 10**9), st.sampled_from(["APPROVED", "DECLINED", "REVERSED", "UNKNOWN"]),
    st.sampled_from(["wechat", "alipay", "unionpay_qr"]),
    st.sampled_from([None, "ACKED", "DECLINED", "PENDING"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=30, unique_by=lambda r: r.id), st.sampled_from([None, D0]))
def test_breakdowns_add_up_to_the_totals(batch, mode):
    t = batch_totals(batch, FEES, mode)
    groups = list(t.by_scheme.values()) + list(t.by_wallet.values())
    assert sum(g.amount for g in groups) == t.debit.amount - t.credit.amount
    assert sum(g.count for g in groups) == t.debit.count + t.credit.count
    assert sum(k.count for k in t.by_kind.values()) == t.debit.count + t.credit.count + t.cash.count
    cash = [r.amount for r in batch if r.kind == "cash" and r.status == "APPROVED"]
    assert t.cash == Tally(len(cash), sum(cash))
    assert t.net == t.debit.amount - t.credit.amount - t.fees
    assert all(isinstance(v, int) for v in (t.fees, t.net, t.debit.amount, t.credit.amount))


# --- layout -----------------------------------------------------------------------------------

SETTLEMENT_EN_32 = """\
        KPOS DEMO STORE
       SETTLEMENT REPORT
--------------------------------
MERCHANT NO.     898310048990001
TERMINAL NO.            10000001
OPERATOR NO.                  01
BATCH NO.                 000012
DATE/TIME    2026/05/14 18:05:00
CURRENCY                     CNY
--------------------------------
HOST RESULT       OUT OF BALANCE
BATCH UPLOAD            14 ITEMS
AFTER UPLOAD            BALANCED
--------------------------------
TYPE            COUNT     AMOUNT
SALE                2     126.45
VOID                1      50.00
REFUND              1      10.00
COMPLETION VOID     1      80.00
REPAYMENT           1     200.00
QR SALE             1      25.00
QR REFUND           1       5.00
DEBIT TOTAL         4     351.45
CREDIT TOTAL        2      15.00
--------------------------------
BY CARD SCHEME
UnionPay            3     116.45
JCB                 1     200.00
--------------------------------
BY WALLET
WeChat Pay          2      20.00
--------------------------------
REFUNDS             2      15.00
VOIDS               2     130.00
OFFLINE             1       3.00
ADVICE DECLINED     1       7.00
--------------------------------
FEES                        1.98
NET                       334.47
SETTLEMENT MODE              T+1
CREDITED              2026/05/15
"""


def test_settlement_report_golden_text_en_32():
    lines = settlement_lines(batch_totals(BATCH, FEES), HEADER, result="out_of_balance",
                             uploaded=14, final="balanced")
    assert lines_text(lines) == SETTLEMENT_EN_32
    assert lines[0] == ("big", "        KPOS DEMO STORE")
    assert lines[-3] == ("bold", "NET                       334.47")
    raw = render_lines(lines, "GB18030")
    assert raw.startswith(b"\x1b@") and b"334.47\n" in raw and raw.endswith(b"\x1dV\x00")


def test_a_balanced_settlement_shows_no_upload_and_the_x_report_no_host_result():
    totals = batch_totals(BATCH, FEES)
    balanced = lines_text(settlement_lines(totals, HEADER, result="balanced"))
    assert "HOST RESULT             BALANCED\n" in balanced
    assert "BATCH UPLOAD" not in balanced and "AFTER UPLOAD" not in balanced
    x = lines_text(x_report_lines(totals, HEADER))
    assert "X REPORT - BATCH OPEN" in x and "HOST RESULT" not in x
    assert x.split("TYPE")[1] == SETTLEMENT_EN_32.split("TYPE")[1].split("SETTLEMENT MODE")[0]
    assert x.endswith("NET                       334.47\n")  # no mode, no crediting date
    still = lines_text(settlement_lines(totals, HEADER, result="out_of_balance", uploaded=3,
                                        final="out_of_balance"))
    assert "AFTER UPLOAD      OUT OF BALANCE\n" in still


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("width", [32, 48])
def test_every_line_fits_the_paper_in_both_languages(lang, width):
    totals = batch_totals(BATCH + [rec(30, "qr_sale", 99_999_999, wallet="unionpay_qr"),
                                   rec(31, "preauth_cancel", 10, original_id=9)], FEES)
    for lines in (settlement_lines(totals, HEADER, result="out_of_balance", uploaded=2,
                                   final="balanced", lang=lang, width=width),
                  x_report_lines(totals, HEADER, lang=lang, width=width)):
        assert all(text_width(text) <= width for _, text in lines)
        net = next(text for style, text in lines if text.startswith(("NET", "净额")))
        assert net.endswith(" " + format_amount(totals.net))
        render_lines(lines, "GB18030")  # every character prints in GB18030


def test_chinese_report_labels():
    header = replace(HEADER, merchant_name="KPOS演示商店")
    text = lines_text(settlement_lines(batch_totals(BATCH, FEES), header, result="out_of_balance",
                                       uploaded=14, final="balanced", lang="zh", width=48))
    for label in ("结算总计单", "对账不平", "批上送", "14 笔", "上送后", "对账平", "消费撤销",
                  "预授权完成撤销", "信用卡还款", "扫码退款", "借记总计", "贷记总计", "按卡组织",
                  "银联", "按钱包", "微信支付", "离线被拒", "手续费", "净额"):
        assert label in text, label
    assert text.splitlines()[0] == " " * 18 + "KPOS演示商店"
    x = lines_text(x_report_lines(batch_totals(BATCH, FEES), header, lang="zh"))
    assert "交易汇总(批次未结)" in x and "对账结果" not in x


CASH_LINES = {"en": ["CASH                2      62.00", "DEBIT TOTAL         4     351.45",
                      "CREDIT TOTAL        2      15.00", "CASH (NOT SETTLED)         62.00"],
              "zh": ["现金                2      62.00", "借记总计            4     351.45",
                     "贷记总计            2      15.00", "现金(不结算)               62.00"]}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_reports_show_cash_on_its_own_lines_outside_the_net(lang):
    totals = batch_totals(BATCH + CASH_ROWS, FEES)
    for lines in (settlement_lines(totals, HEADER, result="balanced", lang=lang),
                  x_report_lines(totals, HEADER, lang=lang)):
        text = lines_text(lines).splitlines()
        start = text.index(CASH_LINES[lang][0])
        assert text[start:start + 4] == CASH_LINES[lang]
        assert text[start + 4] == "-" * 32
        net = next(line for line in text if line.startswith(("NET", "净额")))
        assert net.endswith(" 334.47")  # as without the cash
    plain = lines_text(settlement_lines(batch_totals(BATCH, FEES), HEADER, result="balanced",
                                        lang=lang))
    assert "CASH" not in plain and "现金" not in plain  # no cash, no cash lines


@pytest.mark.parametrize("when, credited", [
    (datetime(2026, 5, 15, 22, 0), "2026/05/18"), (datetime(2026, 5, 16, 9, 0), "2026/05/18"),
    (datetime(2026, 5, 17, 9, 0), "2026/05/18"), (datetime(2026, 5, 18, 9, 0), "2026/05/19"),
])
def test_the_settlement_report_says_when_the_net_is_credited(when, credited):
    header = replace(HEADER, when=when)
    t1 = lines_text(settlement_lines(batch_totals(BATCH, FEES, T1), header, result="balanced"))
    assert t1.endswith(f"SETTLEMENT MODE              T+1\nCREDITED              {credited}\n")
    d0 = batch_totals(BATCH, FEES, D0)
    for width in (32, 48):
        text = lines_text(settlement_lines(d0, header, result="balanced", width=width))
        tail = [f"FEES{format_amount(d0.fees):>{width - 4}}",
                f"NET{format_amount(d0.net):>{width - 3}}",
                f"SETTLEMENT MODE{'D0':>{width - 15}}", f"CREDITED{'IN REAL TIME':>{width - 8}}"]
        assert text.splitlines()[-4:] == tail
    zh = lines_text(settlement_lines(d0, header, result="balanced", lang="zh"))
    assert zh.endswith("结算方式                      D0\n到账时间                实时到账\n")


def test_bad_layout_options_are_refused():
    with pytest.raises(ValueError, match="report lang 'fr'"):
        x_report_lines(BatchTotals(), HEADER, lang="fr")
    with pytest.raises(ValueError, match="report width must be 32 or 48"):
        x_report_lines(BatchTotals(), HEADER, width=40)
