"""Wallet payment codes: recognition by prefix and length, masking, the QR limit, fee rates."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.config import FeesConfig, WalletConfig
from firmware.wallet import (
    ALREADY_PAID, USER_PAYING, WALLETS, check_limit, describe_wallet_code, fee_rate, identify,
    mask_code,
)

WECHAT = "134567890123456780"  # 18 digits, 10..15
ALIPAY = "2812345678901234"  # 16 digits, 25..30
ALIPAY24 = "301234567890123456789012"
UNIONPAY = "6212345678901234560"  # 19 digits, 62


@pytest.mark.parametrize("code, wallet", [
    (WECHAT, "wechat"), ("104567890123456789", "wechat"), ("154567890123456789", "wechat"),
    (ALIPAY, "alipay"), (ALIPAY24, "alipay"), ("25" + "0" * 18, "alipay"),
    (UNIONPAY, "unionpay_qr"),
])
def test_identify_by_prefix_and_length(code, wallet):
    assert identify(code) is WALLETS[wallet]


@pytest.mark.parametrize("code", [
    "", "164567890123456789",  # prefix 16: no wallet at 18 digits
    "13456789012345678",  # WeChat prefix, 17 digits
    "1345678901234567890",  # ... 19 digits
    "28" + "1" * 13, "30" + "1" * 23,  # Alipay 15 and 25 digits
    "621234567890123456",  # UnionPay 18 digits
    "6212345678901234560 ", "62123456789O1234560",  # a space, a letter O
    "١٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٠",  # Arabic-Indic digits: isdigit() but not ASCII
    "31" + "1" * 16,
])
def test_anything_else_is_no_wallet(code):
    assert identify(code) is None


@given(st.text(max_size=30))
def test_identify_never_raises_and_only_takes_ascii_digits(text):
    wallet = identify(text)
    assert wallet is None or (text.isascii() and text.isdigit()
                              and text.startswith(wallet.prefixes))


def test_wallet_labels():
    assert [(w.label, w.label_zh) for w in WALLETS.values()] == [
        ("WeChat Pay", "微信支付"), ("Alipay", "支付宝"), ("UnionPay QR", "银联二维码")]


def test_mask_code_keeps_first_6_and_last_4():
    assert mask_code(WECHAT) == "134567********6780"
    assert mask_code(ALIPAY24) == "301234" + "*" * 14 + "9012"
    assert WECHAT[6:14] not in mask_code(WECHAT)


def test_limit():
    cfg = WalletConfig(limit=500_000, poll_interval=3.0, timeout=60.0)
    assert check_limit(cfg, 500_000) == ""
    assert check_limit(cfg, 1) == ""
    assert check_limit(cfg, 500_001) == "Over QR limit 5,000.00"
    assert check_limit(cfg, 0) == "Amount must be > 0"
    big = WalletConfig(limit=123_456_789, poll_interval=3.0, timeout=60.0)
    assert check_limit(big, 123_456_790) == "Over QR limit 1,234,567.89"
    assert check_limit(WalletConfig(limit=5000, poll_interval=1, timeout=2), 5001,
                       currency=392) == "Over QR limit 5,000"  # JPY: no minor unit


def test_fee_rates_by_wallet():
    fees = FeesConfig(card_rate=60, wechat_rate=38, alipay_rate=30, unionpay_qr_rate=25)
    assert [fee_rate(fees, name) for name in ("", "wechat", "alipay", "unionpay_qr")] == [
        60, 38, 30, 25]
    with pytest.raises(ValueError, match="unknown wallet 'paypal'"):
        fee_rate(fees, "paypal")


def test_wallet_codes_have_short_messages():
    assert describe_wallet_code(USER_PAYING) == "Waiting for customer"
    assert describe_wallet_code(ALREADY_PAID) == "Already paid"
    assert describe_wallet_code("51") == "INSUFFICIENT FUNDS"
    assert describe_wallet_code("ZZ") == "DECLINED (ZZ)"
