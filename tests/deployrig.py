"""Deploy test rig: a real sshd on 127.0.0.1 logging into a temporary device root, a
systemctl stand-in that runs the real `kpos run` (simulated peripherals, console panel on
a FIFO), and the acquirer simulator on its own thread.

Contract: Sshd.start() blocks until sshd listens (or raises); every session it serves gets
`SetEnv KPOS_ROOT=<device link> PATH=<stand-in bin>:/usr/bin:/bin`, the device link being a
symlink that Sshd.use(device) points at one test's device root. Device.make() lays out a
provisioned root (directories, terminal.toml for the simulator acquirer, the signing public
key). The stand-in's restart returns 0 once the terminal sent READY=1 on its NOTIFY_SOCKET
within KPOS_START_TIMEOUT s (else kills it, 1), as systemd does for Type=notify; stop sends
SIGTERM and waits for the exit. Waits are on events or files with deadlines (seconds).
Everything listens on 127.0.0.1 only. Needs root (sshd, PermitRootLogin) and openssh-server.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy.sh"
SIM_TOML = REPO / "config" / "sim.toml"
START_TIMEOUT = 60  # s: the stand-in's TimeoutStartSec

__all__ = ["Sshd", "Device", "Acquirer", "wait_until", "deploy", "STANDIN"]


def wait_until(check: Callable[[], object], timeout: float, what: str):
    """check()'s first truthy value, polled until `timeout` s; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)  # the poll interval of the wait, not a wait for something


# -- sshd ------------------------------------------------------------------------------------

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PrintMotd no
SetEnv KPOS_ROOT={device} PATH={bin}:/usr/bin:/bin KPOS_START_TIMEOUT={start_timeout}
"""

SSH_CONFIG = """\
Host 127.0.0.1
  Port {port}
  User root
  IdentityFile {dir}/client_key
  IdentitiesOnly yes
  UserKnownHostsFile {dir}/known_hosts
  StrictHostKeyChecking yes
  LogLevel ERROR
"""


class Sshd:
    """sshd -D -e on a free 127.0.0.1 port with its own host and client keys in `work`."""

    def __init__(self, work: Path):
        self.work = work
        self.device_link = work / "device"
        self.bin = work / "bin"
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return "root@127.0.0.1"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for ./deploy.sh: the ssh client config of this sshd."""
        return {**os.environ, "KPOS_SSH_OPTS": f"-F {self.work}/ssh_config", **extra}

    def start(self) -> Sshd:
        self.work.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(exist_ok=True)
        install_standin(self.bin / "systemctl")
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key,
                            "-f", str(self.work / key)], check=True)
        shutil.copy(self.work / "client_key.pub", self.work / "authorized_keys")
        self.port = free_port()
        host_pub = (self.work / "host_key.pub").read_text().split()[:2]
        (self.work / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_pub)}\n")
        fields = dict(port=self.port, dir=self.work, device=self.device_link, bin=self.bin,
                      start_timeout=START_TIMEOUT)
        (self.work / "sshd_config").write_text(SSHD_CONFIG.format(**fields))
        (self.work / "ssh_config").write_text(SSH_CONFIG.format(**fields))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
        self.process = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.work / "sshd_config")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self._await_listening()
        return self

    def _await_listening(self) -> None:
        """Read sshd's log until "Server listening" (or its exit, or 20 s)."""
        seen: list[str] = []
        listening = threading.Event()

        def read() -> None:
            for line in self.process.stderr:
                seen.append(line)
                if "Server listening" in line:
                    listening.set()
            listening.set()  # it exited

        threading.Thread(target=read, daemon=True, name="sshd-log").start()
        if not listening.wait(20) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"sshd did not start: {''.join(seen)[-500:]}")

    def use(self, device: Device) -> None:
        """Point the sessions' KPOS_ROOT at `device` (atomically: new link, rename)."""
        tmp = self.work / "device.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(device.root)
        os.replace(tmp, self.device_link)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deploy(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """./deploy.sh ARGS, its output captured (stdout and stderr as text)."""
    return subprocess.run(["bash", str(DEPLOY), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO)


# -- systemctl stand-in -----------------------------------------------------------------------

STANDIN = r'''#!/usr/bin/python3
"""systemctl stand-in for the deploy tests: start|stop|restart|is-active|status kpos.

start runs $KPOS_ROOT/opt/kpos/current/.venv/bin/kpos run detached (own session; stdin the
FIFO run/kpos.stdin opened read-write, output appended to var/log/kpos.out) with
NOTIFY_SOCKET on a datagram socket of its own; returns 0 at READY=1, 1 when the process
exits first or KPOS_START_TIMEOUT s (run/start-timeout if there) pass (it is then killed). stop: SIGTERM, wait."""
import os, select, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.environ["KPOS_ROOT"]
RUN, OUT = ROOT + "/run", ROOT + "/var/log/kpos.out"
PIDFILE, FIFO = RUN + "/kpos.pid", RUN + "/kpos.stdin"
try:  # a test may shorten TimeoutStartSec for one device
    START_TIMEOUT = float(open(RUN + "/start-timeout").read())
except OSError:
    START_TIMEOUT = float(os.environ.get("KPOS_START_TIMEOUT", "60"))
STOP_TIMEOUT = 90


def running():
    try:
        pid = int(open(PIDFILE).read())
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError):
        return None
    return None if state in ("Z", "X") else pid


def start():
    if running():
        return 0
    os.makedirs(RUN, exist_ok=True)
    if not os.path.exists(FIFO):
        os.mkfifo(FIFO)
    scratch = tempfile.mkdtemp(prefix="kpos-notify-")
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(scratch + "/notify")
        stdin = os.open(FIFO, os.O_RDWR)
        with open(OUT, "ab") as out:
            out.write(b"--- systemctl start kpos\n")
            out.flush()
            proc = subprocess.Popen(
                [ROOT + "/opt/kpos/current/.venv/bin/kpos", "run",
                 "--config", ROOT + "/etc/kpos/terminal.toml"],
                stdin=stdin, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, NOTIFY_SOCKET=scratch + "/notify"))
        os.close(stdin)
        with open(PIDFILE, "w") as pidfile:
            pidfile.write(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if select.select([sock], [], [], 0.2)[0]:
                if "READY=1" in sock.recv(4096).decode().split("\n"):
                    return 0
            elif proc.poll() is not None:
                print(f"kpos exited with status {proc.returncode} before READY", file=sys.stderr)
                return 1
        print(f"kpos not READY within {START_TIMEOUT:g} s: killed", file=sys.stderr)
        proc.kill()
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def stop():
    pid = running()
    if pid:
        exited = os.pidfd_open(pid)
        os.kill(pid, signal.SIGTERM)
        if not select.select([exited], [], [], STOP_TIMEOUT)[0]:
            os.kill(pid, signal.SIGKILL)
            select.select([exited], [], [], 10)
    if os.path.exists(PIDFILE):
        os.unlink(PIDFILE)
    return 0


def main(argv):
    args = [a for a in argv if not a.startswith("-")]
    if len(args) != 2 or args[1] not in ("kpos", "kpos.service"):
        print(f"systemctl stand-in: only start|stop|restart|is-active|status kpos: {argv}",
              file=sys.stderr)
        return 2
    verb = args[0]
    if verb == "start":
        return start()
    if verb == "stop":
        return stop()
    if verb == "restart":
        stop()
        return start()
    if verb in ("is-active", "status"):
        pid = running()
        print(("active" if pid else "inactive") + (f" (pid {pid})" if pid and verb == "status" else ""))
        return 0 if pid else 3
    print(f"systemctl stand-in: unknown verb {verb}", file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
'''


def install_standin(path: Path) -> None:
    path.write_text(STANDIN)
    path.chmod(0o755)


# -- the device root -----------------------------------------------------------------------

@dataclass
class Device:
    """A provisioned device root: layout, terminal.toml, the release signing public key."""

    root: Path

    @property
    def opt(self) -> Path:
        return self.root / "opt" / "kpos"

    @property
    def data_dir(self) -> Path:
        return self.root / "var" / "lib" / "kpos"

    @property
    def output(self) -> Path:
        """What the terminal printed (screens, logs), every start appended."""
        return self.root / "var" / "log" / "kpos.out"

    @classmethod
    def make(cls, root: Path, public_key: Path, acquirer_port: int, **sections) -> Device:
        device = cls(root)
        etc = root / "etc" / "kpos"
        for folder in (etc, device.opt / "incoming", device.opt / "releases", device.data_dir,
                       root / "var" / "log", root / "run"):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(public_key, etc / "release-signing.pub")
        for name in ("sim-tmk.key", "capk.toml", "products.toml"):
            shutil.copy(REPO / "config" / name, etc / name)
        os.mkfifo(root / "run" / "kpos.stdin")
        (etc / "terminal.toml").write_text(terminal_toml(device.data_dir, acquirer_port,
                                                         **sections))
        return device

    def current(self) -> str | None:
        link = self.opt / "current"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def previous(self) -> str | None:
        link = self.opt / "previous"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def pid(self) -> int | None:
        """The running terminal's pid (the stand-in's view), None when stopped."""
        try:
            pid = int((self.root / "run" / "kpos.pid").read_text())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):
            return None
        return None if state in ("Z", "X") else pid

    def running_release(self) -> str | None:
        """The release whose kpos the running terminal process was started from."""
        pid = self.pid()
        if pid is None:
            return None
        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        script = Path(os.fsdecode(exe[1] if exe[0].endswith(b"python3") else exe[0]))
        return Path(os.path.realpath(script)).parent.parent.parent.name

    def send(self, line: str) -> None:
        """A console line to the terminal ("1000", "insert approve", "" = ENTER)."""
        fd = os.open(self.root / "run" / "kpos.stdin", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def output_text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def await_output(self, text: str, timeout: float = 30, after: int = 0) -> int:
        """Wait until `text` appears in the terminal's output past offset `after`; returns
        the offset just past it."""
        def found():
            at = self.output_text().find(text, after)
            return at + len(text) if at >= 0 else None
        return wait_until(found, timeout, f"{text!r} on the terminal")

    def stop_terminal(self) -> None:
        """Stop the terminal the stand-in started (teardown)."""
        env = {**os.environ, "KPOS_ROOT": str(self.root)}
        subprocess.run(["/usr/bin/python3", "-c", STANDIN, "stop", "kpos"], env=env,
                       timeout=120, check=False, stdin=subprocess.DEVNULL)

    def journal(self, sql: str, *args) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.data_dir / 'journal.db'}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()


def terminal_toml(data_dir: Path, acquirer_port: int, **sections) -> str:
    """config/sim.toml for the device: its data_dir, the test's acquirer, no login, quick
    store-and-forward retries; `sections` = {section: {key: TOML literal}} override more."""
    wanted = {"terminal": {"data_dir": f'"{data_dir}"'},
              "acquirer": {"port": str(acquirer_port), "echo_interval": "1",
                           "response_timeout": "30.0", "connect_timeout": "2.0"},
              "operators": {"login": "false"},
              "saf": {"retry_first": "0.2", "retry_max": "1.0"},
              "log": {"level": '"INFO"'},
              "backup": {"dir": '""'}}
    for section, keys in sections.items():
        wanted.setdefault(section, {}).update(keys)
    text, section = [], ""
    for line in SIM_TOML.read_text().splitlines():
        header = re.match(r"^\[(\w+)\]", line)
        section = header.group(1) if header else section
        key = re.match(r"^(\w+)\s*=", line)
        if key and key.group(1) in wanted.get(section, {}):
            line = f"{key.group(1)} = {wanted[section].pop(key.group(1))}"
        text.append(line)
    missing = {s: k for s, k in wanted.items() if k}
    assert not missing, f"keys not in sim.toml: {missing}"
    return "\n".join(text) + "\n"


# -- the acquirer simulator on its own thread ---------------------------------------------------

class Acquirer:
    """firmware.sim.acquirer.AcquirerSimulator on a loop thread of its own; methods block."""

    def __init__(self, ledger: Path):
        self.ledger = ledger
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="acquirer-sim")
        self.thread.start()
        self.sim = self._call(self._start())
        self.port = self.sim.port

    async def _start(self):
        from firmware.sim.acquirer import AcquirerSimulator
        from firmware.sim.catalog import load_catalog
        sim = AcquirerSimulator(load_catalog(), self.ledger)
        await sim.start("127.0.0.1", 0)
        return sim

    def _call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def down(self) -> None:
        self._call(self.sim.go_down())

    def up(self) -> None:
        self._call(self.sim.go_up())

    def delay(self, seconds: float) -> None:
        """Answer every request `seconds` late from now on."""
        async def set_delay():
            self.sim.faults.delay = seconds
        self._call(set_delay())

    def close(self) -> None:
        self._call(self.sim.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def rows(self, sql: str, *args) -> list[tuple]:
        """A read-only query of the simulator's ledger."""
        db = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

