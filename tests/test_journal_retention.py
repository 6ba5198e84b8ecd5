"""Journal retention ([journal] keep_days): settling a batch deletes the batches settled more
than keep_days ago (0: every settled batch but the one just settled), never what still has
to reach the acquirer or the operator; the file stays bounded over many settled days, and
with keep_days 0 over many settlements in one day. Real SQLite files, a clock the test moves."""
from datetime import datetime, timedelta

import pytest

from firmware.config import ConfigError, load_config
from firmware.emv.card import ENTRY_CHIP, CardData
from firmware.journal import Journal, TxnExtra
from firmware.vault import Vault
from conftest import REPO
from test_journal import ARQC, ICC_DATA, PAN, TRACK2, record_sale, sale_request

KEEP = 90  # days


class Clock:
    def __init__(self):
        self.t = datetime(2026, 1, 5, 9, 0, 0)

    def __call__(self):
        self.t += timedelta(seconds=1)
        return self.t

    def days(self, n: int) -> None:
        self.t += timedelta(days=n)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def vault(tmp_path):
    return Vault.open(tmp_path / "vault.key")


@pytest.fixture
def card():
    return CardData(pan=PAN, expiry="3012", pan_seq="01", track2=TRACK2, aid="A000000333010101",
                    app_label="UnionPay Debit", icc_data=ICC_DATA, entry_mode=ENTRY_CHIP, cryptogram=ARQC)


@pytest.fixture
def keep():
    return KEEP  # a test parametrizes `keep` to run with another keep_days


@pytest.fixture
def journal(tmp_path, vault, clock, keep):
    j = Journal(tmp_path / "journal.db", vault, now=clock, keep_days=keep)
    yield j
    j.close()


def approved_sale(journal, card, amount=12345) -> int:
    txn_id, _ = record_sale(journal, card, amount)
    journal.record_response(txn_id, response_code="00", approved=True, rrn="000000000001",
                            auth_code="123456")
    return txn_id


def settle(journal) -> int:
    batch = journal.begin_settlement()["batch"]
    journal.record_settlement_result(batch, status="SETTLED", result="balanced", detail="balanced")
    return batch


def ids(journal) -> set[int]:
    return {r.id for r in journal.page(0, 10_000)}


def test_batches_settled_over_keep_days_ago_are_deleted_at_the_next_settlement(journal, clock, card):
    old = {approved_sale(journal, card) for _ in range(3)}
    settle(journal)
    clock.days(KEEP - 1)
    recent = {approved_sale(journal, card)}
    settle(journal)
    assert ids(journal) == old | recent  # nothing is old enough yet
    clock.days(2)
    newest = {approved_sale(journal, card)}
    settle(journal)
    assert ids(journal) == recent | newest
    assert journal.settled(1)  # the settlement row (one a day) stays for the reports


@pytest.mark.parametrize("keep", [KEEP, 0])
def test_nothing_unsent_unsettled_or_still_named_is_deleted(journal, clock, card):
    unknown, _ = record_sale(journal, card)
    journal.record_no_response(unknown, reason_code="98", detail="timeout")  # reversal pending
    stan = journal.next_stan()
    offline = journal.record_offline_approval(
        kind="sale", stan=stan, batch=journal.batch_no(), amount=500, currency=156, card=card,
        advice={**sale_request(stan, 500), "t": "0220"}, code="Y1")  # advice pending
    original = approved_sale(journal, card)
    gone = approved_sale(journal, card)
    settle(journal)
    late = approved_sale(journal, card)  # batch 2: settled only today, 91 days later
    clock.days(KEEP + 1)
    void_stan = journal.next_stan()
    void = journal.record_request(kind="void", stan=void_stan, batch=journal.batch_no(), amount=12345,
                                  currency=156, card=card, request=sale_request(void_stan),
                                  reversible=True, extra=TxnExtra(original_id=original))
    journal.record_response(void, response_code="00", approved=True, rrn="000000000002",
                            auth_code="654321")
    settle(journal)
    kept = ids(journal)
    assert gone not in kept
    assert kept == {unknown, offline, original, late, void}
    assert [r.txn_id for r in journal.pending_reversals()] == [unknown]
    assert [a.txn_id for a in journal.pending_advices()] == [offline]


@pytest.mark.parametrize("keep", [0])
def test_keep_days_0_keeps_the_batch_just_settled_and_the_open_one(journal, card):
    first = {approved_sale(journal, card) for _ in range(2)}
    assert settle(journal) == 1
    assert ids(journal) == first  # nothing settled before it
    second = {approved_sale(journal, card) for _ in range(2)}
    assert settle(journal) == 2
    open_batch = {approved_sale(journal, card)}
    assert ids(journal) == second | open_batch  # batch 1 deleted the same day
    assert [r.id for r in journal.batch_records(2)] == sorted(second)  # its report can be redone
    settle(journal)
    assert ids(journal) == open_batch
    assert journal.settled(1) and journal.settled(2)  # the settlement rows stay


@pytest.mark.parametrize("keep", [1])
def test_keep_days_1_keeps_a_batch_settled_less_than_a_day_ago(journal, clock, card):
    first = {approved_sale(journal, card)}
    settle(journal)
    clock.days(0.5)
    second = {approved_sale(journal, card)}
    settle(journal)
    assert ids(journal) == first | second  # unlike keep_days 0
    clock.days(0.55)
    third = {approved_sale(journal, card)}
    settle(journal)
    assert ids(journal) == second | third  # batch 1 settled 25 h ago, batch 2 13 h ago


def test_keep_days_0_is_a_setting_below_0_is_not():
    sim = REPO / "config" / "sim.toml"
    assert load_config(sim, overrides={"journal": {"keep_days": 0}}).journal.keep_days == 0
    with pytest.raises(ConfigError, match="must be 0..3650, got -1"):
        load_config(sim, overrides={"journal": {"keep_days": -1}})


def test_without_keep_days_nothing_is_deleted(tmp_path, vault, clock, card):
    j = Journal(tmp_path / "j.db", vault, now=clock)
    try:
        first = approved_sale(j, card)
        settle(j)
        clock.days(10 * KEEP)
        approved_sale(j, card)
        settle(j)
        assert first in ids(j)
    finally:
        j.close()


def settled_sizes(j: Journal, path, card, cycles: int, between=lambda: None) -> list[int]:
    """`cycles` times: 40 approved sales, settle, checkpoint (the main file holds
    everything), between(); the file's size after each cycle."""
    sizes = []
    for _ in range(cycles):
        for _ in range(40):
            approved_sale(j, card)
        settle(j)
        j.purge_card_data()
        between()
        sizes.append(path.stat().st_size)
    return sizes


def test_the_file_stays_bounded_over_many_settled_days(tmp_path, vault, clock, card):
    j = Journal(tmp_path / "j.db", vault, now=clock, keep_days=3)
    try:
        sizes = settled_sizes(j, tmp_path / "j.db", card, 24, between=lambda: clock.days(1))
        assert j.count() <= 5 * 40
    finally:
        j.close()
    assert sizes[-1] == sizes[11], sizes  # freed pages are reused: no growth after day 12


def test_keep_days_0_keeps_the_file_bounded_over_many_settlements_in_one_day(tmp_path, vault, clock, card):
    j = Journal(tmp_path / "j.db", vault, now=clock, keep_days=0)
    try:
        sizes = settled_sizes(j, tmp_path / "j.db", card, 20)
        assert j.count() == 40
    finally:
        j.close()
    assert sizes[-1] == sizes[9], sizes  # two batches at most: freed pages are reused
