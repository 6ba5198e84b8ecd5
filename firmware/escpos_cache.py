"""Before python-escpos is imported: give its capabilities pickle a lasting, private home.

python-escpos parses its printer capabilities (a large YAML/JSON file, ~0.25 s) on import
and caches the result as a pickle in ESCPOS_CAPABILITIES_PICKLE_DIR, by default a new
mkdtemp() directory every time: the cache is never reused and each process leaves a
directory behind in /tmp. Inside `with capabilities_cache():` that variable (unless set)
names one
directory only this user can write: systemd's $CACHE_DIRECTORY (CacheDirectory=), else
<tempdir>/kpos-escpos-<uid>, created 0700 (nothing is written outside the data dir and the
temporary directory: a read-only root stays untouched). When it cannot be made, is a
symlink, is not ours or others may write to it (a pickle is code), the variable stays unset. It is
removed again on leaving the block: child processes inherit nothing. python-escpos writes
the pickle in place, so a process starting while another writes it can find it half
written: the block then drops that pickle and parses the capabilities afresh (one slow
start, never a failed one). Blocking: a mkdir, a stat and the import of
escpos.capabilities. Wrap the first `import escpos...` in it.
"""
from __future__ import annotations

import importlib
import os
import pickle
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["capabilities_dir", "capabilities_cache"]

VARIABLE = "ESCPOS_CAPABILITIES_PICKLE_DIR"


def capabilities_dir(environ=os.environ) -> Path:
    """Where the pickle should live (not created here)."""
    if environ.get("CACHE_DIRECTORY"):
        return Path(environ["CACHE_DIRECTORY"].split(":")[0])
    return Path(tempfile.gettempdir()) / f"kpos-escpos-{os.geteuid()}"


def _private(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)



@contextmanager
def capabilities_cache() -> Iterator[None]:
    if VARIABLE in os.environ or not _private(capabilities_dir()):
        yield
        return
    os.environ[VARIABLE] = str(capabilities_dir())
    try:
        _import_capabilities()
        yield
    finally:
        del os.environ[VARIABLE]


def _import_capabilities() -> None:
    try:
        importlib.import_module("escpos.capabilities")  # loads or writes the pickle
    except (EOFError, pickle.UnpicklingError):  # half written by another process, or broken
        sys.modules.pop("escpos.capabilities", None)
        for stale in capabilities_dir().glob("*.capabilities.pickle"):
            stale.unlink(missing_ok=True)
        importlib.import_module("escpos.capabilities")  # parsed afresh, the pickle written again
