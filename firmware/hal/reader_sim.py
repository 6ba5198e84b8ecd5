"""Simulated card reader: test cards from the catalog, answered by the in-process EMV emulator,
and a simulated magstripe head on the same device.

`insert()`, `tap()`, `remove()`, `swipe()` and `swipe_raw()` may be called from any thread
(console, script, tests) and only post events; `transmit()` runs on the reader worker. A lock
guards the slot. A tap is transient: a new tap replaces a card left on the contactless field
(CardRemoved, then CardInserted); a card inserted in the slot must be removed first. A test
card with `chip = false` cannot be inserted or tapped (ValueError). A swipe posts what
firmware.magstripe.swipe_event makes of the card's tracks, expiry checked on `today()`.
"""
from __future__ import annotations

import threading
from datetime import date
from typing import Callable

from firmware.flows.types import CardInserted, CardRemoved
from firmware.magstripe import swipe_event, track_data
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import Catalog

__all__ = ["SimCardReader"]


class SimCardReader:
    def __init__(self, catalog: Catalog, *, today: Callable[[], date] = date.today):
        self._catalog = catalog
        self._today = today
        self._lock = threading.Lock()
        self._card: CardEmulator | None = None
        self._post: Callable[[object], None] = lambda event: None
        self.contactless = False

    def attach(self, post: Callable[[object], None]) -> None:
        self._post = post

    def insert(self, name: str, *, contactless: bool = False) -> None:
        """Put test card `name` in the slot (or on the contactless field). KeyError if unknown,
        ValueError if it has no chip, RuntimeError if a card is in the slot already."""
        card = self._catalog.cards[name]
        if not card.chip:
            raise ValueError(f"test card {name} has no chip")
        emulator = CardEmulator(card, self._catalog.imk_ac, contactless=contactless)
        with self._lock:
            replaced = self._card is not None and contactless and self.contactless
            if self._card is not None and not replaced:
                raise RuntimeError("a card is already in the reader; remove it first")
            self._card = emulator
            self.contactless = contactless
        if replaced:
            self._post(CardRemoved())
        self._post(CardInserted())

    def tap(self, name: str) -> None:
        self.insert(name, contactless=True)

    def swipe(self, name: str) -> None:
        """Swipe test card `name` (KeyError if unknown): posts CardSwiped or SwipeFailed."""
        card = self._catalog.cards[name]
        self.swipe_raw(track_data(card.pan, card.expiry, card.service_code, f"TEST/{name}"[:26]))

    def swipe_raw(self, data: str | bytes) -> None:
        """Post what a magstripe reader sending `data` would (noise, partial reads, ...)."""
        self._post(swipe_event(data, today=self._today()))

    def remove(self) -> None:
        with self._lock:
            had = self._card is not None
            self._card = None
        if had:
            self._post(CardRemoved())

    def card_names(self) -> list[str]:
        return list(self._catalog.cards)

    def present(self) -> bool:
        with self._lock:
            return self._card is not None

    def transmit(self, apdu: bytes) -> bytes:
        with self._lock:
            card = self._card
        if card is None:
            raise OSError("no card in reader")
        return card.transmit(apdu)

    def close(self) -> None:
        with self._lock:
            self._card = None
