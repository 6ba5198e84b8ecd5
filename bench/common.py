"""What every benchmark shares: a result row and its statistics, the simulator config in a
scratch directory, the acquirer simulator in a process of its own, one sale driven through
the simulated keypad and card reader, and RSS.

Contract: a benchmark is `run(size) -> list[Result]` (bench/run.py calls it); times are
seconds in the samples and shown in the row's unit; amounts are int minor units. Blocking
helpers say so; the async ones run on the caller's loop.
"""
from __future__ import annotations

import os
import select
import statistics
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from firmware.config import Config, load_config
from firmware.flows.types import Key

REPO = Path(__file__).resolve().parent.parent
SIM_TOML = REPO / "config" / "sim.toml"
CARD = "approve"  # the catalog card every sale uses
START_TIMEOUT = 30.0  # s: the acquirer process sends its port within this


@dataclass(frozen=True)
class Size:
    """How big a run is: quick (the smoke test), default (minutes) or long (--long)."""

    name: str  # quick | default | long

    def pick(self, quick: int, default: int, long: int) -> int:
        return {"quick": quick, "default": default, "long": long}[self.name]


@dataclass(frozen=True)
class Target:
    stat: str  # the statistic judged: median | p99 | max
    op: str  # "<" or ">="
    value: float  # in the row's unit

    def met(self, figure: float) -> bool:
        return figure < self.value if self.op == "<" else figure >= self.value

    def __str__(self) -> str:
        return f"{self.stat} {self.op} {self.value:g}"


@dataclass
class Result:
    """One table row. `samples` and `floor` are in the row's unit (scale applied by the maker)."""

    name: str
    unit: str
    samples: list[float]
    floor: float | None = None  # the same work without the terminal, measured in this run
    target: Target | None = None
    note: str = ""
    stats: dict = field(init=False)

    def __post_init__(self) -> None:
        self.stats = summary(self.samples)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.stats[self.target.stat])

    @property
    def ratio(self) -> float | None:
        if not self.floor:
            return None
        return self.stats["median"] / self.floor


def summary(samples: list[float]) -> dict:
    """median, p10, p90, p99, max of the samples (all equal to the one sample when n = 1)."""
    if len(samples) < 2:
        one = samples[0]
        return {"n": 1, "median": one, "p10": one, "p90": one, "p99": one, "max": one}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"n": len(samples), "median": statistics.median(samples), "p10": cuts[9],
            "p90": cuts[89], "p99": cuts[98], "max": max(samples)}


def ms(seconds: list[float]) -> list[float]:
    return [s * 1000 for s in seconds]


def sim_config(tmp: Path, **sections) -> Config:
    """config/sim.toml with its state in `tmp`, operators logged in already. Blocking."""
    overrides = {"terminal": {"data_dir": str(tmp / "data")},
                 "sim": {"ledger": str(tmp / "acquirer.db"), "acquirer_port": 0},
                 "operators": {"login": False}, "log": {"level": "INFO"}}
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_config(SIM_TOML, overrides=overrides)


def rss_mb(pid: int | None = None) -> float:
    """Resident set size in MB (VmRSS from /proc). Blocking: one small file read."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


# The acquirer simulator's process: prints its port, serves until killed.
_HOST = """
import asyncio, sys
from pathlib import Path
from firmware.sim.acquirer import AcquirerSimulator
from firmware.sim.catalog import load_catalog

async def serve():
    sim = AcquirerSimulator(load_catalog(), Path(sys.argv[1]), ledger_thread=False)  # as kpos acquirer
    port = await sim.start("127.0.0.1", 0)
    print(port, flush=True)
    await asyncio.Event().wait()

asyncio.run(serve())
"""


@contextmanager
def acquirer_process(ledger: Path) -> Iterator[tuple[int, int]]:
    """The acquirer simulator in its own process (its CPU is not the terminal's), deciding
    on its loop as `kpos acquirer` does (ledger_thread=False): yields
    (port, pid); killed on exit. Blocking start (up to START_TIMEOUT)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOST, str(ledger)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise RuntimeError("acquirer simulator did not start")
        yield int(line), proc.pid
    finally:
        proc.kill()
        proc.wait()


async def tap_sale(session, amount: int, *, timeout: float = 10.0) -> None:
    """One contactless sale under the CVM limit (no PIN) on a SimSession, back to idle."""
    display, post = session.display, session.terminal.post
    mark = len(display.history)
    for key in [*str(amount), "ENTER"]:
        post(Key(key))
    await display.wait_for("Insert", timeout=timeout, since=mark)
    mark = len(display.history)
    session.reader.tap(CARD)
    await display.wait_for("Take receipts", timeout=timeout, since=mark)
    session.reader.remove()
    mark = len(display.history)
    post(Key("ENTER"))
    await display.wait_for("Key in amount", timeout=timeout, since=mark)


def nproc() -> int:
    return len(os.sched_getaffinity(0))
