"""Card data hygiene: the only ways a PAN may be shown, and a Luhn check.

Pure functions, any thread. Only `mask_pan()` output may reach logs, screens,
receipts and the journal's clear columns (DESIGN §9).
"""

__all__ = ["mask_pan", "luhn_ok", "pan_last4"]


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits, the rest '*' (PCI DSS 3.4.1)."""
    digits = "".join(ch for ch in pan if ch.isdigit())
    if len(digits) < 13:
        return "*" * len(digits)
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def pan_last4(pan: str) -> str:
    return pan[-4:]


def luhn_ok(pan: str) -> bool:
    """True when `pan` is all digits and its Luhn check digit is right."""
    if not pan.isdigit() or len(pan) < 12:
        return False
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0
