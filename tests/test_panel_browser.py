"""The front panel in a real headless Chromium (Debian's chromium, driven by Playwright): a
sale, a decline and an offline sale clicked through on the page; the screen is read from
its accessible text, the receipt image, the journal and the queue from the page.
KPOS_SCREENSHOTS=1 writes docs/panel/{sale,decline,offline}.png."""
from __future__ import annotations

import asyncio
import io
import os
import re
import threading
from pathlib import Path

import pytest

from conftest import REPO, SIM_TOML, sim_overrides

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium (apt install chromium)", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = REPO / "docs" / "panel"
WAIT = 15_000  # ms: the longest a page waits for the terminal (the offline forward)


class PanelServer:
    """A simulator and its panel on their own loop in a thread, for the browser to drive."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="panel-sim", daemon=True)

    def __enter__(self) -> "PanelServer":
        self._thread.start()
        assert self._ready.wait(30), "simulator did not start"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "simulator did not stop"
        if self._error:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__ / __exit__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        from firmware.hal.console import ConsoleDisplay
        from firmware.sim.panel import PanelScreen, serve_panel
        from firmware.sim.runner import sim_session
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        screen = PanelScreen(ConsoleDisplay(io.StringIO()))
        async with sim_session(self.cfg, forward_display=screen) as session:
            await session.display.wait_for("Key in amount", timeout=10)
            async with serve_panel(session, screen, 0) as panel:
                self.url = panel.url
                self._ready.set()
                await self._stop.wait()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    with playwright_sync.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1440, "height": 900})
        context.set_default_timeout(WAIT)
        yield context
        context.close()


@pytest.fixture
def page_on(browser_context, tmp_path):
    """page_on(): a new simulator (fast echo and retries) and a page showing its panel."""
    from firmware.config import load_config
    over = sim_overrides(tmp_path, echo_interval=1)
    over["saf"] = {"retry_first": 0.2, "retry_max": 1.0}
    servers = []

    def open_page():
        server = PanelServer(load_config(SIM_TOML, overrides=over)).__enter__()
        servers.append(server)
        page = browser_context.new_page()
        page.goto(server.url)
        expect(page.locator("body")).to_have_attribute("data-ready", "1")
        expect(screen(page)).to_contain_text("Key in amount")
        return page

    yield open_page
    for page in browser_context.pages:
        page.close()
    for server in servers:
        server.__exit__(None, None, None)


def screen(page):
    return page.locator("#screen-text")


def keys(page, *labels: str) -> None:
    for label in labels:
        page.locator(f'#keypad [data-key="{label}"]').click()


def card(page, name: str, action: str) -> None:
    page.select_option("#card", name)
    page.locator(f'[data-card="{action}"]').click()


def shot(page, name: str) -> None:
    if os.environ.get("KPOS_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_sale_approved_with_receipt_and_journal(page_on):
    page = page_on()
    keys(page, "1", "2", "00")
    expect(screen(page)).to_contain_text("CNY 12.00")
    page.keyboard.press("5")  # keyboard shortcuts: a digit, then Backspace takes it back
    expect(screen(page)).to_contain_text("CNY 120.05")
    page.keyboard.press("Backspace")
    expect(screen(page)).to_contain_text("CNY 12.00")
    page.keyboard.press("Enter")
    card(page, "approve", "insert")
    expect(screen(page)).to_contain_text("Enter PIN")
    page.keyboard.type("1234")
    page.keyboard.press("Enter")
    expect(screen(page)).to_contain_text("Take receipts")
    expect(page.locator("#display")).to_have_attribute("aria-label", re.compile("Take receipts"))
    receipt = page.locator(".receipt img").first
    expect(receipt).to_be_visible()
    page.wait_for_function("document.querySelector('.receipt img').naturalWidth === 384")
    expect(page.locator(".receipt a").first).to_have_attribute("download", re.compile(r"\.png$"))
    row = page.locator("#journal tbody tr").first
    expect(row).to_contain_text("APPROVED")
    expect(row).to_contain_text("622609******0014")
    expect(row).to_contain_text("CNY 12.00")
    expect(page.locator("#messages summary").first).to_contain_text("0210")
    page.locator("#messages summary", has_text="request 0200").click()
    fields = page.locator("#messages details[open] table")
    expect(fields).to_contain_text("622609******0014")
    expect(fields).to_contain_text("(hidden")
    shot(page, "sale")


def test_decline_shows_the_code_and_prints_nothing(page_on):
    page = page_on()
    keys(page, "1", "00", "ENTER")
    card(page, "do_not_honour", "insert")
    expect(screen(page)).to_contain_text("Enter PIN")
    keys(page, "1", "2", "3", "4", "ENTER")
    expect(screen(page)).to_contain_text("DECLINED")
    expect(screen(page)).to_contain_text("Code 05")
    expect(page.locator("#journal tbody tr").first).to_contain_text("DECLINED")
    expect(page.locator("#receipt-count")).to_have_text("0")
    shot(page, "decline")


def test_offline_sale_queued_then_forwarded_when_the_network_is_back(page_on):
    page = page_on()
    page.locator('input[name=net][value="down"]').check()
    expect(screen(page)).to_contain_text("OFFLINE")
    keys(page, "5", "0", "00", "ENTER")
    card(page, "approve", "tap")
    expect(screen(page)).to_contain_text("Take receipts")
    expect(page.locator("#queue-count")).to_have_text("1")
    expect(page.locator("#queue tbody tr")).to_contain_text("advice 00")
    keys(page, "ENTER")
    expect(screen(page)).to_contain_text("OFFLINE  queued 1")
    expect(page.locator(".receipt img").first).to_be_visible()
    shot(page, "offline")
    page.locator('input[name=net][value="up"]').check()
    expect(page.locator("#queue-count")).to_have_text("0")
    expect(screen(page)).to_contain_text("ONLINE  queued 0")
    expect(page.locator("#messages summary").first).to_contain_text("0230")
