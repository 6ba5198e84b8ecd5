"""Keypads: a 4x4 or 3x4 matrix keypad on GPIO (gpiozero) and a USB keypad (evdev).

Input-device contract (as firmware/hal/devthread.py): `attach(post, on_quit)` (loop
thread, once) starts a daemon thread that only posts `Key` events (names from KEYS);
`close()` (any thread) stops it within about 1 s and frees the pins. Building starts no
thread. Keys are never logged: the same keys carry PIN digits.

Matrix keypad ("kpos-keypad" thread). Rows are outputs (active low), columns inputs with
pull-ups. At rest every row is driven low and the thread sleeps until a column falls;
then it scans one row at a time every SCAN_S seconds until all keys are up again. A key
counts when the set of pressed keys has stayed the same for `debounce_s` seconds
(KeyDebouncer), so a bouncing contact gives one Key. One key at a time: a key is posted
when it is the only key down and was not down before (a fast typist's next key counts
once the last one is up); a key pressed while another is held, and two keys that land
together, post nothing (this also drops the ghost keys of a matrix without diodes).
Wiring: a 330 ohm .. 1 kohm resistor in series with each row pin keeps two keys of one
column from shorting two outputs while a row is scanned.

Key map: one label per key, row by row (a string: one character a label). Labels are
digits, the KEYS names, and the printed keys of the usual membrane keypads, mapped as on
a Chinese bank POS (功能 / 退格 / 清除 / 取消 / 确认): A = MENU (F), B = BACK, C = CLEAR,
D = 00 (two "0" keys, for amounts), * = CANCEL, # = ENTER. So "123456789*0#" (3x4)
has digits, CANCEL and ENTER; "123A456B789C*0#D" (4x4) has every key. There is no dot
key: amounts are keyed in minor units.

USB keypad ("kpos-keypad" thread, an evdev input device, grabbed so no console sees the
keys): key-down events of EVDEV_KEYS codes post their Key; auto-repeat and other keys
are ignored. A missing or unplugged keypad sets `fault` and is retried (DeviceThread).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from firmware.flows.types import DIGITS, KEYS, Key
from firmware.hal import DeviceError
from firmware.hal.devthread import POLL_S, DeviceThread, EvdevGrab
from firmware.hal.wedge import import_evdev, key_events

__all__ = ["MatrixKeypad", "EvdevKeypad", "KeyDebouncer", "pin_factory", "key_names", "evdev_key",
           "LABELS", "KEYMAP_4X4", "KEYMAP_3X4", "EVDEV_KEYS", "SCAN_S", "DEBOUNCE_S"]

log = logging.getLogger("kpos.keypad")

SCAN_S = 0.005  # seconds between row scans while a key is down
DEBOUNCE_S = 0.02  # seconds the pressed keys must stay the same to count
KEYMAP_4X4 = "123A456B789C*0#D"
KEYMAP_3X4 = "123456789*0#"
LABELS = {**{d: (d,) for d in DIGITS}, **{k: (k,) for k in KEYS},
          "A": ("MENU",), "B": ("BACK",), "C": ("CLEAR",), "D": ("0", "0"), "00": ("0", "0"),
          "*": ("CANCEL",), "#": ("ENTER",)}
EVDEV_KEYS = {**{f"KEY_{d}": d for d in DIGITS}, **{f"KEY_KP{d}": d for d in DIGITS},
              "KEY_ENTER": "ENTER", "KEY_KPENTER": "ENTER", "KEY_KPPLUS": "ENTER",
              "KEY_BACKSPACE": "BACK", "KEY_DELETE": "CLEAR", "KEY_KPASTERISK": "CLEAR",
              "KEY_ESC": "CANCEL", "KEY_KPMINUS": "CANCEL", "KEY_KPSLASH": "MENU",
              "KEY_F1": "MENU"}
FACTORIES = {"lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory", "lgpio"),
             "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory", "RPi.GPIO"),
             "mock": ("gpiozero.pins.mock", "MockFactory", "gpiozero")}


def pin_factory(name: str):
    """A gpiozero pin factory: "lgpio" (Pi 5, and any Pi), "rpigpio" (RPi.GPIO, Pi 4 and
    older) or "mock" (tests, no hardware). DeviceError naming the package when it is
    missing or finds no GPIO chip."""
    if name not in FACTORIES:
        raise DeviceError(f"[devices] pin_factory {name!r}: not one of {sorted(FACTORIES)}")
    module, cls, package = FACTORIES[name]
    try:
        return getattr(__import__(module, fromlist=[cls]), cls)()
    except ImportError as exc:
        raise DeviceError(f"pin factory {name!r} needs the Python package {package} "
                          f"(pip install {package}): {exc}") from exc
    except Exception as exc:  # gpiozero's BadPinFactory, lgpio's error: no GPIO here
        raise DeviceError(f"pin factory {name!r}: no GPIO: {exc}") from exc


def key_names(keymap: str | Sequence[str], size: int) -> list[tuple[str, ...]]:
    """The KEYS names each of `size` keys posts, from a key map (see LABELS); DeviceError
    naming [devices] keypad_map when a label is unknown or the count is wrong."""
    labels = list(keymap)
    if len(labels) != size:
        raise DeviceError(f"[devices] keypad_map has {len(labels)} keys, the keypad {size}")
    bad = [label for label in labels if label not in LABELS]
    if bad:
        raise DeviceError(f"[devices] keypad_map: unknown key {bad[0]!r}")
    return [LABELS[label] for label in labels]


class KeyDebouncer:
    """Scans of a matrix -> key presses. One thread, pure: times are the caller's (s).

    `feed(now, pressed)` takes the set of key indexes down in one scan and returns the
    index of a key just pressed: the only key of a set stable for `debounce_s` that was
    not in the last stable set; else None. `idle` is True once every key is up and
    stable again."""

    def __init__(self, debounce_s: float = DEBOUNCE_S):
        self._debounce_s = debounce_s
        self._raw: frozenset[int] = frozenset()
        self._since = 0.0
        self._stable: frozenset[int] = frozenset()

    @property
    def idle(self) -> bool:
        return not self._raw and not self._stable

    def feed(self, now: float, pressed: frozenset[int]) -> int | None:
        if pressed != self._raw:
            self._raw, self._since = pressed, now
        if now - self._since < self._debounce_s or self._raw == self._stable:
            return None
        was, self._stable = self._stable, self._raw
        (key,) = self._stable if len(self._stable) == 1 else (None,)
        return key if key not in was else None


class MatrixKeypad:
    """A matrix keypad on GPIO: `rows` and `cols` are BCM pin numbers, `keymap` one label
    per key row by row (len(rows) * len(cols)), `pin_factory` a gpiozero factory (None:
    gpiozero's default)."""

    THREAD = "kpos-keypad"

    def __init__(self, rows: list[int], cols: list[int], keymap: str | Sequence[str], *,
                 debounce_s: float = DEBOUNCE_S, pin_factory=None):
        pins = [*rows, *cols]
        if len(set(pins)) != len(pins) or not rows or not cols:
            raise DeviceError(f"[devices] keypad_rows {rows} / keypad_cols {cols}: "
                              f"pins must be given once each")
        self._names = key_names(keymap, len(rows) * len(cols))
        self._pins = (rows, cols)
        self._factory = pin_factory
        self._debounce_s = debounce_s
        self._post: Callable[[object], None] = lambda event: None
        self._rows: list = []
        self._cols: list = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, post: Callable[[object], None], on_quit: Callable[[], None]) -> None:
        from gpiozero import DigitalInputDevice, DigitalOutputDevice

        rows, cols = self._pins
        self._rows = [DigitalOutputDevice(pin, active_high=False, initial_value=True,
                                          pin_factory=self._factory) for pin in rows]
        self._cols = [DigitalInputDevice(pin, pull_up=True, pin_factory=self._factory)
                      for pin in cols]
        for col in self._cols:
            col.when_activated = self._wake.set  # on gpiozero's thread: only wakes ours
        self._post = post
        self._thread = threading.Thread(target=self._run, name=self.THREAD, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        for device in (*self._cols, *self._rows):
            device.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            if any(col.is_active for col in self._cols):
                self._scan_until_up()

    def _scan_until_up(self) -> None:
        """All rows driven low on entry and on return."""
        debouncer = KeyDebouncer(self._debounce_s)
        for row in self._rows:
            row.off()
        while not self._stop.is_set():
            index = debouncer.feed(time.monotonic(), self._scan())
            for name in self._names[index] if index is not None else ():
                self._post(Key(name))
            if debouncer.idle:
                break
            self._stop.wait(SCAN_S)
        for row in self._rows:
            row.on()

    def _scan(self) -> frozenset[int]:
        down = set()
        for r, row in enumerate(self._rows):
            row.on()
            down.update(r * len(self._cols) + c for c, col in enumerate(self._cols)
                        if col.is_active)
            row.off()
        return frozenset(down)


class EvdevKeypad(EvdevGrab, DeviceThread):
    """A USB keypad at `device_path` (/dev/input/by-id/...-event-kbd); `keymap` maps evdev
    key names (KEY_KP1 ...) to KEYS names, EVDEV_KEYS when None."""

    THREAD, WHAT = "kpos-keypad", "keypad"
    OFFLINE, STARTING = "keypad offline", "keypad starting"

    def __init__(self, device_path: str, keymap: dict[str, str] | None = None, *,
                 on_fault: Callable[[str], None] | None = None):
        self._evdev = import_evdev('keypad backend "evdev"')
        self._keymap = EVDEV_KEYS if keymap is None else keymap
        bad = [name for name in self._keymap.values() if name not in KEYS]
        if bad:
            raise DeviceError(f"[devices] keypad_map: unknown key {bad[0]!r}")
        super().__init__(device_path, on_fault, log)

    def _pump(self, device) -> None:
        for names, value in key_events(device, self._evdev.ecodes, self._stop):
            name = evdev_key(names, self._keymap) if value == 1 else None  # 2: auto-repeat
            if name:
                self._post(Key(name))


def evdev_key(names: str | Sequence[str], keymap: dict[str, str]) -> str | None:
    """The KEYS name of an evdev key code's name(s) (a code with aliases has
    several), None for a key the map does not hold."""
    found = [keymap[name] for name in ([names] if isinstance(names, str) else names)
             if name in keymap]
    return found[0] if found else None
