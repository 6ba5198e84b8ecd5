"""`kpos selftest`: is this installed release able to run? (a new release's venv, before the switch)

Contract: `selftest(config, sim_config)` blocks the calling thread (the CLI's) for ~5-15 s and
touches nothing outside a temporary directory: it imports every firmware module, loads the
device's config with this release when one is given, then runs one simulated chip sale end
to end (the acquirer simulator on 127.0.0.1, an in-process terminal, a temporary journal).
It prints one line per step and returns 0 when all passed, 1 with the failing step's reason.
A module that needs a hardware library this machine lacks (pyscard, evdev, lgpio, ...: they
come from the device's apt) is listed as skipped, not failed: `kpos doctor` checks devices.
The sim config (config/sim.toml of the release: it names the test keys beside it) is found
beside the venv (releases/<V>/config, or the repo's config/) unless given.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

import firmware

__all__ = ["selftest", "import_all", "find_sim_config", "SALE_SCRIPT", "HARDWARE_LIBS"]

HARDWARE_LIBS = frozenset({"smartcard", "evdev", "lgpio", "RPi", "spidev", "smbus2", "usb"})
SALE_TIMEOUT = 15.0  # s for the whole simulated sale
SALE_SCRIPT = """
keys 1250 ENTER
insert approve
expect screen "Enter PIN"
keys 1234 ENTER
expect screen "APPROVED"
expect journal APPROVED
expect balance approve 998750
"""


class SelftestFailed(Exception):
    """A step failed; the message is the reason."""


def import_all() -> list[str]:
    """Import every firmware module; the ones skipped for a missing hardware library.
    SelftestFailed naming the module on any other import error."""
    skipped = []
    for info in pkgutil.walk_packages(firmware.__path__, "firmware."):
        if info.name.endswith("__main__"):
            continue  # importing it runs the command
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in HARDWARE_LIBS:
                raise SelftestFailed(f"import {info.name}: {exc}") from exc
            skipped.append(f"{info.name} (needs {exc.name})")
        except Exception as exc:
            raise SelftestFailed(f"import {info.name}: {type(exc).__name__}: {exc}") from exc
    return skipped


def find_sim_config() -> Path:
    """config/sim.toml beside this release's venv, or beside the package (a source tree)."""
    for root in (Path(sys.prefix).parent, Path(firmware.__file__).resolve().parent.parent):
        if (root / "config" / "sim.toml").is_file():
            return root / "config" / "sim.toml"
    raise SelftestFailed(f"config/sim.toml not found beside {sys.prefix} (use --sim-config)")


def _load(path: Path, overrides: dict | None = None):
    from firmware.config import ConfigError, load_config
    try:
        return load_config(path, overrides=overrides)
    except (ConfigError, OSError) as exc:
        raise SelftestFailed(f"config {path}: {exc}") from exc


async def _sale(cfg) -> None:
    from firmware.sim.runner import sim_session
    from firmware.sim.script import parse_script, run_script
    async with asyncio.timeout(SALE_TIMEOUT):
        async with sim_session(cfg) as session:
            await run_script(session, parse_script(SALE_SCRIPT, "selftest sale"), log=lambda line: None)


def simulated_sale(sim_config: Path) -> None:
    """One approved chip sale against the simulator in a temporary directory."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)  # never speak to systemd for the service
    with tempfile.TemporaryDirectory(prefix="kpos-selftest-") as tmp:
        cfg = _load(sim_config, {
            "terminal": {"data_dir": str(Path(tmp) / "data")},
            "sim": {"ledger": str(Path(tmp) / "acquirer.db"), "acquirer_port": 0},
            "operators": {"login": False}, "log": {"file": ""},
            "backup": {"dir": str(Path(tmp) / "backups")}})
        try:
            asyncio.run(_sale(cfg))
        except TimeoutError as exc:
            raise SelftestFailed(f"simulated sale: not done within {SALE_TIMEOUT:g} s") from exc
        except Exception as exc:
            raise SelftestFailed(f"simulated sale: {type(exc).__name__}: {exc}") from exc


def selftest(config: Path | None, sim_config: Path | None = None) -> int:
    start = time.monotonic()
    try:
        skipped = import_all()
        print(f"ok  imports ({len(skipped)} skipped: hardware libraries not installed)"
              if skipped else "ok  imports")
        for name in skipped:
            print(f"    skipped {name}")
        if config is not None:
            _load(config)
            print(f"ok  config {config}")
        simulated_sale(sim_config or find_sim_config())
        print("ok  simulated sale approved")
    except SelftestFailed as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        print(f"selftest failed after {time.monotonic() - start:.1f} s")
        return 1
    print(f"selftest passed in {time.monotonic() - start:.1f} s")
    return 0
