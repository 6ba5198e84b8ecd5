"""Benchmark 8: soak. Many transactions through the real process, with faults and restarts.

The process is `python -m firmware sim --script` (the terminal with simulated peripherals,
the acquirer simulator in the same process, its ledger in the data dir), run CHUNKS times
on the same data dir; each run is one restart. Config: config/sim.toml with short timeouts
(SOAK_SETTINGS) so faults cost seconds, not minutes. Each chunk's script logs in, then
sells contactless taps (0.10 CNY, no PIN) back to back; every FAULT_EVERY sales a fault:
the host drops one 0200 answer (NO RESPONSE, then a reversal before the next sale), or the
acquirer goes down for DOWN_SALES sales (offline approvals, advices queued) and comes back.
Restarts: most chunks end with the script (a clean stop); one is killed with SIGKILL and
one with SIGTERM part-way (in --script mode kpos sim installs no SIGTERM handler, so that
is an abrupt stop too). The last chunk waits for the queue to be empty.
Measured from outside, event-driven on the process's stdout (each sale ends with the
script's "ok ... Key in amount" line): the time per sale, the process's RSS and the
journal's size (journal.db + -wal) at those lines. Rows compare the first and last tenth.
Note: the simulator's RecordingDisplay keeps every screen shown (a test aid), so the
process's RSS grows with it; `memory` measures the terminal without it.
Blocking.
"""
from __future__ import annotations

import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, SIM_TOML, Result, Size, Target, rss_mb

__all__ = ["run"]

FAULT_EVERY = 100  # sales between faults (alternating: dropped answer, acquirer down)
DOWN_SALES = 3  # sales while the acquirer is down
END_OF_SALE = re.compile(r"^ok  line \d+: expect screen Key in amount")
SOAK_SETTINGS = {  # (section, key) -> value written over config/sim.toml's
    ("acquirer", "connect_timeout"): "1.0", ("acquirer", "response_timeout"): "1.0",
    ("saf", "retry_first"): "0.5", ("saf", "retry_max"): "2",
}
PATHS = ("capk_file", "products", "tmk_file")  # relative in sim.toml: made absolute
SALE = ["keys 10 ENTER", 'expect screen "Insert"', "tap approve",
        'expect screen "{outcome}" within 30', "remove", "keys ENTER",
        'expect screen "Key in amount" within 30']


def _config(tmp: Path) -> Path:
    """config/sim.toml with SOAK_SETTINGS, absolute paths, data in `tmp`."""
    section, out = "", []
    for line in SIM_TOML.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        key = line.split(" = ")[0] if " = " in line and not line.startswith("#") else None
        if (section, key) in SOAK_SETTINGS:
            line = f"{key} = {SOAK_SETTINGS[section, key]}"
        elif key in PATHS:
            line = f'{key} = "{SIM_TOML.parent / line.split(" = ")[1].strip(chr(34))}"'
        elif (section, key) == ("backup", "dir"):
            line = f'dir = "{tmp / "backups"}"'
        out.append(line)
    path = tmp / "soak.toml"
    path.write_text("\n".join(out) + "\n")
    return path


def _script(sales: int, first: int, last_chunk: bool) -> str:
    """One chunk: login, `sales` sales (numbered from `first` for the fault schedule)."""
    lines = ["login 01 0000", 'expect screen "Key in amount" within 60']
    for n in range(first, first + sales):
        fault = n % FAULT_EVERY == FAULT_EVERY - 1
        if fault and n // FAULT_EVERY % 2 == 0:
            lines += ["fault drop times 1 mti 0200",
                      *(s.format(outcome="NO RESPONSE") for s in SALE)]
        elif fault:
            lines.append("acquirer down")
            for _ in range(DOWN_SALES):
                lines += [s.format(outcome="Take receipts") for s in SALE]
            lines.append("acquirer up")
        else:
            lines += [s.format(outcome="Take receipts") for s in SALE]
    if last_chunk:
        lines.append("expect queue 0 within 120")
    return "\n".join(lines) + "\n"


def _journal_mb(data: Path) -> float:
    """journal.db alone: the -wal file is reused after each checkpoint (up to ~4 MB)."""
    return (data / "journal.db").stat().st_size / 2**20


def _chunk(config: Path, data: Path, script: Path, stop_after: int | None, sig: int) -> list[tuple]:
    """Run one process; [(seconds for the sale, RSS MB, journal MB)] per sale ended. With
    `stop_after`, send `sig` after that many sales (a restart in the middle of the chunk)."""
    proc = subprocess.Popen([sys.executable, "-m", "firmware", "sim", "--config", str(config),
                             "--data-dir", str(data), "--script", str(script)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    points, last = [], None
    try:
        for line in proc.stdout:
            if line.startswith("ok  line 2:"):  # logged in, idle: the clock starts
                last = time.perf_counter()
            elif END_OF_SALE.match(line) and last is not None:
                now = time.perf_counter()
                points.append((now - last, rss_mb(proc.pid), _journal_mb(data)))
                last = now
                if stop_after is not None and len(points) == stop_after:
                    proc.send_signal(sig)
            elif line.startswith("scenario failed"):
                raise RuntimeError(f"soak chunk {script.name}: {line.strip()}")
    finally:
        code = proc.wait()
    if stop_after is None and code != 0:
        raise RuntimeError(f"soak chunk {script.name}: exit status {code}")
    return points


def run(size: Size) -> list[Result]:
    total, chunks = size.pick(60, 2000, 100_000), size.pick(3, 5, 20)
    per_chunk = total // chunks
    kills = {1: signal.SIGKILL, 3 % chunks: signal.SIGTERM}  # chunk -> signal half-way
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config, data, points = _config(tmp), tmp / "data", []
        for c in range(chunks):
            script = tmp / f"chunk{c}.kpos"
            script.write_text(_script(per_chunk, c * per_chunk, c == chunks - 1))
            stop_after = per_chunk // 2 if c in kills and c != chunks - 1 else None
            points += _chunk(config, data, script, stop_after, kills.get(c, signal.SIGTERM))
    tenth = max(1, len(points) // 10)
    head, tail = points[:tenth], points[-tenth:]
    t_head = statistics.median(p[0] for p in head) * 1000
    note = (f"{len(points)} sales done, {chunks} processes ({chunks - 1} restarts, SIGKILL and "
            f"SIGTERM mid-chunk), a fault every {FAULT_EVERY} sales")
    return [
        Result(f"soak: time per sale, first {tenth}", "ms", [p[0] * 1000 for p in head], note=note),
        Result(f"soak: time per sale, last {tenth}", "ms", [p[0] * 1000 for p in tail], floor=t_head,
               note="floor: the first tenth's median"),
        Result("soak: process RSS, start -> end", "MB", [head[0][1], tail[-1][1]],
               target=Target("max", "<", 80.0), note=f"start {head[0][1]:.1f}, end {tail[-1][1]:.1f}"),
        Result("soak: journal size, start -> end", "MB", [head[0][2], tail[-1][2]],
               note=f"{(tail[-1][2] - head[0][2]) * 2**20 / max(1, len(points)):.0f} bytes/sale; "
                    "keep_days retention prunes at settlement"),
    ]
