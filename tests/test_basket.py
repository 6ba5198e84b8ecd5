"""The checkout basket: barcodes, the product catalog loader and its errors, the basket's
arithmetic (quantities, lines, discounts rounded half up once, the supervisor limits)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.basket import (
    MAX_LINES, MAX_QTY, Basket, Catalog, CatalogError, Product, barcode_error, load_products,
    percent_of,
)
from firmware.flows.types import BasketLine

TEA = Product("2", "Green tea 500ml", 350, "6920152400012")
WATER = Product("1", "Mineral water 550ml", 200, "6901234567892")
BAR = Product("4", "Chocolate bar", 890, "036000291452")
REPO_CATALOG = Path(__file__).parent.parent / "config" / "products.toml"


@dataclass(frozen=True)
class Limits:
    discount_percent: int = 10
    discount_amount: int = 5_000


# ---- barcodes ----

@pytest.mark.parametrize("code", ["4006381333931", "6901234567892", "036000291452",
                                  "73513537", "96385074"])
def test_good_ean13_upca_ean8(code):
    assert barcode_error(code) == ""


@pytest.mark.parametrize("code, reason", [
    ("4006381333932", "Bad check digit"), ("036000291453", "Bad check digit"),
    ("73513538", "Bad check digit"),
    ("400638133393X", "Not a barcode"), ("ABCDEFGH", "Not a barcode"), ("", "Not a barcode"),
    ("1234567", "Not a barcode"), ("12345678901234", "Not a barcode"),
    ("１２３４５６７８", "Not a barcode"),  # full-width digits are not ASCII
])
def test_bad_barcodes_say_why(code, reason):
    assert barcode_error(code) == reason


@given(st.sampled_from([7, 11, 12]).flatmap(
    lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n)))
def test_exactly_one_check_digit_fits(body):
    good = [d for d in "0123456789" if barcode_error(body + d) == ""]
    assert len(good) == 1


# ---- the catalog ----

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "products.toml"
    path.write_text(text, encoding="utf-8")
    return path


def entry(code="1", name="Water", price=200, barcode="6901234567892") -> str:
    """A [[product]] table (values written as TOML: json.dumps is TOML for these)."""
    fields = dict(code=code, name=name, price=price, barcode=barcode)
    return "[[product]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())


def test_the_shipped_catalog_loads():
    catalog = load_products(REPO_CATALOG)
    assert catalog.by_code("2").name == "Green tea 500ml"
    assert catalog.by_barcode("036000291452").code == "4"
    assert catalog.by_code("99") is None and catalog.by_barcode("4006381333932") is None


def test_catalog_lookups_and_a_product_without_barcode(tmp_path):
    path = write(tmp_path, entry() + '[[product]]\ncode = "5"\nname = "Rice 5kg"\nprice = 3990\n')
    catalog = load_products(path)
    assert catalog.by_code("5") == Product("5", "Rice 5kg", 3990, "")
    assert catalog.by_barcode("6901234567892") == Product("1", "Water", 200, "6901234567892")
    assert catalog.by_barcode("") is None


@pytest.mark.parametrize("text, message", [
    (entry() + entry(barcode=""), "products.toml: product 1: duplicate code"),
    (entry() + entry(code="2"), "product 2: duplicate barcode 6901234567892 \\(product 1\\)"),
    (entry(price=0), r"product #1 \(code 1\): bad price 0"),
    (entry(price=-5), "bad price -5"),
    (entry(price=1.5), "bad price 1.5"),
    (entry(price=True), "bad price True"),
    (entry(barcode="6901234567893"), "barcode 6901234567893: bad check digit"),
    (entry(barcode="69012345678"), "barcode 69012345678: not a barcode"),
    (entry(name="A" * 25), "longer than 24 characters"),
    (entry(name=""), "bad name ''"),
    (entry(code="1234567"), "bad code '1234567'"),
    (entry(code="A1"), "bad code 'A1'"),
    ('[[product]]\ncode = 1\nname = "x"\nprice = 1\n', "bad code 1: a quoted string"),
    ('[[product]]\ncode = "1"\nprice = 1\n', "bad name None"),
    (entry() + 'colour = "red"\n', "product #1 \\(code 1\\): unknown key 'colour'"),
    ('title = "x"\n' + entry(), "unknown key 'title'"),
    ("", "no \\[\\[product\\]\\] tables"),
    ("[[product]\n", "products.toml"),
])
def test_catalog_errors_name_the_file_and_the_product(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(CatalogError, match=message) as raised:
        load_products(path)
    assert str(raised.value).startswith(str(path))


def test_a_missing_catalog_is_an_error_naming_it(tmp_path):
    with pytest.raises(CatalogError, match="nothing.toml"):
        load_products(tmp_path / "nothing.toml")


def test_catalog_duplicates_are_refused_when_built_directly():
    with pytest.raises(ValueError, match="product 2: duplicate code"):
        Catalog((TEA, TEA))


# ---- the basket ----

def test_adding_the_same_product_again_adds_to_its_line():
    basket = Basket().add(TEA).add(WATER).add(TEA, 2)
    assert basket.lines == (BasketLine("2", "Green tea 500ml", 3, 350, 1050),
                            BasketLine("1", "Mineral water 550ml", 1, 200, 200))
    assert (basket.subtotal, basket.discount, basket.total, basket.items) == (1250, 0, 1250, 4)


def test_quantities_are_1_to_999():
    basket = Basket().add(TEA)
    assert basket.set_qty(0, MAX_QTY).lines[0].amount == 999 * 350
    for qty in (0, -1, 1000):
        with pytest.raises(ValueError):
            basket.set_qty(0, qty)
    with pytest.raises(ValueError, match="Max 999 a line"):
        basket.set_qty(0, 999).add(TEA)
    with pytest.raises(ValueError, match="No line 2"):
        basket.set_qty(1, 2)


def test_remove_a_line():
    basket = Basket().add(TEA).add(WATER).add(BAR)
    assert [line.code for line in basket.remove(1).lines] == ["2", "4"]
    assert basket.remove(0).remove(0).remove(0).lines == ()
    with pytest.raises(ValueError, match="No line 4"):
        basket.remove(3)
    with pytest.raises(ValueError):
        basket.remove(-1)


def test_a_basket_holds_at_most_max_lines():
    basket = Basket()
    for n in range(MAX_LINES):
        basket = basket.add(Product(str(n + 1), f"Item {n}", 1))
    with pytest.raises(ValueError, match="Basket full"):
        basket.add(Product("1000", "One more", 1))
    assert basket.add(Product("1", "Item 0", 1)).lines[0].qty == 2  # an existing line still grows


@pytest.mark.parametrize("subtotal, percent, discount", [
    (1005, 10, 101),  # 100.5 -> 101: half up
    (1004, 10, 100),  # 100.4 -> 100
    (1015, 10, 102),  # 101.5 -> 102
    (333, 50, 167),  # 166.5 -> 167
    (1, 50, 1), (1, 49, 0), (0, 10, 0), (1234, 0, 0), (1234, 100, 1234),
])
def test_percent_discount_rounds_half_up_once_on_the_subtotal(subtotal, percent, discount):
    assert percent_of(subtotal, percent) == discount
    basket = Basket().add(Product("1", "Thing", subtotal)) if subtotal else Basket()
    basket = basket.with_discount(percent=percent)
    assert (basket.discount, basket.total) == (discount, subtotal - discount)


def test_percent_is_on_the_whole_subtotal_not_per_line():
    basket = Basket().add(Product("1", "A", 5)).add(Product("2", "B", 5)).with_discount(percent=10)
    assert basket.discount == 1  # 10% of 10; per line it would be 1 + 1 (0.5 up each)


def test_a_percent_follows_the_lines_an_amount_does_not():
    basket = Basket().add(TEA).with_discount(percent=10)
    assert basket.discount == 35 and basket.add(TEA).discount == 70
    fixed = Basket().add(TEA).with_discount(amount=50)
    assert fixed.add(TEA).discount == 50


def test_the_discount_never_takes_the_total_below_zero():
    basket = Basket().add(TEA).with_discount(amount=10_000)
    assert (basket.discount, basket.total) == (350, 0)
    assert basket.with_discount(amount=0).total == 350  # 0 takes the discount off


@pytest.mark.parametrize("kw", [{}, {"amount": 1, "percent": 1}, {"percent": 101},
                                {"percent": -1}, {"amount": -1}])
def test_bad_discounts_are_refused(kw):
    with pytest.raises(ValueError):
        Basket().add(TEA).with_discount(**kw)


@pytest.mark.parametrize("discount, needs", [
    ({"percent": 10}, False), ({"percent": 11}, True),
    ({"amount": 1000}, False), ({"amount": 1001}, True),  # 10% of 10000 exactly
])
def test_discount_limits_by_percent(discount, needs):
    basket = Basket().add(Product("1", "Thing", 10_000)).with_discount(**discount)
    assert basket.discount_needs_supervisor(Limits(10, 5_000)) is needs


def test_a_percent_at_the_limit_needs_no_supervisor_even_rounded_up():
    basket = Basket().add(Product("1", "Thing", 1005)).with_discount(percent=10)
    assert basket.discount == 101 and not basket.discount_needs_supervisor(Limits(10, 5_000))


@pytest.mark.parametrize("amount, needs", [(5_000, False), (5_001, True)])
def test_discount_limits_by_amount(amount, needs):
    basket = Basket().add(Product("1", "Thing", 1_000_000)).with_discount(amount=amount)
    assert basket.discount_needs_supervisor(Limits(10, 5_000)) is needs
    assert basket.with_discount(percent=1).discount_needs_supervisor(Limits(10, 5_000)) is True


@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 10**6), st.integers(1, 5)),
                max_size=12),
       st.integers(0, 100), st.integers(0, 10**8), st.booleans())
def test_totals_are_integers_that_add_up(items, percent, amount, by_percent):
    basket = Basket()
    for code, price, qty in items:
        basket = basket.add(Product(str(code), f"P{code}", price), qty)
    if len(set(c for c, _, _ in items)) == len(items):
        assert basket.items == sum(q for _, _, q in items)
    basket = basket.with_discount(percent=percent) if by_percent else \
        basket.with_discount(amount=amount)
    assert all(line.amount == line.qty * line.unit for line in basket.lines)
    assert 0 <= basket.discount <= basket.subtotal
    assert basket.total == basket.subtotal - basket.discount >= 0
    assert all(isinstance(v, int) for v in (basket.subtotal, basket.discount, basket.total))
