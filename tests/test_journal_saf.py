"""Journal, schema 3: offline approvals, advices, expiry alerts, queue stats, start-up recovery."""
import sqlite3
from datetime import datetime, timedelta

import pytest

from firmware.acquirer import messages
from firmware.journal import SCHEMA_VERSION, Journal, JournalError
from tests.test_journal import PAN, TRACK2, Clock, other_connection, record_sale, sale_request

# card, vault, db_path, journal fixtures come from test_journal
from tests.test_journal import card, db_path, journal, vault  # noqa: F401


def advice_for(stan, amount=12345, code="00"):
    request = sale_request(stan, amount)
    request["60"] = f"22{1:06d}000"
    return messages.advice_request(request, code=code, icc_data=None)


def offline_sale(journal, card, amount=12345, code="Y1"):
    stan = journal.next_stan()
    return journal.record_offline_approval(
        kind="sale", stan=stan, batch=journal.batch_no(), amount=amount, currency=156, card=card,
        advice=advice_for(stan, amount, code), code=code), stan


def test_schema_is_3_or_later(journal):
    assert SCHEMA_VERSION >= 3


def test_offline_approval_is_approved_with_a_pending_advice(journal, card):
    txn_id, stan = offline_sale(journal, card, 5000)
    rec = journal.get(txn_id)
    assert (rec.status, rec.offline_code, rec.advice_status, rec.response_code) == ("APPROVED", "Y1", "PENDING", "Y1")
    [adv] = journal.pending_advices()
    assert (adv.txn_id, adv.stan, adv.amount, adv.code, adv.attempts) == (txn_id, stan, 5000, "Y1", 0)
    assert adv.request["t"] == "0220" and adv.request["2"] == PAN
    assert "35" not in adv.request and "52" not in adv.request


def test_advice_card_data_is_sealed_on_disk(journal, card, db_path):
    offline_sale(journal, card)
    raw = db_path.read_bytes() + db_path.with_name(db_path.name + "-wal").read_bytes()
    assert PAN.encode() not in raw and TRACK2.encode() not in raw


def test_failed_send_becomes_offline_in_the_same_row(journal, card):
    txn_id, stan = record_sale(journal, card, 4000)
    journal.record_offline(txn_id, card=card, advice=advice_for(stan, 4000), code="00")
    rec = journal.get(txn_id)
    assert (rec.status, rec.reversal_status, rec.advice_status, rec.offline_code) == (
        "APPROVED", "CANCELLED", "PENDING", "00")
    assert journal.pending_reversals() == []
    assert journal.pending_advices()[0].request["t"] == "0220"


def test_offline_needs_a_sending_row(journal, card):
    txn_id, stan = record_sale(journal, card)
    journal.record_response(txn_id, response_code="00", approved=True, rrn="1", auth_code="2")
    with pytest.raises(JournalError, match="APPROVED"):
        journal.record_offline(txn_id, card=card, advice=advice_for(stan), code="00")


def test_advices_come_oldest_first_and_limit(journal, card):
    ids = [offline_sale(journal, card, 100 + n)[0] for n in range(5)]
    assert [a.txn_id for a in journal.pending_advices()] == ids
    assert [a.txn_id for a in journal.pending_advices(limit=2)] == ids[:2]


def test_attempts_are_committed_for_a_batch(journal, card, db_path):
    ids = [offline_sale(journal, card)[0] for _ in range(3)]
    journal.record_advice_attempts(ids[:2])
    with other_connection(db_path) as db:
        attempts = [r[0] for r in db.execute("SELECT attempts FROM advice ORDER BY txn_id")]
    assert attempts == [1, 1, 0]


def test_a_claim_reads_the_next_batch_after_a_txn_and_commits_its_attempts(journal, card, db_path):
    ids = [offline_sale(journal, card, 100 + n)[0] for n in range(5)]
    first = journal.claim_advices(2)
    assert [(a.txn_id, a.attempts) for a in first] == [(ids[0], 0), (ids[1], 0)]  # counts before
    second = journal.claim_advices(2, after=ids[1])  # the first batch is still pending
    assert [a.txn_id for a in second] == ids[2:4] and second[0].request["t"] == "0220"
    with other_connection(db_path) as db:  # committed before they are returned
        attempts = [r[0] for r in db.execute("SELECT attempts FROM advice ORDER BY txn_id")]
    assert attempts == [1, 1, 1, 1, 0]
    assert [(a.txn_id, a.attempts) for a in journal.claim_advices(10)] == [
        (ids[0], 1), (ids[1], 1), (ids[2], 1), (ids[3], 1), (ids[4], 0)]
    assert journal.claim_advices(10, after=ids[4]) == []


def test_results_for_a_batch_are_all_or_nothing(journal, card, db_path):
    a, _ = offline_sale(journal, card)
    b, _ = offline_sale(journal, card)
    for bad in ([(a, "00", True), (a, "00", True)], [(a, "00", True), (b + 1, "00", True)]):
        with pytest.raises(JournalError, match="no pending advice"):
            journal.record_advice_results(bad)
    with other_connection(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM sealed_request").fetchone()[0] == 2
        assert [r[0] for r in db.execute("SELECT status FROM advice")] == ["PENDING"] * 2
    journal.record_advice_results([(b, "05", False), (a, "00", True)])
    assert (journal.get(a).advice_status, journal.get(b).advice_status) == ("ACKED", "DECLINED")


def test_results_ack_and_decline_delete_the_sealed_data(journal, card, db_path):
    a, _ = offline_sale(journal, card)
    b, _ = offline_sale(journal, card)
    journal.record_advice_results([(a, "00", True), (b, "51", False)])
    assert journal.get(a).advice_status == "ACKED"
    assert journal.get(b).advice_status == "DECLINED"
    assert journal.get(b).status == "APPROVED"  # what happened at the counter stays true
    with other_connection(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM sealed_request").fetchone()[0] == 0
    [alert] = journal.alerts()
    assert (alert.what, alert.txn_id, alert.response_code) == ("advice declined", b, "51")
    with pytest.raises(JournalError, match="no pending advice"):
        journal.record_advice_results([(a, "00", True)])


def test_queue_stats_count_pending_items(journal, card):
    assert journal.queue_stats().queued == 0
    offline_sale(journal, card, 1000)
    b, _ = offline_sale(journal, card, 2000)
    txn_id, _ = record_sale(journal, card)
    journal.record_no_response(txn_id, reason_code="98", detail="no response")
    stats = journal.queue_stats()
    assert (stats.reversals, stats.advices, stats.advice_total, stats.queued) == (1, 2, 3000, 3)
    assert isinstance(stats.oldest_advice_at, datetime)
    journal.record_advice_results([(b, "51", False)])
    stats = journal.queue_stats()
    assert (stats.advices, stats.advice_total, stats.alerts) == (1, 1000, 1)


def test_expiry_raises_alerts_and_keeps_the_rows(journal, card):
    a, _ = offline_sale(journal, card)
    txn_id, _ = record_sale(journal, card)
    journal.record_no_response(txn_id, reason_code="98", detail="no response")
    late, _ = offline_sale(journal, card)
    cutoff = datetime.fromisoformat(journal.get(late).created_at)  # older than `late` expire
    alerts = journal.expire(cutoff)
    assert {(x.what, x.txn_id) for x in alerts} == {("advice expired", a), ("reversal expired", txn_id)}
    assert [x.txn_id for x in journal.pending_advices()] == [late]
    assert journal.pending_reversals() == []
    assert journal.get(a).advice_status == "EXPIRED" and journal.get(txn_id).reversal_status == "EXPIRED"
    assert journal.queue_stats().alerts == 2
    assert journal.expire(cutoff) == []  # nothing twice


def test_requeue_then_acknowledge(journal, card, db_path):
    a, _ = offline_sale(journal, card)
    journal.expire(datetime(2100, 1, 1))
    assert journal.requeue_expired() == 1
    assert [x.txn_id for x in journal.pending_advices()] == [a]
    journal.expire(datetime(2100, 1, 1))
    assert journal.acknowledge_alerts() == 1
    assert journal.alerts() == [] and journal.requeue_expired() == 0
    with other_connection(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM sealed_request").fetchone()[0] == 0


def test_recover_settles_what_was_in_flight(journal, card):
    sending, _ = record_sale(journal, card)
    not_reversible, _ = record_sale(journal, card, reversible=False)
    unfinished, _ = record_sale(journal, card)
    journal.record_response(unfinished, response_code="00", approved=True, rrn="1", auth_code="2",
                            card_pending=True)
    done, _ = record_sale(journal, card)
    journal.record_response(done, response_code="00", approved=True, rrn="3", auth_code="4")
    found = journal.recover()
    assert found.unknown == (sending, not_reversible) and found.card_unfinished == (unfinished,)
    assert journal.get(sending).status == "UNKNOWN"
    assert journal.get(unfinished).status == "DECLINED"
    assert journal.get(done).status == "APPROVED"
    assert [r.txn_id for r in journal.pending_reversals()] == [sending, unfinished]
    assert {r.reason_code for r in journal.pending_reversals()} == {"06"}
    assert not journal.recover()  # idempotent


def test_unprinted_lists_approved_rows_missing_a_copy(journal, card):
    a, _ = record_sale(journal, card)
    journal.record_response(a, response_code="00", approved=True, rrn="1", auth_code="2")
    b, _ = offline_sale(journal, card)
    declined, _ = record_sale(journal, card)
    journal.record_response(declined, response_code="05", approved=False, rrn="1", auth_code=None)
    journal.mark_printed(a, "merchant")
    assert [r.id for r in journal.unprinted()] == [a, b]
    assert [r.id for r in journal.unprinted(("merchant",))] == [b]
    journal.mark_printed(a, "customer")
    assert [r.id for r in journal.unprinted()] == [b]
    with pytest.raises(ValueError):
        journal.unprinted(("shop",))


def test_a_schema_2_journal_migrates_and_keeps_its_rows(tmp_path, vault, card):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    from firmware.journal import MIGRATIONS
    for version, steps in enumerate(MIGRATIONS[:2], start=1):
        for statement in steps:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {version}")
    db.close()
    j = Journal(path, vault, now=Clock())
    try:
        txn_id, _ = offline_sale(j, card)
        assert j.get(txn_id).advice_status == "PENDING"
    finally:
        j.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_expire_uses_the_cutoff_not_the_wall_clock(journal, card):
    offline_sale(journal, card)
    assert journal.expire(datetime(2000, 1, 1)) == []
    assert len(journal.expire(datetime.now() + timedelta(days=3650))) == 1
