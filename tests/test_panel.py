"""The browser front panel without a browser: its HTTP API on 127.0.0.1 (state, server-sent
events, actions, Host and token checks) and the ESC/POS receipt renderer."""
from __future__ import annotations

import asyncio
import base64
import io
import json
from dataclasses import replace
from datetime import datetime

import pytest
from PIL import Image

from conftest import run_bounded
from firmware.hal.console import ConsoleDisplay
from firmware.receipts import ReceiptData, render
from firmware.sim.escpos_render import EscposError, interpret, qr_image, render_escpos
from firmware.sim.panel import SLOW_DELAY, PanelScreen, message_fields, serve_panel
from firmware.sim.runner import sim_session

SALE = ReceiptData(
    merchant_name="KPOS DEMO STORE", merchant_id="898310048990001", terminal_id="10000001",
    operator="01", txn_type="SALE", masked_pan="622609******0014", entry_mode="CHIP",
    amount=12345, currency=156, when=datetime(2025, 3, 14, 10, 21, 5), batch=1, stan=42,
    rrn="000000000042", auth_code="123456", aid="A000000333010101", app_label="UnionPay Debit",
    tc="8E1F2A3B4C5D6E7F", pin_verified=True, qr="https://example.com/r?s=42")


# --- a tiny HTTP client (raw, so a test can send any Host header) -----------------------


class Client:
    def __init__(self, port: int, token: str = ""):
        self.port, self.token = port, token

    async def request(self, method: str, path: str, body: dict | None = None, *,
                      host: str | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode() if body is not None else b""
        hdrs = {"Host": host or f"127.0.0.1:{self.port}", "Content-Length": str(len(data))}
        if method == "POST":
            hdrs["X-KPOS-Token"] = self.token
        hdrs.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        writer.write(head.encode() + b"\r\n" + data)
        raw = await reader.read()
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), fields, payload

    async def json(self, method: str, path: str, body: dict | None = None, **kw) -> tuple[int, dict]:
        status, _, payload = await self.request(method, path, body, **kw)
        return status, json.loads(payload)


class Events:
    """An open /api/events stream: `until(section, predicate)` reads events until one fits."""

    async def open(self, port: int) -> "Events":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(f"GET /api/events HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert b"text/event-stream" in head
        return self

    async def next(self) -> tuple[str, object]:
        block = (await self.reader.readuntil(b"\n\n")).decode()
        lines = dict(line.split(": ", 1) for line in block.strip().split("\n") if not line.startswith(":"))
        return (lines["event"], json.loads(lines["data"])) if lines else await self.next()

    async def until(self, section: str, fits, timeout: float = 10) -> object:
        async def scan():
            while True:
                name, data = await self.next()
                if name == section and fits(data):
                    return data
        return await asyncio.wait_for(scan(), timeout)

    def close(self) -> None:
        self.writer.close()


def with_panel(sim_config, body, *, port: int = 0):
    """Run `body(session, panel, client)` with a simulator and its panel on a free port."""
    async def go():
        screen = PanelScreen(ConsoleDisplay(io.StringIO()))
        async with sim_session(sim_config, forward_display=screen) as session:
            async with serve_panel(session, screen, port) as panel:
                await session.display.wait_for("Key in amount", timeout=10)
                await body(session, panel, Client(panel.port, panel.token))
    run_bounded(go(), 60)


def png_size(data_url: str) -> tuple[int, int]:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).size


# --- the HTTP API ----------------------------------------------------------------------------


def test_state_has_the_rendered_screen_cards_network_and_empty_queue(sim_config):
    async def body(session, panel, client):
        status, state = await client.json("GET", "/api/state")
        assert status == 200 and state["token"] == panel.token
        assert "Key in amount" in state["screen"]["text"]
        assert png_size(state["screen"]["png"]) == (320, 240)
        assert "approve" in [c["name"] for c in state["cards"]]
        assert state["network"] == {"state": "up"}
        assert state["queue"]["count"] == 0 and state["journal"] == []
        status, _, page = await client.request("GET", "/")
        assert status == 200 and b'id="screen-text"' in page
    with_panel(sim_config, body)


def test_events_push_a_screen_change_after_a_key_post(sim_config):
    async def body(session, panel, client):
        events = await Events().open(panel.port)
        try:
            first = await events.until("screen", lambda s: True)
            assert "Key in amount" in first["text"]
            assert await client.json("POST", "/api/key", {"key": "5"}) == (200, {"ok": True})
            changed = await events.until("screen", lambda s: "0.05" in s["text"])
            assert png_size(changed["png"]) == (320, 240)
        finally:
            events.close()
    with_panel(sim_config, body)


def test_a_sale_through_the_api_shows_journal_receipts_and_masked_messages(sim_config, test_pans):
    async def body(session, panel, client):
        for key in ("1", "00", "ENTER"):
            assert (await client.json("POST", "/api/key", {"key": key}))[0] == 200
        await session.display.wait_for("CNY 1.00", timeout=10)
        assert await client.json("POST", "/api/card", {"action": "insert", "card": "approve"}) == (
            200, {"ok": True})
        await session.display.wait_for("Enter PIN", timeout=10)
        for key in "1234":
            await client.json("POST", "/api/key", {"key": key})
        await client.json("POST", "/api/key", {"key": "ENTER"})
        await session.display.wait_for("Take receipts", timeout=15)
        status, state = await client.json("GET", "/api/state")
        [txn] = state["journal"]
        assert (txn["status"], txn["amount"], txn["pan"]) == ("APPROVED", "CNY 1.00", "622609******0014")
        assert len(state["receipts"]) == len(session.printer.printed) >= 1
        first = state["receipts"][0]
        status, headers, png = await client.request("GET", first["png"])
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(png)).width == 384
        status, _, raw = await client.request("GET", first["bin"])
        assert raw == (session.receipts_dir / f"{first['name']}.bin").read_bytes()
        sale = next(m for m in state["messages"] if m["mti"] == "0200")
        shown = {f[0]: f[2] for f in sale["fields"]}
        assert shown["2"] == "622609******0014" and shown["52"].startswith("(hidden")
        assert shown["55"].startswith("(hidden") and shown["4"] == "000000000100"
        assert shown["14"].startswith("(hidden") and shown["35"].startswith("(hidden")
        assert any(m["mti"] == "0210" and m["dir"] == "answer" for m in state["messages"])
        text = json.dumps(state)
        assert not [pan for pan in test_pans if pan in text]
        assert (await client.request("GET", "/api/receipts/../journal.db.bin"))[0] == 404
    with_panel(sim_config, body)


def test_network_switch_and_refused_actions(sim_config):
    async def body(session, panel, client):
        assert (await client.json("POST", "/api/network", {"state": "down"}))[0] == 200
        assert session.acquirer.down
        assert (await client.json("GET", "/api/state"))[1]["network"] == {"state": "down"}
        await client.json("POST", "/api/network", {"state": "slow"})
        assert not session.acquirer.down and session.acquirer.faults.delay == SLOW_DELAY
        await client.json("POST", "/api/network", {"state": "up"})
        assert session.acquirer.faults.delay == 0
        assert await client.json("POST", "/api/card", {"action": "insert", "card": "nope"}) == (
            409, {"error": "unknown card 'nope'"})
        assert (await client.json("POST", "/api/key", {"key": "7 "}))[0] == 409
        assert (await client.json("POST", "/api/scan", {"code": "12ab"}))[0] == 409
        assert (await client.json("POST", "/api/reboot", {}))[0] == 409
    with_panel(sim_config, body)


def test_foreign_host_missing_token_and_cross_origin_are_refused(sim_config):
    async def body(session, panel, client):
        port = panel.port
        assert (await client.json("GET", "/api/state", host=f"evil.example:{port}")) == (
            403, {"error": "bad Host header"})
        assert (await client.json("GET", "/api/state", host="127.0.0.1:1"))[0] == 403
        assert (await client.json("GET", "/api/state", host=f"localhost:{port}"))[0] == 200
        tokenless = Client(port, "")
        assert (await tokenless.json("POST", "/api/key", {"key": "1"}))[0] == 403
        assert (await client.json("POST", "/api/key", {"key": "1"},
                                  headers={"Origin": "http://evil.example"}))[0] == 403
        assert (await client.json("POST", "/api/key", {"key": "1"},
                                  headers={"Origin": f"http://localhost:{port}"}))[0] == 200
        shown = await session.display.wait_for("CNY 0.", timeout=10)
        assert "CNY 0.01" in shown.lines  # the refused presses never reached the terminal
    with_panel(sim_config, body)


def test_listens_on_loopback_only(sim_config):
    async def body(session, panel, client):
        assert [s.getsockname()[0] for s in panel._server.sockets] == ["127.0.0.1"]
    with_panel(sim_config, body)


def test_message_fields_mask_the_pan_and_hide_card_data_and_keys():
    rows = message_fields({"t": "0200", "2": "6226090000000014", "4": "000000000100",
                           "35": "6226090000000014=30122010000000000", "52": b"\x01" * 8,
                           "55": b"\x9f\x26\x08" + b"\x00" * 8, "62": "AB" * 40, "64": b"\x02" * 8})
    shown = {field: value for field, _name, value in rows}
    assert [r[0] for r in rows] == ["2", "4", "35", "52", "55", "62", "64"]
    assert shown["2"] == "622609******0014" and shown["4"] == "000000000100"
    assert all(shown[f].startswith("(hidden") for f in ("35", "52", "55", "62", "64"))
    assert rows[1][1] == "Amount, Transaction"


# --- the ESC/POS renderer ----------------------------------------------------------------------


def test_a_real_chinese_receipt_renders_its_lines_qr_and_cut(tmp_path):
    logo = tmp_path / "logo.png"
    Image.new("1", (64, 32), 0).save(logo)
    raw = render(SALE, "merchant", lang="zh", logo=logo)
    paper = render_escpos(raw, "GB18030")
    texts = paper.texts()
    assert texts[0].strip() == "KPOS DEMO STORE" and "商户存根" in texts[1]
    assert any("622609******0014" in t and t.startswith("卡号") for t in texts)
    assert any(t.startswith("金额:") and t.endswith("RMB 123.45") for t in texts)
    kinds = [line.kind for line in paper.lines]
    assert kinds[0] == "image" and kinds[-1] == "cut" and kinds.count("qr") == 1
    [qr] = [line for line in paper.lines if line.kind == "qr"]
    assert qr.text == SALE.qr and qr.style.align == "center"
    assert paper.image.width == 384 and paper.image.mode == "L"
    # the black logo, at the left: python-escpos cannot centre without the paper width
    assert paper.image.crop((0, 0, 64, 32)).getextrema() == (0, 0)
    assert paper.image.crop((64, 0, 384, 32)).getextrema() == (255, 255)


def test_qr_on_paper_matches_the_code_of_its_text():
    paper = render_escpos(render(SALE, "customer"), "GB18030")
    [qr] = [line for line in paper.lines if line.kind == "qr"]
    want = qr_image(SALE.qr, 5, "L")
    assert qr.image.tobytes() == want.tobytes()
    top = sum(block_height(line) for line in paper.lines[:paper.lines.index(qr)])
    left = (384 - want.width) // 2
    drawn = paper.image.crop((left, top, left + want.width, top + want.height))
    assert drawn.tobytes() == want.tobytes()
    import qrcode
    code = qrcode.QRCode(border=4, error_correction=qrcode.constants.ERROR_CORRECT_L)
    code.add_data(SALE.qr)
    code.make(fit=True)
    matrix = code.get_matrix()  # border included: sample each module's centre
    sampled = [[drawn.getpixel((5 * x + 2, 5 * y + 2)) == 0 for x in range(len(matrix))]
               for y in range(len(matrix))]
    assert sampled == matrix


def block_height(line) -> int:
    from firmware.sim.escpos_render import CHAR_H
    if line.kind in ("qr", "image"):
        return line.image.height
    if line.kind == "feed":
        return CHAR_H * len(line.text)
    return CHAR_H * (line.style.height if line.kind == "text" else 1)


def test_styles_bold_double_height_and_alignment():
    raw = (b"\x1b@\x1ba\x02right\n\x1ba\x00\x1bE\x01bold\n\x1bE\x00thin\n"
           b"\x1d!\x11big\n\x1d!\x00\x1dV\x00")
    lines = interpret(raw)
    assert [(l.kind, l.text) for l in lines] == [("text", "right"), ("text", "bold"),
                                                 ("text", "thin"), ("text", "big"), ("cut", "")]
    assert lines[0].style.align == "right" and lines[1].style.bold and not lines[2].style.bold
    assert (lines[3].style.width, lines[3].style.height) == (2, 2)
    image = render_escpos(raw).image
    ink = [sum(255 - p for p in image.crop((0, 24 * i, 384, 24 * (i + 1))).tobytes()) for i in (1, 2)]
    assert ink[0] > ink[1] * 1.2  # bold prints darker than the same length thin
    assert image.height == 24 * 4 + 48  # two rows for "big"
    assert image.crop((0, 0, 300, 24)).getextrema() == (255, 255)  # "right" is at the right


def test_utf8_printer_text_and_unknown_or_short_commands():
    assert interpret("收据\n".encode(), "UTF-8")[0].text == "收据"
    with pytest.raises(EscposError, match="GS 'x' at byte 2"):
        interpret(b"\x1b@\x1dx")
    with pytest.raises(EscposError, match="cut short"):
        interpret(b"\x1dv0\x00\x10\x00\x10\x00\xff")
    assert replace(interpret(b"a\n")[0], image=None).text == "a"
