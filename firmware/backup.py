"""Backup and restore of the terminal's databases: the journal and the operator store.

Contract: blocking, any thread; own sqlite3 connections, never the terminal's. Works next
to a running terminal (SQLite WAL): each copy is one consistent snapshot of its database.
`backup()` copies journal.db (required) and operators.db (when present) with SQLite's
online backup API, PAGES_PER_STEP pages a step, runs PRAGMA integrity_check on each copy,
writes manifest.json (sha256, bytes, schema user_version; the journal's txn and unsent
item counts) and then keeps the newest `keep` backups. A backup is a folder
kpos-<seq>-<YYYYmmdd-HHMMSS> (0700, files 0600): `seq` orders them, not the clock, which
can jump back on a Pi without RTC. It is built as .<name>.partial and renamed once
complete, so a failure (destination missing, not writable, full, a bad copy) leaves
nothing half written. One backup at a time per destination (flock on the folder).
`restore()` checks the manifest's sha256 and integrity_check while it copies into temp
files in the data dir, then renames them over (atomic per file). It refuses a data dir
whose journal holds unsent items (reversals, advices, expired items, an open settlement,
batch uploads), even with `force`; a journal or store in use (stop the terminal first);
and any existing file unless `force`.
The vault key (keys/vault.key) is NOT in a backup: card data sealed in a restored journal
(queued reversals and advices only) opens with the old device's key alone. Drain the queue
before a swap, or copy the old key to the new device's [security] vault_key_file (mode
0600, service user) before its first start; otherwise those items become operator alerts
("sealed data unreadable").
Errors: BackupError, one line naming the file or folder and what to do.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator

from firmware import __version__
from firmware.files import write_all
from firmware.journal import JOURNAL_NAME
from firmware.operators import OPERATORS_NAME

__all__ = ["backup", "restore", "backups", "read_manifest", "BackupResult", "RestoreResult",
           "BackupError", "DATABASES", "MANIFEST"]

log = logging.getLogger("kpos.backup")

DATABASES = (JOURNAL_NAME, OPERATORS_NAME)  # the data dir's files a backup holds
MANIFEST = "manifest.json"
PAGES_PER_STEP = 256  # pages per backup step (1 MiB at 4 KiB pages): a writer waits one step
STEP_PAUSE = 0.005  # seconds between steps, for the terminal's writes
MAX_STALLS = 8  # steps without progress (a write restarted the copy) before one step copies all
_NAME = re.compile(r"kpos-(\d{6})-\d{8}-\d{6}")
_PARTIAL = re.compile(r"\.kpos-\d{6}-\d{8}-\d{6}\.partial")
# Items the journal has not handed to the acquirer yet: table -> condition.
_UNSENT = {
    "reversal": "status IN ('ARMED', 'PENDING', 'SENT') "
                "OR (status = 'EXPIRED' AND alert_ack_at IS NULL)",
    "advice": "status = 'PENDING' OR (status = 'EXPIRED' AND alert_ack_at IS NULL)",
    "settlement": "status != 'SETTLED'",
    "batch_upload": "status = 'PENDING'",
}


class BackupError(Exception):
    """A backup or a restore failed or was refused; the message says where and why."""


@dataclass(frozen=True)
class BackupResult:
    path: Path  # the new backup folder
    files: tuple[str, ...]  # database file names copied
    bytes: int  # their total size
    checked: int  # copies that passed PRAGMA integrity_check (all: a bad copy raises)
    removed: tuple[Path, ...] = ()  # older backups deleted by rotation


@dataclass(frozen=True)
class RestoreResult:
    files: tuple[str, ...]  # database file names restored
    replaced: tuple[str, ...]  # those of them that replaced an existing file (force)
    unsent: int  # unsent items in the restored journal: they need the old device's vault key


# -- backup ---------------------------------------------------------------------------------


def backup(data_dir: Path, dest_dir: Path, *, keep: int,
           now: Callable[[], datetime] = datetime.now) -> BackupResult:
    """A new checked backup of `data_dir`'s databases in `dest_dir` (which must exist), then
    only the newest `keep` backups there are kept. BackupError on any failure."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    data_dir, dest_dir = Path(data_dir), Path(dest_dir)
    sources = [data_dir / name for name in DATABASES if (data_dir / name).exists()]
    if data_dir / JOURNAL_NAME not in sources:
        raise BackupError(f"{data_dir / JOURNAL_NAME} not found: nothing to back up")
    with _locked(dest_dir):
        taken = now()
        try:
            for stale in _matching(dest_dir, _PARTIAL):  # left by a killed backup
                shutil.rmtree(stale)
            name = f"kpos-{_next_seq(dest_dir):06d}-{taken:%Y%m%d-%H%M%S}"
        except OSError as exc:
            raise _destination_error(dest_dir, exc) from exc
        path, files = _write_backup(sources, dest_dir, name, taken)
        try:
            removed = tuple(backups(dest_dir)[keep:])
            for old in removed:
                shutil.rmtree(old)
        except OSError as exc:
            raise BackupError(f"backup {path} is good, but an old one was not removed: {exc}") from exc
    log.info("backup %s written: %s (%d unsent item(s)); %d old backup(s) removed", path,
             ", ".join(files), files[JOURNAL_NAME]["unsent"], len(removed))
    return BackupResult(path, tuple(files), sum(f["bytes"] for f in files.values()), len(files),
                        removed)


def backups(dest_dir: Path) -> list[Path]:
    """The complete backups in `dest_dir`, newest first. BackupError when it is missing."""
    try:
        found = [p for p in _matching(Path(dest_dir), _NAME) if (p / MANIFEST).is_file()]
    except OSError as exc:
        raise BackupError(f"backup destination {dest_dir}: {exc.strerror or exc}") from exc
    return sorted(found, key=_seq, reverse=True)


def read_manifest(path: Path) -> dict:
    """A backup folder's manifest: format, created_at, kpos, files {name: {sha256, bytes,
    user_version[, txns, unsent]}}. BackupError when missing or not a KPOS backup."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if JOURNAL_NAME not in files or not set(files) <= set(DATABASES):
            raise ValueError(f"files {sorted(files)} are not a KPOS backup")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path}: no readable {MANIFEST}: {exc}") from exc
    return manifest


def _write_backup(sources: list[Path], dest_dir: Path, name: str,
                  taken: datetime) -> tuple[Path, dict]:
    """Copy, check and describe `sources` in .<name>.partial, then rename it to `name`;
    the new folder and its manifest's files."""
    partial, path = dest_dir / f".{name}.partial", dest_dir / name
    try:
        partial.mkdir(mode=0o700)
        os.chmod(partial, 0o700)  # whatever the umask
        files = {source.name: _copy(source, partial / source.name) for source in sources}
        manifest = {"format": 1, "created_at": taken.isoformat(timespec="seconds"),
                    "kpos": __version__, "files": files}
        _write_file(partial / MANIFEST, [json.dumps(manifest, indent=2).encode()])
        _fsync(partial)
        os.rename(partial, path)
        _fsync(dest_dir)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, (OSError, sqlite3.Error)):
            raise _destination_error(dest_dir, exc) from exc
        raise
    return path, files


def _copy(source: Path, target: Path) -> dict:
    """Snapshot `source` into the new file `target` (0600, rollback-journal mode: one
    self-contained file), check it; its manifest entry."""
    _write_file(target, [])
    try:
        src = sqlite3.connect(_uri(source, "rw"), uri=True, timeout=5.0)  # never creates it
        src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: cannot read: {exc}") from exc
    with closing(src), closing(sqlite3.connect(target, isolation_level=None)) as dst:
        _online_copy(src, dst, source)
        dst.execute("PRAGMA journal_mode = DELETE")
        entry = {"user_version": dst.execute("PRAGMA user_version").fetchone()[0]}
        if source.name == JOURNAL_NAME:
            entry.update(txns=_count(dst, "txn", "1"), unsent=sum(_unsent(dst).values()))
    _fsync(target)
    _check(target, f"the copy of {source}")
    with target.open("rb") as f:
        entry.update(sha256=hashlib.file_digest(f, "sha256").hexdigest(), bytes=target.stat().st_size)
    return entry


def _online_copy(src: sqlite3.Connection, dst: sqlite3.Connection, source: Path) -> None:
    """Page by page; a write by another connection between two steps starts the copy again,
    so after MAX_STALLS steps without progress the rest is one step: one read snapshot,
    which in WAL mode does not block the writer (it only holds checkpoints back meanwhile)."""
    try:
        src.backup(dst, pages=PAGES_PER_STEP, progress=_Stalls(), sleep=STEP_PAUSE)
    except _Stalled:
        log.info("%s: busy, copied in one step", source)
        src.backup(dst)


class _Stalled(Exception):
    pass


class _Stalls:
    """backup() progress callback: raises _Stalled after MAX_STALLS steps that did not
    lower the pages remaining (restarted by a write, or the source busy)."""

    def __init__(self) -> None:
        self.count, self._remaining = 0, None

    def __call__(self, status: int, remaining: int, total: int) -> None:
        if self._remaining is not None and remaining >= self._remaining:
            self.count += 1
            if self.count >= MAX_STALLS:
                raise _Stalled
        self._remaining = remaining


@contextmanager
def _locked(dest_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on `dest_dir`: one backup at a time writes there."""
    try:
        fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise BackupError(f"backup destination {dest_dir} does not exist "
                          "(is the USB stick mounted?)") from None
    except OSError as exc:
        raise BackupError(f"backup destination {dest_dir}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another kpos backup is writing to {dest_dir}") from None
        yield
    finally:
        os.close(fd)


def _destination_error(dest_dir: Path, exc: OSError | sqlite3.Error) -> BackupError:
    code = getattr(exc, "errno", None) or getattr(exc, "sqlite_errorname", None)
    if code in (errno.ENOSPC, errno.EDQUOT, "SQLITE_FULL"):
        return BackupError(f"backup destination {dest_dir} is full: nothing written")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS, "SQLITE_READONLY"):
        return BackupError(f"backup destination {dest_dir} is not writable: nothing written")
    return BackupError(f"backup into {dest_dir} failed, nothing written: {exc}")


def _next_seq(dest_dir: Path) -> int:
    return 1 + max(map(_seq, _matching(dest_dir, _NAME)), default=0)


def _seq(backup_path: Path) -> int:
    return int(_NAME.fullmatch(backup_path.name)[1])


def _matching(folder: Path, pattern: re.Pattern) -> list[Path]:
    return [p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]


# -- restore --------------------------------------------------------------------------------


def restore(backup_path: Path, data_dir: Path, *, force: bool = False) -> RestoreResult:
    """Put a backup's databases into `data_dir` (created 0700 when missing; files take its
    owner). BackupError when refused (see the module contract) or the backup is damaged."""
    backup_path, data_dir = Path(backup_path), Path(data_dir)
    files = read_manifest(backup_path)["files"]
    names = tuple(name for name in DATABASES if name in files)
    replaced = tuple(name for name in names if (data_dir / name).exists())
    for name in replaced:
        _refuse_replacing(data_dir / name, force)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged: list[Path] = []
    try:
        for name in names:
            staged.append(_stage(backup_path / name, data_dir, files[name]["sha256"]))
        for tmp, name in zip(staged, names):
            for sidecar in ("-wal", "-shm"):  # an old WAL must never be replayed into it
                (data_dir / f"{name}{sidecar}").unlink(missing_ok=True)
            os.replace(tmp, data_dir / name)
        _fsync(data_dir)
    except OSError as exc:
        raise BackupError(f"restore into {data_dir} failed: {exc}") from exc
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    unsent = files[JOURNAL_NAME].get("unsent", 0)
    log.info("restored %s from %s (%d unsent item(s))", ", ".join(names), backup_path, unsent)
    return RestoreResult(names, replaced, unsent)


def _refuse_replacing(path: Path, force: bool) -> None:
    """BackupError unless `path` may be replaced: nobody has it open (a running terminal, a
    tool), a journal holds no unsent item (checked even with `force`), and `force`."""
    try:
        with closing(sqlite3.connect(_uri(path, "rw"), uri=True, isolation_level=None,
                                     timeout=0)) as db:
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            db.execute("BEGIN EXCLUSIVE")  # fails while another connection has it open
            unsent = _unsent(db) if path.name == JOURNAL_NAME else {}
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            raise BackupError(f"{path} is in use: stop the terminal first") from exc
        raise BackupError(f"{path} does not open ({exc}): whether it holds unsent items "
                          "is unknown; move it aside first") from exc
    if sum(unsent.values()):
        what = ", ".join(f"{n} {table}" for table, n in unsent.items() if n)
        raise BackupError(f"{sum(unsent.values())} unsent items in the journal here ({what}): "
                          "forward them first")
    if not force:
        raise BackupError(f"{path} exists: restore --force replaces it")


def _stage(source: Path, data_dir: Path, sha256: str) -> Path:
    """Copy `source` to a temp file in `data_dir` (0600, the dir's owner) while checking its
    sha256 against the manifest's, then the copy's integrity; the temp file."""
    tmp = data_dir / f".{source.name}.restore"
    tmp.unlink(missing_ok=True)  # left by a killed restore
    digest = hashlib.sha256()

    def chunks(f) -> Iterator[bytes]:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            yield chunk

    try:
        with source.open("rb") as f:
            _write_file(tmp, chunks(f))
        if digest.hexdigest() != sha256:
            raise BackupError(f"{source}: sha256 differs from the manifest: the backup is "
                              "damaged or was altered")
        if os.geteuid() == 0:  # a root restore: the service user must still open it
            owner = data_dir.stat()
            os.chown(tmp, owner.st_uid, owner.st_gid)
        _check(tmp, str(source))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


# -- shared ---------------------------------------------------------------------------------


def _unsent(db: sqlite3.Connection) -> dict[str, int]:
    """Unsent items per journal table (tables an old schema lacks count 0)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {table: _count(db, table, where) for table, where in _UNSENT.items() if table in tables}


def _count(db: sqlite3.Connection, table: str, where: str) -> int:
    return db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0]  # fixed names


def _check(path: Path, what: str) -> None:
    """PRAGMA integrity_check on `path`, read-only; BackupError naming `what` when bad."""
    try:
        with closing(sqlite3.connect(_uri(path, "ro"), uri=True)) as db:
            rows = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        raise BackupError(f"{what} failed integrity_check: {'; '.join(rows[:3])}")


def _uri(path: Path, mode: str) -> str:
    return f"{path.resolve().as_uri()}?mode={mode}"


def _write_file(path: Path, chunks: Iterable[bytes]) -> None:
    """A new file, mode 0600 whatever the umask, fsync'd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        for chunk in chunks:
            write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    """fsync a file or a folder (its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
