"""Test PKI for TLS to the acquirer simulator: a CA, a server and a client certificate.

TEST ONLY: the keys are made on the spot and written unencrypted (mode 0600), so that a
developer can try TLS on a laptop (`kpos acquirer --make-test-pki DIR`) and tests can
make good and bad certificates. Blocking (key generation, small file writes); call it
before the event loop or from a worker. Keys are ECDSA P-256, certificates valid for
`DAYS` days from one hour ago. Errors: OSError from writing the files.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "PkiFiles", "new_ca", "issue", "write_pair", "make_test_pki"]

DAYS = 825
SERVER_NAMES = ("localhost", "127.0.0.1")  # the simulator's default subject names


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key (a CA's key signs others)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class PkiFiles:
    """The files make_test_pki() wrote."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_pin_sha256: str  # the server key's [acquirer] pin_sha256


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "KPOS TEST"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days)))


def new_ca(common_name: str = "KPOS TEST CA", days: int = DAYS) -> Issued:
    """A self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(common_name, _name(common_name), key, days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue(ca: Issued, common_name: str, *, server: bool, names: tuple[str, ...] = (),
          days: int = DAYS) -> Issued:
    """A leaf certificate signed by `ca`: a server's (subject alternative `names`: DNS
    names or IP addresses) or a client's (`server` False)."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(common_name, ca.cert.subject, key, days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_pair(issued: Issued, cert_path: Path, key_path: Path | None = None) -> None:
    """The certificate (PEM, 0644) and, when `key_path`, its key (PKCS#8 PEM, 0600 from
    creation on: it is never readable by others, not even for a moment)."""
    Path(cert_path).write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    if key_path is None:
        return
    pem = issued.key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        f.write(pem)


def make_test_pki(directory: Path, server_names: tuple[str, ...] = SERVER_NAMES) -> PkiFiles:
    """Write ca.crt, server.crt/.key and client.crt/.key into `directory` (created)."""
    from firmware.acquirer.tls import spki_sha256

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = new_ca()
    server = issue(ca, server_names[0], server=True, names=server_names)
    pki = PkiFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
                  d / "client.key", spki_sha256(server.cert))
    write_pair(ca, pki.ca_file)
    write_pair(server, pki.server_cert, pki.server_key)
    write_pair(issue(ca, "KPOS TEST TERMINAL", server=False), pki.client_cert, pki.client_key)
    return pki
