"""firmware.memtrim (glibc arenas and malloc_trim), the terminal's trim at idle, and the
simulator's bounds: the printer's list of printed receipts and its files on disk."""
from __future__ import annotations

import asyncio
import os
import platform
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from firmware import memtrim
from firmware.hal import printer_sim
from firmware.hal.printer_sim import SimPrinter
from firmware.sim.runner import sim_session
from firmware.sim.script import parse_script, run_script

REPO = Path(__file__).resolve().parent.parent
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
    assert memtrim.configure() is True  # the arenas and the mmap threshold both set


def test_configure_sets_the_terminals_arenas_and_threshold(fresh_lookup, monkeypatch):
    calls = []

    def mallopt(param: int, value: int) -> int:  # recorded, this process's allocator untouched
        calls.append((param, value))
        return 1
    glibc = SimpleNamespace(gnu_get_libc_version=lambda: b"2.36", malloc_trim=lambda n: 1,
                            mallopt=mallopt)
    monkeypatch.setattr(memtrim.ctypes, "CDLL", lambda name: glibc)
    monkeypatch.setattr(memtrim.sys, "platform", "linux")
    assert memtrim.configure() is True
    assert calls == [(memtrim.M_ARENA_MAX, memtrim.ARENAS),
                     (memtrim.M_MMAP_THRESHOLD, memtrim.MMAP_THRESHOLD)]


def test_no_op_off_glibc(fresh_lookup, monkeypatch):
    monkeypatch.setattr(memtrim.sys, "platform", "darwin")
    assert memtrim.trim() is False
    assert memtrim.limit_arenas() is False
    assert memtrim.configure() is False
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


def tap_sale(amount_keys: str) -> str:
    """Script: a contactless sale of the "approve" card, back to the idle screen."""
    return f"""
        keys {amount_keys} ENTER
        tap approve
        expect screen "Take receipts"
        remove
        keys ENTER
        expect screen "Key in amount"
    """


def test_terminal_trims_at_idle_after_each_sale(sim_config, monkeypatch):
    calls = []
    monkeypatch.setattr(memtrim, "trim", lambda: calls.append(1) or True)

    async def go():
        async with sim_session(sim_config) as session:
            await run_script(session, parse_script("expect signon" + tap_sale("10")),
                             log=lambda line: None)
            before = len(calls)
            await run_script(session, parse_script(tap_sale("20")), log=lambda line: None)
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


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_sim_printer_keeps_the_files_of_the_newest_receipts(tmp_path):
    out = tmp_path / "out"
    printer = SimPrinter(out, keep_files=3)
    printer.kick_drawer(b"\x1bp\x00")
    for n in range(5):
        printer.print_receipt(b"x", "x", f"r{n}")
    assert _files(out) == {"drawer.bin", *(f"r{n}.{s}" for n in (2, 3, 4) for s in ("bin", "txt"))}
    printer.print_receipt(b"y", "y", "r2")  # printed again: the newest now
    printer.print_receipt(b"z", "z", "r5")
    assert _files(out) == {"drawer.bin", *(f"r{n}.{s}" for n in (2, 4, 5) for s in ("bin", "txt"))}
    with pytest.raises(ValueError):
        SimPrinter(out, keep_files=0)


def test_sim_printer_bounds_receipts_left_by_earlier_runs_oldest_first(tmp_path):
    out = tmp_path / "out"
    SimPrinter(out)  # keeps everything (tests, the power-cut harness)
    for n, name in enumerate(["c", "a", "d", "b"]):  # written in this order, not by name
        printer_sim.write_private(out / f"{name}.bin", b"x")
        printer_sim.write_private(out / f"{name}.txt", b"x")
        for suffix in ("bin", "txt"):
            os.utime(out / f"{name}.{suffix}", ns=(n * 10**9, n * 10**9))
    (out / ".e.bin.1.tmp").write_bytes(b"partial")  # a temp file: not a receipt
    printer = SimPrinter(out, keep_files=2)  # a restart with a bound
    assert _files(out) == {"d.bin", "d.txt", "b.bin", "b.txt", ".e.bin.1.tmp"}
    printer.print_receipt(b"x", "x", "f")
    assert _files(out) == {"b.bin", "b.txt", "f.bin", "f.txt", ".e.bin.1.tmp"}


def test_kpos_sim_bounds_its_receipt_files_across_restarts(tmp_path, monkeypatch):
    from firmware import cli

    monkeypatch.setattr(cli, "SIM_RECEIPTS", 3)
    script = tmp_path / "two.kpos"
    script.write_text('login 01 0000\nexpect screen "Key in amount"\n' + tap_sale("20") * 2)
    data = tmp_path / "data"
    for _ in range(2):  # a restart: the first run's files count too
        assert cli.main(["sim", "--config", str(REPO / "config" / "sim.toml"),
                         "--data-dir", str(data), "--script", str(script)]) == 0
    names = {p.stem for p in (data / "receipts").iterdir() if p.suffix in (".bin", ".txt")}
    assert len(names) == 3  # 8 receipts printed in all (2 runs x 2 sales x 2 copies)
    assert len(list((data / "receipts").glob("*.txt"))) == 3
