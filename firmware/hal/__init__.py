"""Device backends, chosen by config key and imported lazily (DESIGN §3).

Simulation is chosen explicitly (`kpos sim`, or a "sim"/"console" backend in config), never as
a silent fallback: a backend that cannot be loaded is a DeviceError naming the device.
"""
from __future__ import annotations

__all__ = ["DeviceError", "build_devices"]


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
    return Devices(reader=reader, display=ConsoleDisplay(), printer=printer, inputs=inputs)


def _reader(cfg):
    if cfg.devices.card_reader == "sim":
        from firmware.hal.reader_sim import SimCardReader
        from firmware.sim.catalog import load_catalog
        catalog_path = cfg.sim.catalog if cfg.sim else None
        return SimCardReader(load_catalog(catalog_path))
    raise DeviceError(f"card_reader backend {cfg.devices.card_reader!r} is not available in this release")
