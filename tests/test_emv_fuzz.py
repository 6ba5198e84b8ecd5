"""Hostile card answers: hypothesis fuzzing of the BER-TLV parser, DOLs and the chip read.

Properties: tlv.parse on any bytes returns or raises TlvError; parse(encode(x)) == x for
well-formed trees; build_dol fills exactly the DOL's lengths by the Book 3 5.4 rules; and
read_card against an emulator whose answers are mutated (flipped, cut, extended, wrong SW,
wrong length bytes, 61xx/6Cxx detours) ends in CardData or CardReadError, within a fixed
number of APDUs. Derandomized with no example database, so every run tries the same cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.cardsafe import luhn_ok
from firmware.emv import kernel, reader, tlv
from firmware.emv.apdu import MAX_GET_RESPONSE
from firmware.emv.card import CardData, CardReadError
from firmware.emv.kernel import read_card
from firmware.emv.reader import TerminalParams
from firmware.emv.tlv import Tlv, TlvError
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import TestCard as CatalogCard, load_catalog

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WHEN = datetime(2026, 5, 1, 14, 30, 5)
UN = bytes.fromhex("A1B2C3D4")
PARAMS = TerminalParams()
# Worst case of the chip read: PSE select, every directory record, every known AID, the
# final select, GPO, every AFL record, GET DATA of ATC / last online ATC / PIN try counter,
# INTERNAL AUTHENTICATE and GENERATE AC; each command may take a 6Cxx resend and
# MAX_GET_RESPONSE GET RESPONSE rounds.
COMMANDS_MAX = (1 + reader.MAX_DIRECTORY_RECORDS + len(PARAMS.known_aids) + 1 + 1
                + kernel.MAX_AFL_RECORDS + 3 + 1 + 1)
TRANSMITS_MAX = COMMANDS_MAX * (2 + MAX_GET_RESPONSE)
LENGTH_BYTES = (0x00, 0x01, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0xFE, 0xFF)
STATUS_WORDS = (0x9000, 0x6F00, 0x6A83, 0x6A82, 0x6A81, 0x6985, 0x6283, 0x6700, 0x6D00,
                0x6100, 0x6110, 0x6C00, 0x6C05, 0x6CFF, 0x6300, 0x9001, 0x0000, 0xFFFF)

CATALOG = load_catalog()


# --- strategies: tags, trees, DOLs -------------------------------------------------

def _first_bytes(multi: bool, constructed: bool | None) -> list[int]:
    """Possible first tag bytes: 00 and FF are padding, low bits 1F announce more bytes."""
    return [b for b in range(0x01, 0xFF) if (b & 0x1F == 0x1F) == multi
            and (constructed is None or bool(b & 0x20) == constructed)]


def _tag_bytes(constructed: bool | None) -> st.SearchStrategy[bytes]:
    lead = st.sampled_from(_first_bytes(True, constructed))
    one = st.sampled_from(_first_bytes(False, constructed)).map(lambda b: bytes([b]))
    two = st.tuples(lead, st.integers(0x00, 0x7F)).map(bytes)
    three = st.tuples(lead, st.integers(0x80, 0xFF), st.integers(0x00, 0x7F)).map(bytes)
    return st.one_of(one, two, three)


def tags(constructed: bool | None = None) -> st.SearchStrategy[str]:
    return _tag_bytes(constructed).map(lambda raw: raw.hex().upper())


# Values 0..300 bytes: short ones often, and lengths around the 81 / 82 length forms.
values = st.one_of(
    st.binary(max_size=16),
    st.sampled_from([127, 128, 129, 255, 256, 257, 300]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n)),
    st.integers(0, 300).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)


def template(tag: str, children: list[Tlv]) -> Tlv:
    return Tlv(tag, tlv.encode_nodes(children), tuple(children))


primitive_nodes = st.builds(Tlv, tags(constructed=False), values)
trees = st.recursive(
    primitive_nodes,
    lambda kids: st.builds(template, tags(constructed=True), st.lists(kids, max_size=4)),
    max_leaves=12,
)
forests = st.lists(trees, min_size=1, max_size=4)
padding = st.binary(max_size=3).map(lambda raw: bytes(0xFF if b & 1 else 0x00 for b in raw))


def dol_bytes(dol: list[tuple[str, int]]) -> bytes:
    out = b""
    for tag, length in dol:
        out += bytes.fromhex(tag) + (bytes([length]) if length < 0x80 else bytes([0x81, length]))
    return out


dols = st.lists(st.tuples(st.one_of(tags(), st.sampled_from(sorted(tlv.NUMERIC_TAGS
                                                                   | tlv.CN_TAGS))),
                          st.integers(0, 255)), max_size=12)


def shape(nodes) -> list:
    """Structure of a parse: tags and primitive values (template values may hold padding)."""
    return [(n.tag, shape(n.children)) if n.children is not None else (n.tag, n.value)
            for n in nodes]


# --- TLV parser ----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
def test_parse_arbitrary_bytes_returns_or_raises_tlv_error(data):
    try:
        nodes = tlv.parse(data)
    except TlvError as exc:
        assert 0 <= exc.offset <= len(data)
        assert f"offset {exc.offset}" in str(exc)
    else:  # whatever parsed re-encodes to the same structure
        assert shape(tlv.parse(tlv.encode_nodes(nodes))) == shape(nodes)
        assert all(isinstance(n, Tlv) for n in nodes)


@FUZZ
@given(forests, st.data())
def test_mutated_encodings_return_or_raise_tlv_error(nodes, data):
    raw = bytearray(tlv.encode_nodes(nodes))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        parsed = tlv.parse(bytes(raw[:cut]))
    except TlvError as exc:
        assert 0 <= exc.offset <= cut
    else:
        assert shape(tlv.parse(tlv.encode_nodes(parsed))) == shape(parsed)


@FUZZ
@given(forests, padding, padding)
def test_parse_encode_round_trip(nodes, before, after):
    encoded = tlv.encode_nodes(nodes)
    assert tlv.parse(encoded) == nodes
    assert tlv.parse(before + encoded + after) == nodes
    assert tlv.encode_nodes(tlv.parse(encoded)) == encoded


@FUZZ
@given(tags(constructed=False), values)
def test_encode_uses_minimal_length_forms(tag, value):
    encoded = tlv.encode(tag, value)
    header = encoded[len(bytes.fromhex(tag)):len(encoded) - len(value)]
    expected = (bytes([len(value)]) if len(value) < 0x80 else
                b"\x81" + bytes([len(value)]) if len(value) < 0x100 else
                b"\x82" + len(value).to_bytes(2, "big"))
    assert header == expected
    assert tlv.parse(encoded) == [Tlv(tag, value)]


@pytest.mark.parametrize("tag", ["00", "FF", "FF01", "0001", "9F", "9F80", "1F808001", "9F2601"])
def test_encode_refuses_tags_parse_cannot_read_back(tag):
    with pytest.raises(TlvError):
        tlv.encode(tag, b"\x01")


# --- Data Object Lists -------------------------------------------------------------


@FUZZ
@given(dols, st.dictionaries(st.sampled_from(["9F02", "5F2A", "5A", "9F20", "95", "9F37",
                                              "9A", "9F1A", "70", "DF01"]),
                             st.binary(max_size=300)))
def test_build_dol_fills_exactly_and_by_the_rules(dol, given_values):
    assert tlv.parse_dol(dol_bytes(dol)) == dol
    built = tlv.build_dol(dol, given_values)
    assert len(built) == tlv.dol_length(dol) == sum(length for _, length in dol)
    pos = 0
    for tag, length in dol:
        chunk, pos = built[pos:pos + length], pos + length
        value = given_values.get(tag)
        if value is None or int(tag[:2], 16) & 0x20:
            assert chunk == bytes(length)
        elif tag in tlv.NUMERIC_TAGS:
            assert chunk == value[max(0, len(value) - length):].rjust(length, b"\x00")
        else:
            pad = b"\xFF" if tag in tlv.CN_TAGS else b"\x00"
            assert chunk == value[:length].ljust(length, pad)
    split = tlv.split_dol(dol, built)
    assert set(split) == {tag for tag, _ in dol}
    first = {}
    for tag, length in dol:
        first.setdefault(tag, length)
    assert {tag: len(v) for tag, v in split.items()} == first


@FUZZ
@given(st.binary(max_size=80))
def test_parse_dol_arbitrary_bytes(data):
    try:
        dol = tlv.parse_dol(data)
    except TlvError as exc:
        assert 0 <= exc.offset <= len(data)
    else:
        assert all(0 <= length <= tlv.MAX_DOL_ITEM for _, length in dol)
        assert len(tlv.build_dol(dol, {})) == tlv.dol_length(dol)


# --- the chip read against mutated card answers --------------------------------------


@dataclass(frozen=True)
class Mutation:
    at: int  # which transmit (0-based) it hits
    kind: str
    pick: int  # position choice, reduced modulo what is there
    arg: int
    extra: bytes = b""

    def apply(self, response: bytes) -> bytes:
        data, sw = response[:-2], response[-2:]
        if self.kind == "flip" and data:
            i = self.pick % len(data)
            return data[:i] + bytes([data[i] ^ (self.arg or 1)]) + data[i + 1:] + sw
        if self.kind == "truncate":
            return response[:self.pick % (len(response) + 1)]
        if self.kind == "extend":
            return data + self.extra + sw
        if self.kind == "sw":
            return data + self.arg.to_bytes(2, "big")
        if self.kind == "length":
            offsets = length_offsets(data)
            if offsets:
                i = offsets[self.pick % len(offsets)]
                return data[:i] + bytes([self.arg & 0xFF]) + data[i + 1:] + sw
        if self.kind == "resize":
            return resized(data, self.pick, self.extra) + sw
        return response


def resized(data: bytes, pick: int, extra: bytes) -> bytes:
    """Well-formed TLV with one primitive value grown by `extra` (or halved when empty)."""
    try:
        nodes = tlv.parse(data)
    except TlvError:
        return data
    leaves = _leaves(nodes)
    if not leaves:
        return data
    target = leaves[pick % len(leaves)]

    def rebuild(nodes):
        out = []
        for node in nodes:
            if node is target:
                value = node.value + extra if extra else node.value[:len(node.value) // 2]
                out.append(Tlv(node.tag, value))
            elif node.children is not None:
                out.append(template(node.tag, rebuild(node.children)))
            else:
                out.append(node)
        return out

    return tlv.encode_nodes(rebuild(nodes))


def _leaves(nodes) -> list[Tlv]:
    out = []
    for node in nodes:
        out += _leaves(node.children) if node.children is not None else [node]
    return out


def length_offsets(data: bytes) -> list[int]:
    """Offsets of the first length byte of every object in (minimally encoded) TLV data."""
    try:
        nodes = tlv.parse(data)
    except TlvError:
        return []
    out: list[int] = []

    def walk(nodes, pos):
        for node in nodes:
            tag_len = len(bytes.fromhex(node.tag))
            header = len(tlv.encode(node.tag, node.value)) - len(node.value)
            out.append(pos + tag_len)
            if node.children:
                walk(node.children, pos + header)
            pos += header + len(node.value)

    walk(nodes, 0)
    return out


mutations = st.one_of(
    st.builds(Mutation, st.integers(0, 12), st.just("flip"), st.integers(0, 400),
              st.integers(0, 255)),
    st.builds(Mutation, st.integers(0, 12), st.just("truncate"), st.integers(0, 400),
              st.just(0)),
    st.builds(Mutation, st.integers(0, 12), st.just("extend"), st.just(0), st.just(0),
              st.one_of(st.binary(min_size=1, max_size=8), st.binary(min_size=250,
                                                                      max_size=300))),
    st.builds(Mutation, st.integers(0, 12), st.just("sw"), st.just(0),
              st.one_of(st.sampled_from(STATUS_WORDS), st.integers(0, 0xFFFF))),
    st.builds(Mutation, st.integers(0, 12), st.just("length"), st.integers(0, 64),
              st.one_of(st.sampled_from(LENGTH_BYTES), st.integers(0, 255))),
    # Still well-formed TLV, but one value out of its EMV size (or cut in half).
    st.builds(Mutation, st.integers(0, 12), st.just("resize"), st.integers(0, 64), st.just(0),
              st.one_of(st.just(b""), st.binary(min_size=1, max_size=4),
                        st.binary(min_size=30, max_size=300))),
    # T=0 detours: "61xx, then GET RESPONSE" and "6Cxx, then resend with that Le".
    st.builds(Mutation, st.integers(0, 12), st.sampled_from(["61", "6C"]), st.just(0),
              st.just(0)),
)


class HostileCard:
    """The emulator behind a transmit that applies mutations and counts APDUs."""

    def __init__(self, name: str, contactless: bool, plan: list[Mutation]):
        self.emulator = CardEmulator(CATALOG.cards[name], CATALOG.imk_ac,
                                     contactless=contactless)
        self.plan = plan
        self.sent = 0
        self.instructions: list[int] = []  # INS byte of every command
        self._held: bytes | None = None  # response waiting for GET RESPONSE

    def transmit(self, command: bytes) -> bytes:
        index, self.sent = self.sent, self.sent + 1
        self.instructions.append(command[1])
        assert self.sent <= TRANSMITS_MAX, "chip read is not bounded"
        if self._held is not None and command[:2] == b"\x00\xC0":
            response, self._held = self._held, None
        else:
            self._held = None
            detour = next((m.kind for m in self.plan if m.at == index
                           and m.kind in ("61", "6C")), None)
            if detour == "6C":  # the card wants the command again with the exact Le
                return b"\x6C\x00"
            response = self.emulator.transmit(command)
            if detour == "61" and len(response) > 2:
                self._held = response
                return b"\x61" + bytes([(len(response) - 2) & 0xFF])
        for mutation in self.plan:
            if mutation.at == index:
                response = mutation.apply(response)
        return response


def check_outcome(card: HostileCard, contactless: bool) -> str:
    """Read the card; CardData or CardReadError are the only acceptable endings."""
    pan = card.emulator.card.pan
    try:
        result = read_card(card.transmit, PARAMS, amount=12345, currency=156, when=WHEN,
                           unpredictable=UN, contactless=contactless)
    except CardReadError as exc:
        assert exc.reason and pan not in exc.reason
        return "error"
    assert isinstance(result, CardData)
    assert luhn_ok(result.pan) and 12 <= len(result.pan) <= 19
    assert result.track2.split("=", 1)[0] == result.pan and len(result.track2) <= 37
    assert len(result.expiry) == 4 and result.expiry.isdigit()
    assert result.pan_seq is None or (len(result.pan_seq) == 2 and result.pan_seq.isdigit())
    assert len(result.cryptogram) == 16 and len(result.app_label) <= 16
    assert len(result.icc_data) <= 999 and tlv.find(tlv.parse(result.icc_data), "9F26")  # field 55
    return "ok"


@FUZZ
@given(st.sampled_from(["approve", "visa", "no_pse"]), st.booleans(),
       st.lists(mutations, min_size=1, max_size=3))
def test_mutated_card_answers_end_in_card_data_or_read_error(name, contactless, plan):
    card = HostileCard(name, contactless, plan)
    check_outcome(card, contactless)
    assert 1 <= card.sent <= TRANSMITS_MAX


@FUZZ
@given(st.booleans(), st.data())
def test_random_card_answers_end_in_read_error(contactless, data):
    sent = []

    def transmit(command):
        sent.append(command)
        assert len(sent) <= TRANSMITS_MAX, "chip read is not bounded"
        body = data.draw(st.binary(max_size=40))
        sw = data.draw(st.one_of(st.sampled_from(STATUS_WORDS), st.integers(0, 0xFFFF)))
        return data.draw(st.sampled_from([body + sw.to_bytes(2, "big"), body[:1]]))

    with pytest.raises(CardReadError):
        read_card(transmit, PARAMS, amount=1, currency=156, when=WHEN, unpredictable=UN,
                  contactless=contactless)
    assert sent


def test_unmutated_hostile_card_reads_and_detours_are_followed():
    """The harness itself: no mutation reads fine; 61xx and 6Cxx detours still read fine."""
    for plan in ([], [Mutation(0, "61", 0, 0)], [Mutation(4, "6C", 0, 0)]):
        card = HostileCard("approve", False, plan)
        assert check_outcome(card, False) == "ok"
        assert card.sent == 12 + len(plan)
    assert length_offsets(tlv.encode("70", tlv.encode("5A", b"\x01") + tlv.encode(
        "9F02", bytes(200)))) == [1, 4, 8]


# Findings of this file, kept as fixed cases. Contact "approve" transmits (no CA keys, so
# no INTERNAL AUTHENTICATE): 0 SELECT PSE, 1-2 READ RECORD directory, 3 SELECT AID, 4 GPO,
# 5-8 READ RECORD, 9-10 GET DATA ATC and last online ATC, 11 GENERATE AC.
FOUND = [
    ([Mutation(6, "resize", 3, 0, b"\x01")], "malformed tag 5F34"),  # PSN 0101 -> field 23
    ([Mutation(5, "resize", 1, 0, bytes(240))], "oversized record"),
    ([Mutation(11, "resize", 3, 0, bytes(40))], "malformed tag 9F10"),  # IAD over 32 bytes
    ([Mutation(6, "resize", 0, 0, b"")], "PAN fails the Luhn check"),  # 8 digits
]


@pytest.mark.parametrize("plan, reason", FOUND, ids=[r for _, r in FOUND])
def test_found_defects_are_read_errors(plan, reason):
    card = HostileCard("approve", False, plan)
    with pytest.raises(CardReadError) as info:
        read_card(card.transmit, PARAMS, amount=100, currency=156, when=WHEN,
                  unpredictable=UN)
    assert info.value.reason == reason


def test_long_label_is_cut_to_sixteen():
    card = HostileCard("approve", False, [Mutation(3, "resize", 1, 0, b" PLATINUM REWARDS")])
    assert check_outcome(card, False) == "ok"


@pytest.mark.parametrize("change, reason", [
    # 20 digits, Luhn-valid (no ODA: the test PKI cannot certify such a PAN)
    ({"pan": "62260900000000000014", "oda": "none"}, "malformed tag 5A"),
    ({"psn": "0F"}, "malformed tag 5F34"),  # was read as PSN 00
])
def test_card_data_that_cannot_reach_the_host_is_refused(change, reason):
    good = CATALOG.cards["approve"]
    card = CatalogCard(**{**good.__dict__, **change, "name": "odd"})
    assert luhn_ok(card.pan)
    sent = []

    def transmit(command):
        sent.append(command[1])
        return emulator.transmit(command)

    emulator = CardEmulator(card, CATALOG.imk_ac)
    with pytest.raises(CardReadError) as info:
        read_card(transmit, PARAMS, amount=100, currency=156, when=WHEN, unpredictable=UN)
    assert info.value.reason == reason and card.pan not in info.value.reason
    assert 0xAE not in sent


BROKEN = [("broken_tlv_length", "malformed card data"),
          ("broken_oversized_record", "oversized record"),
          ("broken_missing_pan", "missing tag 5A"),
          ("broken_bad_sw", "READ RECORD failed 6F00")]


@pytest.mark.parametrize("name, reason", BROKEN, ids=[b[0] for b in BROKEN])
@pytest.mark.parametrize("contactless", [False, True], ids=["contact", "contactless"])
def test_broken_catalog_cards_are_read_errors(name, reason, contactless):
    card = HostileCard(name, contactless, [])
    with pytest.raises(CardReadError) as info:
        read_card(card.transmit, PARAMS, amount=100, currency=156, when=WHEN,
                  unpredictable=UN, contactless=contactless)
    assert info.value.reason == reason
    assert 0xB2 in card.instructions  # the defect sits in the records
    assert 0xAE not in card.instructions  # no ARQC asked of a card already refused
