"""Hostile update bundles (issue 8 point 6; docs/fuzzing.md): hypothesis mutates a small
signed bundle (member names, types, link targets, MANIFEST lines, signatures, tar bytes)
and runs the device's real checks on it in a temporary device root: deploy/device/
verify-bundle (what deploy/push.sh pipes to the device) and `kpos-device install` (what
both push.sh and the Mender module run next).

Properties: a bundle is accepted only when its files are exactly the signed ones; a refusal
is exit 1 with one last line "error: <reason>" and no traceback, within a bounded time;
after a refusal nothing in the temporary folder has changed but the update log (no file
outside it, no release, no scratch left). Explicit cases for each tar trick; the Mender
module's own pre-check is covered at the end. Budgets: tests/fuzz_profiles.py.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from deployrig_build import REPO, make_key
from fuzz_profiles import LONG, fuzz

pytestmark = pytest.mark.timeout(7200 if LONG else 120)

VERIFY = REPO / "deploy" / "device" / "verify-bundle"
UPDATER = REPO / "deploy" / "device" / "kpos-device"
MENDER = REPO / "deploy" / "mender" / "kpos"
V = "1.2.3+f1"
TOP = f"kpos-{V}"
TIMEOUT = 30  # seconds per command: a hang fails the test
OUTSIDE = f"{tempfile.gettempdir()}/kpos-fuzz-outside"  # absolute paths aim here: never made
KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
         "hardlink": tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE,
         "fifo": tarfile.FIFOTYPE}


@dataclass(frozen=True)
class Member:
    name: str  # surrogate escapes stand for bytes that are not UTF-8
    kind: str = "file"
    data: bytes = b""
    target: str = ""  # link target


@dataclass(frozen=True)
class Keys:
    good: Path
    other: Path


def genuine_files() -> dict[str, bytes]:
    """The files of the synthetic release, as the bundle's MANIFEST lists them."""
    return {"VERSION": f"{V}\n".encode(), "device/kpos-device": UPDATER.read_bytes(),
            "config/terminal.toml": b"[terminal]\nid = \"T1\"\n",
            "wheels/kpos-1.2.3+f1-py3-none-any.whl": b"PK\x05\x06" + bytes(18)}


def manifest_of(files: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                   for name, data in sorted(files.items())).encode()


def sign(key: Path, manifest: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "MANIFEST"
        path.write_bytes(manifest)
        subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", str(key), "-in",
                        str(path), "-out", f"{path}.sig"], check=True, timeout=TIMEOUT)
        return Path(f"{path}.sig").read_bytes()


def members_of(files: dict[str, bytes], key: Path, manifest: bytes | None = None) -> list[Member]:
    """Folders, files, MANIFEST (of `files` unless given) and its signature by `key`."""
    manifest = manifest_of(files) if manifest is None else manifest
    folders = sorted({f"{TOP}/{name.rsplit('/', 1)[0]}" for name in files if "/" in name})
    return ([Member(TOP, "dir")] + [Member(f, "dir") for f in folders]
            + [Member(f"{TOP}/{name}", "file", data) for name, data in sorted(files.items())]
            + [Member(f"{TOP}/MANIFEST", "file", manifest),
               Member(f"{TOP}/MANIFEST.sig", "file", sign(key, manifest))])


def tar_bytes(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.linkname, info.mode = KINDS[m.kind], m.target, 0o755
            info.size = len(m.data) if m.kind == "file" else 0
            if m.kind in ("chardev", "blockdev"):
                info.devmajor, info.devminor = 1, 5  # /dev/zero: reading it never ends
            tar.addfile(info, io.BytesIO(m.data) if m.kind == "file" else None)
    return out.getvalue()


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    return Keys(make_key(folder / "good"), make_key(folder / "other"))


@pytest.fixture(scope="module")
def genuine(keys) -> list[Member]:
    return members_of(genuine_files(), keys.good)


# -- the device root and what the checks leave behind ------------------------------------

class Device:
    """A temporary device root with the trusted key, next to an `outside` folder that
    escaping members would land in; snapshot() is every path under both."""

    def __init__(self, base: Path, keys: Keys):
        self.base, self.root = base, base / "root"
        self.incoming = self.root / "opt/kpos/incoming"
        for folder in (self.incoming, self.root / "opt/kpos/releases", self.root / "var/log",
                       self.root / "etc/kpos", base / "outside"):
            folder.mkdir(parents=True)
        shutil.copy(f"{keys.good}.pub", self.root / "etc/kpos/release-signing.pub")

    def snapshot(self) -> dict[str, tuple]:
        seen = {}
        for folder, dirs, files in os.walk(self.base):
            for name in dirs + files:
                path = Path(folder, name)
                st_ = path.lstat()
                rel = str(path.relative_to(self.base))
                if path.is_dir() and not path.is_symlink():  # a scratch folder came and went
                    seen[rel] = (st_.st_mode,)
                elif rel != "root/var/log/kpos-update.log":
                    seen[rel] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
        return seen

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT,
                              errors="replace", stdin=subprocess.DEVNULL,
                              env={**os.environ, "KPOS_ROOT": str(self.root)})

    def verify(self, tar: Path) -> subprocess.CompletedProcess:
        pub = self.root / "etc/kpos/release-signing.pub"
        return self.run(sys.executable, str(VERIFY), str(pub), str(tar))

    def install(self, tar: Path) -> subprocess.CompletedProcess:
        return self.run(sys.executable, str(UPDATER), "install", str(tar))


def assert_refused(done: subprocess.CompletedProcess) -> str:
    """Exit 1, no traceback, the last line "error: <reason>"; the reason."""
    last = (done.stdout.strip().splitlines() or [""])[-1]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr == "", done.stderr
    assert last.startswith("error: ") and len(last) < 300, done.stdout
    return last


def payload(tar: Path) -> dict[str, bytes] | None:
    """The files under TOP/ but MANIFEST(.sig), None when the tar cannot be read."""
    try:
        with tarfile.open(tar, "r:") as bundle:
            return {m.name[len(TOP) + 1:]: bundle.extractfile(m).read()
                    for m in bundle if m.isreg() and m.name.startswith(f"{TOP}/")
                    and m.name not in (f"{TOP}/MANIFEST", f"{TOP}/MANIFEST.sig")}
    except (tarfile.TarError, EOFError):
        return None


def check_bundle(keys: Keys, data: bytes, name: str = f"{TOP}.tar") -> str:
    """Runs verify-bundle and, on a refusal, `kpos-device install` too; checks the
    properties (module docstring); returns "accepted" or verify-bundle's refusal."""
    with tempfile.TemporaryDirectory() as scratch:
        device = Device(Path(scratch), keys)
        tar = device.incoming / name
        tar.write_bytes(data)
        before = device.snapshot()
        checked = device.verify(tar)
        if checked.returncode == 0:
            assert payload(tar) == genuine_files(), "accepted a bundle that is not the signed one"
            assert device.snapshot() == before
            return "accepted"
        reason = assert_refused(checked)
        assert device.snapshot() == before, "verify-bundle left something behind"
        assert_refused(device.install(tar))
        assert device.snapshot() == before, "a refused install left something behind"
        assert not os.path.lexists(OUTSIDE)
        return reason


# -- explicit tricks ---------------------------------------------------------------------

def with_added(members: list[Member], *extra: Member) -> list[Member]:
    return members + list(extra)


def replaced(members: list[Member], name: str, **change) -> list[Member]:
    return [replace(m, **change) if m.name == f"{TOP}/{name}" else m for m in members]


def test_the_genuine_bundle_is_accepted(keys, genuine):
    assert check_bundle(keys, tar_bytes(genuine)) == "accepted"


def test_the_updater_written_out_is_the_signed_one(keys, genuine, tmp_path):
    device = Device(tmp_path, keys)
    tar = device.incoming / f"{TOP}.tar"
    tar.write_bytes(tar_bytes(genuine))
    out = tmp_path / "kpos-device"
    done = device.run(sys.executable, str(VERIFY), str(device.root / "etc/kpos/release-signing.pub"),
                      str(tar), "--updater-out", str(out))
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == f"bundle {TOP} ok", done.stdout
    assert out.read_bytes() == UPDATER.read_bytes() and os.access(out, os.X_OK)


TRICKS = {
    "absolute path": lambda g, o: with_added(g, Member(f"{o}/abs", "file", b"x")),
    "dot-dot path": lambda g, o: with_added(g, Member(f"{TOP}/../../../outside/x", "file", b"x")),
    "symlink out": lambda g, o: with_added(g, Member(f"{TOP}/config/out", "symlink", target=o),
                                           Member(f"{TOP}/config/out/x", "file", b"x")),
    "relative symlink out": lambda g, o: with_added(
        g, Member(f"{TOP}/up", "symlink", target="../../../.."), Member(f"{TOP}/up/x", "file")),
    "MANIFEST a symlink": lambda g, o: replaced(g, "MANIFEST", kind="symlink", data=b"",
                                                target="/etc/passwd"),
    "hard link out": lambda g, o: with_added(g, Member(f"{TOP}/pw", "hardlink",
                                                       target="/etc/passwd")),
    "hard link inside": lambda g, o: with_added(g, Member(f"{TOP}/copy", "hardlink",
                                                          target=f"{TOP}/VERSION")),
    "VERSION a device": lambda g, o: replaced(g, "VERSION", kind="chardev", data=b""),
    "block device": lambda g, o: with_added(g, Member(f"{TOP}/sda", "blockdev")),
    "VERSION a FIFO": lambda g, o: replaced(g, "VERSION", kind="fifo", data=b""),
    "second MANIFEST": lambda g, o: with_added(g, Member(f"{TOP}/MANIFEST", "file",
                                                         manifest_of({"VERSION": b"x"}))),
    "second updater": lambda g, o: with_added(g, Member(f"{TOP}/device/kpos-device", "file",
                                                        b"import os\n")),
    "other top folder": lambda g, o: with_added(g, Member("kpos-9.9.9/VERSION", "file", b"9")),
    "only another top folder": lambda g, o: [replace(m, name=m.name.replace(TOP, "kpos-9.9.9"))
                                             for m in g],
    "non-UTF-8 name": lambda g, o: with_added(g, Member(f"{TOP}/config/\udcff\udcfe", "file")),
    "newline in a name": lambda g, o: with_added(g, Member(f"{TOP}/a\nb", "file")),
    "unlisted file": lambda g, o: with_added(g, Member(f"{TOP}/config/extra.toml", "file", b"x")),
    "install marker": lambda g, o: with_added(g, Member(f"{TOP}/.installed", "file")),
    "ready-made venv": lambda g, o: with_added(g, Member(f"{TOP}/.venv/bin/kpos", "file", b"x")),
    "listed file missing": lambda g, o: [m for m in g if m.name != f"{TOP}/config/terminal.toml"],
    "file changed": lambda g, o: replaced(g, "config/terminal.toml", data=b"[terminal]\n#\n"),
    "no signature": lambda g, o: [m for m in g if m.name != f"{TOP}/MANIFEST.sig"],
    "empty bundle": lambda g, o: [],
}


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_a_tar_trick_is_refused(keys, genuine, trick):
    assert check_bundle(keys, tar_bytes(TRICKS[trick](genuine, OUTSIDE))) != "accepted"


def signed_manifest(keys: Keys, manifest: bytes, files: dict[str, bytes] | None = None) -> bytes:
    """A bundle whose (hostile) MANIFEST carries a good signature."""
    return tar_bytes(members_of(files or genuine_files(), keys.good, manifest))


@pytest.mark.parametrize("line, why", [
    ("../../outside/x", "MANIFEST: bad line"),
    ("/etc/passwd", "MANIFEST: bad line"),
    ("config/./terminal.toml", "MANIFEST: bad line"),
    ("VERSION", "MANIFEST: bad line"),  # listed twice
])
def test_a_signed_manifest_with_a_bad_path_is_refused(keys, line, why):
    manifest = manifest_of(genuine_files()) + f"{'0' * 64}  {line}\n".encode()
    assert check_bundle(keys, signed_manifest(keys, manifest)).startswith(f"error: {why}")


def test_a_signed_manifest_missing_a_file_is_refused(keys):
    files = genuine_files()
    manifest = manifest_of({k: v for k, v in files.items() if k != "config/terminal.toml"})
    reason = check_bundle(keys, signed_manifest(keys, manifest))
    assert reason.startswith("error: files not in MANIFEST: 'config/terminal.toml'")


def test_a_version_other_than_the_folder_name_is_refused(keys):
    files = {**genuine_files(), "VERSION": b"1.2.4\n"}
    reason = check_bundle(keys, tar_bytes(members_of(files, keys.good)))
    assert reason == "error: VERSION does not match the bundle's name"


def test_a_bundle_signed_by_another_key_is_refused(keys):
    bundle = tar_bytes(members_of(genuine_files(), keys.other))
    assert check_bundle(keys, bundle).startswith("error: bad signature")


@pytest.mark.parametrize("version", ["..", ".hidden", "-rf", "1.0;reboot", "1.0$(id)",
                                     "1.0`id`", "1 0", "1.0.tmp", "x" * 65])
def test_a_version_that_is_no_safe_path_part_is_refused(keys, version, tmp_path):
    top = f"kpos-{version}"
    members = [replace(m, name=m.name.replace(TOP, top, 1)) for m in
               members_of({**genuine_files(), "VERSION": f"{version}\n".encode()}, keys.good)]
    reason = check_bundle(keys, tar_bytes(members), name=f"{top}.tar")
    assert reason.startswith("error: not a release bundle name")


def test_data_after_the_last_member_is_refused(keys, genuine):
    hidden = tar_bytes([Member(f"{TOP}/MANIFEST", "file", b"evil")])
    reason = check_bundle(keys, tar_bytes(genuine)[:-1024] + b"garbage!" * 64 + hidden)
    assert reason == "error: data after the last member of the bundle"


def test_too_many_members_are_refused(keys, genuine):
    many = [Member(f"{TOP}/m/{i}", "dir") for i in range(20_001)]
    reason = check_bundle(keys, tar_bytes(genuine + many))
    assert reason == "error: more than 20000 members"


def test_a_truncated_bundle_is_refused(keys, genuine):
    data = tar_bytes(genuine)
    for cut in (0, 100, 512, 1500, len(data) // 2, len(data) - 10_000):
        assert check_bundle(keys, data[:cut]) != "accepted"


# -- the Mender module's pre-check ---------------------------------------------------------

def mender_install(keys: Keys, data: bytes, tmp: Path) -> subprocess.CompletedProcess:
    """ArtifactInstall of the bundle on a device root: refused, no release, no scratch."""
    device = Device(tmp, keys)
    files = tmp / "mender-files"
    (files / "files").mkdir(parents=True)
    (files / "files" / "kpos.tar").write_bytes(data)
    done = device.run(str(MENDER), "ArtifactInstall", str(files))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert not any((device.root / "opt/kpos/releases").iterdir())
    assert not (device.root / "opt/kpos/current").exists()
    return done


@pytest.mark.parametrize("kind", ["symlink", "fifo", "chardev"])
def test_the_mender_module_refuses_a_manifest_that_is_no_plain_file(keys, genuine, kind,
                                                                    tmp_path):
    target = "/dev/zero" if kind == "symlink" else ""
    bundle = tar_bytes(replaced(genuine, "MANIFEST", kind=kind, data=b"", target=target))
    done = mender_install(keys, bundle, tmp_path)
    assert "MANIFEST in kpos.tar is not a plain file: refused" in done.stderr
    assert not (tmp_path / "mender-files/tmp/unpacked").exists()


def test_the_mender_module_refuses_a_bad_release_name(keys, genuine, tmp_path):
    bundle = tar_bytes([replace(m, name=m.name.replace(TOP, "kpos-..", 1)) for m in genuine])
    assert "bad release name in kpos.tar" in mender_install(keys, bundle, tmp_path).stderr


def test_the_mender_module_leaves_the_rest_to_the_verified_updater(keys, genuine, tmp_path):
    bundle = tar_bytes(with_added(genuine, Member(f"{TOP}/config/out", "symlink", target="/")))
    done = mender_install(keys, bundle, tmp_path)
    assert "bundle holds an unexpected entry: 'kpos-1.2.3+f1/config/out'" in done.stdout


# -- hypothesis ------------------------------------------------------------------------------

def hostile_names(outside: str) -> st.SearchStrategy[str]:
    parts = st.sampled_from(["..", ".", "", "MANIFEST", "VERSION", "device", "kpos-device",
                             ".installed", ".venv", "\udcff", "a\nb", "x\\y", "config"])
    tails = st.lists(parts, min_size=1, max_size=4).map("/".join)
    return st.one_of(tails.map(lambda t: f"{TOP}/{t}"), tails,
                     tails.map(lambda t: f"{outside}/{t}"), tails.map(lambda t: f"kpos-9/{t}"),
                     st.text(max_size=40))


def targets(outside: str) -> st.SearchStrategy[str]:
    return st.sampled_from(["/", "/etc/passwd", outside, "../../..", f"{TOP}/VERSION",
                            f"{TOP}/MANIFEST", "MANIFEST", "/dev/zero", ""])


@st.composite
def hostile_bundles(draw, genuine: list[Member], keys: Keys, outside: str) -> bytes:
    members = list(genuine)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(members) - 1)) if members else 0
        how = draw(st.sampled_from(["add", "retype", "rename", "duplicate", "data",
                                    "manifest", "drop"]))
        kind = draw(st.sampled_from(sorted(KINDS)))
        if how == "add":
            members.append(Member(draw(hostile_names(outside)), kind, draw(st.binary(max_size=64)),
                                  draw(targets(outside))))
        elif members and how == "retype":
            members[i] = replace(members[i], kind=kind, target=draw(targets(outside)))
        elif members and how == "rename":
            members[i] = replace(members[i], name=draw(hostile_names(outside)))
        elif members and how == "duplicate":
            members.insert(draw(st.integers(i, len(members))),
                           replace(members[i], data=draw(st.binary(max_size=64))))
        elif members and how == "data":
            members[i] = replace(members[i], data=draw(st.binary(max_size=64)))
        elif members and how == "drop":
            del members[i]
        elif how == "manifest":
            line = draw(st.sampled_from(["../x", "/etc/passwd", "VERSION", "a//b", "\udcff",
                                         "nothing/here", "./VERSION"]))
            manifest = manifest_of(genuine_files()) + f"{'a' * 64}  {line}\n".encode(
                "utf-8", "surrogateescape")
            key = keys.good if draw(st.booleans()) else keys.other
            members = [replace(m, data=manifest) if m.name == f"{TOP}/MANIFEST" else
                       replace(m, data=sign(key, manifest)) if m.name == f"{TOP}/MANIFEST.sig"
                       else m for m in members]
    data = tar_bytes(members)
    cut = draw(st.sampled_from(["none", "truncate", "flip", "append"]))
    if cut == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif cut == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    elif cut == "append":
        data += draw(st.binary(min_size=1, max_size=1024))
    return data


def test_mutated_bundles_are_refused_cleanly_or_are_the_signed_one(keys, genuine):
    @fuzz(50)
    @given(data=hostile_bundles(genuine, keys, OUTSIDE))
    def run(data):
        outcome = check_bundle(keys, data)
        event(outcome[:40])

    run()


def test_random_bytes_are_refused(keys):
    @fuzz(12)
    @given(data=st.binary(max_size=4096) | st.binary(max_size=600).map(lambda b: b + bytes(1024)))
    def run(data):
        assert check_bundle(keys, data) != "accepted"

    run()
