"""Shared fixtures: a simulator config under tmp_path, and catalog test PANs to hunt for."""
from __future__ import annotations

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
