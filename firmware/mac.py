"""Message MAC of ISO 8583 requests and responses (field 64, or 128 with a secondary bitmap).

Pure functions, any thread, non-blocking (microseconds of CPU). The MAC is 8 bytes over the
encoded message up to the MAC field: MTI + bitmap(s) + every field before it, with the
bitmap already announcing the MAC field (docs/acquirer-protocol.md §MAC). Two rules:
- "retail": ISO 9797-1 MAC algorithm 3 (ANSI X9.19 retail MAC), padding method 2, under a
  double-length TDES MAK: single DES CBC under its left half, the last block decrypted
  under the right half and encrypted under the left again.
- "cmac": AES-CMAC (NIST SP 800-38B, RFC 4493) under an AES MAK, first 8 bytes.
Network management messages (08xx: sign-on, echo) carry no MAC: their keys come from them.
Ciphers are cryptography's (TripleDES from hazmat.decrepit, as in firmware.keys); a DES key
K is handed over as K|K|K. Nothing here logs; a key never appears in a message or repr.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from psec.mac import pad_iso_2

from firmware.acquirer.messages import encode

__all__ = ["MAC_LEN", "MAC_RULES", "MAC_FAILED", "MacKey", "retail_mac", "aes_cmac",
           "mac_field", "needs_mac", "session_mac"]

MAC_LEN = 8
MAC_RULES = ("retail", "cmac")
MAC_FAILED = "response MAC failed"  # NoResponse reason: the caller reverses with 39 = A0
_UNMACED_CLASSES = ("08",)  # network management


def _des_cipher(key: bytes) -> TripleDES:
    """TDES for a DES (8), double (16) or triple (24) length key; K|K|K is single DES."""
    if len(key) == 8:
        key = key * 3
    elif len(key) == 16:
        key = key + key[:8]
    elif len(key) != 24:
        raise ValueError(f"DES key must be 8, 16 or 24 bytes, got {len(key)}")
    return TripleDES(bytes(key))


def retail_mac(key1: bytes, key2: bytes, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 3, padding method 2, 8 bytes: CBC under `key1`, then the
    last block decrypted under `key2` and encrypted under `key1` (psec.mac semantics)."""
    padded = pad_iso_2(bytes(data), 8)
    enc = Cipher(_des_cipher(key1), modes.CBC(bytes(8))).encryptor()
    last = (enc.update(padded) + enc.finalize())[-8:]
    dec = Cipher(_des_cipher(key2), modes.ECB()).decryptor()
    out = Cipher(_des_cipher(key1), modes.ECB()).encryptor()
    return out.update(dec.update(last) + dec.finalize()) + out.finalize()


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (RFC 4493) of `data` under a 16-, 24- or 32-byte key: all 16 bytes."""
    c = cmac.CMAC(algorithms.AES(bytes(key)))
    c.update(bytes(data))
    return c.finalize()


def needs_mac(mti: str) -> bool:
    """True for the messages that carry a MAC: all but network management (08xx)."""
    return str(mti)[:2] not in _UNMACED_CLASSES


def mac_field(fields: dict) -> str:
    """"128" when the message has a field above 64 (secondary bitmap), else "64"."""
    high = any(k.isdigit() and 64 < int(k) <= 128 for k in fields if k != "128")
    return "128" if high else "64"


@dataclass(frozen=True, repr=False)
class MacKey:
    """A session MAK and its rule ("retail": 16-byte TDES key; "cmac": AES key)."""

    rule: str
    key: bytes

    def __post_init__(self) -> None:
        sizes = {"retail": (16,), "cmac": (16, 24, 32)}
        if self.rule not in sizes:
            raise ValueError(f"MAC rule {self.rule!r} not in {MAC_RULES}")
        if len(self.key) not in sizes[self.rule]:
            raise ValueError(f"{self.rule} MAK must be {sizes[self.rule]} bytes, got {len(self.key)}")

    def __repr__(self) -> str:
        return f"MacKey(rule={self.rule})"

    def mac(self, data: bytes) -> bytes:
        """The 8-byte MAC of `data` under this key and rule."""
        if self.rule == "retail":
            return retail_mac(self.key[:8], self.key[8:], data)
        return aes_cmac(self.key, data)[:MAC_LEN]

    def sign(self, fields: dict) -> dict:
        """`fields` with field 64 (or 128) set to the MAC over the message before it."""
        field = mac_field(fields)
        doc = {k: v for k, v in fields.items() if k not in ("64", "128")}
        doc[field] = bytes(MAC_LEN)
        raw = encode(doc)
        doc[field] = self.mac(raw[:-MAC_LEN])
        return doc

    def verify(self, raw: bytes, fields: dict) -> bool:
        """True when the received message `raw` (decoded as `fields`) ends with its MAC
        field and that MAC is right. A missing or misplaced MAC field is a failure."""
        field = mac_field(fields)
        value = fields.get(field)
        if not isinstance(value, bytes) or len(raw) <= MAC_LEN or raw[-MAC_LEN:] != value:
            return False
        if field == "128" and "64" in fields:
            return False
        return hmac.compare_digest(self.mac(bytes(raw[:-MAC_LEN])), value)


def session_mac(rule: str, keys) -> MacKey | None:
    """The link's MacKey for `[security] mac` = `rule` and a sign-on's SessionKeys (its
    `mak`); None for "none" (the simulator's legacy mode: no MAC either way)."""
    return None if rule == "none" else MacKey(rule, keys.mak)
