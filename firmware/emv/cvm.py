"""Cardholder verification (EMV Book 3 10.5, Book 4 6.3.4): walk the card's CVM List.

Pure and step-wise, one CvmProcess per transaction, kernel thread only, no I/O. The
process names the method the terminal must perform next (`current()`); the kernel
performs it (PIN entry, VERIFY, online PIN block, signature line) and reports back with
`succeeded()` or `failed(tvr_bit)`. Amounts are integer minor units. TVR byte 3, the TSI
'cardholder verification was performed' bit and the CVM Results (9F34) are set as in
Book 4 Table 2. A malformed CVM List (8E) is a ValueError("malformed tag 8E").

KPOS performs plaintext offline PIN, online PIN, signature and no CVM; enciphered offline
PIN (codes 04, 05) is recognised but never supported, whatever 9F33 says.
"""
from __future__ import annotations

from dataclasses import dataclass

from firmware.emv.tvr import Tsi, Tvr

__all__ = ["METHODS", "DONE", "CvmRule", "CvmList", "CvmContext", "CvmProcess",
           "parse_cvm_list"]

METHODS = ("offline_pin", "online_pin", "signature", "none")  # what the terminal performs
DONE = "done"
TXN_TYPES = ("goods", "services", "cash", "cashback")

AIP_CVM_SUPPORTED = 0x10  # AIP byte 1: cardholder verification is supported

# 9F33 byte 2, the terminal's CVM capability.
CAP_PLAINTEXT_PIN, CAP_ONLINE_PIN, CAP_SIGNATURE, CAP_NO_CVM = 0x80, 0x40, 0x20, 0x08

# CVM code -> (method the terminal performs, 9F33 byte 2 bits it needs).
_PERFORMABLE = {
    0x01: ("offline_pin", CAP_PLAINTEXT_PIN),
    0x02: ("online_pin", CAP_ONLINE_PIN),
    0x03: ("offline_pin", CAP_PLAINTEXT_PIN | CAP_SIGNATURE),  # then a signature
    0x1E: ("signature", CAP_SIGNATURE),
    0x1F: ("none", CAP_NO_CVM),
}
FAIL_CVM = 0x00
ENCIPHERED_OFFLINE_PIN = (0x04, 0x05)  # alone / with signature
_OFFLINE_PIN_CODES = (0x01, 0x03) + ENCIPHERED_OFFLINE_PIN
_SIGNATURE_CODES = (0x03, 0x1E)
_VERIFIED_CODES = (0x01, 0x1F)  # the terminal knows the outcome; others are 'unknown'

# CVM Results (9F34) byte 3, and byte 1 when no CVM was performed.
RESULT_UNKNOWN, RESULT_FAILED, RESULT_SUCCESSFUL = 0x00, 0x01, 0x02
NO_CVM_PERFORMED = 0x3F


@dataclass(frozen=True)
class CvmRule:
    code: int  # byte 1 & 0x3F
    continue_on_fail: bool  # byte 1 & 0x40: apply the succeeding rule if this one fails
    condition: int  # byte 2
    raw: bytes  # both bytes as on the card, for the CVM Results


@dataclass(frozen=True)
class CvmList:
    x: int  # amounts in the application currency's minor units
    y: int
    rules: tuple[CvmRule, ...]


def parse_cvm_list(raw: bytes) -> CvmList:
    """Tag 8E: amount X (4 bytes), amount Y (4 bytes), then 2-byte rules. A list with no
    rules is valid and counts as absent (Book 3 10.5)."""
    if len(raw) < 8 or len(raw) % 2:
        raise ValueError("malformed tag 8E")
    rules = tuple(CvmRule(raw[i] & 0x3F, bool(raw[i] & 0x40), raw[i + 1], raw[i:i + 2])
                  for i in range(8, len(raw), 2))
    return CvmList(int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:8], "big"), rules)


@dataclass(frozen=True)
class CvmContext:
    amount: int  # minor units
    same_currency: bool  # txn currency == 9F42 (amount conditions only apply then)
    txn_type: str = "goods"  # "goods" | "services" | "cash" | "cashback"
    unattended: bool = False
    capabilities: bytes = bytes.fromhex("E0E8C0")  # 9F33; byte 2 is the CVM capability

    def __post_init__(self):
        if self.txn_type not in TXN_TYPES:
            raise ValueError(f"unknown transaction type {self.txn_type!r}")
        if self.amount < 0 or len(self.capabilities) != 3:
            raise ValueError("CVM context needs amount >= 0 and a 3-byte 9F33")


class CvmProcess:
    """One cardholder verification: `current()` until it returns "done"."""

    def __init__(self, cvm_list: CvmList | None, ctx: CvmContext, tvr: Tvr, tsi: Tsi,
                 *, aip: bytes, pin_pad: bool = True):
        self._ctx, self._tvr, self._tsi, self._pin_pad = ctx, tvr, tsi, pin_pad
        self._cvm_list = cvm_list
        self._next = 0  # index of the next rule to look at
        self._rule: CvmRule | None = None  # the rule whose method is current
        self._last_performed: CvmRule | None = None  # attempted and failed
        self._results: bytes | None = None
        self._performed = ""
        self._signature = False
        no_cvm = bytes([NO_CVM_PERFORMED, 0, RESULT_UNKNOWN])
        if not aip[0] & AIP_CVM_SUPPORTED:
            self._finish(no_cvm, "none", tsi=False)
        elif cvm_list is None or not cvm_list.rules:
            tvr.set("icc_data_missing")
            self._finish(no_cvm, "none", tsi=False)
        else:
            self._advance()

    def current(self) -> str:
        """The method to perform next (one of METHODS), or "done"."""
        if self._results is not None:
            return DONE
        return _PERFORMABLE[self._active().code][0]

    def succeeded(self) -> None:
        """The current method was performed (PIN verified or captured, signature line)."""
        rule = self._active()
        method = _PERFORMABLE[rule.code][0]
        if method == "online_pin":
            self._tvr.set("online_pin_entered")
        self._signature = rule.code in _SIGNATURE_CODES
        outcome = RESULT_SUCCESSFUL if rule.code in _VERIFIED_CODES else RESULT_UNKNOWN
        self._finish(rule.raw + bytes([outcome]), method)

    def failed(self, tvr_bit: str | None = None) -> None:
        """The current method failed; `tvr_bit` names why (e.g. "pin_try_limit_exceeded",
        "pin_not_entered" when the cardholder bypasses the PIN)."""
        rule = self._active()
        if tvr_bit is not None:
            self._tvr.set(tvr_bit)
        self._last_performed = rule
        if rule.continue_on_fail:
            self._advance()
        else:
            self._fail()

    @property
    def results(self) -> bytes:
        """CVM Results, tag 9F34, 3 bytes; only once `current()` is "done"."""
        if self._results is None:
            raise RuntimeError("cardholder verification is not done")
        return self._results

    @property
    def signature_required(self) -> bool:
        return self._signature

    @property
    def performed(self) -> str:
        """The method that succeeded; "none" when no CVM applied, "" if verification failed."""
        return self._performed

    def _active(self) -> CvmRule:
        if self._results is not None or self._rule is None:
            raise RuntimeError("cardholder verification is done")
        return self._rule

    def _advance(self) -> None:
        """Move to the next applicable rule the terminal can perform, or end failed."""
        self._rule = None
        rules = self._cvm_list.rules
        while self._next < len(rules):
            rule = rules[self._next]
            self._next += 1
            if not self._condition_met(rule):
                continue
            if self._can_perform(rule):
                self._rule = rule
                return
            if not rule.continue_on_fail:
                break
        self._fail()

    def _condition_met(self, rule: CvmRule) -> bool:
        ctx, condition = self._ctx, rule.condition
        cash = ctx.txn_type == "cash"
        if condition in (0x06, 0x07, 0x08, 0x09):
            if not ctx.same_currency:
                return False
            limit = self._cvm_list.x if condition in (0x06, 0x07) else self._cvm_list.y
            return ctx.amount < limit if condition in (0x06, 0x08) else ctx.amount > limit
        return {
            0x00: True,
            0x01: cash and ctx.unattended,
            0x02: not cash and ctx.txn_type != "cashback",
            0x03: self._supported(rule.code),
            0x04: cash and not ctx.unattended,
            0x05: ctx.txn_type == "cashback",
        }.get(condition, False)  # RFU and payment-system conditions are not understood

    def _can_perform(self, rule: CvmRule) -> bool:
        """False when the rule fails at once, with its TVR bits set."""
        code = rule.code
        if code == FAIL_CVM:
            self._last_performed = rule
            return False
        if code not in _PERFORMABLE and code not in ENCIPHERED_OFFLINE_PIN:
            self._tvr.set("unrecognised_cvm")
            return False
        if not self._supported(code):
            if self._pin_capability_missing(code):
                self._tvr.set("pin_pad_not_working")
            return False
        if _PERFORMABLE[code][0] in ("offline_pin", "online_pin") and not self._pin_pad:
            self._tvr.set("pin_pad_not_working")
            self._last_performed = rule
            return False
        return True

    def _supported(self, code: int) -> bool:
        if code == FAIL_CVM:
            return True
        if code not in _PERFORMABLE:
            return False
        needed = _PERFORMABLE[code][1]
        return self._ctx.capabilities[1] & needed == needed

    def _pin_capability_missing(self, code: int) -> bool:
        """Book 3 10.5: online PIN not supported, or no form of offline PIN supported."""
        capability = self._ctx.capabilities[1]
        if code == 0x02:
            return not capability & CAP_ONLINE_PIN
        return code in _OFFLINE_PIN_CODES and not capability & CAP_PLAINTEXT_PIN

    def _fail(self) -> None:
        self._tvr.set("cvm_not_successful")
        last = self._last_performed
        head = last.raw if last is not None else bytes([NO_CVM_PERFORMED, 0])
        self._finish(head + bytes([RESULT_FAILED]), "")

    def _finish(self, results: bytes, performed: str, *, tsi: bool = True) -> None:
        self._rule = None
        self._results, self._performed = results, performed
        if tsi:
            self._tsi.set("cvm_performed")
