"""Simulated receipt printer: each receipt becomes <name>.bin (exact bytes) and <name>.txt.

Files 0600 (firmware.files.write_private) in a 0700 out_dir (when it creates it).
Blocking file I/O; printer worker thread only (tests may flip `paper` from their own
thread: a single attribute write). Each file is written atomically (temp file in
out_dir, fsync, os.replace, then fsync of the directory), so a power cut leaves
either the whole file or none. With `paper` False nothing is written and
PrinterError("paper out") is raised, like a real printer reporting paper out.
`printed` keeps the names of the last PRINTED_KEEP receipts (oldest first), so a simulator
that runs for months does not grow with every sale. With `keep_files` (kpos sim: 1,000)
out_dir keeps the files of the newest `keep_files` receipts only, those of earlier runs
included (ordered by time written): each new receipt past the limit deletes the oldest
receipt's two files. Without it every receipt stays (tests and the power-cut harness
check receipts against the journal). Settlement reports are receipts like any other.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from firmware.files import write_private
from firmware.hal.printer import PAPER_OUT, STATUS_OK, PrinterError

__all__ = ["PRINTED_KEEP", "SimPrinter"]

log = logging.getLogger("kpos.printer")

PRINTED_KEEP = 1000  # receipt names kept in SimPrinter.printed, the newest


class SimPrinter:
    def __init__(self, out_dir: Path, *, paper: bool = True, keep_files: int | None = None):
        if keep_files is not None and keep_files < 1:
            raise ValueError(f"keep_files must be >= 1, not {keep_files}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # service user only
        self.paper = paper
        self.printed: list[str] = []  # the last PRINTED_KEEP names printed, in order
        self.drawer_kicks = 0  # cash drawer pulses sent
        self.keep_files = keep_files
        self._on_disk: dict[str, None] = {}  # keep_files: receipt names in out_dir, oldest first
        if keep_files is not None:
            self._on_disk = dict.fromkeys(_receipts_by_age(self.out_dir))
            self._forget_oldest()

    def __repr__(self) -> str:
        return f"SimPrinter({str(self.out_dir)!r})"

    def print_receipt(self, raw: bytes, preview: str, name: str) -> None:
        _check_name(name)
        if not self.paper:
            raise PrinterError(PAPER_OUT, device=repr(self))
        try:
            write_private(self.out_dir / f"{name}.bin", raw)
            write_private(self.out_dir / f"{name}.txt", preview.encode("utf-8"))
        except OSError as err:
            raise PrinterError(f"write failed: {err.strerror or err}", device=repr(self)) from err
        self.printed.append(name)
        if len(self.printed) > PRINTED_KEEP:
            del self.printed[0]
        if self.keep_files is not None:
            self._on_disk.pop(name, None)  # printed again: now the newest
            self._on_disk[name] = None
            self._forget_oldest()
        log.info("printed receipt %s (%d bytes) to %s", name, len(raw), self.out_dir)

    def kick_drawer(self, raw: bytes) -> None:
        """Send the drawer pulse (ESC p) `raw`: counted in `drawer_kicks`, kept as the
        latest drawer.bin. PrinterError when out of paper (a real printer is offline then)."""
        if not self.paper:
            raise PrinterError(PAPER_OUT, device=repr(self))
        write_private(self.out_dir / "drawer.bin", raw)
        self.drawer_kicks += 1
        log.info("cash drawer kicked (%d so far)", self.drawer_kicks)

    def status(self) -> str:
        return STATUS_OK if self.paper else PAPER_OUT

    def _forget_oldest(self) -> None:
        """Delete the files of the oldest receipts beyond keep_files."""
        while len(self._on_disk) > self.keep_files:
            oldest = next(iter(self._on_disk))
            del self._on_disk[oldest]
            for suffix in (".bin", ".txt"):
                try:
                    (self.out_dir / f"{oldest}{suffix}").unlink(missing_ok=True)
                except OSError as err:  # kept: the next receipt tries the next name
                    log.warning("could not delete old receipt %s%s: %s", oldest, suffix, err)


def _receipts_by_age(out_dir: Path) -> list[str]:
    """Receipt names in out_dir (<name>.bin / <name>.txt; not drawer.bin, not temp files),
    oldest first by the later of their two files' times."""
    newest: dict[str, int] = {}
    with os.scandir(out_dir) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if (dot and suffix in ("bin", "txt") and not stem.startswith(".")
                    and entry.name != "drawer.bin"):
                newest[stem] = max(newest.get(stem, 0), entry.stat().st_mtime_ns)
    return sorted(newest, key=lambda stem: (newest[stem], stem))


def _check_name(name: str) -> None:
    """A receipt name is one plain file name inside out_dir."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"receipt name {name!r} is not a plain file name")
