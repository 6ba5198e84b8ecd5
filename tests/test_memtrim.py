"""firmware.memtrim (glibc arenas and malloc_trim), the terminal's trim at idle, and the
simulated printer's bounded list of printed receipts."""
from __future__ import annotations

import asyncio
import platform
import re
from pathlib import Path

import pytest

from firmware import memtrim
from firmware.hal import printer_sim
from firmware.hal.printer_sim import SimPrinter
from firmware.sim.runner import sim_session
from firmware.sim.script import parse_script, run_script

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _rss_kb() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


@pytest.fixture
def fresh_lookup(monkeypatch):
    """memtrim looks the C library up again (and the test's changes are undone after)."""
    monkeypatch.setattr(memtrim, "_libc", False)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_trim_gives_freed_heap_memory_back(fresh_lookup):
    chunks = [bytearray(64 * 1024) for _ in range(400)]  # 25 MB in the heap, under mmap's threshold
    for chunk in chunks:
        chunk[::4096] = b"\1" * len(chunk[::4096])  # touched: resident
    keep = chunks[-1]  # the top chunk stays, so free() alone cannot shrink the heap
    del chunks
    before = _rss_kb()
    assert memtrim.trim() is True
    assert before - _rss_kb() > 10_000  # kB: most of the 25 MB went back to the OS
    del keep


_BIG_BUFFERS = """
import re, sys
from pathlib import Path
from firmware import memtrim
if sys.argv[1] == "capped":
    assert memtrim.cap_mmap_threshold() is True
def rss_kb():
    return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
base = rss_kb()
for _ in range(3):  # a password check's scrypt buffer, three logins
    buffer = b"\\1" * (16 << 20)
    del buffer
print(rss_kb() - base)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.parametrize("mode, stays", [("capped", False), ("default", True)])
def test_big_buffers_are_unmapped_when_freed_once_the_threshold_is_capped(mode, stays):
    """glibc's sliding threshold keeps the second 16 MB buffer in the heap (resident);
    capped, each is mapped and unmapped. The default run shows the check can fail."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _BIG_BUFFERS, mode], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    grew_kb = int(out.stdout.split()[-1])
    assert (grew_kb > 12_000) is stays, grew_kb
    with pytest.raises(ValueError):
        memtrim.cap_mmap_threshold(100)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_limit_arenas_on_glibc(fresh_lookup):
    assert memtrim.limit_arenas(memtrim.ARENAS) is True
    with pytest.raises(ValueError):
        memtrim.limit_arenas(0)


def test_no_op_off_glibc(fresh_lookup, monkeypatch):
    monkeypatch.setattr(memtrim.sys, "platform", "darwin")
    assert memtrim.trim() is False
    assert memtrim.limit_arenas() is False
    assert memtrim._libc is None  # looked up once, remembered


def test_no_op_when_the_c_library_has_no_malloc_trim(fresh_lookup, monkeypatch):
    class Musl:  # a C library without gnu_get_libc_version / malloc_trim
        pass
    monkeypatch.setattr(memtrim.ctypes, "CDLL", lambda name: Musl())  # libc.so.6 is not glibc
    monkeypatch.setattr(memtrim.sys, "platform", "linux")
    assert memtrim.trim() is False


def test_no_op_when_there_is_no_libc_so_6(fresh_lookup, monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")
    monkeypatch.setattr(memtrim.ctypes, "CDLL", missing)
    monkeypatch.setattr(memtrim.sys, "platform", "linux")
    assert memtrim.limit_arenas() is False


def test_terminal_trims_at_idle_after_each_sale(sim_config, monkeypatch):
    calls = []
    monkeypatch.setattr(memtrim, "trim", lambda: calls.append(1) or True)

    async def go():
        async with sim_session(sim_config) as session:
            await run_script(session, parse_script("""
                expect signon
                keys 10 ENTER
                tap approve
                expect screen "Take receipts"
                remove
                keys ENTER
                expect screen "Key in amount"
            """), log=lambda line: None)
            before = len(calls)
            await run_script(session, parse_script("""
                keys 20 ENTER
                tap approve
                expect screen "Take receipts"
                remove
                keys ENTER
                expect screen "Key in amount"
            """), log=lambda line: None)
            return before, len(calls), len(session.printer.printed)
    before, after, printed = asyncio.run(go())
    assert printed == 4  # two sales, two copies each
    assert (before, after) == (1, 2)  # trimmed once per sale, back at idle


def test_sim_printer_keeps_the_newest_names(tmp_path, monkeypatch):
    monkeypatch.setattr(printer_sim, "PRINTED_KEEP", 3)
    printer = SimPrinter(tmp_path / "out")
    for n in range(5):
        printer.print_receipt(b"x", "x", f"r{n}")
    assert printer.printed == ["r2", "r3", "r4"]
    assert (tmp_path / "out" / "r0.bin").exists()  # the files stay; only the list is bounded
