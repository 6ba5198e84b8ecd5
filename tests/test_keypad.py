"""Keypads: the debouncer (bounce, two keys, ghosting), the key maps, the GPIO matrix keypad
on gpiozero's MockFactory with a simulated key matrix, and the evdev keypad on stand-in
input devices that the test plugs in, types into and unplugs (FakeInputDevice,
InputDevices: the scanner and stripe reader tests use them too). Waits are bounded queue
reads, never sleeps."""
from __future__ import annotations

import errno
import logging
import os
import queue
import sys
import threading
import time

import evdev
import pytest
from evdev import ecodes
from gpiozero.pins.mock import MockFactory, MockPin

from firmware.flows.types import Key
from firmware.hal import DeviceError
from firmware.hal.keypad import (
    EVDEV_KEYS, KEYMAP_3X4, KEYMAP_4X4, EvdevKeypad, KeyDebouncer, MatrixKeypad, evdev_key,
    key_names, pin_factory)
from firmware.hal.wedge import key_char

ROWS, COLS = [5, 6, 13, 19], [12, 16, 20, 21]
WAIT = 3.0  # seconds to wait for a key that must come
NAMES_4X4 = ["1", "2", "3", "MENU", "4", "5", "6", "BACK", "7", "8", "9", "CLEAR",
             "CANCEL", "0", "ENTER", "00"]
NAMES_3X4 = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "CANCEL", "0", "ENTER"]


# ---- the debouncer (pure, times given) ----

def test_a_press_counts_once_stable_for_the_debounce_time():
    d = KeyDebouncer(0.02)
    assert d.feed(0.000, frozenset({3})) is None
    assert d.feed(0.010, frozenset({3})) is None
    assert d.feed(0.021, frozenset({3})) == 3
    assert d.feed(0.100, frozenset({3})) is None  # held: no repeat
    assert not d.idle
    assert d.feed(0.200, frozenset()) is None
    assert not d.idle  # the release is not stable yet
    assert d.feed(0.221, frozenset()) is None
    assert d.idle


def test_bounce_inside_the_window_gives_one_key():
    d = KeyDebouncer(0.02)
    edges = [(0.000, {5}), (0.002, set()), (0.004, {5}), (0.007, set()), (0.009, {5})]
    assert [d.feed(t, frozenset(s)) for t, s in edges] == [None] * 5
    assert d.feed(0.030, frozenset({5})) == 5
    bounce_up = [(0.100, set()), (0.102, {5}), (0.104, set()), (0.110, {5}), (0.112, set())]
    assert [d.feed(t, frozenset(s)) for t, s in bounce_up] == [None] * 5
    assert d.feed(0.140, frozenset()) is None and d.idle
    assert d.feed(0.200, frozenset({5})) is None
    assert d.feed(0.221, frozenset({5})) == 5  # a new press counts again


def test_a_glitch_shorter_than_the_window_is_no_key():
    d = KeyDebouncer(0.02)
    assert d.feed(0.000, frozenset({1})) is None
    assert d.feed(0.010, frozenset()) is None
    assert d.feed(0.050, frozenset()) is None
    assert d.idle


def test_two_keys_together_post_neither():
    d = KeyDebouncer(0.02)
    assert d.feed(0.000, frozenset({1, 2})) is None
    assert d.feed(0.030, frozenset({1, 2})) is None
    assert d.feed(0.040, frozenset({2})) is None
    assert d.feed(0.070, frozenset({2})) is None  # still the same hold
    assert d.feed(0.080, frozenset()) is None
    assert d.feed(0.100, frozenset()) is None and d.idle


def test_the_first_of_two_keys_counts_and_the_second_not():
    d = KeyDebouncer(0.02)
    assert d.feed(0.000, frozenset({1})) is None
    assert d.feed(0.021, frozenset({1})) == 1
    assert d.feed(0.030, frozenset({1, 2})) is None
    assert d.feed(0.060, frozenset({1, 2})) is None
    assert d.feed(0.070, frozenset({2})) is None
    assert d.feed(0.100, frozenset({2})) is None


def test_a_fast_typists_next_key_counts():
    d = KeyDebouncer(0.02)
    assert d.feed(0.000, frozenset({1})) is None
    assert d.feed(0.021, frozenset({1})) == 1
    assert d.feed(0.100, frozenset()) is None
    assert d.feed(0.105, frozenset({2})) is None  # 1 was up only 5 ms: not stable
    assert d.feed(0.126, frozenset({2})) == 2


def test_three_keys_and_their_ghost_post_nothing():
    d = KeyDebouncer(0.0)
    assert d.feed(0.0, frozenset({0, 1, 4, 5})) is None  # 0, 1, 4 pressed; 5 is the ghost


# ---- key maps ----

def test_default_maps_follow_the_chinese_pos_layout():
    assert [n for names in key_names(KEYMAP_4X4, 16) for n in ["+".join(names)]] == [
        "0+0" if n == "00" else n for n in NAMES_4X4]
    assert [names for names in key_names(KEYMAP_3X4, 12)] == [(n,) for n in NAMES_3X4]


def test_a_list_map_takes_key_names():
    names = key_names(["1", "2", "3", "MENU", "00", "ENTER"], 6)
    assert names == [("1",), ("2",), ("3",), ("MENU",), ("0", "0"), ("ENTER",)]


@pytest.mark.parametrize("keymap, size, words", [
    ("123", 4, "has 3 keys, the keypad 4"),
    ("12.4", 4, "unknown key '.'"),
    (["1", "OK"], 2, "unknown key 'OK'"),
])
def test_bad_maps_name_the_config_key(keymap, size, words):
    with pytest.raises(DeviceError, match="keypad_map") as err:
        key_names(keymap, size)
    assert words in str(err.value)


def test_pins_must_be_distinct():
    with pytest.raises(DeviceError, match="keypad_rows"):
        MatrixKeypad([5, 6], [6, 7], "1234")


def test_pin_factory_names():
    assert isinstance(pin_factory("mock"), MockFactory)
    with pytest.raises(DeviceError, match="pin_factory 'gpio'"):
        pin_factory("gpio")


# ---- the matrix keypad on mock pins ----

class Matrix:
    """Switches between row and column mock pins: a column reads low while one of its keys
    is held and that key's row is driven low."""

    def __init__(self, factory: MockFactory, rows: list[int], cols: list[int]):
        matrix = self
        self._lock = threading.RLock()
        self._scanned = threading.Condition()
        self.last_scan = 0.0  # monotonic time of the last row change
        self.held: set[tuple[int, int]] = set()

        class RowPin(MockPin):
            def _change_state(self, value):
                changed = super()._change_state(value)
                matrix.update()
                with matrix._scanned:
                    matrix.last_scan = time.monotonic()
                    matrix._scanned.notify_all()
                return changed

        self.rows = [factory.pin(p, pin_class=RowPin) for p in rows]
        self.cols = [factory.pin(p) for p in cols]

    def update(self) -> None:
        with self._lock:
            for c, col in enumerate(self.cols):
                if col.function != "input":
                    continue
                low = any(not self.rows[r].state and self.rows[r].function == "output"
                          for r, cc in self.held if cc == c)
                col.drive_low() if low else col.drive_high()

    def scanned_for(self, seconds: float) -> None:
        """Wait until the keypad has scanned the matrix as it is now for `seconds`."""
        start = time.monotonic()
        with self._scanned:
            assert self._scanned.wait_for(lambda: self.last_scan >= start + seconds, WAIT)

    def press(self, *keys: tuple[int, int]) -> None:
        with self._lock:
            self.held.update(keys)
            self.update()

    def release(self, *keys: tuple[int, int]) -> None:
        with self._lock:
            self.held.difference_update(keys or set(self.held))
            self.update()

    def bounce(self, key: tuple[int, int], edges: int) -> None:
        for _ in range(edges):
            self.press(key)
            self.release(key)


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.reset()


def attached(factory, rows=ROWS, cols=COLS, keymap=KEYMAP_4X4, debounce_s=0.02):
    matrix = Matrix(factory, rows, cols)
    keypad = MatrixKeypad(rows, cols, keymap, debounce_s=debounce_s, pin_factory=factory)
    events: queue.Queue = queue.Queue()
    keypad.attach(events.put, lambda: None)
    return matrix, keypad, events


def tap(matrix, events, key, count=1):
    """Press and hold `key` until `count` events arrive, release it: the events."""
    matrix.press(key)
    got = [events.get(timeout=WAIT) for _ in range(count)]
    matrix.release(key)
    return got


def settle(matrix, events, key=(0, 0)):
    """A marker press after a release, so a key that should not have come would be seen
    first: returns the marker's event."""
    return tap(matrix, events, key)[0]


@pytest.mark.parametrize("rows, cols, keymap, names", [
    (ROWS, COLS, KEYMAP_4X4, NAMES_4X4),
    (ROWS, COLS[:3], KEYMAP_3X4, NAMES_3X4),
])
def test_every_key_of_the_map_reaches_post(factory, rows, cols, keymap, names):
    matrix, keypad, events = attached(factory, rows, cols, keymap)
    try:
        for i, name in enumerate(names):
            key = divmod(i, len(cols))
            expected = [Key("0"), Key("0")] if name == "00" else [Key(name)]
            assert tap(matrix, events, key, len(expected)) == expected
        assert settle(matrix, events) == Key("1")
        assert events.empty()
    finally:
        keypad.close()


def test_rows_rest_low_and_columns_pull_up(factory):
    matrix, keypad, events = attached(factory)
    try:
        assert [pin.state for pin in matrix.rows] == [False] * 4
        assert [pin.pull for pin in matrix.cols] == ["up"] * 4
    finally:
        keypad.close()


def test_a_bouncing_key_posts_once(factory):
    matrix, keypad, events = attached(factory, debounce_s=0.05)
    try:
        matrix.bounce((1, 1), 20)
        assert tap(matrix, events, (1, 1)) == [Key("5")]
        matrix.bounce((1, 1), 20)  # the release bounces too
        assert settle(matrix, events, (2, 2)) == Key("9")
    finally:
        keypad.close()


def test_two_keys_at_once_post_neither(factory):
    matrix, keypad, events = attached(factory)
    try:
        matrix.press((0, 1), (2, 0))
        matrix.scanned_for(0.1)
        matrix.release((2, 0))
        matrix.scanned_for(0.1)
        matrix.release()
        assert settle(matrix, events, (3, 2)) == Key("ENTER")
    finally:
        keypad.close()


def test_a_key_pressed_while_another_is_held_is_dropped(factory):
    matrix, keypad, events = attached(factory)
    try:
        matrix.press((0, 0))
        assert events.get(timeout=WAIT) == Key("1")
        matrix.press((0, 1))
        matrix.scanned_for(0.1)
        matrix.release((0, 0))
        matrix.release((0, 1))
        assert settle(matrix, events, (0, 2)) == Key("3")
    finally:
        keypad.close()


def test_close_stops_the_thread_and_frees_the_pins(factory):
    matrix, keypad, events = attached(factory)
    assert any(t.name == "kpos-keypad" for t in threading.enumerate())
    keypad.close()
    assert keypad._thread is not None and not keypad._thread.is_alive()
    assert all(pin.function == "input" for pin in matrix.rows)  # released by gpiozero
    MatrixKeypad(ROWS, COLS, KEYMAP_4X4, pin_factory=factory).close()  # pins free again


def test_building_starts_no_thread(factory):
    before = threading.active_count()
    keypad = MatrixKeypad(ROWS, COLS, KEYMAP_4X4, pin_factory=factory)
    assert threading.active_count() == before
    keypad.close()


# ---- the evdev keypad, on stand-in input devices ----

class FakeInputDevice:
    """Stands in for an open evdev.InputDevice: `fd` (a pipe) turns readable when the test
    `send`s events, `read()` returns them, as the real one, and raises OSError ENODEV once
    `unplug`ged and drained. Records grab() and close()."""

    def __init__(self, path: str):
        self.path = path
        self.fd, self._wake = os.pipe()
        self.grabbed = self.closed = self.gone = False
        self._events: list = []
        self._lock = threading.Lock()

    def send(self, events: list) -> None:
        with self._lock:
            self._events += events
            os.write(self._wake, b"!")

    def unplug(self) -> None:
        with self._lock:
            self.gone = True
            os.write(self._wake, b"!")  # stays readable from now on

    def read(self):
        with self._lock:
            events, self._events = self._events, []
            if not events and self.gone:
                raise OSError(errno.ENODEV, "No such device")
            if not self.gone:
                os.read(self.fd, 4096)
            if not events:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            return iter(events)

    def grab(self) -> None:
        self.grabbed = True

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)
                os.close(self._wake)


class InputDevices:
    """evdev.InputDevice while a test runs (`input_devices` fixture): opens the devices the
    test plugged in at their paths; a path with none is FileNotFoundError, as on Linux.
    `opened` gets each device as the code under test opens it."""

    def __init__(self):
        self.plugged: dict[str, FakeInputDevice] = {}
        self.opened: queue.Queue = queue.Queue()

    def __call__(self, path) -> FakeInputDevice:
        device = self.plugged.get(str(path))
        if device is None or device.gone:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        self.opened.put(device)
        return device

    def plug(self, path: str) -> FakeInputDevice:
        self.plugged[path] = FakeInputDevice(path)
        return self.plugged[path]


@pytest.fixture
def input_devices(monkeypatch):
    devices = InputDevices()
    monkeypatch.setattr(evdev, "InputDevice", devices)
    yield devices
    for device in devices.plugged.values():
        device.close()


def key(name: str, *values: int) -> list:
    """The events a USB keyboard sends for key `name` going through `values` (1 down, 2
    auto-repeat, 0 up): a scan code, the key, a report, each time."""
    code = ecodes.ecodes[name]
    return [event for value in values for event in (
        evdev.InputEvent(1700000000, 0, ecodes.EV_MSC, ecodes.MSC_SCAN, 0x70000 + code),
        evdev.InputEvent(1700000000, 0, ecodes.EV_KEY, code, value),
        evdev.InputEvent(1700000000, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0))]


def taps(*names: str) -> list:
    return [event for name in names for event in key(name, 1, 0)]


# character -> (evdev key name, shift) on the US layout, CR typed as Enter
CHAR_KEYS = {key_char(name, shift): (name, shift) for name in ecodes.ecodes
             if name.startswith("KEY_") and not name.startswith("KEY_KP")
             for shift in (True, False) if key_char(name, shift)} | {"\r": ("KEY_ENTER", False)}


def typing(text: str) -> list:
    """The events of a US keyboard typing `text` (shift pressed around shifted characters)."""
    events = []
    for char in text:
        name, shift = CHAR_KEYS[char]
        tapped = taps(name)
        events += key("KEY_LEFTSHIFT", 1) + tapped + key("KEY_LEFTSHIFT", 0) if shift else tapped
    return events


PAD = "/dev/input/by-id/usb-Keypad-event-kbd"


def start_pad(path: str = PAD):
    keypad = EvdevKeypad(path)
    events, faults = queue.Queue(), queue.Queue()
    keypad._on_fault = faults.put
    keypad.attach(events.put, lambda: None)
    return keypad, events, faults


def test_evdev_keypad_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "evdev", None)  # import evdev: ImportError
    with pytest.raises(DeviceError, match=r'keypad backend "evdev" .*pip install evdev'):
        EvdevKeypad("/dev/input/event0")


def test_evdev_map_names_only_keys():
    assert {"ENTER", "BACK", "CLEAR", "CANCEL", "MENU", *"0123456789"} == set(EVDEV_KEYS.values())


@pytest.mark.parametrize("names, key", [
    ("KEY_KP7", "7"), ("KEY_7", "7"), ("KEY_KPENTER", "ENTER"), ("KEY_ESC", "CANCEL"),
    (["KEY_MIN_INTERESTING", "KEY_MUTE"], None), (["KEY_BACKSPACE"], "BACK"), ("KEY_A", None),
])
def test_evdev_key_codes(names, key):
    assert evdev_key(names, EVDEV_KEYS) == key


def test_evdev_keypad_bad_map_names_the_config_key():
    with pytest.raises(DeviceError, match="keypad_map: unknown key 'OK'"):
        EvdevKeypad(PAD, {"KEY_KPENTER": "OK"})


def test_evdev_keypad_posts_key_downs_only(input_devices, no_card_data_in_logs):
    pad = input_devices.plug(PAD)
    keypad, events, faults = start_pad()
    try:
        assert faults.get(timeout=WAIT) == ""
        assert pad.grabbed
        pad.send(taps("KEY_KP1", "KEY_2", "KEY_KPENTER", "KEY_ENTER", "KEY_ESC", "KEY_BACKSPACE",
                      "KEY_DELETE", "KEY_KPASTERISK", "KEY_F1", "KEY_A", "KEY_MUTE", "KEY_LEFTSHIFT"))
        pad.send(key("KEY_KP5", 1, 2, 2, 2, 0) + key("KEY_3", 0) + taps("KEY_KP9"))
        got = [events.get(timeout=WAIT).key for _ in range(10)]
        assert got == ["1", "2", "ENTER", "ENTER", "CANCEL", "BACK", "CLEAR", "CLEAR", "MENU",
                       "5"]  # KEY_A, KEY_MUTE, shift: not keypad keys; held 5: once; 3 up: none
        assert events.get(timeout=WAIT) == Key("9")
    finally:
        keypad.close()
    assert not keypad._thread.is_alive() and pad.closed
    assert events.empty()


def test_evdev_keypad_unplugged_is_a_fault_and_comes_back(input_devices, caplog):
    keypad, events, faults = start_pad()
    try:
        assert faults.get(timeout=WAIT) == "keypad offline"  # not plugged in yet
        assert any(r.levelno == logging.WARNING and PAD in r.getMessage() for r in caplog.records)
        pad = input_devices.plug(PAD)
        assert faults.get(timeout=WAIT) == ""
        pad.send(taps("KEY_KP4"))
        assert events.get(timeout=WAIT) == Key("4")
        pad.unplug()  # mid-read: the next read is ENODEV
        assert faults.get(timeout=WAIT) == "keypad offline"
        assert keypad.fault == "keypad offline" and pad.closed
        again = input_devices.plug(PAD)
        assert faults.get(timeout=WAIT) == ""
        assert again.grabbed
        again.send(taps("KEY_KP7"))
        assert events.get(timeout=WAIT) == Key("7")
    finally:
        keypad.close()
    assert not keypad._thread.is_alive()
    assert events.empty()
