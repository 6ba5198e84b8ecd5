"""Processing restrictions (EMV Book 3 10.4): application versions, usage control, dates.

Pure, any thread, no clock: `today` is passed in. Reads card data objects from a
tag -> bytes mapping and sets TVR byte 2 bits; it never decides the transaction (terminal
action analysis does). A malformed 5F24/5F25 raises ValueError("malformed tag 5F24"),
which the kernel turns into a card read error; messages never hold card values.
"""
from __future__ import annotations

from datetime import date
from typing import Mapping

from firmware.emv.tvr import Tvr

__all__ = ["TXN_TYPES", "check_restrictions", "parse_date"]

TXN_TYPES = ("goods", "services", "cash", "cashback", "inquiry")

# Application Usage Control (9F07) checks per transaction type, Book 3 Table 31:
# (byte index, domestic mask, international mask). A purchase with cashback is a goods
# purchase that also carries a cashback amount, so it needs both.
_AUC_GOODS = (0, 0x20, 0x10)
_AUC_CHECKS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "goods": (_AUC_GOODS,),
    "services": ((0, 0x08, 0x04),),
    "cash": ((0, 0x80, 0x40),),
    "cashback": (_AUC_GOODS, (1, 0x80, 0x40)),
    "inquiry": (),
}
_AUC_ATM, _AUC_NOT_ATM = 0x02, 0x01  # byte 1: valid at ATMs / at terminals other than ATMs


def check_restrictions(card: Mapping[str, bytes], *, today: date, terminal_country: bytes,
                       app_version: bytes, txn_type: str = "goods", atm: bool = False,
                       tvr: Tvr) -> None:
    """Set icc_app_versions_differ, service_not_allowed, application_not_yet_effective
    and expired_application in `tvr` as the card's data requires."""
    if txn_type not in _AUC_CHECKS:
        raise ValueError(f"unknown transaction type {txn_type!r}")
    card_version = card.get("9F08")
    if card_version is not None and card_version != app_version:
        tvr.set("icc_app_versions_differ")
    if not _usage_allowed(card, terminal_country, txn_type, atm):
        tvr.set("service_not_allowed")
    effective = card.get("5F25")
    if effective is not None and parse_date(effective, "5F25") > today:
        tvr.set("application_not_yet_effective")
    expiry = card.get("5F24")
    if expiry is not None and parse_date(expiry, "5F24") < today:
        tvr.set("expired_application")


def _usage_allowed(card: Mapping[str, bytes], terminal_country: bytes, txn_type: str,
                   atm: bool) -> bool:
    auc = card.get("9F07")
    if auc is None:
        return True
    if len(auc) != 2:
        raise ValueError("malformed tag 9F07")
    if not auc[0] & (_AUC_ATM if atm else _AUC_NOT_ATM):
        return False
    issuer_country = card.get("5F28")
    if issuer_country is None:
        return True
    domestic = issuer_country == terminal_country
    return all(auc[index] & (local if domestic else abroad)
               for index, local, abroad in _AUC_CHECKS[txn_type])


def parse_date(raw: bytes, tag: str) -> date:
    """A YYMMDD n6 date (5F24, 5F25, 9A); years 00-49 are 20xx and 50-99 are 19xx."""
    digits = raw.hex()
    if len(raw) != 3 or not digits.isdigit():
        raise ValueError(f"malformed tag {tag}")
    year, month, day = int(digits[:2]), int(digits[2:4]), int(digits[4:])
    try:
        return date(year + (2000 if year < 50 else 1900), month, day)
    except ValueError:
        raise ValueError(f"malformed tag {tag}") from None
