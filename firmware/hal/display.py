"""Display contract, plus the recording display scripts and tests wait on.

`show(screen)` is called on the loop and must not block: a backend that talks to slow
hardware hands the frame to its own worker. Screens are `firmware.flows.types.Screen`.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from firmware.flows.types import Screen

__all__ = ["Display", "RecordingDisplay", "screen_text"]


class Display(Protocol):
    def show(self, screen: Screen) -> None: ...

    def close(self) -> None: ...


def screen_text(screen: Screen) -> str:
    return "\n".join((screen.title, *screen.lines))


class RecordingDisplay:
    """Keeps the screens shown and lets loop code await one containing some text.

    Optionally forwards each screen to another display (the console in `kpos sim --script`).
    `keep` None keeps every screen (tests read `history` whole); a number keeps at least the
    newest `keep` (at most 2 x keep), for simulators that run for days (`kpos sim`): screens
    are then counted by mark(), which keeps counting when old screens are dropped, and
    wait_for(since=mark) takes such a count.
    """

    def __init__(self, forward: Display | None = None, *, keep: int | None = None):
        self.history: list[Screen] = []
        self.keep = keep
        self.dropped = 0  # screens dropped off the front of history (keep)
        self._forward = forward
        self._changed = asyncio.Event()

    def mark(self) -> int:
        """How many screens have been shown so far (a `since` for wait_for)."""
        return self.dropped + len(self.history)

    @property
    def current(self) -> Screen | None:
        return self.history[-1] if self.history else None

    def show(self, screen: Screen) -> None:
        self.history.append(screen)
        if self.keep is not None and len(self.history) > 2 * self.keep:
            cut = len(self.history) - self.keep
            del self.history[:cut]
            self.dropped += cut
        self._changed.set()
        if self._forward is not None:
            self._forward.show(screen)

    async def wait_for(self, text: str, *, timeout: float, since: int = 0) -> Screen:
        """The first screen shown at count >= `since` (mark()) whose text contains `text`
        (TimeoutError if none; screens already dropped are not searched)."""
        async def scan() -> Screen:
            shown = max(since, self.dropped)
            while True:
                while shown < self.mark():
                    screen = self.history[max(shown - self.dropped, 0)]
                    if text in screen_text(screen):
                        return screen
                    shown = max(shown + 1, self.dropped)
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            shown = screen_text(self.current) if self.current else "(nothing)"
            raise TimeoutError(f"no screen with {text!r} within {timeout} s; showing:\n{shown}") from None

    def set_status(self, status) -> None:
        """The status bar (LinkStatus) goes on to a forward display that draws one."""
        set_status = getattr(self._forward, "set_status", None)
        if set_status is not None:
            set_status(status)

    def close(self) -> None:
        if self._forward is not None:
            self._forward.close()
