"""Journal: real SQLite files; persist-before-send, outcome transitions, counters, integrity, card data."""
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from firmware.emv.card import ENTRY_CHIP, CardData
from firmware.journal import SCHEMA_VERSION, Journal, JournalCorrupt, JournalError
from firmware.vault import Vault

PAN = "6226090000000014"
TRACK2 = "6226090000000014=30122010000000000"
PIN_BLOCK = bytes.fromhex("041234FFFFFFFFFF")
ARQC = "8A1B2C3D4E5F6071"
# Field 55 with the PAN (5A) and track 2 equivalent (57) in BCD, as a chip would give them.
ICC_DATA = (
    bytes.fromhex("5A08") + bytes.fromhex(PAN)
    + bytes.fromhex("5711") + bytes.fromhex(TRACK2.replace("=", "D"))
    + bytes.fromhex("9F2608") + bytes.fromhex(ARQC)
)
TID = "10000001"


class Clock:
    def __init__(self):
        self.t = datetime(2026, 3, 1, 9, 30, 0)

    def __call__(self):
        self.t += timedelta(seconds=1)
        return self.t


@pytest.fixture
def card():
    return CardData(pan=PAN, expiry="3012", pan_seq="01", track2=TRACK2, aid="A000000333010101",
                    app_label="UnionPay Debit", icc_data=ICC_DATA, entry_mode=ENTRY_CHIP, cryptogram=ARQC)


@pytest.fixture
def vault(tmp_path):
    return Vault.open(tmp_path / "vault.key")


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "journal.db"


@pytest.fixture
def journal(db_path, vault):
    j = Journal(db_path, vault, now=Clock())
    yield j
    j.close()


def sale_request(stan, amount=12345):
    return {"t": "0200", "2": PAN, "3": "000000", "4": f"{amount:012d}", "11": f"{stan:06d}", "14": "3012",
            "22": ENTRY_CHIP, "25": "00", "35": TRACK2, "41": TID, "42": "123456789012345", "49": "156",
            "52": PIN_BLOCK, "55": ICC_DATA}


def record_sale(journal, card, amount=12345, reversible=True):
    stan = journal.next_stan()
    txn_id = journal.record_request(kind="sale", stan=stan, batch=journal.batch_no(), amount=amount, currency=156,
                                    card=card, request=sale_request(stan, amount), reversible=reversible)
    return txn_id, stan


def other_connection(db_path):
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row
    return db


def expected_stored(stan, amount=12345):
    request = sale_request(stan, amount)
    del request["35"], request["52"]
    return request


# -- opening and pragmas ----------------------------------------------------------------------


def test_wal_and_synchronous_full_in_force(journal):
    db = journal._db  # the live connection: synchronous is per connection
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_reopen_keeps_schema_and_rows(db_path, vault, card, journal):
    txn_id, _ = record_sale(journal, card)
    journal.close()
    again = Journal(db_path, vault)
    try:
        assert again.get(txn_id).status == "SENDING"
        assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        again.close()


def test_newer_schema_still_opens(db_path, vault, journal):
    journal._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    journal.close()
    again = Journal(db_path, vault)  # a rolled-back release must still drain the queue
    try:
        assert again.pending_reversals() == []
        assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    finally:
        again.close()


def test_use_from_another_thread_raises(journal):
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(sqlite3.ProgrammingError):
            pool.submit(journal.next_stan).result(timeout=5)
        with pytest.raises(sqlite3.ProgrammingError):
            pool.submit(journal.pending_reversals).result(timeout=5)


# -- persist before send ------------------------------------------------------------------------


def test_record_request_committed_before_return(journal, db_path, card):
    txn_id, stan = record_sale(journal, card)
    other = other_connection(db_path)
    try:
        txn = other.execute("SELECT * FROM txn WHERE id = ?", (txn_id,)).fetchone()
        clear = (txn["status"], txn["stan"], txn["batch"], txn["amount"], txn["currency"])
        assert clear == ("SENDING", stan, 1, 12345, 156)
        assert (txn["terminal_id"], txn["kind"], txn["operator"]) == (TID, "sale", "01")
        reversal = other.execute("SELECT status FROM reversal WHERE txn_id = ?", (txn_id,)).fetchone()
        assert reversal["status"] == "ARMED"
        assert other.execute("SELECT count(*) FROM sealed_request WHERE txn_id = ?", (txn_id,)).fetchone()[0] == 1
    finally:
        other.close()


def test_clear_columns(journal, card):
    txn_id, stan = record_sale(journal, card)
    rec = journal.get(txn_id)
    assert rec.masked_pan == "622609******0014"
    card_columns = (rec.entry_mode, rec.aid, rec.app_label, rec.arqc)
    assert card_columns == (ENTRY_CHIP, "A000000333010101", "UnionPay Debit", ARQC)
    assert rec.created_at == "2026-03-01T09:30:01"  # the clock's first reading, ISO local time
    assert rec.reversal_status == "ARMED"
    assert rec.stan == stan == 1


def test_not_reversible_has_no_reversal(journal, db_path):
    stan = journal.next_stan()
    txn_id = journal.record_request(kind="balance", stan=stan, batch=1, amount=0, currency=156, card=None,
                                    request={"t": "0200", "11": f"{stan:06d}", "41": TID}, reversible=False)
    rec = journal.get(txn_id)
    assert (rec.reversal_status, rec.masked_pan, rec.entry_mode) == (None, None, None)
    journal.record_no_response(txn_id, reason_code="98", detail="timeout 30 s")
    assert journal.get(txn_id).status == "UNKNOWN"
    assert journal.pending_reversals() == []
    other = other_connection(db_path)
    assert other.execute("SELECT count(*) FROM sealed_request").fetchone()[0] == 0
    other.close()


def test_duplicate_stan_in_batch_refused(journal, card, db_path):
    txn_id, stan = record_sale(journal, card)
    with pytest.raises(JournalError, match=f"STAN {stan:06d} already used in batch 1"):
        journal.record_request(kind="sale", stan=stan, batch=1, amount=1, currency=156, card=card,
                               request=sale_request(stan, 1), reversible=True)
    other = other_connection(db_path)  # the failed insert left nothing behind
    assert other.execute("SELECT count(*) FROM txn").fetchone()[0] == 1
    assert other.execute("SELECT count(*) FROM reversal").fetchone()[0] == 1
    other.close()


def test_same_stan_in_next_batch_allowed(journal, card):
    _, stan = record_sale(journal, card)
    assert journal.close_batch() == 2
    txn_id = journal.record_request(kind="sale", stan=stan, batch=2, amount=1, currency=156, card=card,
                                    request=sale_request(stan, 1), reversible=True)
    assert journal.get(txn_id).batch == 2


def test_field_11_must_match_stan(journal, card):
    with pytest.raises(ValueError, match="field 11"):
        journal.record_request(kind="sale", stan=5, batch=1, amount=1, currency=156, card=card,
                               request=sale_request(6, 1), reversible=True)


@pytest.mark.parametrize("bad", [{"stan": 0}, {"stan": 1_000_000}, {"amount": -1}, {"amount": 1.5}, {"batch": 0}])
def test_bad_arguments_refused(journal, card, bad):
    args = dict(kind="sale", stan=7, batch=1, amount=100, currency=156, card=card, request={}, reversible=True)
    with pytest.raises(ValueError, match=next(iter(bad))):
        journal.record_request(**{**args, **bad})


# -- outcomes -----------------------------------------------------------------------------------


def sealed_count(db_path, txn_id):
    other = other_connection(db_path)
    try:
        return other.execute("SELECT count(*) FROM sealed_request WHERE txn_id = ?", (txn_id,)).fetchone()[0]
    finally:
        other.close()


def test_approved(journal, card, db_path):
    txn_id, _ = record_sale(journal, card)
    journal.record_response(txn_id, response_code="00", approved=True, rrn="000000123456", auth_code="AB12CD")
    rec = journal.get(txn_id)
    assert (rec.status, rec.response_code, rec.rrn, rec.auth_code) == ("APPROVED", "00", "000000123456", "AB12CD")
    assert rec.reversal_status == "CANCELLED"
    assert sealed_count(db_path, txn_id) == 0
    assert journal.pending_reversals() == []
    assert journal.last_approved() == rec


def test_declined(journal, card, db_path):
    txn_id, _ = record_sale(journal, card)
    journal.record_response(txn_id, response_code="51", approved=False, rrn="000000123457", auth_code=None)
    rec = journal.get(txn_id)
    assert (rec.status, rec.response_code, rec.auth_code, rec.reversal_status) == ("DECLINED", "51", None, "CANCELLED")
    assert sealed_count(db_path, txn_id) == 0
    assert journal.last_approved() is None


def test_not_sent(journal, card, db_path):
    txn_id, _ = record_sale(journal, card)
    journal.record_not_sent(txn_id, "connect refused 127.0.0.1:5000")
    rec = journal.get(txn_id)
    assert (rec.status, rec.failure, rec.reversal_status) == ("FAILED", "connect refused 127.0.0.1:5000", "CANCELLED")
    assert sealed_count(db_path, txn_id) == 0
    assert journal.pending_reversals() == []


def test_no_response_makes_pending_reversal(journal, card, db_path):
    journal.next_stan()  # keep the STAN apart from the txn id
    txn_id, stan = record_sale(journal, card)
    assert stan != txn_id
    journal.record_no_response(txn_id, reason_code="98", detail="no 0210 within 30 s")
    rec = journal.get(txn_id)
    assert (rec.status, rec.reversal_status) == ("UNKNOWN", "PENDING")
    assert sealed_count(db_path, txn_id) == 1
    [pending] = journal.pending_reversals()
    identity = (pending.txn_id, pending.stan, pending.batch, pending.amount, pending.currency)
    assert identity == (txn_id, stan, 1, 12345, 156)
    assert (pending.reason_code, pending.detail, pending.attempts) == ("98", "no 0210 within 30 s", 0)
    assert pending.request == expected_stored(stan)
    assert isinstance(pending.request["55"], bytes)
    assert PAN not in repr(pending)


def test_pending_reversals_oldest_first_and_survive_reopen(db_path, vault, card, journal):
    ids = [record_sale(journal, card, amount=100 + i)[0] for i in range(3)]
    journal.record_no_response(ids[2], reason_code="A0", detail="bad MAC")
    journal.record_no_response(ids[0], reason_code="06", detail="socket reset")
    journal.record_response(ids[1], response_code="00", approved=True, rrn="1", auth_code="1")
    journal.close()
    again = Journal(db_path, vault)
    try:
        pending = again.pending_reversals()
        assert [(p.txn_id, p.reason_code, p.amount) for p in pending] == [(ids[0], "06", 100), (ids[2], "A0", 102)]
    finally:
        again.close()


def test_pending_reversal_with_wrong_vault_key_is_set_aside_as_an_alert(db_path, vault, card, journal,
                                                                        tmp_path, caplog):
    txn_id, stan = record_sale(journal, card)
    journal.record_no_response(txn_id, reason_code="98", detail="timeout")
    journal.close()
    again = Journal(db_path, Vault.open(tmp_path / "other.key"))
    try:
        assert again.pending_reversals() == []  # the queue is not held up by it
        assert f"txn {txn_id} STAN {stan:06d}: sealed request does not open" in caplog.text
        [alert] = again.alerts()
        assert (alert.what, alert.txn_id) == ("reversal expired", txn_id)
    finally:
        again.close()
    fixed = Journal(db_path, vault)  # the right key back: support puts it in the queue again
    try:
        assert fixed.requeue_expired() == 1
        assert [r.txn_id for r in fixed.pending_reversals()] == [txn_id]
    finally:
        fixed.close()


def test_sealed_blob_bound_to_its_txn(journal, card, db_path):
    for _ in range(10):  # keep STANs apart from txn ids
        journal.next_stan()
    first, _ = record_sale(journal, card)
    second, stan2 = record_sale(journal, card)
    for txn_id in (first, second):
        journal.record_no_response(txn_id, reason_code="98", detail="timeout")
    other = other_connection(db_path)  # swap the two sealed blobs behind the journal's back
    blobs = dict(other.execute("SELECT txn_id, blob FROM sealed_request").fetchall())
    with other:
        other.execute("UPDATE sealed_request SET blob = ? WHERE txn_id = ?", (blobs[first], second))
    other.close()
    assert [r.txn_id for r in journal.pending_reversals()] == [first]  # second set aside
    assert [(a.what, a.txn_id, a.stan) for a in journal.alerts()] == [("reversal expired", second, stan2)]


@pytest.mark.parametrize("first", ["approve", "decline", "not_sent", "no_response"])
def test_second_outcome_refused(journal, card, first):
    txn_id, stan = record_sale(journal, card)
    outcomes = {
        "approve": lambda: journal.record_response(txn_id, response_code="00", approved=True, rrn="1", auth_code="1"),
        "decline": lambda: journal.record_response(txn_id, response_code="05", approved=False, rrn=None,
                                                   auth_code=None),
        "not_sent": lambda: journal.record_not_sent(txn_id, "link down"),
        "no_response": lambda: journal.record_no_response(txn_id, reason_code="98", detail="timeout"),
    }
    outcomes[first]()
    before = journal.get(txn_id)
    for name, outcome in outcomes.items():
        with pytest.raises(JournalError, match=f"txn {txn_id} STAN {stan:06d}: is {before.status}"):
            outcome()
    assert journal.get(txn_id) == before


def test_outcome_for_unknown_txn_refused(journal):
    with pytest.raises(JournalError, match="txn 42: not in the journal"):
        journal.record_response(42, response_code="00", approved=True, rrn=None, auth_code=None)


def test_unknown_reversal_reason_refused(journal, card):
    txn_id, _ = record_sale(journal, card)
    with pytest.raises(ValueError, match="'99'"):
        journal.record_no_response(txn_id, reason_code="99", detail="?")
    assert journal.get(txn_id).status == "SENDING"


def test_mark_printed(journal, card):
    txn_id, _ = record_sale(journal, card)
    journal.record_response(txn_id, response_code="00", approved=True, rrn="1", auth_code="1")
    journal.mark_printed(txn_id, "merchant")
    first = journal.get(txn_id).printed_merchant_at
    assert first is not None and journal.get(txn_id).printed_customer_at is None
    journal.mark_printed(txn_id, "merchant")  # a reprint keeps the first print time
    journal.mark_printed(txn_id, "customer")
    rec = journal.get(txn_id)
    assert rec.printed_merchant_at == first
    assert rec.printed_customer_at > first
    with pytest.raises(ValueError, match="'shop'"):
        journal.mark_printed(txn_id, "shop")
    with pytest.raises(JournalError, match="txn 999"):
        journal.mark_printed(999, "customer")


def test_last_approved_is_the_newest(journal, card):
    first, _ = record_sale(journal, card)
    second, _ = record_sale(journal, card)
    third, _ = record_sale(journal, card)
    for txn_id in (first, second):
        journal.record_response(txn_id, response_code="00", approved=True, rrn=str(txn_id), auth_code="1")
    journal.record_response(third, response_code="05", approved=False, rrn=None, auth_code=None)
    assert journal.last_approved().id == second


# -- counters -----------------------------------------------------------------------------------


def test_stan_increments_and_persists(db_path, vault, journal):
    assert [journal.next_stan() for _ in range(3)] == [1, 2, 3]
    journal.close()
    again = Journal(db_path, vault)
    try:
        assert again.next_stan() == 4
    finally:
        again.close()


def test_stan_committed_before_return(journal, db_path):
    journal.next_stan()
    stan = journal.next_stan()
    other = other_connection(db_path)
    assert other.execute("SELECT value FROM counter WHERE name = 'stan'").fetchone()[0] == stan == 2
    other.close()


def test_stan_wraps_to_1(journal, db_path):
    other = other_connection(db_path)
    with other:
        other.execute("UPDATE counter SET value = 999998 WHERE name = 'stan'")
    other.close()
    assert [journal.next_stan() for _ in range(3)] == [999999, 1, 2]


def test_batch_starts_at_1_and_persists(db_path, vault, journal):
    assert journal.batch_no() == 1
    assert journal.close_batch() == 2
    journal.close()
    again = Journal(db_path, vault)
    try:
        assert again.batch_no() == 2
    finally:
        again.close()


# -- integrity ----------------------------------------------------------------------------------


def test_garbage_file_is_corrupt(db_path, vault):
    garbage = bytes(range(256)) * 64
    db_path.write_bytes(garbage)
    with pytest.raises(JournalCorrupt, match="journal integrity check failed"):
        Journal(db_path, vault)
    assert db_path.read_bytes() == garbage  # a visible fault, not a silent reset


def fill(journal, card, n):
    for i in range(n):
        txn_id, _ = record_sale(journal, card, amount=100 + i)
        journal.record_response(txn_id, response_code="00", approved=True, rrn=f"{i:012d}", auth_code="123456")


def overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_corrupted_leaf_page_is_detected(db_path, vault, card, journal):
    fill(journal, card, 200)
    journal.close()  # checkpoints the WAL into the main file
    db = sqlite3.connect(db_path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    # the fullest leaf page of the txn table: its middle is row data, not free space
    pageno, ncell = db.execute("SELECT pageno, ncell FROM dbstat WHERE name = 'txn' AND pagetype = 'leaf' "
                               "ORDER BY unused, pageno LIMIT 1").fetchone()
    db.close()
    assert ncell > 10
    # A few bytes inside one row's text columns are NOT caught: integrity_check checks b-tree
    # structure, CHECK constraints and indexes, not payload checksums. Overwriting the middle
    # quarter-page spans several cell headers, which it always catches.
    overwrite(db_path, (pageno - 1) * page_size + page_size * 3 // 8, b"\xa5" * (page_size // 4))
    with pytest.raises(JournalCorrupt, match="journal integrity check failed"):
        Journal(db_path, vault)


def test_corrupted_table_root_page_is_detected(db_path, vault, card, journal):
    fill(journal, card, 200)
    journal.close()
    db = sqlite3.connect(db_path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'txn'").fetchone()[0]
    db.close()
    overwrite(db_path, (root - 1) * page_size, b"\xff" * 64)  # b-tree page header and cell pointers
    with pytest.raises(JournalCorrupt, match="journal integrity check failed"):
        Journal(db_path, vault)


# -- card data hygiene ---------------------------------------------------------------------------


def test_no_full_pan_track_or_pin_block_on_disk(db_path, vault, card, journal):
    secrets = [PAN.encode(), bytes.fromhex(PAN), TRACK2.encode(), TRACK2.split("=")[1].encode(), PIN_BLOCK,
               PIN_BLOCK.hex().encode(), PIN_BLOCK.hex().upper().encode()]
    pending_id, _ = record_sale(journal, card)
    journal.record_no_response(pending_id, reason_code="98", detail="timeout")  # sealed data kept
    approved_id, _ = record_sale(journal, card)
    journal.record_response(approved_id, response_code="00", approved=True, rrn="1", auth_code="1")

    def disk_bytes():
        files = sorted(db_path.parent.glob(db_path.name + "*"))
        assert db_path in files
        return files, b"".join(f.read_bytes() for f in files)

    files, raw = disk_bytes()
    assert db_path.with_name(db_path.name + "-wal") in files  # the live WAL is scanned too
    assert b"622609******0014" in raw  # the scan does see the clear columns
    for secret in secrets:
        assert secret not in raw, secret
    assert journal.pending_reversals()[0].request["2"] == PAN  # the PAN is there, sealed
    journal.close()
    _, raw = disk_bytes()
    for secret in secrets:
        assert secret not in raw, secret
