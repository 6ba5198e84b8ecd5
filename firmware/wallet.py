"""Wallet QR payment codes (付款码, the customer shows, the terminal scans): which wallet a
code belongs to, how it may be shown, the single-payment limit, the merchant fee rate, and
the wallet answer codes of the KPOS QR messages (docs/acquirer-protocol.md §12, docs/qr.md).

Pure data and pure functions, any thread. A payment code is a one-time token, but until it
expires it pays: only `mask_code()` output reaches logs, screens, receipts and the journal.
Amounts are int minor units; fee rates are basis points (cfg.fees: 38 = 0.38%).
"""
from __future__ import annotations

from dataclasses import dataclass

from firmware.acquirer.codes import describe_code
from firmware.cardsafe import mask_pan
from firmware.money import format_amount

__all__ = ["Wallet", "WALLETS", "identify", "mask_code", "fee_rate", "check_limit",
           "describe_wallet_code", "ENTRY_QR", "CODE_LENGTHS", "PAID", "USER_PAYING",
           "CODE_INVALID", "ALREADY_PAID", "ORDER_CLOSED", "WALLET_CODES"]

ENTRY_QR = "031"  # field 22 / journal entry_mode: code scanned (03), terminal has a PIN pad (1)
CODE_LENGTHS = (16, 24)  # digits: the shortest and longest code of any wallet

# Field 39 of the wallet answers. "00", "51", "05" ... keep their bank meaning (codes.py).
PAID = "00"  # the payment (or a query of it) succeeded; a cancel: order closed, nothing charged
USER_PAYING = "09"  # the customer is confirming in the app: query again later
CODE_INVALID = "Q1"  # the payment code is expired, used or unknown to the wallet
ALREADY_PAID = "Q2"  # answer to a cancel: too late, the customer paid (the terminal refunds)
ORDER_CLOSED = "Q3"  # answer to a query: the order was cancelled
WALLET_CODES = {
    USER_PAYING: "Waiting for customer",
    CODE_INVALID: "QR code invalid",
    ALREADY_PAID: "Already paid",
    ORDER_CLOSED: "QR order closed",
}


@dataclass(frozen=True)
class Wallet:
    name: str  # journal txn.wallet; cfg.fees.<name>_rate; cfg.risk.daily_<name>
    label: str  # English receipts and screens
    label_zh: str  # Chinese receipts
    lengths: tuple[int, int]  # shortest and longest code, digits
    prefixes: tuple[str, ...]  # a code starts with one of these


WALLETS: dict[str, Wallet] = {w.name: w for w in (
    Wallet("wechat", "WeChat Pay", "微信支付", (18, 18), tuple(str(p) for p in range(10, 16))),
    Wallet("alipay", "Alipay", "支付宝", (16, 24), tuple(str(p) for p in range(25, 31))),
    Wallet("unionpay_qr", "UnionPay QR", "银联二维码", (19, 19), ("62",)),
)}


def identify(code: str) -> Wallet | None:
    """The wallet whose prefix and length `code` has; None for anything else (non-digits too)."""
    if not (code.isascii() and code.isdigit()):
        return None
    for wallet in WALLETS.values():
        low, high = wallet.lengths
        if low <= len(code) <= high and code.startswith(wallet.prefixes):
            return wallet
    return None


def mask_code(code: str) -> str:
    """First 6 and last 4 digits, the rest '*': the PAN rule (mask_pan) for payment codes."""
    return mask_pan(code)


def fee_rate(fees_cfg, wallet_name: str) -> int:
    """The merchant fee rate in basis points for `wallet_name` ("" = a card payment)."""
    if wallet_name and wallet_name not in WALLETS:
        raise ValueError(f"fee rate: unknown wallet {wallet_name!r} (not in {sorted(WALLETS)})")
    return getattr(fees_cfg, f"{wallet_name or 'card'}_rate")


def check_limit(wallet_cfg, amount: int, currency: int = 156) -> str:
    """"" when a QR payment of `amount` is allowed, else the reason to show
    ("Over QR limit 5,000.00")."""
    if amount <= 0:
        return "Amount must be > 0"
    if amount > wallet_cfg.limit:
        whole, dot, frac = format_amount(wallet_cfg.limit, currency).partition(".")
        return f"Over QR limit {int(whole):,}{dot}{frac}"
    return ""


def describe_wallet_code(code: str) -> str:
    """Operator text (<= 20 characters) for a wallet answer's field 39."""
    return WALLET_CODES.get(code) or describe_code(code)
