"""Hostile local input: hypothesis fuzzing of the scanner and magstripe decoders and of the
config loader (issue 8 point 6; docs/fuzzing.md).

Properties: CodeDecoder and LineBuffer give the same out whichever chunks the bytes come
in, and a scan is only ever an all-digit line of a payment-code or barcode length; a
swipe (serial line or keyboard-wedge keys) of mutated track data ends in CardSwiped with a
Luhn-valid PAN that the track held, or SwipeFailed with a reason free of card data; and
the chip's second GENERATE AC never gives a TC for forged issuer data (field 55 of
the 0210) and ends in TC, AAC or CardReadError whatever the card answers there; and
load_config of a fuzzed TOML document (real keys with wrong types or out-of-range values,
unknown keys and sections, broken bytes) returns a Config or raises ConfigError naming the
file and, for a value it refuses, the section and the key. Budgets: tests/fuzz_profiles.py.
"""
from __future__ import annotations

import json
import math
import re
import tempfile
import tomllib
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from firmware.cardsafe import luhn_ok
from firmware.config import Config, ConfigError, load_config
from firmware.emv import tlv
from firmware.emv.card import CardReadError
from firmware.emv.kernel import EmvSession, kernel_params
from firmware.emv.oda import load_capks
from firmware.flows.types import BarcodeScanned, CardSwiped, CodeScanned, SwipeFailed
from firmware.hal.scanner import BARCODE_LENGTHS, LINE_MAX, CodeDecoder
from firmware.hal.swipe import LINE_MAX as SWIPE_LINE_MAX, LineBuffer, WedgeDecoder
from firmware.magstripe import swipe_event, track_data
from firmware.sim.acquirer import issuer_icc_data
from firmware.sim.catalog import load_catalog
from firmware.wallet import CODE_LENGTHS
from fuzz_profiles import LONG, fuzz
from test_emv_fuzz import HostileCard, mutations

pytestmark = pytest.mark.timeout(7200 if LONG else 120)

REPO = Path(__file__).resolve().parent.parent
SIM_TOML = REPO / "config" / "sim.toml"
TODAY = date(2026, 5, 1)
PAN = "6226090000000014"
CATALOG = load_catalog()


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


# --- scanner ---------------------------------------------------------------------------

scanner_bytes = st.lists(st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"\r", b"\n", b"\t", b"]Q1", b"]E0", b"\r\n", b"\xff", b"\x00"]),
    st.text("0123456789", min_size=6, max_size=26).map(str.encode),
), max_size=12).map(b"".join)


@fuzz(500)
@given(scanner_bytes, st.lists(st.integers(0, 1000), max_size=8), st.sampled_from([True, "", "]Q1"]))
def test_scanner_chunks_do_not_matter_and_only_digits_come_out(data, cuts, aim):
    whole = CodeDecoder(aim).feed(data)
    decoder = CodeDecoder(aim)
    assert [scan for chunk in chunked(data, cuts) for scan in decoder.feed(chunk)] == whole
    low, high = CODE_LENGTHS
    lines = re.split(rb"[\r\n\t]", data)
    for scan in whole:
        assert scan.code.isascii() and scan.code.isdigit()
        if isinstance(scan, CodeScanned):
            assert low <= len(scan.code) <= high
        else:
            assert isinstance(scan, BarcodeScanned) and len(scan.code) in BARCODE_LENGTHS
        assert any(scan.code.encode() in line and len(line) <= LINE_MAX for line in lines)
    assert len(whole) <= len(lines)


@fuzz(300)
@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=8))
def test_line_buffer_chunks_do_not_matter(data, cuts):
    whole = LineBuffer(LINE_MAX).feed(data)
    buffer = LineBuffer(LINE_MAX)
    assert [line for chunk in chunked(data, cuts) for line in buffer.feed(chunk)] == whole
    assert all(line is None or 0 < len(line) <= LINE_MAX for line in whole)


# --- magstripe ---------------------------------------------------------------------------

GOOD_SWIPE = track_data(PAN, "3012", "101", "TEST/CARD")
swipe_ops = st.tuples(st.sampled_from(["set", "insert", "delete", "cut"]), st.integers(0, 200),
                      st.sampled_from(list(b"0123456789=D;?%^EF\r\n \xff") + [0, 0x7F]))


def mutate(raw: bytes, plan) -> bytes:
    out = bytearray(raw)
    for kind, pos, byte in plan:
        i = pos % (len(out) + 1)
        if kind == "set" and i < len(out):
            out[i] = byte
        elif kind == "insert":
            out[i:i] = bytes([byte])
        elif kind == "delete":
            del out[i:i + 1]
        elif kind == "cut":
            del out[i:]
    return bytes(out)


def check_swipe(raw: bytes | str) -> CardSwiped | SwipeFailed:
    event = swipe_event(raw, today=TODAY)
    text = raw if isinstance(raw, str) else raw.decode("latin-1")
    if isinstance(event, SwipeFailed):
        assert event.reason and not re.search(r"\d{6}", event.reason)
    else:
        card = event.card
        assert luhn_ok(card.pan) and 13 <= len(card.pan) <= 19
        assert f";{card.track2}" in text and card.pan in text  # (an F pad nibble is dropped)
        assert card.masked_pan != card.pan and card.pan not in repr(card)
    return event


@fuzz(800)
@given(st.lists(swipe_ops, min_size=1, max_size=4))
@example([("set", 71, ord("F"))])  # long run: "=30121010000F?" reads, the pad F dropped
def test_mutated_swipes_end_in_a_checked_card_or_a_clean_failure(plan):
    check_swipe(mutate(GOOD_SWIPE, plan))


@fuzz(200)
@given(st.lists(swipe_ops, max_size=3), st.lists(st.floats(0, 1.0), min_size=1, max_size=80))
def test_wedge_keys_with_gaps_end_in_whole_swipes_only(plan, gaps):
    """Keyboard-wedge input: keys with random gaps (a pause > 0.5 s drops a partial swipe)."""
    keys = mutate(GOOD_SWIPE, plan).decode("latin-1")
    now = [0.0]
    decoder = WedgeDecoder(clock=lambda: now[0], gap=0.5)
    for i, char in enumerate(keys):
        now[0] += gaps[i % len(gaps)]
        swipe = decoder.feed(char)
        if swipe is not None:
            assert swipe[0] in "%;" and len(swipe) <= SWIPE_LINE_MAX
            check_swipe(swipe)


def test_swipe_harness_reads_the_good_track():
    event = check_swipe(GOOD_SWIPE)
    assert isinstance(event, CardSwiped) and event.card.pan == PAN
    assert isinstance(check_swipe(mutate(GOOD_SWIPE, [("cut", 30, 0)])), SwipeFailed)


# --- config ------------------------------------------------------------------------------

BASE = tomllib.loads(SIM_TOML.read_text(encoding="utf-8"))
KEYS = sorted((section, key) for section, table in BASE.items() for key in table)
WORK = Path(tempfile.mkdtemp(prefix="kpos-fuzz-config-"))

wrong_values = st.one_of(
    st.integers(-(2 ** 63), 2 ** 63 - 1), st.sampled_from([0, -1, 1, 65536, 10 ** 12, 2 ** 63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=30), st.sampled_from(["", " ", "0", "-1", "\x00", "\x7f", "é" * 50, "../../x"]),
    st.lists(st.integers(0, 9), max_size=3), st.dictionaries(st.just("x"), st.integers(), max_size=1),
)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: dict) -> str:
    out = []
    for section, table in doc.items():
        out.append(f"[{json.dumps(section)}]")
        out += [f"{json.dumps(key)} = {toml_value(value)}" for key, value in table.items()]
    return "\n".join(out) + "\n"


@st.composite
def fuzzed_configs(draw) -> tuple[dict, list[tuple[str, str]]]:
    doc = {section: dict(table) for section, table in BASE.items()}
    changed = []
    for _ in range(draw(st.integers(1, 3))):
        section, key = draw(st.one_of(st.sampled_from(KEYS), st.tuples(
            st.sampled_from(sorted(BASE)), st.sampled_from(["bogus", "port ", "Timeout"]))))
        doc[section][key] = draw(wrong_values)
        changed.append((section, key))
    if draw(st.booleans()):
        doc.setdefault(draw(st.sampled_from(["extra", "Terminal", "acquirer.tls"])), {})
    return doc, changed


def load(text: bytes) -> Config | ConfigError:
    path = WORK / "fuzz.toml"
    path.write_bytes(text)
    try:
        return load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")
        return exc


@fuzz(400)
@given(fuzzed_configs())
@example(({**BASE, "emv": {**BASE["emv"], "contactless_limit": 0}}, [("emv", "contactless_limit")]))
def test_fuzzed_config_values_load_or_name_the_key(case):
    doc, changed = case
    outcome = load(toml_document(doc).encode())
    if isinstance(outcome, ConfigError):
        message = str(outcome)
        assert "TOML syntax error" not in message  # the document itself is valid TOML
        if "unknown section" not in message and "must be a table" not in message:
            named = re.match(r"\S+: \[(\w+)\] (?:unknown key '([^']*)'|(\w+): )", message)
            assert named, message
            assert named[1] in {s for s, _ in changed}, message
            keys = {k for _, k in changed}  # a key refused for another's value names it
            assert (named[2] or named[3]) in keys or any(k in message for k in keys) \
                or "when" in message, message


@fuzz(250)
@given(st.lists(swipe_ops, min_size=1, max_size=4), st.integers(0, 7000))
def test_broken_config_bytes_load_or_raise_config_error(plan, at):
    raw = SIM_TOML.read_bytes()
    at %= len(raw)
    outcome = load(raw[:at] + mutate(raw[at:at + 200], plan) + raw[at + 200:])
    assert isinstance(outcome, (Config, ConfigError))


def test_empty_data_dir_is_a_config_error():
    """Found by the long run: data_dir = "" became None, then a TypeError at the first
    path built on it (the vault key file)."""
    doc = {**BASE, "terminal": {**BASE["terminal"], "data_dir": ""}}
    assert "[terminal] data_dir: must not be empty" in str(load(toml_document(doc).encode()))


def test_config_harness_loads_the_unchanged_file():
    assert isinstance(load(toml_document(BASE).encode()), Config)
    bad = {**BASE, "acquirer": {**BASE["acquirer"], "port": "5000"}}
    assert "[acquirer] port: must be an integer" in str(load(toml_document(bad).encode()))


# --- the chip after the host's answer: issuer data and the second GENERATE AC ------------
# (tests/test_emv_fuzz.py covers the card read up to the first GENERATE AC)

SIM_CFG = load_config(SIM_TOML)
KERNEL_PARAMS = kernel_params(SIM_CFG, load_capks(SIM_CFG.emv.capk_file))


def approved_session(plan=()):
    """A contact "approve" card read through GENERATE AC 1 (ARQC); its answers from
    transmit 13 on (EXTERNAL AUTHENTICATE, GENERATE AC 2) mutated by `plan`."""
    card = HostileCard("approve", False, list(plan))
    session = EmvSession(card.transmit, KERNEL_PARAMS,
                         amount=5000, currency=156, when=datetime(2026, 5, 1, 10, 30),
                         unpredictable=bytes.fromhex("0A1B2C3D"), contactless=False)
    session.select(session.candidates()[0])
    first = session.first_ac(online_pin=True)
    assert first.cryptogram_type == "ARQC" and card.sent == 13
    return session, card, first


def issuer_data(first) -> bytes:
    request = {"2": first.pan, "23": "0" + first.pan_seq, "55": first.icc_data}
    return issuer_icc_data(request, CATALOG.imk_ac, "00")


def final_cryptogram(session, icc: bytes | None) -> str:
    try:
        return session.complete(approved=True, arc="00", icc_response=icc).cryptogram_type
    except CardReadError as exc:
        assert exc.reason and PAN not in exc.reason
        return "error"


def arpc_of(icc: bytes | None) -> bytes | None:
    try:
        return tlv.flatten(tlv.parse(icc or b"")).get("91")
    except tlv.TlvError:
        return None


@fuzz(50, e2e=True)
@given(st.one_of(st.lists(swipe_ops, min_size=1, max_size=3), st.binary(max_size=60)))
def test_forged_issuer_data_never_gets_a_tc(change):
    session, card, first = approved_session()
    genuine = issuer_data(first)
    icc = mutate(genuine, change) if isinstance(change, list) else change
    outcome = final_cryptogram(session, icc)
    assert outcome in ("TC", "AAC", "error")
    if outcome == "TC":  # only the issuer's own ARPC makes the card approve
        assert arpc_of(icc) == arpc_of(genuine)
    assert card.sent <= 13 + 2 + 10  # EXTERNAL AUTHENTICATE, GENERATE AC 2, a few scripts


@fuzz(50, e2e=True)
@given(st.data())
def test_hostile_second_generate_ac_answers_end_in_tc_aac_or_read_error(data):
    plan = data.draw(st.lists(mutations.map(lambda m: replace(m, at=13 + m.at % 2)),
                              min_size=1, max_size=3))
    session, card, first = approved_session(plan)
    outcome = final_cryptogram(session, issuer_data(first))
    assert outcome in ("TC", "AAC", "error")
    detour = any(m.kind in ("61", "6C") for m in plan)  # moves GENERATE AC 2 later
    gac2 = [] if detour else [m for m in plan if m.at == 14]
    if any(m.kind == "sw" and m.arg not in (0x9000,) and m.arg >> 8 not in (0x61, 0x6C)
           for m in gac2):
        assert outcome != "TC"


def test_second_ac_harness_approves_with_the_genuine_issuer_data():
    session, _, first = approved_session()
    assert final_cryptogram(session, issuer_data(first)) == "TC"
