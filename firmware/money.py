"""Money: integer minor units only (fen for CNY), never floats.

Pure functions, any thread.
"""

__all__ = ["CURRENCIES", "format_amount", "currency_alpha"]

# ISO 4217 numeric -> (alpha code, minor unit digits)
CURRENCIES: dict[int, tuple[str, int]] = {
    156: ("CNY", 2),
    344: ("HKD", 2),
    446: ("MOP", 2),
    840: ("USD", 2),
    978: ("EUR", 2),
    392: ("JPY", 0),
}


def currency_alpha(currency: int) -> str:
    return CURRENCIES[currency][0]


def format_amount(minor: int, currency: int = 156) -> str:
    """12345 -> '123.45' (no symbol). Raises TypeError for a non-int."""
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise TypeError(f"amount must be int minor units, got {type(minor).__name__}")
    exponent = CURRENCIES[currency][1]
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{exponent}d}"
