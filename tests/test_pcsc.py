"""The PC/SC card path for real: pyscard -> pcscd -> vpcd -> VirtualCard -> CardEmulator.

Needs pcscd and vsmartcard-vpcd (tests/pcscd_fixture.py starts pcscd when none runs; missing
packages fail with a hint). Waits are on queues, events and conditions with timeouts.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from firmware.emv.card import ENTRY_CHIP, ENTRY_CONTACTLESS, CardReadError
from firmware.emv.kernel import read_card
from firmware.emv.reader import TerminalParams
from firmware.flows.types import CardInserted, CardRemoved, ReaderStatus
from firmware.hal import DeviceError, build_devices
from firmware.hal.reader_pcsc import (PcscCardReader, PcscReaderError, card_atr,
                                      is_contactless_atr, looks_contactless, match_reader, probe)
from firmware.sim.card_emulator import ATR_CONTACT, ATR_CONTACTLESS, CardEmulator
from firmware.sim.catalog import load_catalog
from firmware.sim.runner import sim_session
from firmware.sim.script import parse_script, run_script
from firmware.sim.vpicc import SimPcscSlot, VirtualCard, answer, frame, vpcd_port
from pcscd_fixture import READER, pcscd, vpcd_lock  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent
WHEN = datetime(2025, 3, 14, 9, 26, 53)
UNPREDICTABLE = bytes.fromhex("A1B2C3D4")
EVENT_TIMEOUT = 5.0  # s; pcscd polls vpcd every 0.4 s
PCSCD_SOCKET = "/run/pcscd/pcscd.comm"  # where pcscd listens (fixed in pcsc-lite 1.9)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture
def reader(vpcd_lock):
    events: queue.Queue = queue.Queue()
    rdr = PcscCardReader(READER)
    rdr.attach(events.put)
    # start from an empty slot: pcscd may not have seen the previous test's card leave yet
    assert rdr.wait_for(lambda r: r.fault == "" and r.reader_name == vpcd_lock.reader
                        and not r.present(), EVENT_TIMEOUT), rdr.status()
    while not events.empty():
        events.get_nowait()
    rdr.events = events
    yield rdr
    rdr.close()


@pytest.fixture
def slot(vpcd_lock, catalog):
    s = SimPcscSlot(catalog, port=vpcd_lock.vpcd_port)
    yield s
    s.close()


def next_event(rdr, kind):
    event = rdr.events.get(timeout=EVENT_TIMEOUT)
    assert isinstance(event, kind), f"got {event!r}, expected {kind.__name__}"
    return event


def read(transmit, contactless=False, amount=1250):
    return read_card(transmit, TerminalParams(), amount=amount, currency=156, when=WHEN,
                     unpredictable=UNPREDICTABLE, contactless=contactless)


# ---- pure parts ---------------------------------------------------------------------------


def test_match_reader_regex_substring_and_order():
    names = ["ACS ACR122U PICC Interface 00 00", "Virtual PCD 00 00", "Virtual PCD 00 01"]
    assert match_reader("Virtual PCD", names) == "Virtual PCD 00 00"
    assert match_reader(r"virtual pcd 00 0[1]", names) == "Virtual PCD 00 01"
    assert match_reader("PICC", names) == names[0]
    assert match_reader("[unclosed", names + ["x [unclosed y"]) == "x [unclosed y"
    assert match_reader("Omnikey", names) is None


def test_contactless_atr_heuristic():
    assert is_contactless_atr(ATR_CONTACTLESS)
    assert is_contactless_atr(bytes.fromhex("3B8F8001804F0CA000000306030001000000006A"))
    assert not is_contactless_atr(ATR_CONTACT)
    assert not is_contactless_atr(b"\x3B\x80")
    assert looks_contactless("ACS ACR1252 1S CL Reader PICC 00 00", ATR_CONTACT)
    assert looks_contactless("Virtual PCD 00 00", ATR_CONTACTLESS)
    assert not looks_contactless("Virtual PCD 00 00", ATR_CONTACT)


@pytest.mark.parametrize("setting,forced", [("auto", None), ("yes", True), ("no", False)])
def test_build_devices_pcsc_reader_from_config(sim_config, setting, forced):
    devices = replace(sim_config.devices, card_reader="pcsc", reader_name="ACS|Identiv",
                      reader_contactless=setting)
    built = build_devices(replace(sim_config, devices=devices))
    reader = built.reader
    assert isinstance(reader, PcscCardReader)
    assert reader.pattern == "ACS|Identiv"
    assert reader.contactless is (forced if forced is not None else False)  # no card yet
    assert reader.fault == "not started"  # built, not attached: no thread, no events yet


def test_build_devices_without_pyscard_names_the_package(sim_config, monkeypatch):
    import firmware.hal
    monkeypatch.setitem(sys.modules, "smartcard", None)  # import smartcard -> ImportError
    monkeypatch.delitem(sys.modules, "firmware.hal.reader_pcsc")
    monkeypatch.delattr(firmware.hal, "reader_pcsc")
    cfg = replace(sim_config, devices=replace(sim_config.devices, card_reader="pcsc"))
    with pytest.raises(DeviceError, match=r"'pcsc' needs the pyscard package \(pip install "
                                          r"kpos\[pcsc\]\)"):
        build_devices(cfg)


def test_vpcd_port_from_reader_conf(tmp_path):
    conf = tmp_path / "vpcd"
    conf.write_text('FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x9C7B\nCHANNELID   0x9C7B\n')
    assert vpcd_port(conf) == 0x9C7B
    conf.write_text("CHANNELID 40000\n")
    assert vpcd_port(conf) == 40000
    assert vpcd_port(tmp_path / "absent") == 35963


def test_vpicc_answers_control_and_apdus(catalog):
    card = CardEmulator(catalog.cards["approve"], catalog.imk_ac)
    assert frame(b"\x90\x00") == b"\x00\x02\x90\x00"
    assert answer(card, b"\x04") == ATR_CONTACT
    assert [answer(card, bytes([c])) for c in (0, 1, 2)] == [None, None, None]
    select_pse = bytes.fromhex("00A404000E315041592E5359532E444446303100")
    assert answer(card, select_pse)[-2:] == b"\x90\x00"
    with pytest.raises(OSError, match="control byte 07"):
        answer(card, b"\x07")


def test_virtual_card_speaks_vpcd_framing(catalog):
    """Against a stand-in vpcd on loopback: power on and reset get no answer, ATR and APDU do."""
    server = socket.create_server(("127.0.0.1", 0))
    card = VirtualCard(CardEmulator(catalog.cards["approve"], catalog.imk_ac),
                       port=server.getsockname()[1])
    card.insert()
    conn, _ = server.accept()
    conn.settimeout(EVENT_TIMEOUT)

    def ask(payload: bytes) -> bytes:
        conn.sendall(struct.pack(">H", len(payload)))  # length and body apart, like vpcd 0.8
        conn.sendall(payload)
        size = struct.unpack(">H", conn.recv(2, socket.MSG_WAITALL))[0]
        return conn.recv(size, socket.MSG_WAITALL)

    conn.sendall(frame(b"\x01") + frame(b"\x02"))
    assert ask(b"\x04") == ATR_CONTACT  # first reply is the ATR: 01 and 02 got none
    assert ask(bytes.fromhex("00B2010C00"))[-2:] == b"\x69\x85"  # READ RECORD before SELECT
    assert card.apdus == 1 and card.inserted
    card.remove()
    assert not card.inserted
    assert conn.recv(16) == b""  # vpcd side sees the card leave
    conn.close()
    server.close()


# ---- through pcscd ------------------------------------------------------------------------


def test_reader_appears(vpcd_lock, reader):
    assert vpcd_lock.reader.startswith(READER)
    assert probe(READER) == vpcd_lock.reader
    assert reader.status() == f"reader {vpcd_lock.reader}: card out"
    assert not reader.present()
    assert card_atr(vpcd_lock.reader) is None


def test_card_atr_of_the_card_in_the_reader(reader, slot, vpcd_lock):
    slot.tap("visa")
    next_event(reader, CardInserted)
    assert card_atr(vpcd_lock.reader) == ATR_CONTACTLESS
    slot.remove()
    next_event(reader, CardRemoved)
    with pytest.raises(PcscReaderError) as caught:
        card_atr("No Such Reader 42")
    assert caught.value.fault == "reader unplugged"


def test_insert_and_remove_post_events(reader, slot):
    slot.insert("approve")
    next_event(reader, CardInserted)
    assert reader.present() and not reader.contactless
    slot.remove()
    next_event(reader, CardRemoved)
    assert not reader.present()
    slot.tap("visa")
    next_event(reader, CardInserted)
    assert reader.contactless  # from the PC/SC contactless ATR
    slot.remove()
    next_event(reader, CardRemoved)


@pytest.mark.parametrize("name,contactless", [("approve", False), ("no_pse", False),
                                              ("visa", True)])
def test_read_card_over_pcscd_matches_in_process(reader, slot, catalog, name, contactless):
    slot.insert(name, contactless=contactless)
    next_event(reader, CardInserted)
    got = read(reader.transmit, contactless=reader.contactless)
    expected = read(CardEmulator(catalog.cards[name], catalog.imk_ac,
                                 contactless=contactless).transmit, contactless=contactless)
    assert got == expected  # same APDUs, same answers, same ARQC (fresh ATC on both)
    card = catalog.cards[name]
    assert (got.pan, got.aid) == (card.pan, card.aid)
    assert got.entry_mode == (ENTRY_CONTACTLESS if contactless else ENTRY_CHIP)


def test_second_insertion_reconnects(reader, slot):
    for _ in range(2):
        slot.insert("approve")
        next_event(reader, CardInserted)
        assert read(reader.transmit).aid == "A000000333010101"
        slot.remove()
        next_event(reader, CardRemoved)
    with pytest.raises(OSError, match="no card in reader"):
        reader.transmit(bytes.fromhex("00A4040000"))


class _PullsOutAt:
    """Emulator wrapper whose card is pulled out while answering APDU number `at`."""

    def __init__(self, emulator, at: int):
        self.emulator, self.at, self.count = emulator, at, 0
        self.atr = emulator.atr
        self.virtual: VirtualCard | None = None

    def transmit(self, apdu: bytes) -> bytes:
        self.count += 1
        if self.count == self.at:
            self.virtual.remove()  # on vpicc's own thread: closes, the reply goes nowhere
        return self.emulator.transmit(apdu)


@pytest.mark.parametrize("at", [1, 4, 7])
def test_remove_mid_read_is_card_read_error(reader, vpcd_lock, catalog, at):
    puller = _PullsOutAt(CardEmulator(catalog.cards["approve"], catalog.imk_ac), at)
    puller.virtual = VirtualCard(puller, port=vpcd_lock.vpcd_port)
    puller.virtual.insert()
    next_event(reader, CardInserted)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # stands in for the reader worker
        future = pool.submit(read, reader.transmit)
        with pytest.raises(CardReadError, match="card removed or reader error"):
            future.result(timeout=10)
    assert puller.count == at  # nothing reached the card after it left
    next_event(reader, CardRemoved)


def test_reader_missing_is_a_fault(vpcd_lock):
    events: queue.Queue = queue.Queue()
    rdr = PcscCardReader("No Such Reader 42")
    rdr.attach(events.put)
    try:
        assert events.get(timeout=EVENT_TIMEOUT) == ReaderStatus("no reader matches 'No Such Reader 42'")
        assert rdr.status() == "no reader matches 'No Such Reader 42'"
        with pytest.raises(PcscReaderError, match="^no reader matches 'No Such Reader 42'$"):
            rdr.transmit(bytes.fromhex("00A4040000"))
    finally:
        rdr.close()
    assert events.empty()  # one status, posted once, and no card events
    with pytest.raises(PcscReaderError, match=r"^no reader matches 'No Such Reader 42' "
                                              r"\(readers: Virtual PCD 00 00"):
        probe("No Such Reader 42")


class PcscdSwitch:
    """A Unix-socket relay in front of the real pcscd. `off()` removes the socket and cuts
    every connection, which is what a client sees when pcscd stops; `on()` brings it back.
    Clients reach it through PCSCLITE_CSOCK_NAME (read once per process, so in a child)."""

    def __init__(self, path: Path, target: str = PCSCD_SOCKET):
        self.path, self.target = path, target
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def on(self) -> None:
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(self.path))
        self._server.listen()
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def off(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        if server is None:
            return
        server.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
        server.close()
        self.path.unlink()
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by its peer
                conn.shutdown(socket.SHUT_RDWR)  # close() alone would not wake a pump's recv
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # switched off
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            with self._lock:
                live = self._server is server
                if live:
                    self._conns += [client, upstream]
            if not live:  # switched off meanwhile
                client.close()
                upstream.close()
                return
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the switch cut the connection


STATUS_SCRIPT = textwrap.dedent("""
    import queue, sys
    from firmware.hal.reader_pcsc import PcscCardReader
    events = queue.Queue()
    reader = PcscCardReader("Virtual PCD")
    reader.attach(events.put)

    def transmit_error():
        try:
            reader.transmit(bytes.fromhex("00A4040000"))
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    for _ in range(int(sys.argv[1])):
        event = events.get(timeout=10)
        print(f"{event!r} | {reader.status()} | {transmit_error()}", flush=True)
    reader.close()
""")


def test_reader_status_follows_pcscd_down_and_back(vpcd_lock, tmp_path):
    """One reader object in a child process, whose pcscd socket the test switches off and on:
    the first state after attach, then every change, is a ReaderStatus event."""
    switch = PcscdSwitch(tmp_path / "pcscd.comm")
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(switch.path)}
    child = subprocess.Popen([sys.executable, "-c", STATUS_SCRIPT, "4"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in child.stdout],
                     daemon=True).start()
    seen = []
    try:
        for toggle in (None, switch.on, switch.off, switch.on):  # pcscd starts "stopped"
            if toggle:
                toggle()
            try:
                seen.append(lines.get(timeout=EVENT_TIMEOUT))
            except queue.Empty:
                child.kill()
                pytest.fail(f"no ReaderStatus after {seen}; child stderr:\n{child.stderr.read()}")
        assert child.wait(EVENT_TIMEOUT) == 0, child.stderr.read()
    finally:
        switch.off()
        if child.poll() is None:
            child.kill()
            child.wait()
    down = "ReaderStatus(fault='pcscd not running') | pcscd not running | " \
           "PcscReaderError: pcscd not running"
    up = f"ReaderStatus(fault='') | reader {vpcd_lock.reader}: card out | OSError: no card in reader"
    assert seen == [down, up, down, up]


def test_cli_sim_pcsc_without_pcscd_names_pcscd(vpcd_lock, tmp_path):
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "nowhere.comm")}
    done = subprocess.run([sys.executable, "-m", "firmware", "sim", "--pcsc", "--config",
                           "config/sim.toml", "--data-dir", str(tmp_path / "data")],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 3, done.stderr
    assert "--pcsc: pcscd not running (" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "journal.db").exists()  # stopped before the terminal


SALE = """
    keys 1 2 5 0
    expect screen "CNY 12.50"
    keys ENTER
    expect screen "Insert"
    insert approve
    expect screen "Enter PIN"
    keys 1 2 3 4 ENTER
    expect screen "APPROVED"
    expect screen "Take receipts"
    expect receipts 2
    expect receipt merchant "622609******0014"
    expect receipt customer "CUSTOMER COPY"
    expect journal APPROVED
    expect reversals 0
    expect balance approve 998750
    keys ENTER
    expect screen "Remove card"
    remove
    expect screen "Key in amount"
"""


def test_sale_end_to_end_through_pcscd(vpcd_lock, sim_config):
    async def go():
        async with sim_session(sim_config, pcsc=True) as session:
            assert isinstance(session.reader, SimPcscSlot)
            assert isinstance(session.terminal.devices.reader, PcscCardReader)
            await run_script(session, parse_script(SALE), log=lambda line: None)
            return session
    session = asyncio.run(go())
    assert len(list(session.receipts_dir.glob("*.bin"))) == 2
    assert not session.reader.present()


def test_read_time_over_pcscd_vs_in_process(reader, slot, catalog, capsys):
    """Median of 20 chip reads each way; a regression of the vpcd ACK fix costs ~0.5 s."""
    slot.insert("approve")
    next_event(reader, CardInserted)
    emulator = CardEmulator(catalog.cards["approve"], catalog.imk_ac)

    def median_ms(transmit) -> float:
        times = []
        for _ in range(20):
            start = time.perf_counter()
            read(transmit)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    over_pcscd, in_process = median_ms(reader.transmit), median_ms(emulator.transmit)
    with capsys.disabled():
        print(f"\nread_card median: {over_pcscd:.2f} ms over pcscd, {in_process:.2f} ms in-process")
    assert over_pcscd < 50.0
