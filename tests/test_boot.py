"""The boot files: firmware.notify against a stand-in systemd notify socket (READY, STATUS,
WATCHDOG in order), boot/kpos.service under systemd-analyze verify, boot/provision.sh's
--dry-run plan on a fake root, the udev rules, the Pi config fragment and cloud-init."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from firmware.notify import Notifier, link_status, watchdog_interval, watchdog_pings

BOOT = Path(__file__).resolve().parent.parent / "boot"
TIMEOUT_S = 5.0


@pytest.fixture
def systemd(tmp_path):
    """A bound datagram socket standing in for systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(TIMEOUT_S)
    yield sock
    sock.close()


def received(sock: socket.socket, count: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(count)]


def nothing_more(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


# -- firmware.notify -------------------------------------------------------------------------


def test_ready_status_watchdog_and_stopping_reach_the_socket_in_order(systemd, tmp_path):
    notifier = Notifier(str(tmp_path / "notify"))
    notifier.ready("starting")
    notifier.status(link_status(False, 3, 1))
    asyncio.run(_pings_while(notifier, [True]))
    notifier.stopping("stopping")
    assert received(systemd, 4) == ["READY=1\nSTATUS=starting\n",
                                    "STATUS=offline, 3 queued, 1 alerts\n", "WATCHDOG=1\n",
                                    "STOPPING=1\nSTATUS=stopping\n"]
    assert nothing_more(systemd)


async def _pings_while(notifier: Notifier, answers: list[bool]) -> None:
    """Run watchdog_pings until alive() has given every answer, then cancel it."""
    done = asyncio.Event()
    left = list(answers)

    def alive() -> bool:
        answer = left.pop(0)
        if not left:
            done.set()
        return answer

    task = asyncio.get_running_loop().create_task(watchdog_pings(notifier, 0, alive))
    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    task.cancel()


def test_no_ping_while_the_terminal_is_not_alive(systemd, tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "notify"))
    with caplog.at_level(logging.ERROR, "firmware.notify"):
        asyncio.run(_pings_while(notifier, [True, False, False, True]))
    assert received(systemd, 2) == ["WATCHDOG=1\n"] * 2
    assert nothing_more(systemd)
    assert [r.message for r in caplog.records] == ["terminal not alive: watchdog ping withheld"] * 2


def test_an_abstract_socket_name_is_reached():
    name = f"kpos-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(TIMEOUT_S)
        Notifier("@" + name).ready()
        assert sock.recv(4096) == b"READY=1\n"


def test_a_status_is_one_line_and_cannot_add_assignments(systemd, tmp_path):
    Notifier(str(tmp_path / "notify")).status("offline\nREADY=1\r\n" + "x" * 300)
    message = systemd.recv(4096).decode()
    assert message.startswith("STATUS=offline READY=1 xxx") and message.count("\n") == 1
    assert len(message) == len("STATUS=\n") + 200


def test_without_notify_socket_every_call_is_a_no_op(caplog):
    notifier = Notifier.from_env({})
    with caplog.at_level(logging.DEBUG, "firmware.notify"):
        notifier.ready("x"), notifier.status("y"), notifier.watchdog(), notifier.stopping()
    assert not notifier.enabled and caplog.records == []


def test_a_missing_socket_never_raises_and_is_logged_once(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.DEBUG, "firmware.notify"):
        for _ in range(3):
            notifier.watchdog()
    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "gone" in caplog.records[0].message


@pytest.mark.parametrize("environ, interval", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}, 0.2),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(environ, interval):
    assert watchdog_interval(environ) == interval


# -- boot/kpos.service ---------------------------------------------------------------------


def test_service_passes_systemd_analyze_verify():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(BOOT / "kpos.service")],
                          capture_output=True, text=True, timeout=60)
    exec_start = Path("/opt/kpos/current/.venv/bin/kpos")
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if not exec_start.exists():  # a build host: the release is not installed, the one complaint
        complaints.remove(f"kpos.service: Command {exec_start} is not executable: "
                          "No such file or directory")
    assert complaints == [] and (done.returncode == 0 or not exec_start.exists())


def test_service_says_what_the_brief_requires():
    service = (BOOT / "kpos.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure",
                 "ExecStart=/opt/kpos/current/.venv/bin/kpos run --config /etc/kpos/terminal.toml",
                 "User=kpos", "Group=kpos", "SupplementaryGroups=gpio spi i2c dialout lp plugdev input",
                 "StateDirectory=kpos", "StateDirectoryMode=0700", "ConfigurationDirectory=kpos",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "DevicePolicy=closed", "DeviceAllow=char-spi rw", "DeviceAllow=char-i2c rw",
                 "DeviceAllow=char-gpiochip rw", "WantedBy=multi-user.target"):
        assert f"\n{line}\n" in service, line
    assert "pcscd.service" in _value(service, "Wants") and "pcscd.service" in _value(service, "After")
    assert "ReadWritePaths" not in service  # the state directory is the only writable place


def _value(unit: str, key: str) -> str:
    return next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "="))


# -- boot/provision.sh -----------------------------------------------------------------------


@pytest.fixture
def fake_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\ngpio:x:997:pi\ninput:x:101:kpos\n")
    (root / "boot" / "firmware" / "config.txt").write_text("arm_64bit=1\n")
    (root / "boot" / "firmware" / "cmdline.txt").write_text(
        "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootwait\n")
    return root


def plan(root: Path, tmp_path: Path) -> list[str]:
    wheel = tmp_path / "kpos-9.8.7-py3-none-any.whl"
    wheel.write_bytes(b"")
    done = subprocess.run(["bash", str(BOOT / "provision.sh"), "--dry-run", "--root", str(root),
                           "--release", str(wheel), "--version", "9.8.7"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"dir"
            for p in sorted(root.rglob("*"))}


def test_dry_run_prints_the_whole_plan_and_changes_nothing(fake_root, tmp_path):
    before = snapshot(fake_root)
    lines = plan(fake_root, tmp_path)
    rel = f"{fake_root}/opt/kpos/releases/9.8.7"
    chroot = f"+ chroot {fake_root} "
    expected = [
        chroot + "apt-get update",
        chroot + "useradd --system --user-group --home-dir /var/lib/kpos --no-create-home "
                 "--shell /usr/sbin/nologin kpos",
        chroot + "usermod --append --groups gpio kpos",  # input already has kpos; no spi here
        f"+ install -d -m 0700 {fake_root}/etc/kpos/keys {fake_root}/var/lib/kpos",
        chroot + "chown kpos:kpos /etc/kpos/keys /var/lib/kpos",
        f"+ install -m 0644 {BOOT.parent}/config/terminal.toml {fake_root}/etc/kpos/terminal.toml",
        chroot + "python3 -m venv /opt/kpos/releases/9.8.7/.venv",
        chroot + "/opt/kpos/releases/9.8.7/.venv/bin/pip install --no-cache-dir "
                 "/opt/kpos/releases/9.8.7/kpos-9.8.7-py3-none-any.whl[pi,pcsc]",
        "+ ln -sfn releases/9.8.7 " + f"{fake_root}/opt/kpos/current.new",
        f"+ mv -T {fake_root}/opt/kpos/current.new {fake_root}/opt/kpos/current",
        f"+ install -m 0644 {BOOT}/99-kpos.rules {fake_root}/etc/udev/rules.d/99-kpos.rules",
        f"+ sed -i s/console=serial0,[0-9]* *// {fake_root}/boot/firmware/cmdline.txt",
        f"+ systemctl --root={fake_root} enable pcscd.socket kpos.service kpos-backup.timer",
        "provision: dry run, nothing changed",
    ]
    assert [line for line in lines if line in expected] == expected
    install = next(line for line in lines if "apt-get install" in line)
    for package in ("pcscd", "libpcsclite1", "python3-venv", "fonts-noto-cjk"):
        assert f" {package} " in f"{install} "
    assert f"{rel}/boot/" in next(line for line in lines if "config.txt.fragment" in line)
    assert "usermod --append --groups input kpos" not in "\n".join(lines)
    assert snapshot(fake_root) == before


def test_the_mender_update_module_is_installed_only_where_the_client_is(fake_root, tmp_path):
    module = f"{fake_root}/usr/share/mender/modules/v3/kpos"
    assert not [line for line in plan(fake_root, tmp_path) if module in line]
    (fake_root / "usr" / "share" / "mender" / "modules" / "v3").mkdir(parents=True)
    assert f"+ install -m 0755 {BOOT.parent}/deploy/mender/kpos {module}" in plan(fake_root, tmp_path)


def test_a_provisioned_root_gets_only_the_missing_steps(fake_root, tmp_path):
    (fake_root / "etc" / "passwd").write_text("kpos:x:999:999::/var/lib/kpos:/usr/sbin/nologin\n")
    (fake_root / "etc" / "group").write_text("gpio:x:997:pi,kpos\nkpos:x:999:\n")
    (fake_root / "etc" / "kpos").mkdir()
    (fake_root / "etc" / "kpos" / "terminal.toml").write_text("# edited by the engineer\n")
    venv_kpos = fake_root / "opt/kpos/releases/9.8.7/.venv/bin/kpos"
    venv_kpos.parent.mkdir(parents=True)
    venv_kpos.write_text("#!/bin/sh\n")
    venv_kpos.chmod(0o755)
    (fake_root / "opt/kpos/current").symlink_to("releases/9.8.7")
    (fake_root / "boot/firmware/config.txt").write_text((BOOT / "config.txt.fragment").read_text())
    (fake_root / "boot/firmware/cmdline.txt").write_text("console=tty1 root=PARTUUID=1234-02\n")
    text = "\n".join(plan(fake_root, tmp_path))
    for done in ("useradd", "usermod", "config/terminal.toml", "-m venv", "pip install", "ln -sfn",
                 "BEGIN KPOS", "cmdline.txt"):
        assert done not in text, done
    assert "capk.toml" in text and "enable pcscd.socket kpos.service" in text


def test_provision_refuses_an_unknown_option():
    done = subprocess.run(["bash", str(BOOT / "provision.sh"), "--dry-run", "--wet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown option --wet" in done.stderr


# -- udev rules, Pi config, cloud-init ---------------------------------------------------------


def test_udev_rules_give_the_kpos_group_stable_device_names():
    rules = [line for line in (BOOT / "99-kpos.rules").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for line in rules:
        pairs = [part.strip() for part in line.split(",")]
        assert all(("==" in p or "+=" in p or "=" in p) and '"' in p for p in pairs), line
    text = "\n".join(rules)
    for name in ("kpos-printer", "kpos-scanner", "kpos-swipe", "kpos-reader"):
        assert f'SYMLINK+="{name}"' in text
    printers = [line for line in rules if "kpos-printer" in line or "kpos-scanner" in line]
    assert all('GROUP="kpos"' in line and 'MODE="0660"' in line for line in printers)


def test_pi_config_fragment_turns_on_the_buses():
    text = (BOOT / "config.txt.fragment").read_text()
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    for line in ("dtparam=spi=on", "dtparam=i2c_arm=on", "enable_uart=1"):
        assert line in settings
    assert text.count("# BEGIN KPOS") == 1 and text.count("# END KPOS") == 1


def test_cloud_init_runs_provisioning():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    text = (BOOT / "cloud-init" / "user-data").read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert any("boot/provision.sh --release" in " ".join(cmd) for cmd in data["runcmd"])
    assert data["ssh_pwauth"] is False and data["power_state"]["mode"] == "reboot"


def test_the_terminal_process_says_ready_pings_the_watchdog_and_says_stopping(systemd, tmp_path):
    """The real terminal command (the simulator's, the same Terminal as `kpos run`) under a
    stand-in notify socket: READY once started, WATCHDOG pings from its loop, STOPPING."""
    import sys
    script = tmp_path / "idle.kpos"
    script.write_text('login 01 0000\nexpect signon\nexpect screen "op 01"\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    done = subprocess.run([sys.executable, "-m", "firmware", "sim", "--script", str(script),
                           "--data-dir", str(tmp_path / "data")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    messages = []
    systemd.setblocking(False)
    while True:
        try:
            messages.append(systemd.recv(4096).decode())
        except BlockingIOError:
            break
    kinds = [m.split("\n")[0].split("=")[0] for m in messages]
    assert kinds[0] == "READY" and "WATCHDOG" in kinds and kinds[-1] == "STOPPING", messages
    assert kinds.index("READY") < kinds.index("WATCHDOG") < kinds.index("STOPPING")
