"""AcquirerLink against a tiny fake host on 127.0.0.1: answers, silence, mismatches, closes."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from datetime import datetime

import pytest

from firmware import crashpoint
from firmware.acquirer.link import AcquirerLink, NoResponse, NotSent
from firmware.acquirer.messages import (
    MessageError, TerminalIds, decode, encode, frame, read_frame, sale_request,
)
from firmware.emv.card import CardData
from firmware.sim.catalog import load_catalog

PAN = load_catalog().cards["approve"].pan
MASKED = "622609******0014"
IDS = TerminalIds("10000001", "123456789012345")
WAIT = 5.0  # upper bound for anything the test waits on; never reached when all is well


def _sale(stan: int = 123) -> dict:
    card = CardData(pan=PAN, expiry="3012", pan_seq="01", track2=f"{PAN}=3012201",
                    aid="A000000333010101", app_label="UnionPay Debit",
                    icc_data=bytes.fromhex("9F36020001"))
    return sale_request(IDS, stan=stan, batch=1, amount=1250, currency=156, card=card,
                        pin_block=bytes(8), now=datetime(2024, 3, 5, 14, 7, 9))


def approve(req: dict, **over) -> bytes:
    resp = {k: req[k] for k in ("2", "3", "4", "11", "12", "13", "41", "42", "49")}
    resp.update({"t": "0210", "37": "240305" + req["11"], "38": "A1B2C3", "39": "00"})
    resp.update(over)
    return frame(encode(resp))


CLOSE = "close"  # answer: close the connection without replying


class FakeHost:
    """Reads framed requests; `answer(request) -> bytes | None | CLOSE` decides the reply.

    With `close_after_reply` the host closes each connection after its first reply and
    sets `host_closed` once the close is complete.
    """

    def __init__(self, answer, close_after_reply: bool = False):
        self.answer = answer
        self.close_after_reply = close_after_reply
        self.requests: list[dict] = []
        self.connections = 0
        self.client_closed = asyncio.Event()  # the terminal closed a connection
        self.host_closed = asyncio.Event()
        self.request_seen = asyncio.Event()

    async def __aenter__(self) -> "FakeHost":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    def link(self, response_timeout: float = 2.0) -> AcquirerLink:
        return AcquirerLink("127.0.0.1", self.port, connect_timeout=2.0,
                            response_timeout=response_timeout)

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        try:
            await self._answer_all(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed.set()
            writer.close()
            return
        writer.close()
        await writer.wait_closed()
        self.host_closed.set()

    async def _answer_all(self, reader, writer) -> None:
        while True:
            req = decode(await read_frame(reader))
            self.requests.append(req)
            self.request_seen.set()
            reply = self.answer(req)
            if reply == CLOSE:
                return
            if reply is not None:
                writer.write(reply)
                await writer.drain()
                if self.close_after_reply:
                    return


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 15))


def _log_ok(caplog, reason: str) -> None:
    assert reason in caplog.text
    assert MASKED in caplog.text and PAN not in caplog.text
    assert any(r.levelno == logging.WARNING and r.name == "kpos.acquirer" for r in caplog.records)


# --- good exchanges --------------------------------------------------------------------------


def test_good_exchange_returns_response():
    async def main():
        async with FakeHost(approve) as host:
            link = host.link()
            resp = await link.exchange(_sale())
            assert resp["t"] == "0210" and resp["39"] == "00" and resp["11"] == "000123"
            assert link.connected and host.requests[0]["52"] == bytes(8)
            await link.close()
            assert not link.connected
    run(main())


def test_two_exchanges_share_one_connection():
    async def main():
        async with FakeHost(approve) as host:
            link = host.link()
            first = await link.exchange(_sale(1))
            second = await link.exchange(_sale(2))
            assert (first["11"], second["11"]) == ("000001", "000002")
            assert host.connections == 1 and len(host.requests) == 2
            await link.close()
    run(main())


def test_concurrent_exchanges_are_serialised():
    async def main():
        async with FakeHost(approve) as host:
            link = host.link()
            results = await asyncio.gather(*(link.exchange(_sale(s)) for s in (11, 12, 13)))
            assert [r["11"] for r in results] == ["000011", "000012", "000013"]
            assert host.connections == 1
            await link.close()
    run(main())


def test_reconnects_when_host_closed_idle_connection():
    async def main():
        async with FakeHost(approve, close_after_reply=True) as host:
            link = host.link()
            await link.exchange(_sale(1))
            await asyncio.wait_for(host.host_closed.wait(), WAIT)
            resp = await link.exchange(_sale(2))
            assert resp["11"] == "000002" and host.connections == 2
            assert [r["11"] for r in host.requests] == ["000001", "000002"]
            await link.close()
    run(main())


# --- failures ----------------------------------------------------------------------------------


def _expect_no_response(answer, match: str, caplog, response_timeout: float = 2.0):
    caplog.set_level(logging.DEBUG, logger="kpos.acquirer")

    async def main():
        async with FakeHost(answer) as host:
            link = host.link(response_timeout)
            with pytest.raises(NoResponse, match=match) as info:
                await link.exchange(_sale())
            assert not link.connected
            await asyncio.wait_for(host.client_closed.wait(), WAIT)  # the link hung up
            assert len(host.requests) == 1
            return info.value
    exc = asyncio.run(asyncio.wait_for(main(), 15))
    _log_ok(caplog, exc.reason)
    return exc


def test_no_answer_times_out(caplog):
    exc = _expect_no_response(lambda req: None, r"^no response in 0\.3 s$", caplog, 0.3)
    assert exc.reason == "no response in 0.3 s"


def test_answers_to_another_stan_only_are_no_response_after_the_timeout(caplog):
    started = time.monotonic()
    exc = _expect_no_response(lambda req: approve(req, **{"11": "000124"}),
                              r"^no response in 0\.3 s$", caplog, 0.3)
    assert time.monotonic() - started >= 0.3  # skipped, not taken as a mismatch at once
    assert exc.reason == "no response in 0.3 s"
    assert "stale response skipped (waiting for STAN 000123): 0210 STAN 000124" in caplog.text


def test_a_late_answer_before_the_right_one_is_skipped(caplog):
    caplog.set_level(logging.WARNING, logger="kpos.acquirer")

    async def main():
        async with FakeHost(lambda req: approve(req, **{"11": "000122"}) + approve(req)) as host:
            link = host.link()
            resp = await link.exchange(_sale(123))
            assert resp["11"] == "000123" and link.connected
            await link.close()
    run(main())
    assert "stale response skipped (waiting for STAN 000123): 0210 STAN 000122" in caplog.text
    assert MASKED in caplog.text and PAN not in caplog.text


def test_second_copy_of_an_answer_is_not_taken_for_the_next_request(caplog):
    caplog.set_level(logging.WARNING, logger="kpos.acquirer")

    async def main():
        async with FakeHost(lambda req: approve(req) * 2 if req["11"] == "000001" else approve(req)) as host:
            link = host.link()
            first = await link.exchange(_sale(1))
            second = await link.exchange(_sale(2))
            assert (first["11"], second["11"]) == ("000001", "000002")
            assert host.connections == 1 and len(host.requests) == 2
            await link.close()
    run(main())
    assert "stale response skipped (waiting for STAN 000002): 0210 STAN 000001" in caplog.text


def test_response_with_other_amount_is_mismatched_at_once(caplog):
    started = time.monotonic()
    _expect_no_response(lambda req: approve(req, **{"4": "000000001000"}),
                        r"^mismatched response: amount 000000001000 != 000000001250$", caplog, 5.0)
    assert time.monotonic() - started < 5.0  # the request's STAN: not skipped, refused


@pytest.mark.parametrize("garbage, match", [
    (frame(b"0210garbage!"), r"^malformed response: field "),
    (b"\x00\x00garbage", r"^malformed response: frame: length 0 "),
    (b"\xff\xffgarbage", r"^malformed response: frame: length 65535 "),
])
def test_garbage_is_malformed(caplog, garbage, match):
    _expect_no_response(lambda req: garbage, match, caplog)


def test_host_closes_without_answer(caplog):
    caplog.set_level(logging.WARNING, logger="kpos.acquirer")

    async def main():
        async with FakeHost(lambda req: CLOSE) as host:
            link = host.link()
            with pytest.raises(NoResponse, match="^connection closed by host$"):
                await link.exchange(_sale())
            assert not link.connected and host.connections == 1
    run(main())
    _log_ok(caplog, "connection closed by host")


def test_host_closes_in_the_middle_of_the_answer(caplog):
    caplog.set_level(logging.WARNING, logger="kpos.acquirer")

    async def main():
        async with FakeHost(lambda req: approve(req)[:20], close_after_reply=True) as host:
            link = host.link()
            with pytest.raises(NoResponse, match="^connection closed by host$"):
                await link.exchange(_sale())
            assert not link.connected
    run(main())
    _log_ok(caplog, "connection closed by host")


@pytest.mark.parametrize("answer, points", [
    (approve, ["link.sent", "link.received"]),
    (lambda req: None, ["link.sent"]),
])
def test_crash_points_after_the_write_and_after_the_checked_answer(monkeypatch, answer, points):
    hits = []
    monkeypatch.setattr(crashpoint, "hit", hits.append)

    async def main():
        async with FakeHost(answer) as host:
            link = host.link(0.3)
            with contextlib.suppress(NoResponse):
                await link.exchange(_sale())
            await link.close()
    run(main())
    assert hits == points


def test_next_exchange_reconnects_after_no_response():
    async def main():
        replies = iter([None, "ok"])
        async with FakeHost(lambda req: approve(req) if next(replies) else None) as host:
            link = host.link(0.3)
            with pytest.raises(NoResponse):
                await link.exchange(_sale(1))
            resp = await link.exchange(_sale(2))
            assert resp["11"] == "000002" and host.connections == 2
            await link.close()
    run(main())


def test_nothing_listening_is_not_sent(caplog):
    caplog.set_level(logging.WARNING, logger="kpos.acquirer")
    with socket.socket() as sock:  # a port that was free a moment ago and now refuses
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main():
        link = AcquirerLink("127.0.0.1", port, connect_timeout=2.0, response_timeout=1.0)
        with pytest.raises(NotSent, match=f"^connect to 127.0.0.1:{port} failed") as info:
            await link.exchange(_sale())
        assert not isinstance(info.value, NoResponse) and not link.connected
        return info.value
    exc = asyncio.run(asyncio.wait_for(main(), 15))
    _log_ok(caplog, exc.reason)


def test_bad_request_raises_message_error_and_sends_nothing():
    async def main():
        async with FakeHost(approve) as host:
            link = host.link()
            with pytest.raises(MessageError, match="^field 4: not numeric"):
                await link.exchange({**_sale(), "4": "12.50"})
            assert host.connections == 0 and not link.connected
    run(main())


def test_cancelled_exchange_drops_connection():
    async def main():
        async with FakeHost(lambda req: None) as host:
            link = host.link(5.0)
            task = asyncio.create_task(link.exchange(_sale()))
            await asyncio.wait_for(host.request_seen.wait(), WAIT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not link.connected
            await asyncio.wait_for(host.client_closed.wait(), WAIT)
    run(main())


# --- pipelining (exchange_many, store-and-forward) ----------------------------------------


class HoldAndReverse:
    """An answer function that holds replies until `n` requests arrived, then answers them
    newest first (and leaves out the STANs in `skip`), plus a stray answer to STAN 999999."""

    def __init__(self, n: int, skip=()):
        self.n, self.skip, self.held = n, set(skip), []

    def __call__(self, req: dict):
        self.held.append(req)
        if len(self.held) < self.n:
            return None
        stray = approve(_sale(999999))
        return stray + b"".join(approve(r) for r in reversed(self.held) if int(r["11"]) not in self.skip)


def test_exchange_many_matches_answers_by_stan_in_any_order(caplog):
    async def main():
        answers = HoldAndReverse(4)
        async with FakeHost(answers) as host:
            link = host.link()
            requests = [_sale(stan) for stan in (11, 12, 13, 14)]
            responses = await link.exchange_many(requests)
            assert [r["11"] for r in responses] == ["000011", "000012", "000013", "000014"]
            assert host.connections == 1 and link.connected  # all answered: the link stays
            await link.close()
    run(main())
    assert "stale response skipped" in caplog.text


def test_exchange_many_leaves_an_unanswered_one_none_and_drops_the_link(caplog):
    async def main():
        async with FakeHost(HoldAndReverse(3, skip={22})) as host:
            link = host.link(response_timeout=0.5)
            responses = await link.exchange_many([_sale(stan) for stan in (21, 22, 23)])
            assert [r and r["11"] for r in responses] == ["000021", None, "000023"]
            assert not link.connected  # its state is unknown after a missing answer
    run(main())
    assert "no response to 1 of 3 pipelined requests" in caplog.text


def test_exchange_many_mismatch_is_unknown_for_that_one_only():
    async def main():
        def answer(req):
            return approve(req, **({"4": "000000009999"} if req["11"] == "000032" else {}))
        async with FakeHost(answer) as host:
            link = host.link()
            responses = await link.exchange_many([_sale(stan) for stan in (31, 32, 33)])
            assert [r and r["11"] for r in responses] == ["000031", None, "000033"]
            assert not link.connected
    run(main())


def test_exchange_many_refuses_repeated_stans_and_reports_not_sent():
    async def main():
        async with FakeHost(approve) as host:
            with pytest.raises(ValueError, match="STANs must differ"):
                await host.link().exchange_many([_sale(5), _sale(5)])
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        link = AcquirerLink("127.0.0.1", port, connect_timeout=1.0, response_timeout=1.0)
        with pytest.raises(NotSent):
            await link.exchange_many([_sale(6)])
    run(main())
