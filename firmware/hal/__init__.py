"""Device backends, chosen by config key and imported lazily (DESIGN §3).

Simulation is chosen explicitly (`kpos sim`, or a "sim"/"console" backend in config), never as
a silent fallback: a backend that cannot be loaded is a DeviceError naming the device (and,
for a missing library, the package to install). Building starts no threads: each device
starts its own when the terminal attaches it.
"""
from __future__ import annotations

__all__ = ["DeviceError", "build_devices", "build_display", "pcsc_module", "READER_CONTACTLESS"]


class DeviceError(RuntimeError):
    """A configured device backend cannot be used; the message names the device and backend."""


def build_devices(cfg):
    """Devices for `kpos run` from cfg.devices. Loop thread, at start."""
    from firmware.app import Devices

    d = cfg.devices
    reader = _reader(cfg)
    display = build_display(d, cfg.terminal.language)
    if d.printer == "sim":
        from firmware.hal.printer_sim import SimPrinter
        printer = SimPrinter(cfg.terminal.data_dir / "receipts")
    else:  # usb, serial, network, file: python-escpos, connected at the first print
        from firmware.hal.printer_escpos import build_escpos
        printer = build_escpos(cfg.printer, d.printer, timeout=cfg.printer.timeout)
    inputs = [_keypad(d, reader)]
    from firmware.hal.swipe import build_swipe_reader
    from firmware.hal.scanner import build_scanner
    for device in (build_swipe_reader(d), build_scanner(d)):
        if device is not None:
            inputs.append(device)
    outputs = _feedback(d)
    return Devices(reader=reader, display=display, printer=printer, inputs=inputs,
                   buzzer=_sound_and_light(outputs), outputs=outputs)


def _keypad(d, reader):
    """The keypad [devices] keypad names: the console, a GPIO matrix or a USB keypad."""
    if d.keypad == "console":
        from firmware.hal.console import ConsolePanel
        return ConsolePanel(reader)
    from firmware.hal.keypad import EvdevKeypad, MatrixKeypad, pin_factory
    if d.keypad == "gpio":
        return MatrixKeypad(list(d.keypad_rows), list(d.keypad_cols), d.keypad_map,
                            debounce_s=d.keypad_debounce, pin_factory=pin_factory(d.pin_factory))
    return EvdevKeypad(d.keypad_device)


def _feedback(d) -> list:
    """The buzzer and the status LEDs that [devices] wires (none by default)."""
    if not (d.buzzer_pin or d.led_green or d.led_red):
        return []
    from firmware.hal.buzzer import Buzzer, StatusLeds
    from firmware.hal.keypad import pin_factory
    factory = pin_factory(d.pin_factory)
    outputs = [Buzzer(d.buzzer_pin, pin_factory=factory)] if d.buzzer_pin else []
    if d.led_green and d.led_red:
        outputs.append(StatusLeds(d.led_green, d.led_red, pin_factory=factory))
    return outputs


def _sound_and_light(outputs: list):
    """Devices.buzzer: every feedback device plays the flow's beep kind."""
    def feedback(kind: str) -> None:
        for device in outputs:
            device(kind)
    return feedback


def build_display(d, language: str = "en"):
    """The display [devices] display names: console, a luma panel (its screens in
    `language`, [terminal] language: "zh" draws the Chinese UI) or an HD44780 LCD."""
    if d.display == "console":
        from firmware.hal.console import ConsoleDisplay
        return ConsoleDisplay()
    if d.display == "luma":
        from firmware.hal.display_luma import build_luma
        return build_luma(d.display_kind, port=d.display_port,
                          address=d.display_address or 0x3C, rotate=d.display_rotate,
                          lang=language)
    if d.display == "hd44780":
        from firmware.hal.display_lcd import build_hd44780
        return build_hd44780(address=d.display_address or 0x27, cols=d.display_cols,
                             rows=d.display_rows, port=d.display_port)
    raise DeviceError(f"display backend {d.display!r} is not available in this release")


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
