"""Simulated card reader: test cards from the catalog, answered by the in-process EMV emulator.

`insert()`, `tap()` and `remove()` may be called from any thread (console, script, tests);
`transmit()` runs on the reader worker. A lock guards the slot.
"""
from __future__ import annotations

import threading
from typing import Callable

from firmware.flows.types import CardInserted, CardRemoved
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import Catalog

__all__ = ["SimCardReader"]


class SimCardReader:
    def __init__(self, catalog: Catalog):
        self._catalog = catalog
        self._lock = threading.Lock()
        self._card: CardEmulator | None = None
        self._post: Callable[[object], None] = lambda event: None
        self.contactless = False

    def attach(self, post: Callable[[object], None]) -> None:
        self._post = post

    def insert(self, name: str, *, contactless: bool = False) -> None:
        """Put test card `name` in the slot (or on the contactless field). KeyError if unknown."""
        card = self._catalog.cards[name]
        with self._lock:
            if self._card is not None:
                raise RuntimeError("a card is already in the reader; remove it first")
            self._card = CardEmulator(card, self._catalog.imk_ac, contactless=contactless)
            self.contactless = contactless
        self._post(CardInserted())

    def tap(self, name: str) -> None:
        self.insert(name, contactless=True)

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
