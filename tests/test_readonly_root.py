"""Issue 6 point 7, "the terminal writes only to its state directory, so it runs on a
read-only root": the real terminal process (`python -m firmware sim --script`, the Terminal
of `kpos run` with simulated devices) does a day's work under a Python audit hook
(sys.addaudithook, installed by a sitecustomize.py on PYTHONPATH) that records every path
the process creates, changes or removes; every one must be under the data dir. Then the
same for `kpos doctor` and `kpos txn list`.

The hook sees what goes through Python (open, os.*, shutil.*, tempfile.*, sqlite3.connect,
socket.bind, process spawns); a C library writing on its own (fontconfig, libusb) would not
show, and none is loaded by the simulated devices.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from conftest import REPO, SIM_TOML

AUDIT_ENV = "KPOS_WRITE_AUDIT"
SITECUSTOMIZE = '''\
"""Write audit for tests/test_readonly_root.py: every path this process creates, changes
or removes is appended as a JSON line to the file named by $KPOS_WRITE_AUDIT."""
import json
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# audit event -> positions of its arguments naming a path written (docs: audit_events.html)
_PATHS = {
    "os.mkdir": (0,), "os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,),
    "os.truncate": (0,), "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,),
    "os.chown": (0,), "os.utime": (0,), "shutil.copyfile": (1,), "shutil.copymode": (1,),
    "shutil.copystat": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1),
    "shutil.rmtree": (0,), "shutil.make_archive": (0,), "shutil.unpack_archive": (1,),
    "tempfile.mkstemp": (0,), "tempfile.mkdtemp": (0,), "sqlite3.connect": (0,),
    "socket.bind": (1,), "subprocess.Popen": (0,), "os.system": (0,),
    "os.posix_spawn": (0,), "os.exec": (0,),
}


def _written(event, args):
    if event == "open":  # builtins.open / FileIO: (path, mode, flags); os.open: (path, None, flags)
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        return [path] if writes else []
    return [args[i] for i in _PATHS.get(event, ()) if i < len(args)]


def _install(report):
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # before the hook
    cwd = os.getcwd()

    def hook(event, args):
        for path in _written(event, args):
            if path is None or isinstance(path, (int, tuple)):
                continue  # a descriptor (its open was recorded) or an IP address
            dir_fd = args[-1] if event.startswith("os.") and isinstance(args[-1], int) else -1
            line = {"event": event, "path": os.fsdecode(path), "cwd": cwd, "dir_fd": dir_fd}
            os.write(fd, (json.dumps(line) + "\\n").encode())  # os.write raises no event

    sys.addaudithook(hook)


if os.environ.get("KPOS_WRITE_AUDIT"):
    _install(os.environ["KPOS_WRITE_AUDIT"])
'''
DAY = """
login 01 0000
expect signon
expect screen "op 01"
keys 5000 ENTER
expect screen "Insert"
insert approve
expect screen "Enter PIN"
keys 1234 ENTER
expect screen "Take receipts"
expect journal APPROVED
expect receipts 2
keys ENTER
expect screen "Remove card"
remove
expect screen "Key in amount"
acquirer down
keys 3000 ENTER
expect screen "Insert, tap or swipe"
tap approve
expect screen "Approved offline"
expect screen "Take receipts"
expect receipts 4
expect queue 1
keys ENTER
acquirer up
expect queue 0 within 15
expect balance approve 992000
"""
# config/sim.toml with its state under the test's data dir and a fast store-and-forward
CONFIG_LINES = {
    'data_dir = "../.kpos-sim"': 'data_dir = "{data}"',
    'dir = "../.kpos-sim/backups"': 'dir = "{data}/backups"',
    "echo_interval = 60": "echo_interval = 1",
    "retry_first = 5": "retry_first = 0.2",
    "retry_max = 300": "retry_max = 1",
}
CONFIG_FILES = ("capk.toml", "products.toml", "sim-tmk.key")  # read, relative to the config


class Box:
    """A terminal's files laid out as on a device: a config dir, the data dir, and the
    process's temp dir ($TMPDIR), each its own directory under `root`."""

    def __init__(self, root: Path):
        self.site, self.etc, self.data, self.tmp = (root / n for n in ("site", "etc", "data", "tmp"))
        for folder in (self.site, self.etc, self.tmp):
            folder.mkdir()
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        text = SIM_TOML.read_text(encoding="utf-8")
        for old, new in CONFIG_LINES.items():
            assert text.count(f"\n{old}\n") == 1, f"config/sim.toml: no single line {old!r}"
            text = text.replace(f"\n{old}\n", "\n" + new.format(data=self.data) + "\n")
        self.config = self.etc / "terminal.toml"
        self.config.write_text(text, encoding="utf-8")
        for name in CONFIG_FILES:
            shutil.copy(SIM_TOML.parent / name, self.etc / name)

    def kpos(self, *args: str, report: Path) -> subprocess.CompletedProcess:
        """`python -m firmware ARGS --config ...` under the audit hook (report: its records)."""
        env = {**os.environ, AUDIT_ENV: str(report), "TMPDIR": str(self.tmp),
               "PYTHONDONTWRITEBYTECODE": "1",  # as boot/kpos.service sets it
               "PYTHONPATH": os.pathsep.join(filter(None, [str(self.site),
                                                           os.environ.get("PYTHONPATH")]))}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        return subprocess.run([sys.executable, "-m", "firmware", *args, "--config", str(self.config)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=90,
                              stdin=subprocess.DEVNULL)


def written(report: Path) -> list[tuple[str, Path]]:
    """(event, absolute path) of each write the hook recorded; read-only SQLite URIs are
    reads and left out."""
    found = []
    for line in report.read_text().splitlines():
        record = json.loads(line)
        path = record["path"]
        if record["event"] == "sqlite3.connect" and path.startswith("file:"):
            uri = urlsplit(path)
            if parse_qs(uri.query).get("mode") == ["ro"]:
                continue
            path = unquote(uri.path)
        assert record["dir_fd"] == -1, f"{record}: relative to a directory descriptor"
        found.append((record["event"], Path(os.path.realpath(os.path.join(record["cwd"], path)))))
    return found


def outside(writes: list[tuple[str, Path]], *allowed: Path) -> list[tuple[str, Path]]:
    roots = [Path(os.path.realpath(p)) for p in allowed]
    return [(event, path) for event, path in writes
            if not any(path == root or root in path.parents for root in roots)]


def escpos_scratch_only(box: Box) -> bool:
    """$TMPDIR holds python-escpos's printer-capabilities cache and nothing else: one
    mkdtemp() directory with one "<python version>.capabilities.pickle"."""
    return [p.relative_to(box.tmp).parts[1] for p in box.tmp.rglob("*") if p.is_file()] == [
        f"{sys.version.split()[0]}.capabilities.pickle"]


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """The terminal's day in the simulator: a chip sale and its receipts, an offline
    contactless sale while the acquirer is down, its advice forwarded once it is back."""
    box = Box(tmp_path_factory.mktemp("box"))
    script = box.etc / "day.kpos"
    script.write_text(DAY)
    report = box.etc / "terminal-writes.jsonl"
    done = box.kpos("sim", "--script", str(script), report=report)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return box, written(report)


def test_the_terminal_writes_only_to_its_data_dir(day):
    box, writes = day
    # python-escpos (receipts) calls tempfile.mkdtemp() when it is imported, even with
    # $ESCPOS_CAPABILITIES_PICKLE_DIR set (the default argument is evaluated first), and
    # pickles its printer database there; tempfile first probes $TMPDIR with a file it
    # removes at once. boot/kpos.service gives the terminal a private /tmp (PrivateTmp=yes),
    # so this needs no writable root; it is the only write allowed outside the data dir.
    assert outside(writes, box.data, box.tmp) == []
    assert escpos_scratch_only(box)
    # the hook did see the day's writes: the journal, the receipts, the vault key
    seen = {(event, path.relative_to(box.data).parts[0]) for event, path in writes
            if box.data in path.parents}
    assert {("sqlite3.connect", "journal.db"), ("os.rename", "receipts"),
            ("os.rename", "keys")} <= seen


TOOLS = [  # command, exit status, what its output shows after the day
    # doctor FAILs the acquirer check: no acquirer listens on config/sim.toml's port
    (("doctor",), 1, "OK   journal"),
    (("txn", "list", "--all"), 0, "2 transaction(s)"),
]


@pytest.mark.parametrize("command, status, shows", TOOLS, ids=["doctor", "txn-list"])
def test_tools_write_only_to_the_data_dir(day, command, status, shows):
    box, _ = day
    report = box.etc / f"{command[0]}-writes.jsonl"
    done = box.kpos(*command, report=report)
    assert (done.returncode, shows in done.stdout) == (status, True), done.stdout + done.stderr
    assert outside(written(report), box.data) == []


def test_the_hook_records_writes_outside(tmp_path):
    """The audit itself: a write, a directory, a database and a rename outside the data
    dir are all recorded (else the tests above would pass on a hook that sees nothing)."""
    box = Box(tmp_path)
    code = ("import os, sqlite3, sys; d = sys.argv[1]; open(d + '/a', 'w').close(); "
            "os.mkdir(d + '/b'); sqlite3.connect(d + '/c.db').close(); "
            "os.replace(d + '/a', d + '/e'); open(d + '/e').close()")
    report = box.etc / "canary.jsonl"
    env = {**os.environ, AUDIT_ENV: str(report), "PYTHONPATH": str(box.site)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True, timeout=30)
    assert [(event, path.name) for event, path in outside(written(report), box.data)] == [
        ("open", "a"), ("os.mkdir", "b"), ("sqlite3.connect", "c.db"), ("os.rename", "a"),
        ("os.rename", "e")]
