"""./deploy.sh build and keygen: the signed bundle's layout, MANIFEST, signature, version
override, key refusals, and the Mender artifact with its update module."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import HOST_RELEASE
from deployrig import Acquirer, Device, install_standin
from deployrig_build import REPO, make_key, run_deploy
from firmware.journal import SCHEMA_VERSION

VERSION = HOST_RELEASE  # the --version of the shared build
TOP = f"kpos-{VERSION}"
HARDWARE = ("lgpio", "rpi_gpio", "rpi_lgpio", "pyscard", "evdev", "spidev")
STATE_SCRIPTS = ("ArtifactInstall_Enter_00_hold", "ArtifactInstall_Leave_00_release",
                 "ArtifactFailure_Leave_00_release", "ArtifactCommit_Enter_00_health")


@pytest.fixture(scope="session")
def release(tmp_path_factory, release_key, host_release):
    """The session's shared host build with --mender (conftest), unpacked; shared by every
    test here."""
    root = tmp_path_factory.mktemp("release")
    with tarfile.open(host_release) as bundle:
        names = bundle.getnames()
        bundle.extractall(root / "tree", filter="tar")
    return SimpleNamespace(tar=host_release, mender=host_release.with_suffix(".mender"),
                           key=release_key, pub=Path(f"{release_key}.pub"), names=names,
                           tree=root / "tree" / TOP)


def repo_files(folder: str) -> set[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                             folder], cwd=REPO, capture_output=True, check=True).stdout
    return {name for name in listed.decode().split("\0") if name and (REPO / name).exists()}


def bundle_files(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()}


def verify(pub: Path, manifest: Path, sig: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
                           "-in", str(manifest), "-sigfile", str(sig)],
                          capture_output=True, text=True, check=False)


def test_bundle_layout(release):
    assert all(n == TOP or n.startswith(TOP + "/") for n in release.names)
    assert {p.name for p in release.tree.iterdir()} == {
        "VERSION", "release.json", "wheels", "config", "boot", "device", "MANIFEST", "MANIFEST.sig"}
    files = bundle_files(release.tree)
    assert {f for f in files if f.startswith(("config/", "boot/"))} == \
        repo_files("config") | repo_files("boot")
    assert (release.tree / "device/kpos-device").read_bytes() == \
        (REPO / "deploy/device/kpos-device").read_bytes()
    assert os.access(release.tree / "device/kpos-device", os.X_OK)
    assert (release.tree / "device/mender-kpos").read_bytes() == (REPO / "deploy/mender/kpos").read_bytes()
    assert os.access(release.tree / "device/mender-kpos", os.X_OK)
    assert len((release.tree / "MANIFEST.sig").read_bytes()) == 64


def test_wheelhouse_has_dependencies_but_no_hardware_libs(release):
    wheels = {p.name.split("-")[0].lower() for p in (release.tree / "wheels").glob("*.whl")}
    assert {"kpos", "cryptography", "cffi", "pyiso8583", "python_escpos", "pyemv", "psec",
            "pyserial", "gpiozero", "pyusb", "pillow", "luma_core"} <= wheels
    assert not wheels & set(HARDWARE)


def test_version_override_shows_everywhere(release):
    assert (release.tree / "VERSION").read_text() == VERSION + "\n"
    info = json.loads((release.tree / "release.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert info["version"] == VERSION
    assert info["commit"] in (head, head + "+dirty")
    assert info["python"] == ">=3.11" and info["platform"] == "host"
    assert info["journal_schema"] == SCHEMA_VERSION
    assert datetime.fromisoformat(info["built"]).utcoffset().total_seconds() == 0
    assert (release.tree / "wheels" / f"kpos-{VERSION}-py3-none-any.whl").is_file()


def test_manifest_lists_every_file_with_its_sha256(release):
    lines = (release.tree / "MANIFEST").read_text().splitlines()
    paths = [line.split("  ", 1)[1] for line in lines]
    assert paths == sorted(paths)
    assert set(paths) == bundle_files(release.tree) - {"MANIFEST", "MANIFEST.sig"}
    for line in lines:
        digest, path = line.split("  ", 1)
        assert hashlib.sha256((release.tree / path).read_bytes()).hexdigest() == digest, path


def test_signature_verifies_and_breaks_on_one_changed_byte(release, tmp_path):
    manifest, sig = release.tree / "MANIFEST", release.tree / "MANIFEST.sig"
    assert verify(release.pub, manifest, sig).returncode == 0
    tampered = tmp_path / "MANIFEST"
    data = bytearray(manifest.read_bytes())
    data[10] ^= 0x01
    tampered.write_bytes(bytes(data))
    assert verify(release.pub, tampered, sig).returncode != 0


def test_changed_wheel_no_longer_matches_manifest(release, tmp_path):
    copy = tmp_path / TOP
    shutil.copytree(release.tree, copy)
    check = ["sha256sum", "-c", "--quiet", "MANIFEST"]
    assert subprocess.run(check, cwd=copy, capture_output=True, check=False).returncode == 0
    with (copy / "wheels" / f"kpos-{VERSION}-py3-none-any.whl").open("ab") as wheel:
        wheel.write(b"\0")
    result = subprocess.run(check, cwd=copy, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert f"wheels/kpos-{VERSION}-py3-none-any.whl: FAILED" in result.stdout


def test_build_refuses_a_missing_key(tmp_path):
    result = run_deploy("build", "--platform", "host", "--out", str(tmp_path), key=tmp_path / "none.pem")
    assert result.returncode != 0
    assert "no signing key" in result.stderr and "keygen" in result.stderr
    assert not list(tmp_path.iterdir())


def test_build_refuses_a_key_readable_by_others(tmp_path):
    key = make_key(tmp_path)
    key.chmod(0o644)
    result = run_deploy("build", "--platform", "host", "--out", str(tmp_path / "dist"), key=key)
    assert result.returncode != 0
    assert "mode 644" in result.stderr and "chmod 600" in result.stderr
    assert not (tmp_path / "dist").exists()


@pytest.fixture
def key_in_repo(tmp_path):
    """A good key file inside the repository (under the ignored build/) reached by a link."""
    inside = REPO / "build" / f"test-signing-{os.getpid()}"
    made_build = not inside.parent.exists()
    inside.mkdir(parents=True)
    try:
        key = make_key(inside)
        link = tmp_path / "looks-outside.pem"
        link.symlink_to(key)
        yield link
    finally:
        shutil.rmtree(inside.parent if made_build else inside)


def test_build_refuses_a_key_inside_the_repo(key_in_repo, tmp_path):
    result = run_deploy("build", "--platform", "host", "--out", str(tmp_path / "dist"), key=key_in_repo)
    assert result.returncode != 0
    assert "inside the repository" in result.stderr
    assert not (tmp_path / "dist").exists()


def test_build_refuses_a_non_pep440_version(release, tmp_path):
    result = run_deploy("build", "--version", "2.0 beta", "--platform", "host",
                        "--out", str(tmp_path), key=release.key)
    assert result.returncode != 0
    assert "not a PEP 440 version" in result.stderr and "--version 2.0 beta refused" in result.stderr
    assert not list(tmp_path.iterdir())


def test_keygen_refuses_to_overwrite(tmp_path):
    key = make_key(tmp_path)
    before = key.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    result = run_deploy("keygen", str(key))
    assert result.returncode != 0 and "already exists" in result.stderr
    assert key.read_bytes() == before


def test_keygen_prints_the_public_key_fingerprint(tmp_path):
    key = tmp_path / "k.pem"
    result = run_deploy("keygen", str(key))
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", f"{key}.pub", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    assert result.stdout.strip() == "SHA256:" + hashlib.sha256(der).hexdigest()


def test_mender_artifact_lists_payload_device_types_and_state_scripts(release):
    read = subprocess.run(["mender-artifact", "read", str(release.mender)], capture_output=True,
                          text=True, check=True).stdout
    assert f"Name: {TOP}" in read
    assert "Compatible devices: '[raspberrypi4 raspberrypi5]'" in read
    assert "Type:   kpos" in read and "name:     kpos.tar" in read
    assert f"checksum: {hashlib.sha256(release.tar.read_bytes()).hexdigest()}" in read
    for script in STATE_SCRIPTS:
        assert script in read


def module(state: str, files: Path, root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KPOS_ROOT": str(root)}
    return subprocess.run([str(REPO / "deploy/mender/kpos"), state, str(files)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_update_module_answers_mender_queries(tmp_path):
    assert module("NeedsArtifactReboot", tmp_path, tmp_path).stdout == "No\n"
    assert module("SupportsRollback", tmp_path, tmp_path).stdout == "Yes\n"


def test_update_module_refuses_a_bundle_signed_by_another_key(release, tmp_path):
    files, root = tmp_path / "files-dir", tmp_path / "device"
    (files / "files").mkdir(parents=True)
    shutil.copy(release.tar, files / "files" / "kpos.tar")
    other = make_key(tmp_path / "other")
    (root / "etc/kpos").mkdir(parents=True)
    shutil.copy(f"{other}.pub", root / "etc/kpos/release-signing.pub")
    result = module("ArtifactInstall", files, root)
    assert result.returncode != 0
    assert f"bad signature on kpos {VERSION}: refused" in result.stderr
    assert not (root / "opt/kpos/releases").exists()


def test_update_module_refuses_an_updater_changed_after_signing(release, tmp_path):
    tree = tmp_path / "tree" / TOP
    shutil.copytree(release.tree, tree)
    with (tree / "device" / "kpos-device").open("a") as updater:
        updater.write("# changed\n")
    files, root = tmp_path / "files-dir", tmp_path / "device"
    (files / "files").mkdir(parents=True)
    with tarfile.open(files / "files" / "kpos.tar", "w") as tar:
        tar.add(tree, arcname=TOP)
    (root / "etc/kpos").mkdir(parents=True)
    shutil.copy(release.pub, root / "etc/kpos/release-signing.pub")
    result = module("ArtifactInstall", files, root)
    assert result.returncode != 0
    assert "device/kpos-device does not match the signed MANIFEST" in result.stderr
    assert not (root / "opt/kpos/releases").exists()


def run_script(path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(path), *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_mender_states_install_hold_and_health_on_a_device_root(release, tmp_path):
    """The artifact's scripts in Mender's order on a device root: the module installs and
    switches with the real updater (systemctl stand-in runs the terminal), the hold script
    holds the running terminal and snapshots its queue, the commit health check passes,
    and fails once the acquirer is down (Mender would then roll back)."""
    acquirer = Acquirer(tmp_path / "acquirer.db")
    device = Device.make(tmp_path / "root", release.pub, acquirer.port)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    install_standin(bin_dir / "systemctl")
    env = {**os.environ, "KPOS_ROOT": str(device.root), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    files = tmp_path / "mender-files"
    (files / "files").mkdir(parents=True)
    shutil.copy(release.tar, files / "files" / "kpos.tar")
    mender = REPO / "deploy" / "mender"
    try:
        first = run_script(mender / "ArtifactInstall_Enter_00_hold", env)
        assert first.returncode == 0, first.stderr  # nothing installed yet: nothing to hold
        install = run_script(mender / "kpos", env, "ArtifactInstall", str(files))
        assert install.returncode == 0, install.stdout + install.stderr
        assert device.current() == VERSION and device.running_release() == VERSION
        assert (device.opt / "incoming" / f"{TOP}.tar").read_bytes() == release.tar.read_bytes()
        hold = run_script(mender / "ArtifactInstall_Enter_00_hold", env)
        assert hold.returncode == 0, hold.stderr
        snapshot = json.loads((device.data_dir / "mender-queue.json").read_text())
        assert snapshot["items"] == []  # a fresh terminal: nothing queued
        released = run_script(mender / "ArtifactInstall_Leave_00_release", env)
        assert released.returncode == 0, released.stderr
        health = run_script(mender / "ArtifactCommit_Enter_00_health", env)
        assert health.returncode == 0, health.stdout + health.stderr
        acquirer.down()
        sick = run_script(mender / "ArtifactCommit_Enter_00_health", env)
        assert sick.returncode != 0 and "FAIL" in sick.stdout + sick.stderr
        assert run_script(mender / "kpos", env, "Cleanup", str(files)).returncode == 0
        assert not (files / "tmp").exists() or not any((files / "tmp").iterdir())
    finally:
        device.stop_terminal()
        acquirer.close()
