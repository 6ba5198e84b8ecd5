"""`kpos run` builds the configured devices: a GPIO keypad, buzzer and LEDs on gpiozero's
mock pins, a network ESC/POS printer, and clear errors for what cannot be built."""
from __future__ import annotations

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.config import load_config
from firmware.hal import DeviceError, build_devices
from firmware.hal.keypad import MatrixKeypad
from firmware.hal.printer_escpos import EscposPrinter


def config(tmp_path, **devices):
    over = sim_overrides(tmp_path)
    over["devices"] = {"pin_factory": "mock", **devices}
    return load_config(SIM_TOML, overrides=over)


def test_gpio_keypad_buzzer_leds_and_a_network_printer(tmp_path):
    cfg = load_config(SIM_TOML, overrides={**sim_overrides(tmp_path), "devices": {
        "pin_factory": "mock", "keypad": "gpio", "buzzer_pin": 12, "led_green": 17,
        "led_red": 27, "printer": "network"}, "printer": {"host": "127.0.0.1"}})
    devices = build_devices(cfg)
    try:
        assert isinstance(devices.inputs[0], MatrixKeypad)
        assert isinstance(devices.printer, EscposPrinter)
        assert len(devices.outputs) == 2  # the buzzer and the status LEDs
        buzzer, leds = devices.outputs
        devices.buzzer("ok")  # plays on both, in gpiozero's background threads (patterns:
        # tests/test_buzzer.py); here: the configured pins are the ones driven
        assert buzzer._buzzer.pin.number == 12
        assert (leds._leds["green"].pin.number, leds._leds["red"].pin.number) == (17, 27)
    finally:
        for device in devices.outputs:
            device.close()
        devices.reader.close()


def test_a_keypad_map_of_the_wrong_size_is_refused_at_start(tmp_path):
    with pytest.raises((DeviceError, ValueError)):
        devices = build_devices(config(tmp_path, keypad="gpio", keypad_map="123A"))
        devices.reader.close()
