"""Offline data authentication: the terminal (emv/oda) against the simulator's test PKI.

Round trips through real RSA: SDA and DDA pass; each broken certificate, signature or
missing tag sets its TVR bit and nothing raises; the CAPK file is checked at load; the
shipped config/capk.toml verifies CardPki's certificates.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric import rsa

from firmware.emv import oda, tlv
from firmware.emv.oda import CapkError, OdaError, capk_checksum, load_capks, perform_oda
from firmware.emv.tvr import Tsi, Tvr
from firmware.sim.emv_pki import TEST_CAPK_INDEX, TEST_RID, VISA_TEST_RID, CardPki, ca_public_key

REPO = Path(__file__).resolve().parent.parent
PAN = "6221260000000007"
OTHER_PAN = "6221260000000015"  # same BIN, another account
AID = "A000000333010101"
TODAY = date(2026, 5, 1)
UN = bytes.fromhex("A1B2C3D4")
DYNAMIC = bytes.fromhex("08") + bytes.fromhex("0102030405060708")  # length + ICC Dynamic Number
AIP_DDA, AIP_SDA, AIP_NONE = bytes.fromhex("7C00"), bytes.fromhex("5C00"), bytes.fromhex("1C00")
CAPS_BOTH, CAPS_SDA_ONLY = bytes.fromhex("E0E8C0"), bytes.fromhex("E0E880")


def records(pan: str = PAN) -> list[tuple[int, bytes]]:
    first = tlv.encode("5A", bytes.fromhex(pan)) + tlv.encode("5F24", bytes.fromhex("301231"))
    second = tlv.encode("8C", bytes.fromhex("9F02069F0306"))
    return [(1, tlv.encode("70", first)), (2, tlv.encode("70", second))]


STATIC = oda.static_data(records(), AIP_DDA, None)


@dataclass
class Chip:
    """A card's ODA data and a fake INTERNAL AUTHENTICATE that signs with its ICC key."""

    pki: CardPki
    tags: dict[str, bytes]
    received: list[bytes] = field(default_factory=list)
    response: str = "80"  # "80" (format 1) or "77" (format 2)
    sdad_mask: int = 0  # XOR into the SDAD's last-but-one byte to tamper with it

    def internal_authenticate(self, ddol_data: bytes) -> bytes:
        self.received.append(ddol_data)
        sdad = bytearray(self.pki.sign_dynamic(ddol_data, DYNAMIC))
        sdad[-2] ^= self.sdad_mask
        if self.response == "77":
            return tlv.encode("77", tlv.encode("9F4B", bytes(sdad)))
        return tlv.encode("80", bytes(sdad))


def chip(pan: str = PAN, *, cert_pan: str | None = None, static: bytes = STATIC,
         rid: str = TEST_RID, **pki_options) -> Chip:
    pki = CardPki(cert_pan or pan, "3012", rid=rid, **pki_options)
    tags = {"5A": bytes.fromhex(pan), **pki.issuer_tags(), **pki.sda_tags(static),
            **pki.dda_tags(static)}
    return Chip(pki, tags)


CAPKS = {(TEST_RID, TEST_CAPK_INDEX): ca_public_key()}


def run(card: Chip, *, aip: bytes = AIP_DDA, caps: bytes = CAPS_BOTH, static=STATIC,
        capks=CAPKS, aid: str = AID, today: date = TODAY) -> tuple[str, Tvr, Tsi]:
    tvr, tsi = Tvr(), Tsi()
    method = perform_oda(capks=capks, aid=aid, aip=aip, card=card.tags, static=static,
                         terminal_caps=caps, internal_authenticate=card.internal_authenticate,
                         terminal_values={"9F37": UN}, today=today, tvr=tvr, tsi=tsi)
    return method, tvr, tsi


# --- passes ---------------------------------------------------------------------------

def test_dda_passes_and_sends_the_unpredictable_number():
    card = chip()
    method, tvr, tsi = run(card)
    assert (method, tvr.hex(), tsi.names()) == ("dda", "0000000000", ["oda_performed"])
    assert card.received[-1] == UN


def test_dda_accepts_the_format_2_response():
    card = chip()
    card.response = "77"
    method, tvr, _ = run(card)
    assert (method, tvr.hex()) == ("dda", "0000000000")


def test_sda_passes_and_is_marked_selected():
    card = chip()
    method, tvr, tsi = run(card, aip=AIP_SDA)
    assert (method, tvr.names(), tsi.names()) == ("sda", ["sda_selected"], ["oda_performed"])
    assert card.received == []


def test_terminal_without_dda_falls_back_to_sda():
    card = chip()
    method, tvr, _ = run(card, caps=CAPS_SDA_ONLY)
    assert (method, tvr.names(), card.received) == ("sda", ["sda_selected"], [])


@pytest.mark.parametrize("aip, caps", [(AIP_NONE, CAPS_BOTH), (AIP_DDA, bytes.fromhex("E0E800")),
                                       (bytes.fromhex("1C01"), CAPS_BOTH), (b"", CAPS_BOTH)])
def test_no_common_method_is_not_performed(aip, caps):
    method, tvr, tsi = run(chip(), aip=aip, caps=caps)
    assert (method, tvr.names(), tsi.names()) == ("none", ["oda_not_performed"], [])


@pytest.mark.parametrize("rid", [TEST_RID, VISA_TEST_RID])
def test_shipped_capk_file_verifies_the_test_pki(rid):
    capks = load_capks(REPO / "config" / "capk.toml")
    assert capks[(rid, TEST_CAPK_INDEX)] == ca_public_key(rid)
    card = chip(rid=rid)
    for aip in (AIP_DDA, AIP_SDA):
        method, tvr, _ = run(card, aip=aip, capks=capks, aid=rid + "1010")
        assert not {"sda_failed", "dda_failed"} & set(tvr.names()), method


# --- failures set their TVR bits ------------------------------------------------------

def test_tampered_static_data_fails_sda_and_dda():
    tampered = STATIC.replace(bytes.fromhex("301231"), bytes.fromhex("351231"))
    assert tampered != STATIC
    assert run(chip(), aip=AIP_SDA, static=tampered)[1].names() == ["sda_failed", "sda_selected"]
    assert run(chip(), static=tampered)[1].names() == ["dda_failed"]


def test_tampered_sdad_fails_dda():
    card = chip()
    card.sdad_mask = 0x01
    method, tvr, tsi = run(card)
    assert (method, tvr.names(), tsi.names()) == ("dda", ["dda_failed"], ["oda_performed"])


def test_icc_certificate_for_another_pan_fails_dda():
    method, tvr, _ = run(chip(cert_pan=OTHER_PAN))
    assert (method, tvr.names()) == ("dda", ["dda_failed"])


def test_expired_issuer_certificate_fails():
    card = chip(issuer_cert_expiry="0426")  # April 2026; today is May 2026
    assert run(card)[1].names() == ["dda_failed"]
    assert run(card, aip=AIP_SDA)[1].names() == ["sda_failed", "sda_selected"]
    assert run(card, today=date(2026, 4, 30))[1].names() == []  # valid through its month


def test_expired_icc_certificate_fails_dda():
    card = chip()
    assert run(card, today=date(2031, 1, 1))[1].names() == ["dda_failed"]


@pytest.mark.parametrize("capks, aid", [({}, AID), (CAPKS, "A000000003101001")])
def test_unknown_ca_key_fails_without_data_missing(capks, aid):
    assert run(chip(), capks=capks, aid=aid)[1].names() == ["dda_failed"]


def test_unknown_ca_key_index_fails():
    card = chip()
    card.tags["8F"] = bytes([TEST_CAPK_INDEX - 1])
    assert run(card)[1].names() == ["dda_failed"]


def test_expired_ca_key_fails():
    key = ca_public_key()
    expired = {(TEST_RID, TEST_CAPK_INDEX): oda.CaPublicKey(
        key.rid, key.index, key.modulus, key.exponent, date(2026, 4, 30))}
    assert run(chip(), capks=expired)[1].names() == ["dda_failed"]


@pytest.mark.parametrize("aip, tag, failed", [
    (AIP_DDA, "90", "dda_failed"), (AIP_SDA, "90", "sda_failed"), (AIP_SDA, "93", "sda_failed"),
    (AIP_DDA, "9F46", "dda_failed"), (AIP_DDA, "9F47", "dda_failed"), (AIP_DDA, "8F", "dda_failed"),
    (AIP_DDA, "9F32", "dda_failed"),
])
def test_missing_tag_sets_icc_data_missing(aip, tag, failed):
    card = chip()
    del card.tags[tag]
    method, tvr, _ = run(card, aip=aip)
    assert failed in tvr.names() and "icc_data_missing" in tvr.names()
    assert card.received == []


def test_missing_remainder_fails_without_data_missing():
    card = chip()
    del card.tags["92"]
    assert run(card)[1].names() == ["dda_failed"]


def test_ddol_without_unpredictable_number_fails_before_the_card_is_asked():
    card = chip()
    card.tags["9F49"] = bytes.fromhex("9F3602")
    assert run(card)[1].names() == ["dda_failed"]
    assert card.received == []


def test_card_ddol_is_followed():
    card = chip()
    card.tags["9F49"] = bytes.fromhex("9F37049F1A02")
    assert run(card)[1].names() == []
    assert card.received == [UN + bytes(2)]  # 9F1A not in terminal_values: zeros


@pytest.mark.parametrize("answer", [b"", b"\x80", tlv.encode("77", tlv.encode("9F26", bytes(8))),
                                    tlv.encode("9F4B", bytes(128))])
def test_unusable_internal_authenticate_answer_fails_dda(answer):
    card = chip()
    card.internal_authenticate = lambda data: answer
    assert run(card)[1].names() == ["dda_failed"]


def test_card_gone_during_internal_authenticate_propagates():
    card = chip()

    def gone(data):
        raise OSError("card removed")
    card.internal_authenticate = gone
    with pytest.raises(OSError):
        run(card)


def test_unusable_static_records_fail_the_chosen_method():
    assert run(chip(), static=None)[1].names() == ["dda_failed"]


def test_logs_name_method_and_reason_but_not_the_pan(caplog):
    caplog.set_level(logging.INFO, logger="kpos.emv.oda")
    run(chip(cert_pan=OTHER_PAN))
    run(chip())
    text = caplog.text
    assert "DDA failed: ICC certificate: PAN does not match" in text and "DDA ok" in text
    for secret in (PAN, OTHER_PAN, PAN[-10:]):
        assert secret not in text


ODA_TAGS = ("8F", "90", "92", "9F32", "93", "9F46", "9F47", "9F48", "5A")


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(ODA_TAGS), st.binary(max_size=300), st.sampled_from([AIP_DDA, AIP_SDA]))
def test_hostile_tag_values_never_raise(tag, value, aip):
    card = chip()
    unchanged = card.tags[tag] == value or (tag == "93" and aip == AIP_DDA) or (
        tag in ("9F46", "9F47", "9F48") and aip == AIP_SDA)
    card.tags[tag] = value
    method, tvr, _ = run(card, aip=aip)
    assert method == {AIP_DDA: "dda", AIP_SDA: "sda"}[aip]
    assert tvr.is_set(f"{method}_failed") != unchanged


# --- certificate fields, with frames built here from Book 2 (own keys) -----------------

@dataclass(frozen=True)
class Key:
    modulus: bytes
    exponent: int
    d: int

    def sign(self, body: bytes, extra: bytes = b"") -> bytes:
        """6A || body || SHA-1(body || extra) || BC, raised to d."""
        plain = b"\x6A" + body + hashlib.sha1(body + extra).digest() + b"\xBC"
        n = int.from_bytes(self.modulus, "big")
        return pow(int.from_bytes(plain, "big"), self.d, n).to_bytes(len(plain), "big")


def new_key(bits: int, exponent: int = 3) -> Key:
    numbers = rsa.generate_private_key(public_exponent=exponent, key_size=bits).private_numbers()
    return Key(numbers.public_numbers.n.to_bytes(bits // 8, "big"), exponent, numbers.d)


@pytest.fixture(scope="module")
def own_pki() -> tuple[Key, Key]:
    return new_key(1152), new_key(1024)


@pytest.mark.parametrize("hash_algo, pk_algo, issuer_id, passes", [
    (1, 1, "622126FF", True), (2, 1, "622126FF", False), (1, 2, "622126FF", False),
    (1, 1, "62FFFFFF", False), (1, 1, "622127FF", False), (1, 1, "622126AF", False),
])
def test_issuer_certificate_fields(own_pki, hash_algo, pk_algo, issuer_id, passes):
    ca, issuer = own_pki
    room = len(ca.modulus) - 36
    body = (bytes([2]) + bytes.fromhex(issuer_id + "1249" + "000001")
            + bytes([hash_algo, pk_algo, len(issuer.modulus), 1]) + issuer.modulus[:room])
    remainder = issuer.modulus[room:]
    card = Chip(CardPki(PAN, "3012"), {
        "5A": bytes.fromhex(PAN), "8F": b"\x01", "90": ca.sign(body, remainder + b"\x03"),
        "92": remainder, "9F32": b"\x03",
        "93": issuer.sign(bytes.fromhex("0301DAC1") + b"\xBB" * (len(issuer.modulus) - 26),
                          STATIC)})
    capks = {(TEST_RID, 1): oda.CaPublicKey(TEST_RID, 1, ca.modulus, 3, None)}
    assert run(card, aip=AIP_SDA, capks=capks)[1].is_set("sda_failed") is not passes


@pytest.mark.parametrize("body, reason", [
    (bytes.fromhex("050103112233") + b"\xBB" * 100, None),
    (bytes.fromhex("050203112233") + b"\xBB" * 100, "dynamic signature: unknown hash algorithm"),
    (bytes.fromhex("050103112233") + b"\xBB" * 99 + b"\x00", "dynamic signature: bad padding"),
    (bytes.fromhex("050168112233") + b"\xBB" * 100, "dynamic signature: dynamic data too long"),
    (bytes.fromhex("040103112233") + b"\xBB" * 100, "dynamic signature: wrong format"),
])
def test_sdad_fields(own_pki, body, reason):
    _, icc = own_pki
    sdad = icc.sign(body, UN)
    if reason is None:
        assert oda.verify_sdad(sdad, icc.modulus, icc.exponent, UN) == bytes.fromhex("112233")
        return
    with pytest.raises(OdaError) as err:
        oda.verify_sdad(sdad, icc.modulus, icc.exponent, UN)
    assert err.value.reason == reason


# --- static data (Book 3 10.3) --------------------------------------------------------

def test_static_data_takes_template_values_and_whole_high_sfi_records():
    (_, first), (_, second) = records()
    assert oda.static_data([(1, first), (11, second)], AIP_DDA, None) == (
        tlv.parse(first)[0].value + second)
    assert oda.static_data([(1, first)], AIP_DDA, b"\x82") == tlv.parse(first)[0].value + AIP_DDA


@pytest.mark.parametrize("recs, tag_list, reason", [
    ([(1, tlv.encode("77", b""))], None, "record in SFI 1 is not a 70 template"),
    ([(2, b"\x70\x05\x5A")], None, "record in SFI 2 is not TLV"),
    ([(3, tlv.encode("70", b"") * 2)], None, "record in SFI 3 is not a 70 template"),
    ([], b"\x82\x9F\x36", "SDA tag list names tags other than the AIP"),
    ([], b"", "SDA tag list names tags other than the AIP"),
])
def test_static_data_rejects(recs, tag_list, reason):
    with pytest.raises(OdaError) as err:
        oda.static_data(recs, AIP_DDA, tag_list)
    assert err.value.reason == reason


# --- CA public key file ---------------------------------------------------------------

def capk_entry(**changes) -> dict:
    key = ca_public_key()
    entry = {"rid": key.rid, "index": f"0x{key.index:02X}", "modulus": key.modulus.hex(),
             "exponent": key.exponent, "expiry": "2049-12-31",
             "checksum": capk_checksum(key.rid, key.index, key.modulus, key.exponent).hex()}
    entry.update(changes)
    return entry


def write_capks(tmp_path: Path, *entries: dict) -> Path:
    lines = []
    for entry in entries:
        lines.append("[[capk]]")
        lines += [f"{k} = {v!r}" if isinstance(v, (int, float)) else f'{k} = "{v}"'
                  for k, v in entry.items()]
    path = tmp_path / "capk.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_capk_file_loads_int_or_hex_index(tmp_path):
    key = ca_public_key()
    other = capk_entry(index=7, checksum=capk_checksum(key.rid, 7, key.modulus, 3).hex())
    keys = load_capks(write_capks(tmp_path, capk_entry(), other))
    assert set(keys) == {(TEST_RID, TEST_CAPK_INDEX), (TEST_RID, 7)}
    assert keys[(TEST_RID, 7)].expiry == date(2049, 12, 31)


@pytest.mark.parametrize("changes, message", [
    ({"checksum": "00" * 20}, "[[capk]] #2: checksum: does not match"),
    ({"modulus": "XY"}, "[[capk]] #2: modulus: not hex"),
    ({"index": "0xZZ"}, "[[capk]] #2: index: not hex"),
    ({"index": 256}, "[[capk]] #2: index: must be 0..255"),
    ({"exponent": 5}, "[[capk]] #2: exponent: must be 3 or 65537"),
    ({"exponent": 3.0}, "[[capk]] #2: exponent: must be 3 or 65537"),
    ({"rid": "A0000003"}, "[[capk]] #2: rid: must be 10 hex digits"),
    ({"expiry": "2049-13-01"}, "[[capk]] #2: expiry: must be a date"),
    ({"colour": "red"}, "[[capk]] #2: unknown key colour"),
    ({}, "[[capk]] #2: duplicate RID A000000333 index F8"),
])
def test_capk_file_errors_name_file_and_entry(tmp_path, changes, message):
    path = write_capks(tmp_path, capk_entry(), capk_entry(**changes))
    with pytest.raises(CapkError) as err:
        load_capks(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_capk_file_must_be_toml(tmp_path):
    path = tmp_path / "capk.toml"
    path.write_text("[[capk]\n")
    with pytest.raises(CapkError, match="capk.toml"):
        load_capks(path)
