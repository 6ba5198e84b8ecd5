"""Device backends, chosen by config key and imported lazily (DESIGN §3).

Simulation is chosen explicitly (`kpos sim`, or a "sim"/"console" backend in config), never as
a silent fallback: a backend that cannot be loaded is a DeviceError naming the device (and,
for a missing library, the package to install). Building starts no threads: each device
starts its own when the terminal attaches it.
"""
from __future__ import annotations

__all__ = ["DeviceError", "build_devices", "pcsc_module", "READER_CONTACTLESS"]


class DeviceError(RuntimeError):
    """A configured device backend cannot be used; the message names the device and backend."""


def build_devices(cfg):
    """Devices for `kpos run` from cfg.devices. Loop thread, at start."""
    from firmware.app import Devices
    from firmware.hal.console import ConsoleDisplay, ConsolePanel

    d = cfg.devices
    reader = _reader(cfg)
    if d.display != "console":
        raise DeviceError(f"display backend {d.display!r} is not available in this release")
    if d.printer != "sim":
        raise DeviceError(f"printer backend {d.printer!r} is not available in this release")
    from firmware.hal.printer_sim import SimPrinter
    printer = SimPrinter(cfg.terminal.data_dir / "receipts")
    inputs = []
    if d.keypad == "console":
        inputs.append(ConsolePanel(reader))
    else:
        raise DeviceError(f"keypad backend {d.keypad!r} is not available in this release")
    from firmware.hal.swipe import build_swipe_reader
    from firmware.hal.scanner import build_scanner
    for device in (build_swipe_reader(d), build_scanner(d)):
        if device is not None:
            inputs.append(device)
    return Devices(reader=reader, display=ConsoleDisplay(), printer=printer, inputs=inputs)


READER_CONTACTLESS = {"auto": None, "yes": True, "no": False}  # [devices] reader_contactless


def pcsc_module():
    """firmware.hal.reader_pcsc; DeviceError naming pyscard when it cannot be imported."""
    try:
        from firmware.hal import reader_pcsc
    except ImportError as exc:  # pyscard missing, or its libpcsclite
        if (exc.name or "").split(".")[0] != "smartcard":
            raise
        raise DeviceError(f"card_reader backend 'pcsc' needs the pyscard package "
                          f"(pip install kpos[pcsc]): {exc}") from exc
    return reader_pcsc


def _reader(cfg):
    d = cfg.devices
    if d.card_reader == "sim":
        from firmware.hal.reader_sim import SimCardReader
        from firmware.sim.catalog import load_catalog
        catalog_path = cfg.sim.catalog if cfg.sim else None
        return SimCardReader(load_catalog(catalog_path))
    if d.card_reader == "pcsc":
        return pcsc_module().PcscCardReader(
            d.reader_name, contactless=READER_CONTACTLESS[d.reader_contactless])
    raise DeviceError(f"card_reader backend {d.card_reader!r} is not available in this release")
