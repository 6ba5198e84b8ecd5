"""Scenario scripts for `kpos sim --script FILE`: drive the simulator with no person at it.

One command per line; '#' starts a comment. Actions:
    keys 1 2 5 0 ENTER          keys in order (digits may be grouped: `keys 1250 ENTER`)
    insert CARD | tap CARD      present a catalog test card (chip / contactless)
    swipe CARD                  swipe a catalog test card's magnetic stripe
    remove                      take the card out
    fault none|drop|disconnect|garble|delay SECONDS   acquirer simulator fault knobs
Expectations (each waits, on display events, up to `within` seconds, default 10):
    expect screen "TEXT" [within S]   a screen containing TEXT appears after the last action
    expect receipts N                 N receipt copies printed so far in this run
    expect receipt merchant|customer "TEXT"   the newest copy of that kind contains TEXT
    expect journal STATUS             the newest transaction's status (APPROVED, DECLINED, ..., NONE)
    expect reversals N                pending reversals in the journal
    expect balance CARD AMOUNT        the simulator's balance for a card, in minor units
    expect signon                     the terminal has signed on (session keys installed)
Runs on the loop; a failed expectation raises ScriptError naming the line.
"""
from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from pathlib import Path

from firmware.flows.types import Key
from firmware.sim.runner import SimSession

__all__ = ["ScriptError", "Step", "parse_script", "run_script"]

KEY_NAMES = {"ENTER", "BACK", "CLEAR", "CANCEL"}
DEFAULT_WITHIN = 10.0


class ScriptError(Exception):
    """A script line is malformed or its expectation failed."""


@dataclass(frozen=True)
class Step:
    line: int
    words: tuple[str, ...]

    def where(self) -> str:
        return f"line {self.line}: {' '.join(self.words)}"


def parse_script(text: str, name: str = "<script>") -> list[Step]:
    steps = []
    for number, raw in enumerate(text.splitlines(), start=1):
        try:
            words = tuple(shlex.split(raw, comments=True))
        except ValueError as exc:
            raise ScriptError(f"{name}: line {number}: {exc}") from None
        if words:
            _check(words, f"{name}: line {number}")
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
    elif verb == "fault" and len(words) in (2, 3):
        return
    elif verb == "expect" and words[1:] == ("signon",):
        return
    elif verb == "expect" and len(words) >= 3:
        if words[1] not in ("screen", "receipts", "receipt", "journal", "reversals", "balance"):
            raise ScriptError(f"{where}: unknown expectation {words[1]!r}")
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
        self.mark = len(session.display.history)
        self.printed_at_start = len(session.printer.printed)

    async def do(self, words: tuple[str, ...]) -> None:
        verb, args = words[0], words[1:]
        if verb == "expect":
            await self.expect(args[0], args[1:])
            return
        self.mark = len(self.s.display.history)
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
        elif verb == "fault":
            self.set_fault(args)

    def set_fault(self, args: tuple[str, ...]) -> None:
        faults = self.s.acquirer.faults
        faults.drop = faults.disconnect = faults.garble = False
        faults.delay = 0.0
        if args[0] == "delay":
            faults.delay = float(args[1])
        elif args[0] in ("drop", "disconnect", "garble"):
            setattr(faults, args[0], True)
        elif args[0] != "none":
            raise ValueError(f"unknown fault {args[0]!r}")

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

    def expect_receipt(self, copy: str, text: str) -> None:
        names = [n for n in self.s.printer.printed[self.printed_at_start:] if n.endswith(copy)]
        assert names, f"no {copy} copy printed"
        preview = (self.s.receipts_dir / f"{names[-1]}.txt").read_text(encoding="utf-8")
        assert text in preview, f"{copy} copy {names[-1]} lacks {text!r}"


def load_script(path: Path) -> list[Step]:
    return parse_script(path.read_text(encoding="utf-8"), str(path))
