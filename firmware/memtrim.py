"""Keep the terminal's native heap small over months of sales (glibc malloc only).

Most of the terminal's memory growth is not Python objects but the C allocator: each
thread that mallocs (journal, printer, reader, operators workers) gets a glibc arena of its
own, and memory freed in one arena is neither reused by the others nor given back to the
OS. Two calls, both no-ops where the C library is not glibc (musl, macOS, Windows):

- limit_arenas(n): mallopt(M_ARENA_MAX, n), once at start, before the worker threads run;
  the threads then share n arenas (the terminal's threads mostly wait, so they rarely
  contend for an arena's lock).
- cap_mmap_threshold(n): mallopt(M_MMAP_THRESHOLD, n), once at start: every block of n
  bytes or more (a password check's 16 MB scrypt buffer) is its own mapping, unmapped when
  freed. glibc's default threshold moves up to the largest block freed so far, so after
  the first scrypt the next ones came from the heap and stayed resident (+16 MB of RSS
  per process, found by the soak).
- trim(): malloc_trim(0), gives the free pages at the top of the heap and inside the arenas
  back to the OS. The terminal calls it at its idle point, after a transaction (about
  0.1-0.5 ms on a terminal's heap).

Contract: any thread, blocking only for the call itself; never raises. Each returns True
when the C library did the work (glibc), False when it is unavailable (a no-op).
"""
from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["ARENAS", "MMAP_THRESHOLD", "configure", "limit_arenas", "cap_mmap_threshold", "trim"]

log = logging.getLogger("kpos.memtrim")

ARENAS = 2  # malloc arenas shared by every thread of the terminal
MMAP_THRESHOLD = 1 << 20  # bytes: blocks this big or bigger are mapped on their own
M_ARENA_MAX = -8  # glibc malloc.h
M_MMAP_THRESHOLD = -3  # glibc malloc.h
GLIBC = "libc.so.6"  # glibc's soname on every Linux architecture it supports

_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: not glibc


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has malloc_trim and mallopt), else None."""
    global _libc
    if _libc is False:
        _libc = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(GLIBC)  # not find_library: it runs ldconfig
                if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim"):
                    libc.malloc_trim.argtypes = [ctypes.c_size_t]
                    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                    _libc = libc
            except OSError:
                pass
        if _libc is None:
            log.debug("not glibc: memory trimming is off")
    return _libc


def limit_arenas(n: int = ARENAS) -> bool:
    """Threads created after this share at most `n` malloc arenas (n >= 1)."""
    if n < 1:
        raise ValueError(f"arenas must be >= 1, not {n}")
    libc = _glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, n) == 1


def cap_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Blocks of `nbytes` or more are mmapped and unmapped on free, whatever was freed
    before (fixes glibc's sliding threshold; 4096 <= nbytes <= 32 MiB)."""
    if not 4096 <= nbytes <= 32 << 20:
        raise ValueError(f"mmap threshold must be 4096..32 MiB, not {nbytes}")
    libc = _glibc()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, nbytes) == 1


def configure() -> bool:
    """limit_arenas() and cap_mmap_threshold() with the terminal's values: once, before
    the process starts its threads (kpos's main(); the Terminal again, for code that
    builds one without it). True when both took effect."""
    arenas = limit_arenas()
    return cap_mmap_threshold() and arenas


def trim() -> bool:
    """Give free heap memory back to the OS (glibc malloc_trim(0))."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
