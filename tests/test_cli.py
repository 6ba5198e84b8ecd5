"""The kpos command as a developer runs it: scenario mode, the console, config errors."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def kpos(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, **kw)


def test_sim_script_passes(tmp_path):
    done = kpos("sim", "--script", "tests/scenarios/approved_sale.kpos", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "scenario passed" in done.stdout
    assert len(list((tmp_path / "receipts").glob("*.bin"))) == 2


def test_sim_script_failure_exits_1(tmp_path):
    script = tmp_path / "bad.kpos"
    script.write_text('keys 5\nexpect screen "NEVER SHOWN" within 0.3\n')
    done = kpos("sim", "--script", str(script), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1
    assert "line 2" in done.stderr and "NEVER SHOWN" in done.stderr


def test_config_error_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    text = (REPO / "config" / "sim.toml").read_text().replace("[acquirer]", "[acquirer]\nprot = 1", 1)
    bad.write_text(text)
    (tmp_path / "sim-tmk.key").write_text((REPO / "config" / "sim-tmk.key").read_text())
    done = kpos("sim", "--config", str(bad))
    assert done.returncode == 2
    assert "prot" in done.stderr and "port" in done.stderr


def _read_until(proc: subprocess.Popen, text: str, timeout: float) -> str:
    """Read the child's stdout until `text` shows up; select() waits, nothing sleeps."""
    seen = ""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise AssertionError(f"{text!r} not seen within {timeout} s; output:\n{seen}")
        chunk = os.read(proc.stdout.fileno(), 65536).decode()
        if not chunk:
            raise AssertionError(f"kpos exited before {text!r}; output:\n{seen}")
        seen += chunk
    return seen


def test_console_sale_then_sigterm(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "firmware", "sim", "--data-dir", str(tmp_path)],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _read_until(proc, "Operator no.", 30)
        proc.stdin.write("01\n0000\n")  # the default cashier logs in
        proc.stdin.flush()
        _read_until(proc, "Key in amount", 30)
        proc.stdin.write("1250\ninsert approve\n")
        proc.stdin.flush()
        _read_until(proc, "Enter PIN", 30)
        proc.stdin.write("1234\n")
        proc.stdin.flush()
        out = _read_until(proc, "Take receipts", 30)
        assert "CNY 12.50" in out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(list((tmp_path / "receipts").glob("*.txt"))) == 2


def test_console_quit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "firmware", "sim", "--data-dir", str(tmp_path)],
                          cwd=REPO, input="cards\nquit\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "approve" in proc.stdout and "no_response" in proc.stdout


def test_queue_lists_and_acknowledges_operator_alerts(tmp_path):
    from firmware.emv.card import ENTRY_CONTACTLESS, CardData
    from firmware.journal import JOURNAL_NAME, Journal
    from firmware.vault import Vault
    from tests.test_journal_saf import advice_for

    missing = kpos("queue", "--config", "config/sim.toml", "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert not (tmp_path / JOURNAL_NAME).exists()  # never created by looking
    card = CardData(pan="6226090000000014", expiry="3012", pan_seq="", track2="", aid="",
                    app_label="", icc_data=b"", entry_mode=ENTRY_CONTACTLESS)
    journal = Journal(tmp_path / JOURNAL_NAME, Vault.open(tmp_path / "keys" / "vault.key"))
    try:
        ids = []
        for amount in (5000, 700):
            stan = journal.next_stan()
            ids.append(journal.record_offline_approval(
                kind="sale", stan=stan, batch=1, amount=amount, currency=156, card=card,
                advice=advice_for(stan, amount), code="00"))
        journal.record_advice_results([(ids[0], "51", False)])
    finally:
        journal.close()
    shown = kpos("queue", "--config", "config/sim.toml", "--data-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "queued: 0 reversal(s), 1 advice(s) totalling CNY 7.00" in shown.stdout
    assert "alerts: 1" in shown.stdout and "advice declined" in shown.stdout
    assert "code 51" in shown.stdout and "CNY 50.00" in shown.stdout
    assert "6226090000000014" not in shown.stdout + shown.stderr
    acked = kpos("queue", "--config", "config/sim.toml", "--data-dir", str(tmp_path), "--ack")
    assert "acknowledged: 1" in acked.stdout
    again = kpos("queue", "--config", "config/sim.toml", "--data-dir", str(tmp_path))
    assert "alerts: 0" in again.stdout
