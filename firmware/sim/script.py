"""Scenario scripts for `kpos sim --script FILE`: drive the simulator with no person at it.

One command per line; '#' starts a comment. Actions:
    keys 1 2 5 0 ENTER          keys in order (digits may be grouped: `keys 1250 ENTER`;
                                names ENTER BACK CLEAR CANCEL MENU)
    login NO PASSWORD           log operator NO in (keys NO ENTER PASSWORD ENTER)
    scan CODE                   the scanner reads a customer's payment code (16..24 digits)
                                or a product barcode (8, 12 or 13 digits)
    insert CARD | tap CARD      present a catalog test card (chip / contactless)
    swipe CARD                  swipe a catalog test card's magnetic stripe
    remove                      take the card out
    fault KNOB ...              set the acquirer simulator's fault knobs (Faults.parse; knobs
                                not named are off): none | drop | disconnect | garble |
                                close_before_read | close_mid_frame | wrong_stan |
                                answer_twice | delay SECONDS | times N | mti PREFIX,
                                e.g. `fault drop times 1 mti 0220`
    acquirer down|up|restart    the acquirer's network switch: refuse connections and close
                                the open ones | listen again | restart on the same port
    acquirer unbalance N        the next N settlement requests (0500) are answered
                                "out of balance" (forces a batch upload)
Expectations ([within S] defaults to 10 s where they wait):
    expect screen "TEXT" [within S]   a screen containing TEXT appears after the last action
    expect receipts N                 N receipt copies printed so far in this run
    expect receipt merchant|customer "TEXT"   the newest copy of that kind contains TEXT
    expect journal STATUS             the newest transaction's status (APPROVED, DECLINED, ..., NONE)
    expect reversals N                pending reversals in the journal
    expect balance CARD AMOUNT        the simulator's balance for a card, in minor units
    expect signon [within S]          the terminal has signed on (session keys installed)
    expect queue N [within S]         the journal's pending reversals + pending advices are N
    expect ledger STAN CODE [within S]  the acquirer recorded CODE for that STAN (a sale or
                                      an advice of this terminal; STAN as 1..6 digits)
    expect batch N                    the terminal's current batch number is N
`queue` and `ledger` are re-checked after every new screen and every request the acquirer
handles (no polling); a queue that drains without either shows up when the idle screen
redraws its queue count. Runs on the loop; a failed expectation raises ScriptError naming
the line.
"""
from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from firmware.flows.types import Key
from firmware.hal.console import scanned
from firmware.sim.acquirer import Faults
from firmware.sim.runner import SimSession

__all__ = ["ScriptError", "Step", "parse_script", "run_script"]

KEY_NAMES = {"ENTER", "BACK", "CLEAR", "CANCEL", "MENU"}
DEFAULT_WITHIN = 10.0
EXPECTATIONS = ("screen", "receipts", "receipt", "journal", "reversals", "balance", "queue",
                "ledger", "batch")
ACQUIRER_SWITCH = {"down": "go_down", "up": "go_up", "restart": "restart"}  # verb -> method


class ScriptError(Exception):
    """A script line is malformed or its expectation failed."""


@dataclass(frozen=True, slots=True)
class Step:
    line: int
    words: tuple[str, ...]

    def where(self) -> str:
        return f"line {self.line}: {' '.join(self.words)}"


def parse_script(text: str, name: str = "<script>") -> list[Step]:
    """The script's steps, every line checked first. A line that repeats an earlier one
    shares its words (a soak's 70,000-line script: 6 MB of steps, not 25 MB)."""
    steps, seen = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        words = seen.get(raw)
        if words is None:
            try:
                words = tuple(shlex.split(raw, comments=True))
            except ValueError as exc:
                raise ScriptError(f"{name}: line {number}: {exc}") from None
            if words:
                _check(words, f"{name}: line {number}")
            seen[raw] = words
        if words:
            steps.append(Step(number, words))
    if not steps:
        raise ScriptError(f"{name}: no steps")
    return steps


def _check(words: tuple[str, ...], where: str) -> None:
    verb = words[0]
    if verb == "keys":
        bad = [w for w in words[1:] if not (w.isdigit() or w in KEY_NAMES)]
        if bad or len(words) < 2:
            raise ScriptError(f"{where}: bad key {bad[0] if bad else '(none)'}")
    elif verb in ("insert", "tap", "swipe") and len(words) == 2:
        return
    elif verb == "remove" and len(words) == 1:
        return
    elif verb == "login" and len(words) == 3 and words[1].isdigit() and words[2].isdigit():
        return
    elif verb == "scan" and len(words) == 2 and words[1].isdigit() and scanned(words[1]):
        return
    elif verb == "acquirer" and len(words) == 3 and words[1] == "unbalance" and words[2].isdigit():
        return
    elif verb == "fault":
        try:
            Faults.parse(words[1:])
        except ValueError as exc:
            raise ScriptError(f"{where}: {exc}") from None
    elif verb == "acquirer" and len(words) == 2 and words[1] in ACQUIRER_SWITCH:
        return
    elif verb == "expect" and words[1:2] == ("signon",):
        return
    elif verb == "expect" and len(words) >= 3:
        if words[1] not in EXPECTATIONS:
            raise ScriptError(f"{where}: unknown expectation {words[1]!r}")
        if words[1] == "ledger" and not (len(words) >= 4 and words[2].isdigit()
                                         and len(words[2]) <= 6 and len(words[3]) == 2):
            raise ScriptError(f"{where}: want expect ledger STAN CODE")
    else:
        raise ScriptError(f"{where}: not understood")


async def run_script(session: SimSession, steps: list[Step], *, log=print) -> None:
    runner = _Runner(session, log)
    for step in steps:
        try:
            await runner.do(step.words)
        except (TimeoutError, AssertionError, KeyError, ValueError) as exc:
            raise ScriptError(f"{step.where()}: {exc}") from None
        log(f"ok  {step.where()}")


class _Runner:
    def __init__(self, session: SimSession, log):
        self.s = session
        self.log = log
        self.mark = session.display.mark()
        self.printed_at_start = len(session.printer.printed)

    async def do(self, words: tuple[str, ...]) -> None:
        verb, args = words[0], words[1:]
        if verb == "expect":
            await self.expect(args[0], args[1:])
            return
        self.mark = self.s.display.mark()
        if verb == "keys":
            for word in args:
                for key in (list(word) if word.isdigit() else [word]):
                    self.s.terminal.post(Key(key))
        elif verb in ("insert", "tap"):
            self.s.reader.insert(args[0], contactless=verb == "tap")
        elif verb == "swipe":
            self.s.reader.swipe(args[0])
        elif verb == "remove":
            self.s.reader.remove()
        elif verb == "login":
            for key in [*args[0], "ENTER", *args[1], "ENTER"]:
                self.s.terminal.post(Key(key))
        elif verb == "scan":
            self.s.terminal.post(scanned(args[0]))
        elif verb == "fault":
            self.s.acquirer.faults.set_to(Faults.parse(args))
        elif verb == "acquirer" and args[0] == "unbalance":
            self.s.acquirer.settle_unbalanced = int(args[1])
        elif verb == "acquirer":
            await getattr(self.s.acquirer, ACQUIRER_SWITCH[args[0]])()

    async def expect(self, what: str, args: tuple[str, ...]) -> None:
        within = DEFAULT_WITHIN
        if len(args) >= 2 and args[-2] == "within":
            within, args = float(args[-1]), args[:-2]
        if what == "signon":
            await asyncio.wait_for(self.s.terminal.signed_on.wait(), within)
        elif what == "screen":
            await self.s.display.wait_for(args[0], timeout=within, since=self.mark)
        elif what == "receipts":
            printed = len(self.s.printer.printed) - self.printed_at_start
            assert printed == int(args[0]), f"{printed} receipt copies printed, expected {args[0]}"
        elif what == "receipt":
            self.expect_receipt(args[0], args[1])
        elif what == "journal":
            record = await self.s.terminal.journal_call(lambda j: j.last())
            status = record.status if record else "NONE"
            assert status == args[0], f"newest transaction is {status}, expected {args[0]}"
        elif what == "reversals":
            pending = await self.s.terminal.journal_call(lambda j: len(j.pending_reversals()))
            assert pending == int(args[0]), f"{pending} pending reversals, expected {args[0]}"
        elif what == "balance":
            card = self.s.catalog.cards[args[0]]
            balance = await self.s.acquirer.in_ledger(lambda ledger: ledger.balance(card.pan))
            assert balance == int(args[1]), f"balance of {args[0]} is {balance}, expected {args[1]}"
        elif what == "queue":
            await self.until(lambda: self.queue_differs(int(args[0])), within)
        elif what == "ledger":
            await self.until(lambda: self.ledger_lacks(f"{int(args[0]):06d}", args[1]), within)
        elif what == "batch":
            batch = await self.s.terminal.journal_call(lambda j: j.batch_no())
            assert batch == int(args[0]), f"current batch is {batch}, expected {args[0]}"

    async def until(self, check: Callable[[], Awaitable[str | None]], within: float) -> None:
        """Run `check` (None: it holds, else why not) now and again after every new screen
        and every request the acquirer handles; AssertionError when `within` s pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            screens, handled = self.s.display.mark(), self.s.acquirer.requests_handled
            failure = await check()
            if failure is None:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{failure} (after {within} s)")
            await self.next_change(screens, handled, remaining)

    async def next_change(self, screens: int, handled: int, timeout: float) -> None:
        """Return when screen number `screens` is shown or the acquirer has handled more
        than `handled` requests, or after `timeout` s (the caller judges which)."""
        waits = [asyncio.ensure_future(self.s.display.wait_for("", timeout=timeout, since=screens)),
                 asyncio.ensure_future(self.s.acquirer.wait_handled(handled + 1, timeout))]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)  # timeouts: the caller re-checks

    async def queue_differs(self, want: int) -> str | None:
        stats = await self.s.terminal.journal_call(lambda j: j.queue_stats())
        if stats.reversals + stats.advices == want:
            return None
        return f"{stats.reversals} reversals + {stats.advices} advices queued, expected {want}"

    async def ledger_lacks(self, stan: str, code: str) -> str | None:
        tid = self.s.cfg.terminal.terminal_id
        records = await self.s.acquirer.in_ledger(lambda ledger: ledger.records(tid))
        codes = [r.rc for r in records if r.stan == stan]
        return None if code in codes else f"ledger has {codes} for STAN {stan}, expected {code}"

    def expect_receipt(self, copy: str, text: str) -> None:
        names = [n for n in self.s.printer.printed[self.printed_at_start:] if n.endswith(copy)]
        assert names, f"no {copy} copy printed"
        preview = (self.s.receipts_dir / f"{names[-1]}.txt").read_text(encoding="utf-8")
        assert text in preview, f"{copy} copy {names[-1]} lacks {text!r}"


def load_script(path: Path) -> list[Step]:
    return parse_script(path.read_text(encoding="utf-8"), str(path))
