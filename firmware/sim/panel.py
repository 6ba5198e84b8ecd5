"""The simulator's front panel in a browser: a small HTTP server inside `kpos sim`.

Runs on the terminal's asyncio loop (stdlib streams, HTTP/1.1, one request per connection);
never blocks it: drawing (the screen, receipts) and journal reads run on worker threads.
Binds 127.0.0.1 only. Every request must carry Host 127.0.0.1:PORT or localhost:PORT
(DNS rebinding); a POST must also carry the panel's token in X-KPOS-Token (the page reads
it from GET /api/state; no CORS headers are ever sent, so another origin cannot) and, if
the browser sends one, a same-origin Origin. Refusals are 403 with a short reason.

  GET  /, /panel.js, /panel.css      the page (firmware/sim/panel/, no build step)
  GET  /api/state                    every section as one JSON object
  GET  /api/events                   server-sent events: one event per section that changed
                                     (screen, network, queue, journal, receipts, messages)
  GET  /api/receipts/NAME.png|.bin   a printed receipt drawn from its ESC/POS bytes, or them
  POST /api/key      {"key": K}      K in KEYS or "00": posted as a key press
  POST /api/card     {"action": insert|tap|swipe|remove, "card": NAME}
  POST /api/scan     {"code": DIGITS}  a wallet payment code or a product barcode
  POST /api/network  {"state": up|down|slow}  the acquirer simulator's network switch

Card data: the message log goes through `message_fields` (PAN masked, track data, PIN
block, ICC data, keys and MACs hidden); the journal shows masked PANs only; receipts are
what the printer got (masked by firmware.receipts).
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import secrets
import sqlite3
import webbrowser
from collections import deque
from contextlib import asynccontextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import AsyncIterator

from firmware.acquirer.spec import SENSITIVE_FIELDS, SPEC
from firmware.cardsafe import mask_pan
from firmware.flows.types import KEYS, Key, LinkStatus, Screen
from firmware.hal.console import scanned
from firmware.hal.display import screen_text
from firmware.hal.render import find_cjk_font, render
from firmware.money import currency_alpha, format_amount
from firmware.sim.acquirer import Faults
from firmware.sim.escpos_render import render_escpos

__all__ = ["PanelScreen", "Panel", "serve_panel", "message_fields", "DEFAULT_PORT",
           "SLOW_DELAY", "SECTIONS"]

log = logging.getLogger("kpos.sim.panel")

DEFAULT_PORT = 8470
SLOW_DELAY = 2.0  # seconds the acquirer waits before each answer when the network is "slow"
SCREEN_SIZE = (320, 240)  # pixels, like a 320x240 TFT
SECTIONS = ("screen", "network", "queue", "journal", "receipts", "messages")
MESSAGES_KEPT = 60
JOURNAL_ROWS = 10
HEARTBEAT = 1.0  # seconds between refreshes while a page listens (receipts, journal)
PING = 15.0  # seconds between SSE comments that find a page gone
MAX_HEADER = 8192  # bytes of request line + headers
MAX_BODY = 4096  # bytes of a POST body
READ_TIMEOUT = 10.0  # seconds to read a request
STATIC = Path(__file__).with_name("panel")
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/panel.js": ("panel.js", "text/javascript; charset=utf-8"),
         "/panel.css": ("panel.css", "text/css; charset=utf-8")}
HIDDEN_FIELDS = SENSITIVE_FIELDS | {"14", "53", "62", "64", "96", "128"}  # + expiry, keys, MACs


def message_fields(fields: dict) -> list[list[str]]:
    """[field, name, value] rows of an ISO 8583 field dict, in field order, safe to show:
    the PAN masked; card data, expiry, PIN block, keys and MACs replaced by their length."""
    rows = []
    for key in sorted((k for k in fields if k.isdigit() and k != "1"), key=int):
        value = fields[key]
        if key == "2" and isinstance(value, str):
            shown = mask_pan(value)
        elif key in HIDDEN_FIELDS:
            shown = f"(hidden, {len(value)} {'bytes' if isinstance(value, bytes) else 'chars'})"
        else:
            shown = value.hex().upper() if isinstance(value, bytes) else str(value)
        rows.append([key, SPEC.get(key, {}).get("desc", ""), shown])
    return rows


class PanelScreen:
    """A Display (forward target of the session's RecordingDisplay): keeps the last screen,
    tells the panel, and forwards to another display (the console). Loop thread."""

    def __init__(self, forward=None):
        self.current: Screen | None = None
        self._forward = forward
        self.listeners: list = []

    def show(self, screen: Screen) -> None:
        self.current = screen
        for listener in self.listeners:
            listener()
        if self._forward is not None:
            self._forward.show(screen)

    def close(self) -> None:
        if self._forward is not None:
            self._forward.close()


class Panel:
    """The server for one SimSession. start() binds and returns the port; stop() closes it."""

    def __init__(self, session, screen: PanelScreen):
        self.session = session
        self.screen = screen
        self.token = secrets.token_urlsafe(16)
        self.port = 0
        self.messages: deque = deque(maxlen=MESSAGES_KEPT)
        self._sections: dict[str, str] = {}  # section -> its last JSON
        self._clients: set[asyncio.Queue] = set()
        self._dirty = asyncio.Event()
        self._refresh_lock = asyncio.Lock()
        self._receipt_png: dict[str, bytes] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._message_count = 0
        self._journal_view: tuple[list, dict] = ([], {"count": 0, "reversals": 0, "advices": 0,
                                                      "alerts": 0, "items": []})

    # lifecycle ----------------------------------------------------------------------

    async def start(self, port: int = DEFAULT_PORT) -> int:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.screen.listeners.append(self._dirty.set)
        self.session.acquirer.on_message = self._on_message
        self._spawn(self._refresher())
        await self._refresh()
        log.info("front panel on http://127.0.0.1:%d/", self.port)
        return self.port

    async def stop(self) -> None:
        self.session.acquirer.on_message = None
        self.screen.listeners.remove(self._dirty.set)
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # state ----------------------------------------------------------------------------

    def _on_message(self, direction: str, fields: dict) -> None:
        self._message_count += 1
        self.messages.append({"n": self._message_count, "dir": direction,
                              "mti": str(fields.get("t", "????")),
                              "time": datetime.now().strftime("%H:%M:%S"),
                              "fields": message_fields(fields)})
        self._dirty.set()

    async def _refresher(self) -> None:
        while True:
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the stop's cancel
                async with asyncio.timeout(HEARTBEAT):
                    await self._dirty.wait()
            except TimeoutError:
                pass
            self._dirty.clear()
            if not self._clients:  # nobody listens: GET /api/state and new pages refresh first
                continue
            try:
                await self._refresh()
            except Exception:  # a journal read failing must not end the panel: shown in the log
                log.exception("front panel refresh failed")

    async def _refresh(self) -> None:
        """Rebuild every section; send the ones that changed to each listening page."""
        async with self._refresh_lock:
            sections = await self._build()
            changed = {k: v for k, v in sections.items() if self._sections.get(k) != v}
            self._sections.update(changed)
            for name, data in changed.items():
                for queue in self._clients:
                    queue.put_nowait((name, data))

    async def _build(self) -> dict[str, str]:
        terminal = self.session.terminal
        link = terminal.sale_state.link
        screen = self.screen.current
        png = await asyncio.to_thread(_screen_png, screen, link) if screen else ""
        if not terminal.stopped.is_set():
            try:
                self._journal_view = await terminal.journal_call(_journal_view)
            except (sqlite3.ProgrammingError, RuntimeError):  # the terminal stopped meanwhile
                pass  # (journal closed, or its worker shut down): keep the last view
        journal, queue = self._journal_view
        sections = {
            "screen": {"title": screen.title if screen else "", "lines": list(screen.lines) if screen else [],
                       "tone": screen.tone if screen else "info",
                       "text": screen_text(screen) if screen else "", "png": png,
                       "link": {"online": link.online, "queued": link.queued, "alerts": link.alerts}},
            "network": {"state": self.network_state()},
            "queue": queue,
            "journal": journal,
            "receipts": [{"name": name, "png": f"/api/receipts/{name}.png",
                          "bin": f"/api/receipts/{name}.bin"}
                         for name in list(self.session.printer.printed)],
            "messages": list(self.messages),
        }
        return {name: json.dumps(value) for name, value in sections.items()}

    def network_state(self) -> str:
        acquirer = self.session.acquirer
        return "down" if acquirer.down else ("slow" if acquirer.faults.delay else "up")

    def state(self) -> dict:
        return {"token": self.token, "cards": self._cards(),
                **{name: json.loads(data) for name, data in self._sections.items()}}

    def _cards(self) -> list[dict]:
        return [{"name": card.name, "outcome": card.outcome, "chip": bool(card.aid)}
                for card in self.session.catalog.cards.values()]

    # actions (loop thread) ----------------------------------------------------------------

    async def act(self, action: str, body: dict) -> str | None:
        """Do a POSTed action; None when done, else the reason it was refused."""
        handler = {"key": self._key, "card": self._card, "scan": self._scan,
                   "network": self._network}.get(action)
        if handler is None:
            return f"unknown action {action!r}"
        refused = await handler(body)
        self._dirty.set()
        return refused

    async def _key(self, body: dict) -> str | None:
        key = body.get("key")
        keys = ["0", "0"] if key == "00" else [key]
        if key != "00" and key not in KEYS:
            return f"unknown key {key!r}"
        for one in keys:
            self.session.terminal.post(Key(one))
        return None

    async def _card(self, body: dict) -> str | None:
        action, card, reader = body.get("action"), body.get("card", ""), self.session.reader
        try:
            if action == "remove":
                reader.remove()
            elif action == "swipe":
                reader.swipe(card)
            elif action in ("insert", "tap"):
                reader.insert(card, contactless=action == "tap")
            else:
                return f"unknown card action {action!r}"
        except KeyError:
            return f"unknown card {card!r}"
        except (ValueError, RuntimeError) as exc:  # no chip, no stripe, slot full
            return f"cannot {action}: {exc}"
        return None

    async def _scan(self, body: dict) -> str | None:
        code = str(body.get("code", ""))
        event = scanned(code) if code.isdigit() and code.isascii() else None
        if event is None:
            return "scan a payment code (16..24 digits) or a barcode (8, 12 or 13 digits)"
        self.session.terminal.post(event)
        return None

    async def _network(self, body: dict) -> str | None:
        state, acquirer = body.get("state"), self.session.acquirer
        if state not in ("up", "down", "slow"):
            return f"unknown network state {state!r}"
        if state == "down":
            await acquirer.go_down()
            return None
        acquirer.faults.set_to(Faults.parse(["delay", str(SLOW_DELAY)]) if state == "slow" else Faults())
        await acquirer.go_up()
        return None

    # HTTP ----------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
            await self._handle(request, writer)
        except (asyncio.TimeoutError, ConnectionError, _BadRequest) as exc:
            log.debug("panel request dropped: %s", exc)
            if isinstance(exc, _BadRequest):
                await _respond(writer, 400, {"error": str(exc)})
        except asyncio.CancelledError:
            pass  # stop(): end quietly
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, request: "_Request", writer: asyncio.StreamWriter) -> None:
        refused = self._refuse(request)
        if refused:
            await _respond(writer, 403, {"error": refused})
        elif request.method == "GET":
            await self._get(request.path, writer)
        elif request.method == "POST" and request.path.startswith("/api/"):
            try:
                body = json.loads(request.body or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                await _respond(writer, 400, {"error": "body: a JSON object"})
                return
            reason = await self.act(request.path.removeprefix("/api/"), body)
            await _respond(writer, 409 if reason else 200, {"error": reason} if reason else {"ok": True})
        else:
            await _respond(writer, 405, {"error": f"{request.method} not allowed"})

    def _refuse(self, request: "_Request") -> str | None:
        """Why the request must be refused (Host, token, Origin), or None."""
        origins = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        if request.headers.get("host") not in origins:
            return "bad Host header"
        if request.method != "POST":
            return None
        if not secrets.compare_digest(request.headers.get("x-kpos-token", ""), self.token):
            return "missing or wrong X-KPOS-Token"
        origin = request.headers.get("origin")
        if origin is not None and origin not in {f"http://{o}" for o in origins}:
            return "cross-origin request"
        return None

    async def _get(self, path: str, writer: asyncio.StreamWriter) -> None:
        path = path.split("?", 1)[0]
        if path in FILES:
            name, kind = FILES[path]
            data = await asyncio.to_thread((STATIC / name).read_bytes)
            await _respond_bytes(writer, 200, kind, data)
        elif path == "/api/state":
            await self._refresh()
            await _respond(writer, 200, self.state())
        elif path == "/api/events":
            await self._events(writer)
        elif path.startswith("/api/receipts/"):
            await self._receipt(path.removeprefix("/api/receipts/"), writer)
        else:
            await _respond(writer, 404, {"error": "not found"})

    async def _events(self, writer: asyncio.StreamWriter) -> None:
        """Server-sent events: every section now, then each change, until the page goes."""
        queue: asyncio.Queue = asyncio.Queue()
        await self._refresh()
        for name, data in self._sections.items():
            queue.put_nowait((name, data))
        self._clients.add(queue)
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-store\r\nConnection: keep-alive\r\n\r\n")
            while True:
                try:  # asyncio.timeout: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(PING):
                        name, data = await queue.get()
                    writer.write(f"event: {name}\ndata: {data}\n\n".encode())
                except TimeoutError:
                    writer.write(b": ping\n\n")
                await writer.drain()
        finally:
            self._clients.discard(queue)

    async def _receipt(self, file: str, writer: asyncio.StreamWriter) -> None:
        name, _, ext = file.rpartition(".")
        if name not in self.session.printer.printed or ext not in ("png", "bin"):
            await _respond(writer, 404, {"error": "no such receipt"})
            return
        raw = await asyncio.to_thread((self.session.receipts_dir / f"{name}.bin").read_bytes)
        if ext == "bin":
            await _respond_bytes(writer, 200, "application/octet-stream", raw,
                                 f'attachment; filename="{name}.bin"')
            return
        if name not in self._receipt_png:
            printer = self.session.cfg.printer
            self._receipt_png[name] = await asyncio.to_thread(_receipt_png, raw, printer.encoding,
                                                              printer.width)
        await _respond_bytes(writer, 200, "image/png", self._receipt_png[name],
                             f'inline; filename="{name}.png"')


@asynccontextmanager
async def serve_panel(session, screen: PanelScreen, port: int = DEFAULT_PORT,
                      open_browser: bool = False) -> AsyncIterator[Panel]:
    """The panel for `session` while the block runs. The default port falls back to a free
    one when it is taken; a port asked for explicitly that is taken raises OSError."""
    panel = Panel(session, screen)
    try:
        await panel.start(port)
    except OSError:
        if port != DEFAULT_PORT:
            raise
        await panel.start(0)
    if open_browser:
        await asyncio.to_thread(webbrowser.open, panel.url)
    try:
        yield panel
    finally:
        await panel.stop()


# --- pure helpers (any thread) -------------------------------------------------------------


@lru_cache(maxsize=16)
def _screen_png(screen: Screen, link: LinkStatus) -> str:
    """The screen as the real renderer draws it, a data: URL (PNG)."""
    image = render(screen, SCREEN_SIZE, mode="RGB", status=link, cjk_font=find_cjk_font())
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode()


def _receipt_png(raw: bytes, encoding: str, columns: int) -> bytes:
    return _png(render_escpos(raw, encoding, columns).image)


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _journal_view(journal) -> tuple[list[dict], dict]:
    """Journal worker: the newest transactions and the store-and-forward queue, as JSON."""
    rows = [{"id": r.id, "kind": r.kind, "stan": r.stan, "amount": _money(r.amount, r.currency),
             "status": r.status, "pan": r.masked_pan or "", "entry": r.entry_mode or "",
             "rc": r.response_code or "", "time": r.created_at}
            for r in journal.page(0, JOURNAL_ROWS)]
    stats = journal.queue_stats()
    items = [{"what": "reversal", "kind": r.kind, "amount": _money(r.amount, r.currency),
              "stan": r.stan, "state": f"pending, {r.attempts} tries"}
             for r in journal.pending_reversals()]
    items += [{"what": f"advice {a.code}", "kind": a.kind, "amount": _money(a.amount, a.currency),
               "stan": a.stan, "state": f"pending, {a.attempts} tries"}
              for a in journal.pending_advices()]
    queue = {"count": stats.reversals + stats.advices, "reversals": stats.reversals,
             "advices": stats.advices, "alerts": stats.alerts, "items": items}
    return rows, queue


def _money(minor: int, currency: int) -> str:
    return f"{currency_alpha(currency)} {format_amount(minor, currency)}"


class _BadRequest(Exception):
    pass


class _Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body


async def _read_request(reader: asyncio.StreamReader) -> _Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("headers too long") from exc
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError("closed before the request ended") from exc
    if len(head) > MAX_HEADER:
        raise _BadRequest("headers too long")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("bad request line")
    headers = {}
    for line in filter(None, header_lines):
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest("bad header line")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_BODY:
        raise _BadRequest("bad Content-Length")
    body = await reader.readexactly(int(length)) if int(length) else b""
    return _Request(parts[0], parts[1], headers, body)


async def _respond(writer: asyncio.StreamWriter, status: int, payload: dict) -> None:
    await _respond_bytes(writer, status, "application/json", json.dumps(payload).encode())


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict"}


async def _respond_bytes(writer: asyncio.StreamWriter, status: int, kind: str, data: bytes,
                         disposition: str = "") -> None:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\nConnection: close\r\n")
    if disposition:
        head += f"Content-Disposition: {disposition}\r\n"
    writer.write(head.encode() + b"\r\n" + data)
    await writer.drain()
