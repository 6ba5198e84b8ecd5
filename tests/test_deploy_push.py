"""./deploy.sh push | status | rollback | provision against a real sshd on 127.0.0.1 into a
temporary device root, the systemctl stand-in running the real `kpos run` on simulated
peripherals, and the acquirer simulator (tests/deployrig.py). Bundles are built once per
session by ./deploy.sh build (tests/deployrig_build.py): v1 (conftest's host_release, shared
with test_deploy_build), v2, a v3 that never says READY and a v4 with one more journal
migration, both from patched copies of the work tree; each is staged on a template device as
soon as it is built.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import HOST_RELEASE
from deployrig import Acquirer, Device, Sshd, deploy, wait_until
from deployrig_build import REPO, build_bundle, make_key

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists() or not shutil.which("rsync"),
    reason="needs root, openssh-server and rsync")

V1, V2, V3_NOT_READY, V4_NEW_SCHEMA = HOST_RELEASE, "0.9.2+d2", "0.9.3+d3", "0.9.4+d4"
QUICK = ("--idle-timeout", "60", "--ready-timeout", "60", "--health-timeout", "10")
PATCHES = {  # release -> {file: (text, replacement)}: what makes it a test release
    V3_NOT_READY: {"firmware/notify.py": (
        '        self._send("READY=1", status)',
        '        return  # test release: never READY')},
    V4_NEW_SCHEMA: {"firmware/journal.py": (
        "SCHEMA_VERSION = len(MIGRATIONS)\n",
        'MIGRATIONS.append(["ALTER TABLE advice ADD COLUMN route TEXT NOT NULL DEFAULT \'\'",'
        ' "CREATE TABLE deploy_note (id INTEGER PRIMARY KEY)"])  # a newer release\'s step\n'
        "SCHEMA_VERSION = len(MIGRATIONS)\n")},
}


# -- session: keys, bundles, sshd ------------------------------------------------------------

@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="session")
def key(release_key) -> Path:
    """The signing key of every bundle here (the shared build's); devices trust KEY.pub."""
    return release_key


@pytest.fixture(scope="session")
def builds(work, key):
    """Futures of the bundles built here (all but V1, the session's shared build), started
    at once, in parallel."""
    out = work / "dist"
    jobs = {V2: lambda: build_bundle(out, V2, key)}
    for version, patches in PATCHES.items():
        jobs[version] = lambda v=version, p=patches: build_patched(work / f"src-{v}", out, v,
                                                                   p, key)
    with ThreadPoolExecutor(len(jobs)) as pool:
        yield {version: pool.submit(job) for version, job in jobs.items()}


@pytest.fixture(scope="session")
def bundles(builds, host_release) -> dict[str, Path]:
    """Every release bundle of the tests: V1 is conftest's shared host build."""
    return {V1: host_release} | {version: build.result() for version, build in builds.items()}


def build_patched(src: Path, out: Path, version: str, patches: dict[str, tuple[str, str]],
                  key: Path) -> Path:
    """A bundle from a copy of the work tree (a git repo of its own) with `patches` applied."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    for name, (text, replacement) in patches.items():
        source = (src / name).read_text()
        assert source.count(text) == 1, f"patch for {version} no longer applies to {name}"
        (src / name).write_text(source.replace(text, replacement))
    subprocess.run(["git", "init", "-q", str(src)], check=True)  # a scratch repo, not ours
    subprocess.run(["git", "-C", str(src), "-c", "user.name=test", "-c", "user.email=test@test",
                    "commit", "-q", "--allow-empty", "-m", f"test release {version}"], check=True)
    (src / ".git" / "info" / "exclude").write_text(".venv\n")
    (src / ".venv").symlink_to(REPO / ".venv")
    done = subprocess.run([str(src / "deploy.sh"), "build", "--version", version, "--platform",
                           "host", "--out", str(out)], env={**os.environ,
                          "KPOS_SIGNING_KEY": str(key)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out / f"kpos-{version}.tar"


@pytest.fixture(scope="session")
def sshd(work):
    server = Sshd(work / "sshd").start()
    yield server
    server.stop()


@pytest.fixture
def acquirer(tmp_path):
    host = Acquirer(tmp_path / "acquirer.db")
    yield host
    host.close()


@pytest.fixture(scope="session")
def staged(work, sshd, key, builds, request) -> Device:
    """A device root where every test release was pushed with --stage-only (copied,
    verified, installed, selftested; each push as soon as its bundle is built): tests start
    from hard-linked copies of those installs, valid because every device is reached
    through the same sshd.device_link path."""
    template = Device.make(work / "template", Path(f"{key}.pub"), acquirer_port=9)
    sshd.use(template)
    with ThreadPoolExecutor(len(builds) + 1) as pool:
        stages = {version: pool.submit(lambda b=build: pushed(sshd, b.result(), "--stage-only"))
                  for version, build in builds.items()}
        stages[V1] = pool.submit(pushed, sshd, request.getfixturevalue("host_release"),
                                 "--stage-only")  # built now, on this thread, if not yet
        outs = {version: stage.result() for version, stage in stages.items()}
    for version, out in outs.items():
        assert f"installed release {version}" in out and f"selftest of {version} ok" in out
        assert "staged: " in out
    assert template.current() is None
    return template


@pytest.fixture
def device(tmp_path, sshd, key, acquirer, staged):
    """A provisioned device root that the sshd's sessions use, nothing installed yet; its
    terminal stopped after."""
    dev = Device.make(tmp_path / "root", Path(f"{key}.pub"), acquirer.port)
    sshd.use(dev)
    yield dev
    dev.stop_terminal()


@pytest.fixture
def seed(staged, device):
    """seed(V, ...): put the staged installs of these releases on the device (none current)."""
    def put(*versions: str) -> None:
        for version in versions:
            subprocess.run(["cp", "-al", str(staged.opt / "releases" / version),
                            str(device.opt / "releases")], check=True)
    return put


def push(sshd, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    return deploy("push", sshd.target, str(bundle), *QUICK, *extra, env=sshd.env())


def pushed(sshd, bundle: Path, *extra: str) -> str:
    done = push(sshd, bundle, *extra)
    assert done.returncode == 0, done.stderr
    return done.stderr


def update_log(device: Device) -> str:
    return (device.root / "var" / "log" / "kpos-update.log").read_text()


def serving(device: Device) -> int:
    """Waits for the idle screen drawn once the update's hold was lifted (a key pressed
    while held only shows "Updating"); returns the output offset past it."""
    text = device.output_text()
    held = max(text.rfind("--- systemctl start kpos"), text.rfind("Please wait"))
    return device.await_output("Key in amount", after=held)


def tap_sale(device: Device, amount: str, result: str, after: int | None = None) -> int:
    """A contactless sale on the console: amount, tap, the `result` screen, receipts taken."""
    at = serving(device) if after is None else device.await_output("Key in amount", after=after)
    device.send(amount)
    at = device.await_output("Insert, tap or swipe", after=at)
    device.send("tap approve")
    at = device.await_output(result, after=at, timeout=40)
    at = device.await_output("Take receipts", after=at)
    device.send("")
    return at


def repacked(bundle: Path, out: Path, change) -> Path:
    """A copy of `bundle` in `out`, each member's bytes passed through change(name, data)."""
    out.mkdir(parents=True, exist_ok=True)
    copy = out / bundle.name
    with tarfile.open(bundle) as src, tarfile.open(copy, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None:
                data = change(member.name, data)
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return copy


# -- the tests -------------------------------------------------------------------------------

def test_a_good_update_switches_restarts_and_sells(sshd, device, seed, bundles):
    seed(V1, V2)
    out = pushed(sshd, bundles[V1])
    assert "selftest of " + V1 + " ok" in out and "health ok" in out
    assert (device.current(), device.previous(), device.running_release()) == (V1, None, V1)

    out = pushed(sshd, bundles[V2])
    assert (device.current(), device.previous()) == (V2, V1)
    assert device.running_release() == V2
    assert "service restarted and READY" in out and "ok  echo" in out
    assert "signature ok" in out and "MANIFEST sums ok" in out

    tap_sale(device, "1000", "APPROVED")
    wait_until(lambda: device.journal("SELECT status FROM txn") == [("APPROVED",)], 20,
               "the sale journaled on v2")

    status = deploy("status", sshd.target, env=sshd.env())
    assert status.returncode == 0, status.stderr
    assert re.search(rf"current +{re.escape(V2)}\n", status.stdout)
    assert re.search(rf"previous +{re.escape(V1)}\n", status.stdout)
    assert "service   active" in status.stdout


def test_a_bundle_signed_with_another_key_is_refused(sshd, device, seed, bundles, tmp_path):
    seed(V1)
    pushed(sshd, bundles[V1])
    other = make_key(tmp_path / "other")
    forged = repacked(bundles[V2], tmp_path / "forged", lambda name, data: data)
    top = tmp_path / "unpacked"
    with tarfile.open(forged) as tar:
        tar.extractall(top, filter="data")
    release = top / f"kpos-{V2}"
    subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", str(other), "-in",
                    str(release / "MANIFEST"), "-out", str(release / "MANIFEST.sig")], check=True)
    forged.unlink()
    with tarfile.open(forged, "w") as tar:
        tar.add(release, arcname=release.name)

    done = push(sshd, forged)
    assert done.returncode == 1
    assert "bad signature" in done.stderr.splitlines()[-1]
    assert not (device.opt / "releases" / V2).exists()
    assert (device.current(), device.running_release()) == (V1, V1)
    assert not (device.opt / "releases" / V2).exists()


def test_a_file_changed_after_signing_is_refused(sshd, device, seed, bundles, tmp_path):
    seed(V1)
    pushed(sshd, bundles[V1])

    def tamper(name: str, data: bytes) -> bytes:
        return data + b"\0" if name.endswith(f"kpos-{V2}-py3-none-any.whl") else data

    done = push(sshd, repacked(bundles[V2], tmp_path / "tampered", tamper))
    assert done.returncode == 1
    assert "MANIFEST check failed" in done.stderr.splitlines()[-1]
    assert f"wheels/kpos-{V2}-py3-none-any.whl: FAILED" in done.stderr
    assert not (device.opt / "releases" / V2).exists()
    assert (device.current(), device.running_release()) == (V1, V1)


def test_a_release_that_never_gets_ready_is_rolled_back(sshd, device, seed, bundles):
    seed(V2, V3_NOT_READY)
    pushed(sshd, bundles[V2])
    start_timeout = device.root / "run" / "start-timeout"  # the stand-in reads it at start
    start_timeout.write_text("3")  # V3's TimeoutStartSec: it never says READY
    v2_pid = device.pid()

    with ThreadPoolExecutor(1) as pool:
        update = pool.submit(push, sshd, bundles[V3_NOT_READY])
        wait_until(lambda: update.done() or device.pid() not in (None, v2_pid), 120,
                   "the terminal restarted on V3 (the stand-in has read its deadline)")
        start_timeout.write_text("60")  # the rollback's restart of V2: a deadline it meets
        done = update.result(timeout=300)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert f"rolled back to {V2}" in last and "systemctl restart kpos failed" in last
    assert (device.current(), device.running_release()) == (V2, V2)
    assert f"switched current back to {V2}" in update_log(device)
    assert not (device.data_dir / "update-hold.json").exists()  # the hold is lifted


def test_an_interrupted_copy_resumes_where_it_stopped(sshd, device, seed, bundles):
    seed(V2)
    bundle, incoming = bundles[V2], device.opt / "incoming"
    size = bundle.stat().st_size
    slow = subprocess.Popen(  # a slow link (about 1 MB/s) that drops part-way
        ["bash", str(REPO / "deploy.sh"), "push", sshd.target, str(bundle), *QUICK],
        env=sshd.env(KPOS_RSYNC_OPTS="--bwlimit=1000"), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partial = incoming / bundle.name
        wait_until(lambda: partial.exists() and partial.stat().st_size > 1_000_000, 60,
                   "a part of the bundle on the device")
    finally:
        os.killpg(slow.pid, signal.SIGKILL)  # deploy.sh, its rsync and ssh: the link drops
        slow.wait(10)
    have = wait_until(lambda: stable_size(partial), 10, "the cut copy to settle")
    assert have < size

    out = pushed(sshd, bundle)
    assert f"resuming {bundle.name} at byte {have} of {size}" in out
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))
    assert sent < size - have + 64 * 1024, (sent, size, have)  # only the rest was sent
    assert partial.read_bytes() == bundle.read_bytes()
    assert device.current() == V2


def stable_size(path: Path) -> int | None:
    """The file's size once the receiving rsync has exited (nothing has it open)."""
    holders = subprocess.run(["fuser", str(path)], capture_output=True, text=True)
    return path.stat().st_size if holders.returncode != 0 else None


def test_an_update_during_a_sale_waits_for_its_receipt(sshd, device, seed, bundles):
    from firmware.update import HOLD_NAME
    seed(V1, V2)
    pushed(sshd, bundles[V1])
    assert device.current() == V1

    at = serving(device)
    device.send("2500")
    at = device.await_output("Insert, tap or swipe", after=at)
    device.send("insert approve")
    at = device.await_output("Enter PIN", after=at)  # the sale is in flight: card in, PIN asked
    update = subprocess.Popen(
        ["bash", str(REPO / "deploy.sh"), "push", sshd.target, str(bundles[V2]), *QUICK],
        env=sshd.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (device.data_dir / HOLD_NAME).exists(), 60, "the update's hold")
        assert update.poll() is None and device.running_release() == V1
        device.send("1234")  # the customer's PIN: the sale goes on to the acquirer
        approved = at = device.await_output("APPROVED", after=at)
        at = device.await_output("Take receipts", after=at)
        device.send("")
        at = device.await_output("Remove card", after=at)
        device.send("remove")
        _, err = update.communicate(timeout=120)
    finally:
        update.kill()
    assert update.returncode == 0, err
    restarted = device.output_text().rfind("--- systemctl start kpos")
    assert approved < restarted, "the switch came before the sale's receipt"
    assert device.running_release() == V2
    assert device.journal("SELECT status, amount FROM txn") == [("APPROVED", 2500)]
    assert len(list((device.data_dir / "receipts").glob("*"))) >= 1


def test_after_a_rollback_the_older_release_drains_the_newer_ones_queue(
        sshd, device, seed, bundles, acquirer):
    seed(V2, V4_NEW_SCHEMA)
    pushed(sshd, bundles[V2])
    pushed(sshd, bundles[V4_NEW_SCHEMA])
    from firmware.journal import SCHEMA_VERSION
    assert device.journal("PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]  # V4's step ran

    acquirer.down()
    at = tap_sale(device, "3000", "Approved offline")
    tap_sale(device, "4000", "Approved offline", after=at)
    queued = device.journal("SELECT txn_id FROM advice WHERE status = 'PENDING'")
    assert len(queued) == 2

    done = deploy("rollback", sshd.target, *QUICK, "--no-echo", env=sshd.env())
    assert done.returncode == 0, done.stderr
    assert (device.current(), device.previous(), device.running_release()) == (
        V2, V4_NEW_SCHEMA, V2)
    assert "ok  queue" in done.stderr  # nothing the newer release queued vanished

    acquirer.up()
    wait_until(lambda: device.journal("SELECT COUNT(*) FROM advice WHERE status = 'ACKED'")
               == [(2,)], 30, "v2 forwarding the advices v4 queued")
    advices = acquirer.rows("SELECT amount, repeats FROM authorisations WHERE kind = 'advice'")
    assert sorted(advices) == [(3000, 0), (4000, 0)]  # each advice seen once


def test_provision_dry_run_plans_the_device_root(sshd, device, bundles, key):
    done = deploy("provision", sshd.target, str(bundles[V1]), "--dry-run",
                  env=sshd.env(KPOS_SIGNING_KEY=str(key)))
    assert done.returncode == 0, done.stderr
    assert f"--root {sshd.device_link}" in done.stderr or str(sshd.device_link) in done.stderr
    assert "provision: dry run, nothing changed" in done.stderr
    assert "== release " + V1 in done.stderr
    assert device.current() is None
