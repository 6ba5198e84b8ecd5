"""Training mode's stand-ins: a local acquirer host and a journal of its own, so practice
transactions run the full flow and never reach the real acquirer or the real batch.

- TrainingHost(cfg, tmk): the acquirer simulator (firmware.sim.acquirer) on 127.0.0.1, a
  port the OS picks, on the caller's asyncio loop. Its catalog is the simulator catalog
  ([sim] catalog, else the packaged one) with this terminal's id mapped to its own master
  key, so sign-on and PIN blocks work whatever the terminal id. Its ledger (balances,
  decisions, reversals) persists in <data_dir>/training/acquirer.db. `await start() ->
  port`; `await stop()` (idempotent). Start failures are TrainingError (short, log-safe).
  Catalog loading and the directory run on a thread, the ledger on the simulator's own
  worker: the loop never blocks.
- open_training_journal(cfg, now): <data_dir>/training/journal.db under the terminal's
  vault key, recovered as at start (DESIGN §6.4). Blocking: call it on the journal worker.
  JournalError when it cannot be opened.
TEST HOST: it knows catalog cards only; every other card is declined by it.
"""
from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Callable

from firmware.config import Config
from firmware.journal import JOURNAL_NAME, Journal, JournalError
from firmware.sim.acquirer import AcquirerSimulator
from firmware.sim.catalog import Catalog, default_catalog_path, load_catalog
from firmware.vault import Vault, VaultError

__all__ = ["TrainingHost", "TrainingError", "open_training_journal", "training_catalog",
           "training_dir", "TRAINING_DIR", "LEDGER_NAME"]

TRAINING_DIR = "training"  # under the terminal's data_dir
LEDGER_NAME = "acquirer.db"  # the training host's ledger in TRAINING_DIR


class TrainingError(RuntimeError):
    """The training host could not start; the message is short and log-safe."""


def training_dir(cfg: Config) -> Path:
    return cfg.terminal.data_dir / TRAINING_DIR


def training_catalog(cfg: Config, tmk: bytes) -> Catalog:
    """The simulator catalog with cfg's terminal id mapped to `tmk` (blocking file read)."""
    catalog = load_catalog(cfg.sim.catalog if cfg.sim else default_catalog_path())
    return replace(catalog, terminal_keys={**catalog.terminal_keys, cfg.terminal.terminal_id: tmk})


def _prepare(cfg: Config, tmk: bytes) -> Catalog:
    training_dir(cfg).mkdir(parents=True, exist_ok=True)
    return training_catalog(cfg, tmk)


class TrainingHost:
    """The acquirer of training mode (see the module docstring); loop thread only."""

    def __init__(self, cfg: Config, tmk: bytes):
        self._cfg = cfg
        self._tmk = tmk
        self.simulator: AcquirerSimulator | None = None  # while started: faults, ledger, counters

    async def start(self) -> int:
        """Load the catalog, open the ledger, listen on 127.0.0.1; the port."""
        if self.simulator is not None:
            raise TrainingError("training host already started")
        try:
            catalog = await asyncio.to_thread(_prepare, self._cfg, self._tmk)
            simulator = AcquirerSimulator(catalog, training_dir(self._cfg) / LEDGER_NAME)
            port = await simulator.start("127.0.0.1", 0)
        except (OSError, ValueError, RuntimeError, sqlite3.Error) as exc:  # CatalogError is a ValueError
            raise TrainingError(f"training host not started: {exc}") from exc
        self.simulator = simulator
        return port

    async def stop(self) -> None:
        """Close its connections and its ledger (idempotent)."""
        simulator, self.simulator = self.simulator, None
        if simulator is not None:
            await simulator.stop()


def open_training_journal(cfg: Config, now: Callable[[], datetime]) -> Journal:
    """The training journal, recovered (journal worker thread). JournalError naming the
    file when it cannot be opened."""
    directory = training_dir(cfg)
    try:
        vault = Vault.open(cfg.security.vault_key_file)
        directory.mkdir(parents=True, exist_ok=True)
    except (VaultError, OSError) as exc:
        raise JournalError(f"training journal {directory / JOURNAL_NAME}: {exc}") from exc
    journal = Journal(directory / JOURNAL_NAME, vault, now=now)
    try:
        journal.recover()
    except BaseException:
        journal.close()
        raise
    return journal
