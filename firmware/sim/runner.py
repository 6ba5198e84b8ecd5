"""`kpos sim`: the acquirer simulator on loopback plus a terminal with simulated peripherals.

Everything runs on the caller's asyncio loop. `SimSession` is also what the scenario runner
and the end-to-end tests use, so the simulator a developer drives by hand is the one tested.
With `[acquirer] tls = true` the simulator serves TLS from the test PKI layout
(firmware.sim.pki, `kpos acquirer --make-test-pki DIR`): server.crt and server.key next to
`ca_file`, client certificates signed by `ca_file` required (sim_tls_context).
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import AsyncIterator

from firmware.app import Devices, Terminal
from firmware.config import Config
from firmware.hal.display import RecordingDisplay
from firmware.hal.printer_sim import SimPrinter
from firmware.hal.reader_sim import SimCardReader
from firmware.sim.acquirer import AcquirerSimulator, Faults
from firmware.sim.catalog import Catalog, load_catalog

__all__ = ["SimSession", "sim_session", "sim_tls_context"]

log = logging.getLogger("kpos.sim")

PCSC_SIM_READER = "Virtual PCD"  # vsmartcard's vpcd reader in pcscd


class SimSession:
    """A running simulator: `terminal`, `acquirer`, `reader`, `display`, `printer`, `catalog`."""

    def __init__(self, cfg: Config, catalog: Catalog, acquirer: AcquirerSimulator,
                 terminal: Terminal, reader: SimCardReader, display: RecordingDisplay,
                 printer: SimPrinter):
        self.cfg = cfg
        self.catalog = catalog
        self.acquirer = acquirer
        self.terminal = terminal
        self.reader = reader
        self.display = display
        self.printer = printer

    @property
    def receipts_dir(self) -> Path:
        return self.cfg.terminal.data_dir / "receipts"


@asynccontextmanager
async def sim_session(cfg: Config, *, forward_display=None, inputs=(), faults: Faults | None = None,
                      clock=None, start_acquirer: bool = True,
                      pcsc: bool = False, keep_screens: int | None = None,
                      keep_receipts: int | None = None) -> AsyncIterator[SimSession]:
    """Start acquirer + terminal; on exit stop the terminal (after its transaction) and the host.

    `pcsc`: the terminal reads cards through pcscd's "Virtual PCD" reader (PcscCardReader) and
    `session.reader` is a SimPcscSlot putting test cards into vpcd. PcscReaderError naming
    pcscd when it is not reachable. `keep_screens`: RecordingDisplay's keep (None: every
    screen, as tests want; `kpos sim` keeps the newest ones only). `keep_receipts`: the
    SimPrinter's keep_files (None: every receipt file stays; `kpos sim` bounds its disk use)."""
    if cfg.sim is None:
        raise ValueError(f"{cfg.path}: a [sim] section is needed to run the simulator")
    catalog = load_catalog(cfg.sim.catalog)
    reader, device_reader = _card_reader(catalog, pcsc, clock)
    data_dir = cfg.terminal.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    acquirer = AcquirerSimulator(catalog, cfg.sim.ledger, faults=faults,
                                 ssl_context=sim_tls_context(cfg))
    if start_acquirer:
        port = await acquirer.start("127.0.0.1", cfg.sim.acquirer_port)
        cfg = replace(cfg, acquirer=replace(cfg.acquirer, host="127.0.0.1", port=port))
    display = RecordingDisplay(forward_display, keep=keep_screens)
    printer = SimPrinter(data_dir / "receipts", keep_files=keep_receipts)
    devices = Devices(reader=device_reader, display=display, printer=printer, inputs=list(inputs))
    terminal = Terminal(cfg, devices, clock=clock)
    run_task = asyncio.get_running_loop().create_task(terminal.run(), name="terminal")
    ready = asyncio.get_running_loop().create_task(terminal.ready.wait())
    await asyncio.wait({run_task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if run_task.done():
        ready.cancel()
        await acquirer.stop()
        run_task.result()  # raises the startup fault
    session = SimSession(cfg, catalog, acquirer, terminal, reader, display, printer)
    try:
        yield session
    finally:
        terminal.request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(run_task), cfg.acquirer.response_timeout + 15)
        finally:
            await acquirer.stop()
            if reader is not device_reader:
                reader.close()


def sim_tls_context(cfg: Config):
    """The in-process simulator's server context when [acquirer] tls, else None (blocks
    on small file reads; firmware.acquirer.tls.TlsError names a missing or bad file)."""
    if not cfg.acquirer.tls:
        return None
    from firmware.acquirer.tls import server_context
    pki = cfg.acquirer.ca_file.parent
    return server_context(pki / "server.crt", pki / "server.key", cfg.acquirer.ca_file)


def _card_reader(catalog: Catalog, pcsc: bool, clock=None):
    """(what scripts and the console insert cards into, what the terminal reads from)."""
    if not pcsc:
        reader = SimCardReader(catalog, today=(lambda: clock.now().date()) if clock else date.today)
        return reader, reader
    from firmware.hal.reader_pcsc import PcscCardReader, probe
    from firmware.sim.vpicc import SimPcscSlot
    probe(PCSC_SIM_READER)
    return SimPcscSlot(catalog), PcscCardReader(PCSC_SIM_READER)
