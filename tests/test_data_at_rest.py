"""Issue 8 point 5, card data at rest: an offline sale's advice data sits in the journal
only AES-GCM sealed (no clear PAN in journal.db / -wal / -shm) and is gone from those
bytes once the acquirer acknowledges the advice; the clear columns hold the masked PAN;
the journal, keys, receipts, operator store and backups are service-user-only (0600
files, 0700 dirs) under umask 022."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.backup import backup
from firmware.config import load_config
from firmware.journal import JOURNAL_NAME
from firmware.sim.runner import sim_session
from firmware.vault import Vault
from scenario import chip_sale, offline_tap_sale, play
from test_secrets_scan import pan_forms

APPROVE = "6226090000000014"
OFFLINE_SALE = "expect signon\n" + offline_tap_sale(4000)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def config(tmp_path):
    over = sim_overrides(tmp_path)
    over["saf"] = {"retry_first": 0.2, "retry_max": 1.0}
    return load_config(SIM_TOML, overrides=over)


def journal_bytes(data: Path) -> bytes:
    """journal.db, -wal and -shm as they are on disk now."""
    files = [data / f"{JOURNAL_NAME}{suffix}" for suffix in ("", "-wal", "-shm")]
    return b"".join(path.read_bytes() for path in files if path.exists())


def sealed_rows(data: Path) -> list[tuple[int, bytes]]:
    db = sqlite3.connect(f"file:{data / JOURNAL_NAME}?mode=ro", uri=True)
    try:
        return db.execute("SELECT txn_id, blob FROM sealed_request").fetchall()
    finally:
        db.close()


def test_advice_data_is_sealed_until_the_ack_then_overwritten(tmp_path):
    cfg = config(tmp_path)
    data = cfg.terminal.data_dir

    async def day():
        async with sim_session(cfg) as session:
            await play(session, OFFLINE_SALE)
            before = sealed_rows(data), journal_bytes(data)
            last = await session.terminal.journal_call(lambda j: j.last())
            await play(session, "acquirer up\nexpect queue 0 within 15")
            await session.terminal.journal_call(lambda j: j.last())  # the ack has committed
            return before, (sealed_rows(data), journal_bytes(data)), last

    (rows, on_disk), (rows_after, on_disk_after), last = asyncio.run(day())
    [(txn_id, blob)] = rows
    assert txn_id == last.id and last.masked_pan == "622609******0014"
    advice = Vault.open(cfg.security.vault_key_file).open_sealed(
        blob, aad=f"kpos-journal-txn:{txn_id}".encode())
    assert APPROVE.encode() in advice  # the sealed data is the advice's card data
    assert blob in on_disk  # the scan sees the sealed blob ...
    assert [form for form in pan_forms(APPROVE) if form in on_disk] == []  # ... never the PAN
    assert b"622609******0014" in on_disk
    assert rows_after == []
    assert blob not in on_disk_after and blob[1:13] not in on_disk_after  # not even its nonce
    assert [form for form in pan_forms(APPROVE) if form in on_disk_after] == []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_files_are_service_user_only_under_umask_022(tmp_path, umask_022):
    cfg = config(tmp_path)
    data = cfg.terminal.data_dir

    async def day():
        async with sim_session(cfg) as session:
            await play(session, "expect signon\n" + chip_sale(1250))
            live = {p.name: mode(p) for p in data.glob(f"{JOURNAL_NAME}*")}
            live.update({p.name: mode(p) for p in data.glob("operators.db*")})
            return live

    live = asyncio.run(day())
    assert set(live) >= {JOURNAL_NAME, f"{JOURNAL_NAME}-wal", f"{JOURNAL_NAME}-shm", "operators.db"}
    assert {name: m for name, m in live.items() if m != 0o600} == {}
    keys = cfg.security.vault_key_file
    assert (mode(keys.parent), mode(keys)) == (0o700, 0o600)
    receipts = data / "receipts"
    printed = list(receipts.iterdir())
    assert printed and mode(receipts) == 0o700
    assert {p.name: mode(p) for p in printed if mode(p) != 0o600} == {}
    dest = tmp_path / "usb"
    dest.mkdir()
    made = backup(data, dest, keep=2)
    assert mode(made.path) == 0o700
    assert {p.name: mode(p) for p in made.path.iterdir() if mode(p) != 0o600} == {}
