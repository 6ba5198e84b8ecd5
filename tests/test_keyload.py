"""Tests for firmware.keyload: the TMK as a TR-31 key block (load, checks, sealed store,
status), and the key change the acquirer asks for (new sign-on, KCVs checked)."""
from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware import keyload
from firmware.config import load_config
from firmware.keyload import KeyLoadError, make_test_block, unwrap_tmk
from firmware.sim.catalog import load_catalog
from firmware.sim.runner import sim_session
from scenario import chip_sale, play

NOW = datetime(2026, 3, 1, 9, 30)


@pytest.fixture
def cfg(tmp_path):
    """A simulator config with no tmk_file: only a loaded key can sign on."""
    over = sim_overrides(tmp_path)
    over["security"] = {"tmk_file": ""}
    return load_config(SIM_TOML, overrides=over)


@pytest.fixture
def sim_tmk(cfg):
    return load_catalog(cfg.sim.catalog).terminal_keys[cfg.terminal.terminal_id]


def load(cfg, block, kbpk):
    out: list[str] = []
    return keyload.load_command(cfg, block, kbpk, now=NOW, say=out.append), "\n".join(out)


def flip(block: str, index: int) -> str:
    return block[:index] + ("0" if block[index] != "0" else "1") + block[index + 1:]


def test_good_block_is_stored_sealed_and_a_sale_works(cfg, sim_tmk):
    block, kbpk = make_test_block(sim_tmk)
    rc, out = load(cfg, block, kbpk)
    assert rc == 0 and f"KCV {keyload.check_value(sim_tmk, 'T')}" in out
    path = cfg.terminal.data_dir / "keys" / "tmk"
    assert os.stat(path).st_mode & 0o777 == 0o600
    raw = path.read_bytes()
    assert sim_tmk not in raw and sim_tmk.hex().encode() not in raw.lower()
    assert keyload.open_stored_tmk(cfg) == sim_tmk
    assert keyload.stored_tmk(cfg).loaded_at == "2026-03-01T09:30:00"

    async def go():
        async with sim_session(cfg) as session:
            await play(session, "expect signon\n" + chip_sale(2500))
            assert await session.terminal.journal_call(lambda j: j.last().status) == "APPROVED"
    asyncio.run(go())


@pytest.mark.parametrize("where", ["mac", "encrypted key"])
def test_tampered_block_is_refused_and_the_old_key_kept(cfg, sim_tmk, where):
    block, kbpk = make_test_block(sim_tmk)
    assert load(cfg, block, kbpk)[0] == 0
    other, _ = make_test_block(bytes(range(16)), kbpk=kbpk)
    bad = flip(other, len(other) - 1 if where == "mac" else 16 + 3)
    rc, out = load(cfg, bad, kbpk)
    assert rc == 1 and out == "refused: key block authentication failed; nothing stored"
    assert keyload.open_stored_tmk(cfg) == sim_tmk


def test_refused_block_stores_nothing(cfg, sim_tmk):
    block, kbpk = make_test_block(sim_tmk)
    assert load(cfg, flip(block, len(block) - 1), kbpk)[0] == 1
    assert keyload.stored_tmk(cfg) is None
    assert not (cfg.terminal.data_dir / "keys" / "tmk").exists()


def test_wrong_kbpk_is_refused(sim_tmk):
    block, _ = make_test_block(sim_tmk)
    _, other_kbpk = make_test_block(sim_tmk)
    with pytest.raises(KeyLoadError, match="^key block authentication failed$"):
        unwrap_tmk(other_kbpk, block, "T")


def test_wrong_usage_is_refused(sim_tmk):
    block, kbpk = make_test_block(sim_tmk, usage="P0")
    with pytest.raises(KeyLoadError, match="^key usage P0, expected K0"):
        unwrap_tmk(kbpk, block, "T")


def test_algorithm_must_match_the_config(sim_tmk):
    block, kbpk = make_test_block(os.urandom(32), "A")
    with pytest.raises(KeyLoadError, match="^algorithm A, expected T"):
        unwrap_tmk(kbpk, block, "T")
    assert len(unwrap_tmk(kbpk, block, "A")) == 32


def test_components_are_xored_after_their_kcvs(sim_tmk):
    parts = [os.urandom(16), os.urandom(16)]
    kbpk = bytes(a ^ b for a, b in zip(*parts))
    block, _ = make_test_block(sim_tmk, kbpk=kbpk)
    shown: list[str] = []
    typed = iter(p.hex() for p in parts)
    forms = iter(keyload.check_value(p, "T")[:6] for p in parts)
    got = keyload.ask_components(2, "T", secret=lambda _: next(typed),
                                 ask=lambda _: next(forms), say=shown.append)
    assert got == kbpk and unwrap_tmk(got, block, "T") == sim_tmk
    assert shown == [f"component {n} KCV: {keyload.check_value(p, 'T')}"
                     for n, p in enumerate(parts, 1)]
    assert not any(p.hex() in line.lower() for p in parts for line in shown)


def test_component_with_a_wrong_kcv_is_refused():
    parts = [os.urandom(16), os.urandom(16)]
    forms = [keyload.check_value(parts[0], "T"), "000000"]
    with pytest.raises(KeyLoadError, match="^component 2: check value does not match its form$"):
        keyload.kbpk_from_components(parts, forms, "T")


def test_status_shows_kcvs_never_keys(tmp_path, sim_tmk):
    cfg = load_config(SIM_TOML, overrides=sim_overrides(tmp_path))  # with the sim tmk_file
    block, kbpk = make_test_block(sim_tmk)
    assert load(cfg, block, kbpk)[0] == 0
    lines: list[str] = []
    assert keyload.status_command(cfg, say=lines.append) == 0
    text = "\n".join(lines)
    assert "KCV " + keyload.check_value(sim_tmk, "T") in text and "the stored key wins" in text
    assert sim_tmk.hex() not in text.lower()


def test_no_key_at_all_says_how_to_load_one(cfg):
    with pytest.raises(KeyLoadError, match="kpos keys load"):
        keyload.terminal_master_key(cfg)


# ---- key change ------------------------------------------------------------------------

async def _key_change_done(terminal) -> None:
    """After the key-change sign-on was answered: its task holds the sign-on lock until done."""
    async with asyncio.timeout(10):
        async with terminal._signon_lock:
            pass


def test_key_change_on_request_uses_the_new_keys(sim_config):
    tid = sim_config.terminal.terminal_id

    async def go():
        async with sim_session(sim_config) as session:
            await play(session, "expect signon\n" + chip_sale(100))
            old = session.terminal.session_keys
            session.acquirer.key_change = True
            await play(session, chip_sale(200))  # its 0210 asks for a sign-on
            await session.acquirer.wait_handled(4, timeout=10)  # sign-on, 2 sales, sign-on
            await _key_change_done(session.terminal)
            new = session.terminal.session_keys
            host = await session.acquirer.in_ledger(lambda ledger: ledger.session_keys(tid))
            assert new.pik != old.pik and (new.pik, new.mak) == host
            await play(session, chip_sale(300))  # the host reads a PIN block under the new PIK
            assert await session.terminal.journal_call(lambda j: j.last().status) == "APPROVED"
    asyncio.run(go())


def test_wrong_kcv_on_new_keys_keeps_the_old_ones(sim_config, caplog):
    tid = sim_config.terminal.terminal_id
    caplog.set_level(logging.ERROR, "kpos.app")

    async def go():
        async with sim_session(sim_config) as session:
            await play(session, "expect signon\n" + chip_sale(100))
            old = session.terminal.session_keys
            session.acquirer.key_change = session.acquirer.bad_kcv = True
            await play(session, chip_sale(200))
            await session.acquirer.wait_handled(4, timeout=10)
            await _key_change_done(session.terminal)
            host = await session.acquirer.in_ledger(lambda ledger: ledger.session_keys(tid))
            assert session.terminal.session_keys is old and host[0] != old.pik
            assert session.terminal.key_alert == "working key check failed"
            assert session.terminal.signed_on.is_set()  # the old, verified keys stay in use
    asyncio.run(go())
    assert any(r.getMessage().startswith("working key check failed: MAK check value mismatch")
               for r in caplog.records)


def test_key_change_signal():
    sale = {"t": "0200", "60": "22000001000"}
    assert keyload.key_change_requested(sale, {"t": "0210", "60": "22000001003"})
    assert not keyload.key_change_requested(sale, {"t": "0210"})
    signon = {"t": "0800", "60": "00000001003"}
    assert not keyload.key_change_requested(signon, {"t": "0810", "60": "00000001003"})
