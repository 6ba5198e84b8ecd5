"""Journal compatibility across releases: a newer release's schema step (appended to
MIGRATIONS here, as that release would) leaves a queue this release still drains against the
acquirer simulator over TCP; a step declaring MIN_READER above this release is refused with
the file untouched; migrations run once."""
from __future__ import annotations

import hashlib
import sqlite3

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware import journal as journal_mod
from firmware.config import load_config
from firmware.journal import JOURNAL_NAME, Journal, JournalError
from firmware.vault import Vault
from scenario import offline_tap_sale, run_scenario as run

# what a newer release might add: a column with a default (advice, txn) and a table
FUTURE_STEP = [
    "ALTER TABLE advice ADD COLUMN channel TEXT NOT NULL DEFAULT 'tcp'",
    "ALTER TABLE txn ADD COLUMN loyalty_id TEXT",
    "CREATE TABLE loyalty (txn_id INTEGER PRIMARY KEY REFERENCES txn (id), points INTEGER NOT NULL)",
]
# the newer release, offline: an advice (tap approved offline), then a sale whose 0200 the
# host never reads (the connection closes first): a reversal; the host saw neither
QUEUE_TWO = "expect signon" + offline_tap_sale(5000) + """
    expect screen "Key in amount"
    fault close_before_read
    acquirer up
    keys 50000 ENTER
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
    expect screen "NO RESPONSE"
    expect reversals 1
    expect queue 2
"""


def config(tmp_path):
    over = sim_overrides(tmp_path, echo_interval=1)
    over["saf"] = {"retry_first": 0.2, "retry_max": 1.0}
    return load_config(SIM_TOML, overrides=over)


def newer_release(monkeypatch, step=FUTURE_STEP, min_reader=None) -> int:
    """This process runs as the next release until monkeypatch undoes it; its version."""
    future = journal_mod.SCHEMA_VERSION + 1
    monkeypatch.setattr(journal_mod, "MIGRATIONS", [*journal_mod.MIGRATIONS, step])
    monkeypatch.setattr(journal_mod, "SCHEMA_VERSION", future)
    if min_reader is not None:
        monkeypatch.setattr(journal_mod, "MIN_READER", {future: min_reader})
    return future


def db_rows(path, sql):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_older_release_drains_the_queue_a_newer_one_wrote(tmp_path):
    cfg = config(tmp_path)
    path = cfg.terminal.data_dir / JOURNAL_NAME
    with pytest.MonkeyPatch.context() as mp:
        future = newer_release(mp)
        run(cfg, QUEUE_TWO)
        db = sqlite3.connect(path)
        with db:
            db.execute("UPDATE advice SET channel = 'future-4g'")
            db.execute("UPDATE txn SET loyalty_id = 'L-' || id")
            db.execute("INSERT INTO loyalty SELECT id, 10 FROM txn")
        db.close()
    assert journal_mod.SCHEMA_VERSION == future - 1  # this release again
    queued = db_rows(path, "SELECT 'advice', t.stan FROM advice a JOIN txn t ON t.id = a.txn_id "
                           "UNION ALL SELECT 'reversal', t.stan FROM reversal r "
                           "JOIN txn t ON t.id = r.txn_id WHERE r.status = 'PENDING'")
    assert sorted(kind for kind, _ in queued) == ["advice", "reversal"]

    run(cfg, "expect signon\nexpect queue 0 within 20")

    assert db_rows(path, "PRAGMA user_version") == [(future,)]
    assert db_rows(path, "SELECT status, channel FROM advice") == [("ACKED", "future-4g")]
    assert db_rows(path, "SELECT status FROM reversal WHERE status != 'CANCELLED'") == [("ACKED",)]
    assert db_rows(path, "SELECT COUNT(*) FROM loyalty") == [(2,)]
    assert db_rows(path, "SELECT COUNT(*) FROM txn WHERE loyalty_id = 'L-' || id") == [(2,)]
    ledger = tmp_path / "acquirer.db"
    stans = {kind: f"{stan:06d}" for kind, stan in queued}
    assert db_rows(ledger, "SELECT COUNT(*) FROM authorisations WHERE stan = "
                           f"'{stans['advice']}'") == [(1,)]
    assert db_rows(ledger, f"SELECT COUNT(*) FROM reversals WHERE stan = '{stans['reversal']}'") == [(1,)]


@pytest.fixture
def vault(tmp_path):
    return Vault.open(tmp_path / "vault.key")


def test_a_step_needing_a_newer_reader_is_refused_and_the_file_untouched(tmp_path, vault):
    path = tmp_path / JOURNAL_NAME
    ours = journal_mod.SCHEMA_VERSION
    with pytest.MonkeyPatch.context() as mp:
        future = newer_release(mp, ["ALTER TABLE advice RENAME COLUMN attempts TO tries"],
                               min_reader=ours + 1)
        Journal(path, vault).close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(JournalError, match=f"journal schema {future} needs release with "
                                           f"schema >= {ours + 1}"):
        Journal(path, vault)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_step_allowing_older_readers_opens(tmp_path, vault):
    path = tmp_path / JOURNAL_NAME
    with pytest.MonkeyPatch.context() as mp:
        future = newer_release(mp, min_reader=journal_mod.SCHEMA_VERSION)
        Journal(path, vault).close()
    journal = Journal(path, vault)
    try:
        assert journal.schema() == future
        assert journal.queue_items() == []
    finally:
        journal.close()


def test_migrations_run_once(tmp_path, vault):
    path = tmp_path / JOURNAL_NAME
    with pytest.MonkeyPatch.context() as mp:
        future = newer_release(mp, ["CREATE TABLE once (n INTEGER PRIMARY KEY)",
                                    "INSERT INTO once VALUES (1)"])
        for _ in range(2):  # a second run would fail (the table exists) or add a row
            Journal(path, vault).close()
        assert db_rows(path, "PRAGMA user_version") == [(future,)]
        assert db_rows(path, "SELECT COUNT(*) FROM once") == [(1,)]
    Journal(path, vault).close()  # this release: leaves the newer schema as it is
    assert db_rows(path, "PRAGMA user_version") == [(future,)]
    assert db_rows(path, "SELECT COUNT(*) FROM once") == [(1,)]
