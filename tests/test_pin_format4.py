"""ISO 9564 format 4 (AES) PIN blocks: built from the PIN pad buffer, decrypted by the
simulator for the right PAN only; the clear PIN buffer zeroed on every exit."""
from __future__ import annotations

import asyncio
import secrets

import pytest

from firmware import keys
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
