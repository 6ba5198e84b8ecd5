"""Processing restrictions (firmware.emv.restrictions): versions, usage control, dates."""
from datetime import date

import pytest

from firmware.emv.restrictions import check_restrictions, parse_date
from firmware.emv.tvr import Tvr

TODAY = date(2026, 5, 1)
CHINA, USA = bytes.fromhex("0156"), bytes.fromhex("0840")
VERSION = bytes.fromhex("0030")


def restrictions(card, **kwargs) -> list[str]:
    tvr = Tvr()
    args = dict(today=TODAY, terminal_country=CHINA, app_version=VERSION, tvr=tvr)
    check_restrictions(card, **{**args, **kwargs})
    return tvr.names()


def test_nothing_on_the_card_sets_nothing():
    assert restrictions({}) == []


@pytest.mark.parametrize("card_version, expected", [
    (None, []), ("0030", []), ("0020", ["icc_app_versions_differ"]),
    ("003000", ["icc_app_versions_differ"]),
])
def test_application_versions(card_version, expected):
    card = {} if card_version is None else {"9F08": bytes.fromhex(card_version)}
    assert restrictions(card) == expected


# (txn_type, atm, AUC, issuer country, allowed)
AUC_TABLE = [
    # goods: domestic 0x20, international 0x10, plus non-ATM 0x01
    ("goods", False, "2100", CHINA, True),
    ("goods", False, "1100", CHINA, False),
    ("goods", False, "1100", USA, True),
    ("goods", False, "2100", USA, False),
    ("goods", False, "2000", CHINA, False),   # not valid at terminals other than ATMs
    # services: 0x08 / 0x04
    ("services", False, "0900", CHINA, True),
    ("services", False, "0500", CHINA, False),
    ("services", False, "0500", USA, True),
    ("services", False, "2100", CHINA, False),  # goods bit does not allow services
    # cash: 0x80 / 0x40, at an ATM 0x02
    ("cash", True, "8200", CHINA, True),
    ("cash", True, "8100", CHINA, False),     # cash allowed but not at ATMs
    ("cash", True, "4200", CHINA, False),
    ("cash", True, "4200", USA, True),
    ("cash", False, "8100", CHINA, True),     # manual cash at a bank counter
    # cashback: a goods purchase plus byte 2 0x80 / 0x40
    ("cashback", False, "2180", CHINA, True),
    ("cashback", False, "2140", CHINA, False),
    ("cashback", False, "1140", USA, True),
    ("cashback", False, "1180", USA, False),
    ("cashback", False, "0180", CHINA, False),  # cashback without goods
    # inquiry: only where the card may be used
    ("inquiry", True, "0200", USA, True),
    ("inquiry", True, "0100", CHINA, False),
    ("inquiry", False, "0100", USA, True),
    ("inquiry", False, "FE00", CHINA, False),
]


@pytest.mark.parametrize("txn_type, atm, auc, country, allowed", AUC_TABLE)
def test_application_usage_control(txn_type, atm, auc, country, allowed):
    card = {"9F07": bytes.fromhex(auc), "5F28": country}
    names = restrictions(card, txn_type=txn_type, atm=atm)
    assert names == ([] if allowed else ["service_not_allowed"])


@pytest.mark.parametrize("auc, atm, allowed", [
    ("0100", False, True), ("0200", False, False), ("0200", True, True), ("0100", True, False),
])
def test_without_issuer_country_only_the_terminal_kind_is_checked(auc, atm, allowed):
    names = restrictions({"9F07": bytes.fromhex(auc)}, txn_type="cash", atm=atm)
    assert names == ([] if allowed else ["service_not_allowed"])


def test_issuer_country_without_auc_is_not_checked():
    assert restrictions({"5F28": USA}) == []


def test_malformed_auc_and_unknown_transaction_type():
    with pytest.raises(ValueError, match="9F07"):
        restrictions({"9F07": b"\x21"})
    with pytest.raises(ValueError, match="refund"):
        restrictions({}, txn_type="refund")


@pytest.mark.parametrize("effective, expiry, expected", [
    ("260501", "261231", []),                              # effective today
    ("260502", "261231", ["application_not_yet_effective"]),
    ("200101", "260501", []),                              # expires today: still valid
    ("200101", "260430", ["expired_application"]),
    ("270101", "250101", ["expired_application", "application_not_yet_effective"]),
    ("491231", "491231", ["application_not_yet_effective"]),  # 2049
    ("500101", "991231", ["expired_application"]),            # 1950 .. 1999
])
def test_dates(effective, expiry, expected):
    card = {"5F25": bytes.fromhex(effective), "5F24": bytes.fromhex(expiry)}
    assert sorted(restrictions(card)) == sorted(expected)


@pytest.mark.parametrize("tag, value", [
    ("5F24", "2612"), ("5F24", "26123100"), ("5F24", "261331"), ("5F24", "260230"),
    ("5F24", "2612AA"), ("5F25", "260000"), ("5F25", "2F0101"),
])
def test_malformed_date_names_the_tag(tag, value):
    with pytest.raises(ValueError, match=f"^malformed tag {tag}$"):
        restrictions({tag: bytes.fromhex(value)})


def test_parse_date_century_window():
    assert parse_date(bytes.fromhex("000229"), "9A") == date(2000, 2, 29)
    assert parse_date(bytes.fromhex("991231"), "9A") == date(1999, 12, 31)
