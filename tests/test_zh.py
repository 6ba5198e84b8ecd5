"""Chinese UI (firmware/flows/zh.py): the flows' screens translated at the display."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from luma.core.device import dummy

from flowkit import make_drive
from firmware.acquirer.codes import describe_code
from firmware.basket import Catalog, Product
from firmware.emv.card import CardData
from firmware.flows import sale, shell
from firmware.flows.types import (
    LCD_COLS, AuthResult, BasketSaved, CardInserted, CardRead, CardReadFailed, CardRemoved,
    CashDone, Key, LinkStatus, LoginResult, PinLength, PinVerified, PrintDone, RiskResult,
    Screen, Timeout, TxnPage, TxnSummary, wrap,
)
from firmware.flows.zh import PHRASES, translate, translate_text
from firmware.hal import DeviceError
from firmware.hal.display_luma import LumaDisplay, build_luma
from firmware.hal.render import find_cjk_font, render
from firmware.receipts import text_width

PAN = "6226090000000014"
CARD = CardData(pan=PAN, expiry="3012", pan_seq="01", track2=PAN + "=3012201",
                aid="A000000333010101", app_label="UnionPay Debit", icc_data=b"\x9f\x26\x08")
TEA = Product("2", "Green tea 500ml", 350, "6920152400012")
SALE_CFG = sale.SaleConfig(max_amount=9_999_999)
SHELL_CFG = shell.ShellConfig(SALE_CFG, wallet_limit=500_000, catalog=Catalog((TEA,)))
ROW = TxnSummary(txn_id=3, kind="sale", stan=17, batch=1, amount=1250, currency=156,
                 status="APPROVED", created_at="2024-05-14T10:22:33", operator="01",
                 masked_pan="622609******0014", rrn="000000000042", auth_code="123456")
CJK = re.compile("[\u4e00-\u9fff]")
# Kept as they are: currency, brand, the card's application label, the product's name.
ENGLISH_KEPT = {"CNY", "KPOS", "UnionPay", "Debit", "Credit", "Green", "tea", "500ml"}


def keys(text: str) -> list[Key]:
    return [Key(k) for k in text]


def screens_of(start, step, cfg, *paths) -> list[Screen]:
    seen: list[Screen] = []
    drive = make_drive(start, step, seen.append, cfg)
    for path in paths:
        drive(path)
    return seen


SALE_TO_PIN = keys("1250") + [Key("ENTER"), CardInserted(), CardRead(CARD), RiskResult("ok")]
SALE_TO_AUTH = SALE_TO_PIN + [PinLength(1), PinLength(2), PinLength(3), PinLength(4), Key("ENTER")]
SALE_PATHS = (
    [LinkStatus(True, 3)],
    SALE_TO_AUTH + [AuthResult("approved", "00", "", "123456", "000000000042", 7), PrintDone(True),
                    Timeout("result", 3), CardRemoved()],
    SALE_TO_AUTH + [AuthResult("declined", "51", describe_code("51")), Key("ENTER")],
    SALE_TO_AUTH + [AuthResult("not_sent", message="Host unreachable")],
    SALE_TO_AUTH + [AuthResult("declined", message="Card does not match original")],
    keys("1250") + [Key("ENTER"), CardInserted(), CardRead(CARD, "offline_pin"), RiskResult("ok"),
                    PinLength(4), Key("ENTER"), PinVerified(False, 2)],
    keys("1250") + [Key("ENTER"), CardInserted(), CardReadFailed("no supported application")],
    keys("1250") + [Key("ENTER"), Timeout("card", 1)],
)
LOGIN = keys("01") + [Key("ENTER"), PinLength(4), Key("ENTER")]
CASHIER = LOGIN + [LoginResult(True, "01", "cashier")]
BASKET = CASHIER + [Key("MENU"), Key("1"), Key("2")] + keys("2") + [Key("ENTER")]
SHELL_PATHS = (
    LOGIN + [LoginResult(False, reason="Wrong password (2 left)")],
    CASHIER + [Key("MENU"), Key("ENTER"), Key("ENTER"), Key("CANCEL")],
    CASHIER + [Key("MENU"), Key("ENTER"), Key("ENTER"), Key("9")],
    CASHIER + [Key("MENU"), Key("ENTER"), Key("8"), Key("1"),
               TxnPage((ROW,), 0, 5), Key("ENTER")],
    BASKET + [Key("MENU"), Key("5"), BasketSaved(7), Key("3")] + keys("2000")
    + [Key("ENTER"), CashDone(9, 1650), PrintDone(True)],
)


@pytest.fixture(scope="module")
def flow_screens() -> list[Screen]:
    found = (screens_of(sale.start, sale.step, SALE_CFG, *SALE_PATHS)
             + screens_of(shell.start, shell.step, SHELL_CFG, *SHELL_PATHS))
    return list(dict.fromkeys(found))


def test_the_paths_reach_the_screens_that_matter(flow_screens):
    titles = {s.title for s in flow_screens}
    lines = {line for s in flow_screens for line in s.lines}
    for title in ("KPOS", "SALE", "SALE CNY 12.50", "APPROVED", "DECLINED", "NOT SENT", "MENU 1/3",
                  "BASKET 1 item", "PAY", "CASH PAID", "TXNS 1-1/5", "LOGIN", "Timed out"):
        assert title in titles
    for line in ("ONLINE  queued 3", "Enter PIN", "Wrong PIN: 2 left", "Change CNY 16.50",
                 "Total CNY 3.50", "INSUFFICIENT FUNDS", "622609******0014"):
        assert line in lines


def test_every_flow_screen_translates_to_chinese_that_fits(flow_screens):
    for screen in flow_screens:
        zh = translate(screen)
        assert zh.tone == screen.tone and len(zh.lines) <= len(screen.lines)
        if screen.title != "KPOS" and not screen.title.startswith("CNY"):
            assert CJK.search(zh.title), (screen, zh)
        for line in (zh.title, *zh.lines):
            assert text_width(line) <= LCD_COLS, (line, screen)
            left = set(re.findall("[A-Za-z]{3,}", line)) - ENGLISH_KEPT
            assert not left, (left, screen, zh)


def test_amounts_stans_and_masked_pans_pass_unchanged(flow_screens):
    data = re.compile(r"[A-Z]{3} -?\d+\.\d\d|\d{6}\*{6}\d{4}|\b\d{6}\b")
    for screen in flow_screens:
        zh = translate(screen)
        shown = " ".join((zh.title, *zh.lines))
        for item in data.findall(" ".join((screen.title, *screen.lines))):
            assert item in shown, (item, screen, zh)


@pytest.mark.skipif(find_cjk_font() is None, reason="no CJK font installed")
def test_translated_screens_render(flow_screens):
    font = find_cjk_font()
    for screen in flow_screens:
        image = render(translate(screen), (240, 240), mode="RGB", cjk_font=font)
        assert image.getbbox() is not None


@pytest.mark.parametrize("english, chinese", [
    ("SALE CNY 12.50", "消费 CNY 12.50"), ("Wrong PIN: 2 left", "密码错误,剩2次"),
    ("Change CNY 7.50", "找零 CNY 7.50"), ("TXNS 1-4/5", "交易 1-4/5"), ("MENU 1/3", "菜单 1/3"),
    ("BASKET 3 items", "购物车 3件"), ("Total CNY 3.50", "合计 CNY 3.50"),
    ("ONLINE  queued 3", "联机  待发3笔"), ("VOID APPROVED", "消费撤销成功"),
    ("PRE-AUTH CANCEL OK", "预授权撤销成功"), ("000017 PRE-AUTH  12.50", "000017 预授权 12.50"),
    ("Host unreachable", "主机无法连接"), ("Approved offline", "脱机批准"),
    ("Declined by card", "卡片拒绝"), ("Paid late: refunded", "超时支付:已退款"),
    ("Insert, tap or swipe", "请插卡/挥卡/刷卡"), ("Printer: paper out", "打印机: 缺纸"),
    ("Reader: card removed o...", "读卡器: 卡已拔出..."), ("1 Pre-auth", "1 预授权"),
    ("KPOS     op 01", "KPOS  操作员 01"), ("Auth 123456", "授权码 123456"),
    ("622609******0014", "622609******0014"), ("UnionPay Debit", "UnionPay Debit"),
])
def test_phrases_and_templates(english, chinese):
    assert translate_text(english) == chinese


def test_a_wrapped_message_is_translated_whole():
    screen = Screen("DECLINED", ("Card does not match", "original", "Code 05"), "error")
    assert translate(screen) == Screen("交易失败", ("与原交易卡号不符", "代码 05"), "error")


# firmware.limits and firmware.offline reasons as the flows show them: wrap(reason, 3)
LIMIT_TEXTS = [
    ("Over CONTACTLESS limit 1000.00", ("超出非接限额", "1000.00")),
    ("Over UNIONPAY QR daily limit 100.00", ("超出银联二维码日限额", "100.00")),
    ("Over QR limit 10.00", ("超出扫码限额 10.00",)),
    ("Total 1234.00 in 10 min", ("合计 1234.00", "10分钟内")),
    ("4 sales in 90 s", ("90秒内4笔",)),
    ("Host unreachable\nOffline total full", ("主机无法连接", "脱机金额已满")),
    ("Host unreachable\nPIN needs the host", ("主机无法连接", "联机密码需主机")),
    ("Host unreachable\nNo pre-auth offline", ("主机无法连接", "预授权不能脱机")),
    ("Host unreachable\nNo completion void offline", ("主机无法连接", "预授权完成撤销", "不能脱机")),
]


@pytest.mark.parametrize("english, chinese", LIMIT_TEXTS)
def test_wrapped_limit_and_offline_texts_are_chinese_with_the_amount_kept(english, chinese):
    assert translate(Screen("Refused", wrap(english, 3), "error")).lines == chinese


def test_every_table_entry_fits_the_display():
    for english, chinese in PHRASES.items():
        assert text_width(chinese) <= LCD_COLS, (english, chinese)


@given(st.text(max_size=LCD_COLS), st.lists(st.text(max_size=LCD_COLS), max_size=4))
def test_any_screen_translates_to_a_valid_screen(title, lines):
    zh = translate(Screen(title, tuple(lines)))
    assert all(text_width(line) <= LCD_COLS for line in (zh.title, *zh.lines))


# ---- the luma display in Chinese ----

def frame(lang: str, screen: Screen) -> bytes:
    display = LumaDisplay(dummy(width=240, height=240, mode="RGB"), cjk_font=find_cjk_font(),
                          lang=lang)
    try:
        display.show(screen)
        assert display.flush(5)
        return display.device.image.tobytes()
    finally:
        display.close()


def test_luma_display_in_chinese_draws_the_translated_screen():
    screen = Screen("SALE CNY 12.50", ("Insert or swipe card",))
    font = find_cjk_font()
    zh = frame("zh", screen)
    assert zh != frame("en", screen)
    assert zh == render(translate(screen), (240, 240), mode="RGB", cjk_font=font).tobytes()


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="lang 'fr'"):
        LumaDisplay(dummy(width=128, height=64), lang="fr")
    with pytest.raises(DeviceError, match="lang 'fr'"):
        build_luma("ssd1306", lang="fr")
