"""Simulator catalog: test cards, terminal keys and magic amounts from one TOML file.

Pure data loading, any thread. Shared by the acquirer simulator and the EMV card
emulator. Every key of a card is checked where it is read (`_card`); an unknown key or a
value out of its range is a CatalogError naming the card's index and the key. A terminal has
a `tmk` (hex) and an optional `pin_format` (0: TDES TMK of 16/24 bytes, the default; 4: AES
TMK of 16/24/32 bytes, AES working keys and 16-byte PIN blocks). TEST DATA ONLY.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from firmware.cardsafe import luhn_ok

__all__ = ["TestCard", "CardApp", "Catalog", "CatalogError", "load_catalog",
           "default_catalog_path", "BROKEN_KINDS", "CVMS", "ODA_KINDS", "SECOND_AC_KINDS",
           "OFFLINE_KINDS"]

OUTCOMES_FIXED = {"approve", "no_response", "garbage"}
# "broken:KIND": the chip answers one deterministic defect (see firmware.sim.card_emulator).
BROKEN_KINDS = frozenset({"tlv_length", "oversized_record", "missing_pan", "bad_sw",
                          "app_blocked"})
CVMS = ("online_pin", "offline_pin", "signature", "no_cvm")  # the card's CVM list (8E)
ODA_KINDS = ("dda", "sda", "none", "bad_sda")  # offline data authentication the card offers
SECOND_AC_KINDS = ("approve", "decline")  # "decline": always AAC at the second GENERATE AC
# "approve": a TC asked for offline (GENERATE AC 1, or 2 with 8A "Z3") is given, up to UCOL
# in a row; "decline": online only, ARQC or AAC at GENERATE AC 1, AAC after "Z3"
OFFLINE_KINDS = ("decline", "approve")
CHIP_SERVICE_CODES = "26"  # first service code digit of a chip card (track 2)
MAX_PIN_TRIES = 15  # 9F17 is one byte; EMV cards keep the counter in a nibble
APP_KEYS = {"aid", "label", "priority"}


class CatalogError(ValueError):
    """A catalog entry is malformed; the message names the entry and key."""


@dataclass(frozen=True)
class CardApp:
    """One application on a card: AID (hex), label (ASCII, <= 16) and priority 1..15."""

    aid: str
    label: str
    priority: int = 1


@dataclass(frozen=True)
class TestCard:
    name: str
    pan: str
    psn: str  # PAN sequence number, 2 digits
    expiry: str  # YYMM
    pin: str
    balance: int  # minor units
    aid: str = ""  # hex; with `apps`, the first application's; "" without a chip
    label: str = ""
    outcome: str = "approve"
    pse: bool = True
    cvm: str = "online_pin"  # one of CVMS
    pin_tries: int = 3  # offline PIN try counter at insertion, 0 = blocked
    oda: str = "dda"  # one of ODA_KINDS
    second_ac: str = "approve"  # one of SECOND_AC_KINDS
    offline: str = "decline"  # one of OFFLINE_KINDS
    contactless: bool = True  # answers PPSE and can be tapped
    chip: bool = True  # False: magstripe only, never inserted or tapped
    service_code: str = "220"  # track 2 service code, 3 digits
    apps: tuple[CardApp, ...] = ()  # a multi-application card; empty: aid and label
    issuer_script: bool = False  # the host adds an issuer script (72) to its 0210

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

    @property
    def applications(self) -> tuple[CardApp, ...]:
        """The card's applications in directory order (one, unless `apps` lists more)."""
        return self.apps or (CardApp(self.aid, self.label),)


@dataclass(frozen=True)
class Catalog:
    cards: dict[str, TestCard]
    terminal_keys: dict[str, bytes]  # terminal id -> TMK
    imk_ac: bytes
    magic_amounts: dict[int, str] = field(default_factory=dict)
    pin_formats: dict[str, int] = field(default_factory=dict)  # terminal id -> 4; absent: 0

    def pin_format(self, tid: str) -> int:
        """The terminal's ISO 9564 PIN block format: 4 (AES keys) or 0 (TDES, also unknown)."""
        return self.pin_formats.get(tid, 0)

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
    terminals, pin_formats = {}, {}
    for tid, entry in raw.get("terminals", {}).items():
        where = f"{path}: terminals.{tid}"
        unknown = set(entry) - {"tmk", "pin_format"}
        if unknown:
            raise CatalogError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        fmt = entry.get("pin_format", 0)
        if fmt not in (0, 4) or isinstance(fmt, bool):
            raise CatalogError(f"{where}.pin_format: must be 0 or 4")
        terminals[tid] = _hexkey(entry.get("tmk", ""), f"{where}.tmk", (16, 24, 32) if fmt else (16, 24))
        if fmt:
            pin_formats[tid] = fmt
    imk = _hexkey(raw.get("issuer", {}).get("imk_ac", ""), f"{path}: issuer.imk_ac")
    magic = {int(k): str(v) for k, v in raw.get("magic_amounts", {}).items()}
    return Catalog(cards=cards, terminal_keys=terminals, imk_ac=imk, magic_amounts=magic,
                   pin_formats=pin_formats)


def _card(entry: dict, where: str) -> TestCard:
    known = set(TestCard.__dataclass_fields__)
    unknown = set(entry) - known
    if unknown:
        raise CatalogError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    entry = dict(entry)
    if "apps" in entry:
        if "aid" in entry or "label" in entry:
            raise CatalogError(f"{where}: apps replaces aid and label; give one or the other")
        entry["apps"] = _apps(entry["apps"], f"{where}: apps")
        entry.update(aid=entry["apps"][0].aid, label=entry["apps"][0].label)
    elif entry.get("chip", True) and ("aid" not in entry or "label" not in entry):
        raise CatalogError(f"{where}: a chip card needs aid and label (or apps)")
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
    _check_chip(card, where)
    if card.chip:
        _check_apps(card.applications, where)
    return card


def _check_chip(card: TestCard, where: str) -> None:
    """The keys that say how the chip behaves, and that they agree with each other."""
    for key, allowed in (("cvm", CVMS), ("oda", ODA_KINDS), ("second_ac", SECOND_AC_KINDS),
                         ("offline", OFFLINE_KINDS)):
        if getattr(card, key) not in allowed:
            raise CatalogError(f"{where}: {key} {getattr(card, key)!r} not one of "
                               f"{', '.join(allowed)}")
    for key in ("pse", "contactless", "chip", "issuer_script"):
        if not isinstance(getattr(card, key), bool):
            raise CatalogError(f"{where}: {key} must be true or false")
    if not _int_in(card.pin_tries, 0, MAX_PIN_TRIES):
        raise CatalogError(f"{where}: pin_tries must be an integer 0..{MAX_PIN_TRIES}")
    code = card.service_code
    if not (isinstance(code, str) and len(code) == 3 and code.isdigit()):
        raise CatalogError(f"{where}: service_code must be 3 digits")
    if not card.chip and card.contactless:
        raise CatalogError(f"{where}: contactless must be false when chip is false")
    if not card.chip and code[0] in CHIP_SERVICE_CODES:
        raise CatalogError(f"{where}: service_code {code} names a chip, but chip is false")


def _apps(raw: object, where: str) -> tuple[CardApp, ...]:
    if not isinstance(raw, list) or not raw:
        raise CatalogError(f"{where}: must be a list of {{aid, label, priority}} tables")
    apps = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != APP_KEYS:
            raise CatalogError(f"{where}[{i}]: needs exactly the keys aid, label, priority")
        apps.append(CardApp(**item))
    return tuple(apps)


def _check_apps(apps: tuple[CardApp, ...], where: str) -> None:
    for app in apps:
        try:
            aid = bytes.fromhex(app.aid) if isinstance(app.aid, str) else b""
        except ValueError:
            aid = b""
        if not 5 <= len(aid) <= 16:
            raise CatalogError(f"{where}: aid {app.aid!r} must be 5..16 bytes of hex")
        label = app.label
        if not (isinstance(label, str) and 1 <= len(label) <= 16 and label.isascii()
                and label.isprintable()):
            raise CatalogError(f"{where}: label must be 1..16 printable ASCII characters")
        if not _int_in(app.priority, 1, 15):
            raise CatalogError(f"{where}: priority must be an integer 1..15")
    if len({app.aid.upper() for app in apps}) != len(apps):
        raise CatalogError(f"{where}: the same aid twice")


def _int_in(value: object, low: int, high: int) -> bool:
    """True for an int (not a bool: TOML true is no count) in low..high."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _hexkey(text: str, where: str, sizes: tuple[int, ...] = (16, 24)) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise CatalogError(f"{where}: not hex") from exc
    if len(key) not in sizes:
        raise CatalogError(f"{where}: key must be {' or '.join(map(str, sizes))} bytes")
    return key
