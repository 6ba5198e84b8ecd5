"""The EMV card emulator at the APDU level, and the catalog keys that shape each chip.

Commands are raw bytes (header hex + data), answers are checked byte for byte or through
their TLV; cryptograms are recomputed here straight with pyemv, signatures checked with
the card's public key (firmware.sim.emv_pki) through firmware.emv.oda.
"""
import hashlib
import json
import warnings
from datetime import date

import pyemv
import pytest

from firmware.cardsafe import luhn_ok
from firmware.emv import cryptogram, oda, tlv
from firmware.emv.tvr import Tsi, Tvr
from firmware.sim.acquirer import ISSUER_SCRIPT
from firmware.sim.card_emulator import ATR_CONTACT, CardEmulator
from firmware.sim.catalog import CatalogError, CardApp, TestCard as CatalogCard, load_catalog
from firmware.sim.emv_pki import CardPki, ca_public_key

CATALOG = load_catalog()
UN = bytes.fromhex("A1B2C3D4")
TERMINAL = {  # what a terminal would put in the PDOL / CDOL data
    "9F02": bytes.fromhex("000000012345"), "9F03": bytes(6), "9F1A": bytes.fromhex("0156"),
    "95": bytes(5), "5F2A": bytes.fromhex("0156"), "9A": bytes.fromhex("260501"),
    "9C": b"\x00", "9F37": UN, "9F35": b"\x22", "9F34": bytes.fromhex("420300"),
    "9F66": bytes.fromhex("36000000"), "8A": b"00",
}
PSE, PPSE = b"1PAY.SYS.DDF01", b"2PAY.SYS.DDF01"
AAC, TC, ARQC = 0x00, 0x40, 0x80
IDENTITY_TAGS = ("57", "5F20", "5A", "5F24", "5F25", "5F34", "5F28", "8C", "8D", "8E", "9F07",
                 "9F08", "9F0D", "9F0E", "9F0F", "9F42", "9F14", "9F23")


# --- helpers ------------------------------------------------------------------------


def emulator(name: str, contactless: bool = False) -> CardEmulator:
    return CardEmulator(CATALOG.cards[name], CATALOG.imk_ac, contactless=contactless)


def apdu(header: str, data: bytes = b"") -> bytes:
    """A short command: CLA INS P1 P2 (hex), then Lc + data when there is data, then Le 00."""
    return bytes.fromhex(header) + (bytes([len(data)]) + data if data else b"") + b"\x00"


def send(emu: CardEmulator, command: bytes) -> tuple[bytes, str]:
    """(response data, SW as 4 hex digits)."""
    answer = emu.transmit(command)
    return answer[:-2], answer[-2:].hex().upper()


def fields(data: bytes) -> dict[str, bytes]:
    return tlv.flatten(tlv.parse(data))


def dol_data(dol: bytes, **changes: bytes) -> bytes:
    return tlv.build_dol(tlv.parse_dol(dol), {**TERMINAL, **changes})


def select(emu: CardEmulator, name: bytes) -> tuple[bytes, str]:
    return send(emu, apdu("00A40400", name))


def start(emu: CardEmulator, aid: str | None = None, **terminal: bytes) -> dict[str, bytes]:
    """SELECT the application and GPO; the GPO answer's fields."""
    fci, sw = select(emu, bytes.fromhex(aid or emu.card.aid))
    assert sw == "9000"
    pdol = dol_data(fields(fci)["9F38"], **terminal)
    answer, sw = send(emu, apdu("80A80000", bytes([0x83, len(pdol)]) + pdol))
    assert sw == "9000"
    return fields(answer)


def read_records(emu: CardEmulator, afl: bytes) -> list[bytes]:
    assert afl[0] == 0x08 and len(afl) == 4  # SFI 1, one entry
    out = []
    for number in range(afl[1], afl[2] + 1):
        record, sw = send(emu, bytes([0x00, 0xB2, number, 0x0C, 0x00]))
        assert sw == "9000" and len(record) <= 256
        out.append(record)
    return out


def gen_ac(emu: CardEmulator, p1: int, dol: bytes, **changes: bytes) -> tuple[dict, str]:
    answer, sw = send(emu, apdu(f"80AE{p1:02X}00", dol_data(dol, **changes)))
    return (fields(answer) if sw == "9000" else {}), sw


def card_record_fields(emu: CardEmulator, gpo: dict) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for record in read_records(emu, gpo["94"]):
        out.update(fields(record))
    return out


def session_key(card: CatalogCard, atc: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyemv's TDES deprecation warnings
        icc_mk = pyemv.kd.derive_icc_mk_a(CATALOG.imk_ac, card.pan, card.psn)
        return pyemv.kd.derive_common_sk(icc_mk, atc + bytes(6))


def expected_ac(card: CatalogCard, values: dict[str, bytes]) -> bytes:
    """The cryptogram over ARQC_TAGS values, computed here with pyemv."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyemv.ac.generate_ac(session_key(card, values["9F36"]),
                                    cryptogram.arqc_input(values))


def arpc(card: CatalogCard, atc: bytes, arqc: bytes, arc: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyemv.ac.generate_arpc_1(session_key(card, atc), arqc, arc)


def online(name: str = "approve") -> tuple[CardEmulator, dict, dict]:
    """A contact card after GENERATE AC 1 (ARQC): (emulator, card data, GEN AC answer)."""
    emu = emulator(name)
    gpo = start(emu)
    card = {**gpo, **card_record_fields(emu, gpo)}
    answer, sw = gen_ac(emu, ARQC, card["8C"])
    assert sw == "9000" and answer["9F27"] == bytes([ARQC])
    return emu, card, answer


def external_authenticate(emu: CardEmulator, data: bytes) -> str:
    return send(emu, bytes.fromhex("00820000") + bytes([len(data)]) + data)[1]


def good_issuer_data(emu: CardEmulator, answer: dict, arc: bytes = b"00") -> bytes:
    return arpc(emu.card, answer["9F36"], answer["9F26"], arc) + arc


def pin_block(pin: str) -> bytes:
    return bytes.fromhex(f"2{len(pin):X}{pin}".ljust(16, "F"))


# --- records, AIP, CVM list -----------------------------------------------------------


@pytest.mark.parametrize("name,aip,records,certificates", [
    ("approve", "7C00", 4, {"8F", "90", "92", "9F32", "9F46", "9F47", "9F48", "9F49"}),
    ("sda", "5C00", 4, {"8F", "90", "92", "9F32", "93"}),
    ("bad_sda", "5C00", 4, {"8F", "90", "92", "9F32", "93"}),
])
def test_contact_gpo_afl_and_records(name, aip, records, certificates):
    emu = emulator(name)
    gpo = start(emu)
    assert gpo["82"].hex().upper() == aip
    assert gpo["94"] == bytes([0x08, 1, records, 2])  # SFI 1, records 1..N, 1-2 for ODA
    read = [fields(r) for r in read_records(emu, gpo["94"])]
    identity = {**read[0], **read[1]}
    assert set(IDENTITY_TAGS) <= set(identity)
    assert identity["9F42"].hex() == "0156" and identity["9F4A"] == b"\x82"
    assert (identity["9F14"], identity["9F23"]) == (b"\x05", b"\x0A")
    assert identity["9F0D"].hex().upper() == "D8609CA800"
    assert identity["9F0E"].hex().upper() == "0010200000"
    assert identity["9F0F"].hex().upper() == "D8689CF800"
    assert identity["57"].hex().upper().startswith(emu.card.pan + "D3012220")
    later = {tag for r in read[2:] for tag in r}
    assert later == certificates and not certificates & set(identity)
    assert send(emu, bytes([0x00, 0xB2, records + 1, 0x0C, 0x00]))[1] == "6A83"


def test_card_without_oda_has_two_records_and_aip_1c00():
    card = CatalogCard(**{**CATALOG.cards["approve"].__dict__, "oda": "none"})
    emu = CardEmulator(card, CATALOG.imk_ac)
    gpo = start(emu)
    assert gpo["82"] == bytes.fromhex("1C00") and gpo["94"] == bytes([0x08, 1, 2, 2])
    assert send(emu, apdu("00880000", UN))[1] == "6D00"


def test_pan_the_pki_cannot_certify_still_answers():
    card = CatalogCard(**{**CATALOG.cards["approve"].__dict__, "pan": "62260900000000000014"})
    assert luhn_ok(card.pan)  # 20 digits: the terminal must refuse it, the card must answer
    emu = CardEmulator(card, CATALOG.imk_ac)
    gpo = start(emu)
    assert gpo["94"] == bytes([0x08, 1, 2, 2]) and len(read_records(emu, gpo["94"])) == 2


@pytest.mark.parametrize("name,cvm_list", [
    ("approve", "42031E031F03"), ("offline_pin", "0100"), ("signature", "5E031F03"),
    ("no_cvm", "1F00"),
])
def test_cvm_list_follows_the_catalog(name, cvm_list):
    emu = emulator(name)
    records = card_record_fields(emu, start(emu))
    assert records["8E"] == bytes(8) + bytes.fromhex(cvm_list)  # X = Y = 0


def test_service_code_goes_into_track_2():
    card = CatalogCard(**{**CATALOG.cards["approve"].__dict__, "service_code": "201"})
    emu = CardEmulator(card, CATALOG.imk_ac)
    track2 = card_record_fields(emu, start(emu))["57"].hex().upper()
    assert track2.startswith(card.pan + "D3012201")


# --- offline data authentication ------------------------------------------------------


def run_oda(emu: CardEmulator) -> tuple[str, Tvr]:
    """The terminal's ODA step (firmware.emv.oda) against the emulator; (method, TVR)."""
    gpo = start(emu)
    raw = read_records(emu, gpo["94"])
    card = {**gpo}
    for record in raw:
        card.update(fields(record))
    static = oda.static_data([(1, r) for r in raw[:2]], gpo["82"], card.get("9F4A"))
    tvr, tsi = Tvr(), Tsi()
    capks = {(k.rid, k.index): k for k in [ca_public_key()]}
    method = oda.perform_oda(
        capks=capks, aid=emu.card.aid, aip=gpo["82"], card=card, static=static,
        terminal_caps=bytes.fromhex("E0F8C8"),
        internal_authenticate=lambda d: send(emu, apdu("00880000", d))[0],
        terminal_values=TERMINAL, today=date(2026, 5, 1), tvr=tvr, tsi=tsi)
    return method, tvr


@pytest.mark.parametrize("name,method,failed", [
    ("approve", "dda", False), ("sda", "sda", False), ("bad_sda", "sda", True),
])
def test_oda_verifies_except_for_bad_sda(name, method, failed):
    got, tvr = run_oda(emulator(name))
    assert got == method
    assert tvr.hex()[:2] == {("dda", False): "00", ("sda", False): "02",
                             ("sda", True): "42"}[method, failed]


def test_internal_authenticate_signs_ddol_data_with_a_fresh_number():
    emu = emulator("approve")
    start(emu)
    modulus, exponent = CardPki(emu.card.pan, emu.card.expiry).icc_public_key()
    numbers = []
    for _ in range(2):
        answer, sw = send(emu, apdu("00880000", UN))
        assert sw == "9000" and tlv.parse(answer)[0].tag == "80"
        dynamic = oda.verify_sdad(tlv.parse(answer)[0].value, modulus, exponent, UN)
        assert dynamic[0] == 8 and len(dynamic) == 9  # ICC dynamic number: 8 bytes
        numbers.append(dynamic)
        with pytest.raises(oda.OdaError):
            oda.verify_sdad(tlv.parse(answer)[0].value, modulus, exponent, b"\x00" * 4)
    assert numbers[0] != numbers[1]
    signed = pow(int.from_bytes(tlv.parse(answer)[0].value, "big"), exponent,
                 int.from_bytes(modulus, "big")).to_bytes(len(modulus), "big")
    assert signed[-21:-1] == hashlib.sha1(signed[1:-21] + UN).digest()


@pytest.mark.parametrize("name,before_gpo,sw", [
    ("approve", True, "6985"), ("sda", False, "6D00"), ("bad_sda", False, "6D00"),
])
def test_internal_authenticate_refused(name, before_gpo, sw):
    emu = emulator(name)
    if before_gpo:
        select(emu, bytes.fromhex(emu.card.aid))
    else:
        start(emu)
    assert send(emu, apdu("00880000", UN))[1] == sw


# --- GET DATA and VERIFY ----------------------------------------------------------------


def get_data(emu: CardEmulator, tag: str) -> bytes | None:
    answer, sw = send(emu, apdu(f"80CA{tag}"))
    return fields(answer)[tag] if sw == "9000" else None


def test_atc_and_last_online_atc():
    emu = emulator("approve")
    assert get_data(emu, "9F36") == b"\x00\x20"
    assert get_data(emu, "9F13") == b"\x00\x1F"
    emu, _, answer = online()
    assert answer["9F36"] == get_data(emu, "9F36") == b"\x00\x21"  # GPO counts the transaction
    assert get_data(emu, "9F13") == b"\x00\x1F"
    assert external_authenticate(emu, good_issuer_data(emu, answer)) == "9000"
    assert get_data(emu, "9F13") == b"\x00\x21"
    assert emulator("approve").atc == 0x20  # a new insertion starts again


def test_verify_counts_down_blocks_and_resets():
    emu = emulator("offline_pin")
    start(emu)
    assert get_data(emu, "9F17") == b"\x03"
    verify = lambda pin: send(emu, apdu("00200080", pin_block(pin)))[1]  # noqa: E731
    assert [verify("0000"), verify("9999")] == ["63C2", "63C1"]
    assert get_data(emu, "9F17") == b"\x01"
    assert verify("1234") == "9000" and get_data(emu, "9F17") == b"\x03"
    assert [verify("1111"), verify("2222"), verify("3333")] == ["63C2", "63C1", "63C0"]
    assert verify("1234") == "6983" and get_data(emu, "9F17") == b"\x00"
    assert send(emu, bytes.fromhex("0020008000"))[1] == "6983"


def test_verify_without_data_tells_the_tries_left():
    emu = emulator("offline_pin")
    start(emu)
    assert send(emu, bytes.fromhex("0020008000"))[1] == "63C3"


def test_pin_blocked_card_answers_6983_even_to_the_right_pin():
    emu = emulator("pin_blocked")
    start(emu)
    assert get_data(emu, "9F17") == b"\x00"
    assert send(emu, apdu("00200080", pin_block("1234")))[1] == "6983"


def test_online_pin_card_answers_verify_too():
    emu = emulator("approve")
    start(emu)
    assert send(emu, apdu("00200080", pin_block("1234")))[1] == "9000"


@pytest.mark.parametrize("block", [
    "141234FFFFFFFFFF",  # format 1, not 2
    "231234FFFFFFFFFF",  # length 3
    "2412A4FFFFFFFFFF",  # not a digit
    "241234FFFFFFFF0F",  # padding not all F
    "241234FFFFFFFF",  # 7 bytes
], ids=["format", "length", "digit", "padding", "short"])
def test_verify_malformed_block_is_6a80_and_counts_nothing(block):
    emu = emulator("offline_pin")
    start(emu)
    assert send(emu, apdu("00200080", bytes.fromhex(block)))[1] == "6A80"
    assert get_data(emu, "9F17") == b"\x03"


def test_verify_needs_a_transaction_and_p2_80():
    emu = emulator("offline_pin")
    assert send(emu, apdu("00200080", pin_block("1234")))[1] == "6985"
    start(emu)
    assert send(emu, apdu("00200088", pin_block("1234")))[1] == "6A86"


# --- GENERATE AC, EXTERNAL AUTHENTICATE --------------------------------------------------


FIRST_AC = [("approve", AAC, AAC), ("approve", TC, ARQC), ("approve", ARQC, ARQC),
            ("offline_ok", AAC, AAC), ("offline_ok", TC, TC), ("offline_ok", ARQC, ARQC)]


@pytest.mark.parametrize("name,p1,cid", FIRST_AC, ids=[f"{n}-{p:02X}" for n, p, _ in FIRST_AC])
def test_first_generate_ac(name, p1, cid):
    emu = emulator(name)
    gpo = start(emu)
    cdol1 = card_record_fields(emu, gpo)["8C"]
    answer, sw = gen_ac(emu, p1, cdol1)
    assert sw == "9000" and answer["9F27"] == bytes([cid]) and answer["9F36"] == b"\x00\x21"
    values = {**TERMINAL, "82": gpo["82"], "9F36": answer["9F36"]}
    assert answer["9F26"] == expected_ac(emu.card, values)


def test_generate_ac_order_and_lengths():
    emu = emulator("approve")
    assert send(emu, apdu("80AE8000", bytes(33)))[1] == "6985"  # before GPO
    gpo = start(emu)
    cdol1 = card_record_fields(emu, gpo)["8C"]
    assert send(emu, apdu("80AE8000", bytes(5)))[1] == "6700"
    assert send(emu, apdu("80AEC000", dol_data(cdol1)))[1] == "6A86"
    answer, sw = gen_ac(emu, AAC, cdol1)
    assert answer["9F27"] == b"\x00"
    assert gen_ac(emu, TC, bytes.fromhex("8A02"))[1] == "6985"  # the transaction is over


def test_external_authenticate_good_and_bad_arpc():
    emu, _, answer = online()
    good = good_issuer_data(emu, answer)
    assert external_authenticate(emu, bytes([good[0] ^ 1]) + good[1:]) == "6300"
    assert external_authenticate(emu, good) == "6985"  # once only
    emu, _, answer = online()
    assert external_authenticate(emu, good_issuer_data(emu, answer)[:9]) == "6700"
    assert external_authenticate(emu, good_issuer_data(emu, answer)) == "9000"
    # the ARC is part of the ARPC: the same ARPC with another ARC fails
    emu, _, answer = online()
    assert external_authenticate(emu, good_issuer_data(emu, answer)[:8] + b"51") == "6300"


def test_external_authenticate_needs_an_arqc():
    emu = emulator("approve")
    gpo = start(emu)
    assert external_authenticate(emu, bytes(10)) == "6985"
    gen_ac(emu, AAC, card_record_fields(emu, gpo)["8C"])
    assert external_authenticate(emu, bytes(10)) == "6985"


SECOND_AC = [
    # card, EXTERNAL AUTHENTICATE, P1 asked, 8A, CID answered
    ("approve", "good", TC, b"00", TC),
    ("approve", "good", TC, b"10", TC),
    ("approve", "good", TC, b"11", TC),
    ("approve", "good", AAC, b"00", AAC),
    ("approve", "good", TC, b"51", AAC),
    ("approve", "good", TC, b"Z3", AAC),
    ("approve", "bad", TC, b"00", AAC),
    ("approve", None, TC, b"00", AAC),  # AIP says issuer authentication is supported
    ("second_ac_decline", "good", TC, b"00", AAC),
    ("approve", None, TC, b"Z3", AAC),  # online only: no host, no TC
    ("offline_ok", None, TC, b"Z3", TC),  # the card approves offline (Y3)
    ("offline_ok", None, AAC, b"Z3", AAC),
    ("offline_ok", None, TC, b"00", AAC),  # online it still wants issuer authentication
    ("offline_ok", "good", TC, b"00", TC),
]


@pytest.mark.parametrize("name,auth,p1,arc,cid", SECOND_AC,
                         ids=[f"{s[0]}-{s[1]}-{s[2]:02X}-{s[3].decode()}" for s in SECOND_AC])
def test_second_generate_ac(name, auth, p1, arc, cid):
    emu, card, first = online(name)
    if auth:
        data = good_issuer_data(emu, first, arc)
        ok = external_authenticate(emu, data if auth == "good" else bytes(8) + arc)
        assert ok == ("9000" if auth == "good" else "6300")
    answer, sw = gen_ac(emu, p1, card["8D"], **{"8A": arc})
    assert sw == "9000" and answer["9F27"] == bytes([cid])
    assert answer["9F36"] == first["9F36"]  # same transaction, same ATC
    values = {**TERMINAL, "82": card["82"], "9F36": first["9F36"]}
    assert answer["9F26"] == expected_ac(emu.card, values)
    assert gen_ac(emu, TC, card["8D"])[1] == "6985"  # no third GENERATE AC


def offline_tc(emu: CardEmulator, cdol1: bytes) -> int:
    """A new transaction on the same card: GPO, then GENERATE AC 1 asking for a TC."""
    start(emu)
    answer, sw = gen_ac(emu, TC, cdol1)
    assert sw == "9000"
    return answer["9F27"][0]


def test_offline_card_gives_tcs_up_to_ucol_then_goes_online():
    emu = emulator("offline_ok")
    card = card_record_fields(emu, start(emu))
    assert [offline_tc(emu, card["8C"]) for _ in range(11)] == [TC] * 10 + [ARQC]  # UCOL 10
    # that ARQC found no host: "Z3" asks for a TC, but the limit holds
    assert gen_ac(emu, TC, card["8D"], **{"8A": b"Z3"})[0]["9F27"] == bytes([AAC])
    start(emu)  # online, with issuer authentication: the count starts again
    answer, _ = gen_ac(emu, ARQC, card["8C"])
    assert external_authenticate(emu, good_issuer_data(emu, answer)) == "9000"
    assert offline_tc(emu, card["8C"]) == TC


def test_tc_at_the_first_generate_ac_ends_the_transaction():
    emu = emulator("offline_ok")
    card = card_record_fields(emu, start(emu))
    assert offline_tc(emu, card["8C"]) == TC
    assert external_authenticate(emu, bytes(10)) == "6985"
    assert gen_ac(emu, TC, card["8D"], **{"8A": b"Z3"})[1] == "6985"
    assert send(emu, apdu("84DA9F23", b"\x00" + bytes(4)))[1] == "6985"  # no scripts

    emu, card, _ = online()
    assert gen_ac(emu, ARQC, card["8D"])[1] == "6A86"
    assert gen_ac(emu, AAC, card["8D"])[1] == "9000"


# --- issuer scripts -----------------------------------------------------------------------


def test_acquirer_script_is_applied():
    emu, card, first = online("script")
    script = tlv.parse(ISSUER_SCRIPT)[0]
    assert script.tag == "72"
    assert external_authenticate(emu, good_issuer_data(emu, first)) == "9000"
    assert gen_ac(emu, TC, card["8D"])[0]["9F27"] == bytes([TC])
    assert get_data(emu, "9F14") == b"\x05"
    for command in tlv.find_all([script], "86"):
        assert send(emu, command.value)[1] == "9000"
    assert get_data(emu, "9F14") == b"\x03"


def test_script_commands():
    emu, _, _ = online()
    mac = bytes(4)
    assert send(emu, apdu("84DA9F23", b"\x07" + mac))[1] == "9000"
    assert get_data(emu, "9F23") == b"\x07"
    assert send(emu, apdu("84DA5A00", b"\x01" + mac))[1] == "6A88"  # not updatable
    assert send(emu, apdu("84DA9F14", mac))[1] == "6700"  # no value before the MAC
    assert send(emu, apdu("84180000", mac))[1] == "9000"  # APPLICATION UNBLOCK
    assert send(emu, apdu("841E0000", mac))[1] == "6D00"  # APPLICATION BLOCK: not taken
    assert send(emu, apdu("84160000", mac))[1] == "6D00"  # CARD BLOCK: not taken


def test_pin_unblock_script_resets_the_try_counter():
    emu = emulator("pin_blocked")
    gpo = start(emu)
    assert send(emu, apdu("84240000", bytes(4)))[1] == "6985"  # no ARQC yet
    gen_ac(emu, ARQC, card_record_fields(emu, gpo)["8C"])
    assert send(emu, apdu("84240000", bytes(4)))[1] == "9000"
    assert get_data(emu, "9F17") == b"\x03"
    assert send(emu, apdu("00200080", pin_block("1234")))[1] == "9000"


# --- contactless -----------------------------------------------------------------------


@pytest.mark.parametrize("ttq,ctq", [
    ("36000000", "0000"),  # no CVM required
    ("36400000", "8000"),  # CVM required, online PIN supported: online PIN
    ("32400000", "0000"),  # CVM required, no online PIN at this reader
], ids=["no-cvm", "online-pin", "no-online-pin"])
def test_contactless_gpo_carries_the_arqc_and_ctq(ttq, ctq):
    emu = emulator("approve", contactless=True)
    ppse, sw = select(emu, PPSE)
    assert sw == "9000" and tlv.find(tlv.parse(ppse), "BF0C") is not None
    gpo = start(emu, **{"9F66": bytes.fromhex(ttq)})
    assert gpo["94"] == bytes([0x08, 1, 2, 0])  # records 1-2, none for ODA
    assert gpo["9F27"] == b"\x80" and gpo["9F36"] == b"\x00\x21" and gpo["5F34"] == b"\x01"
    assert gpo["9F6C"].hex() == ctq and "9F10" in gpo
    values = {**TERMINAL, "82": gpo["82"], "9F36": gpo["9F36"]}
    assert gpo["9F26"] == expected_ac(emu.card, values)
    assert send(emu, apdu("80AE8000", bytes(33)))[1] == "6985"  # no GENERATE AC on a tap
    records = read_records(emu, gpo["94"])
    assert fields(records[1])["5A"].hex().startswith(emu.card.pan)


def test_contact_only_card_is_not_there_on_the_contactless_field():
    emu = emulator("contact_only", contactless=True)
    assert select(emu, PPSE)[1] == "6A82"
    assert select(emu, bytes.fromhex("A000000333010101"))[1] == "6A82"
    assert send(emu, apdu("80A80000", bytes([0x83, 0])))[1] == "6985"
    emu = emulator("contact_only")
    assert select(emu, PSE)[1] == "9000"
    assert start(emu)["82"] == bytes.fromhex("7C00")


def test_magstripe_only_card_has_no_chip():
    with pytest.raises(ValueError, match="no chip"):
        emulator("magstripe_only")


# --- selection ----------------------------------------------------------------------------


@pytest.mark.parametrize("contactless", [False, True], ids=["contact", "contactless"])
def test_app_blocked_answers_6283_and_refuses_gpo(contactless):
    emu = emulator("app_blocked", contactless)
    directory, sw = select(emu, PPSE if contactless else PSE)
    assert sw == "9000"
    fci, sw = select(emu, bytes.fromhex("A000000333010101"))
    assert sw == "6283" and fields(fci)["84"].hex().upper() == "A000000333010101"
    assert send(emu, apdu("80A80000", bytes([0x83, 2]) + bytes(2)))[1] == "6985"


def directory_entries(emu: CardEmulator, contactless: bool) -> list[dict[str, bytes]]:
    fci, sw = select(emu, PPSE if contactless else PSE)
    assert sw == "9000"
    nodes = tlv.parse(fci)
    if not contactless:
        sfi = fields(fci)["88"][0]
        record, sw = send(emu, bytes([0x00, 0xB2, 1, (sfi << 3) | 4, 0]))
        assert sw == "9000"
        assert send(emu, bytes([0x00, 0xB2, 2, (sfi << 3) | 4, 0]))[1] == "6A83"
        nodes = tlv.parse(record)
    return [tlv.flatten(e.children) for e in tlv.find_all(nodes, "61")]


@pytest.mark.parametrize("contactless", [False, True], ids=["contact", "contactless"])
def test_multi_app_directory_asks_for_confirmation(contactless):
    emu = emulator("multi_app", contactless)
    entries = directory_entries(emu, contactless)
    assert [(e["4F"].hex().upper(), e["50"], e["87"]) for e in entries] == [
        ("A000000333010101", b"UnionPay Debit", b"\x81"),
        ("A000000333010102", b"UnionPay Credit", b"\x82"),
    ]
    for aid, label in (("A000000333010102", b"UnionPay Credit"),
                       ("A000000333010101", b"UnionPay Debit")):
        fci, sw = select(emu, bytes.fromhex(aid))
        assert sw == "9000" and fields(fci)["50"] == label and fields(fci)["87"][0] & 0x80


def test_single_app_directory_entry_needs_no_confirmation():
    entries = directory_entries(emulator("approve"), False)
    assert [e["87"] for e in entries] == [b"\x01"]


def test_card_keeps_its_atr_and_answers_unknown_commands():
    emu = emulator("approve")
    assert emu.atr == ATR_CONTACT
    assert send(emu, bytes.fromhex("00CA9F3600"))[1] == "6D00"
    assert send(emu, bytes.fromhex("A0A4040000"))[1] == "6E00"
    assert send(emu, bytes.fromhex("80CA5A0000"))[1] == "6A88"


# --- catalog --------------------------------------------------------------------------------


def test_shipped_catalog_cards():
    cards = CATALOG.cards
    pans = [c.pan for c in cards.values()]
    assert all(luhn_ok(p) for p in pans) and len(set(pans)) == len(pans)
    expect = {
        "offline_pin": {"cvm": "offline_pin", "pin": "1234", "pin_tries": 3},
        "pin_blocked": {"cvm": "offline_pin", "pin_tries": 0},
        "signature": {"cvm": "signature"}, "no_cvm": {"cvm": "no_cvm"},
        "second_ac_decline": {"second_ac": "decline"},
        "magstripe_only": {"chip": False, "service_code": "120", "contactless": False},
        "app_blocked": {"outcome": "broken:app_blocked"},
        "sda": {"oda": "sda"}, "bad_sda": {"oda": "bad_sda"},
        "script": {"issuer_script": True}, "contact_only": {"contactless": False},
        "approve": {"cvm": "online_pin", "oda": "dda", "second_ac": "approve", "chip": True,
                    "contactless": True, "service_code": "220", "issuer_script": False,
                    "offline": "decline"},
        "offline_ok": {"offline": "approve", "cvm": "no_cvm", "oda": "dda",
                       "contactless": True, "outcome": "approve"},
    }
    for name, values in expect.items():
        assert {k: getattr(cards[name], k) for k in values} == values, name
    assert [n for n, c in cards.items() if c.offline != "decline"] == ["offline_ok"]
    assert cards["multi_app"].applications == (
        CardApp("A000000333010101", "UnionPay Debit", 1),
        CardApp("A000000333010102", "UnionPay Credit", 2))


BASE_CARD = {"name": "t", "pan": "6226090000000014", "psn": "01", "expiry": "3012",
             "pin": "1234", "balance": 100, "aid": "A000000333010101", "label": "Test"}
KEYS = "[issuer]\nimk_ac = \"0123456789ABCDEFFEDCBA9876543210\"\n"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # str and int: JSON's forms are TOML's


def load_one(tmp_path, **changes):
    entry = {k: v for k, v in {**BASE_CARD, **changes}.items() if v is not None}
    lines = [f"{k} = {toml_value(v)}" for k, v in entry.items()]
    path = tmp_path / "catalog.toml"
    path.write_text(KEYS + "[[cards]]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return load_catalog(path).cards["t"]


def test_new_keys_default(tmp_path):
    card = load_one(tmp_path)
    assert (card.cvm, card.pin_tries, card.oda, card.second_ac, card.contactless, card.chip,
            card.service_code, card.apps, card.issuer_script, card.offline) == (
        "online_pin", 3, "dda", "approve", True, True, "220", (), False, "decline")
    assert card.applications == (CardApp("A000000333010101", "Test", 1),)


APPS = [{"aid": "A000000333010101", "label": "Debit", "priority": 1},
        {"aid": "A000000333010102", "label": "Credit", "priority": 2}]

BAD = [
    ({"cvm": "pin"}, "cvm 'pin' not one of online_pin, offline_pin, signature, no_cvm"),
    ({"pin_tries": 16}, "pin_tries must be an integer 0..15"),
    ({"pin_tries": -1}, "pin_tries must be an integer 0..15"),
    ({"pin_tries": "3"}, "pin_tries must be an integer 0..15"),
    ({"pin_tries": True}, "pin_tries must be an integer 0..15"),
    ({"oda": "cda"}, "oda 'cda' not one of dda, sda, none, bad_sda"),
    ({"second_ac": "maybe"}, "second_ac 'maybe' not one of approve, decline"),
    ({"offline": "always"}, "offline 'always' not one of decline, approve"),
    ({"contactless": "yes"}, "contactless must be true or false"),
    ({"chip": 1}, "chip must be true or false"),
    ({"issuer_script": "no"}, "issuer_script must be true or false"),
    ({"service_code": "22"}, "service_code must be 3 digits"),
    ({"service_code": 220}, "service_code must be 3 digits"),
    ({"service_code": "2x0"}, "service_code must be 3 digits"),
    ({"chip": False, "contactless": True, "service_code": "120"},
     "contactless must be false when chip is false"),
    ({"chip": False, "contactless": False}, "service_code 220 names a chip, but chip is false"),
    ({"aid": None}, "a chip card needs aid and label"),
    ({"aid": "A0000003", "label": "x"}, "aid 'A0000003' must be 5..16 bytes of hex"),
    ({"label": "A LABEL LONGER THAN 16"}, "label must be 1..16 printable ASCII"),
    ({"aid": None, "label": None, "apps": []}, r"apps: must be a list of \{aid, label"),
    ({"apps": APPS}, "apps replaces aid and label"),
    ({"aid": None, "label": None, "apps": [{"aid": "A000000333010101", "label": "D"}]},
     r"apps\[0\]: needs exactly the keys aid, label, priority"),
    ({"aid": None, "label": None, "apps": [{**APPS[0], "priority": 0}]},
     "priority must be an integer 1..15"),
    ({"aid": None, "label": None, "apps": [{**APPS[0], "aid": "XYZ"}]},
     "aid 'XYZ' must be 5..16 bytes of hex"),
    ({"aid": None, "label": None, "apps": [APPS[0], APPS[0]]}, "the same aid twice"),
    ({"aid": None, "label": None, "apps": [{**APPS[0], "aid": 123}]},
     "aid 123 must be 5..16 bytes of hex"),
    ({"chip_kind": "x"}, "unknown key 'chip_kind'"),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[m[:40] for _, m in BAD])
def test_catalog_refuses_bad_card_keys(tmp_path, changes, message):
    with pytest.raises(CatalogError, match=r"cards\[0\]: " + message):
        load_one(tmp_path, **changes)


def test_catalog_accepts_the_new_keys(tmp_path):
    card = load_one(tmp_path, aid=None, label=None, apps=APPS, cvm="signature", pin_tries=0,
                    oda="bad_sda", second_ac="decline", contactless=False, issuer_script=True,
                    service_code="601", offline="approve")
    assert (card.aid, card.label, card.offline) == ("A000000333010101", "Debit", "approve")
    assert [a.priority for a in card.applications] == [1, 2]
    stripe = load_one(tmp_path, aid=None, label=None, chip=False, contactless=False,
                      service_code="120")
    assert not stripe.chip and stripe.service_code == "120"
