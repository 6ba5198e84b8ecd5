"""Buzzer and status LEDs on gpiozero's MockFactory: the pin states (and their lengths) of
each pattern, that a call returns at once, and that unknown kinds are refused. Waits are
bounded condition waits on pin changes, never sleeps."""
from __future__ import annotations

import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from firmware.hal.buzzer import BEEP_PATTERNS, Buzzer, StatusLeds

BUZZER, GREEN, RED = 18, 23, 24
WAIT = 5.0  # seconds for a pattern to finish


class WatchedPin(MockPin):
    """A mock pin whose test can wait for its next state changes."""

    changed = threading.Condition()

    def _change_state(self, value):
        with self.changed:
            done = super()._change_state(value)
            self.changed.notify_all()
        return done

    def wait_states(self, count: int) -> list[tuple[float, bool]]:
        """(seconds in the previous state, state) of the first `count` states."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.states) >= count, WAIT), self.states
            return [(s.timestamp, s.state) for s in self.states[:count]]


@pytest.fixture
def factory():
    factory = MockFactory(pin_class=WatchedPin)
    yield factory
    factory.reset()


def states_after(device, factory, pin, kind, count):
    watched = factory.pin(pin)
    watched.clear_states()
    start = time.monotonic()
    device(kind)
    returned = time.monotonic() - start
    return returned, watched.wait_states(count)


@pytest.mark.parametrize("kind, expected", [
    ("key", [False, True, False]),
    ("ok", [False, True, False, True, False]),
    ("error", [False, True, False]),
])
def test_buzzer_patterns(factory, kind, expected):
    buzzer = Buzzer(BUZZER, pin_factory=factory)
    try:
        returned, states = states_after(buzzer, factory, BUZZER, kind, len(expected))
        assert [state for _, state in states] == expected
        on_s, off_s, _ = BEEP_PATTERNS[kind]
        assert returned < on_s  # never blocks the loop
        ons = [t for (t, _), (_, was_on) in zip(states[1:], states) if was_on]
        assert all(on_s * 0.9 <= t < on_s + 0.25 for t in ons), ons
        assert len(factory.pin(BUZZER).states) == len(expected)  # and nothing after
    finally:
        buzzer.close()


def test_error_beep_is_longer_than_the_key_click(factory):
    buzzer = Buzzer(BUZZER, pin_factory=factory)
    try:
        _, click = states_after(buzzer, factory, BUZZER, "key", 3)
        _, error = states_after(buzzer, factory, BUZZER, "error", 3)
        assert error[2][0] > click[2][0] * 5
    finally:
        buzzer.close()


def test_an_active_low_buzzer_rests_high(factory):
    buzzer = Buzzer(BUZZER, active_high=False, pin_factory=factory)
    try:
        _, states = states_after(buzzer, factory, BUZZER, "key", 3)
        assert [state for _, state in states] == [True, False, True]
    finally:
        buzzer.close()


def test_leds_approve_and_decline(factory):
    leds = StatusLeds(GREEN, RED, pin_factory=factory)
    try:
        factory.pin(RED).clear_states()
        leds.decline()
        red = factory.pin(RED).wait_states(9)
        assert [state for _, state in red] == [False] + [True, False] * 4
        assert factory.pin(GREEN).states[-1].state is False
        factory.pin(GREEN).clear_states()
        leds("ok")
        assert [s for _, s in factory.pin(GREEN).wait_states(2)] == [False, True]
        leds("key")  # nothing changes
        assert factory.pin(GREEN).state is True and factory.pin(RED).state is False
    finally:
        leds.close()


def test_a_new_pattern_cuts_the_last_short(factory):
    leds = StatusLeds(GREEN, RED, pin_factory=factory)
    try:
        leds.approve()
        factory.pin(GREEN).wait_states(2)
        leds.decline()
        assert factory.pin(GREEN).state is False
        assert [s for _, s in factory.pin(RED).wait_states(2)] == [False, True]
    finally:
        leds.close()


@pytest.mark.parametrize("device", [Buzzer, lambda pin, pin_factory: StatusLeds(
    pin, RED, pin_factory=pin_factory)])
def test_unknown_kinds_are_refused(factory, device):
    signal = device(BUZZER, pin_factory=factory)
    try:
        with pytest.raises(ValueError, match="'beep'"):
            signal("beep")
    finally:
        signal.close()
