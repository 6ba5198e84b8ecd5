"""Issue 8, "what it must show": a whole merchant day run as the real process (`kpos sim
--script tests/scenarios/secrets_day.txt`, two runs on one data dir), then every file the
terminal left in its data dir (DEBUG log file, journal .db/-wal/-shm, every receipt's
ESC/POS bytes and preview text, operator store, keys) and both runs' stdout/stderr are
scanned for every catalog card's full PAN (digits, spaced by 4, BCD, hex text), its track 2
equivalent data, the PIN blocks the acquirer received (captured by the simulator's
KPOS_SIM_PIN_BLOCKS hook; raw, hex) and the clear ISO 9564 format 0 blocks of the PINs
typed: none found.

Rendered screens: with --script the console display prints every screen to stdout, so the
stdout scan covers every screen shown (a graphic display draws its image from the same
Screen text). Excluded, and why: the host's side (acquirer ledger, the PIN block record),
kept outside the data dir; the script runner's "ok  line N: ..." trace lines, which echo
the test's own input (the keyed card number) and are checked to be exact echoes. The
catalog has no CVV/CVN; the track 2 discretionary data is covered by the track 2 forms.
"""
from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from string import Template

import pytest

from firmware.journal import JOURNAL_NAME
from firmware.sim.acquirer import PIN_BLOCKS_ENV
from firmware.sim.catalog import load_catalog

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "tests" / "scenarios" / "secrets_day.txt"
RUN_2 = re.compile(r"^# ==== run 2\b.*\n", re.MULTILINE)  # the scenario's split line
TRACE = re.compile(r"^ok  line \d+: (.*)$")  # the script runner's echo of a step it ran
# `kpos sim --script` logs at INFO; the loggers' own level lifts it to DEBUG (basicConfig
# only sets the root's), so the entry point is the same main() as `python -m firmware`.
LAUNCH = ("import logging, sys; from firmware.cli import main; "
          "[logging.getLogger(name).setLevel(logging.DEBUG) for name in ('kpos', 'firmware')]; "
          "sys.exit(main())")
# [section] key = value lines of config/sim.toml the day runs with
SETTINGS = {("acquirer", "response_timeout"): "2.0", ("saf", "retry_first"): "0.2",
            ("saf", "retry_max"): "1.0", ("wallet", "poll_interval"): "0.2"}


# ---- what to hunt for -----------------------------------------------------------------

def pan_forms(pan: str) -> list[bytes]:
    """A PAN as it could sit in a file: digits, spaced every 4, BCD (F-padded), the hex
    text of its ASCII."""
    spaced = " ".join(pan[i:i + 4] for i in range(0, len(pan), 4))
    padded = pan + "F" * (len(pan) % 2)
    return [pan.encode(), spaced.encode(), bytes.fromhex(padded), pan.encode().hex().encode(),
            pan.encode().hex().upper().encode()]


def track2_forms(pan: str, expiry: str) -> list[bytes]:
    """Track 2 equivalent data: magstripe "PAN=YYMM", chip (57) "PANDYYMM" as hex text."""
    return [f"{pan}={expiry}".encode(), f"{pan}D{expiry}".encode(), f"{pan}d{expiry}".encode()]


def block_forms(block: bytes) -> list[bytes]:
    return [block, block.hex().encode(), block.hex().upper().encode()]


def clear_pin_block(pin: str, pan: str) -> bytes:
    """ISO 9564 format 0 before encryption: PIN field XOR PAN field."""
    pin_field = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    return bytes(a ^ b for a, b in zip(pin_field, pan_field))


def secrets(pin_blocks: list[bytes]) -> dict[bytes, str]:
    """Every pattern to hunt for -> a PAN-free name for it (what a failure may print)."""
    found: dict[bytes, str] = {}
    for card in load_catalog().cards.values():
        for form in pan_forms(card.pan):
            found[form] = f"PAN of {card.name}"
        for form in track2_forms(card.pan, card.expiry):
            found[form] = f"track 2 of {card.name}"
        for form in block_forms(clear_pin_block(card.pin, card.pan)):
            found[form] = f"clear PIN block of {card.name}"
    for number, block in enumerate(pin_blocks):
        for form in block_forms(block):
            found[form] = f"PIN block #{number}"
    return found


def scan(blobs: dict[str, bytes], hunted: dict[bytes, str]) -> list[str]:
    """'<what> in <where>' for every hunted pattern found in any blob."""
    return [f"{what} in {where}" for where, blob in blobs.items()
            for pattern, what in hunted.items() if pattern in blob]


# ---- the day ----------------------------------------------------------------------------

def set_key(text: str, section: str, key: str, value: str) -> str:
    """`text` with `key = ...` of [section] set to `value` (ValueError when not there)."""
    pattern = re.compile(rf"(^\[{re.escape(section)}\]\n(?:(?!\[).*\n)*?){re.escape(key)} = .*$",
                         re.MULTILINE)
    new, count = pattern.subn(lambda m: f"{m.group(1)}{key} = {value}", text)
    if count != 1:
        raise ValueError(f"[{section}] {key} not found once in config/sim.toml")
    return new


def day_config(tmp_path: Path, data: Path, host: Path) -> Path:
    """config/sim.toml with SETTINGS, the log file in the data dir and the host's ledger
    outside it; beside it, links to the files it names (paths are relative to it)."""
    folder = tmp_path / "config"
    folder.mkdir()
    for item in (REPO / "config").iterdir():
        if item.name != "sim.toml":
            (folder / item.name).symlink_to(item)
    text = (REPO / "config" / "sim.toml").read_text(encoding="utf-8")
    settings = {**SETTINGS, ("log", "file"): f'"{data / "kpos.log"}"',
                ("sim", "ledger"): f'"{host / "acquirer.db"}"'}
    for (section, key), value in settings.items():
        text = set_key(text, section, key, value)
    (folder / "sim.toml").write_text(text, encoding="utf-8")
    return folder / "sim.toml"


def run_day_part(config: Path, data: Path, script: str, name: Path, host: Path):
    name.write_text(script, encoding="utf-8")
    env = {**os.environ, PIN_BLOCKS_ENV: str(host / "pin_blocks.txt")}
    done = subprocess.run([sys.executable, "-c", LAUNCH, "sim", "--config", str(config),
                           "--data-dir", str(data), "--script", str(name)],
                          cwd=REPO, env=env, capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done


def journal_rows(data: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{data / JOURNAL_NAME}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(
            "SELECT t.kind, t.amount, t.stan, t.rrn, t.auth_code, t.created_at, t.status, "
            "t.masked_pan, r.status AS reversal, a.status AS advice FROM txn t "
            "LEFT JOIN reversal r ON r.txn_id = t.id LEFT JOIN advice a ON a.txn_id = t.id "
            "ORDER BY t.id").fetchall()
    finally:
        db.close()


def run_2_values(rows: list[sqlite3.Row]) -> dict[str, str]:
    def one(kind: str, amount: int) -> sqlite3.Row:
        [row] = [r for r in rows if r["kind"] == kind and r["amount"] == amount]
        return row

    def mmdd(row) -> str:
        return datetime.fromisoformat(row["created_at"]).strftime("%m%d")

    voided, tapped, held = one("sale", 2000), one("sale", 5000), one("preauth", 20000)
    return {"void_stan": str(voided["stan"]), "refund_rrn": tapped["rrn"],
            "refund_mmdd": mmdd(tapped), "auth_code": held["auth_code"], "preauth_mmdd": mmdd(held)}


def untraced(out: bytes, script: str) -> bytes:
    """stdout without the runner's step trace lines, each checked to echo a script line."""
    steps = {" ".join(shlex.split(line, comments=True)) for line in script.splitlines()}
    kept = []
    for line in out.decode("utf-8").splitlines(keepends=True):
        trace = TRACE.match(line.rstrip("\n"))
        if trace:
            assert trace[1] in steps, f"trace line is no echo of a step: {line!r}"
        else:
            kept.append(line)
    return "".join(kept).encode("utf-8")


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """Run the day; (output blobs by name, PIN blocks the host received, journal rows)."""
    tmp = tmp_path_factory.mktemp("day")
    data, host = tmp / "data", tmp / "host"
    data.mkdir(mode=0o700)
    host.mkdir()
    config = day_config(tmp, data, host)
    first, second = RUN_2.split(SCENARIO.read_text(encoding="utf-8"))
    outputs = {"run 1": (run_day_part(config, data, first, tmp / "run1.txt", host), first)}
    second = Template(second).substitute(run_2_values(journal_rows(data)))
    outputs["run 2"] = (run_day_part(config, data, second, tmp / "run2.txt", host), second)
    blobs = {}
    for run, (done, script) in outputs.items():
        blobs[f"{run} stdout"] = untraced(done.stdout, script)
        blobs[f"{run} stderr"] = done.stderr
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        blobs[str(path.relative_to(data))] = path.read_bytes()
    pin_blocks = [bytes.fromhex(line) for line in
                  (host / "pin_blocks.txt").read_text(encoding="ascii").split()]
    return blobs, pin_blocks, journal_rows(data)


def test_the_day_did_everything_it_is_meant_to(day):
    blobs, pin_blocks, rows = day
    kinds = {(r["kind"], r["status"]) for r in rows}
    for done in (("sale", "APPROVED"), ("void", "APPROVED"), ("refund", "APPROVED"),
                 ("preauth", "APPROVED"), ("completion", "APPROVED"), ("balance", "APPROVED"),
                 ("qr_sale", "APPROVED"), ("sale", "REVERSED")):
        assert done in kinds, f"no {done} in the journal: {sorted(kinds)}"
    assert [r["advice"] for r in rows if r["advice"]] == ["ACKED"]  # the offline sale, forwarded
    masked = {r["masked_pan"] for r in rows if r["masked_pan"]}
    assert masked >= {"622609******0014", "476173******0011", "622609******0196"}
    # a PIN typed 6 times: two chip sales, the swipe, the pre-auth, the balance, the reversed sale
    assert len(pin_blocks) == 6
    assert b"DEBUG" in blobs["kpos.log"] and b"Settled" in blobs["run 2 stdout"]
    receipts = [name for name in blobs if name.startswith("receipts/")]
    assert any(name.endswith(".bin") for name in receipts)
    assert any(b"622609******0014" in blobs[name] for name in receipts if name.endswith(".txt"))
    assert {JOURNAL_NAME, "kpos.log"} <= set(blobs)


def test_no_pan_track_pin_or_pin_block_anywhere_after_the_day(day):
    blobs, pin_blocks, _ = day
    assert scan(blobs, secrets(pin_blocks)) == []


@pytest.mark.parametrize("plant", ["pan", "spaced", "bcd", "track2", "pin_block", "pin_hex",
                                   "clear_block"])
def test_the_scanner_finds_what_is_planted_in_a_copy_of_a_file(day, plant):
    blobs, pin_blocks, _ = day
    card = load_catalog().cards["approve"]
    planted = {"pan": card.pan.encode(), "spaced": pan_forms(card.pan)[1],
               "bcd": bytes.fromhex(card.pan), "track2": f"{card.pan}={card.expiry}".encode(),
               "pin_block": pin_blocks[0], "pin_hex": pin_blocks[0].hex().upper().encode(),
               "clear_block": clear_pin_block(card.pin, card.pan)}[plant]
    journal = blobs[JOURNAL_NAME]
    middle = len(journal) // 2
    copy = {"copy of journal": journal[:middle] + planted + journal[middle:]}
    assert scan(copy, secrets(pin_blocks)), f"planted {plant} not found"
