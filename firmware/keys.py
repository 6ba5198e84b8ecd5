"""Key crypto both sides share: TDES key wrap, key check values, ISO 9564 PIN blocks (format
0 under a TDES PIK, format 4 under an AES PIK: 16-byte blocks; AES KCV = CMAC of zeros),
and the AES working keys of a pin_format 4 sign-on: each a TR-31 version D key block under
the AES TMK (psec.tr31; usage P0 for the PIK, M6 CMAC for the MAK), with a 3-byte AES KCV.

Pure functions, any thread, non-blocking (microseconds of CPU). Keys are bytes: 16-byte
double-length TDES keys (24-byte triple-length accepted), or 32-byte AES-256 working keys.
PIN blocks are 8 bytes (format 0) or 16 (format 4).
Two-key TDES is handed to `cryptography` as k1|k2|k1 (24 bytes) so no deprecation warning
is raised (FIELD-NOTES §5); psec.des is not used because it imports TripleDES from its old
location, which warns in cryptography >= 43. psec.pinblock builds and parses the clear
format 0 block. Nothing here logs; a clear PIN or key never appears in a message or repr.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from psec import pinblock as _pinblock
from psec import tr31

if TYPE_CHECKING:  # avoid an import cycle at run time; only attributes are used
    from firmware.acquirer.messages import AesWorkingKeys, WorkingKeys

__all__ = [
    "KeyCheckError",
    "SessionKeys",
    "kcv",
    "wrap_key",
    "unwrap_key",
    "session_keys_from_working",
    "pin_block_iso0",
    "pin_block_iso2",
    "decrypt_pin_iso0",
    "random_key",
    "random_aes_key",
    "AES_PIK_USAGE",
    "AES_MAK_USAGE",
    "wrap_aes_key",
    "unwrap_aes_key",
    "aes_kcv",
    "pin_block_iso4",
    "decrypt_pin_iso4",
    "tdes_ecb_encrypt",
    "tdes_ecb_decrypt",
]

KCV_LEN = 4
BLOCK = 8
AES_KEY_LEN = 32  # AES-256 working keys
AES_PIK_USAGE, AES_MAK_USAGE = "P0", "M6"  # TR-31 key usage: PIN encryption; CMAC
_AES_MODES = {AES_PIK_USAGE: "E", AES_MAK_USAGE: "C"}  # TR-31 mode of use: encrypt; MAC


class KeyCheckError(ValueError):
    """A key failed its check value, or has a bad length; the message names the key."""

    def __init__(self, message: str, *, name: str = "key"):
        super().__init__(message)
        self.name = name


def _tdes(key: bytes) -> TripleDES:
    if len(key) == 16:
        key = key + key[:8]
    elif len(key) != 24:
        raise KeyCheckError(f"TDES key must be 16 or 24 bytes, got {len(key)}")
    return TripleDES(bytes(key))


def _check_blocks(data: bytes, what: str) -> None:
    if not data or len(data) % BLOCK:
        raise ValueError(f"{what} must be a non-empty multiple of 8 bytes, got {len(data)}")


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB encrypt `data` (multiple of 8 bytes) under a 16- or 24-byte key."""
    _check_blocks(data, "data")
    enc = Cipher(_tdes(key), modes.ECB()).encryptor()
    return enc.update(bytes(data)) + enc.finalize()


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB decrypt `data` (multiple of 8 bytes) under a 16- or 24-byte key."""
    _check_blocks(data, "data")
    dec = Cipher(_tdes(key), modes.ECB()).decryptor()
    return dec.update(bytes(data)) + dec.finalize()


def kcv(key: bytes) -> bytes:
    """Key check value: first 4 bytes of TDES-ECB(key, 8 zero bytes)."""
    return tdes_ecb_encrypt(key, bytes(BLOCK))[:KCV_LEN]


def wrap_key(kek: bytes, key: bytes) -> bytes:
    """Encrypt a 16-byte working key under the key-encrypting key (TDES-ECB)."""
    if len(key) != 16:
        raise KeyCheckError(f"working key must be 16 bytes, got {len(key)}")
    return tdes_ecb_encrypt(kek, key)


def unwrap_key(kek: bytes, wrapped: bytes, check: bytes, *, name: str = "key") -> bytes:
    """Decrypt a wrapped 16-byte key and verify its check value; KeyCheckError if wrong."""
    if len(wrapped) != 16:
        raise KeyCheckError(f"{name} ciphertext must be 16 bytes, got {len(wrapped)}", name=name)
    key = tdes_ecb_decrypt(kek, wrapped)
    if not check or kcv(key)[: len(check)] != bytes(check):
        raise KeyCheckError(f"{name} check value mismatch (expected {bytes(check).hex().upper()})",
                            name=name)
    return key


@dataclass(frozen=True, repr=False)
class SessionKeys:
    """Clear session keys of one sign-on. Its repr shows only the check values."""

    pik: bytes
    mak: bytes
    algorithm: str = "T"  # "T": TDES keys (pin_format 0); "A": AES keys (pin_format 4)

    def __repr__(self) -> str:
        check = aes_kcv if self.algorithm == "A" else kcv
        return (f"SessionKeys(pik_kcv={check(self.pik).hex().upper()}, "
                f"mak_kcv={check(self.mak).hex().upper()})")

    __str__ = __repr__


def session_keys_from_working(tmk: bytes, wk: WorkingKeys | AesWorkingKeys) -> SessionKeys:
    """Unwrap the 0810's PIK and MAK under the terminal master key, checking both KCVs
    (TDES keys under a TDES TMK; AES key blocks, `wk.pik_block`, under an AES TMK)."""
    if hasattr(wk, "pik_block"):
        pik = unwrap_aes_key(tmk, wk.pik_block, wk.pik_kcv, AES_PIK_USAGE, name="PIK")
        mak = unwrap_aes_key(tmk, wk.mak_block, wk.mak_kcv, AES_MAK_USAGE, name="MAK")
        return SessionKeys(pik=pik, mak=mak, algorithm="A")
    pik = unwrap_key(tmk, wk.pik_enc, wk.pik_kcv, name="PIK")
    mak = unwrap_key(tmk, wk.mak_enc, wk.mak_kcv, name="MAK")
    return SessionKeys(pik=pik, mak=mak)


def _pin_text(pin: bytearray | bytes | str) -> str:
    text = pin.decode("ascii") if isinstance(pin, (bytes, bytearray)) else pin
    if not (4 <= len(text) <= 12 and text.isdigit() and text.isascii()):
        raise ValueError("PIN must be 4 to 12 digits")  # never echo the PIN
    return text


def pin_block_iso0(pin: bytearray | bytes | str, pan: str, pik: bytes) -> bytes:
    """ISO 9564 format 0 PIN block for `pan`, TDES-ECB encrypted under the PIK (8 bytes).

    `pin` is ASCII digits (the PIN-entry buffer); the caller wipes its buffer afterwards.
    """
    clear = _pinblock.encode_pinblock_iso_0(_pin_text(pin), pan)
    return tdes_ecb_encrypt(pik, clear)


def pin_block_iso2(pin: bytearray | bytes | str) -> bytes:
    """ISO 9564 format 2 (plaintext, for the chip's offline PIN VERIFY): 2L PIN.. F padding.

    `pin` is ASCII digits (the PIN-entry buffer); the caller wipes its buffer afterwards.
    """
    return _pinblock.encode_pinblock_iso_2(_pin_text(pin))


def decrypt_pin_iso0(block: bytes, pan: str, pik: bytes) -> str:
    """Decrypt a format 0 PIN block under the PIK and return the PIN (simulator side).

    ValueError when the block is not 8 bytes or does not decode as format 0 for `pan`.
    """
    if len(block) != BLOCK:
        raise ValueError(f"PIN block must be 8 bytes, got {len(block)}")
    try:
        return _pinblock.decode_pinblock_iso_0(tdes_ecb_decrypt(pik, block), pan)
    except ValueError:
        # psec's message may quote decrypted PIN digits: replace it, keep no chain.
        raise ValueError("PIN block does not decode as ISO format 0 for this PAN") from None


def aes_kcv(key: bytes) -> bytes:
    """AES key check value: the first 3 bytes of AES-CMAC(key, 16 zero bytes)."""
    c = cmac.CMAC(algorithms.AES(bytes(key)))
    c.update(bytes(16))
    return c.finalize()[:3]


def random_aes_key() -> bytes:
    """32 random bytes: an AES-256 working key."""
    return secrets.token_bytes(AES_KEY_LEN)


def wrap_aes_key(kek: bytes, key: bytes, usage: str) -> str:
    """A 32-byte AES working key as a TR-31 version D key block under the AES TMK `kek`:
    `usage` AES_PIK_USAGE or AES_MAK_USAGE, its mode of use, not exportable (144 characters)."""
    if len(key) != AES_KEY_LEN:
        raise KeyCheckError(f"AES working key must be {AES_KEY_LEN} bytes, got {len(key)}")
    return tr31.wrap(bytes(kek), tr31.Header("D", usage, "A", _AES_MODES[usage], "00", "N"),
                     bytes(key))


def unwrap_aes_key(kek: bytes, block: str, check: bytes, usage: str, *, name: str = "key") -> bytes:
    """The AES key of a TR-31 block under `kek`, after its MAC, header (version D, AES,
    `usage`, its mode of use, 32 bytes) and check value (aes_kcv); KeyCheckError if not."""
    try:
        header, key = tr31.unwrap(bytes(kek), block)
    except (ValueError, TypeError):  # tr31.HeaderError, KeyBlockError: MAC, length, format
        raise KeyCheckError(f"{name} key block does not unwrap under the master key", name=name) from None
    got = (header.version_id, header.algorithm, header.key_usage, header.mode_of_use, len(key))
    if got != ("D", "A", usage, _AES_MODES[usage], AES_KEY_LEN):
        raise KeyCheckError(f"{name} key block is not an AES-256 {usage} key", name=name)
    if len(check) != 3 or aes_kcv(key) != bytes(check):
        raise KeyCheckError(f"{name} check value mismatch (expected {bytes(check).hex().upper()})",
                            name=name)
    return key


def pin_block_iso4(pin: bytearray | bytes | str, pan: str, pik: bytes) -> bytes:
    """ISO 9564 format 4 PIN block for `pan` under an AES PIK (16 bytes; psec.pinblock:
    the PIN field encrypted, XORed with the PAN field, encrypted again).

    `pin` is ASCII digits (the PIN-entry buffer); the caller wipes its buffer afterwards.
    """
    return _pinblock.encipher_pinblock_iso_4(bytes(pik), _pin_text(pin), pan)


def decrypt_pin_iso4(block: bytes, pan: str, pik: bytes) -> str:
    """Decrypt a format 4 PIN block under the AES PIK and return the PIN (simulator side).

    ValueError when the block is not 16 bytes or does not decode as format 4 for `pan`.
    """
    if len(block) != 16:
        raise ValueError(f"PIN block must be 16 bytes, got {len(block)}")
    try:
        return _pinblock.decipher_pinblock_iso_4(bytes(pik), bytes(block), pan)
    except ValueError:
        raise ValueError("PIN block does not decode as ISO format 4 for this PAN") from None


def _odd_parity(byte: int) -> int:
    return byte ^ (0 if bin(byte).count("1") % 2 else 1)


def random_key() -> bytes:
    """16 random bytes (double-length TDES key) with odd DES parity in every byte."""
    return bytes(_odd_parity(b) for b in secrets.token_bytes(16))
