"""The transaction types a merchant can run, and what each one needs and means.

Pure data, any thread. `KINDS[name]` is looked up by the flows (which role may run it, does
it need a card and a PIN, an original transaction), by the app (reversible or not, may it
go offline), by the message builders (firmware/acquirer/txn_messages.py) and by settlement
and reports (how it counts in the batch totals). The journal's `txn.kind` holds the name.

Batch totals (UnionPay settlement, docs/acquirer-protocol.md): `debit` kinds (sale,
completion, repayment, QR sale) add to the debit count and amount unless voided or reversed;
`credit` kinds (refund, QR refund) add to the credit totals; a void (or completion void)
takes its original out of the debit totals and is itself counted only as a void; a
pre-auth, its cancel and a balance inquiry move no money and are not in the totals.
Cash (CASH) never reaches the acquirer: reports show it on its own line, outside the
acquirer's totals.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Kind", "KINDS", "ROLES", "role_allows", "DEBIT", "CREDIT", "VOID", "NONE", "CASH"]

ROLES = ("cashier", "supervisor", "admin")  # each role may do what the ones before it may
DEBIT, CREDIT, VOID, NONE, CASH = "debit", "credit", "void", "none", "cash"


@dataclass(frozen=True)
class Kind:
    name: str  # journal txn.kind
    label: str  # English, receipts and screens (<= 16 characters)
    label_zh: str  # Chinese receipts
    role: str  # the least role that may run it (ROLES)
    card: str  # "pin": card read, CVM as the card asks | "nopin": card read, no PIN | "none"
    original: bool  # names an original transaction (void, refund, completion ...)
    reversible: bool  # an ARMED reversal while in flight (money may move at the host)
    totals: str  # DEBIT | CREDIT | VOID | NONE: how it counts in the batch totals
    offline: bool  # may be approved offline (firmware/offline.py still decides)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("sale", "SALE", "消费", "cashier", "pin", False, True, DEBIT, True),
    Kind("void", "VOID", "消费撤销", "supervisor", "nopin", True, True, VOID, False),
    Kind("refund", "REFUND", "退货", "supervisor", "nopin", True, False, CREDIT, False),
    Kind("preauth", "PRE-AUTH", "预授权", "cashier", "pin", False, True, NONE, False),
    Kind("preauth_cancel", "PRE-AUTH CANCEL", "预授权撤销", "supervisor", "nopin", True, True,
         NONE, False),
    Kind("completion", "COMPLETION", "预授权完成", "supervisor", "nopin", True, True, DEBIT,
         False),
    Kind("completion_void", "COMPLETION VOID", "预授权完成撤销", "supervisor", "nopin", True,
         True, VOID, False),
    Kind("balance", "BALANCE", "查询余额", "cashier", "pin", False, False, NONE, False),
    Kind("repayment", "REPAYMENT", "信用卡还款", "cashier", "pin", False, True, DEBIT, False),
    Kind("qr_sale", "QR SALE", "扫码支付", "cashier", "none", False, True, DEBIT, False),
    Kind("qr_refund", "QR REFUND", "扫码退款", "supervisor", "none", True, False, CREDIT, False),
    Kind("cash", "CASH", "现金", "cashier", "none", False, False, CASH, False),
)}


def role_allows(role: str, needed: str) -> bool:
    """True when an operator with `role` may do what needs `needed` (unknown roles: never)."""
    return role in ROLES and needed in ROLES and ROLES.index(role) >= ROLES.index(needed)
