"""evdev keyboard input shared by the USB keypad and the keyboard-wedge stripe reader and
scanner: the key events of an open input device, and the characters they type.

Runs on the device's own thread (firmware.hal.devthread): `key_events` and `typed_chars`
block at most POLL_S seconds between checks of `stop`, and raise OSError when the device
goes (ENODEV on an unplug), which DeviceThread turns into a fault and a retry. Pure
otherwise: nothing is logged here, as the keys carry PIN digits and card numbers.
"""
from __future__ import annotations

import select
import string
import threading
from typing import Iterator

from firmware.hal import DeviceError
from firmware.hal.devthread import POLL_S

__all__ = ["import_evdev", "key_events", "typed_chars", "key_char", "SHIFT_KEYS"]

# evdev key name -> (plain, with shift) on the US layout that wedge devices type in.
_KEYS = {
    **{f"KEY_{d}": (d, s) for d, s in zip("1234567890", "!@#$%^&*()")},
    **{f"KEY_KP{d}": (d, d) for d in string.digits},
    **{f"KEY_{c}": (c.lower(), c) for c in string.ascii_uppercase},
    "KEY_SPACE": (" ", " "), "KEY_MINUS": ("-", "_"), "KEY_EQUAL": ("=", "+"),
    "KEY_LEFTBRACE": ("[", "{"), "KEY_RIGHTBRACE": ("]", "}"), "KEY_BACKSLASH": ("\\", "|"),
    "KEY_SEMICOLON": (";", ":"), "KEY_APOSTROPHE": ("'", '"'), "KEY_GRAVE": ("`", "~"),
    "KEY_COMMA": (",", "<"), "KEY_DOT": (".", ">"), "KEY_SLASH": ("/", "?"),
    "KEY_KPMINUS": ("-", "-"), "KEY_KPPLUS": ("+", "+"), "KEY_KPASTERISK": ("*", "*"),
    "KEY_KPSLASH": ("/", "/"), "KEY_KPDOT": (".", "."),
    "KEY_ENTER": ("\n", "\n"), "KEY_KPENTER": ("\n", "\n"), "KEY_TAB": ("\t", "\t"),
}
SHIFT_KEYS = ("KEY_LEFTSHIFT", "KEY_RIGHTSHIFT")


def import_evdev(backend: str):
    """The evdev module, or DeviceError naming the package (`backend` says who needs it)."""
    try:
        import evdev
    except ImportError as exc:
        raise DeviceError(f"{backend} needs the Python package evdev (pip install evdev)") from exc
    return evdev


def key_char(name: str, shift: bool) -> str | None:
    """The character an evdev key name types (US layout), or None for other keys."""
    pair = _KEYS.get(name)
    return pair[shift] if pair else None


def key_events(device, ecodes, stop: threading.Event) -> Iterator[tuple[tuple[str, ...], int]]:
    """(key names, value) of each EV_KEY event read from an open evdev InputDevice until
    `stop` is set. The names are all of the code's aliases, () for a code evdev does not
    name; value is 1 down, 2 auto-repeat, 0 up."""
    while not stop.is_set():
        if not select.select([device.fd], [], [], POLL_S)[0]:
            continue
        for event in device.read():
            if event.type == ecodes.EV_KEY:
                names = ecodes.KEY.get(event.code, ())
                yield ((names,) if isinstance(names, str) else tuple(names)), event.value


def typed_chars(device, ecodes, stop: threading.Event) -> Iterator[str]:
    """The characters a keyboard-wedge device types (key_char, either shift key held),
    one per key-down; auto-repeat and keys that type nothing are dropped."""
    shift = False
    for names, value in key_events(device, ecodes, stop):
        if any(name in SHIFT_KEYS for name in names):
            shift = value != 0
        elif value == 1:
            char = next(filter(None, (key_char(name, shift) for name in names)), None)
            if char is not None:
                yield char
