"""The PC/SC card path for real: pyscard -> pcscd -> vpcd -> VirtualCard -> CardEmulator.

Needs pcscd and vsmartcard-vpcd (tests/pcscd_fixture.py starts pcscd when none runs; missing
packages fail with a hint). Waits are on queues, events and conditions with timeouts.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from firmware.emv.card import ENTRY_CHIP, ENTRY_CONTACTLESS, CardReadError
from firmware.emv.reader import TerminalParams, read_card
from firmware.flows.types import CardInserted, CardRemoved
from firmware.hal.reader_pcsc import (PcscCardReader, PcscReaderError, is_contactless_atr,
                                      match_reader, probe)
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
    rdr = PcscCardReader("No Such Reader 42")
    rdr.attach(lambda event: pytest.fail(f"unexpected {event!r}"))
    try:
        assert rdr.wait_for(lambda r: "no card reader matching" in r.fault, EVENT_TIMEOUT)
        assert rdr.status() == "no card reader matching 'No Such Reader 42'"
        with pytest.raises(PcscReaderError, match="unavailable: no card reader matching"):
            rdr.transmit(bytes.fromhex("00A4040000"))
    finally:
        rdr.close()
    with pytest.raises(PcscReaderError, match=r"readers: Virtual PCD 00 00"):
        probe("No Such Reader 42")


RECOVERY_SCRIPT = textwrap.dedent("""
    import os, sys
    from firmware.hal.reader_pcsc import PcscCardReader, PcscReaderError
    sock, real = sys.argv[1], sys.argv[2]
    r = PcscCardReader("Virtual PCD")
    r.attach(print)
    assert r.wait_for(lambda r: "pcscd" in r.fault, 5), r.status()
    print("fault:", r.fault)
    try:
        r.transmit(bytes.fromhex("00A4040000"))
    except PcscReaderError as exc:
        print("transmit:", exc)
    os.symlink(real, sock)  # pcscd "comes back"
    assert r.wait_for(lambda r: r.fault == "", 5), r.status()
    print("recovered:", r.status())
    r.close()
""")


def test_pcscd_down_is_a_fault_and_recovers(vpcd_lock, tmp_path):
    """pcscd unreachable (its socket path points nowhere, in a child process), then back."""
    sock = tmp_path / "pcscd.comm"
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(sock)}
    done = subprocess.run([sys.executable, "-c", RECOVERY_SCRIPT, str(sock),
                           "/run/pcscd/pcscd.comm"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("fault: pcscd not running: start pcscd"), lines
    assert lines[1].startswith("transmit: card reader unavailable: pcscd not running"), lines
    assert lines[2] == f"recovered: reader {vpcd_lock.reader}: card out", lines


def test_cli_sim_pcsc_without_pcscd_names_pcscd(vpcd_lock, tmp_path):
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "nowhere.comm")}
    done = subprocess.run([sys.executable, "-m", "firmware", "sim", "--pcsc", "--config",
                           "config/sim.toml", "--data-dir", str(tmp_path / "data")],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 3, done.stderr
    assert "pcscd not running: start pcscd" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "journal.db").exists()  # stopped before the terminal


SALE = """
    keys 1 2 5 0
    expect screen "CNY 12.50"
    keys ENTER
    expect screen "Insert card"
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
