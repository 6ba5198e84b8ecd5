"""ISO 9564 format 4 (AES) PIN blocks: built from the PIN pad buffer, decrypted by the
simulator for the right PAN only; the clear PIN buffer zeroed on every exit. End to end: a
pin_format 4 terminal signs on for AES working keys (TR-31 blocks + AES KCVs, 60.3 004),
sends 16-byte field 52 blocks under CMAC, and refuses keys that fail their check values."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
from datetime import datetime

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware import keyload, keys
from firmware.acquirer import messages
from firmware.config import load_config
from firmware.emv.card import CardData
from firmware.sim.runner import sim_session
from scenario import chip_sale, play
from firmware.hal.pinpad import SoftPinPad
from firmware.mac import aes_cmac
from firmware.sim.acquirer import AcquirerSimulator
from firmware.sim.catalog import load_catalog

PAN = "6226090000000014"
AES_PIK = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c" * 2)


class SpyBuffer(bytearray):
    """A PIN buffer that records its content each time it is emptied."""

    def __init__(self):
        super().__init__()
        self.at_clear: list[bytes] = []

    def clear(self):
        self.at_clear.append(bytes(self))
        super().clear()


def _pad_with(pin: str) -> tuple[SoftPinPad, SpyBuffer]:
    pad = SoftPinPad()
    pad._buf = spy = SpyBuffer()
    pad.start(12)
    for digit in pin:
        pad.press(digit)
    spy.at_clear.clear()
    return pad, spy


@pytest.mark.parametrize("pin", ["1234", "987654321012"])
def test_format4_round_trip(pin):
    block = keys.pin_block_iso4(pin, PAN, AES_PIK)
    assert len(block) == 16
    assert keys.decrypt_pin_iso4(block, PAN, AES_PIK) == pin
    assert keys.pin_block_iso4(pin, PAN, AES_PIK) != block  # random fill: never the same twice


def test_format4_block_for_another_pan_or_key_does_not_give_the_pin():
    block = keys.pin_block_iso4("1234", PAN, AES_PIK)
    for pan, pik in (("6226090000000022", AES_PIK), (PAN, secrets.token_bytes(32))):
        try:
            assert keys.decrypt_pin_iso4(block, pan, pik) != "1234"
        except ValueError as exc:
            assert "1234" not in str(exc)


def test_format4_errors_never_quote_the_pin():
    with pytest.raises(ValueError, match="16 bytes"):
        keys.decrypt_pin_iso4(bytes(8), PAN, AES_PIK)
    with pytest.raises(ValueError) as exc:
        keys.pin_block_iso4("12a4", PAN, AES_PIK)
    assert "12a4" not in str(exc.value)


def test_aes_kcv_is_the_cmac_of_a_zero_block():
    assert keys.aes_kcv(AES_PIK) == aes_cmac(AES_PIK, bytes(16))[:3]
    assert len(keys.aes_kcv(AES_PIK[:16])) == 3 and keys.aes_kcv(AES_PIK[:16]) != keys.aes_kcv(AES_PIK)


@pytest.mark.parametrize("fmt, size", [(0, 8), (4, 16)])
def test_pin_pad_builds_the_configured_format_and_zeroes_its_buffer(fmt, size):
    pad, spy = _pad_with("1234")
    pik = AES_PIK if fmt == 4 else keys.random_key()
    block = pad.pin_block(PAN, pik, fmt)
    decrypt = keys.decrypt_pin_iso4 if fmt == 4 else keys.decrypt_pin_iso0
    assert len(block) == size and decrypt(block, PAN, pik) == "1234"
    assert spy.at_clear[0] == bytes(4) and len(pad) == 0 and not pad.active


def test_pin_pad_zeroes_its_buffer_when_the_block_fails_and_on_cancel():
    pad, spy = _pad_with("1234")
    with pytest.raises(ValueError):
        pad.pin_block("not a pan", AES_PIK, 4)
    assert spy.at_clear[0] == bytes(4) and len(pad) == 0
    pad, spy = _pad_with("56789")
    pad.wipe()  # what the terminal does on CANCEL or a PIN timeout (StopPin)
    assert spy.at_clear == [bytes(5)] and len(pad) == 0


def test_simulator_checks_a_format4_pin_under_the_terminals_aes_pik(tmp_path):
    catalog = load_catalog()
    card = catalog.cards["approve"]
    tid = next(iter(catalog.terminal_keys))

    async def go():
        sim = AcquirerSimulator(catalog, tmp_path / "ledger.db")
        await sim.start()
        try:
            await sim.in_ledger(lambda ledger: ledger.set_session_keys(tid, AES_PIK, bytes(32)))
            results = []
            for pin, pan in ((card.pin, card.pan), ("0000", card.pan), (card.pin, PAN[:-1] + "2")):
                req = {"t": "0200", "2": card.pan, "52": keys.pin_block_iso4(pin, pan, AES_PIK)}
                results.append(await sim.in_ledger(lambda _: sim._pin_code(req, tid, card)))
            return results
        finally:
            await sim.stop()
    right, wrong_pin, wrong_pan = asyncio.run(go())
    assert right is None
    assert wrong_pin[0] == "55" and wrong_pan[0] == "55"


# ---- AES working keys and field 52 on the wire -------------------------------------------

AES_TID = "10000004"  # the catalog's pin_format 4 terminal
NOW = datetime(2026, 3, 1, 9, 30)
IDS = messages.TerminalIds(AES_TID, "898310048990001")


def _aes_keys(tmk: bytes, pik: bytes, mak: bytes) -> messages.AesWorkingKeys:
    return messages.AesWorkingKeys(keys.wrap_aes_key(tmk, pik, keys.AES_PIK_USAGE), keys.aes_kcv(pik),
                                   keys.wrap_aes_key(tmk, mak, keys.AES_MAK_USAGE), keys.aes_kcv(mak))


def test_aes_working_keys_round_trip_through_field_62():
    tmk, pik, mak = os.urandom(32), keys.random_aes_key(), keys.random_aes_key()
    text = messages.working_keys_field(_aes_keys(tmk, pik, mak))
    assert len(text) == 2 * (144 + 6) and pik.hex() not in text.lower()
    parsed = messages.parse_working_keys({"t": "0810", "62": text}, 4)
    session = keys.session_keys_from_working(tmk, parsed)
    assert (session.pik, session.mak, session.algorithm) == (pik, mak, "A")
    assert repr(session) == (f"SessionKeys(pik_kcv={keys.aes_kcv(pik).hex().upper()}, "
                             f"mak_kcv={keys.aes_kcv(mak).hex().upper()})")
    for bad in (text[:-1], text + "0", text[:144] + "X" + text[145:], "D9999" + text[5:]):
        with pytest.raises(messages.MessageError, match="^field 62: "):
            messages.parse_working_keys({"t": "0810", "62": bad}, 4)


@pytest.mark.parametrize("fault", ["pik kcv", "mak kcv", "swapped usages", "other tmk", "tdes tmk"])
def test_aes_working_keys_that_fail_a_check_are_refused(fault):
    tmk, pik, mak = os.urandom(32), keys.random_aes_key(), keys.random_aes_key()
    wk = _aes_keys(tmk, pik, mak)
    bad = {"pik kcv": lambda: messages.AesWorkingKeys(wk.pik_block, keys.aes_kcv(mak), wk.mak_block, wk.mak_kcv),
           "mak kcv": lambda: messages.AesWorkingKeys(wk.pik_block, wk.pik_kcv, wk.mak_block, bytes(3)),
           "swapped usages": lambda: messages.AesWorkingKeys(wk.mak_block, wk.mak_kcv, wk.pik_block, wk.pik_kcv),
           }.get(fault, lambda: wk)()
    kek = {"other tmk": os.urandom(32), "tdes tmk": keys.random_key()}.get(fault, tmk)
    with pytest.raises(keys.KeyCheckError) as exc:
        keys.session_keys_from_working(kek, bad)
    assert exc.value.name == ("MAK" if fault == "mak kcv" else "PIK")
    assert pik.hex() not in str(exc.value).lower() and mak.hex() not in str(exc.value).lower()


def test_field_52_is_16_bytes_for_a_format4_terminal_and_8_otherwise():
    card = load_catalog().cards["approve"]
    data = CardData(pan=card.pan, expiry=card.expiry, entry_mode="051", pan_seq="01",
                    track2=None, aid=card.aid, app_label=card.label, icc_data=None)
    pin_of = load_catalog().pin_format
    for tid, block in ((AES_TID, os.urandom(16)), ("10000001", os.urandom(8))):
        req = messages.sale_request(messages.TerminalIds(tid, IDS.merchant_id), stan=9, batch=1,
                                    amount=100, currency=156, card=data, pin_block=block, now=NOW)
        raw = messages.encode({**req, "63": "01 "})
        got = messages.decode_request(raw, pin_of)
        assert got["52"] == block and got["63"] == "01 " and got["41"] == tid
    with pytest.raises(messages.MessageError, match="^field 52: "):
        messages.card_fields(data, bytes(12))
    with pytest.raises(messages.MessageError):  # a 16-byte block from a TDES terminal
        messages.decode_request(messages.encode({**req, "52": os.urandom(16)}), pin_of)


@pytest.mark.parametrize("tid, pin_format, code", [(AES_TID, 4, "00"), (AES_TID, 0, "63"),
                                                     ("10000001", 4, "63"), ("10000001", 0, "00")])
def test_simulator_signs_on_only_with_the_terminals_own_cipher(tmp_path, tid, pin_format, code):
    catalog = load_catalog()

    async def go():
        sim = AcquirerSimulator(catalog, tmp_path / "ledger.db")
        await sim.start()
        try:
            req = messages.signon_request(messages.TerminalIds(tid, IDS.merchant_id), stan=1,
                                          batch=1, now=NOW, pin_format=pin_format)
            resp = await sim.in_ledger(lambda _: sim._respond(req))
            return resp, await sim.in_ledger(lambda ledger: ledger.session_keys(tid))
        finally:
            await sim.stop()
    resp, host = asyncio.run(go())
    assert resp["39"] == code and resp["60"][8:11] == messages.SIGNON_CODES[pin_format]
    if code == "00":
        session = keys.session_keys_from_working(catalog.terminal_keys[tid],
                                                 messages.parse_working_keys(resp, pin_format))
        assert (session.pik, session.mak) == host
    else:
        assert "62" not in resp and host is None


@pytest.fixture
def aes_cfg(tmp_path):
    """The AES terminal: pin_format 4, CMAC, its TMK loaded from a TR-31 version D block."""
    over = sim_overrides(tmp_path)
    over["terminal"]["terminal_id"] = AES_TID
    over["security"] = {"tmk_file": "", "pin_format": 4, "mac": "cmac"}
    cfg = load_config(SIM_TOML, overrides=over)
    block, kbpk = keyload.make_test_block(load_catalog().terminal_keys[AES_TID], "A")
    assert keyload.load_command(cfg, block, kbpk, now=NOW, say=lambda _: None) == 0
    return cfg


def _watch(session) -> list[dict]:
    seen: list[dict] = []
    session.acquirer.on_message = lambda kind, fields: seen.append(fields) if kind == "request" else None
    return seen


def test_aes_terminal_chip_sale_with_online_pin_is_approved(aes_cfg):
    card = load_catalog().cards["approve"]

    async def go():
        async with sim_session(aes_cfg) as session:
            seen = _watch(session)
            await play(session, "expect signon\n" + chip_sale(2500))
            host = await session.acquirer.in_ledger(lambda ledger: ledger.session_keys(AES_TID))
            status = await session.terminal.journal_call(lambda j: j.last().status)
            return session, seen, host, status
    session, seen, host, status = asyncio.run(go())
    terminal = session.terminal
    assert status == "APPROVED" and terminal.session_keys.algorithm == "A"
    assert (terminal.session_keys.pik, terminal.session_keys.mak) == host and len(host[0]) == 32
    assert terminal.link.mac is not None and terminal.link.mac.rule == "cmac"
    sale = next(f for f in seen if f["t"] == "0200")
    assert len(sale["52"]) == 16 and keys.decrypt_pin_iso4(sale["52"], card.pan, host[0]) == card.pin
    assert len(sale["64"]) == 8 and session.acquirer.mac_failures == 0


def test_aes_terminal_wrong_pin_is_declined_55(aes_cfg):
    async def go():
        async with sim_session(aes_cfg) as session:
            await play(session, """
                expect signon
                keys 100 ENTER
                insert approve
                expect screen "Enter PIN"
                keys 9999 ENTER
                expect screen "DECLINED"
                expect screen "Code 55"
                expect journal DECLINED
                expect balance approve 1000000
            """)
            return await session.acquirer.in_ledger(lambda ledger: ledger.pin_tries(
                load_catalog().cards["approve"].pan))
    assert asyncio.run(go()) == 1  # the host read the block and counted a wrong PIN


def test_aes_key_change_with_a_wrong_kcv_keeps_the_old_keys(aes_cfg, caplog):
    caplog.set_level(logging.ERROR, "kpos.app")

    async def go():
        async with sim_session(aes_cfg) as session:
            seen = _watch(session)
            await play(session, "expect signon\n" + chip_sale(100))
            old = session.terminal.session_keys
            session.acquirer.key_change = session.acquirer.bad_kcv = True
            await play(session, chip_sale(200))  # its 0210 asks for a sign-on (60.3 004)
            await session.acquirer.wait_handled(4, timeout=10)
            async with asyncio.timeout(10):
                async with session.terminal._signon_lock:  # the key change sign-on is done
                    pass
            host = await session.acquirer.in_ledger(lambda ledger: ledger.session_keys(AES_TID))
            assert session.terminal.session_keys is old and host[0] != old.pik
            assert session.terminal.key_alert == "working key check failed"
            return [f["60"][8:11] for f in seen if f["t"] == "0800"]
    assert asyncio.run(go()) == ["004", "004"]
    assert any(r.getMessage().startswith("working key check failed: MAK check value mismatch")
               for r in caplog.records)
