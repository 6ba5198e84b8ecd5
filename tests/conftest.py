"""Shared fixtures: a simulator config under tmp_path, and catalog test PANs to hunt for."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SIM_TOML = REPO / "config" / "sim.toml"


def sim_overrides(tmp_path: Path, **acquirer) -> dict:
    return {
        "terminal": {"data_dir": str(tmp_path / "data")},
        "acquirer": {"response_timeout": 1.5, "connect_timeout": 2.0, **acquirer},
        "sim": {"ledger": str(tmp_path / "acquirer.db"), "acquirer_port": 0},
        "operators": {"login": False},  # tests that log in turn it on
    }


@pytest.fixture
def sim_config(tmp_path):
    from firmware.config import load_config
    return load_config(SIM_TOML, overrides=sim_overrides(tmp_path))


@pytest.fixture(scope="session")
def test_pans() -> list[str]:
    from firmware.sim.catalog import load_catalog
    return [card.pan for card in load_catalog().cards.values()]


def run_bounded(coro, seconds: float = 60) -> None:
    """asyncio.run(coro), failing the test when it takes longer than `seconds`."""
    async def bounded():
        async with asyncio.timeout(seconds):
            await coro
    asyncio.run(bounded())


@pytest.fixture
def no_card_data_in_logs(caplog, test_pans):
    """Every log line of the test, DEBUG included, is free of catalog PANs."""
    caplog.set_level(logging.DEBUG)
    yield
    assert not [pan for pan in test_pans if pan in caplog.text]
