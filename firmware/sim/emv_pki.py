"""TEST ONLY: the simulator's EMV PKI for offline data authentication (SDA, DDA).

A test CA and one test issuer per RID sign the certificates an emulated card carries
(EMV Book 2 tables 6, 7, 14, 17); `firmware.emv.oda` verifies them with the CA public
key in config/capk.toml. The CA and issuer private keys are committed PEM files under
firmware/sim/keys (TEST ONLY: never load them on a live terminal); each card's ICC key is
generated on first use of its PAN (1024 bits, e = 65537) and kept for the process.

Sizes: CA 1152 bits (e = 3), issuer 1024 bits (e = 3), ICC 1024 bits, so the issuer
certificate carries a 92 remainder and the ICC certificate a 9F48 remainder.
CPU only, no I/O after the first key load; any thread (an ICC key is made under a lock;
the other caches hold deterministic results).
Cost of a new card: one ICC key generation (~10 ms) and three private-key operations;
certificates are cached per card and static data, so repeated sessions cost one
signature (the SDAD). Nothing here logs: certificates hold the PAN.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from firmware.emv.oda import (DEFAULT_DDOL, FORMAT_ICC, FORMAT_ISSUER, FORMAT_SDAD,
                              FORMAT_SSAD, HEADER, PAD, RSA, SHA1, TRAILER, CaPublicKey,
                              exponent_bytes)

__all__ = ["TEST_RID", "VISA_TEST_RID", "TEST_CAPK_INDEX", "ISSUER_CERT_EXPIRY",
           "CA_EXPIRY", "KEYS_DIR", "RsaSigner", "test_ca", "ca_public_key", "CardPki"]

TEST_RID = "A000000333"  # UnionPay
VISA_TEST_RID = "A000000003"
TEST_CAPK_INDEX = 0xF8  # not used by a live UnionPay or Visa key
ISSUER_CERT_EXPIRY = "1249"  # MMYY: December 2049
CA_EXPIRY = date(2049, 12, 31)  # as config/capk.toml states it
KEYS_DIR = Path(__file__).with_name("keys")
CERT_SERIAL = bytes.fromhex("000001")
DATA_AUTH_CODE = bytes.fromhex("DAC1")  # 9F45 inside the signed static data
ICC_KEY_BITS, ICC_EXPONENT = 1024, 65537
ISSUER_ID_DIGITS = 6  # the BIN


@dataclass(frozen=True)
class RsaSigner:
    """An RSA private key as the ints a raw (unpadded) EMV signature needs."""

    modulus: bytes
    exponent: int  # public
    d: int

    @classmethod
    def of(cls, key: rsa.RSAPrivateKey) -> "RsaSigner":
        numbers = key.private_numbers()
        n = numbers.public_numbers.n
        return cls(n.to_bytes((n.bit_length() + 7) // 8, "big"), numbers.public_numbers.e,
                   numbers.d)

    def sign(self, plain: bytes) -> bytes:
        n = int.from_bytes(self.modulus, "big")
        return pow(int.from_bytes(plain, "big"), self.d, n).to_bytes(len(self.modulus), "big")


def _load(name: str) -> RsaSigner:
    key = serialization.load_pem_private_key((KEYS_DIR / name).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"{name}: not an RSA private key")
    return RsaSigner.of(key)


@lru_cache(maxsize=None)
def test_ca(rid: str = TEST_RID) -> RsaSigner:
    """The TEST CA private key for `rid` (index TEST_CAPK_INDEX)."""
    return _load(f"ca_{rid}_{TEST_CAPK_INDEX:02X}.pem")


@lru_cache(maxsize=None)
def _issuer(rid: str) -> RsaSigner:
    return _load(f"issuer_{rid}.pem")


_icc_keys: dict[str, RsaSigner] = {}
_icc_lock = threading.Lock()  # one key per PAN even when two threads ask at once


def _icc(pan: str) -> RsaSigner:
    with _icc_lock:
        if pan not in _icc_keys:
            _icc_keys[pan] = RsaSigner.of(rsa.generate_private_key(
                public_exponent=ICC_EXPONENT, key_size=ICC_KEY_BITS))
        return _icc_keys[pan]


def ca_public_key(rid: str = TEST_RID) -> CaPublicKey:
    """The public half of `test_ca(rid)`, as the terminal's CAPK list holds it."""
    ca = test_ca(rid)
    return CaPublicKey(rid, TEST_CAPK_INDEX, ca.modulus, ca.exponent, CA_EXPIRY)


def _cn(digits: str, length: int) -> bytes:
    return bytes.fromhex(digits.ljust(length * 2, "F"))


def _signed(signer: RsaSigner, body: bytes, extra: bytes) -> bytes:
    """6A || body || SHA-1(body || extra) || BC, signed; body starts at the format byte."""
    return signer.sign(bytes([HEADER]) + body + hashlib.sha1(body + extra).digest()
                       + bytes([TRAILER]))


def _key_certificate(signer: RsaSigner, fmt: int, owner: bytes, expiry_mmyy: str,
                     key: RsaSigner, extra: bytes = b"") -> tuple[bytes, bytes]:
    """An issuer (02) or ICC (04) public key certificate and the key's remainder."""
    room = len(signer.modulus) - len(owner) - 32
    leftmost, remainder = key.modulus[:room], key.modulus[room:]
    exponent = exponent_bytes(key.exponent)
    body = (bytes([fmt]) + owner + bytes.fromhex(expiry_mmyy) + CERT_SERIAL
            + bytes([SHA1, RSA, len(key.modulus), len(exponent)])
            + leftmost.ljust(room, bytes([PAD])))
    return _signed(signer, body, remainder + exponent + extra), remainder


@lru_cache(maxsize=64)
def _issuer_tags(rid: str, issuer_id: str, expiry_mmyy: str) -> tuple[tuple[str, bytes], ...]:
    issuer = _issuer(rid)
    cert, remainder = _key_certificate(test_ca(rid), FORMAT_ISSUER, _cn(issuer_id, 4),
                                       expiry_mmyy, issuer)
    tags = {"8F": bytes([TEST_CAPK_INDEX]), "90": cert, "9F32": exponent_bytes(issuer.exponent)}
    if remainder:
        tags["92"] = remainder
    return tuple(tags.items())


@lru_cache(maxsize=1024)
def _ssad(rid: str, static: bytes) -> bytes:
    issuer = _issuer(rid)
    body = (bytes([FORMAT_SSAD, SHA1]) + DATA_AUTH_CODE
            + bytes([PAD]) * (len(issuer.modulus) - 26))
    return _signed(issuer, body, static)


@lru_cache(maxsize=1024)
def _icc_certificate(rid: str, pan: str, expiry_mmyy: str, static: bytes) -> tuple[bytes, bytes]:
    return _key_certificate(_issuer(rid), FORMAT_ICC, _cn(pan, 10), expiry_mmyy, _icc(pan),
                            static)


def _digits(value: str, lengths: tuple[int, ...], name: str) -> str:
    if not value.isdigit() or len(value) not in lengths:
        raise ValueError(f"{name}: must be {'/'.join(map(str, lengths))} digits")
    return value


class CardPki:
    """The ODA data of one test card: certificates as tag -> value, and SDAD signing.

    `pan`: 12..19 digits; `expiry_yymm`: the application expiry (5F24 without the day),
    also used as the ICC certificate's expiry. `issuer_cert_expiry` (MMYY) exists so
    tests can present an expired issuer certificate.
    """

    def __init__(self, pan: str, expiry_yymm: str, *, rid: str = TEST_RID,
                 issuer_cert_expiry: str = ISSUER_CERT_EXPIRY):
        self.pan = _digits(pan, tuple(range(12, 20)), "pan")
        yymm = _digits(expiry_yymm, (4,), "expiry_yymm")
        self.icc_cert_expiry = yymm[2:] + yymm[:2]
        self.issuer_cert_expiry = _digits(issuer_cert_expiry, (4,), "issuer_cert_expiry")
        self.rid = rid.upper()
        test_ca(self.rid)  # fail here, not at the first certificate, for an unknown RID

    def __repr__(self) -> str:  # no PAN
        return f"CardPki({self.rid})"

    def issuer_tags(self) -> dict[str, bytes]:
        """8F (CA key index), 90 (issuer certificate), 92 (remainder), 9F32 (exponent)."""
        return dict(_issuer_tags(self.rid, self.pan[:ISSUER_ID_DIGITS], self.issuer_cert_expiry))

    def sda_tags(self, static: bytes) -> dict[str, bytes]:
        """93: Signed Static Application Data over `static`. The card also needs issuer_tags."""
        return {"93": _ssad(self.rid, bytes(static))}

    def dda_tags(self, static: bytes) -> dict[str, bytes]:
        """9F46 ICC certificate over `static`, 9F47, 9F48 remainder, 9F49 DDOL."""
        cert, remainder = _icc_certificate(self.rid, self.pan, self.icc_cert_expiry,
                                           bytes(static))
        tags = {"9F46": cert, "9F47": exponent_bytes(ICC_EXPONENT), "9F49": DEFAULT_DDOL}
        if remainder:
            tags["9F48"] = remainder
        return tags

    def icc_public_key(self) -> tuple[bytes, int]:
        """(modulus, exponent) of this card's ICC key, to check an SDAD in tests."""
        icc = _icc(self.pan)
        return icc.modulus, icc.exponent

    def sign_dynamic(self, ddol_data: bytes, icc_dynamic: bytes) -> bytes:
        """SDAD for 9F4B / the 80 response of INTERNAL AUTHENTICATE (Book 2 table 17).

        `icc_dynamic`: the ICC Dynamic Data, for DDA the ICC Dynamic Number's length
        byte then the number (9F4C, 2..8 bytes). `ddol_data`: the command data received.
        """
        icc = _icc(self.pan)
        pad = len(icc.modulus) - len(icc_dynamic) - 25
        if pad < 0:
            raise ValueError("icc_dynamic: too long for the ICC key")
        body = bytes([FORMAT_SDAD, SHA1, len(icc_dynamic)]) + icc_dynamic + bytes([PAD]) * pad
        return _signed(icc, body, bytes(ddol_data))

