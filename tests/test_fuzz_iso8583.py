"""Hostile acquirer responses: hypothesis fuzzing of ISO 8583 decode, framing, matching and
the link (issue 8 point 6; docs/fuzzing.md).

Properties: decode of any bytes (random, or a good 0210 with bytes flipped, inserted,
deleted, cut) returns a field dict with a 4-digit MTI and ASCII-digit numeric fields, or
raises MessageError; read_frame yields 1..MAX_FRAME bytes or MessageError /
IncompleteReadError; match_response and describe never raise on any dict, and describe
never shows a full PAN; a response match_response accepts with an approving field 39 is a
genuine approval of that request (MTI 0210, STAN, ids, processing code and amount echoed);
and AcquirerLink.exchange against a host on 127.0.0.1 answering fuzzed bytes returns only
such a matching response, else NoResponse, within its timeout, the link usable after.
Budgets: tests/fuzz_profiles.py.
"""
from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from firmware.acquirer.codes import APPROVED_CODES
from firmware.acquirer.link import AcquirerLink, NoResponse
from firmware.acquirer.messages import (
    MAX_FRAME, MessageError, TerminalIds, decode, describe, encode, frame, match_response,
    read_frame, sale_request,
)
from firmware.acquirer.spec import BINARY_FIELDS, NUMERIC_FIELDS
from firmware.emv.card import CardData
from firmware.sim.catalog import load_catalog
from fuzz_profiles import LONG, fuzz

pytestmark = pytest.mark.timeout(7200 if LONG else 120)

PAN = load_catalog().cards["approve"].pan
IDS = TerminalIds("10000001", "123456789012345")
CARD = CardData(pan=PAN, expiry="3012", pan_seq="01", track2=f"{PAN}=3012201",
                aid="A000000333010101", app_label="UnionPay Debit",
                icc_data=bytes.fromhex("9F36020001"))
REQUEST = sale_request(IDS, stan=123, batch=1, amount=1250, currency=156, card=CARD,
                       pin_block=bytes(8), now=datetime(2026, 5, 1, 14, 7, 9))
ECHOED = ("3", "4", "11", "41", "42")  # what a genuine answer to REQUEST must repeat


def approval(**over) -> dict:
    resp = {k: REQUEST[k] for k in ("2", "3", "4", "11", "12", "13", "41", "42", "49")}
    resp.update({"t": "0210", "37": "260501000123", "38": "A1B2C3", "39": "00", **over})
    return {k: v for k, v in resp.items() if v is not None}


APPROVAL = encode(approval())


def genuine_approval(response: dict) -> bool:
    """The oracle, written apart from match_response: an 0210 to REQUEST that approves."""
    return (response.get("t") == "0210" and response.get("39") in APPROVED_CODES
            and all(response.get(k) == REQUEST[k] for k in ECHOED)
            and response.get("2", PAN) == PAN)


def accepted_approval(response: dict) -> bool:
    """What the terminal would take for an approval (firmware.app_card._go_online)."""
    return match_response(REQUEST, response) is None and response.get("39") in APPROVED_CODES


def check_decoded(raw: bytes) -> dict | None:
    try:
        doc = decode(raw)
    except MessageError as exc:
        assert str(exc).startswith("field ")
        return None
    mti = doc["t"]
    assert len(mti) == 4 and mti.isascii() and mti.isdigit()
    for key, value in doc.items():
        assert isinstance(value, bytes if key in BINARY_FIELDS else str), key
        if key in NUMERIC_FIELDS:
            assert value.isascii() and value.isdigit(), key
    check_describe(doc)
    return doc


def check_describe(doc: dict) -> None:
    line = describe(doc)
    pan = doc.get("2")
    if isinstance(pan, str) and sum(ch.isdigit() for ch in pan) >= 13:
        assert pan not in line


# --- byte mutations of a good response ---------------------------------------------------

ops = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut", "repeat"]),
                st.integers(0, 1 << 16), st.integers(0, 255))


def mutate(raw: bytes, plan: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(raw)
    for kind, pos, byte in plan:
        i = pos % (len(out) + 1)
        if kind == "flip" and i < len(out):
            out[i] ^= byte or 1
        elif kind == "set" and i < len(out):
            out[i] = byte
        elif kind == "insert":
            out[i:i] = bytes([byte])
        elif kind == "delete":
            del out[i:i + 1 + byte % 4]
        elif kind == "cut":
            del out[i:]
        elif kind == "repeat":
            out[i:i] = out[i:i + byte % 16]
    return bytes(out)


hostile_messages = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from([b"0210", b"0810", b"0410", b"0200", b"\xff\xff\xff\xff"]),
              st.binary(max_size=300)).map(b"".join),
    st.lists(ops, min_size=1, max_size=4).map(lambda plan: mutate(APPROVAL, plan)),
)


@fuzz(1000)
@given(hostile_messages)
def test_decode_returns_checked_fields_or_raises_message_error(raw):
    doc = check_decoded(raw)
    if doc is not None and accepted_approval(doc):
        assert genuine_approval(doc)


def test_decode_harness_sees_the_good_approval():
    doc = check_decoded(APPROVAL)
    assert doc is not None and accepted_approval(doc) and genuine_approval(doc)
    assert check_decoded(mutate(APPROVAL, [("cut", 10, 0)])) is None


# --- field mutations: still well-formed, but not the answer -------------------------------

# Per field: values a confused or hostile host might send (None drops the field); any other
# value of the same length is drawn too.
FIELD_VALUES = {
    "t": ["0210", "0230", "0410", "0810", "0200", "0211"],
    "2": [PAN, "6226090000000022", "4761739001010010"],
    "3": ["000000", "200000", "310000"],
    "4": ["000000001250", "000000001251", "000000000000", "999999999999"],
    "11": ["000123", "000124", "000000", "123000"],
    "38": ["A1B2C3", "000000"],
    "39": sorted(APPROVED_CODES) + ["05", "51", "98", "Z9", "  "],
    "41": ["10000001", "10000002", "        "],
    "42": ["123456789012345", "123456789012346"],
}


@st.composite
def changes(draw) -> dict:
    keys = draw(st.sets(st.sampled_from(sorted(FIELD_VALUES)), min_size=1, max_size=4))
    alphabet = "0123456789" if draw(st.booleans()) else "0123456789AZ "
    return {k: draw(st.one_of(st.none(), st.sampled_from(FIELD_VALUES[k]),
                              st.text(alphabet, min_size=len(FIELD_VALUES[k][0]),
                                      max_size=len(FIELD_VALUES[k][0]))))
            for k in keys}


@fuzz(400)
@given(changes())
def test_changed_fields_never_turn_into_an_approval(change):
    try:
        raw = encode(approval(**change))
    except MessageError:
        assume(False)
    doc = check_decoded(raw)
    assert doc is not None
    assert accepted_approval(doc) == genuine_approval(doc)
    reason = match_response(REQUEST, doc)
    assert reason is None or PAN not in reason


any_value = st.one_of(st.none(), st.integers(), st.binary(max_size=20), st.text(max_size=20),
                      st.lists(st.integers(), max_size=2))
any_dicts = st.dictionaries(st.one_of(st.sampled_from(["t", "2", "3", "4", "11", "39", "41",
                                                        "42", "49", "60"]), st.text(max_size=3)),
                            any_value, max_size=8)


@fuzz(400)
@given(any_dicts, st.booleans())
def test_match_response_and_describe_never_raise(doc, as_request):
    request, response = (doc, approval()) if as_request else (REQUEST, doc)
    assert isinstance(match_response(request, response), (str, type(None)))
    check_describe(doc)


def test_describe_survives_a_non_ascii_digit_currency():
    """Found by the fuzz: '²'.isdigit() is True but int('²') raised ValueError."""
    assert describe({"t": "0210", "4": "000000001250", "49": "²"}) == "0210 amount 12.50 CNY"


# --- framing -------------------------------------------------------------------------------


async def read_all(stream: bytes) -> list[bytes | str]:
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    out: list[bytes | str] = []
    while True:
        try:
            out.append(await read_frame(reader))
        except MessageError as exc:
            return out + [f"bad: {exc}"]
        except asyncio.IncompleteReadError:
            return out + ["eof"]


frame_streams = st.one_of(
    st.binary(max_size=200),
    st.lists(hostile_messages.filter(lambda m: 0 < len(m) <= MAX_FRAME).map(frame),
             max_size=3).map(b"".join),
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=200)).map(
        lambda lr: lr[0].to_bytes(2, "big") + lr[1]),
)


@fuzz(400)
@given(frame_streams)
def test_read_frame_bounded_or_refused(stream):
    out = asyncio.run(read_all(stream))
    *frames, end = out
    assert all(isinstance(f, bytes) and 0 < len(f) <= MAX_FRAME for f in frames)
    assert end == "eof" or end.startswith("bad: frame: length ")
    assert sum(2 + len(f) for f in frames) <= len(stream)


# --- the link: a host on 127.0.0.1 answers with hostile bytes -------------------------------


async def exchange_with(answer: bytes) -> dict | str:
    """One sale exchange against a host that writes `answer` and hangs up; then check that
    a clean second exchange on the same AcquirerLink still works."""
    replies = iter([answer, frame(encode(approval(**{"11": "000124", "37": "260501000124"})))])

    async def serve(reader, writer):
        try:
            await read_frame(reader)
            writer.write(next(replies))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = AcquirerLink("127.0.0.1", port, connect_timeout=2.0, response_timeout=2.0)
    try:
        async with asyncio.timeout(10):
            try:
                outcome: dict | str = await link.exchange(REQUEST)
            except NoResponse as exc:
                assert PAN not in exc.reason
                outcome = exc.reason
            await link.close()  # the host hung up after its answer: start afresh
            second = await link.exchange({**REQUEST, "11": "000124"})
            assert second["11"] == "000124" and second["39"] == "00"
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
    return outcome


answers = st.one_of(
    hostile_messages.filter(lambda m: 0 < len(m) <= MAX_FRAME).map(frame),
    st.lists(ops, min_size=1, max_size=3).map(lambda plan: mutate(frame(APPROVAL), plan)),
    st.binary(max_size=64),
)


@fuzz(100)
@given(answers)
def test_link_returns_only_a_matching_response(answer):
    outcome = asyncio.run(exchange_with(answer))
    if isinstance(outcome, dict):
        assert match_response(REQUEST, outcome) is None
        assert accepted_approval(outcome) == genuine_approval(outcome)
    else:
        assert outcome.startswith(("malformed response", "mismatched response",
                                   "connection closed by host"))


def test_link_harness_takes_a_good_answer_and_refuses_a_cut_one():
    assert asyncio.run(exchange_with(frame(APPROVAL)))["39"] == "00"
    assert asyncio.run(exchange_with(frame(APPROVAL)[:30])) == "connection closed by host"


# --- the terminal: whole sales through a proxy that mutates the host's 0210 ---------------


class MutatingProxy:
    """On 127.0.0.1, between the terminal and the acquirer simulator (loop thread). Each
    0210 the host sends while `plan` is set goes out changed by it (answer_as), and both
    connections are then closed; every other frame passes unchanged. `sent` keeps (request, bytes)."""

    def __init__(self):
        self.upstream_port = 0  # 0 until the simulator listens: connections are refused
        self.plan: list | None = None
        self.sent: list[tuple[dict, bytes]] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, t_reader, t_writer) -> None:
        if not self.upstream_port:
            t_writer.close()
            return
        h_reader, h_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        last: dict = {}

        async def upstream():
            while True:
                raw = await read_frame(t_reader)
                last.update(request=decode(raw))
                h_writer.write(frame(raw))
                await h_writer.drain()

        async def downstream():
            while True:
                raw = await read_frame(h_reader)
                if self.plan is not None and raw[:4] == b"0210":
                    data = answer_as(raw, self.plan)
                    self.sent.append((last["request"], data))
                    t_writer.write(data)
                    await t_writer.drain()
                    return
                t_writer.write(frame(raw))
                await t_writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (t_writer, h_writer):
            writer.close()


def answer_as(raw: bytes, plan: list | dict) -> bytes:
    """The host's framed 0210 `raw` with bytes mutated (a list of ops) or fields changed
    (a dict as from `changes`; unchanged when the changed message cannot be encoded)."""
    if isinstance(plan, list):
        return mutate(frame(raw), plan)
    fields = {k: v for k, v in {**decode(raw), **plan}.items() if v is not None}
    try:
        return frame(encode(fields))
    except MessageError:
        return frame(raw)


def genuine_approvals(request: dict, data: bytes) -> list[dict]:
    """The frames in `data` that are genuine approvals of `request` (the oracle)."""
    out = []
    while len(data) >= 2:
        length = int.from_bytes(data[:2], "big")
        raw, data = data[2:2 + length], data[2 + length:]
        try:
            doc = decode(raw)
        except MessageError:
            continue
        if (doc.get("t") == "0210" and doc.get("39") in APPROVED_CODES
                and all(doc.get(k) == request[k] for k in ECHOED)):
            out.append(doc)
    return out


OUTCOMES = ("APPROVED", "DECLINED", "NO RESPONSE")


class LiveTerminal:
    """A simulator session on its own event-loop thread, for hypothesis to drive sale after
    sale: `sale(plan)` (test thread, blocking) -> (journal status, outcome screen)."""

    def __init__(self, cfg):
        import threading
        self.cfg = cfg
        self.proxy = MutatingProxy()
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._up = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),),
                                        name="fuzz-terminal", daemon=True)

    def __enter__(self) -> "LiveTerminal":
        self._thread.start()
        assert self._up.wait(30), "simulator did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _main(self) -> None:
        from dataclasses import replace
        from firmware.sim.runner import sim_session
        self._stop = asyncio.Event()
        port = await self.proxy.start()
        cfg = replace(self.cfg, acquirer=replace(self.cfg.acquirer, port=port))
        async with sim_session(cfg, start_acquirer=False) as session:
            self.proxy.upstream_port = await session.acquirer.start("127.0.0.1", 0)
            self.session = session
            self._up.set()
            await self._stop.wait()
        self.proxy.server.close()

    def sale(self, plan) -> tuple[str, str]:
        future = asyncio.run_coroutine_threadsafe(self._sale(plan), self.loop)
        return future.result(60)

    async def _sale(self, plan) -> tuple[str, str]:
        from firmware.flows.types import Key
        s, display = self.session, self.session.display
        self.proxy.plan = plan
        mark = len(display.history)
        for key in "100":
            s.terminal.post(Key(key))
        s.terminal.post(Key("ENTER"))
        s.reader.insert("approve")
        await display.wait_for("Enter PIN", timeout=10, since=mark)
        for key in "1234":
            s.terminal.post(Key(key))
        s.terminal.post(Key("ENTER"))
        waits = [asyncio.ensure_future(display.wait_for(text, timeout=15, since=mark))
                 for text in OUTCOMES]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        screen = OUTCOMES[waits.index(next(iter(done)))]
        record = await s.terminal.journal_call(lambda j: j.last())
        self.proxy.plan = None
        await self._back_to_idle(screen)
        return record.status, screen

    async def _back_to_idle(self, screen: str) -> None:
        """As a cashier: an approval's ENTER (take receipts), then "Remove card"; after a
        decline or no response, remove the card, then ENTER."""
        from firmware.flows.types import Key
        s = self.session
        mark = len(s.display.history) - 1  # from the outcome screen on
        if screen == "APPROVED":
            await s.display.wait_for("Take receipts", timeout=10, since=mark)
            s.terminal.post(Key("ENTER"))
            await s.display.wait_for("Remove card", timeout=10, since=mark)
            s.reader.remove()
        else:
            s.reader.remove()
            s.terminal.post(Key("ENTER"))
        await s.display.wait_for("Key in amount", timeout=10, since=mark)


@pytest.fixture(scope="module")
def live_terminal(tmp_path_factory):
    from conftest import SIM_TOML, sim_overrides
    from firmware.config import load_config
    cfg = load_config(SIM_TOML, overrides=sim_overrides(tmp_path_factory.mktemp("fuzz-e2e")))
    with LiveTerminal(cfg) as live:
        yield live


@fuzz(60, e2e=True)
@given(plan=st.one_of(st.lists(ops, min_size=1, max_size=3), changes()))
def test_sale_with_a_mutated_answer_is_never_approved_out_of_thin_air(live_terminal, plan):
    status, screen = live_terminal.sale(plan)
    request, data = live_terminal.proxy.sent[-1]
    if not genuine_approvals(request, data):
        assert status != "APPROVED" and screen != "APPROVED", (status, screen)
    if screen == "NO RESPONSE":  # reversed at once, or queued when the host is slow
        assert status in ("UNKNOWN", "REVERSED"), status


def test_live_terminal_harness_approves_clean_and_reverses_a_cut_answer(live_terminal):
    assert live_terminal.sale([]) == ("APPROVED", "APPROVED")
    assert live_terminal.sale([("cut", 20, 0)])[1] == "NO RESPONSE"
    assert live_terminal.sale([]) == ("APPROVED", "APPROVED")  # the reversal went first
