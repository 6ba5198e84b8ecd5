"""Shared fixtures: a simulator config under tmp_path, and catalog test PANs to hunt for."""
from __future__ import annotations

import asyncio
import logging
import threading
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


HOST_RELEASE = "0.9.1+d1"  # the version of the release bundle the deploy tests share


@pytest.fixture(scope="session")
def release_key(tmp_path_factory) -> Path:
    """The deploy tests' ed25519 release signing key (0600); its public key is KEY.pub."""
    from deployrig_build import make_key
    return make_key(tmp_path_factory.mktemp("release-key"))


@pytest.fixture(scope="session")
def host_release(tmp_path_factory, release_key) -> Path:
    """kpos-<HOST_RELEASE>.tar (+ .mender beside it), signed with release_key: one
    `./deploy.sh build --platform host --mender` of the work tree per session, shared by
    the build and the push tests. Blocking (~10 s)."""
    from deployrig_build import build_bundle
    return build_bundle(tmp_path_factory.mktemp("host-release"), HOST_RELEASE, release_key,
                        mender=True)


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


@pytest.fixture(autouse=True, scope="session")
def default_operators_hashed_once():
    """A fresh terminal seeds its default operators (config seed = true): three scrypt
    hashes, ~0.15 s of CPU, once per terminal started in a test: 30% of an end-to-end
    test's CPU. In this process the seeded hashes are computed once and shared (the same
    salt in every test terminal). They are still real salted scrypt hashes that every login
    verifies in full; hashes made by add/passwd, and any outside seed_defaults, are not
    shared (test_operators checks that two operators get their own salt)."""
    from unittest import mock

    from firmware import operators

    real_seed, real_hash = operators.OperatorStore.seed_defaults, operators._hash
    hashed, local = {}, threading.local()

    def seed_defaults(self) -> bool:
        local.seeding = True
        try:
            return real_seed(self)
        finally:
            local.seeding = False

    def hash_password(password: str) -> str:
        if not getattr(local, "seeding", False):
            return real_hash(password)
        if password not in hashed:
            hashed[password] = real_hash(password)
        return hashed[password]

    with mock.patch.object(operators.OperatorStore, "seed_defaults", seed_defaults), \
            mock.patch.object(operators, "_hash", hash_password):
        yield
