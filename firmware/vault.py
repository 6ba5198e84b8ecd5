"""Card-data vault: AES-256-GCM sealing of card data kept at rest until the acquirer acknowledges.

Contract: pure computation plus file I/O on the key file, any thread, blocking (only
`Vault.open` touches the disk: one small read, or on first start one fsync'd write).
The key is 32 random bytes in a file readable by the service user only (mode 0600);
the key file lives in the state directory, never in the release or repository.
A sealed blob is versioned: 1 byte version, 12 byte random nonce, ciphertext + 16 byte tag.
`aad` binds a blob to its owner (the journal passes the transaction id), so a blob moved
to another row fails to open. Errors never contain key material or plaintext.
(DESIGN §6 invariant 5; PCI DSS 3.3.2 and 3.5.1.)
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from firmware.files import write_private

__all__ = ["Vault", "VaultError", "KEY_SIZE", "BLOB_VERSION"]

KEY_SIZE = 32  # AES-256
NONCE_SIZE = 12
TAG_SIZE = 16
BLOB_VERSION = 1
_HEADER = bytes([BLOB_VERSION])


class VaultError(Exception):
    """The key file is unusable, or a sealed blob does not open (tampered, wrong key, bad format)."""


class Vault:
    """Seals and opens card data with one AES-256-GCM key. Build it with `Vault.open(path)`."""

    def __init__(self, key: bytes):
        if len(key) != KEY_SIZE:
            raise VaultError(f"vault key must be {KEY_SIZE} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:  # never show the key
        return "Vault(<key hidden>)"

    @classmethod
    def open(cls, key_path: Path) -> "Vault":
        """Load the key at `key_path`, creating a fresh random key file (and its 0700
        directory) if there is none."""
        key_path = Path(key_path)
        if not key_path.exists():
            key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_key_file(key_path)
        return cls(_read_key_file(key_path))

    def seal(self, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return _HEADER + nonce + self._aead.encrypt(nonce, bytes(plaintext), aad)

    def open_sealed(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        blob = bytes(blob)
        if len(blob) < 1 + NONCE_SIZE + TAG_SIZE:
            raise VaultError(f"sealed blob too short ({len(blob)} bytes)")
        if blob[0] != BLOB_VERSION:
            raise VaultError(f"sealed blob version {blob[0]} not supported (expected {BLOB_VERSION})")
        nonce, ciphertext = blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise VaultError("sealed blob failed authentication (tampered, wrong key or wrong owner)") from None


def _read_key_file(key_path: Path) -> bytes:
    try:
        st = key_path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise VaultError(f"vault key {key_path}: not a regular file")
        if st.st_mode & 0o077:
            raise VaultError(
                f"vault key {key_path}: mode {stat.S_IMODE(st.st_mode):04o} is readable by group/other; "
                "must be 0600"
            )
        key = key_path.read_bytes()
    except OSError as exc:
        raise VaultError(f"vault key {key_path}: {exc.strerror or exc}") from exc
    if len(key) != KEY_SIZE:
        raise VaultError(f"vault key {key_path}: {len(key)} bytes, expected {KEY_SIZE}")
    return key


def _create_key_file(key_path: Path) -> None:
    """Write a random key atomically (firmware.files.write_private: 0600, fsync'd, renamed)."""
    try:
        write_private(key_path, os.urandom(KEY_SIZE))
    except OSError as exc:
        raise VaultError(f"vault key {key_path}: cannot create: {exc.strerror or exc}") from exc
