"""Chip read over real APDUs against the EMV card emulator (firmware.emv.reader & co)."""
import logging
import random
import warnings
from datetime import datetime

import pytest

from firmware.emv import apdu, cryptogram, tlv
from firmware.emv.apdu import ApduError, Card
from firmware.emv.card import ENTRY_CHIP, ENTRY_CONTACTLESS, CardData, CardReadError
from firmware.emv.kernel import read_card
from firmware.emv.reader import FIELD55_TAGS, TerminalParams
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import TestCard as CatalogCard, load_catalog

WHEN = datetime(2026, 5, 1, 14, 30, 5)
UN = bytes.fromhex("A1B2C3D4")
OK = b"\x90\x00"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


class Recorder:
    """Wraps a transmit and records (command, response) pairs."""

    def __init__(self, transmit):
        self.transmit_to = transmit
        self.log: list[tuple[bytes, bytes]] = []

    def __call__(self, command: bytes) -> bytes:
        response = self.transmit_to(command)
        self.log.append((command, response))
        return response

    def ins(self) -> list[int]:
        return [c[1] for c, _ in self.log]


def read(transmit, *, amount=12345, contactless=False, params=TerminalParams()):
    return read_card(transmit, params, amount=amount, currency=156, when=WHEN,
                     unpredictable=UN, contactless=contactless)


def emulator(catalog, name, contactless=False):
    return CardEmulator(catalog.cards[name], catalog.imk_ac, contactless=contactless)


def field55(card: CardData) -> dict[str, bytes]:
    return tlv.flatten(tlv.parse(card.icc_data))


def select_name(command: bytes) -> bytes | None:
    return command[5:5 + command[4]] if command[:2] == b"\x00\xA4" else None


# --- happy paths -----------------------------------------------------------------


def test_contact_read_approve(catalog):
    test_card = catalog.cards["approve"]
    rec = Recorder(emulator(catalog, "approve").transmit)
    card = read(rec)
    assert card.pan == test_card.pan
    assert card.expiry == "3012"
    assert card.pan_seq == "01"
    assert card.aid == "A000000333010101"
    assert card.app_label == "UnionPay Debit"
    assert card.track2.startswith(test_card.pan + "=3012220")
    assert "F" not in card.track2 and "D" not in card.track2
    assert card.entry_mode == ENTRY_CHIP
    assert select_name(rec.log[0][0]) == b"1PAY.SYS.DDF01"
    # PSE, directory, SELECT, GPO, four records, GET DATA ATC and last online ATC (velocity),
    # GENERATE AC. No INTERNAL AUTHENTICATE: these TerminalParams hold no CA keys.
    assert rec.ins() == [0xA4, 0xB2, 0xB2, 0xA4, 0xA8, 0xB2, 0xB2, 0xB2, 0xB2, 0xCA, 0xCA, 0xAE]
    gen_ac = rec.log[-1][0]
    assert gen_ac[2] == 0x80  # ARQC requested


def test_field55_content_and_order(catalog):
    card = read(emulator(catalog, "approve").transmit, amount=12345)
    tags = [n.tag for n in tlv.parse(card.icc_data)]
    assert tags == list(FIELD55_TAGS)
    values = field55(card)
    assert values["9F02"].hex() == "000000012345"
    assert values["9A"].hex() == "260501"
    assert values["5F2A"].hex() == "0156"
    assert values["9F37"] == UN
    assert values["84"].hex().upper() == card.aid
    assert values["9F27"] == b"\x80"
    assert values["9F26"].hex().upper() == card.cryptogram


def test_arqc_verifies_and_detects_tampering(catalog):
    card = read(emulator(catalog, "approve").transmit, amount=12345)
    assert cryptogram.verify_arqc(catalog.imk_ac, card.pan, card.pan_seq, card.icc_data)
    nodes = tlv.parse(card.icc_data)
    altered = b"".join(tlv.encode(n.tag, bytes.fromhex("000000099999") if n.tag == "9F02"
                                  else n.value) for n in nodes)
    assert altered != card.icc_data
    assert not cryptogram.verify_arqc(catalog.imk_ac, card.pan, card.pan_seq, altered)
    assert not cryptogram.verify_arqc(catalog.imk_ac, card.pan, "02", card.icc_data)
    other_key = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    assert not cryptogram.verify_arqc(other_key, card.pan, card.pan_seq, card.icc_data)


def test_verify_arqc_rejects_malformed_or_incomplete(catalog, caplog):
    card = read(emulator(catalog, "approve").transmit)
    no_9f36 = b"".join(tlv.encode(n.tag, n.value) for n in tlv.parse(card.icc_data)
                       if n.tag != "9F36")
    with caplog.at_level(logging.WARNING, logger="kpos.emv"):
        assert not cryptogram.verify_arqc(catalog.imk_ac, card.pan, "01", no_9f36)
        assert not cryptogram.verify_arqc(catalog.imk_ac, card.pan, "01", b"\x9F\x26\x08\x01")
    assert "9F36 missing" in caplog.text
    with pytest.raises(cryptogram.CryptogramError):
        cryptogram.verify_arqc(b"\x01" * 8, card.pan, "01", card.icc_data)


def test_atc_increments_per_generate_ac(catalog):
    emu = emulator(catalog, "approve")
    first = read(emu.transmit)
    second = read(emu.transmit)
    assert emu.atc == 0x22  # each insertion starts at 0x0020 (a card already in use)
    assert field55(first)["9F36"] == b"\x00\x21"
    assert field55(second)["9F36"] == b"\x00\x22"
    assert first.cryptogram != second.cryptogram
    assert cryptogram.verify_arqc(catalog.imk_ac, second.pan, "01", second.icc_data)


def test_no_pse_falls_back_to_known_aids(catalog):
    rec = Recorder(emulator(catalog, "no_pse").transmit)
    card = read(rec)
    assert card.aid == "A000000333010102" and card.pan_seq == "00"
    assert select_name(rec.log[0][0]) == b"1PAY.SYS.DDF01"
    assert rec.log[0][1] == b"\x6A\x82"
    selects = [(select_name(c).hex().upper(), r[-2:].hex().upper())
               for c, r in rec.log[1:] if select_name(c)]
    params = TerminalParams()
    assert [aid for aid, _ in selects[:len(params.known_aids)]] == list(params.known_aids)
    assert selects[0] == ("A000000333010101", "6A82")
    assert selects[1] == ("A000000333010102", "9000")
    assert selects[-1] == ("A000000333010102", "9000")  # final selection of the chosen app
    assert cryptogram.verify_arqc(catalog.imk_ac, card.pan, card.pan_seq, card.icc_data)


def test_unsupported_aid_is_refused(catalog):
    rec = Recorder(emulator(catalog, "visa").transmit)
    with pytest.raises(CardReadError, match="no supported application"):
        read(rec, params=TerminalParams(known_aids=("A000000333010101",)))
    assert 0xA8 not in rec.ins()


def test_contactless_ppse_path(catalog):
    rec = Recorder(emulator(catalog, "approve", contactless=True).transmit)
    card = read(rec, contactless=True)
    assert select_name(rec.log[0][0]) == b"2PAY.SYS.DDF01"
    assert card.entry_mode == ENTRY_CONTACTLESS
    assert card.aid == "A000000333010101" and card.expiry == "3012"
    assert 0xAE not in rec.ins()  # qPBOC: the ARQC came back in the GPO response
    gpo = next(c for c, _ in rec.log if c[1] == 0xA8)
    assert bytes.fromhex(TerminalParams().ttq) in gpo  # PDOL asked for 9F66
    assert cryptogram.verify_arqc(catalog.imk_ac, card.pan, card.pan_seq, card.icc_data)


def test_contactless_no_ppse_falls_back(catalog):
    rec = Recorder(emulator(catalog, "no_pse", contactless=True).transmit)
    card = read(rec, contactless=True)
    assert rec.log[0][1] == b"\x6A\x82" and card.aid == "A000000333010102"


# --- failures --------------------------------------------------------------------


@pytest.mark.parametrize("contactless", [False, True])
def test_garbage_card_is_a_read_error(catalog, contactless):
    with pytest.raises(CardReadError) as info:
        read(emulator(catalog, "garbage", contactless).transmit, contactless=contactless)
    assert catalog.cards["garbage"].pan not in str(info.value)


def test_random_answers_always_end_in_card_read_error():
    for seed in range(300):
        rng = random.Random(seed)

        def transmit(_command, rng=rng):
            body = rng.randbytes(rng.randint(0, 48))
            return body + (OK if rng.random() < 0.6 else rng.randbytes(rng.randint(0, 2)))

        with pytest.raises(CardReadError):
            read(transmit)


def test_mutated_emulator_answers_never_escape(catalog):
    """Flip bytes in real card answers: the result is a CardData or a CardReadError."""
    outcomes = {"ok": 0, "error": 0}
    for seed in range(200):
        rng = random.Random(seed)
        emu = emulator(catalog, "approve", contactless=bool(seed % 2))

        def transmit(command, emu=emu, rng=rng):
            response = bytearray(emu.transmit(command))
            if len(response) > 2 and rng.random() < 0.3:
                response[rng.randrange(len(response) - 2)] = rng.randrange(256)
            return bytes(response)

        try:
            read(transmit, contactless=bool(seed % 2))
            outcomes["ok"] += 1
        except CardReadError as exc:
            assert catalog.cards["approve"].pan not in exc.reason
            outcomes["error"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0


def test_card_pulled_is_card_removed(catalog):
    emu = emulator(catalog, "approve")
    calls = []

    def transmit(command):
        calls.append(command)
        if len(calls) == 5:
            raise OSError("reader: card removed")
        return emu.transmit(command)

    with pytest.raises(CardReadError, match="card removed") as info:
        read(transmit)
    assert isinstance(info.value.__cause__, OSError)
    assert len(calls) == 5


def intercept(emu, ins, answer):
    def transmit(command):
        return answer if command[1] == ins else emu.transmit(command)
    return transmit


def test_gpo_refused_names_command_and_sw(catalog):
    transmit = intercept(emulator(catalog, "approve"), 0xA8, b"\x69\x85")
    with pytest.raises(CardReadError, match="GPO failed 6985"):
        read(transmit)


def test_aac_is_a_read_error(catalog):
    aac = tlv.encode("77", tlv.encode("9F27", b"\x00") + tlv.encode("9F36", b"\x00\x01")
                     + tlv.encode("9F26", bytes(8))) + OK
    with pytest.raises(CardReadError, match="AAC"):
        read(intercept(emulator(catalog, "approve"), 0xAE, aac))


def test_missing_pan_is_a_read_error(catalog):
    emu = emulator(catalog, "approve")

    def transmit(command):
        response = emu.transmit(command)
        if command[1] == 0xB2 and b"\x5A\x08" in response:
            nodes = tlv.parse(response[:-2])[0].children
            response = tlv.encode("70", b"".join(tlv.encode(n.tag, n.value) for n in nodes
                                                 if n.tag != "5A")) + OK
        return response

    with pytest.raises(CardReadError, match="missing tag 5A"):
        read(transmit)


def test_pan_failing_luhn_is_a_read_error(catalog):
    good = catalog.cards["approve"]
    bad = CatalogCard(**{**good.__dict__, "pan": good.pan[:-1] + "5", "name": "bad_luhn"})
    with pytest.raises(CardReadError, match="Luhn"):
        read(CardEmulator(bad, catalog.imk_ac).transmit)


def test_card_data_hides_the_pan(catalog, caplog):
    pan = catalog.cards["approve"].pan
    with caplog.at_level(logging.DEBUG):
        card = read(emulator(catalog, "approve").transmit)
    assert pan not in repr(card) and pan not in str(card)
    assert "622609******0014" in repr(card)
    assert caplog.records and pan not in caplog.text


def test_no_crypto_warnings_leak(catalog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        card = read(emulator(catalog, "approve").transmit)
        assert cryptogram.verify_arqc(catalog.imk_ac, card.pan, "01", card.icc_data)
    assert [str(w.message) for w in seen] == []


# --- APDU layer ------------------------------------------------------------------


def test_get_response_after_61xx():
    sent = []

    def transmit(command):
        sent.append(command)
        if command[1] == 0xA4:
            return b"\x61\x04"
        if command == bytes.fromhex("00C0000004"):
            return b"\x6F\x02\x84\x00" + OK
        return b"\x6D\x00"

    response = Card(transmit).exchange(apdu.select(b"1PAY.SYS.DDF01"))
    assert response.ok and response.data == b"\x6F\x02\x84\x00"
    assert [c[1] for c in sent] == [0xA4, 0xC0]


def test_chained_61xx_accumulates_data():
    answers = iter([b"\x61\x02", b"\xAA\xBB\x61\x01", b"\xCC" + OK])
    response = Card(lambda c: next(answers)).exchange(apdu.get_data("9F36"))
    assert response.data == b"\xAA\xBB\xCC" and response.sw == 0x9000


def test_resend_with_le_after_6cxx():
    sent = []

    def transmit(command):
        sent.append(command)
        return b"\x6C\x05" if command[-1] == 0x00 else b"\x9F\x36\x02\x00\x07" + OK

    data = Card(transmit).command(apdu.get_data("9F36"))
    assert data == b"\x9F\x36\x02\x00\x07"
    assert sent == [bytes.fromhex("80CA9F3600"), bytes.fromhex("80CA9F3605")]


def test_endless_61xx_is_bounded():
    with pytest.raises(ApduError, match="too many GET RESPONSE"):
        Card(lambda c: b"\x61\x01").exchange(apdu.get_data("9F36"))


def test_apdu_error_carries_command_and_sw():
    with pytest.raises(ApduError) as info:
        Card(lambda c: b"\x6A\x83").command(apdu.read_record(1, 3))
    assert info.value.command == "READ RECORD" and info.value.sw == 0x6A83
    assert str(info.value) == "READ RECORD failed 6A83"
    with pytest.raises(ApduError, match="1-byte response") as short:
        Card(lambda c: b"\x90").exchange(apdu.get_data("9F36"))
    assert short.value.sw is None
    with pytest.raises(ApduError, match="invalid status word") as bogus:
        Card(lambda c: b"\x5A\x08\x26\x09").exchange(apdu.read_record(1, 1))
    assert bogus.value.sw is None and "2609" not in str(bogus.value)


def test_command_builders():
    assert apdu.select(b"\xA0\x00").raw == bytes.fromhex("00A4040002A00000")
    assert apdu.get_processing_options(b"").raw == bytes.fromhex("80A80000028300" "00")
    assert apdu.read_record(2, 3).raw == bytes.fromhex("00B2031400")
    assert apdu.generate_ac(apdu.AC_ARQC, b"\x01").raw == bytes.fromhex("80AE80000101" "00")
    assert apdu.with_le(apdu.get_data("9F17"), 4).raw == bytes.fromhex("80CA9F1704")


# --- emulator --------------------------------------------------------------------


@pytest.mark.parametrize("command, sw", [
    (b"", "6700"), (b"\x00\xA4", "6700"), (bytes.fromhex("00A404000500"), "6700"),
    (bytes.fromhex("10A4040000"), "6E00"), (bytes.fromhex("0012000000"), "6D00"),
    (bytes.fromhex("00A4000002A000"), "6A86"), (bytes.fromhex("80A8000002830000"), "6985"),
    (bytes.fromhex("80AE8000010000"), "6985"), (bytes.fromhex("80CA9F7F00"), "6A88"),
    (bytes.fromhex("00B2010C00"), "6985"),
])
def test_emulator_answers_bad_commands_with_status(catalog, command, sw):
    response = emulator(catalog, "approve").transmit(command)
    assert response.hex().upper() == sw


def test_emulator_get_data_and_atr(catalog):
    emu = emulator(catalog, "approve")
    assert emu.atr[0] == 0x3B and emulator(catalog, "approve", True).atr != emu.atr
    assert emu.transmit(bytes.fromhex("80CA9F3600")) == bytes.fromhex("9F36020020") + OK
    assert emu.transmit(bytes.fromhex("80CA9F1700")) == bytes.fromhex("9F170103") + OK


def test_emulator_gpo_checks_pdol_length(catalog):
    emu = emulator(catalog, "approve")
    assert emu.transmit(apdu.select(bytes.fromhex("A000000333010101")).raw)[-2:] == OK
    assert emu.transmit(apdu.get_processing_options(b"\x00").raw) == b"\x67\x00"


def test_emulator_expiry_has_last_day(catalog):
    emu = emulator(catalog, "approve")
    for command in (apdu.select(bytes.fromhex("A000000333010101")),
                    apdu.get_processing_options(bytes(8))):
        assert emu.transmit(command.raw)[-2:] == OK
    record = emu.transmit(apdu.read_record(1, 2).raw)
    assert tlv.find(tlv.parse(record[:-2]), "5F24").value.hex() == "301231"
