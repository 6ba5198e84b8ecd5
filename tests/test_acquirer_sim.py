"""Tests for the acquirer host simulator and its ledger, over real TCP on 127.0.0.1.

Each test runs its own simulator (port 0) on a fresh SQLite ledger under tmp_path, signs
on for real, and builds PIN blocks under the PIK it unwrapped from the 0810. Chip sales
carry real field 55: read_card run against the EMV card emulator for that amount.
Offline sale advices (0220/0221) are built by messages.advice_request from such a sale.
Link faults and the network switch: tests/test_sim_faults.py (it reuses these helpers).
"""
import asyncio
import itertools
import logging
import sqlite3
import warnings
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime

import pyemv
import pytest

from firmware import keys
from firmware.acquirer import messages
from firmware.acquirer.messages import MessageError, TerminalIds
from firmware.emv import cryptogram, tlv
from firmware.emv.card import ENTRY_FALLBACK, ENTRY_MAGSTRIPE, CardData
from firmware.emv.kernel import read_card
from firmware.emv.reader import TerminalParams
from firmware.emv.cryptogram import ac_session_key, compute_arpc
from firmware.sim.acquirer import ISSUER_SCRIPT, AcquirerSimulator, Faults
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import load_catalog
from firmware.sim.ledger import Ledger, LedgerError, pan_key

CATALOG = load_catalog()
TID = "10000001"
TMK = CATALOG.terminal_keys[TID]
IDS = TerminalIds(TID, "898310048990001")
NOW = datetime(2026, 5, 14, 10, 30, 0)
CNY = 156
ANSWER_TIMEOUT = 2.0
SILENCE = 0.3  # how long "no frame arrives" is watched
UNKNOWN_PAN = "6226099999999995"  # Luhn-valid, not in the catalog


def chip_card(name: str, amount: int, pan: str | None = None, *,
              contactless: bool = False) -> CardData:
    """What the terminal reads from catalog card `name` for `amount`: real ARQC, field 55."""
    card = CATALOG.cards[name]
    if pan:
        card = replace(card, pan=pan)
    emulator = CardEmulator(card, CATALOG.imk_ac, contactless=contactless)
    return read_card(emulator.transmit, TerminalParams(), amount=amount, currency=CNY, when=NOW,
                     unpredictable=bytes.fromhex("1A2B3C4D"), contactless=contactless)


def swiped_card(name: str, entry_mode: str = ENTRY_MAGSTRIPE, track2: str | None = None
                ) -> CardData:
    """A magstripe read (swipe or fallback): no field 55; track 2 with the card's service code."""
    c = CATALOG.cards[name]
    if track2 is None:
        track2 = f"{c.pan}={c.expiry}{c.service_code}0000000000"
    return CardData(pan=c.pan, expiry=c.expiry, pan_seq=None, track2=track2, aid="",
                    app_label="", icc_data=b"", entry_mode=entry_mode)


def retag(icc: bytes, tag: str, value: bytes) -> bytes:
    """Field 55 re-encoded with `tag` set to `value` (the tag must be present)."""
    nodes = tlv.parse(icc)
    assert any(n.tag == tag for n in nodes), tag
    return tlv.encode_nodes([tlv.Tlv(n.tag, value) if n.tag == tag else n for n in nodes])


def icc_values(icc: bytes) -> dict[str, bytes]:
    return tlv.flatten(tlv.parse(icc))


class Terminal:
    """A minimal test terminal: one TCP connection, framed requests, real sign-on keys."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.stans = itertools.count(1)
        self.session: keys.SessionKeys | None = None

    @classmethod
    async def connect(cls, port: int) -> "Terminal":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, fields: dict) -> None:
        await self.send_raw(messages.frame(messages.encode(fields)))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = ANSWER_TIMEOUT) -> dict:
        return messages.decode(await asyncio.wait_for(messages.read_frame(self.reader), timeout))

    async def ask(self, fields: dict) -> dict:
        await self.send(fields)
        return await self.recv()

    async def assert_silent(self) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(messages.read_frame(self.reader), SILENCE)

    async def assert_closed(self) -> None:
        assert await asyncio.wait_for(self.reader.read(), ANSWER_TIMEOUT) == b""

    async def sign_on(self) -> dict:
        resp = await self.ask(messages.signon_request(IDS, stan=next(self.stans), batch=1, now=NOW))
        assert resp["39"] == "00"
        self.session = keys.session_keys_from_working(TMK, messages.parse_working_keys(resp))
        return resp

    def sale(self, name: str, amount: int, *, pin: str | None = "catalog", stan: int | None = None,
             pan: str | None = None, card: CardData | None = None) -> dict:
        card = card or chip_card(name, amount, pan)
        if pin == "catalog":
            pin = CATALOG.cards[name].pin
        block = None if pin is None else keys.pin_block_iso0(bytearray(pin.encode()), card.pan,
                                                             self.session.pik)
        return messages.sale_request(IDS, stan=stan or next(self.stans), batch=1, amount=amount,
                                     currency=CNY, card=card, pin_block=block, now=NOW)

    def advice(self, name: str, amount: int, *, code: str = "00", stan: int | None = None,
               repeat: bool = False, card: CardData | None = None,
               icc: bytes | None = None) -> dict:
        """0220 (0221 if `repeat`) of a chip sale approved offline; `icc` replaces field 55."""
        sale = self.sale(name, amount, pin=None, stan=stan, card=card)
        return messages.advice_request(sale, code=code, icc_data=icc, repeat=repeat)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass  # server already closed it; nothing left to release


LEDGER_THREAD = [True]  # how running() decides: on the ledger thread, or on the loop


@pytest.fixture(autouse=True, params=[True, False], ids=["ledger-thread", "on-loop"])
def decide_on(request):
    """Every test here runs twice: decisions on the ledger thread (`kpos sim`) and on the
    loop (`kpos acquirer`, ledger_thread=False)."""
    LEDGER_THREAD[0] = request.param
    yield request.param
    LEDGER_THREAD[0] = True


@asynccontextmanager
async def running(tmp_path, faults: Faults | None = None):
    sim = AcquirerSimulator(CATALOG, tmp_path / "acq.sqlite", faults=faults, clock=lambda: NOW,
                            ledger_thread=LEDGER_THREAD[0])
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@asynccontextmanager
async def signed_on(tmp_path, faults: Faults | None = None):
    async with running(tmp_path, faults) as sim:
        term = await Terminal.connect(sim.port)
        await term.sign_on()
        try:
            yield sim, term
        finally:
            await term.close()


def test_ledger_work_runs_where_the_mode_says(tmp_path, decide_on):
    import threading

    async def main():
        async with signed_on(tmp_path) as (sim, term):
            ran_on = await sim.in_ledger(lambda _: threading.current_thread())
            assert (ran_on is threading.main_thread()) is not decide_on
            assert ("acq-ledger" in ran_on.name) is decide_on
            resp = await term.ask(term.sale("approve", 1234, stan=5))
            assert resp["39"] == "00"
            assert await balance(sim, "approve") == CATALOG.cards["approve"].balance - 1234
        with pytest.raises(RuntimeError, match="not started"):
            await sim.in_ledger(lambda ledger: ledger)
    asyncio.run(main())


async def balance(sim: AcquirerSimulator, name: str) -> int:
    return await sim.in_ledger(lambda ledger: ledger.balance(CATALOG.cards[name].pan))


# --- sign-on -----------------------------------------------------------------------


def test_signon_delivers_keys_whose_kcvs_check(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            stored = await sim.in_ledger(lambda ledger: ledger.session_keys(TID))
            assert stored == (term.session.pik, term.session.mak)
            assert term.session.pik != term.session.mak
            resp = await term.ask(messages.signon_request(IDS, stan=77, batch=5, now=NOW))
            assert resp["t"] == "0810" and resp["11"] == "000077"
            assert resp["60"] == "00000005003" and len(resp["37"]) == 12
            fresh = keys.session_keys_from_working(TMK, messages.parse_working_keys(resp))
            assert fresh.pik != term.session.pik  # every sign-on gives new keys
    asyncio.run(main())


def test_signon_unknown_terminal_gets_03_and_no_keys(tmp_path):
    async def main():
        async with running(tmp_path) as sim:
            term = await Terminal.connect(sim.port)
            other = TerminalIds("99999999", IDS.merchant_id)
            resp = await term.ask(messages.signon_request(other, stan=1, batch=1, now=NOW))
            assert resp["39"] == "03" and "62" not in resp
            await term.close()
    asyncio.run(main())


# --- sales ---------------------------------------------------------------------------


def test_approved_sale_debits_exactly_and_returns_rrn_and_auth_code(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            req = term.sale("approve", 12345)
            resp = await term.ask(req)
            assert resp["t"] == "0210" and resp["39"] == "00"
            assert resp["37"].isdigit() and len(resp["37"]) == 12
            assert resp["38"].isdigit() and len(resp["38"]) == 6
            assert messages.match_response(req, resp) is None
            assert await balance(sim, "approve") == before - 12345
            second = await term.ask(term.sale("approve", 1))
            assert second["39"] == "00" and second["37"] != resp["37"]
            assert await balance(sim, "approve") == before - 12346
    asyncio.run(main())


DECLINES = [
    ("low_balance", 1001, "catalog", "51"),
    ("expired", 100, "catalog", "54"),
    ("approve", 100, "9999", "55"),
    ("approve", 100, None, "55"),  # PIN required, block absent
    ("stolen", 100, "catalog", "43"),
    ("do_not_honour", 100, "catalog", "05"),
    ("issuer_down", 100, "catalog", "91"),
    ("approve", 90051, "catalog", "51"),
    ("approve", 90005, "catalog", "05"),
    ("visa", 90054, "catalog", "54"),
]


@pytest.mark.parametrize("name,amount,pin,code", DECLINES)
def test_declines_leave_balance_alone(tmp_path, name, amount, pin, code):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, name)
            req = term.sale(name, amount, pin=pin)
            resp = await term.ask(req)
            assert resp["39"] == code
            assert "38" not in resp and len(resp["37"]) == 12
            assert await balance(sim, name) == before
            decisions = await sim.in_ledger(lambda l: l.decisions(TID, req["11"], req["13"]))
            assert decisions == [code]
    asyncio.run(main())


def test_low_balance_card_approves_within_balance(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            assert (await term.ask(term.sale("low_balance", 1000)))["39"] == "00"
            assert await balance(sim, "low_balance") == 0
    asyncio.run(main())


def test_unknown_card_gets_14(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            resp = await term.ask(term.sale("approve", 100, pan=UNKNOWN_PAN))
            assert resp["39"] == "14"
    asyncio.run(main())


def test_three_wrong_pins_give_75_even_for_the_right_pin_after(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            codes = [(await term.ask(term.sale("visa", 100, pin="0000")))["39"] for _ in range(3)]
            assert codes == ["55", "55", "75"]
            assert (await term.ask(term.sale("visa", 100)))["39"] == "75"
            assert await balance(sim, "visa") == CATALOG.cards["visa"].balance
    asyncio.run(main())


def test_right_pin_resets_the_try_counter(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            for _ in range(2):
                assert (await term.ask(term.sale("visa", 100, pin="0000")))["39"] == "55"
            assert (await term.ask(term.sale("visa", 100)))["39"] == "00"
            assert (await term.ask(term.sale("visa", 100, pin="0000")))["39"] == "55"
    asyncio.run(main())


def test_duplicate_stan_gets_94_without_second_debit(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            req = term.sale("approve", 500, stan=4242)
            assert (await term.ask(req))["39"] == "00"
            dup = await term.ask(term.sale("approve", 500, stan=4242))
            assert dup["39"] == "94" and "38" not in dup
            assert await balance(sim, "approve") == before - 500
            decisions = await sim.in_ledger(lambda l: l.decisions(TID, "004242", req["13"]))
            assert decisions == ["00", "94"]
    asyncio.run(main())


@pytest.mark.parametrize("name,amount", [("no_response", 100), ("approve", 90098)])
def test_no_response_reads_and_never_answers(tmp_path, name, amount):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            seen = sim.requests_seen
            before = await balance(sim, name)
            await term.send(term.sale(name, amount))
            await sim.wait_requests(seen + 1, ANSWER_TIMEOUT)
            await term.assert_silent()
            assert await balance(sim, name) == before
            # the same connection still serves the next request
            assert (await term.ask(term.sale("approve", 100)))["39"] == "00"
    asyncio.run(main())


# --- chip data: field 55 checks, ARQC, ARPC ----------------------------------------------


def expected_arpc(pan: str, psn: str, icc: bytes, arc: bytes) -> bytes:
    """ARPC method 1 computed here straight with pyemv, independently of the simulator."""
    values = icc_values(icc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyemv's TDES deprecation warnings
        icc_mk = pyemv.kd.derive_icc_mk_a(CATALOG.imk_ac, pan, psn)
        session_key = pyemv.kd.derive_common_sk(icc_mk, values["9F36"] + bytes(6))
        return pyemv.ac.generate_arpc_1(session_key, values["9F26"], arc)


def assert_issuer_data(req: dict, resp: dict, rc: str) -> None:
    """The 0210's field 55 is 91 (ARPC over the request's ARQC + ARC) then 8A (ARC)."""
    nodes = tlv.parse(resp["55"])
    assert [n.tag for n in nodes] == ["91", "8A"]
    arc = rc.encode("ascii")
    psn = req["23"][1:]
    assert nodes[0].value == expected_arpc(req["2"], psn, req["55"], arc) + arc
    assert nodes[1].value == arc


async def decision(sim: AcquirerSimulator, req: dict):
    return await sim.in_ledger(lambda l: l.find(TID, req["11"], req["13"]))


@pytest.mark.parametrize("contactless", [False, True], ids=["contact", "contactless"])
def test_genuine_arqc_approves_and_0210_carries_verifiable_arpc(tmp_path, contactless):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            req = term.sale("approve", 4321, card=chip_card("approve", 4321,
                                                            contactless=contactless))
            assert req["22"] == ("071" if contactless else "051") and req["23"] == "001"
            resp = await term.ask(req)
            assert resp["39"] == "00" and messages.match_response(req, resp) is None
            assert_issuer_data(req, resp, "00")
            assert await balance(sim, "approve") == before - 4321
            auth = await decision(sim, req)
            assert (auth.rc, auth.reason, auth.arqc) == ("00", "approved", "verified")
    asyncio.run(main())


def test_simulator_session_key_reproduces_the_cards_arqc():
    card = chip_card("visa", 500)
    values = icc_values(card.icc_data)
    session_key = ac_session_key(CATALOG.imk_ac, card.pan, card.pan_seq, values["9F36"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arqc = pyemv.ac.generate_ac(session_key, cryptogram.arqc_input(values))
    assert arqc == values["9F26"]
    arpc = compute_arpc(CATALOG.imk_ac, card.pan, card.pan_seq, values["9F36"], arqc, "51")
    assert arpc == expected_arpc(card.pan, card.pan_seq, card.icc_data, b"51")
    with pytest.raises(ValueError, match="ARC must be 2 characters"):
        compute_arpc(CATALOG.imk_ac, card.pan, card.pan_seq, values["9F36"], arqc, "5")


def _bcd(number: int, length: int) -> bytes:
    return bytes.fromhex(f"{number:0{length * 2}d}")


def _flip_arqc(req: dict) -> None:
    arqc = icc_values(req["55"])["9F26"]
    req["55"] = retag(req["55"], "9F26", bytes([arqc[0] ^ 0x01]) + arqc[1:])


def _amount_9f02(req: dict) -> None:
    req["55"] = retag(req["55"], "9F02", _bcd(200000, 6))


def _amount_field_4(req: dict) -> None:
    req["4"] = f"{200000:012d}"


def _amount_both(req: dict) -> None:  # consistent, but not what the card signed
    _amount_9f02(req)
    _amount_field_4(req)


def _currency_5f2a(req: dict) -> None:
    req["55"] = retag(req["55"], "5F2A", _bcd(840, 2))


def _atc(req: dict) -> None:
    req["55"] = retag(req["55"], "9F36", b"\x7f\x00")


def _psn(req: dict) -> None:
    req["23"] = "002"


def _drop_55(req: dict) -> None:
    del req["55"]


def _garble_55(req: dict) -> None:
    req["55"] = b"\x9f\x26\x08\x01"  # length runs past the end


TAMPERED = [
    # name, change to the genuine request, code, ledger reason, ARQC verdict, 91 in 0210
    ("arqc-byte-flipped", _flip_arqc, "05", "ARQC failed", "failed", True),
    ("9F02-tampered", _amount_9f02, "05", "amount mismatch 9F02", "", True),
    ("field4-differs", _amount_field_4, "05", "amount mismatch 9F02", "", True),
    ("both-amounts-changed", _amount_both, "05", "ARQC failed", "failed", True),
    ("5F2A-tampered", _currency_5f2a, "05", "currency mismatch 5F2A", "", True),
    ("atc-changed", _atc, "05", "ARQC failed", "failed", True),
    ("wrong-psn", _psn, "05", "ARQC failed", "failed", True),
    ("55-absent-on-chip", _drop_55, "30", "field 55 absent on chip entry", "", False),
    ("55-malformed", _garble_55, "30", "field 55 malformed", "", False),
]


@pytest.mark.parametrize("tamper,code,reason,arqc,has_91",
                         [t[1:] for t in TAMPERED], ids=[t[0] for t in TAMPERED])
def test_tampered_chip_data_declines_and_leaves_balance(tmp_path, tamper, code, reason, arqc,
                                                        has_91):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            req = term.sale("approve", 1000)
            tamper(req)
            resp = await term.ask(req)
            assert resp["39"] == code and "38" not in resp
            assert messages.match_response(req, resp) is None
            if has_91:
                assert_issuer_data(req, resp, code)
            else:
                assert "55" not in resp
            assert await balance(sim, "approve") == before
            auth = await decision(sim, req)
            assert auth.rc == code and auth.reason.startswith(reason) and auth.arqc == arqc
            # the host still serves the genuine card afterwards
            assert (await term.ask(term.sale("approve", 1000)))["39"] == "00"
            assert await balance(sim, "approve") == before - 1000
    asyncio.run(main())


def test_forged_arqc_is_refused_before_the_pin_so_no_try_is_counted(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale("visa", 100, pin="0000")
            _flip_arqc(req)
            assert (await term.ask(req))["39"] == "05"
            pan = CATALOG.cards["visa"].pan
            assert await sim.in_ledger(lambda l: l.pin_tries(pan)) == 0
    asyncio.run(main())


def test_magstripe_sale_needs_no_field_55_and_gets_none(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale("magstripe_only", 700, card=swiped_card("magstripe_only"))
            assert req["22"] == "021" and "55" not in req and req["35"][21:24] == "120"
            resp = await term.ask(req)
            assert resp["39"] == "00" and "55" not in resp
            auth = await decision(sim, req)
            assert (auth.reason, auth.arqc) == ("approved", "")
    asyncio.run(main())


def test_declines_for_other_reasons_still_carry_arpc(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale("low_balance", 5000)
            resp = await term.ask(req)
            assert resp["39"] == "51"
            assert_issuer_data(req, resp, "51")
            auth = await decision(sim, req)
            assert (auth.reason, auth.arqc) == ("insufficient funds", "verified")
    asyncio.run(main())


# --- swipes, the PIN rule, issuer scripts ---------------------------------------------


SWIPES = [
    # card, entry mode, track 2 change, code, ledger reason
    ("approve", ENTRY_MAGSTRIPE, None, "45", "chip card swiped"),
    ("approve", ENTRY_FALLBACK, None, "00", "approved"),
    ("magstripe_only", ENTRY_FALLBACK, None, "00", "approved"),
    ("magstripe_only", ENTRY_MAGSTRIPE, "", "30", "track 2 absent or malformed"),
    ("magstripe_only", ENTRY_MAGSTRIPE, "6226090000000196=3012", "30",
     "track 2 absent or malformed"),
    ("magstripe_only", ENTRY_MAGSTRIPE, "6226090000000014=30121200000000000", "30",
     "track 2 PAN differs from field 2"),
    ("approve", ENTRY_FALLBACK, "6226090000000014=29122200000000000", "30",
     "track 2 expiry differs from field 14"),
]


@pytest.mark.parametrize("name,entry,track2,code,reason", SWIPES,
                         ids=[f"{s[0]}-{s[1]}-{s[4]}" for s in SWIPES])
def test_swipe_rules(tmp_path, name, entry, track2, code, reason):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, name)
            req = term.sale(name, 800, card=swiped_card(name, entry, track2))
            assert req["22"] == entry and "55" not in req and ("35" in req) == (track2 != "")
            resp = await term.ask(req)
            assert resp["39"] == code and "55" not in resp
            assert await balance(sim, name) == before - (800 if code == "00" else 0)
            assert (await decision(sim, req)).reason == reason
    asyncio.run(main())


def without_tag(icc: bytes, tag: str) -> bytes:
    nodes = tlv.parse(icc)
    assert any(n.tag == tag for n in nodes), tag
    return tlv.encode_nodes([n for n in nodes if n.tag != tag])


PIN_RULE = [
    # 9F34 in field 55 (None: absent), PIN entered, code
    ("420300", None, "55"),  # online PIN, no PIN block
    ("020000", None, "55"),
    ("420300", "catalog", "00"),
    ("010002", None, "00"),  # offline plaintext PIN by the card
    ("440302", None, "00"),  # offline enciphered PIN
    ("030002", None, "00"),  # offline PIN and signature
    ("1E0300", None, "00"),  # signature
    ("1F0002", None, "00"),  # no CVM required
    ("3F0000", None, "00"),  # no CVM performed
    ("1E0300", "0000", "55"),  # a PIN block sent anyway is checked
    (None, None, "55"),  # field 55 without 9F34
]


@pytest.mark.parametrize("cvm_results,pin,code", PIN_RULE,
                         ids=[f"{p[0]}-{p[1]}" for p in PIN_RULE])
def test_online_pin_is_required_only_when_9f34_names_it(tmp_path, cvm_results, pin, code):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale("approve", 900, pin=pin)
            if cvm_results is None:
                req["55"] = without_tag(req["55"], "9F34")
            else:
                req["55"] = retag(req["55"], "9F34", bytes.fromhex(cvm_results))
            resp = await term.ask(req)
            assert resp["39"] == code
            auth = await decision(sim, req)
            assert auth.arqc == "verified"  # 9F34 is not part of the ARQC
            assert auth.reason == {"00": "approved", "55": "PIN block absent" if pin is None
                                   else "wrong PIN"}[code]
    asyncio.run(main())


def test_swipe_without_pin_block_is_refused(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale("magstripe_only", 100, pin=None, card=swiped_card("magstripe_only"))
            assert (await term.ask(req))["39"] == "55"
    asyncio.run(main())


@pytest.mark.parametrize("name,pin,code,script", [
    ("script", "catalog", "00", True), ("script", "0000", "55", True),
    ("approve", "catalog", "00", False),
])
def test_issuer_script_follows_91_and_8a_for_script_cards(tmp_path, name, pin, code, script):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale(name, 1500, pin=pin)
            resp = await term.ask(req)
            assert resp["39"] == code
            nodes = tlv.parse(resp["55"])
            assert [n.tag for n in nodes] == ["91", "8A"] + (["72"] if script else [])
            assert_issuer_data(req, {**resp, "55": tlv.encode_nodes(nodes[:2])}, code)
            if script:
                assert tlv.encode_nodes(nodes[2:]) == ISSUER_SCRIPT
                ident, command = nodes[2].children
                assert (ident.tag, ident.value) == ("9F18", bytes.fromhex("00000001"))
                assert command.tag == "86" and command.value[:6] == bytes.fromhex("04DA9F140503")
                assert len(command.value) == 10  # header, Lc 5: LCOL 03 + 4-byte MAC
    asyncio.run(main())


def test_swiped_card_gets_no_script(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale("script", 100, card=swiped_card("script", ENTRY_FALLBACK))
            resp = await term.ask(req)
            assert resp["39"] == "00" and "55" not in resp
    asyncio.run(main())


# --- echo test ------------------------------------------------------------------------


def test_echo_test_answers_00_without_keys_rrn_or_ledger_write(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await sim.in_ledger(lambda l: l.last_authorisation())
            rrn_before = (await term.sign_on())["37"]
            req = messages.echo_request(IDS, stan=55, batch=3, now=NOW)
            resp = await term.ask(req)
            assert resp["t"] == "0810" and resp["39"] == "00" and messages.is_echo(resp)
            assert {k: resp[k] for k in ("11", "12", "13", "41", "42", "60")} == \
                {k: req[k] for k in ("11", "12", "13", "41", "42", "60")}
            assert "62" not in resp and "37" not in resp
            rrn_after = (await term.sign_on())["37"]
            assert int(rrn_after) == int(rrn_before) + 1  # the echo took no RRN
            assert await sim.in_ledger(lambda l: l.last_authorisation()) == before
    asyncio.run(main())


@pytest.mark.parametrize("tid,code60,rc", [
    (TID, "00000003999", "12"),  # 60.3 neither sign-on nor echo
    ("99999999", "00000003301", "03"),  # echo from an unknown terminal
])
def test_other_network_management_requests_are_refused(tmp_path, tid, code60, rc):
    async def main():
        async with running(tmp_path) as sim:
            term = await Terminal.connect(sim.port)
            req = {**messages.echo_request(TerminalIds(tid, IDS.merchant_id), stan=8, batch=3,
                                           now=NOW), "60": code60}
            resp = await term.ask(req)
            assert (resp["t"], resp["39"], resp["60"]) == ("0810", rc, code60)
            assert "62" not in resp
            assert await sim.in_ledger(lambda l: l.session_keys(tid)) is None
            await term.close()
    asyncio.run(main())


# --- offline sale advices (0220 / 0221 -> 0230) ------------------------------------------


async def records(sim: AcquirerSimulator, tid: str = TID):
    return await sim.in_ledger(lambda l: l.records(tid))


def assert_advice_answer(req: dict, resp: dict, rc: str) -> None:
    assert resp["t"] == "0230" and resp["39"] == rc
    assert messages.match_response(req, resp) is None
    assert {k: resp[k] for k in ("2", "3", "4", "11", "41", "42", "49")} == \
        {k: req[k] for k in ("2", "3", "4", "11", "41", "42", "49")}
    assert resp["37"].isdigit() and len(resp["37"]) == 12
    assert ("38" in resp) == (rc == "00") and "55" not in resp


def tc_icc(card: CardData) -> bytes:
    """Field 55 as after an offline approval (Y1): 9F27 = TC and a new unpredictable number,
    9F26 = the AC the card computes over that data."""
    icc = retag(retag(card.icc_data, "9F27", b"\x40"), "9F37", bytes.fromhex("0A0B0C0D"))
    tc = cryptogram.compute_arqc(CATALOG.imk_ac, card.pan, card.pan_seq, icc_values(icc))
    assert tc != icc_values(card.icc_data)["9F26"]
    return retag(icc, "9F26", tc)


ADVICES = [
    # card, amount, advice code (39 of the 0220), response code, ledger reason
    ("approve", 2500, "00", "00", "approved"),  # store and forward: the ARQC kept
    ("low_balance", 5000, "Y3", "51", "insufficient funds"),  # the merchant's loss
    ("expired", 100, "Y1", "54", "card expired"),
    ("stolen", 100, "Y1", "43", "catalog: forced code"),
    ("no_response", 700, "Y1", "00", "approved"),  # advices are answered all the same
    ("approve", 90051, "Y1", "00", "approved"),  # magic amounts are for online sales
]


@pytest.mark.parametrize("name,amount,advice_code,rc,reason", ADVICES,
                         ids=[f"{a[0]}-{a[1]}-{a[3]}" for a in ADVICES])
def test_advice_decisions(tmp_path, name, amount, advice_code, rc, reason):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, name)
            card = chip_card(name, amount)
            icc = None if advice_code == "00" else tc_icc(card)
            req = term.advice(name, amount, code=advice_code, card=card, icc=icc)
            assert "52" not in req and req["60"][:2] == "30"
            resp = await term.ask(req)
            assert_advice_answer(req, resp, rc)
            assert await balance(sim, name) == before - (amount if rc == "00" else 0)
            [auth] = await records(sim)
            assert (auth.kind, auth.rc, auth.rrn, auth.reason, auth.arqc) == \
                ("advice", rc, resp["37"], reason, "verified")
            assert auth.auth_code == resp.get("38") and auth.repeats == 0
    asyncio.run(main())


def test_advice_needs_no_sign_on_and_no_pin(tmp_path):
    async def main():
        async with running(tmp_path) as sim:
            term = await Terminal.connect(sim.port)
            before = await balance(sim, "visa")
            req = term.advice("visa", 800)
            assert_advice_answer(req, await term.ask(req), "00")
            assert await balance(sim, "visa") == before - 800
            assert await sim.in_ledger(lambda l: l.pin_tries(CATALOG.cards["visa"].pan)) == 0
            await term.close()
    asyncio.run(main())


def test_advice_repeats_answer_the_recorded_decision_and_debit_once(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            first = term.advice("approve", 1800, stan=300)
            answer = await term.ask(first)
            assert_advice_answer(first, answer, "00")
            for repeat in (True, True, False):  # 0221, 0221, then the 0220 once more
                again = await term.ask(term.advice("approve", 1800, stan=300, repeat=repeat))
                assert (again["t"], again["37"], again["38"]) == \
                    ("0230", answer["37"], answer["38"])
            assert await balance(sim, "approve") == before - 1800
            [auth] = await records(sim)
            assert (auth.rc, auth.repeats) == ("00", 3)
            declined = term.advice("low_balance", 5000, stan=301)
            refused = await term.ask(declined)
            assert refused["39"] == "51"
            repeat = await term.ask(term.advice("low_balance", 5000, stan=301, repeat=True))
            assert (repeat["39"], repeat["37"]) == ("51", refused["37"])
    asyncio.run(main())


def test_advice_of_an_online_sale_is_a_duplicate_and_so_is_a_sale_of_an_advice(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            assert (await term.ask(term.sale("approve", 600, stan=4242)))["39"] == "00"
            dup = term.advice("approve", 600, stan=4242)
            assert_advice_answer(dup, await term.ask(dup), "94")
            repeat = await term.ask(term.advice("approve", 600, stan=4242, repeat=True))
            assert repeat["39"] == "94"
            assert (await term.ask(term.advice("approve", 700, stan=4343)))["39"] == "00"
            assert (await term.ask(term.sale("approve", 700, stan=4343)))["39"] == "94"
            assert await balance(sim, "approve") == before - 1300
            rows = [(r.kind, r.stan, r.rc, r.repeats) for r in await records(sim)]
            assert rows == [("sale", "004242", "00", 0), ("advice", "004242", "94", 1),
                            ("advice", "004343", "00", 0), ("sale", "004343", "94", 0)]
    asyncio.run(main())


def _ic_mismatch(req: dict) -> None:
    req["55"] = retag(req["55"], "9F02", _bcd(1, 6))


def _other_terminal(req: dict) -> None:
    req["41"] = "99999999"


def _not_a_sale(req: dict) -> None:
    req["3"] = "200000"


def _no_25(req: dict) -> None:
    del req["25"]


def _not_an_advice_code(req: dict) -> None:
    req["39"] = "05"


BAD_ADVICES = [
    # name, change, response code, ledger reason, cryptogram verdict
    ("unknown-terminal", _other_terminal, "03", "unknown terminal", ""),
    ("processing-code", _not_a_sale, "12", "processing code is not a sale", ""),
    ("field-25-missing", _no_25, "30", "field 25 missing", ""),
    ("39-not-advice-code", _not_an_advice_code, "30", "field 39 is not an advice code", ""),
    ("55-absent-on-chip", _drop_55, "30", "field 55 absent on chip entry", ""),
    ("9F02-mismatch", _ic_mismatch, "05", "amount mismatch 9F02", ""),
    ("cryptogram-flipped", _flip_arqc, "05", "cryptogram failed", "failed"),
    ("psn-changed", _psn, "05", "cryptogram failed", "failed"),
]


@pytest.mark.parametrize("change,rc,reason,arqc", [b[1:] for b in BAD_ADVICES],
                         ids=[b[0] for b in BAD_ADVICES])
def test_bad_advices_are_declined_recorded_and_not_debited(tmp_path, change, rc, reason, arqc):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            req = term.advice("approve", 900)
            change(req)
            resp = await term.ask(req)
            assert resp["t"] == "0230" and resp["39"] == rc and "38" not in resp
            assert await balance(sim, "approve") == before
            [auth] = await records(sim, req["41"])
            assert (auth.kind, auth.rc, auth.reason, auth.arqc) == ("advice", rc, reason, arqc)
    asyncio.run(main())


def test_advice_of_an_unknown_card_gets_14(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.advice("approve", 900, card=chip_card("approve", 900, UNKNOWN_PAN))
            assert (await term.ask(req))["39"] == "14"
            [auth] = await records(sim)
            assert (auth.reason, auth.arqc) == ("unknown card", "verified")
    asyncio.run(main())


def test_advice_without_the_ledger_key_fields_is_a_format_error_not_recorded(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.advice("approve", 900)
            del req["13"]
            resp = await term.ask(req)
            assert (resp["t"], resp["39"]) == ("0230", "30")
            assert await records(sim) == []
    asyncio.run(main())


# --- reversals -----------------------------------------------------------------------


def test_reversal_restores_balance_once(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            sale = term.sale("approve", 2500)
            assert (await term.ask(sale))["39"] == "00"
            assert await balance(sim, "approve") == before - 2500
            rev = await term.ask(messages.reversal_request(sale, "98"))
            assert rev["t"] == "0410" and rev["39"] == "00"
            assert (rev["11"], rev["4"], rev["3"]) == (sale["11"], sale["4"], "000000")
            assert await balance(sim, "approve") == before
            repeat = await term.ask(messages.reversal_request(sale, "98", repeat=True))
            assert repeat["t"] == "0410" and repeat["39"] == "00"
            assert await balance(sim, "approve") == before
            count = await sim.in_ledger(lambda l: l.reversal_count(TID, sale["11"], sale["13"]))
            assert count == 2
    asyncio.run(main())


def test_reversal_of_unknown_or_declined_sale_is_acknowledged_without_credit(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "low_balance")
            declined = term.sale("low_balance", 5000)
            assert (await term.ask(declined))["39"] == "51"
            assert (await term.ask(messages.reversal_request(declined, "98")))["39"] == "00"
            never_sent = term.sale("low_balance", 700)
            assert (await term.ask(messages.reversal_request(never_sent, "06")))["39"] == "00"
            assert await balance(sim, "low_balance") == before
    asyncio.run(main())


# --- robustness ----------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\x00\x00", b"\x00\x05hello", b"\x00\x060200\xff\xff"])
def test_garbage_frame_closes_connection_and_server_keeps_serving(tmp_path, caplog, garbage):
    async def main():
        async with running(tmp_path) as sim:
            bad = await Terminal.connect(sim.port)
            await bad.send_raw(garbage)
            await bad.assert_closed()
            await bad.close()
            good = await Terminal.connect(sim.port)
            await good.sign_on()
            await good.close()
    caplog.set_level(logging.WARNING, logger="kpos.sim.acquirer")
    asyncio.run(main())
    assert "malformed frame" in caplog.text


def test_unknown_mti_answers_12(tmp_path):
    async def main():
        async with running(tmp_path) as sim:
            term = await Terminal.connect(sim.port)
            resp = await term.ask({"t": "0300", "11": "000009", "41": TID})
            assert (resp["t"], resp["39"], resp["11"]) == ("0310", "12", "000009")
            await term.close()
    asyncio.run(main())


def test_missing_mandatory_field_answers_30(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale("approve", 100)
            del req["4"]
            assert (await term.ask(req))["39"] == "30"
    asyncio.run(main())


def test_concurrent_connections(tmp_path):
    async def one_connection(port: int, session: keys.SessionKeys, amount: int) -> list[str]:
        term = await Terminal.connect(port)
        term.session, term.stans = session, itertools.count(1000 * amount)
        codes = [(await term.ask(term.sale("approve", amount)))["39"] for _ in range(3)]
        await term.close()
        return codes

    async def main():
        async with signed_on(tmp_path) as (sim, term):  # one terminal id, one session
            before = await balance(sim, "approve")
            results = await asyncio.gather(
                *(one_connection(sim.port, term.session, a) for a in (1, 2, 3, 4)))
            assert results == [["00"] * 3] * 4
            assert await balance(sim, "approve") == before - 3 * 10
    asyncio.run(main())


def test_ledger_survives_restart(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            assert (await term.ask(term.sale("approve", 3000)))["39"] == "00"
            session = term.session
        async with running(tmp_path) as sim2:
            assert await balance(sim2, "approve") == CATALOG.cards["approve"].balance - 3000
            stored = await sim2.in_ledger(lambda l: l.session_keys(TID))
            assert stored == (session.pik, session.mak)
            term2 = await Terminal.connect(sim2.port)
            term2.session, term2.stans = session, itertools.count(500)  # no new sign-on
            assert (await term2.ask(term2.sale("approve", 1000)))["39"] == "00"
            assert await balance(sim2, "approve") == CATALOG.cards["approve"].balance - 4000
            await term2.close()
    asyncio.run(main())


# --- faults --------------------------------------------------------------------------


def test_fault_drop_decides_but_never_answers(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            sim.faults.drop = True
            seen = sim.requests_seen
            await term.send(term.sale("approve", 100))
            await sim.wait_requests(seen + 1, ANSWER_TIMEOUT)
            await term.assert_silent()
            assert await balance(sim, "approve") == before - 100  # the host did approve
            sim.faults.drop = False
            assert (await term.ask(term.sale("approve", 100)))["39"] == "00"
    asyncio.run(main())


def test_fault_disconnect_closes_after_reading(tmp_path):
    async def main():
        async with signed_on(tmp_path, Faults()) as (sim, term):
            sim.faults.disconnect = True
            await term.send(term.sale("approve", 100))
            await term.assert_closed()
    asyncio.run(main())


def test_fault_garble_sends_undecodable_frame(tmp_path):
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            sim.faults.garble = True
            await term.send(term.sale("approve", 100))
            raw = await asyncio.wait_for(messages.read_frame(term.reader), ANSWER_TIMEOUT)
            with pytest.raises(MessageError):
                messages.decode(raw)
    asyncio.run(main())


def test_fault_delay_holds_the_answer(tmp_path):
    async def main():
        async with signed_on(tmp_path, Faults(delay=0.25)) as (sim, term):
            loop = asyncio.get_running_loop()
            start = loop.time()
            assert (await term.ask(term.sale("approve", 100)))["39"] == "00"
            assert loop.time() - start >= 0.25
    asyncio.run(main())


def test_logs_never_show_pan_or_pin_block(tmp_path, caplog):
    pan = CATALOG.cards["approve"].pan
    blocks = []

    async def main():
        async with signed_on(tmp_path) as (sim, term):
            req = term.sale("approve", 100)
            blocks.append(req["52"].hex())
            blocks.append(req["55"].hex())
            await term.ask(req)
            await term.ask(messages.reversal_request(req, "98"))
            await term.ask(term.sale("approve", 100, pin="0000"))

    caplog.set_level(logging.DEBUG)
    asyncio.run(main())
    text = caplog.text
    assert "622609******0014" in text  # the sale was logged, masked
    assert pan not in text and blocks[0] not in text.lower()
    assert blocks[1][:32] not in text.lower()  # field 55 (its first 16 bytes: the ARQC)


# --- ledger alone ----------------------------------------------------------------------


def test_ledger_overdraw_is_refused_atomically(tmp_path):
    ledger = Ledger(tmp_path / "new-dir" / "l.sqlite", CATALOG)
    pan = CATALOG.cards["low_balance"].pan
    with pytest.raises(LedgerError, match="overdraw 622609\\*\\*\\*\\*\\*\\*0022: STAN 000001"):
        ledger.authorise(tid=TID, stan="000001", date="0514", batch="000001", pan=pan,
                         amount=1001, rc="00")
    assert ledger.balance(pan) == 1000
    assert ledger.find(TID, "000001", "0514") is None
    ledger.close()


def test_ledger_keeps_balances_across_reopen_and_stores_no_clear_pan(tmp_path):
    path = tmp_path / "l.sqlite"
    pan = CATALOG.cards["approve"].pan
    ledger = Ledger(path, CATALOG)
    auth = ledger.authorise(tid=TID, stan="000002", date="0514", batch="000001", pan=pan,
                            amount=700, rc="00")
    assert auth.auth_code and auth.pan_masked == "622609******0014"
    assert ledger.reverse(TID, "000002", "0514").credited
    assert not ledger.reverse(TID, "000002", "0514", mti="0401").credited
    ledger.authorise(tid=TID, stan="000003", date="0514", batch="000001", pan=pan,
                     amount=50, rc="00")
    ledger.close()
    reopened = Ledger(path, CATALOG)
    assert reopened.balance(pan) == CATALOG.cards["approve"].balance - 50
    assert reopened.find(TID, "000002", "0514").reversed
    reopened.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("l.sqlite*"))
    assert pan_key(pan).encode() in stored and pan.encode() not in stored


def test_ledger_from_before_the_reason_columns_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE authorisations (
            id INTEGER PRIMARY KEY, tid TEXT NOT NULL, stan TEXT NOT NULL, date TEXT NOT NULL,
            batch TEXT NOT NULL, pan_masked TEXT NOT NULL, pan_key TEXT NOT NULL,
            amount INTEGER NOT NULL, rc TEXT, rrn TEXT NOT NULL, auth_code TEXT,
            reversed INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
        INSERT INTO authorisations (tid, stan, date, batch, pan_masked, pan_key, amount, rc, rrn,
            created_at) VALUES ('10000001', '000009', '0514', '000001', 'x', 'y', 5, '51',
            '000000000001', '2026-05-14T10:00:00');
    """)
    db.close()
    ledger = Ledger(path, CATALOG)
    old = ledger.find(TID, "000009", "0514")
    assert (old.rc, old.reason, old.arqc) == ("51", "", "")
    pan = CATALOG.cards["approve"].pan
    ledger.authorise(tid=TID, stan="000010", date="0514", batch="000001", pan=pan, amount=5,
                     rc="05", reason="ARQC failed", arqc="failed")
    new = ledger.find(TID, "000010", "0514")
    assert (new.rc, new.reason, new.arqc) == ("05", "ARQC failed", "failed")
    assert (old.kind, old.repeats, new.kind) == ("sale", 0, "sale")
    ledger.close()


def test_ledger_debits_are_approved_unreversed_sales_and_advices(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite", CATALOG)
    pan = CATALOG.cards["approve"].pan
    common = dict(tid=TID, date="0514", batch="000001", pan=pan)
    ledger.authorise(stan="000001", amount=100, rc="00", **common)
    ledger.authorise(stan="000002", amount=200, rc="00", **common)
    ledger.authorise(stan="000003", amount=300, rc="51", **common)
    ledger.advise(stan="000004", amount=400, rc="00", **common)
    ledger.advise(stan="000005", amount=500, rc="51", **common)
    ledger.advise(stan="000001", amount=100, rc="94", **common)
    ledger.authorise(stan="000009", amount=900, rc="00", **{**common, "tid": "10000002"})
    assert ledger.reverse(TID, "000002", "0514").credited
    assert [(d.kind, d.stan) for d in ledger.debits(TID)] == [("sale", "000001"),
                                                             ("advice", "000004")]
    assert [(r.kind, r.stan, r.rc) for r in ledger.records(TID)] == [
        ("sale", "000001", "00"), ("sale", "000002", "00"), ("sale", "000003", "51"),
        ("advice", "000004", "00"), ("advice", "000005", "51"), ("advice", "000001", "94")]
    assert ledger.balance(pan) == CATALOG.cards["approve"].balance - 100 - 400 - 900
    assert ledger.repeat_advice(TID, "000003", "0514") is None  # a sale is no advice
    assert ledger.repeat_advice(TID, "000004", "0514").repeats == 1
    assert ledger.repeat_advice(TID, "000004", "0514").repeats == 2
    ledger.close()


@pytest.mark.parametrize("code, with_tc, rc", [("Y1", False, "05"), ("Y3", False, "05"),
                                               ("00", True, "05"), ("Y1", True, "00")])
def test_advice_cryptogram_type_must_match_its_code(tmp_path, code, with_tc, rc):
    """A Y1/Y3 advice must carry a TC (9F27 = 40) and a store-and-forward one (00) the ARQC:
    the simulator's cryptograms are equal over equal data whatever their type."""
    async def main():
        async with signed_on(tmp_path) as (sim, term):
            before = await balance(sim, "approve")
            card = chip_card("approve", 1500)
            req = term.advice("approve", 1500, code=code, card=card,
                              icc=tc_icc(card) if with_tc else None)
            resp = await term.ask(req)
            assert resp["39"] == rc
            assert await balance(sim, "approve") == before - (1500 if rc == "00" else 0)
            if rc != "00":
                [auth] = await records(sim)
                assert auth.reason == "cryptogram type does not match the advice"
    asyncio.run(main())
