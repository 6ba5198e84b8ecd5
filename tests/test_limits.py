"""Limits and velocity rules: a table per rule and action, the boundaries (exactly at a limit
is allowed), which history rows count, and the rows a real journal gives back."""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta

import pytest

from firmware.config import RiskConfig
from firmware.emv.card import ENTRY_CONTACTLESS, CardData
from firmware.journal import Journal
from firmware.limits import OK, Verdict, check, window_bounds, window_start
from firmware.vault import Vault

NOW = datetime(2024, 5, 1, 15, 0, 0)
NONE = RiskConfig(**{f.name: 0 for f in fields(RiskConfig)} | {
    "velocity_window": 600.0, "velocity_action": "confirm"})


@dataclass(frozen=True)
class Row:
    """What check() reads of a journal TxnRecord."""

    kind: str = "sale"
    amount: int = 100
    entry_mode: str | None = "051"
    wallet: str | None = None
    status: str = "APPROVED"
    created_at: str = "2024-05-01T10:00:00"


def ago(minutes: float) -> str:
    return (NOW - timedelta(minutes=minutes)).isoformat(timespec="seconds")


def verdict(risk: RiskConfig, amount: int, *, kind="sale", entry_mode="051", wallet="",
            history=(), now=NOW) -> Verdict:
    return check(risk, kind=kind, amount=amount, entry_mode=entry_mode, wallet=wallet,
                 history=list(history), now=now)


@pytest.mark.parametrize("key, entry_mode, wallet, label", [
    ("max_chip", "051", "", "CHIP"),
    ("max_contactless", "071", "", "CONTACTLESS"),
    ("max_swipe", "021", "", "SWIPE"),
    ("max_swipe", "801", "", "SWIPE"),
    ("max_manual", "011", "", "MANUAL"),
    ("max_qr", "", "alipay", "QR"),
])
def test_per_transaction_max_by_entry_mode(key, entry_mode, wallet, label):
    risk = replace(NONE, **{key: 50_000})
    assert verdict(risk, 50_000, entry_mode=entry_mode, wallet=wallet) == OK
    assert verdict(risk, 50_001, entry_mode=entry_mode, wallet=wallet) == Verdict(
        "refuse", f"Over {label} limit 500.00")


def test_a_limit_for_another_entry_mode_does_not_apply():
    risk = replace(NONE, max_contactless=1_000, daily_contactless=1_000)
    assert verdict(risk, 999_999, entry_mode="051") == OK
    assert verdict(risk, 999_999, entry_mode="", wallet="wechat") == OK


@pytest.mark.parametrize("kind", ["void", "refund", "preauth", "preauth_cancel",
                                  "completion_void", "balance", "qr_refund"])
def test_kinds_that_move_no_debit_are_never_limited(kind):
    risk = replace(NONE, max_chip=1, daily_chip=1, velocity_count=1, velocity_total=1)
    busy = [Row(amount=1, created_at=ago(1))] * 5
    assert verdict(risk, 10_000, kind=kind, history=busy) == OK


@pytest.mark.parametrize("kind", ["sale", "completion", "repayment"])
def test_debit_kinds_are_limited(kind):
    assert verdict(replace(NONE, max_chip=100), 101, kind=kind).action == "refuse"


def test_daily_total_counts_approved_debits_of_the_mode_since_midnight():
    risk = replace(NONE, daily_chip=10_000)
    history = [
        Row(amount=3_000, created_at="2024-05-01T08:00:00"),
        Row(amount=2_000, created_at="2024-05-01T00:00:00"),  # midnight is today
        Row(kind="completion", amount=1_000, created_at="2024-05-01T09:00:00"),
        Row(amount=9_000, created_at="2024-04-30T23:59:59"),  # yesterday
        Row(amount=9_000, status="DECLINED"),
        Row(amount=9_000, status="UNKNOWN"),
        Row(kind="refund", amount=9_000),
        Row(kind="preauth", amount=9_000),
        Row(amount=9_000, entry_mode="071"),
        Row(amount=9_000, entry_mode=None, wallet="wechat"),
    ]
    assert verdict(risk, 4_000, history=history) == OK  # 6,000 + 4,000: exactly the limit
    assert verdict(risk, 4_001, history=history) == Verdict(
        "refuse", "Over CHIP daily limit 100.00")


def test_daily_qr_total_and_per_wallet_total():
    risk = replace(NONE, daily_qr=10_000, daily_wechat=5_000)
    history = [Row(entry_mode=None, wallet="wechat", amount=4_000),
               Row(entry_mode=None, wallet="alipay", amount=4_000)]
    assert verdict(risk, 1_000, entry_mode="", wallet="wechat", history=history) == OK
    assert verdict(risk, 1_001, entry_mode="", wallet="wechat", history=history) == Verdict(
        "refuse", "Over WECHAT daily limit 50.00")
    assert verdict(risk, 2_000, entry_mode="", wallet="alipay", history=history) == OK
    assert verdict(risk, 2_001, entry_mode="", wallet="alipay", history=history) == Verdict(
        "refuse", "Over QR daily limit 100.00")


@pytest.mark.parametrize("action", ["confirm", "refuse"])
def test_velocity_count_of_small_payments(action):
    risk = replace(NONE, velocity_count=3, velocity_small=1_000, velocity_action=action)
    history = [Row(amount=1_000, created_at=ago(9)),
               Row(amount=50, entry_mode="071", created_at=ago(5)),
               Row(amount=1_001, created_at=ago(4)),  # not small
               Row(amount=10, created_at=ago(10.5)),  # before the window
               Row(amount=10, status="DECLINED", created_at=ago(1))]
    assert verdict(risk, 500, history=history) == OK  # 3 small counting this one: not more
    more = history + [Row(amount=10, entry_mode=None, wallet="alipay", created_at=ago(10))]
    assert verdict(risk, 500, history=more) == Verdict(action, "4 sales in 10 min")
    assert verdict(risk, 1_001, history=more) == OK  # this one is not small


@pytest.mark.parametrize("action", ["confirm", "refuse"])
def test_velocity_total_in_the_window(action):
    risk = replace(NONE, velocity_total=300_000, velocity_window=900.0, velocity_action=action)
    history = [Row(amount=100_000, created_at=ago(14)), Row(amount=150_000, created_at=ago(1)),
               Row(amount=100_000, created_at=ago(16))]
    assert verdict(risk, 50_000, history=history) == OK
    assert verdict(risk, 50_001, history=history) == Verdict(action, "Total 3000.01 in 15 min")


def test_window_in_seconds_is_named_in_seconds():
    risk = replace(NONE, velocity_total=100, velocity_window=90.0)
    assert verdict(risk, 101).reason == "Total 1.01 in 90 s"


def test_first_rule_that_hits_wins():
    history = [Row(amount=900, created_at=ago(1))] * 3
    risk = replace(NONE, max_chip=1_000, daily_chip=2_000, velocity_count=3, velocity_small=900,
                   velocity_total=1)
    assert verdict(risk, 1_001, history=history).reason == "Over CHIP limit 10.00"
    assert verdict(risk, 1_000, history=history).reason == "Over CHIP daily limit 20.00"
    assert verdict(replace(risk, daily_chip=0), 1_000, history=history).reason == (
        "Total 37.00 in 10 min")
    assert verdict(replace(risk, daily_chip=0), 900, history=history).reason == (
        "4 sales in 10 min")


def test_window_start_is_midnight_or_the_velocity_window():
    assert window_start(NONE, NOW) == "2024-05-01T00:00:00"
    assert window_start(NONE, datetime(2024, 5, 1, 0, 5, 30)) == "2024-04-30T23:55:30"


def test_refusals_are_logged_and_ok_is_not(caplog):
    caplog.set_level(logging.INFO, logger="kpos.limits")
    verdict(replace(NONE, max_contactless=100), 100, entry_mode="071")
    assert caplog.records == []
    verdict(replace(NONE, max_contactless=100), 101, entry_mode="071")
    assert [r.getMessage() for r in caplog.records] == [
        "risk refuse: sale contactless 1.01: Over CONTACTLESS limit 1.00"]


@pytest.mark.parametrize("args", [
    {"kind": "gift"}, {"entry_mode": "999"}, {"entry_mode": ""},
    {"entry_mode": "", "wallet": "paypal"},
])
def test_unknown_kind_entry_mode_or_wallet_is_a_value_error(args):
    with pytest.raises(ValueError):
        verdict(NONE, 100, **args)


def test_rows_from_a_real_journal(tmp_path):
    clock = [datetime(2024, 5, 1, 14, 0, 0)]
    journal = Journal(tmp_path / "journal.db", Vault.open(tmp_path / "vault.key"),
                      now=lambda: clock[0])
    card = CardData(pan="6226090000000014", expiry="3012", pan_seq="01",
                    track2="6226090000000014=30122010000000000", aid="A000000333010101",
                    app_label="UnionPay Debit", icc_data=b"", entry_mode=ENTRY_CONTACTLESS)
    for amount, approved in ((3_000, True), (3_000, True), (9_000, False)):
        stan = journal.next_stan()
        txn = journal.record_request(kind="sale", stan=stan, batch=1, amount=amount,
                                     currency=156, card=card, reversible=True,
                                     request={"t": "0200", "11": f"{stan:06d}", "22": "071"})
        journal.record_response(txn, response_code="00" if approved else "51",
                                approved=approved, rrn=None, auth_code=None)
    risk = replace(NONE, daily_contactless=10_000)
    rows = journal.since(window_start(risk, NOW))
    journal.close()
    assert check(risk, kind="sale", amount=4_000, entry_mode="071", wallet="", history=rows,
                 now=NOW) == OK
    assert check(risk, kind="sale", amount=4_001, entry_mode="071", wallet="", history=rows,
                 now=NOW).action == "refuse"


@pytest.mark.parametrize("now", [NOW, datetime(2024, 5, 1, 0, 5, 0)], ids=["afternoon", "window-over-midnight"])
def test_risk_history_decides_as_the_days_rows_one_by_one(tmp_path, now):
    """Journal.risk_history (the day's and the velocity window's rows summed per entry mode,
    inside / before the window and the day) gives every verdict that all of the day's rows
    give, in a handful of rows however many sales the window holds."""
    clock = [now]
    journal = Journal(tmp_path / "journal.db", Vault.open(tmp_path / "vault.key"),
                      now=lambda: clock[0])
    card = CardData(pan="6226090000000014", expiry="3012", pan_seq="01",
                    track2="6226090000000014=30122010000000000", aid="A000000333010101",
                    app_label="UnionPay Debit", icc_data=b"", entry_mode=ENTRY_CONTACTLESS)
    # before midnight (or, near midnight, inside the window too), earlier today, in the window
    for minutes in (16 * 60, 300, 120, 9, 8, 7, 6, 5, 4, 3, 2, 1):
        clock[0] = now - timedelta(minutes=minutes)
        for mode, amount, approved in (("071", 3_000, True), ("051", 2_000, True), ("051", 9_000, False)):
            stan = journal.next_stan()
            txn = journal.record_request(kind="sale", stan=stan, batch=1, amount=amount,
                                         currency=156, card=replace(card, entry_mode=mode),
                                         reversible=True,
                                         request={"t": "0200", "11": f"{stan:06d}", "22": mode})
            journal.record_response(txn, response_code="00" if approved else "51",
                                    approved=approved, rrn=None, auth_code=None)
    # afternoon: today 11 x 3,000 contactless and 11 x 2,000 chip, 9 of each in the window
    risk = replace(NONE, daily_contactless=37_000, daily_chip=26_000, velocity_count=9,
                   velocity_small=2_500, velocity_total=48_000)
    every = journal.since(window_start(risk, now))
    summed = journal.risk_history(*window_bounds(risk, now))
    plan = journal._db.execute("EXPLAIN QUERY PLAN SELECT 1 FROM txn WHERE created_at >= ?",
                               ("x",)).fetchall()
    journal.close()
    assert len(every) >= 20 and len(summed) <= 6  # 2 entry modes x (window, day, before)
    assert "txn_by_created" in " ".join(str(tuple(row)) for row in plan)
    verdicts = set()
    for mode in ("051", "071"):
        for amount in (100, 1_000, 2_000, 2_600, 5_000):
            want = verdict(risk, amount, entry_mode=mode, history=every, now=now)
            got = verdict(risk, amount, entry_mode=mode, history=summed, now=now)
            assert got == want, (mode, amount)
            verdicts.add(want)
    assert len({v.action for v in verdicts}) >= 2
    if now == NOW:
        assert len({v.action for v in verdicts}) == 3  # ok, confirm and refuse all seen
