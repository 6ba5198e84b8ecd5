"""firmware.escpos_cache: python-escpos's capabilities pickle goes to one private directory
while escpos is imported, and the setting does not outlive the block (children inherit none)."""
import os
import stat

from firmware.escpos_cache import VARIABLE, capabilities_cache, capabilities_dir


def test_a_private_directory_only_inside_the_block(tmp_path, monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    with capabilities_cache():
        assert os.environ[VARIABLE] == str(tmp_path / "cache")
    assert VARIABLE not in os.environ
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_a_directory_others_may_write_or_a_set_variable_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv("CACHE_DIRECTORY", str(shared))
    with capabilities_cache():
        assert VARIABLE not in os.environ  # a pickle there could be anyone's code
    monkeypatch.setenv(VARIABLE, "/somewhere/else")
    with capabilities_cache():
        assert os.environ[VARIABLE] == "/somewhere/else"
    assert os.environ[VARIABLE] == "/somewhere/else"


def test_without_systemd_the_temp_dir_holds_it(monkeypatch, tmp_path):
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert capabilities_dir() == tmp_path / f"kpos-escpos-{os.geteuid()}"


def test_a_half_written_pickle_costs_a_slow_start_not_a_failed_one(tmp_path):
    import platform
    import subprocess
    import sys
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    half = cache / f"{platform.python_version()}.capabilities.pickle"
    half.write_bytes(b"\x80\x02}q\x00")  # a pickle cut off by another process still writing it
    env = {**os.environ, "CACHE_DIRECTORY": str(cache)}
    env.pop(VARIABLE, None)
    done = subprocess.run([sys.executable, "-c", "import firmware.receipts"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert half.stat().st_size > 1000  # written again, whole
    again = subprocess.run([sys.executable, "-c", "import firmware.receipts"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
