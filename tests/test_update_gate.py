"""The terminal side of a field update: `kpos update hold/release` against a running terminal
on the acquirer simulator, the single-instance lock, `kpos update snapshot` + `kpos health`,
and `kpos selftest`."""
from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import REPO, SIM_TOML, run_bounded, sim_overrides
from firmware import cli, update
from firmware.app import StartupFault
from firmware.config import load_config
from firmware.flows.types import Key
from firmware.journal import JOURNAL_NAME
from firmware.sim.acquirer import Faults
from firmware.sim.runner import sim_session
from firmware.sim.script import parse_script, run_script
from scenario import run_scenario, unanswered_sale

PYTHON = sys.executable
SALE_UNTIL_PIN = """
    keys 100 ENTER
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
"""


def config(tmp_path):
    return load_config(SIM_TOML, overrides=sim_overrides(tmp_path))


async def play(session, text: str) -> None:
    await run_script(session, parse_script(text), log=lambda line: None)


def hold(cfg, timeout: float = 10.0):
    """`kpos update hold` on a thread (it blocks, polling the terminal's files)."""
    return asyncio.create_task(asyncio.to_thread(update.hold_command, cfg, timeout=timeout, ttl=900))


def kpos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "firmware", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


# ---- hold / release ----------------------------------------------------------------------

def test_hold_with_no_terminal_running_is_idle_at_once(tmp_path):
    data = tmp_path / "data"
    start = time.monotonic()
    held = kpos("update", "hold", "--config", str(SIM_TOML), "--data-dir", str(data), "--timeout", "30")
    assert held.returncode == 0, held.stderr
    assert time.monotonic() - start < 10  # not the 30 s timeout
    assert update.read_hold(data) is not None  # a terminal starting now stays held
    released = kpos("update", "release", "--config", str(SIM_TOML), "--data-dir", str(data))
    assert released.returncode == 0 and update.read_hold(data) is None


def test_idle_terminal_acknowledges_and_refuses_until_released(tmp_path):
    cfg = config(tmp_path)

    async def go():
        async with sim_session(cfg) as session:
            assert await hold(cfg) == 0
            assert session.display.current.title == "Updating"
            seen = session.acquirer.requests_seen
            session.terminal.post(Key("1"))
            await play(session, 'insert approve\nexpect screen "Please wait"')
            assert session.terminal.state.phase == "IDLE"
            assert session.acquirer.requests_seen == seen
            await play(session, "remove")
            update.release_hold(cfg.terminal.data_dir)
            await play(session, 'expect screen "Key in amount"\n' + SALE_UNTIL_PIN +
                       'expect screen "APPROVED"')
    run_bounded(go())


def test_hold_waits_for_the_sale_in_flight(tmp_path):
    cfg = config(tmp_path)

    async def go():
        async with sim_session(cfg) as session:
            await play(session, "expect signon")
            session.acquirer.faults.set_to(Faults.parse(["delay", "1", "mti", "0200"]))
            seen = session.acquirer.requests_seen
            await play(session, SALE_UNTIL_PIN)
            await session.acquirer.wait_requests(seen + 1, timeout=10)  # the 0200 is at the host
            waiting = hold(cfg)
            await play(session, 'expect screen "APPROVED"\nexpect journal APPROVED\nkeys ENTER\n'
                                'expect screen "Remove card"')
            assert not waiting.done()  # the card is still in: not at rest yet
            await play(session, "remove")
            assert await waiting == 0
            assert session.display.current.title == "Updating"
            session.terminal.post(Key("5"))
            await play(session, 'expect screen "Please wait"')
            assert session.terminal.state.phase == "IDLE"
    run_bounded(go())


def test_hold_times_out_on_a_busy_terminal_and_is_lifted(tmp_path, capfd):
    cfg = config(tmp_path)

    async def go():
        async with sim_session(cfg) as session:
            await play(session, 'keys 100 ENTER\nexpect screen "Insert"')  # the card flow waits
            assert await hold(cfg, timeout=1.0) == 1
            assert update.read_hold(cfg.terminal.data_dir) is None
            await play(session, 'insert approve\nexpect screen "Enter PIN"')  # not held
    run_bounded(go())
    assert "terminal still busy after 1 s (transaction in flight)" in capfd.readouterr().err


def test_a_hold_survives_a_restart_until_released(tmp_path):
    cfg = config(tmp_path)
    cfg.terminal.data_dir.mkdir(parents=True)
    update.request_hold(cfg.terminal.data_dir, ttl=900)  # held before this terminal starts

    async def go():
        async with sim_session(cfg) as session:
            assert [s.title for s in session.display.history] == ["Updating"]  # never idle
            assert await hold(cfg) == 0
            update.release_hold(cfg.terminal.data_dir)
            await play(session, 'expect screen "Key in amount"\n' + SALE_UNTIL_PIN +
                       'expect screen "APPROVED"')
    run_bounded(go())


def test_a_stale_hold_is_ignored(tmp_path):
    cfg = config(tmp_path)
    hold_file = cfg.terminal.data_dir / update.HOLD_NAME

    async def go():
        async with sim_session(cfg) as session:
            assert await hold(cfg) == 0
            data = json.loads(hold_file.read_text())
            data["created"] -= 1000  # its ttl (900 s) has passed: a crashed deploy
            hold_file.write_text(json.dumps(data))
            await play(session, 'expect screen "Key in amount"\n' + SALE_UNTIL_PIN +
                       'expect screen "APPROVED"')
    run_bounded(go())


def test_a_second_terminal_on_the_same_data_dir_is_refused(tmp_path):
    cfg = config(tmp_path)

    async def go():
        async with sim_session(cfg):
            with pytest.raises(StartupFault, match="another terminal is running"):
                async with sim_session(cfg):
                    pass
            second = await asyncio.to_thread(
                kpos, "sim", "--config", str(SIM_TOML), "--data-dir", str(cfg.terminal.data_dir),
                "--script", str(REPO / "tests" / "scenarios" / "approved_sale.kpos"))
            assert second.returncode == 3
            assert "another terminal is running" in second.stderr
    run_bounded(go())
    assert update.terminal_running(cfg.terminal.data_dir) is False  # released at stop


# ---- snapshot and health -----------------------------------------------------------------

def device_args(data) -> list[str]:
    return ["--config", str(SIM_TOML), "--data-dir", str(data)]


def test_health_fails_when_a_queued_item_vanished(tmp_path, capsys):
    cfg = load_config(SIM_TOML, overrides={**sim_overrides(tmp_path), "saf": {"retry_first": 60}})
    run_scenario(cfg, unanswered_sale("drop"))
    data, snap = cfg.terminal.data_dir, tmp_path / "queue.json"
    assert cli.main(["update", "snapshot", *device_args(data), "--out", str(snap)]) == 0
    [item] = json.loads(snap.read_text())["items"]
    assert item["kind"] == "reversal"
    assert cli.main(["health", *device_args(data), "--snapshot", str(snap), "--no-echo"]) == 0
    assert "ok  queue" in capsys.readouterr().out
    db = sqlite3.connect(data / JOURNAL_NAME)
    with db:
        db.execute("DELETE FROM reversal WHERE txn_id = ?", (item["txn_id"],))
    db.close()
    assert cli.main(["health", *device_args(data), "--snapshot", str(snap), "--no-echo"]) == 1
    assert f"FAIL queue: 1 items vanished: reversal txn {item['txn_id']}" in capsys.readouterr().out


def test_health_fails_on_a_corrupt_journal(tmp_path, capsys):
    cfg = config(tmp_path)
    run_scenario(cfg, SALE_UNTIL_PIN + 'expect screen "APPROVED"')
    copy = tmp_path / "copy"
    shutil.copytree(cfg.terminal.data_dir, copy)
    assert cli.main(["health", *device_args(copy), "--no-echo"]) == 0
    capsys.readouterr()
    path = copy / JOURNAL_NAME
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    size = db.execute("PRAGMA page_size").fetchone()[0]
    [(root,)] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'txn'")
    db.close()
    raw = bytearray(path.read_bytes())
    start = (root - 1) * size
    raw[start:start + size] = b"\x5a" * size  # the txn table's root page: garbage
    path.write_bytes(bytes(raw))
    assert cli.main(["health", *device_args(copy), "--no-echo"]) == 1
    assert "FAIL journal integrity" in capsys.readouterr().out


def test_health_echo_ok_next_to_a_running_terminal_and_fails_when_the_host_is_down(tmp_path, capsys):
    cfg = config(tmp_path)

    async def go():
        async with sim_session(cfg) as session:
            await play(session, "expect signon")
            assert await asyncio.to_thread(update.health_command, session.cfg, snapshot=None,
                                           timeout=5, echo=True) == 0
            out = capsys.readouterr().out
            assert "ok  journal integrity" in out and "ok  echo" in out
            stan = await session.terminal.journal_call(lambda j: j.next_stan())
            assert stan >= 3  # sign-on, the health's echo, this one: one counter for both
            await session.acquirer.go_down()
            assert await asyncio.to_thread(update.health_command, session.cfg, snapshot=None,
                                           timeout=5, echo=True) == 1
            assert "FAIL echo: 127.0.0.1:" in capsys.readouterr().out
    run_bounded(go())


# ---- selftest ------------------------------------------------------------------------------

def test_selftest_passes_and_names_a_bad_config(tmp_path):
    passed = kpos("selftest", "--config", str(SIM_TOML))
    assert passed.returncode == 0, passed.stderr
    assert "ok  simulated sale approved" in passed.stdout and "selftest passed in" in passed.stdout
    bad = tmp_path / "terminal.toml"
    bad.write_text(SIM_TOML.read_text().replace("pin_min = 4", "pin_min = 40"))
    failed = kpos("selftest", "--config", str(bad))
    assert failed.returncode == 1
    assert "FAIL config" in failed.stderr and "pin_min" in failed.stderr
