"""Magnetic stripe: track parsing, serial and keyboard-wedge readers, simulated swipes."""
from __future__ import annotations

import asyncio
import io
import logging
import os
import queue
import sys
import threading
from dataclasses import replace
from datetime import date
from types import SimpleNamespace

import pytest
from evdev import ecodes
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.cardsafe import luhn_ok
from firmware.emv.card import ENTRY_MAGSTRIPE
from firmware.flows.types import CardInserted, CardRemoved, CardSwiped, SwipeFailed
from firmware.hal import DeviceError
from firmware.hal.console import HELP, ConsolePanel, parse_console_line
from firmware.hal.display import RecordingDisplay
from firmware.hal.reader_sim import SimCardReader
from firmware.hal.swipe import (
    OFFLINE, EvdevSwipeReader, LineBuffer, SerialSwipeReader, WedgeDecoder, build_swipe_reader,
)
from firmware.hal.wedge import key_char, typed_chars
from firmware.magstripe import (
    UNREADABLE, SwipeError, Track2, chip_card, parse_swipe, parse_track2, swipe_event, track_data,
)
from firmware.sim.catalog import load_catalog
from firmware.sim.script import ScriptError, parse_script, run_script
from tests import test_keypad
from tests.test_keypad import FakeInputDevice, key, taps, typing

input_devices = test_keypad.input_devices  # the fixture: stand-ins for evdev.InputDevice
TODAY = date(2025, 6, 15)
PAN = "6226090000000014"  # catalog "approve"
WAIT = 3.0  # seconds to wait for an event that must come


def with_luhn(body: str) -> str:
    """`body` plus its Luhn check digit."""
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


PAN13 = with_luhn("422222222222")
PAN19 = with_luhn("621234567890123456")
BAD_LUHN = PAN[:-1] + "5"
TEST_PANS = (PAN, PAN13, PAN19, BAD_LUHN)


@pytest.fixture(autouse=True)
def no_pan_in_logs(caplog, test_pans):
    """Every test here: no log line holds a full PAN (catalog or local test PANs)."""
    caplog.set_level(logging.DEBUG)
    yield
    for pan in (*test_pans, *TEST_PANS):
        assert pan not in caplog.text


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


# ---- parsing ----

GOOD = [
    (f";{PAN}=2512220123?", PAN, "2512", "220", "123"),
    (f";{PAN}D2512201F?", PAN, "2512", "201", ""),  # chip track 2 equivalent: 'D', pad 'F'
    (f"%B{PAN}^ZHANG/SAN^2512220000?;{PAN}=2512220123?\r", PAN, "2512", "220", "123"),
    (f"%B{PAN}^ZHANG/SAN^2512220000?\r\n;{PAN}=2512120?\r\n;011234=99?\r\n",
     PAN, "2512", "120", ""),
    (f"%E?;{PAN}=2506620?;E?\n", PAN, "2506", "620", ""),  # tracks 1 and 3 failed: 2 will do
    (f";{PAN13}=3001101?", PAN13, "3001", "101", ""),
    (f";{PAN19}=3001101?", PAN19, "3001", "101", ""),
    (f";{PAN}=2506220?", PAN, "2506", "220", ""),  # expires this month: still valid
]


@pytest.mark.parametrize("raw, pan, expiry, service_code, discretionary", GOOD)
def test_good_swipes_parse(raw, pan, expiry, service_code, discretionary):
    for data in (raw, raw.encode("ascii")):
        assert parse_swipe(data, today=TODAY) == Track2(pan, expiry, service_code, discretionary)


BAD = [
    (f"%B{PAN}^ZHANG/SAN^2512220000?\r", UNREADABLE),  # track 1 alone is never used
    (";E?\r", UNREADABLE),
    ("%E?;E?;E?\r", UNREADABLE),
    ("E\r", UNREADABLE),
    (f";{PAN}=25", UNREADABLE),  # partial read: no end sentinel
    (f";{PAN}=2512220", UNREADABLE),
    ("1250\r", UNREADABLE),  # keypad digits
    ("", UNREADABLE),
    (b"\x00\xff\xfe;\x13?", UNREADABLE),
    (f";{PAN}=2512220{'0' * 20}?", UNREADABLE),  # longer than a track 2 can be
    (f"x;{PAN}=2512220?", UNREADABLE),
    (f"{PAN}=2512220?", UNREADABLE),  # a reader's output always has sentinels
    (f";{BAD_LUHN}=2512220?", "PAN fails the Luhn check"),
    (f";{PAN[:12]}=2512220?", "bad PAN length"),
    (f";{with_luhn('1' * 19)}=2512220?", "bad PAN length"),
    (f";{PAN}=2513220?", "bad expiry date"),
    (f";{PAN}=2500220?", "bad expiry date"),
    (f";{PAN}=251?", "bad expiry date"),
    (f";{PAN}=251222?", "bad service code"),
    (f";{PAN}=2505220?", "card expired"),  # last month
    (f";{PAN}=1912220?", "card expired"),
]


@pytest.mark.parametrize("raw, reason", BAD)
def test_bad_swipes_fail_with_a_pan_free_reason(raw, reason):
    with pytest.raises(SwipeError) as err:
        parse_swipe(raw, today=TODAY)
    assert err.value.reason == reason
    assert PAN not in str(err.value) and PAN[:12] not in str(err.value)


def test_parse_track2_with_and_without_sentinels():
    want = Track2(PAN, "3012", "201", "99")
    assert parse_track2(f";{PAN}=301220199?") == want
    assert parse_track2(f"{PAN}D301220199") == want
    assert parse_track2(f"{PAN}=0112201") == Track2(PAN, "0112", "201", "")  # no date check here


def test_track2_repr_and_text():
    track = Track2(PAN, "3012", "201", "123456")
    assert track.text == f"{PAN}=3012201123456"
    for shown in (repr(track), str(track), f"{track}"):
        assert PAN not in shown and "123456" not in shown
        assert "622609******0014" in shown


@pytest.mark.parametrize("code, chip", [("201", True), ("220", True), ("601", True),
                                        ("101", False), ("120", False), ("501", False)])
def test_chip_card_from_service_code(code, chip):
    assert chip_card(code) is chip


def test_swipe_event_carries_track2_as_card_data():
    event = swipe_event(f";{PAN}=3012201555?\r", today=TODAY)
    assert isinstance(event, CardSwiped) and event.chip
    card = event.card
    assert (card.pan, card.expiry, card.service_code) == (PAN, "3012", "201")
    assert card.track2 == f"{PAN}=3012201555"
    assert card.entry_mode == ENTRY_MAGSTRIPE
    assert (card.aid, card.app_label, card.icc_data, card.pan_seq) == ("", "", b"", None)
    assert PAN not in repr(event)
    nochip = swipe_event(f";{PAN}=3012101?", today=TODAY)
    assert isinstance(nochip, CardSwiped) and not nochip.chip


def test_swipe_event_failure_is_swipe_failed():
    assert swipe_event(";E?", today=TODAY) == SwipeFailed(UNREADABLE)
    assert swipe_event(f";{PAN}=2401201?", today=TODAY) == SwipeFailed("card expired")


def test_track_data_is_what_a_reader_sends():
    raw = track_data(PAN, "3012", "120", "Test/Card")
    assert raw == f"%B{PAN}^TEST/CARD^301212000000?;{PAN}=301212000000?\r".encode()
    assert parse_swipe(raw, today=TODAY) == Track2(PAN, "3012", "120", "00000")
    with pytest.raises(ValueError, match="track 1 name"):
        track_data(PAN, "3012", "120", "A^B")
    with pytest.raises(ValueError, match="track 1 name"):
        track_data(PAN, "3012", "120", "X" * 27)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_arbitrary_bytes(raw):
    _parse_or_swipe_error(raw)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789=D;?%^EF\r\n", max_size=60))
def test_fuzz_track_like_text(raw):
    _parse_or_swipe_error(raw)


@settings(max_examples=400, deadline=None)
@given(st.from_regex(r";[0-9]{11,21}[=D][0-9]{3,14}\?", fullmatch=True))
def test_fuzz_near_valid_track2(raw):
    pan = raw[1:].split("=")[0].split("D")[0]
    _parse_or_swipe_error(raw)
    if 13 <= len(pan) <= 19 and not luhn_ok(pan):
        with pytest.raises(SwipeError, match="Luhn"):
            parse_swipe(raw, today=TODAY)


def _parse_or_swipe_error(raw):
    try:
        track = parse_swipe(raw, today=TODAY)
    except SwipeError as exc:
        assert exc.reason
        return
    assert luhn_ok(track.pan) and 13 <= len(track.pan) <= 19
    assert len(track.service_code) == 3 and track.expiry >= "2506"


# ---- serial reader ----

def test_line_buffer_splits_on_cr_or_lf_and_drops_long_lines():
    lines = LineBuffer(limit=10)
    assert lines.feed(b"abc\r\ndef\n") == [b"abc", b"def"]
    assert lines.feed(b"gh") == []
    assert lines.feed(b"i\rj") == [b"ghi"]
    assert lines.feed(b"0123456789x") == [None]  # 11 bytes: reported once, as it overflows
    assert lines.feed(b"yyyyyyyyyyyyyy\rok\r") == [b"ok"]


@pytest.fixture
def pty():
    """(master fd, slave path) of a pseudo-terminal: the test writes what a reader would send."""
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass  # closed by the test to unplug the reader


def start_serial(url: str):
    """A SerialSwipeReader on `url` posting into a queue; its faults into another."""
    events, faults = queue.Queue(), queue.Queue()
    reader = SerialSwipeReader(url, 9600, today=lambda: TODAY, on_fault=faults.put)
    reader.attach(events.put, lambda: None)
    return reader, events, faults


def test_serial_reader_posts_swipes_and_failures(pty):
    master, slave = pty
    reader, events, faults = start_serial(slave)
    try:
        assert faults.get(timeout=WAIT) == ""
        os.write(master, track_data(PAN, "3012", "201", "ZHANG/SAN"))
        swiped = events.get(timeout=WAIT)
        assert isinstance(swiped, CardSwiped) and swiped.card.pan == PAN and swiped.chip
        os.write(master, b"\x00\x13garbage\n")
        assert events.get(timeout=WAIT) == SwipeFailed(UNREADABLE)
        os.write(master, b"9" * 600 + b"\r")
        assert events.get(timeout=WAIT) == SwipeFailed(UNREADABLE)
        os.write(master, f";{PAN}=2001101?\r".encode())
        assert events.get(timeout=WAIT) == SwipeFailed("card expired")
        assert events.empty()
    finally:
        reader.close()
    assert not reader._thread.is_alive()


def test_serial_reader_picks_up_a_port_that_appears_later(pty, tmp_path, caplog):
    master, slave = pty
    link = tmp_path / "ttySWIPE"
    reader, events, faults = start_serial(str(link))
    try:
        assert faults.get(timeout=WAIT) == OFFLINE
        assert reader.fault == OFFLINE
        assert any(r.levelno == logging.WARNING and str(link) in r.getMessage()
                   for r in caplog.records)
        link.symlink_to(slave)  # the reader is plugged in
        assert faults.get(timeout=WAIT) == ""
        assert reader.fault == ""
        os.write(master, f";{PAN}=3012101?\n".encode())
        swiped = events.get(timeout=WAIT)
        assert isinstance(swiped, CardSwiped) and not swiped.chip
        os.close(master)  # unplugged
        assert faults.get(timeout=WAIT) == OFFLINE
    finally:
        reader.close()
    assert not reader._thread.is_alive()


def test_serial_reader_close_before_attach_and_bad_url():
    SerialSwipeReader("loop://", 9600).close()
    with pytest.raises(DeviceError, match="magstripe_port 'bogus://x'"):
        SerialSwipeReader("bogus://x", 9600)


# ---- keyboard wedge ----

class StepClock:
    """A monotonic clock that moves 10 ms per reading, or as far as told."""

    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 0.01
        return self.t


def type_into(decoder: WedgeDecoder, text: str) -> list[str]:
    return [out for ch in text if (out := decoder.feed(ch)) is not None]


def test_wedge_keypad_digits_are_not_a_swipe():
    decoder = WedgeDecoder(StepClock())
    assert type_into(decoder, "1250\n1234\r\n") == []


def test_wedge_full_swipe_is_emitted_at_enter():
    decoder = WedgeDecoder(StepClock())
    raw = track_data(PAN, "3012", "201", "ZHANG/SAN").decode()
    (swipe,) = type_into(decoder, "12" + raw)  # stray keypad digits before it are ignored
    assert swipe == raw.rstrip("\r")
    assert isinstance(swipe_event(swipe, today=TODAY), CardSwiped)


def test_wedge_stalled_partial_swipe_is_dropped():
    clock = StepClock()
    decoder = WedgeDecoder(clock)
    raw = f";{PAN}=3012201?\n"
    assert type_into(decoder, raw[:9]) == []
    clock.t += 0.5  # the reader stalled
    assert type_into(decoder, raw[9:]) == []  # the rest has no sentinel: not a swipe
    assert type_into(decoder, raw) == [raw[:-1]]  # the next whole swipe still works


def test_wedge_over_long_input_is_dropped():
    decoder = WedgeDecoder(StepClock())
    assert type_into(decoder, ";" + "9" * 600 + "\n") == []


@pytest.mark.parametrize("name, shift, char", [
    ("KEY_5", True, "%"), ("KEY_5", False, "5"), ("KEY_SEMICOLON", False, ";"),
    ("KEY_SLASH", True, "?"), ("KEY_EQUAL", False, "="), ("KEY_6", True, "^"),
    ("KEY_B", True, "B"), ("KEY_KP7", False, "7"), ("KEY_ENTER", False, "\n"),
    ("KEY_KPENTER", False, "\n"), ("KEY_TAB", False, "\t"), ("KEY_RIGHTBRACE", False, "]"),
    ("KEY_F1", False, None), ("KEY_LEFTSHIFT", True, None),
])
def test_key_char_us_layout(name, shift, char):
    assert key_char(name, shift) == char


def chars_of(events: list) -> str:
    """What typed_chars makes of `events` sent to a device that is then unplugged."""
    device = FakeInputDevice("/dev/input/event9")
    device.send(events)
    device.unplug()
    out: list[str] = []
    with pytest.raises(OSError, match="No such device"):
        out.extend(typed_chars(device, ecodes, threading.Event()))
    device.close()
    return "".join(out)


def test_typed_chars_shift_and_keys_that_type_nothing():
    assert chars_of(typing("%B6;?^Z=\n")) == "%B6;?^Z=\n"
    assert chars_of(key("KEY_RIGHTSHIFT", 1, 2, 2) + taps("KEY_5", "KEY_F1")
                    + key("KEY_RIGHTSHIFT", 0) + taps("KEY_5")) == "%5"
    assert chars_of(key("KEY_7", 1, 2, 2, 0) + key("KEY_8", 0) + taps("KEY_KP9", "KEY_ESC",
                                                                      "KEY_MUTE")) == "79"


def test_typed_chars_stop_ends_it():
    device = FakeInputDevice("/dev/input/event9")
    stop = threading.Event()
    stop.set()
    assert list(typed_chars(device, ecodes, stop)) == []
    device.close()


def test_evdev_reader_without_evdev_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "evdev", None)  # import evdev: ImportError
    with pytest.raises(DeviceError, match=r'magstripe backend "wedge" .*pip install evdev'):
        EvdevSwipeReader("/dev/input/event0")


def test_evdev_reader_posts_swipes(input_devices):
    path = "/dev/input/by-id/usb-MagTek_Swipe_Reader-event-kbd"
    device = input_devices.plug(path)
    events, faults = queue.Queue(), queue.Queue()
    reader = EvdevSwipeReader(path, today=lambda: TODAY, on_fault=faults.put)
    reader.attach(events.put, lambda: None)
    try:
        assert faults.get(timeout=WAIT) == ""
        assert device.grabbed
        device.send(typing("1250\n" + track_data(PAN, "3012", "201", "ZHANG/SAN").decode()))
        swiped = events.get(timeout=WAIT)  # the keypad-like digits before it are no swipe
        assert isinstance(swiped, CardSwiped) and swiped.card.pan == PAN and swiped.chip
        device.send(typing(f";{PAN}=2001101?\n"))
        assert events.get(timeout=WAIT) == SwipeFailed("card expired")
        device.unplug()
        assert faults.get(timeout=WAIT) == OFFLINE
    finally:
        reader.close()
    assert not reader._thread.is_alive() and device.closed
    assert events.empty()


def test_build_swipe_reader(sim_config):
    devices = sim_config.devices
    assert build_swipe_reader(replace(devices, magstripe="none")) is None
    serial_cfg = replace(devices, magstripe="serial", magstripe_port="loop://",
                         magstripe_baudrate=19200)
    reader = build_swipe_reader(serial_cfg)
    assert isinstance(reader, SerialSwipeReader)
    assert (reader.device, reader.baudrate) == ("loop://", 19200)
    with pytest.raises(DeviceError, match="magstripe_port"):
        build_swipe_reader(replace(devices, magstripe="wedge", magstripe_port=""))
    wedge = build_swipe_reader(replace(devices, magstripe="wedge",
                                       magstripe_port="/dev/input/event0"))
    assert isinstance(wedge, EvdevSwipeReader) and wedge.device == "/dev/input/event0"


# ---- simulator: reader, console, script ----

@pytest.fixture
def sim_reader(catalog):
    events: list = []
    reader = SimCardReader(catalog, today=lambda: TODAY)
    reader.attach(events.append)
    return reader, events


def test_sim_swipe_of_catalog_cards(sim_reader, catalog):
    reader, events = sim_reader
    reader.swipe("approve")
    reader.swipe("magstripe_only")
    reader.swipe("expired")
    approve, magstripe_only, expired = events
    assert isinstance(approve, CardSwiped) and approve.chip
    assert approve.card.pan == catalog.cards["approve"].pan
    assert isinstance(magstripe_only, CardSwiped) and not magstripe_only.chip
    assert magstripe_only.card.service_code == "120"
    assert expired == SwipeFailed("card expired")
    reader.swipe_raw(b"\x00noise")
    assert events[-1] == SwipeFailed(UNREADABLE)
    with pytest.raises(KeyError):
        reader.swipe("no_such_card")
    assert not reader.present()


def test_sim_insert_or_tap_of_magstripe_only_card_refused(sim_reader):
    reader, events = sim_reader
    for present in (reader.insert, reader.tap):
        with pytest.raises(ValueError, match="test card magstripe_only has no chip"):
            present("magstripe_only")
    assert events == [] and not reader.present()


def test_sim_tap_replaces_a_tapped_card_but_not_an_inserted_one(sim_reader):
    reader, events = sim_reader
    reader.tap("approve")
    reader.tap("visa")
    assert events == [CardInserted(), CardRemoved(), CardInserted()]
    assert reader.contactless
    reader.remove()
    reader.insert("approve")
    with pytest.raises(RuntimeError, match="remove it first"):
        reader.tap("visa")
    assert not reader.contactless


def test_console_swipe_command(sim_reader):
    reader, events = sim_reader
    assert parse_console_line("swipe approve") == ("swipe", ["approve"])
    assert parse_console_line("swipe") == ("error", ["not understood: 'swipe' (type help)"])
    assert "swipe <card>" in HELP
    out, quit_ = io.StringIO(), threading.Event()
    commands = "swipe approve\nswipe nosuch\ninsert magstripe_only\nswipe magstripe_only\nquit\n"
    panel = ConsolePanel(reader, io.StringIO(commands), out)
    panel.attach(events.append, quit_.set)
    assert quit_.wait(WAIT)
    assert [type(e) for e in events] == [CardSwiped, CardSwiped]
    assert not events[1].chip
    text = out.getvalue()
    assert "cannot swipe: 'nosuch'" in text
    assert "cannot insert: test card magstripe_only has no chip" in text
    assert PAN not in text


def test_script_swipe_step(sim_reader):
    reader, events = sim_reader
    session = SimpleNamespace(reader=reader, display=RecordingDisplay(),
                              printer=SimpleNamespace(printed=[]))
    logged: list[str] = []
    asyncio.run(run_script(session, parse_script("swipe approve\nswipe expired\n"),
                           log=logged.append))
    assert isinstance(events[0], CardSwiped) and events[1] == SwipeFailed("card expired")
    assert logged == ["ok  line 1: swipe approve", "ok  line 2: swipe expired"]
    with pytest.raises(ScriptError, match="line 1: not understood"):
        parse_script("swipe\n")
    with pytest.raises(ScriptError, match="line 1: insert magstripe_only: .* has no chip"):
        asyncio.run(run_script(session, parse_script("insert magstripe_only"), log=logged.append))
    with pytest.raises(ScriptError, match="line 2: swipe nosuch"):
        asyncio.run(run_script(session, parse_script("swipe approve\nswipe nosuch"),
                               log=logged.append))
