"""Tampered and replayed 0210s over TCP: a man in the middle on 127.0.0.1 between the
terminal and the simulator. None is taken as the answer: no approval, the sale reversed
(reason A0 for a bad MAC, 98 for an ignored replay) and the host's ledger restored."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from firmware.acquirer import messages
from firmware.sim.runner import sim_session
from scenario import play
from conftest import run_bounded

SALE = """
    keys 100 ENTER
    insert approve
    expect screen "Enter PIN"
    keys 1234 ENTER
"""
REVERSED = """
    expect queue 0
    expect journal REVERSED
    expect balance approve 1000000
"""


class TamperProxy:
    """Forwards frames both ways; each 0210 from the host goes through `rewrite` (raw
    message in, raw message out, None = swallow it). Records what the terminal sent."""

    def __init__(self) -> None:
        self.upstream_port = 0
        self.rewrite = lambda raw: raw
        self.rewrite_request = lambda raw: raw
        self.sent: list[dict] = []  # decoded requests, terminal -> host
        self.answers: list[bytes] = []  # raw 0210s as the host sent them
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer, self._requests),
                             self._pump(up_reader, writer, self._answer), return_exceptions=True)

    async def _pump(self, reader, writer, through) -> None:
        try:
            while True:
                out = through(await messages.read_frame(reader))
                if out is not None:
                    writer.write(messages.frame(out))
                    await writer.drain()
        finally:
            writer.close()

    def _requests(self, raw: bytes) -> bytes:
        self.sent.append(messages.decode(raw))
        return self.rewrite_request(raw)

    def _answer(self, raw: bytes) -> bytes | None:
        if messages.decode(raw)["t"] != "0210":
            return raw
        self.answers.append(raw)
        return self.rewrite(raw)


def _reencoded(raw: bytes, **changes: str) -> bytes:
    """`raw` with fields changed and re-encoded; its MAC field kept as it came."""
    return messages.encode({**messages.decode(raw), **changes})


def _flip_last_byte(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def _run(sim_config, tmp_path, body) -> None:
    async def go():
        proxy = TamperProxy()
        port = await proxy.start()
        cfg = replace(sim_config, acquirer=replace(sim_config.acquirer, port=port))
        try:
            async with sim_session(cfg, start_acquirer=False) as session:
                proxy.upstream_port = await session.acquirer.start("127.0.0.1", 0)
                await body(session, proxy)
        finally:
            await proxy.stop()
    run_bounded(go(), 60)


def _reversal_reason(proxy: TamperProxy) -> str:
    [reversal] = [m for m in proxy.sent if m["t"] in ("0400", "0401")][:1]
    return reversal["39"]


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda raw: _reencoded(raw, **{"4": "000000000001"}), id="amount"),
    pytest.param(lambda raw: _reencoded(raw, **{"39": "05"}), id="response-code"),
    pytest.param(_flip_last_byte, id="mac-byte"),
    pytest.param(lambda raw: raw[:-8] + bytes(8), id="mac-zeroed"),
])
def test_tampered_answer_is_no_answer_and_reversed_a0(sim_config, tmp_path, tamper):
    async def body(session, proxy):
        proxy.rewrite = tamper
        await play(session, SALE + """
            expect screen "NO RESPONSE"
            expect screen "Bad response MAC"
        """ + REVERSED)
        assert messages.decode(proxy.answers[0])["39"] == "00"  # the host had approved
        [sale] = [m for m in proxy.sent if m["t"] == "0200"]
        assert len(sale["64"]) == 8  # the 0200 was MACed, and the 0400 too:
        assert [len(m["64"]) for m in proxy.sent if m["t"] in ("0400", "0401")] == [8]
        assert _reversal_reason(proxy) == "A0"
        row = await session.terminal.journal_call(lambda j: j.last())
        assert (row.status, row.reversal_status) == ("REVERSED", "ACKED")
    _run(sim_config, tmp_path, body)


def test_answer_without_mac_is_no_answer(sim_config, tmp_path):
    async def body(session, proxy):
        proxy.rewrite = lambda raw: messages.encode(
            {k: v for k, v in messages.decode(raw).items() if k not in ("64", "128")})
        await play(session, SALE + 'expect screen "Bad response MAC"' + REVERSED)
        assert _reversal_reason(proxy) == "A0"
    _run(sim_config, tmp_path, body)


def test_replayed_earlier_approval_is_never_the_answer(sim_config, tmp_path):
    async def body(session, proxy):
        await play(session, SALE + """
            expect screen "Take receipts"
            keys ENTER
            remove
            expect screen "Key in amount"
            expect balance approve 999900
        """)
        earlier = proxy.answers[0]
        proxy.rewrite = lambda raw: earlier  # the copy of the first approval, MAC intact
        await play(session, SALE + 'expect screen "NO RESPONSE"' + """
            expect queue 0
            expect journal REVERSED
            expect balance approve 999900
        """)
        assert _reversal_reason(proxy) == "98"
        row = await session.terminal.journal_call(lambda j: j.last())
        assert row.status == "REVERSED" and row.stan != int(messages.decode(earlier)["11"])
    _run(sim_config, tmp_path, body)


def test_request_with_a_bad_mac_is_answered_a0_and_not_debited(sim_config, tmp_path):
    async def body(session, proxy):
        proxy.rewrite_request = lambda raw: _flip_last_byte(raw) if raw[:4] == b"0200" else raw
        await play(session, SALE + """
            expect screen "DECLINED"
            expect journal DECLINED
            expect balance approve 1000000
        """)
        assert session.acquirer.mac_failures == 1
        assert messages.decode(proxy.answers[0])["39"] == "A0"
    _run(sim_config, tmp_path, body)
