"""Backup and restore (firmware.backup, kpos backup / restore) on real SQLite files in WAL
mode, a writer thread running; the systemd units checked with systemd-analyze."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import threading
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware import backup as backup_module
from firmware.backup import MANIFEST, BackupError, backup, backups, read_manifest, restore
from firmware.cli import main as kpos
from firmware.journal import JOURNAL_NAME, Journal
from firmware.operators import OPERATORS_NAME, OperatorStore
from firmware.vault import Vault
from tests.conftest import SIM_TOML
from tests import test_journal
from tests.test_journal import Clock, record_sale
from tests.test_journal_saf import offline_sale

card = test_journal.card  # the chip card fixture

BOOT = Path(__file__).resolve().parent.parent / "boot"


@pytest.fixture
def data(tmp_path):
    """A data dir with a journal (3 cash sales) and an operator store, both closed."""
    path = tmp_path / "data"
    with closing(open_journal(path)) as journal:
        for amount in (1000, 250, 9999):
            cash(journal, amount)
    with OperatorStore(path / OPERATORS_NAME) as store:
        store.add("07", "cashier", "4321", "Li")
    return path


@pytest.fixture
def dest(tmp_path):
    path = tmp_path / "stick"
    path.mkdir()
    return path


def open_journal(data_dir: Path) -> Journal:
    return Journal(data_dir / JOURNAL_NAME, Vault.open(data_dir / "keys" / "vault.key"), now=Clock())


def cash(journal: Journal, amount: int = 500) -> int:
    return journal.record_cash(amount=amount, tendered=amount, currency=156, operator="01",
                               terminal_id="10000001")


def rows(db_path: Path) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT * FROM txn ORDER BY id").fetchall()


def integrity(db_path: Path) -> list[str]:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]


def corrupt(db_path: Path) -> None:
    """Overwrite the last page (a table b-tree page) with garbage."""
    size = db_path.stat().st_size
    with db_path.open("r+b") as f:
        f.seek(size - 4096)
        f.write(b"\xff" * 4096)


# -- backup -----------------------------------------------------------------------------------


def test_backup_writes_checked_copies_and_a_manifest(data, dest):
    result = backup(data, dest, keep=3, now=lambda: datetime(2026, 3, 1, 23, 59, 58))
    assert result.path == dest / "kpos-000001-20260301-235958"
    assert result.files == (JOURNAL_NAME, OPERATORS_NAME) and result.checked == 2
    assert sorted(p.name for p in result.path.iterdir()) == sorted([JOURNAL_NAME, OPERATORS_NAME, MANIFEST])
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in result.path.iterdir()} == {0o600}
    files = read_manifest(result.path)["files"]
    assert files[JOURNAL_NAME]["txns"] == 3 and files[JOURNAL_NAME]["unsent"] == 0
    assert files[JOURNAL_NAME]["user_version"] == user_version(data / JOURNAL_NAME)
    assert result.bytes == sum(f["bytes"] for f in files.values()) == sum(
        (result.path / name).stat().st_size for name in files)
    copy = result.path / JOURNAL_NAME
    assert integrity(copy) == ["ok"] and rows(copy) == rows(data / JOURNAL_NAME)
    assert not list(result.path.glob("*-wal"))  # one self-contained file per database


def user_version(db_path: Path) -> int:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_backup_while_a_thread_writes_is_consistent_and_a_prefix(data, dest, monkeypatch):
    monkeypatch.setattr(backup_module, "PAGES_PER_STEP", 1)  # many steps for writes to fall between
    started, stop, failed = threading.Event(), threading.Event(), []

    def writer() -> None:
        try:
            with closing(open_journal(data)) as journal:
                while not stop.is_set():
                    cash(journal)
                    if journal.count() >= 30:
                        started.set()
        except BaseException as exc:  # reported by the test thread
            failed.append(exc)
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert started.wait(30)
        result = backup(data, dest, keep=3)
    finally:
        stop.set()
        thread.join(30)
    assert not failed and not thread.is_alive()
    copy = result.path / JOURNAL_NAME
    assert integrity(copy) == ["ok"]
    copied, live = rows(copy), rows(data / JOURNAL_NAME)
    assert len(copied) >= 30 and copied == live[:len(copied)]
    assert read_manifest(result.path)["files"][JOURNAL_NAME]["txns"] == len(copied)


def test_writes_between_every_step_end_in_one_snapshot(data, dest, monkeypatch, caplog):
    monkeypatch.setattr(backup_module, "PAGES_PER_STEP", 1)
    journal = open_journal(data)  # this thread: the progress callback runs here
    step, steps = backup_module._Stalls.__call__, []

    def write_then_step(self, status, remaining, total):
        steps.append(remaining)
        assert len(steps) < 1000, "the copy never ends"
        cash(journal)  # another connection writes: the copy starts again
        step(self, status, remaining, total)

    monkeypatch.setattr(backup_module._Stalls, "__call__", write_then_step)
    caplog.set_level(logging.INFO, logger="kpos.backup")
    try:
        result = backup(data, dest, keep=1)
    finally:
        journal.close()
    assert "copied in one step" in caplog.text
    copy = result.path / JOURNAL_NAME
    assert integrity(copy) == ["ok"]
    copied = rows(copy)
    assert len(copied) > 3 and copied == rows(data / JOURNAL_NAME)[:len(copied)]


def test_backup_without_an_operator_store_copies_the_journal(data, dest):
    (data / OPERATORS_NAME).unlink()
    assert backup(data, dest, keep=1).files == (JOURNAL_NAME,)


def test_no_journal_nothing_to_back_up(tmp_path, dest):
    with pytest.raises(BackupError, match="journal.db not found"):
        backup(tmp_path, dest, keep=1)
    assert list(dest.iterdir()) == []


def test_rotation_keeps_the_newest_by_sequence_even_when_the_clock_jumps_back(data, dest):
    (dest / "holiday.jpg").write_bytes(b"not ours")
    (dest / "kpos-notes").mkdir()
    days = iter(datetime(2026, 3, 10) - timedelta(days=n) for n in range(5))  # the clock goes back
    made = [backup(data, dest, keep=3, now=lambda: next(days)) for _ in range(5)]
    assert backups(dest) == [made[4].path, made[3].path, made[2].path]
    assert made[4].removed == (made[1].path,) and made[3].removed == (made[0].path,)
    assert made[4].path.name == "kpos-000005-20260306-000000"
    assert (dest / "holiday.jpg").exists() and (dest / "kpos-notes").is_dir()


def test_a_partial_folder_left_by_a_killed_backup_is_cleared(data, dest):
    stale = dest / ".kpos-000001-20260301-120000.partial"
    stale.mkdir()
    (stale / JOURNAL_NAME).write_bytes(b"half")
    result = backup(data, dest, keep=2)
    assert not stale.exists() and result.path.name.startswith("kpos-000001-")


def test_a_missing_destination_is_a_clear_error(data, tmp_path):
    with pytest.raises(BackupError, match="does not exist .is the USB stick mounted"):
        backup(data, tmp_path / "usb", keep=1)
    assert not (tmp_path / "usb").exists()


def test_a_concurrent_backup_into_the_same_destination_is_refused(data, dest):
    with backup_module._locked(dest):
        with pytest.raises(BackupError, match="another kpos backup"):
            backup(data, dest, keep=1)
    assert list(dest.iterdir()) == []


@contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextmanager
def read_only_folder(path: Path):
    if os.geteuid() == 0:  # root writes through mode bits: a read-only mount
        with tmpfs(path, "ro,size=1m") as folder:
            yield folder
        return
    path.mkdir(mode=0o500)
    try:
        yield path
    finally:
        path.chmod(0o700)


def test_a_read_only_destination_is_a_clear_error(data, tmp_path):
    with read_only_folder(tmp_path / "ro") as folder:
        with pytest.raises(BackupError, match="is not writable: nothing written"):
            backup(data, folder, keep=1)
        assert list(folder.iterdir()) == []


def test_a_full_destination_leaves_nothing_behind(data, tmp_path):
    with closing(open_journal(data)) as journal:
        for _ in range(50):
            cash(journal)  # a journal larger than the stick
    with tmpfs(tmp_path / "small", "size=32k") as folder:
        with pytest.raises(BackupError, match="is full: nothing written"):
            backup(data, folder, keep=1)
        assert list(folder.iterdir()) == []


def test_a_bad_copy_is_deleted_and_reported(data, dest):
    corrupt(data / JOURNAL_NAME)
    with pytest.raises(BackupError, match="copy of .*journal.db failed integrity_check"):
        backup(data, dest, keep=1)
    assert list(dest.iterdir()) == []


# -- restore ----------------------------------------------------------------------------------


def test_restore_into_an_empty_data_dir_opens_with_the_same_rows(data, dest, tmp_path):
    taken = backup(data, dest, keep=1)
    new = tmp_path / "replacement"
    result = restore(taken.path, new)
    assert result.files == (JOURNAL_NAME, OPERATORS_NAME) and result.replaced == () and result.unsent == 0
    assert stat.S_IMODE(new.stat().st_mode) == 0o700
    assert {p.name for p in new.iterdir()} == {JOURNAL_NAME, OPERATORS_NAME}  # no temp file left
    assert {stat.S_IMODE(p.stat().st_mode) for p in new.iterdir()} == {0o600}
    shutil.copytree(data / "keys", new / "keys")  # the old device's vault key (not in a backup)
    with closing(open_journal(new)) as journal:  # opens: integrity_check, WAL again
        assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [t.amount for t in journal.page(0, 10)] == [9999, 250, 1000]
    assert rows(new / JOURNAL_NAME) == rows(data / JOURNAL_NAME)
    with OperatorStore(new / OPERATORS_NAME) as store:
        assert "07" in [op.number for op in store.list()]


def make_unsent(kind: str, journal: Journal, card) -> None:
    if kind == "reversal":
        txn_id, _ = record_sale(journal, card)
        journal.record_no_response(txn_id, reason_code="98", detail="timeout")
    elif kind == "advice":
        offline_sale(journal, card)
    else:
        cash(journal)
        journal.begin_settlement()


@pytest.mark.parametrize("kind, what", [("reversal", "1 reversal"), ("advice", "1 advice"),
                                        ("settlement", "1 settlement")])
def test_restore_is_refused_over_unsent_items_even_with_force(data, dest, tmp_path, card, kind, what):
    taken = backup(data, dest, keep=1)
    here = tmp_path / "here"
    with closing(open_journal(here)) as journal:
        make_unsent(kind, journal, card)
    before = (here / JOURNAL_NAME).read_bytes()
    with pytest.raises(BackupError, match=rf"^1 unsent items in the journal here \({what}\): "
                                          "forward them first$"):
        restore(taken.path, here, force=True)
    assert (here / JOURNAL_NAME).read_bytes() == before
    assert not (here / OPERATORS_NAME).exists() and not list(here.glob(".*.restore"))


def test_restore_over_an_existing_journal_needs_force(data, dest, tmp_path):
    taken = backup(data, dest, keep=1)
    here = tmp_path / "here"
    with closing(open_journal(here)) as journal:
        cash(journal, 42)
    with pytest.raises(BackupError, match="journal.db exists: restore --force replaces it"):
        restore(taken.path, here)
    assert [r[5] for r in rows(here / JOURNAL_NAME)] == [42]  # column 5: amount
    result = restore(taken.path, here, force=True)
    assert result.replaced == (JOURNAL_NAME,)
    assert rows(here / JOURNAL_NAME) == rows(data / JOURNAL_NAME)
    assert not (here / f"{JOURNAL_NAME}-wal").exists()


def test_restore_is_refused_while_the_terminal_has_the_journal_open(data, dest):
    taken = backup(data, dest, keep=1)
    with closing(open_journal(data)):
        with pytest.raises(BackupError, match="in use: stop the terminal first"):
            restore(taken.path, data, force=True)


def test_restore_over_a_journal_that_does_not_open_is_refused(data, dest, tmp_path):
    taken = backup(data, dest, keep=1)
    here = tmp_path / "here"
    here.mkdir()
    (here / JOURNAL_NAME).write_bytes(b"this is not a database, at all" * 200)
    with pytest.raises(BackupError, match="does not open .*move it aside first"):
        restore(taken.path, here, force=True)


def test_a_tampered_backup_file_is_refused(data, dest, tmp_path):
    taken = backup(data, dest, keep=1)
    copy = taken.path / JOURNAL_NAME
    raw = bytearray(copy.read_bytes())
    raw[-100] ^= 0x01
    copy.write_bytes(bytes(raw))
    new = tmp_path / "new"
    with pytest.raises(BackupError, match="sha256 differs from the manifest"):
        restore(taken.path, new)
    assert list(new.iterdir()) == []


def test_a_damaged_backup_with_a_matching_manifest_fails_integrity_check(data, dest, tmp_path):
    taken = backup(data, dest, keep=1)
    corrupt(taken.path / JOURNAL_NAME)
    manifest = json.loads((taken.path / MANIFEST).read_text())
    manifest["files"][JOURNAL_NAME]["sha256"] = hashlib.sha256(
        (taken.path / JOURNAL_NAME).read_bytes()).hexdigest()
    (taken.path / MANIFEST).write_text(json.dumps(manifest))
    new = tmp_path / "new"
    with pytest.raises(BackupError, match="failed integrity_check"):
        restore(taken.path, new)
    assert list(new.iterdir()) == []


def test_a_folder_without_a_manifest_is_not_a_backup(tmp_path):
    with pytest.raises(BackupError, match="no readable manifest.json"):
        restore(tmp_path, tmp_path / "data")


def test_restore_reports_unsent_items_carried_in_the_backup(dest, tmp_path, card):
    old = tmp_path / "old"
    with closing(open_journal(old)) as journal:
        make_unsent("advice", journal, card)
    taken = backup(old, dest, keep=1)
    assert read_manifest(taken.path)["files"][JOURNAL_NAME]["unsent"] == 1
    assert restore(taken.path, tmp_path / "new").unsent == 1


# -- kpos backup / kpos restore ---------------------------------------------------------------


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = kpos([*args, "--config", str(SIM_TOML)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_backup_list_and_restore(capsys, data, dest, tmp_path):
    code, out, err = cli(capsys, "backup", "--data-dir", str(data), "--dir", str(dest), "--keep", "2")
    assert code == 0, err
    [taken] = backups(dest)
    assert out.startswith(f"backup {taken}: journal.db, operators.db, ") and "integrity_check ok" in out
    code, out, _ = cli(capsys, "backup", "--data-dir", str(data), "--dir", str(dest), "--list")
    assert code == 0 and out.startswith(f"{taken}  ") and "3 txn(s)  0 unsent" in out
    new = tmp_path / "new"
    code, out, err = cli(capsys, "restore", str(taken), "--data-dir", str(new))
    assert code == 0, err
    assert out == f"restored journal.db, operators.db into {new}\n"
    assert rows(new / JOURNAL_NAME) == rows(data / JOURNAL_NAME)
    code, _, err = cli(capsys, "restore", str(taken), "--data-dir", str(new))
    assert code == 1 and "exists: restore --force replaces it" in err
    assert cli(capsys, "restore", str(taken), "--data-dir", str(new), "--force")[0] == 0


def test_cli_restore_over_unsent_items_exits_1(capsys, data, dest, card):
    taken = backup(data, dest, keep=1)
    with closing(open_journal(data)) as journal:
        make_unsent("reversal", journal, card)
    code, _, err = cli(capsys, "restore", str(taken.path), "--data-dir", str(data), "--force")
    assert code == 1 and "1 unsent items in the journal here (1 reversal): forward them first" in err
    assert "6226090000000014" not in err


def test_cli_restore_warns_about_the_vault_key_for_unsent_items(capsys, dest, tmp_path, card):
    old = tmp_path / "old"
    with closing(open_journal(old)) as journal:
        make_unsent("advice", journal, card)
    taken = backup(old, dest, keep=1)
    code, _, err = cli(capsys, "restore", str(taken.path), "--data-dir", str(tmp_path / "new"))
    assert code == 0 and "1 unsent item(s) in this backup" in err
    assert f"copy it to {tmp_path / 'new' / 'keys' / 'vault.key'}" in err


def test_cli_backup_errors_and_usage(capsys, data, tmp_path):
    code, _, err = cli(capsys, "backup", "--data-dir", str(data), "--dir", str(tmp_path / "none"))
    assert code == 1 and "does not exist" in err
    code, _, err = cli(capsys, "backup", "--data-dir", str(data), "--dir", str(tmp_path), "--keep", "0")
    assert code == 2 and "--keep must be at least 1" in err
    assert kpos(["backup", "--config", str(tmp_path / "missing.toml")]) == 2


# -- the systemd units ------------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(BOOT / "kpos-backup.service"), str(BOOT / "kpos-backup.timer")],
                          capture_output=True, text=True, timeout=60)
    exec_start = Path("/opt/kpos/current/.venv/bin/kpos")
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if not exec_start.exists():  # a build host: the release is not installed, the one complaint
        complaints.remove(f"kpos-backup.service: Command {exec_start} is not executable: "
                          "No such file or directory")
    assert complaints == [] and (done.returncode == 0 or not exec_start.exists())


def test_units_say_what_the_brief_requires():
    service = (BOOT / "kpos-backup.service").read_text()
    timer = (BOOT / "kpos-backup.timer").read_text()
    for line in ("Type=oneshot", "User=kpos", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ExecStart=/opt/kpos/current/.venv/bin/kpos backup --config /etc/kpos/terminal.toml"):
        assert f"\n{line}\n" in service
    for line in ("OnCalendar=daily", "Persistent=true", "RandomizedDelaySec=1h"):
        assert f"\n{line}\n" in timer


def test_a_stale_wal_without_its_journal_is_not_replayed_into_the_restored_one(data, dest, tmp_path):
    taken = backup(data, dest, keep=1)
    other = tmp_path / "other"
    journal = open_journal(other)
    for _ in range(20):
        cash(journal, 77)
    here = tmp_path / "here"
    here.mkdir()
    shutil.copy(other / f"{JOURNAL_NAME}-wal", here / f"{JOURNAL_NAME}-wal")  # frames of another db
    journal.close()
    restore(taken.path, here)
    assert integrity(here / JOURNAL_NAME) == ["ok"]
    assert rows(here / JOURNAL_NAME) == rows(data / JOURNAL_NAME)
