"""Benchmark 8: soak. Many transactions through the real process, with faults, restarts,
settlements and journal retention.

The process is `python -m firmware sim --script` (the terminal with simulated peripherals,
the acquirer simulator in the same process, its ledger in the data dir), run on the same
data dir in chunks of `per_chunk` sales; each run is one restart. Every chunk's script has
the same length (a killed chunk does half; more chunks make up the rest): the scenario's
parsed steps live in the process too (~0.1 KB a sale), so the RSS of the first and the
last process compare like with like (a last chunk that did "the rest", twice as long, once
added ~20 MB of script). Config: config/sim.toml with short timeouts
(SOAK_SETTINGS) so faults cost seconds, not minutes. Each chunk's script logs in, then
sells contactless taps (0.10 CNY, no PIN) back to back; every FAULT_EVERY sales a fault:
the host drops one 0200 answer (NO RESPONSE, then a reversal before the next sale), or the
acquirer goes down for DOWN_SALES sales (offline approvals, advices queued) and comes back.
Every `settle_every` sales, right after an outage (the advices it queued go first), the
merchant settles from the menu like a person: Manager > Settlement, the supervisor's
password, ENTER; the queue must be empty once "Settled" shows. [journal] keep_days = 0:
each settlement deletes every settled batch but the one just settled, so the journal stays
bounded by about two batches (one cycle) however long the soak runs.
Restarts: most chunks end with the script (a clean stop); one is killed with SIGKILL and
one with SIGTERM part-way (in --script mode kpos sim installs no SIGTERM handler, so that
is an abrupt stop too). Each chunk goes on from the sales done so far (the schedule of
faults and settlements stays regular, all `total` sales are done); the last one waits for
the queue to be empty.
Measured from outside, event-driven on the process's stdout (each sale ends with the
script's "ok ... Key in amount" line): the time per sale and the process's RSS at those
lines; the journal's size (its pages, WAL included: journal.db alone lags until a
checkpoint) and free pages through a read-only connection at the first sale, every
SAMPLES-th of a cycle and at each "Settled" line. Rows compare the first and last tenth;
the journal's size at the start, the middle and the end is judged against the size after
the first settlement plus one cycle's growth (the bound retention should keep).
`kpos sim` keeps the newest 1,000 screens and receipt files only (cli.SIM_SCREENS,
SIM_RECEIPTS), so neither its memory nor the data dir grows with the sales.
Blocking.
"""
from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO, SIM_TOML, Result, Size, Target, rss_mb
from firmware.sim.powercut import SETTLE_KEYS

__all__ = ["run"]

FAULT_EVERY = 100  # sales between faults (alternating: dropped answer, acquirer down)
DOWN_SALES = 3  # sales while the acquirer is down
END_OF_SALE = re.compile(r"^ok  line \d+: expect screen Key in amount")
SETTLED = re.compile(r"^ok  line \d+: expect screen Settled")
FAULT = re.compile(r"^ok  line \d+: (fault drop|acquirer down)")
SAMPLES = 4  # journal size samples per settlement cycle
BOUND_SLACK = 1.1  # the journal's bound: (after the 1st settlement + 1st cycle's growth) x this
LEAST_CYCLE = 0.0625  # MB: a first cycle that grew the journal less is not judged (page granularity)
SOAK_SETTINGS = {  # (section, key) -> value written over config/sim.toml's
    ("acquirer", "connect_timeout"): "1.0", ("acquirer", "response_timeout"): "1.0",
    ("saf", "retry_first"): "0.5", ("saf", "retry_max"): "2", ("journal", "keep_days"): "0",
    ("settlement", "max_batch_txns"): "999",  # the batch-full rule must not stop a --long cycle
}
PATHS = ("capk_file", "products", "tmk_file")  # relative in sim.toml: made absolute
SALE = ["keys 10 ENTER", 'expect screen "Insert"', "tap approve",
        'expect screen "{outcome}" within 30', "remove", "keys ENTER",
        'expect screen "Key in amount" within 30']
SETTLE = [f"keys {' '.join(SETTLE_KEYS)}", 'expect screen "Settle batch?"',  # the supervisor
          "keys ENTER", 'expect screen "Settled" within 60', "expect queue 0", "keys ENTER",
          'expect screen "Key in amount" within 30']


@dataclass
class _Soak:
    """What the chunks saw: per sale (seconds, RSS MB); per settlement (seconds from the last
    sale to idle again, journal MB); journal samples (sales so far, MB, free pages)."""

    sample_every: int  # sales between journal samples
    sales: list[tuple] = field(default_factory=list)
    journal: list[tuple] = field(default_factory=list)
    settlements: list[tuple] = field(default_factory=list)
    faults: int = 0


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


def _script(sales: int, first: int, last_chunk: bool, settle_every: int) -> tuple[str, set[int]]:
    """One chunk: login, `sales` sales numbered from `first` (sales done before: the fault
    and settlement schedule); and the numbers of the sales of each step a settlement
    follows (an outage's sales when it ends one). An outage's DOWN_SALES sales count as
    that many, so the numbers are the sales the harness counts and a settlement falls
    every `settle_every` of them whatever the chunk boundaries (counting an outage as one
    once let the numbers drift 50 a chunk, until a chunk boundary skipped a settlement
    and the batch filled)."""
    lines = ["login 01 0000", 'expect screen "Key in amount" within 60']
    settle_after: set[int] = set()
    n, end = first, first + sales
    while n < end:
        fault = n % FAULT_EVERY == FAULT_EVERY - 1
        if fault and n // FAULT_EVERY % 2 == 0:
            lines += ["fault drop times 1 mti 0200",
                      *(s.format(outcome="NO RESPONSE") for s in SALE)]
            done = 1
        elif fault:
            done = min(DOWN_SALES, end - n)
            lines.append("acquirer down")
            for _ in range(done):
                lines += [s.format(outcome="Take receipts") for s in SALE]
            lines.append("acquirer up")
        else:
            lines += [s.format(outcome="Take receipts") for s in SALE]
            done = 1
        if (n + done) // settle_every > n // settle_every:
            lines += SETTLE
            settle_after.update(range(n + 1, n + done + 1))  # an outage's sales, then it
        n += done
    if last_chunk:
        lines.append("expect queue 0 within 120")
    return "\n".join(lines) + "\n", settle_after


def _journal(data: Path) -> tuple[float, int]:
    """(MB, free pages) of the journal as the terminal sees it (its WAL included), through a
    read-only connection that never writes or checkpoints. Blocking."""
    db = sqlite3.connect(f"file:{data / 'journal.db'}?mode=ro", uri=True)
    try:
        pages, free, size = (db.execute(f"PRAGMA {name}").fetchone()[0]
                             for name in ("page_count", "freelist_count", "page_size"))
    finally:
        db.close()
    return pages * size / 2**20, free


def _chunk(soak: _Soak, config: Path, data: Path, script: Path, stop_after: int | None,
           sig: int, settle_after: set[int]) -> None:
    """Run one process, adding what it did to `soak`. With `stop_after`, send `sig` after
    that many sales (a restart in the middle of the chunk; a sale or two more may be done,
    not counted, and one may be cut: the next start recovers it), but never between a sale
    in `settle_after` and its settlement (the next chunk would not settle again, and the
    batch would hold two cycles: an outage's first sale, killed, once lost a settlement)."""
    err = script.with_suffix(".err")
    with err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "firmware", "sim", "--config", str(config),
                                 "--data-dir", str(data), "--script", str(script)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    sales, last, settled, passed = 0, None, None, ""
    try:
        for line in proc.stdout:
            passed = line.strip() if line.startswith("ok  ") else passed
            if line.startswith("ok  line 2:"):  # logged in, idle: the clock starts
                last = time.perf_counter()
            elif SETTLED.match(line):
                settled = _journal(data)
            elif END_OF_SALE.match(line) and last is not None:
                now = time.perf_counter()
                if settled is not None:  # idle again after the settlement
                    soak.settlements.append((now - last, *settled))
                    settled = None
                else:
                    soak.sales.append((now - last, rss_mb(proc.pid)))
                    sales += 1
                    if len(soak.sales) % soak.sample_every == 1:
                        soak.journal.append((len(soak.sales), *_journal(data)))
                last = now
                if (stop_after is not None and sales >= stop_after
                        and len(soak.sales) not in settle_after):
                    proc.send_signal(sig)
                    break  # what it still prints is not measured (RSS of a dead process)
            elif FAULT.match(line):
                soak.faults += 1
    finally:
        code = proc.wait()
    if code != 0 and (stop_after is None or sales < stop_after):
        kept = Path(tempfile.mkdtemp(prefix="kpos-soak-failed-"))
        shutil.copytree(script.parent, kept, dirs_exist_ok=True)  # data dir, scripts, stderr
        why = "\n".join(err.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"soak chunk {script.name}: exit status {code}, last passed: "
                           f"{passed!r}; everything kept in {kept}; its stderr ends:\n{why}")


def run(size: Size) -> list[Result]:
    total, per_chunk = size.pick(60, 2000, 100_000), size.pick(20, 400, 5000)
    # A multiple of 2 * FAULT_EVERY (after an outage), and a batch under 1,000 sales: the
    # 0500's field 48 counts debits in 3 digits (the batch-full rule, max_batch_txns, at most
    # 999, refuses more; the soak sets it to 999).
    settle_every = size.pick(12, 400, 800)
    kills = {1: signal.SIGKILL, 3: signal.SIGTERM}  # chunk -> signal half-way
    soak = _Soak(sample_every=max(1, settle_every // SAMPLES))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config, data = _config(tmp), tmp / "data"
        c = 0
        while (done := len(soak.sales)) < total:  # every chunk's script the same length
            sales = min(per_chunk, total - done)
            # killed half-way unless that would end the soak (the last chunk drains the queue)
            stop_after = per_chunk // 2 if c in kills and done + per_chunk // 2 < total else None
            last = done + sales == total and stop_after is None
            script = tmp / f"chunk{c}.kpos"
            text, settle_after = _script(sales, done, last, settle_every)
            script.write_text(text)
            _chunk(soak, config, data, script, stop_after, kills.get(c, signal.SIGTERM),
                   settle_after)
            c += 1
        soak.journal.append((len(soak.sales), *_journal(data)))  # all stopped: the file's size
    chunks = c
    points = soak.sales
    tenth = max(1, len(points) // 10)
    head, tail = points[:tenth], points[-tenth:]
    t_head = statistics.median(p[0] for p in head) * 1000
    note = (f"{len(points)} sales done, {chunks} processes ({chunks - 1} restarts, SIGKILL and "
            f"SIGTERM mid-chunk), {soak.faults} faults (one every {FAULT_EVERY} sales), "
            f"{len(soak.settlements)} settlements (every {settle_every} sales)")
    rows = [
        Result(f"soak: time per sale, first {tenth}", "ms", [p[0] * 1000 for p in head], note=note),
        Result(f"soak: time per sale, last {tenth}", "ms", [p[0] * 1000 for p in tail], floor=t_head,
               note="floor: the first tenth's median"),
        Result("soak: process RSS, start -> end", "MB", [head[0][1], tail[-1][1]],
               target=Target("max", "<", 80.0), note=f"start {head[0][1]:.1f}, end {tail[-1][1]:.1f}"),
        *_journal_rows(soak),
    ]
    if soak.settlements:
        rows.append(Result("soak: settlement, menu to idle (SAF flushed first, 0500, report)", "ms",
                           [s[0] * 1000 for s in soak.settlements]))
    return rows


def _journal_rows(soak: _Soak) -> list[Result]:
    """The journal at the start, the middle and the end; once settled, the largest seen is
    judged against the size after the first settlement plus the first cycle's growth."""
    samples = [soak.journal[0], soak.journal[len(soak.journal) // 2], soak.journal[-1]]
    sizes = [s[1] for s in samples]
    rows = [Result("soak: journal size, start / middle / end", "MB", sizes,
                   note=f"at sales {samples[0][0]}, {samples[1][0]}, {samples[2][0]}; "
                        f"{samples[2][2]} free pages at the end (freed pages are reused; "
                        "no VACUUM: the file never shrinks)")]
    first = soak.settlements[0][1] if soak.settlements else sizes[0]
    if first - sizes[0] < LEAST_CYCLE:
        return rows  # too few sales per settlement to judge at page granularity
    bound = (first + (first - sizes[0])) * BOUND_SLACK
    most = max(s[1] for s in soak.journal + soak.settlements)
    return rows + [Result("soak: journal size, largest seen", "MB", [most],
                          target=Target("max", "<", round(bound, 3)),
                          note=f"bound: {first:.3f} after the 1st settlement + the first cycle's "
                               f"growth, +{BOUND_SLACK - 1:.0%}")]
