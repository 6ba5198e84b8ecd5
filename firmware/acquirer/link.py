"""Persistent TCP (optionally TLS) link to the acquirer: one ISO 8583 exchange at a time.

Runs on the terminal's asyncio event loop; every method is a coroutine and never blocks
the loop. Timeouts in seconds: `connect_timeout` bounds connect (and the TLS handshake),
`response_timeout` bounds write + drain + reading the one response frame.

Outcome rules (what the journal relies on, DESIGN §6):
- NotSent: the connection could not be opened; no byte of the request left the box.
- NoResponse: the request was handed to the socket; the outcome is unknown (timeout, EOF,
  socket error, malformed or mismatched response). The connection is closed, because a
  late answer could otherwise be taken for the next request's.
- Stale answers: a response whose STAN (11) is not the request's (the second copy of a
  doubled answer, a late answer to an earlier request) answers something else: it is
  skipped (WARNING) and reading goes on until the matching response or the timeout. A
  response with the request's STAN but another MTI, amount, TID, MID, processing code or
  PAN is a NoResponse("mismatched response: ...") at once (the caller reverses).
- Reuse: an idle connection is checked just before the write. If the host closed it (EOF
  seen, transport closing), it is dropped and a new one opened: nothing was written on it,
  so this reconnect is safe and transparent. Once write() was called there is no retry.
- MessageError from encoding the request propagates unchanged (a bug, not a link fault).
- TLS (`tls`, firmware.acquirer.tls.TlsClient): a set-up, handshake or pin failure is
  NotSent with the TlsClient's reason; never a fallback to plain TCP. The acquirer
  refusing the client certificate after a TLS 1.3 handshake (an alert read in place of the
  response) is NotSent too: the host refuses before it reads any application data.
Failures are logged at WARNING on "kpos.acquirer" with `describe(request)` (log-safe).
- MAC (`mac`, a firmware.mac.MacKey set at sign-on; None sends and accepts messages
  without one): every request but network management gets field 64/128; its response
  must carry a right MAC, else the outcome is unknown: NoResponse(MAC_FAILED) (the caller
  reverses with reason A0; for exchange_many that request's entry is None).
Crash points (firmware/crashpoint.py): "link.sent" once the request is written and
drained, "link.received" once the matching response is read and checked.
"""
from __future__ import annotations

import asyncio
import logging

from firmware import crashpoint
from firmware.mac import MAC_FAILED, MacKey, needs_mac
from firmware.acquirer.tls import TlsClient, TlsError
from firmware.acquirer.messages import (
    MessageError, decode, describe, encode, frame, match_response, read_frame,
)

__all__ = ["LinkError", "NotSent", "NoResponse", "AcquirerLink"]

log = logging.getLogger("kpos.acquirer")


class LinkError(Exception):
    """The exchange failed; `reason` is short and log-safe (no card data)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NotSent(LinkError):
    """Connecting failed: nothing left the box, the request may be retried as is."""


class NoResponse(LinkError):
    """The request was written but no valid matching response came: outcome unknown."""


class AcquirerLink:
    def __init__(self, host: str, port: int, *, connect_timeout: float,
                 response_timeout: float, tls: TlsClient | None = None):
        if connect_timeout <= 0 or response_timeout <= 0:
            raise ValueError("connect_timeout and response_timeout must be > 0 seconds")
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._response_timeout = response_timeout
        self._tls = tls
        self.mac: MacKey | None = None  # the session MAK, set at sign-on
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def exchange(self, request: dict) -> dict:
        """Send `request`, return the decoded matching response. Raises NotSent/NoResponse."""
        [response] = await self._exchange([request], single=True)
        return response

    async def exchange_many(self, requests: list[dict]) -> list[dict | None]:
        """Pipelining, for store-and-forward: write every request at once, then read the
        answers, each matched to its request by STAN (their order does not matter). One
        entry per request: its response, or None when it got no valid answer by
        `response_timeout` after the last one that did (outcome unknown, as NoResponse; the
        connection is then dropped). NotSent (nothing written) when connecting fails. The
        requests must carry distinct STANs (field 11)."""
        return await self._exchange(requests, single=False)

    async def _exchange(self, requests: list[dict], *, single: bool) -> list[dict | None]:
        """exchange() (`single`: a failure raises NoResponse) and exchange_many()."""
        by_stan = {str(r.get("11", "")): i for i, r in enumerate(requests)}
        if len(by_stan) != len(requests):
            raise ValueError("exchange_many: the requests' STANs must differ")
        if self.mac is not None:
            requests = [self.mac.sign(r) if needs_mac(r.get("t", "")) else r for r in requests]
        data = b"".join(frame(encode(r)) for r in requests)
        results: list[dict | None] = [None] * len(requests)
        what = describe(requests[0]) if single else f"{len(requests)} requests from {describe(requests[0])}"
        async with self._lock:
            try:
                await self._ensure_connected()
            except NotSent as exc:
                log.warning("not sent: %s: %s", exc.reason, what)
                raise
            try:
                failure = await self._pipeline(requests, by_stan, data, results)
            except BaseException:  # cancelled mid-exchange: connection state unknown
                await asyncio.shield(self._drop())
                raise
            if failure:
                if single:
                    log.warning("no response: %s: %s", failure, what)
                else:
                    log.warning("no response to %d of %d pipelined requests: %s",
                                results.count(None), len(requests), failure)
                await self._drop()
                if single:
                    raise NoResponse(failure)
        return results

    async def _pipeline(self, requests: list[dict], by_stan: dict[str, int], data: bytes,
                        results: list[dict | None]) -> str:
        """Fill `results` in place; "" when every request got its answer, else why not."""
        loop = asyncio.get_running_loop()
        waiting, failure = len(requests), ""
        try:
            async with asyncio.timeout(self._response_timeout) as deadline:
                self._writer.write(data)
                await self._writer.drain()
                crashpoint.hit("link.sent")
                while waiting:
                    raw = await read_frame(self._reader)
                    response = decode(raw)
                    i = by_stan.get(str(response.get("11", "")))
                    if i is None and "11" not in response:  # cannot be matched: fail now
                        first = next(j for j in by_stan.values() if results[j] is None)
                        return f"mismatched response: {match_response(requests[first], response)}"
                    if i is None or results[i] is not None:
                        waited = ", ".join(k for k, j in by_stan.items() if results[j] is None)
                        log.warning("stale response skipped (waiting for STAN %s): %s", waited,
                                    describe(response))
                        continue
                    waiting -= 1
                    mismatch = self._mac_fault(requests[i], raw, response) or match_response(
                        requests[i], response)  # the MAC first: it covers the echoed fields
                    if mismatch is not None:  # that one's outcome is unknown; read on
                        failure = (mismatch if mismatch == MAC_FAILED
                                   else f"mismatched response: {mismatch}")
                        results[i] = None
                        by_stan.pop(str(response.get("11", "")))
                        continue
                    results[i] = response
                    deadline.reschedule(loop.time() + self._response_timeout)
        except TimeoutError:
            return f"no response in {self._response_timeout:.1f} s"
        except asyncio.IncompleteReadError:
            return "connection closed by host"
        except OSError as exc:  # SSLError too; drain() may report the reader's as "lost"
            refused = self._tls.refusal(self._reader.exception() or exc) if self._tls else ""
            if refused:  # the host dropped the request unread (see the module contract)
                log.warning("not sent: %s", refused)
                raise NotSent(refused) from None
            return f"connection error: {exc}"
        except MessageError as exc:
            return f"malformed response: {exc}"
        if not failure:
            crashpoint.hit("link.received")
        return failure

    def _mac_fault(self, request: dict, raw: bytes, response: dict) -> str | None:
        """MAC_FAILED when the response to a MACed request lacks a right MAC, else None."""
        mac = self.mac
        if mac is None or not needs_mac(request.get("t", "")) or mac.verify(raw, response):
            return None
        return MAC_FAILED

    async def close(self) -> None:
        """Close the connection gracefully (idempotent)."""
        async with self._lock:
            writer, self._reader, self._writer = self._writer, None, None
            if writer is None:
                return
            writer.close()
            try:
                await writer.wait_closed()
            except OSError as exc:  # the connection was already broken: it is closed now
                log.debug("close: connection already broken: %s", exc)

    async def _ensure_connected(self) -> None:
        if self._writer is not None and not self._idle_connection_ok():
            log.info("acquirer closed the idle connection; reconnecting")
            await self._drop()
        if self._writer is not None:
            return
        where = f"{self._host}:{self._port}"
        opener = self._tls.open if self._tls else asyncio.open_connection
        try:
            self._reader, self._writer = await asyncio.wait_for(
                opener(self._host, self._port), self._connect_timeout)
        except TimeoutError:
            raise NotSent(
                f"connect to {where} timed out after {self._connect_timeout:.1f} s") from None
        except TlsError as exc:
            raise NotSent(exc.reason) from None
        except OSError as exc:
            raise NotSent(f"connect to {where} failed: {exc}") from exc
        log.info("connected to acquirer %s", where)

    def _idle_connection_ok(self) -> bool:
        return not (self._writer.is_closing() or self._reader.at_eof())

    async def _drop(self) -> None:
        """Abort the connection without flushing (its state is unknown)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.transport.abort()
        try:
            await writer.wait_closed()
        except OSError as exc:
            log.debug("drop: connection already broken: %s", exc)
