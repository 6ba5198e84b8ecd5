"""Offline policy (firmware/offline.py): every cap and every refusal, and their edges."""
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from firmware.config import OfflineConfig
from firmware.emv.card import ENTRY_CHIP, ENTRY_CONTACTLESS, ENTRY_FALLBACK, ENTRY_MAGSTRIPE
from firmware.offline import QueueStats, refusal

CFG = OfflineConfig(mode="prefer-online", max_amount=30_000, max_count=3, max_total=50_000,
                    max_age=86_400.0)
NOW = datetime(2026, 11, 21, 12, 0, 0)
EMPTY = QueueStats()


def decide(cfg=CFG, *, kind="sale", entry=ENTRY_CHIP, cvm="offline_pin", amount=10_000,
           stats=EMPTY, now=NOW) -> str:
    return refusal(cfg, kind=kind, entry_mode=entry, cvm=cvm, amount=amount, stats=stats, now=now)


@pytest.mark.parametrize("entry, cvm", [
    (ENTRY_CHIP, "offline_pin"), (ENTRY_CHIP, "signature"), (ENTRY_CHIP, "none"),
    (ENTRY_CONTACTLESS, "none"), (ENTRY_CONTACTLESS, "signature"),
])
def test_chip_and_contactless_without_online_pin_may_go_offline(entry, cvm):
    assert decide(entry=entry, cvm=cvm) == ""


def test_require_online_never_goes_offline():
    assert decide(replace(CFG, mode="require-online")) == "Online only"


@pytest.mark.parametrize("kind, reason", [
    ("refund", "No refund offline"), ("void", "No void offline"),
    ("preauth", "No pre-auth offline"), ("balance", "No balance offline"),
    ("qr", "No QR code offline"),
])
def test_only_sales_go_offline(kind, reason):
    assert decide(kind=kind) == reason


@pytest.mark.parametrize("entry, reason", [
    (ENTRY_MAGSTRIPE, "No swipe offline"), (ENTRY_FALLBACK, "No swipe offline"),
    ("011", "No keying offline"), ("012", "No keying offline"), ("031", "No QR code offline"),
    ("", "Entry not offline"), ("991", "Entry not offline"),
])
def test_never_a_swipe_or_a_keyed_card_offline(entry, reason):
    assert decide(entry=entry) == reason


def test_never_with_an_online_pin():
    assert decide(cvm="online_pin") == "PIN needs the host"


def test_per_transaction_cap_is_inclusive():
    assert decide(amount=30_000) == ""
    assert decide(amount=30_001) == "Over offline limit"


def test_count_cap_counts_this_one_too():
    assert decide(stats=QueueStats(advices=2, advice_total=1)) == ""
    assert decide(stats=QueueStats(advices=3, advice_total=1)) == "Offline count full"


def test_total_cap_includes_this_amount():
    assert decide(amount=10_000, stats=QueueStats(advices=1, advice_total=40_000)) == ""
    assert decide(amount=10_001, stats=QueueStats(advices=1, advice_total=40_000)) == "Offline total full"


def test_age_cap_on_the_oldest_waiting_approval():
    fresh = QueueStats(advices=1, advice_total=1, oldest_advice_at=NOW - timedelta(seconds=86_400))
    stale = replace(fresh, oldest_advice_at=NOW - timedelta(seconds=86_401))
    assert decide(stats=fresh) == ""
    assert decide(stats=stale) == "Queued too long"


def test_pending_reversals_and_alerts_do_not_use_up_the_caps():
    assert decide(stats=QueueStats(reversals=10, alerts=10)) == ""


def test_a_zero_cap_means_no_offline_at_all():
    assert decide(replace(CFG, max_amount=0), amount=1) == "Over offline limit"
    assert decide(replace(CFG, max_count=0)) == "Offline count full"


def test_every_refusal_fits_one_display_line():
    cases = [decide(replace(CFG, mode="require-online")), decide(kind="qr"),
             decide(kind="refund"), decide(entry="011"), decide(entry=""), decide(cvm="online_pin"),
             decide(amount=99_999), decide(stats=QueueStats(advices=3)),
             decide(stats=QueueStats(advices=1, advice_total=49_000)),
             decide(stats=QueueStats(advices=1, oldest_advice_at=datetime(2000, 1, 1)))]
    assert all(cases) and all(len(reason) <= 20 for reason in cases)
    assert len(set(cases)) == len(cases)
