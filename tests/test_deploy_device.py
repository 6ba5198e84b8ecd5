"""deploy/device/kpos-device without SSH: which releases `prune` keeps (the newest 3 by
install time, and always the current and previous ones), and what it removes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UPDATER = REPO / "deploy" / "device" / "kpos-device"


def device_with(root: Path, versions: list[str], current: str, previous: str) -> Path:
    """Installed releases (oldest first: increasing mtimes), their bundles, both links."""
    opt = root / "opt" / "kpos"
    (opt / "incoming").mkdir(parents=True)
    for age, version in enumerate(versions):
        folder = opt / "releases" / version
        folder.mkdir(parents=True)
        (folder / ".installed").write_text("")
        (opt / "incoming" / f"kpos-{version}.tar").write_bytes(b"bundle")
        os.utime(folder, (1_000_000 + age, 1_000_000 + age))
    (opt / "releases" / "0.9.0.tmp").mkdir()  # an install cut short
    os.symlink(f"releases/{current}", opt / "current")
    os.symlink(f"releases/{previous}", opt / "previous")
    return opt


def prune(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(UPDATER), "prune"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "KPOS_ROOT": str(root)})


def test_prune_keeps_the_newest_three_and_both_links(tmp_path):
    # previous (0.2.0) is old: rolled back from, it must stay however old it is
    opt = device_with(tmp_path, ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0"],
                      current="0.6.0", previous="0.2.0")
    done = prune(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    left = sorted(p.name for p in (opt / "releases").iterdir())
    assert left == ["0.2.0", "0.4.0", "0.5.0", "0.6.0"]
    assert sorted(p.name for p in (opt / "incoming").iterdir()) == [
        "kpos-0.2.0.tar", "kpos-0.4.0.tar", "kpos-0.5.0.tar", "kpos-0.6.0.tar"]
    assert "removed old release 0.1.0" in done.stdout and "removed old release 0.3.0" in done.stdout
    assert os.readlink(opt / "current") == "releases/0.6.0"
    assert os.readlink(opt / "previous") == "releases/0.2.0"
    assert "removed old release" in (tmp_path / "var" / "log" / "kpos-update.log").read_text()


def test_prune_with_few_releases_removes_nothing(tmp_path):
    opt = device_with(tmp_path, ["0.1.0", "0.2.0"], current="0.2.0", previous="0.1.0")
    done = prune(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (opt / "releases").iterdir()) == ["0.1.0", "0.2.0"]
