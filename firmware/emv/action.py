"""Terminal action analysis (EMV Book 3 10.7): TVR against the action codes.

Pure, any thread. Terminal Action Codes come from config (hex strings), Issuer Action
Codes from the card (9F0E denial, 9F0F online, 9F0D default). A code matches when any
TVR bit set is also set in the terminal's or the issuer's code. The result is the
cryptogram to ask for in the first GENERATE AC: "AAC" (decline), "ARQC" (go online) or
"TC" (approve offline). Errors are ValueError naming the code or tag, never a value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["ActionCodes", "parse_action_codes", "issuer_action_codes", "first_ac_decision",
           "unable_to_go_online", "store_and_forward_allowed", "GO_ONLINE_MASK", "cryptogram_type"]

CODE_LENGTH = 5  # the length of a TVR
# TVR bits that only say "this one should go online": online PIN entered (byte 3 b3),
# floor limit exceeded, lower / upper consecutive offline limits exceeded, selected at
# random, merchant forced online (byte 4 b8-b4). Store-and-forward puts its own caps
# (firmware/offline.py) in their place; every other bit keeps its say.
GO_ONLINE_MASK = bytes.fromhex("000004F800")


@dataclass(frozen=True)
class ActionCodes:
    denial: bytes
    online: bytes
    default: bytes

    def __post_init__(self):
        for name in ("denial", "online", "default"):
            if len(getattr(self, name)) != CODE_LENGTH:
                raise ValueError(f"action code {name} must be {CODE_LENGTH} bytes")


def parse_action_codes(denial_hex: str, online_hex: str, default_hex: str) -> ActionCodes:
    """Terminal Action Codes from config strings of 10 hex digits each."""
    codes = {}
    for name, text in (("denial", denial_hex), ("online", online_hex),
                       ("default", default_hex)):
        try:
            codes[name] = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"action code {name} must be hex") from None
    return ActionCodes(**codes)


def issuer_action_codes(card: Mapping[str, bytes]) -> ActionCodes:
    """Issuer Action Codes; absent denial means none, absent online/default means all."""
    codes = {}
    for name, tag, absent in (("denial", "9F0E", 0x00), ("online", "9F0F", 0xFF),
                              ("default", "9F0D", 0xFF)):
        codes[name] = card.get(tag, bytes([absent] * CODE_LENGTH))
        if len(codes[name]) != CODE_LENGTH:
            raise ValueError(f"malformed tag {tag}")
    return ActionCodes(**codes)


def first_ac_decision(tvr: bytes, tac: ActionCodes, iac: ActionCodes, *, online_capable: bool,
                      offline_capable: bool) -> str:
    """Denial beats online beats default; "AAC" | "ARQC" | "TC"."""
    if _matches(tvr, tac.denial, iac.denial):
        return "AAC"
    if online_capable:
        if _matches(tvr, tac.online, iac.online) or not offline_capable:
            return "ARQC"
        return "TC"
    return "AAC" if _matches(tvr, tac.default, iac.default) else "TC"


def unable_to_go_online(tvr: bytes, tac: ActionCodes, iac: ActionCodes) -> str:
    """After an ARQC the host could not be reached: the default codes decide, "TC" | "AAC"."""
    return "AAC" if _matches(tvr, tac.default, iac.default) else "TC"


def store_and_forward_allowed(tvr: bytes, tac: ActionCodes, iac: ActionCodes) -> bool:
    """After an ARQC the host could not be reached and the default codes said AAC: may the
    terminal still approve by store-and-forward (a deferred authorisation of the ARQC)?
    Yes when the default codes match only on GO_ONLINE_MASK bits."""
    others = bytes(t & ~m for t, m in zip(bytes(tvr), GO_ONLINE_MASK))
    return not _matches(others, tac.default, iac.default)


def cryptogram_type(cid: int) -> str:
    """Cryptogram Information Data (9F27) bits 8-7: "AAC" | "TC" | "ARQC" | "RFU"."""
    return {0x00: "AAC", 0x40: "TC", 0x80: "ARQC"}.get(cid & 0xC0, "RFU")


def _matches(tvr: bytes, terminal: bytes, issuer: bytes) -> bool:
    tvr = bytes(tvr)  # also takes a Tvr
    if len(tvr) != CODE_LENGTH:
        raise ValueError(f"TVR must be {CODE_LENGTH} bytes")
    return any(t & (a | b) for t, a, b in zip(tvr, terminal, issuer))
