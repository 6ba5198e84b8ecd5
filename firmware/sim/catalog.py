"""Simulator catalog: test cards, terminal keys and magic amounts from one TOML file.

Pure data loading, any thread. Shared by the acquirer simulator and the EMV card
emulator. TEST DATA ONLY.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from firmware.cardsafe import luhn_ok

__all__ = ["TestCard", "Catalog", "CatalogError", "load_catalog", "default_catalog_path",
           "BROKEN_KINDS"]

OUTCOMES_FIXED = {"approve", "no_response", "garbage"}
# "broken:KIND": the chip answers one deterministic defect (see firmware.sim.card_emulator).
BROKEN_KINDS = frozenset({"tlv_length", "oversized_record", "missing_pan", "bad_sw"})


class CatalogError(ValueError):
    """A catalog entry is malformed; the message names the entry and key."""


@dataclass(frozen=True)
class TestCard:
    name: str
    pan: str
    psn: str  # PAN sequence number, 2 digits
    expiry: str  # YYMM
    pin: str
    balance: int  # minor units
    aid: str  # hex
    label: str
    outcome: str = "approve"
    pse: bool = True

    def __repr__(self) -> str:  # never show the PAN or PIN
        return f"TestCard({self.name!r})"

    @property
    def forced_code(self) -> str | None:
        """Response code the host always answers for this card, if any."""
        return self.outcome.split(":", 1)[1] if self.outcome.startswith("decline:") else None

    @property
    def broken(self) -> str | None:
        """The chip defect this card emulates ("tlv_length", ...), if any."""
        return self.outcome.split(":", 1)[1] if self.outcome.startswith("broken:") else None


@dataclass(frozen=True)
class Catalog:
    cards: dict[str, TestCard]
    terminal_keys: dict[str, bytes]  # terminal id -> TMK
    imk_ac: bytes
    magic_amounts: dict[int, str] = field(default_factory=dict)

    def by_pan(self, pan: str) -> TestCard | None:
        return next((c for c in self.cards.values() if c.pan == pan), None)


def default_catalog_path() -> Path:
    return Path(str(resources.files("firmware.sim").joinpath("catalog.toml")))


def load_catalog(path: str | Path | None = None) -> Catalog:
    path = Path(path) if path else default_catalog_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    cards = {}
    for i, entry in enumerate(raw.get("cards", [])):
        card = _card(entry, f"{path}: cards[{i}]")
        if card.name in cards:
            raise CatalogError(f"{path}: cards[{i}]: duplicate name {card.name!r}")
        cards[card.name] = card
    terminals = {
        tid: _hexkey(t.get("tmk", ""), f"{path}: terminals.{tid}.tmk")
        for tid, t in raw.get("terminals", {}).items()
    }
    imk = _hexkey(raw.get("issuer", {}).get("imk_ac", ""), f"{path}: issuer.imk_ac")
    magic = {int(k): str(v) for k, v in raw.get("magic_amounts", {}).items()}
    return Catalog(cards=cards, terminal_keys=terminals, imk_ac=imk, magic_amounts=magic)


def _card(entry: dict, where: str) -> TestCard:
    known = set(TestCard.__dataclass_fields__)
    unknown = set(entry) - known
    if unknown:
        raise CatalogError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    try:
        card = TestCard(**entry)
    except TypeError as exc:
        raise CatalogError(f"{where}: {exc}") from exc
    if not luhn_ok(card.pan):
        raise CatalogError(f"{where}: pan fails the Luhn check")
    if not (len(card.expiry) == 4 and card.expiry.isdigit()):
        raise CatalogError(f"{where}: expiry must be YYMM")
    if not (card.outcome in OUTCOMES_FIXED or card.forced_code or card.broken in BROKEN_KINDS):
        raise CatalogError(f"{where}: outcome {card.outcome!r} not understood")
    return card


def _hexkey(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise CatalogError(f"{where}: not hex") from exc
    if len(key) not in (16, 24):
        raise CatalogError(f"{where}: key must be 16 or 24 bytes")
    return key
