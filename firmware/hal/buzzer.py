"""Buzzer and status LEDs on GPIO (gpiozero): key click, approve and decline patterns.

`Buzzer(kind)` and `StatusLeds(kind)` take the Beep kinds (BEEPS: "key", "ok", "error")
and are the Devices.buzzer hook (call both from one hook to use both). Loop thread; they
never block: each pattern runs on gpiozero's background blink thread and a new pattern
cuts the running one short. An unknown kind is a ValueError (a flow bug). Times in
seconds. `close()` (loop thread) stops any pattern and frees the pins.
"""
from __future__ import annotations

from firmware.flows.types import BEEPS

__all__ = ["Buzzer", "StatusLeds", "BEEP_PATTERNS", "LED_PATTERNS"]

# kind -> (on s, off s, times); a kind missing from LED_PATTERNS lights nothing
BEEP_PATTERNS = {"key": (0.03, 0.0, 1), "ok": (0.08, 0.08, 2), "error": (0.5, 0.0, 1)}
LED_PATTERNS = {"ok": ("green", (2.0, 0.0, 1)), "error": ("red", (0.25, 0.25, 4))}


def _check(kind: str) -> None:
    if kind not in BEEPS:
        raise ValueError(f"beep kind {kind!r} not in {BEEPS}")


class Buzzer:
    """A buzzer on BCM `pin` (an active buzzer: on = sound); `active_high` False for
    modules that sound on a low level."""

    def __init__(self, pin: int, *, active_high: bool = True, pin_factory=None):
        from gpiozero import Buzzer as GpioBuzzer

        self._buzzer = GpioBuzzer(pin, active_high=active_high, pin_factory=pin_factory)

    def __call__(self, kind: str) -> None:
        _check(kind)
        on_s, off_s, times = BEEP_PATTERNS[kind]
        self._buzzer.beep(on_s, off_s, n=times, background=True)

    def close(self) -> None:
        self._buzzer.close()


class StatusLeds:
    """A green (approved) and a red (declined, error) LED on BCM pins: "ok" lights the
    green one for 2 s, "error" blinks the red one 4 times, "key" changes nothing."""

    def __init__(self, green: int, red: int, *, active_high: bool = True, pin_factory=None):
        from gpiozero import LED

        self._leds = {name: LED(pin, active_high=active_high, pin_factory=pin_factory)
                      for name, pin in (("green", green), ("red", red))}

    def __call__(self, kind: str) -> None:
        _check(kind)
        if kind not in LED_PATTERNS:
            return
        name, (on_s, off_s, times) = LED_PATTERNS[kind]
        for led in self._leds.values():
            led.off()
        self._leds[name].blink(on_s, off_s, n=times, background=True)

    def approve(self) -> None:
        self("ok")

    def decline(self) -> None:
        self("error")

    def close(self) -> None:
        for led in self._leds.values():
            led.close()
