"""Benchmark 4: cold start to READY, and the import time of firmware.app.

Start: `python -m firmware sim --script` (simulated peripherals, the acquirer simulator in
the process) with NOTIFY_SOCKET set to a datagram socket standing in for systemd, as
tests/test_boot.py does; the time from spawning the process to the READY=1 datagram. The
data dir is kept between starts (a reboot: journal, keys and operators exist; the first
start, which creates them, is not counted). Floor: `python -c pass`. Import: the cumulative
time of firmware.app under `python -X importtime`, fresh process each time.
Blocking; each start is killed once READY arrives.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, SIM_TOML, Result, Size, Target, ms

__all__ = ["run"]

READY_TIMEOUT = 30.0  # s
SCRIPT = 'expect screen "Key in amount" within 30\nexpect queue 0 within 600\n'  # stays up


def _start_once(tmp: Path) -> float:
    """Seconds from spawn to READY=1."""
    path = tmp / "notify"
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(READY_TIMEOUT)
        env = {**os.environ, "NOTIFY_SOCKET": str(path)}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "firmware", "sim", "--config", str(SIM_TOML),
                                 "--data-dir", str(tmp / "data"), "--script", str(tmp / "idle.kpos")],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while "READY=1" not in sock.recv(4096).decode():
                pass
            return time.perf_counter() - t0
        finally:
            proc.kill()
            proc.wait()


def _interpreter_once() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def _import_once() -> float:
    """Seconds: firmware.app's cumulative import time (microseconds in the report)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import firmware.app"], cwd=REPO,
                         capture_output=True, text=True, check=True).stderr
    line = next(line for line in out.splitlines() if line.rstrip().endswith("| firmware.app"))
    return int(line.split("|")[1]) / 1e6


def run(size: Size) -> list[Result]:
    n = size.pick(2, 7, 15)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "idle.kpos").write_text(SCRIPT)
        _start_once(tmp)  # first start: creates the journal, vault key, operators
        starts = [_start_once(tmp) for _ in range(n)]
    floor = statistics.median(_interpreter_once() for _ in range(n))
    imports = [_import_once() for _ in range(n)]
    return [
        Result("cold start to READY (kpos sim)", "ms", ms(starts), floor=floor * 1000,
               target=Target("median", "<", 1500.0), note="floor: python -c pass"),
        Result("  import firmware.app (-X importtime)", "ms", ms(imports)),
    ]
