"""Receipts: golden ESC/POS bytes, content of the preview, PAN hygiene, the simulated printer.

Goldens live in tests/golden/receipts/; regenerate with KPOS_REGEN_GOLDEN=1 (and review
the .txt previews written beside them).
"""
from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from pathlib import Path

import pytest

from firmware.cardsafe import mask_pan
from firmware.hal.printer import Printer, PrinterError
from firmware.hal.printer_sim import SimPrinter
from firmware.receipts import (NEGATIVE_TYPES, TXN_TYPES, WALLETS, ReceiptData, layout, preview, render,
                               text_width)
from firmware.txnkinds import KINDS
from firmware.wallet import mask_code

GOLDEN_DIR = Path(__file__).parent / "golden" / "receipts"
REGEN = os.environ.get("KPOS_REGEN_GOLDEN") == "1"

FULL_PAN = "6226090000000014"
TC = "8E1F2A3B4C5D6E7F"

SALE = ReceiptData(
    merchant_name="KPOS DEMO STORE",
    merchant_id="898310048990001",
    terminal_id="10000001",
    operator="01",
    txn_type="SALE",
    masked_pan="622609******0014",
    entry_mode="CHIP",
    amount=12345,
    currency=156,
    when=datetime(2025, 3, 14, 10, 21, 5),
    batch=1,
    stan=42,
    rrn="000000000042",
    auth_code="123456",
    aid="A000000333010101",
    app_label="UnionPay Debit",
    tc=TC,
    pin_verified=True,
)
SIGNED = dataclasses.replace(SALE, pin_verified=False)

INIT = b"\x1b@"
CUT = b"\x1dV\x00"
CHINESE_MODE = b"\x1c&"


def golden(name: str, data: bytes) -> bytes:
    path = GOLDEN_DIR / name
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if not path.exists():
        pytest.fail(f"golden {path} missing; run with KPOS_REGEN_GOLDEN=1 and review it")
    return path.read_bytes()


# ---------------------------------------------------------------- golden bytes


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("copy", ["merchant", "customer"])
def test_golden_bytes_and_preview(copy, lang):
    raw = render(SALE, copy, lang=lang)
    text = preview(SALE, copy, lang=lang)
    assert raw == golden(f"sale_chip_{lang}_{copy}.bin", raw)
    assert text == golden(f"sale_chip_{lang}_{copy}.txt", text.encode("utf-8")).decode("utf-8")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_golden_signed_offline_reprint(lang):
    data = dataclasses.replace(SIGNED, offline=True, reprint=True)
    raw = render(data, "merchant", lang=lang)
    text = preview(data, "merchant", lang=lang)
    assert raw == golden(f"sale_signed_offline_reprint_{lang}_merchant.bin", raw)
    assert text == golden(f"sale_signed_offline_reprint_{lang}_merchant.txt", text.encode()).decode()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_bytes_framing(lang):
    raw = render(SALE, "merchant", lang=lang)
    assert raw.startswith(INIT)
    assert raw.endswith(b"\x1bd\x06" + CUT)  # feed 6 lines, then full cut
    assert b"123.45" in raw
    assert raw == render(SALE, "merchant", lang=lang)  # deterministic


def test_english_bytes():
    raw = render(SALE, "merchant", lang="en")
    assert b"AMOUNT:               CNY 123.45\n" in raw
    assert b"\x1d!\x01\x1bE\x01" in raw  # amount and header: GS ! double height, bold
    assert CHINESE_MODE not in raw  # all ASCII: no Chinese mode
    assert raw.isascii()


def test_chinese_bytes_gb18030():
    raw = render(SALE, "customer", lang="zh")
    assert raw.startswith(INIT + b"\x1bt\x00" + CHINESE_MODE)
    assert "金额".encode("gb18030") in raw
    assert "金额".encode("utf-8") not in raw
    assert "持卡人存根".encode("gb18030") in raw
    assert "RMB 123.45".encode() in raw
    assert raw.endswith(b"\x1c." + b"\x1bd\x06" + CUT)  # leave Chinese mode, feed, cut


def test_chinese_bytes_utf8():
    raw = render(SALE, "customer", lang="zh", encoding="UTF-8")
    assert "金额".encode("utf-8") in raw
    assert "金额".encode("gb18030") not in raw
    assert CHINESE_MODE not in raw


def test_gbk_matches_gb18030_for_common_chinese():
    assert render(SALE, "merchant", lang="zh", encoding="GBK") == render(SALE, "merchant", lang="zh")


def test_render_emits_every_layout_line_in_order():
    """render and preview come from one layout: every preview line is in the bytes, in order."""
    for lang, encoding in (("en", "GB18030"), ("zh", "GB18030"), ("zh", "UTF-8")):
        raw = render(SIGNED, "merchant", lang=lang, encoding=encoding)
        pos = 0
        for _style, text in layout(SIGNED, "merchant", lang=lang):
            found = raw.find(text.encode(encoding) + b"\n", pos)
            assert found >= 0, (lang, encoding, text)
            pos = found + 1
        assert preview(SIGNED, "merchant", lang=lang) == "".join(
            t + "\n" for _s, t in layout(SIGNED, "merchant", lang=lang)
        )


# ---------------------------------------------------------------- content


def design_fields(lang: str) -> list[str]:
    """DESIGN §7 fields as they must read on the paper."""
    common = ["KPOS DEMO STORE", "898310048990001", "10000001", "622609******0014", "000001",
              "000042", "2025/03/14 10:21:05", "000000000042", "123456", "A000000333010101",
              "UnionPay Debit", TC]
    if lang == "en":
        return common + ["OPERATOR NO.                  01", "ENTRY MODE                  CHIP",
                         "TXN TYPE                    SALE", "AMOUNT:               CNY 123.45"]
    return common + ["操作员号                      01", "输入方式                    插卡",
                     "交易类型                    消费", "金额:                 RMB 123.45"]


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("copy", ["merchant", "customer"])
def test_preview_has_every_field(copy, lang):
    text = preview(SALE, copy, lang=lang)
    for field in design_fields(lang):
        assert field in text, field
    copy_name = {("merchant", "en"): "MERCHANT COPY", ("customer", "en"): "CUSTOMER COPY",
                 ("merchant", "zh"): "商户存根", ("customer", "zh"): "持卡人存根"}[copy, lang]
    assert copy_name in text
    assert ("PIN VERIFIED" if lang == "en" else "密码验证") in text


def test_chip_lines_absent_without_chip_data():
    swiped = dataclasses.replace(SIGNED, entry_mode="SWIPE", aid=None, app_label=None, tc=None)
    text = preview(swiped, "merchant")
    assert "SWIPE" in text
    for label in ("AID", "APP LABEL", "TC "):
        assert label not in text


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_signature_on_merchant_copy_only(lang):
    signature = "CARDHOLDER SIGNATURE:" if lang == "en" else "持卡人签名:"
    ack = "I ACKNOWLEDGE SATISFACTORY" if lang == "en" else "本人确认以上交易"
    pin = "PIN VERIFIED" if lang == "en" else "密码验证"
    merchant = preview(SIGNED, "merchant", lang=lang)
    customer = preview(SIGNED, "customer", lang=lang)
    assert signature in merchant and ack in merchant and pin not in merchant
    assert signature not in customer and ack not in customer and pin not in customer
    assert signature not in preview(SALE, "merchant", lang=lang)  # PIN verified: no signature


def test_english_acknowledgement_wrapped_by_words():
    lines = preview(SIGNED, "merchant").splitlines()
    assert lines[-3:] == ["I ACKNOWLEDGE SATISFACTORY", "RECEIPT OF RELATIVE", "GOODS/SERVICES"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_offline_and_reprint_marks(lang):
    offline, reprint = ("OFFLINE", "REPRINT") if lang == "en" else ("离线交易", "重打印")
    plain = preview(SALE, "customer", lang=lang)
    assert offline not in plain and reprint not in plain
    marked = preview(dataclasses.replace(SALE, offline=True, reprint=True), "customer", lang=lang)
    assert offline in marked and reprint in marked
    raw = render(dataclasses.replace(SALE, offline=True, reprint=True), "customer", lang=lang)
    assert offline.encode("gb18030") in raw and reprint.encode("gb18030") in raw


def test_no_expiry_field():
    assert not [f.name for f in dataclasses.fields(ReceiptData) if "expir" in f.name]


# ---------------------------------------------------------------- PAN hygiene


@pytest.mark.parametrize("bad", [FULL_PAN, "62260900000*0014", "6226 0900 0000 0014", "622609******0014x"])
def test_clear_pan_refused(bad):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(SALE, masked_pan=bad)
    assert FULL_PAN not in str(info.value)  # the error does not repeat the PAN


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("encoding", ["GB18030", "UTF-8"])
def test_render_never_contains_full_pan(lang, encoding):
    data = dataclasses.replace(SIGNED, masked_pan=mask_pan(FULL_PAN), offline=True, reprint=True)
    for copy in ("merchant", "customer"):
        raw = render(data, copy, lang=lang, encoding=encoding)
        assert FULL_PAN.encode() not in raw
        assert FULL_PAN not in preview(data, copy, lang=lang)
        assert mask_pan(FULL_PAN).encode() in raw


# ---------------------------------------------------------------- layout and arguments


@pytest.mark.parametrize("width", [32, 48])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_lines_fit_width_and_values_right_aligned(width, lang):
    long_name = dataclasses.replace(SIGNED, merchant_name="演示商店 KPOS DEMO STORE 南京西路分店", offline=True)
    lines = preview(long_name, "merchant", lang=lang, width=width).splitlines()
    assert all(text_width(line) <= width for line in lines), lines
    card_line = next(line for line in lines if "622609******0014" in line)
    assert text_width(card_line) == width and card_line.endswith("0014")
    assert "南京西路分店" in "".join(line.strip() for line in lines[:2])  # wrapped, nothing cut off


def test_long_word_split_where_it_must():
    data = dataclasses.replace(SALE, merchant_name="X" * 40)
    lines = preview(data, "customer").splitlines()
    assert lines[:2] == ["X" * 32, " " * 12 + "X" * 8]


def test_text_width_counts_cjk_as_two():
    assert text_width("金额: RMB") == 4 + 5
    assert text_width("ABC") == 3


def test_long_value_goes_below_its_label():
    data = dataclasses.replace(SALE, app_label="A VERY LONG APPLICATION LABEL X")
    lines = preview(data, "customer").splitlines()
    i = lines.index("APP LABEL")
    assert lines[i + 1] == " " + "A VERY LONG APPLICATION LABEL X"


@pytest.mark.parametrize("kwargs", [{"copy": "bank"}, {"lang": "fr"}, {"width": 20}])
def test_bad_arguments_refused(kwargs):
    args = {"copy": "merchant", "lang": "en", **kwargs}
    with pytest.raises(ValueError):
        render(SALE, args.pop("copy"), **args)
    with pytest.raises(ValueError):
        preview(SALE, kwargs.get("copy", "merchant"), lang=kwargs.get("lang", "en"),
                width=kwargs.get("width", 32))


def test_bad_encoding_and_unprintable_text_refused():
    with pytest.raises(ValueError, match="encoding"):
        render(SALE, "merchant", encoding="latin-1")
    with pytest.raises(ValueError, match="GBK"):
        render(dataclasses.replace(SALE, merchant_name="SHOP \U0001F600"), "merchant", encoding="GBK")


@pytest.mark.parametrize("field,value", [("txn_type", "TIP"), ("entry_mode", "NFC"), ("amount", 1.5),
                                         ("currency", 999), ("stan", 1_000_000), ("batch", -1)])
def test_bad_receipt_data_refused(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(SALE, **{field: value})


# ---------------------------------------------------------------- every transaction kind

QR_CODE = "134567890123456789"  # a WeChat payment code: masked like a PAN on the paper
TARGET_PAN = "6258091234567890"  # the credit card a repayment pays
ORIGINAL = dict(original_stan=41, original_rrn="000000000041", original_auth="654321", original_date="0313")
PRINTED = [name for name in KINDS if name != "balance"]  # a balance inquiry is never printed


def receipt_for(kind: str) -> ReceiptData:
    """A plausible receipt of `kind`: originals when it names one, QR or card as it needs."""
    extra = dict(ORIGINAL) if KINDS[kind].original else {}
    if kind.startswith("qr_"):
        extra.update(wallet="wechat", masked_pan=mask_code(QR_CODE), entry_mode="QR", aid=None,
                     app_label=None, tc=None, pin_verified=False)
    if kind == "cash":
        extra.update(masked_pan=None, entry_mode="CASH", rrn=None, auth_code=None, aid=None,
                     app_label=None, tc=None, pin_verified=False)
    if kind == "repayment":
        extra.update(target_pan=mask_pan(TARGET_PAN))
    if KINDS[kind].card == "nopin":  # card read, no PIN and no cryptogram (no field 55)
        extra.update(pin_verified=False, tc=None)
    return dataclasses.replace(SALE, txn_type=kind.upper(), **extra)


def test_txn_types_are_the_kinds_table():
    assert TXN_TYPES == {name.upper(): (k.label, k.label_zh) for name, k in KINDS.items()}
    assert TXN_TYPES["PREAUTH_CANCEL"] == ("PRE-AUTH CANCEL", "预授权撤销")
    assert NEGATIVE_TYPES == {"VOID", "REFUND", "COMPLETION_VOID", "QR_REFUND"}


@pytest.mark.parametrize("width", [32, 48])
@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("kind", PRINTED)
def test_every_kind_prints(kind, lang, width):
    data = receipt_for(kind)
    i = ["en", "zh"].index(lang)
    sign = "-" if kind in ("void", "refund", "completion_void", "qr_refund") else ""
    for copy in ("merchant", "customer"):
        lines = preview(data, copy, lang=lang, width=width).splitlines()
        assert all(text_width(line) <= width for line in lines), lines
        type_line = next(line for line in lines if line.startswith(("TXN TYPE", "交易类型")))
        assert type_line.endswith(" " + (KINDS[kind].label, KINDS[kind].label_zh)[i])
        amount_line = next(line for line in lines if line.startswith(("AMOUNT:", "金额:")))
        assert amount_line.endswith(f" {sign}123.45") and text_width(amount_line) == width
        origin = [line for line in lines if line.startswith(("ORIG.", "原"))]
        assert len(origin) == (4 if KINDS[kind].original else 0), origin
        text = "\n".join(lines)
        assert (("WALLET", "钱包")[i] in text) == kind.startswith("qr_")
        assert (("TO CARD", "还款卡号")[i] in text) == (kind == "repayment")
        raw = render(data, copy, lang=lang, width=width)
        assert (KINDS[kind].label, KINDS[kind].label_zh)[i].encode("gb18030") in raw
        for clear in (FULL_PAN, QR_CODE, TARGET_PAN):
            assert clear.encode() not in raw and clear not in text


@pytest.mark.parametrize("lang, expected", [
    ("en", ["ORIG. STAN                000041", "ORIG. REF           000000000041",
            "ORIG. AUTH                654321", "ORIG. DATE                 03/13"]),
    ("zh", ["原凭证号                  000041", "原参考号            000000000041",
            "原授权码                  654321", "原交易日期                 03/13"]),
])
def test_original_lines_follow_the_auth_code(lang, expected):
    lines = preview(receipt_for("void"), "merchant", lang=lang).splitlines()
    auth = next(n for n, line in enumerate(lines) if line.endswith(" 123456"))
    assert lines[auth + 1:auth + 5] == expected
    plain = preview(SALE, "merchant", lang=lang)
    assert not any(line in plain for line in expected)


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("kind", ["void", "refund", "completion_void", "qr_refund"])
def test_money_back_prints_a_minus(kind, lang):
    shown = "CNY" if lang == "en" else "RMB"
    text = preview(receipt_for(kind), "customer", lang=lang)
    assert f"{shown} -123.45" in text
    assert "-123.45" not in preview(SALE, "customer", lang=lang)


@pytest.mark.parametrize("kind", ["sale", "preauth", "preauth_cancel", "completion", "repayment", "qr_sale"])
def test_money_in_or_none_prints_no_minus(kind):
    assert "-123.45" not in preview(receipt_for(kind), "customer")


@pytest.mark.parametrize("wallet", sorted(WALLETS))
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_qr_receipt_shows_wallet_and_pay_code(wallet, lang):
    data = dataclasses.replace(receipt_for("qr_sale"), wallet=wallet)
    i = ["en", "zh"].index(lang)
    for copy in ("merchant", "customer"):
        lines = preview(data, copy, lang=lang).splitlines()
        wallet_line = next(line for line in lines if line.startswith(("WALLET", "钱包")))
        assert wallet_line.endswith(" " + WALLETS[wallet][i])
        code_line = next(line for line in lines if line.startswith(("PAY CODE", "付款码")))
        assert code_line.endswith(" 134567********6789")
        assert ("QR", "扫码")[i] in next(line for line in lines if line.startswith(("ENTRY", "输入")))
        text = "\n".join(lines)
        for absent in ("CARD NO.", "卡号", "SIGNATURE", "签名", "PIN VERIFIED", "密码验证", "NO PIN",
                       "免密"):
            assert absent not in text  # no card, no cardholder block: confirmed in the wallet app
    assert preview(data, "customer", lang="en").count("WeChat Pay") == (wallet == "wechat")


def test_wallet_names():
    assert {k: v[1] for k, v in WALLETS.items()} == {
        "wechat": "微信支付", "alipay": "支付宝", "unionpay_qr": "银联二维码"}
    assert WALLETS["wechat"][0] == "WeChat Pay"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_repayment_shows_the_card_paid(lang):
    lines = preview(receipt_for("repayment"), "customer", lang=lang).splitlines()
    card = next(n for n, line in enumerate(lines) if line.startswith(("CARD NO.", "卡号")))
    label = "TO CARD         " if lang == "en" else "还款卡号        "
    assert lines[card + 1] == label + "625809******7890"


@pytest.mark.parametrize("lang, mark", [("en", "AUTO REFUND (PAID LATE)"),
                                        ("zh", "自动退款(超时支付)")])
def test_auto_refund_mark(lang, mark):
    data = receipt_for("qr_refund")
    assert mark not in preview(data, "customer", lang=lang)
    late = dataclasses.replace(data, auto_refund=True)
    lines = preview(late, "customer", lang=lang).splitlines()
    amount = next(n for n, line in enumerate(lines) if line.startswith(("AMOUNT:", "金额:")))
    assert lines[amount + 1].strip() == mark
    assert ("bold", lines[amount + 1]) in layout(late, "customer", lang=lang)


def _cut_out(longer: bytes, shorter: bytes) -> bytes:
    """The one run of bytes that `longer` has and `shorter` has not (fails if not one run)."""
    head = next(n for n, (a, b) in enumerate(zip(longer, shorter)) if a != b)
    tail = len(shorter) - head
    assert longer[:head] + longer[len(longer) - tail:] == shorter
    return longer[head:len(longer) - tail]


SET_BOLD, SET_NORMAL = b"\x1d!\x00\x1bE\x01", b"\x1d!\x00\x1bE\x00"  # GS ! 0, ESC E 1 / 0


@pytest.mark.parametrize("lang, mark", [("en", "*** REPRINT ***"), ("zh", "*** 重打印 ***")])
@pytest.mark.parametrize("kind", ["sale", "void", "qr_sale", "repayment"])
@pytest.mark.parametrize("copy", ["merchant", "customer"])
def test_reprint_differs_only_by_its_line(copy, kind, lang, mark):
    first = receipt_for(kind)
    again = dataclasses.replace(first, reprint=True)
    first_lines, again_lines = layout(first, copy, lang=lang), layout(again, copy, lang=lang)
    centered = " " * ((32 - text_width(mark)) // 2) + mark
    assert again_lines[2] == ("bold", centered)  # under the copy name, on both copies
    assert again_lines[:2] + again_lines[3:] == first_lines
    cut = _cut_out(render(again, copy, lang=lang), render(first, copy, lang=lang))
    assert cut == SET_BOLD + centered.encode("gb18030") + b"\n" + SET_NORMAL


@pytest.mark.parametrize("name, kind, lang, copy", [
    ("void_en_merchant", "void", "en", "merchant"),
    ("refund_zh_merchant", "refund", "zh", "merchant"),
    ("qr_sale_zh_customer", "qr_sale", "zh", "customer"),
    ("repayment_en_customer", "repayment", "en", "customer"),
    ("preauth_cancel_zh_customer", "preauth_cancel", "zh", "customer"),
])
def test_golden_other_kinds(name, kind, lang, copy):
    data = receipt_for(kind)
    raw, text = render(data, copy, lang=lang), preview(data, copy, lang=lang)
    assert raw == golden(f"{name}.bin", raw)
    assert text == golden(f"{name}.txt", text.encode()).decode()


@pytest.mark.parametrize("field, value", [("wallet", "paypal"), ("wallet", ""), ("original_stan", 1_000_000),
                                          ("original_stan", "41"), ("original_date", "1332"),
                                          ("original_date", "313"), ("target_pan", "6258 09** **** 7890")])
def test_bad_new_fields_refused(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(receipt_for("void"), **{field: value})


def test_clear_target_pan_refused_without_repeating_it():
    with pytest.raises(ValueError, match="target_pan") as info:
        dataclasses.replace(SALE, txn_type="REPAYMENT", target_pan=TARGET_PAN)
    assert TARGET_PAN not in str(info.value)


# ---------------------------------------------------------------- checkout: basket, cash, training

BASKET = dict(basket_lines=(("Green tea 500ml", 2, 350, 700), ("Coffee beans 250g", 1, 6800, 6800),
                            ("绿茶", 3, 150, 450)),
              subtotal=7950, discount=795)  # 10% off
CASH_SALE = dataclasses.replace(receipt_for("cash"), amount=7155, tendered=10000, change=2845,
                                **BASKET)
BASKET_SALE = dataclasses.replace(SALE, amount=7155, **BASKET)


def lines_between(lines: list[str], first: str, last: str) -> list[str]:
    start = next(n for n, line in enumerate(lines) if line.startswith(first))
    end = next(n for n, line in enumerate(lines) if n > start and line.startswith(last))
    return lines[start:end + 1]


@pytest.mark.parametrize("lang, expected", [
    ("en", ["Green tea 500ml", "  2 x 3.50                  7.00", "Coffee beans 250g",
            "  1 x 68.00                68.00", "绿茶", "  3 x 1.50                  4.50",
            "SUBTOTAL                   79.50", "DISCOUNT                   -7.95",
            "--------------------------------", "AMOUNT:                CNY 71.55"]),
    ("zh", ["Green tea 500ml", "  2 x 3.50                  7.00", "Coffee beans 250g",
            "  1 x 68.00                68.00", "绿茶", "  3 x 1.50                  4.50",
            "小计                       79.50", "折扣                       -7.95",
            "--------------------------------", "金额:                  RMB 71.55"]),
])
def test_the_basket_is_itemised_on_the_customer_copy_before_the_amount(lang, expected):
    customer = preview(BASKET_SALE, "customer", lang=lang).splitlines()
    assert lines_between(customer, "Green tea", ("AMOUNT:", "金额:")) == expected
    merchant = preview(BASKET_SALE, "merchant", lang=lang)
    assert "Green tea" not in merchant and ("SUBTOTAL", "小计")[lang == "zh"] not in merchant
    assert merchant == preview(dataclasses.replace(SALE, amount=7155), "merchant", lang=lang)


@pytest.mark.parametrize("lang, label", [("en", "TOTAL"), ("zh", "合计")])
def test_a_split_tender_part_shows_the_basket_total_above_its_amount(lang, label):
    card_part = dataclasses.replace(BASKET_SALE, amount=5000)  # the rest was paid in cash
    lines = preview(card_part, "customer", lang=lang).splitlines()
    total = next(n for n, line in enumerate(lines) if line.startswith(label + " "))
    assert lines[total].endswith(" 71.55") and lines[total + 2].endswith(" 50.00")
    assert not [line for line in preview(BASKET_SALE, "customer", lang=lang).splitlines()
                if line.startswith(label + " ")]  # paid in full: the amount is the total
    no_discount = dataclasses.replace(BASKET_SALE, discount=0, amount=7950)
    assert ("DISCOUNT", "折扣")[lang == "zh"] not in preview(no_discount, "customer", lang=lang)


@pytest.mark.parametrize("lang, expected", [
    ("en", ["PAYMENT                     CASH", "TXN TYPE                    CASH",
            "AMOUNT:                CNY 71.55", "CASH TENDERED             100.00",
            "CHANGE                     28.45"]),
    ("zh", ["付款方式                    现金", "交易类型                    现金",
            "金额:                  RMB 71.55", "实收                      100.00",
            "找零                       28.45"]),
])
@pytest.mark.parametrize("copy", ["merchant", "customer"])
def test_cash_prints_tendered_and_change_and_no_card(copy, lang, expected):
    lines = preview(CASH_SALE, copy, lang=lang).splitlines()
    assert [line for line in expected if line in lines] == expected
    amount = lines.index(expected[2])
    assert lines[amount + 1:amount + 3] == expected[3:]
    text = "\n".join(lines)
    for absent in ("CARD NO.", "卡号", "ENTRY MODE", "输入方式", "SIGNATURE", "签名", "PIN", "密码",
                   "REF NO.", "参考号"):
        assert absent not in text
    assert ("Green tea" in text) == (copy == "customer")


def test_a_cash_payment_without_a_basket():
    data = dataclasses.replace(receipt_for("cash"), amount=1200, tendered=1200, change=0)
    lines = preview(data, "customer").splitlines()
    assert lines[-4:] == ["AMOUNT:                CNY 12.00", "CASH TENDERED              12.00",
                          "CHANGE                      0.00", "-" * 32]
    assert "CASH TENDERED" not in preview(receipt_for("cash"), "customer")  # not given: not shown


@pytest.mark.parametrize("lang, mark, note", [("en", "*** TRAINING ***", "NOT A PAYMENT"),
                                              ("zh", "*** 培训模式 ***", "非真实交易")])
@pytest.mark.parametrize("kind", ["sale", "cash", "qr_sale", "refund"])
@pytest.mark.parametrize("copy", ["merchant", "customer"])
def test_training_differs_only_by_its_two_bold_lines(copy, kind, lang, mark, note):
    real = receipt_for(kind)
    training = dataclasses.replace(real, training=True)
    real_lines, lines = layout(real, copy, lang=lang), layout(training, copy, lang=lang)
    assert lines[2] == ("bold", " " * ((32 - text_width(mark)) // 2) + mark)  # under the copy name
    amount = next(n for n, (_s, text) in enumerate(lines)
                  if text.startswith(("AMOUNT:", "金额:")))
    assert lines[amount + 1] == ("bold", " " * ((32 - text_width(note)) // 2) + note)
    assert lines[:2] + lines[3:amount + 1] + lines[amount + 2:] == real_lines
    raw = render(training, copy, lang=lang)
    assert mark.encode("gb18030") in raw and note.encode("gb18030") in raw
    assert mark.encode("gb18030") not in render(real, copy, lang=lang)


@pytest.mark.parametrize("width", [32, 48])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_checkout_receipts_fit_the_paper(lang, width):
    long_item = (("特级铁观音乌龙茶 礼盒装 五百克 Tieguanyin Oolong Gift Box", 12, 99_999, 1_199_988),)
    big = dataclasses.replace(CASH_SALE, basket_lines=long_item, subtotal=1_199_988, discount=0,
                              amount=1_199_988, tendered=1_200_000, change=12, training=True)
    for data in (CASH_SALE, BASKET_SALE, big):
        for copy in ("merchant", "customer"):
            lines = preview(data, copy, lang=lang, width=width).splitlines()
            assert all(text_width(line) <= width for line in lines), lines
            render(data, copy, lang=lang, width=width)  # every character prints in GB18030
    lines = preview(big, "customer", lang=lang, width=width).splitlines()
    text = "".join(line.strip() for line in lines)
    assert "Tieguanyin" in text and "12 x 999.99" in text and "11999.88" in text  # nothing cut off


@pytest.mark.parametrize("name, data, lang, copy", [
    ("cash_basket_en_customer", CASH_SALE, "en", "customer"),
    ("cash_basket_zh_merchant", CASH_SALE, "zh", "merchant"),
    ("sale_basket_zh_customer", BASKET_SALE, "zh", "customer"),
    ("sale_training_en_customer", dataclasses.replace(SALE, training=True), "en", "customer"),
])
def test_golden_checkout_receipts(name, data, lang, copy):
    raw, text = render(data, copy, lang=lang), preview(data, copy, lang=lang)
    assert raw == golden(f"{name}.bin", raw)
    assert text == golden(f"{name}.txt", text.encode()).decode()


@pytest.mark.parametrize("changes, match", [
    (dict(masked_pan="622609******0014"), "CASH"),  # cash with a card
    (dict(entry_mode="CHIP"), "CASH"),
    (dict(tendered=7000, change=-155), "tendered"),  # less than the amount
    (dict(change=2844), "change"),
    (dict(change=None), "change"),
    (dict(subtotal=7949), "subtotal"),  # not the sum of the lines
    (dict(discount=7951), "discount"),
    (dict(discount=-1), "discount"),
    (dict(amount=7156), "amount"),  # more than the basket's total
    (dict(basket_lines=(("Tea", 0, 350, 0),), subtotal=0, discount=0, amount=0, tendered=0,
          change=0), "basket_lines 1"),
    (dict(basket_lines=(("", 1, 350, 350),)), "basket_lines 1"),
    (dict(basket_lines=(("Tea", 1, 3.5, 350),)), "basket_lines 1"),
    (dict(basket_lines=(("Tea", 1, 350),)), "basket_lines 1"),
    (dict(basket_lines=(), subtotal=None), "discount"),  # a discount without a basket
])
def test_bad_checkout_fields_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CASH_SALE, **changes)


@pytest.mark.parametrize("changes, match", [
    (dict(masked_pan=None), "CASH"), (dict(entry_mode="CASH"), "CASH"),
    (dict(tendered=20000, change=7655), "CASH only"), (dict(subtotal=100), "basket_lines"),
])
def test_card_receipts_refuse_cash_fields(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(BASKET_SALE if "tendered" in changes else SALE, **changes)


# ---------------------------------------------------------------- simulated printer


def test_sim_printer_writes_exact_files(tmp_path):
    printer = SimPrinter(tmp_path / "out")
    assert isinstance(printer, Printer)
    raw, text = render(SALE, "customer", lang="zh"), preview(SALE, "customer", lang="zh")
    printer.print_receipt(raw, text, "b000001-s000042-customer")
    assert (tmp_path / "out" / "b000001-s000042-customer.bin").read_bytes() == raw
    assert (tmp_path / "out" / "b000001-s000042-customer.txt").read_text(encoding="utf-8") == text
    assert printer.printed == ["b000001-s000042-customer"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "b000001-s000042-customer.bin", "b000001-s000042-customer.txt"]  # no temp files left
    assert printer.status() == "ok"


def test_sim_printer_paper_out_then_refill(tmp_path):
    printer = SimPrinter(tmp_path, paper=False)
    assert printer.status() == "paper out"
    with pytest.raises(PrinterError) as info:
        printer.print_receipt(b"\x1b@x", "x\n", "r1")
    assert info.value.reason == "paper out"
    assert list(tmp_path.iterdir()) == [] and printer.printed == []
    printer.paper = True
    assert printer.status() == "ok"
    printer.print_receipt(b"\x1b@x", "x\n", "r1")
    printer.print_receipt(b"\x1b@y", "y\n", "r2")
    assert printer.printed == ["r1", "r2"]
    assert (tmp_path / "r1.bin").read_bytes() == b"\x1b@x"
    assert (tmp_path / "r2.txt").read_text(encoding="utf-8") == "y\n"


def test_sim_printer_write_failure_is_a_printer_error(tmp_path):
    printer = SimPrinter(tmp_path / "out")
    (tmp_path / "out" / "r1.bin").mkdir()  # os.replace onto a directory fails
    with pytest.raises(PrinterError) as info:
        printer.print_receipt(b"x", "x\n", "r1")
    assert info.value.reason.startswith("write failed: ")
    assert printer.printed == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r1.bin"]  # temp file cleaned up


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden"])
def test_sim_printer_refuses_paths_as_names(tmp_path, name):
    with pytest.raises(ValueError):
        SimPrinter(tmp_path).print_receipt(b"x", "x\n", name)


def test_the_footer_and_the_qr_code_print_under_the_receipt():
    data = dataclasses.replace(SALE, footer="Thank you\nWelcome back", qr="https://example.com/r?s=000042")
    tail = preview(data, "customer").splitlines()[-3:]
    assert [line.strip() for line in tail] == ["Thank you", "Welcome back",
                                                "[QR] https://example.com/r?s=000042"]
    raw = render(data, "customer")
    assert b"\x1d(k" in raw and b"https://example.com/r?s=000042" in raw  # GS ( k: the printer's QR
    assert raw.index(b"Welcome back") < raw.index(b"\x1d(k") < raw.rindex(b"\x1dV")  # then the cut
    assert b"\x1d(k" not in render(SALE, "customer")  # none unless configured


def test_the_merchant_logo_prints_as_a_raster_image_above_the_receipt(tmp_path):
    from PIL import Image, ImageDraw
    logo = tmp_path / "logo.png"
    image = Image.new("1", (96, 32), 1)
    ImageDraw.Draw(image).rectangle((8, 8, 88, 24), fill=0)
    image.save(logo)
    raw = render(SALE, "customer", logo=logo)
    assert raw.startswith(b"\x1b@") and b"\x1dv0" in raw  # ESC @, then GS v 0 raster
    assert raw.index(b"\x1dv0") < raw.index(SALE.merchant_name.encode())
    assert b"\x1dv0" not in render(SALE, "customer")
