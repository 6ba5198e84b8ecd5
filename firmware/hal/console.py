"""Console front panel for `kpos sim`: the screen on stdout, keys and card commands from stdin.

ConsoleDisplay.show runs on the loop (one short write). ConsolePanel reads stdin on its own
daemon thread and only posts events (DESIGN §2); card commands (insert, tap, swipe, remove)
go to the simulated reader, which posts its own events.
"""
from __future__ import annotations

import sys
import threading
from typing import Callable, TextIO

from firmware.flows.types import KEYS, BarcodeScanned, CodeScanned, Key, Screen

__all__ = ["ConsoleDisplay", "ConsolePanel", "parse_console_line", "scanned", "HELP"]

WIDTH = 22

HELP = """\
Keys:   a line of digits = those digits then ENTER (e.g. 1250 -> CNY 12.50, 1234 -> PIN)
        (empty line) ENTER  b BACK  c CLEAR  x CANCEL  m MENU  k <keys...> raw keys, no ENTER
Cards:  insert <card>   tap <card>   swipe <card>   remove   cards (list test cards)
Scanner: scan <code>  (a customer's payment code, 16..24 digits, or a product barcode,
        8/12/13 digits)
Other:  help   quit"""


class ConsoleDisplay:
    def __init__(self, out: TextIO | None = None):
        self._out = out or sys.stdout

    def show(self, screen: Screen) -> None:
        mark = {"ok": "+", "error": "!"}.get(screen.tone, " ")
        rows = [f"{mark} {screen.title}", *(f"  {line}" for line in screen.lines)]
        bar = "+" + "-" * WIDTH + "+"
        body = "\n".join(f"|{row[:WIDTH]:<{WIDTH}}|" for row in rows)
        self._out.write(f"{bar}\n{body}\n{bar}\n")
        self._out.flush()

    def close(self) -> None:
        pass


KEY_WORDS = {"": ["ENTER"], "b": ["BACK"], "c": ["CLEAR"], "x": ["CANCEL"], "m": ["MENU"],
             "enter": ["ENTER"], "back": ["BACK"], "clear": ["CLEAR"], "cancel": ["CANCEL"],
             "menu": ["MENU"]}


def parse_console_line(line: str) -> tuple[str, list[str]]:
    """('keys', [...]) | ('insert'|'tap'|'swipe', [card]) | ('scan', [code])
    | ('remove'|'cards'|'help'|'quit', []) | ('error', [msg])."""
    words = line.strip().split()
    head = words[0].lower() if words else ""
    if line.strip().isdigit():
        return "keys", [*line.strip(), "ENTER"]
    if head in KEY_WORDS and len(words) <= 1:
        return "keys", KEY_WORDS[head]
    if head == "k":
        keys = [w.upper() if not w.isdigit() else w for w in words[1:]]
        flat = [k for w in keys for k in (list(w) if w.isdigit() else [w])]
        bad = [k for k in flat if k not in KEYS]
        return ("error", [f"unknown key {bad[0]}"]) if bad else ("keys", flat)
    if head in ("insert", "tap", "swipe") and len(words) == 2:
        return head, [words[1]]
    if head == "scan" and len(words) == 2:
        code = words[1]
        ok = code.isdigit() and code.isascii() and scanned(code) is not None
        return ("scan", [code]) if ok else ("error", ["scan a payment code (16..24 digits) "
                                                      "or a barcode (8, 12 or 13 digits)"])
    if head in ("remove", "cards", "help", "quit") and len(words) == 1:
        return head, []
    return "error", [f"not understood: {line.strip()!r} (type help)"]


def scanned(code: str) -> CodeScanned | BarcodeScanned | None:
    """What a scanner reading `code` posts: a product barcode (8, 12, 13 digits) or a
    wallet payment code (16..24 digits); None for anything else."""
    if len(code) in (8, 12, 13):
        return BarcodeScanned(code)
    return CodeScanned(code) if 16 <= len(code) <= 24 else None


class ConsolePanel:
    """Reads commands from a text stream on a daemon thread."""

    def __init__(self, reader, stream: TextIO | None = None, out: TextIO | None = None):
        self._reader = reader
        self._in = stream or sys.stdin
        self._out = out or sys.stdout
        self._post: Callable[[object], None] = lambda event: None
        self._on_quit: Callable[[], None] = lambda: None

    def attach(self, post: Callable[[object], None], on_quit: Callable[[], None]) -> None:
        self._post = post
        self._on_quit = on_quit
        threading.Thread(target=self._run, name="kpos-console", daemon=True).start()

    def _run(self) -> None:
        self._out.write(HELP + "\n")
        for line in self._in:
            if not self._command(line):
                break
        self._on_quit()

    def _command(self, line: str) -> bool:
        kind, args = parse_console_line(line)
        if kind == "keys":
            for key in args:
                self._post(Key(key))
        elif kind in ("insert", "tap", "swipe"):
            try:
                self._present(kind, args[0])
            except (KeyError, ValueError, RuntimeError) as exc:  # unknown card, no chip, slot full
                self._say(f"cannot {kind}: {exc}")
        elif kind == "scan":
            self._post(scanned(args[0]))
        elif kind == "remove":
            self._reader.remove()
        elif kind == "cards":
            self._say("test cards: " + ", ".join(self._reader.card_names()))
        elif kind == "help":
            self._say(HELP)
        elif kind == "quit":
            return False
        else:
            self._say(args[0])
        return True

    def _present(self, kind: str, card: str) -> None:
        if kind == "swipe":
            self._reader.swipe(card)
        else:
            self._reader.insert(card, contactless=kind == "tap")

    def _say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()
