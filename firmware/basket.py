"""The checkout basket: the product catalog, product barcodes and the basket's arithmetic.

Pure values and functions, any thread; only `load_products` reads a file (at start). Amounts
are int minor units throughout. Rounding rule: a percent discount is computed on the basket
subtotal and rounded half up to the minor unit, once per basket (never per line); the
discount never exceeds the subtotal, so the total is never below 0. Errors: a bad catalog
raises CatalogError naming the file and the product; a basket change that cannot be made
raises ValueError whose text is a short operator reason ("Max 999 a line").
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from firmware.flows.types import BasketLine

__all__ = ["Product", "Catalog", "CatalogError", "Basket", "DiscountLimits", "load_products",
           "barcode_error", "percent_of", "MAX_QTY", "MAX_LINES", "NAME_MAX", "CODE_MAX"]

MAX_QTY = 999  # of one line
MAX_LINES = 99  # lines of a basket (a line is picked by its number on the keypad)
NAME_MAX = 24  # characters of a product name (a receipt line)
CODE_MAX = 6  # digits of a product code
BARCODE_LENGTHS = (8, 12, 13)  # EAN-8, UPC-A, EAN-13


class CatalogError(ValueError):
    """The product catalog cannot be used; the message names the file and the product."""


@dataclass(frozen=True)
class Product:
    code: str  # 1..6 digits, keyed at the terminal
    name: str  # 1..24 characters
    price: int  # minor units, > 0
    barcode: str = ""  # EAN-13 / UPC-A / EAN-8 with its check digit, "" = none


def barcode_error(code: str) -> str:
    """"" for a valid EAN-13, UPC-A (12 digits) or EAN-8, else why not ("Not a barcode",
    "Bad check digit")."""
    if not (code.isascii() and code.isdigit() and len(code) in BARCODE_LENGTHS):
        return "Not a barcode"
    return "" if _check_digit(code[:-1]) == int(code[-1]) else "Bad check digit"


def _check_digit(body: str) -> int:
    """GS1 check digit: weights 3, 1, 3 ... from the rightmost digit of the body."""
    return -sum(int(d) * (3 - 2 * (i % 2)) for i, d in enumerate(reversed(body))) % 10


@dataclass(frozen=True)
class Catalog:
    """The products, looked up by code or barcode; duplicates are a ValueError."""

    products: tuple[Product, ...] = ()
    _codes: dict = field(init=False, repr=False, compare=False)
    _barcodes: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        codes: dict[str, Product] = {}
        barcodes: dict[str, Product] = {}
        for product in self.products:
            if product.code in codes:
                raise ValueError(f"product {product.code}: duplicate code")
            if product.barcode in barcodes:
                raise ValueError(f"product {product.code}: duplicate barcode "
                                 f"{product.barcode} (product {barcodes[product.barcode].code})")
            codes[product.code] = product
            if product.barcode:
                barcodes[product.barcode] = product
        object.__setattr__(self, "_codes", codes)
        object.__setattr__(self, "_barcodes", barcodes)

    def by_code(self, code: str) -> Product | None:
        return self._codes.get(code)

    def by_barcode(self, code: str) -> Product | None:
        return self._barcodes.get(code)


def load_products(path: Path) -> Catalog:
    """The catalog in a TOML file of [[product]] tables (code, name, price, barcode).
    Raises CatalogError naming the file (and the product) on any bad or unknown entry."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    extra = sorted(set(data) - {"product"})
    if extra:
        raise CatalogError(f"{path}: unknown key {extra[0]!r} (only [[product]] tables)")
    entries = data.get("product", [])
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f"{path}: no [[product]] tables")
    products = [_product(path, n, entry) for n, entry in enumerate(entries, 1)]
    try:
        return Catalog(tuple(products))
    except ValueError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def _product(path: Path, n: int, entry: object) -> Product:
    where = f"{path}: product #{n}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: not a table")
    code = entry.get("code")
    if isinstance(code, str):
        where += f" (code {code})"
    problem = _product_problem(entry)
    if problem:
        raise CatalogError(f"{where}: {problem}")
    return Product(entry["code"], entry["name"], entry["price"], entry.get("barcode", ""))


def _product_problem(entry: dict) -> str:
    """Why a [[product]] table is unusable ("" when it is fine)."""
    extra = sorted(set(entry) - {"code", "name", "price", "barcode"})
    if extra:
        return f"unknown key {extra[0]!r}"
    code, name, price = entry.get("code"), entry.get("name"), entry.get("price")
    barcode = entry.get("barcode", "")
    if not (isinstance(code, str) and code.isascii() and code.isdigit()
            and 1 <= len(code) <= CODE_MAX):
        return f"bad code {code!r}: a quoted string of 1-{CODE_MAX} digits"
    if not (isinstance(name, str) and name.strip() and name.isprintable()):
        return f"bad name {name!r}"
    if len(name) > NAME_MAX:
        return f"name {name!r} longer than {NAME_MAX} characters"
    if not (isinstance(price, int) and not isinstance(price, bool) and price > 0):
        return f"bad price {price!r}: minor units, an integer above 0"
    if not isinstance(barcode, str):
        return f"bad barcode {barcode!r}: a quoted string"
    if barcode and barcode_error(barcode):
        return f"barcode {barcode}: {barcode_error(barcode).lower()}"
    return ""


def percent_of(amount: int, percent: int) -> int:
    """`percent` % of `amount` (both >= 0), rounded half up to the minor unit."""
    return (amount * percent + 50) // 100


class DiscountLimits(Protocol):
    """What a discount may be without a supervisor (config [basket])."""

    discount_percent: int  # 0..100
    discount_amount: int  # minor units


@dataclass(frozen=True)
class Basket:
    """Lines of goods and a discount, asked either as an amount or as a percent of the
    subtotal (the percent stays a percent when lines change)."""

    lines: tuple[BasketLine, ...] = ()
    off: int = 0  # minor units: a discount asked as an amount
    percent: int | None = None  # a discount asked as a percent (0..100), None = by amount

    @property
    def subtotal(self) -> int:
        return sum(line.amount for line in self.lines)

    @property
    def discount(self) -> int:
        asked = self.off if self.percent is None else percent_of(self.subtotal, self.percent)
        return min(asked, self.subtotal)

    @property
    def total(self) -> int:
        return self.subtotal - self.discount

    @property
    def items(self) -> int:
        return sum(line.qty for line in self.lines)

    def add(self, product: Product, qty: int = 1) -> Basket:
        """`qty` more of `product`: on its line when it has one, else on a new last line."""
        for index, line in enumerate(self.lines):
            if line.code == product.code:
                return self.set_qty(index, line.qty + qty)
        if len(self.lines) >= MAX_LINES:
            raise ValueError("Basket full")
        line = _line(product.code, product.name, product.price, qty)
        return replace(self, lines=(*self.lines, line))

    def set_qty(self, index: int, qty: int) -> Basket:
        line = self.lines[self._index(index)]
        changed = _line(line.code, line.name, line.unit, qty)
        return replace(self, lines=(*self.lines[:index], changed, *self.lines[index + 1:]))

    def remove(self, index: int) -> Basket:
        index = self._index(index)
        return replace(self, lines=self.lines[:index] + self.lines[index + 1:])

    def with_discount(self, *, amount: int | None = None, percent: int | None = None) -> Basket:
        """The discount replaced: `amount` minor units (>= 0) or `percent` (0..100)."""
        if (amount is None) == (percent is None):
            raise ValueError("Discount: amount or percent")
        if percent is not None:
            if not 0 <= percent <= 100:
                raise ValueError("Discount 0-100%")
            return replace(self, off=0, percent=percent)
        if amount < 0:
            raise ValueError("Discount below 0")
        return replace(self, off=amount, percent=None)

    def discount_needs_supervisor(self, limits: DiscountLimits) -> bool:
        """The discount is above `limits.discount_amount`, or above `limits.discount_percent`
        (a percent discount: the percent asked; an amount: exactly against the subtotal)."""
        if self.discount > limits.discount_amount:
            return True
        if self.percent is not None:
            return self.percent > limits.discount_percent
        return self.discount * 100 > limits.discount_percent * self.subtotal

    def _index(self, index: int) -> int:
        if not 0 <= index < len(self.lines):
            raise ValueError(f"No line {index + 1}")
        return index


def _line(code: str, name: str, unit: int, qty: int) -> BasketLine:
    if not 1 <= qty <= MAX_QTY:
        raise ValueError(f"Max {MAX_QTY} a line" if qty > MAX_QTY else f"Quantity 1-{MAX_QTY}")
    return BasketLine(code, name, qty, unit, qty * unit)
