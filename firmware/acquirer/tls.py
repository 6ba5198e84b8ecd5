"""TLS to the acquirer: the terminal's client context, the pin check, and what went wrong.

Policy (issue 8 point 4): TLS 1.2 minimum (1.3 preferred: OpenSSL picks the highest both
sides offer), forward-secret AEAD ciphers for 1.2, no compression, no renegotiation. Only
`ca_file` is trusted (the system store is never loaded: that is the CA pinning); the host
name is checked against `tls_server_name` (default: the host); optional `pin_sha256`, the
SHA-256 of the server certificate's SubjectPublicKeyInfo, is checked after the handshake
and before a byte of a request is written. The client certificate and key are always
sent; the key file must be mode 0600 or stricter.

Fail closed: every failure is a `TlsError` whose `reason` starts "acquirer TLS: " and
names the cause and the file to fix (log-safe, no card data); the link turns it into
NotSent and stays down (offline rules and the store-and-forward queue apply). There is no
fallback to plain TCP.

Threads: `TlsClient.open()` runs on the terminal's loop. The context is built at the first
connect (three small file reads on the loop, once) and kept; a failed build is retried at
the next connect, so fixing a file needs no restart. `client_context()` and
`server_context()` block on file reads (start-up, doctor, the simulator's set-up).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["TlsError", "TlsClient", "client_context", "server_context", "check_key_file",
           "spki_sha256"]

CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"  # TLS 1.3 suites are all AEAD and PFS
PREFIX = "acquirer TLS: "
# OpenSSL verify codes (x509_vfy.h) that mean "not the host we asked for".
HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH = 62, 64
# Alerts the acquirer sends when it does not accept the terminal's certificate.
CLIENT_CERT_ALERTS = frozenset({
    "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "TLSV1_ALERT_DECRYPT_ERROR",  # OpenSSL 3 servers: client certificate chain not verified
})
OLD_VERSION = frozenset({"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL",
                         "NO_PROTOCOLS_AVAILABLE"})


class TlsError(Exception):
    """TLS set-up or handshake failed; `reason` is short, log-safe and names the fix."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_key_file(path: Path) -> None:
    """TlsError unless `path` is a regular file no one but its owner can read or write."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TlsError(f"{PREFIX}cannot read key_file {path}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 or not stat.S_ISREG(st.st_mode):
        raise TlsError(f"{PREFIX}key_file {path} is mode {mode:04o}: it must be 0600 or "
                       f"stricter (chmod 600 {path})")


def _hardened(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS_TLS12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load(what: str, path: Path, load) -> None:
    """Run `load()` (an SSLContext loader of `path`); TlsError naming the key on failure."""
    try:
        load()
    except FileNotFoundError:
        raise TlsError(f"{PREFIX}{what} {path}: no such file") from None
    except (OSError, ssl.SSLError) as exc:  # unreadable, not PEM, key not the cert's
        detail = getattr(exc, "reason", None) or exc.strerror or exc
        raise TlsError(f"{PREFIX}{what} {path}: cannot load: {detail}") from None


def client_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The terminal's context (see the module policy). TlsError names the file at fault."""
    ctx = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # CERT_REQUIRED, check_hostname
    _load("ca_file", ca_file, lambda: ctx.load_verify_locations(cafile=ca_file))
    check_key_file(key_file)
    _load("cert_file/key_file", cert_file, lambda: ctx.load_cert_chain(cert_file, key_file))
    return ctx


def server_context(cert_file: Path, key_file: Path,
                   client_ca: Path | None = None) -> ssl.SSLContext:
    """The simulator's context: same versions and ciphers; with `client_ca` a client
    certificate signed by it is required. TlsError names the file at fault."""
    ctx = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load("tls-cert/tls-key", cert_file, lambda: ctx.load_cert_chain(cert_file, key_file))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load("tls-client-ca", client_ca, lambda: ctx.load_verify_locations(cafile=client_ca))
    return ctx


def spki_sha256(cert: x509.Certificate | bytes) -> str:
    """Lower-case hex SHA-256 of a certificate's (or DER certificate's) public key info."""
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


class TlsClient:
    """The link's TLS side, from [acquirer]: `open()` connects, `refusal()` reads a late
    refusal of the client certificate (TLS 1.3 sends it after the handshake)."""

    def __init__(self, ca_file: Path, cert_file: Path, key_file: Path, *, server_name: str,
                 pin_sha256: str = ""):
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.server_name = server_name
        self.pin_sha256 = pin_sha256.lower()
        self._context: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, acquirer) -> "TlsClient | None":
        """None when `acquirer.tls` is false (firmware.config.AcquirerConfig); no I/O."""
        if not acquirer.tls:
            return None
        return cls(acquirer.ca_file, acquirer.cert_file, acquirer.key_file,
                   server_name=acquirer.tls_server_name or acquirer.host,
                   pin_sha256=acquirer.pin_sha256)

    def context(self) -> ssl.SSLContext:
        """The client context, built once (TlsError until the files are right)."""
        if self._context is None:
            self._context = client_context(self.ca_file, self.cert_file, self.key_file)
        return self._context

    async def open(self, host: str, port: int
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect, handshake, check the pin. TlsError for any TLS failure; OSError when
        the TCP connection itself fails. Cancellation (the caller's timeout) passes."""
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self.context(), server_hostname=self.server_name)
        except ssl.SSLError as exc:
            raise TlsError(self.explain(exc)) from None
        if self.pin_sha256:
            got = spki_sha256(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
            if got != self.pin_sha256:
                writer.transport.abort()
                raise TlsError(f"{PREFIX}pinned key mismatch: the server key is {got[:16]}..., "
                               f"pin_sha256 is {self.pin_sha256[:16]}... (check [acquirer] "
                               f"pin_sha256)")
        return reader, writer

    async def probe(self, host: str, port: int, timeout: float) -> None:
        """kpos doctor: connect, handshake, then wait up to 1 s (within `timeout`) for a
        late refusal of the client certificate; nothing is written. TlsError on a TLS
        failure (TimeoutError: no handshake in time, a plain TCP port that says nothing)."""
        async with asyncio.timeout(timeout):
            reader, writer = await self.open(host, port)
        try:
            async with asyncio.timeout(min(timeout, 1.0)):
                if not await reader.read(1):  # an accepted client reads nothing here
                    raise TlsError(f"{PREFIX}the acquirer hung up right after the handshake: "
                                   f"client certificate refused? (check [acquirer] cert_file "
                                   f"{self.cert_file})")
        except TimeoutError:
            pass
        except ssl.SSLError as exc:
            raise TlsError(self.explain(exc)) from None
        finally:
            writer.transport.abort()

    def refusal(self, exc: BaseException) -> str:
        """The reason when `exc`, read after the handshake, is the acquirer refusing the
        client certificate (it then never read the request), else ""."""
        if isinstance(exc, ssl.SSLError) and exc.reason in CLIENT_CERT_ALERTS:
            return self.explain(exc)
        return ""

    def explain(self, exc: ssl.SSLError) -> str:
        """One line an operator can act on, naming the file to fix."""
        reason = exc.reason or ""
        if isinstance(exc, ssl.SSLCertVerificationError):
            if exc.verify_code in (HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH):
                return (f"{PREFIX}hostname mismatch: the acquirer's certificate is not for "
                        f"{self.server_name!r} (check [acquirer] tls_server_name / host)")
            return (f"{PREFIX}certificate not trusted (CA {self.ca_file}): "
                    f"{exc.verify_message} (check [acquirer] ca_file)")
        if reason in CLIENT_CERT_ALERTS:
            return (f"{PREFIX}client certificate refused by the acquirer ({reason.lower()}; "
                    f"check [acquirer] cert_file {self.cert_file})")
        if reason in OLD_VERSION:
            return f"{PREFIX}TLS version too old: the acquirer does not offer TLS 1.2 or later"
        if reason == "WRONG_VERSION_NUMBER":
            return (f"{PREFIX}handshake failed: the acquirer does not speak TLS on this port "
                    f"(check [acquirer] tls and port)")
        if isinstance(exc, ssl.SSLEOFError):
            return (f"{PREFIX}handshake failed: the acquirer hung up (client certificate "
                    f"refused? check [acquirer] cert_file {self.cert_file}; or no TLS here)")
        return f"{PREFIX}handshake failed: {reason or exc}"
