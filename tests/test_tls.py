"""TLS to the acquirer (issue 8 point 4): real handshakes over 127.0.0.1 with certificates
made here (firmware.sim.pki, cryptography.x509). Fail closed: a wrong certificate keeps
the link down with a clear reason, and no ISO 8583 byte ever leaves in clear."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pytest

from conftest import SIM_TOML, sim_overrides
from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink, LinkError, NotSent
from firmware.acquirer.tls import TlsClient, server_context, spki_sha256
from firmware.config import load_config
from firmware.doctor import FAIL, OK, check_acquirer
from firmware.sim.acquirer import AcquirerSimulator
from firmware.sim.catalog import load_catalog
from firmware.sim.pki import issue, make_test_pki, new_ca, write_pair
from scenario import ONLINE_PIN_APPROVED, SALE_5000, run_scenario

TIMEOUT = 3.0
TID, MID = "10000001", "898310048990001"


@dataclass
class Pki:
    dir: Path
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    pin: str

    def client(self, **kw) -> TlsClient:
        args = dict(server_name="127.0.0.1", pin_sha256="")
        args.update(kw)
        return TlsClient(args.pop("ca_file", self.ca_file), args.pop("cert_file", self.client_cert),
                         args.pop("key_file", self.client_key), **args)

    def server(self, client_ca: Path | None = None) -> ssl.SSLContext:
        return server_context(self.server_cert, self.server_key, client_ca or self.ca_file)


def make_pki(directory: Path) -> Pki:
    files = make_test_pki(directory)
    return Pki(directory, files.ca_file, files.server_cert, files.server_key, files.client_cert,
               files.client_key, files.server_pin_sha256)


@pytest.fixture
def pki(tmp_path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def other(tmp_path) -> Pki:
    """A second, unrelated test PKI (another CA)."""
    return make_pki(tmp_path / "other")


def echo() -> dict:
    return messages.echo_request(messages.TerminalIds(TID, MID), stan=123, batch=1,
                                 now=datetime(2025, 3, 4, 10, 0, 0))


async def exchange_with(tls: TlsClient, port: int) -> dict:
    link = AcquirerLink("127.0.0.1", port, connect_timeout=TIMEOUT, response_timeout=TIMEOUT,
                        tls=tls)
    try:
        return await link.exchange(echo())
    finally:
        await link.close()


def with_simulator(tmp_path, ssl_context, tls: TlsClient):
    """Echo once through a TLS simulator: (the response or the NotSent, the simulator)."""
    async def go():
        sim = AcquirerSimulator(load_catalog(None), tmp_path / "acq.db", ssl_context=ssl_context)
        port = await sim.start()
        try:
            try:
                return await exchange_with(tls, port), sim
            except NotSent as exc:
                return exc, sim
        finally:
            await sim.stop()
    return asyncio.run(go())


class Recorder:
    """A TCP relay in front of `target` that keeps every byte the terminal sends."""

    def __init__(self, target: int):
        self.target = target
        self.sent = bytearray()
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _relay(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(src, dst, keep: bool) -> None:
            while data := await src.read(4096):
                if keep:
                    self.sent += data
                dst.write(data)
            dst.close()
        try:
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        except OSError:
            pass
        finally:
            writer.close()
            up_writer.close()


def assert_no_clear_iso(sent: bytes) -> None:
    assert sent, "the terminal never tried to connect"
    assert sent[0] == 0x16  # a TLS handshake record: the ClientHello
    for clear in (TID.encode(), MID.encode(), b"0800", b"0200", b"0220"):
        assert clear not in sent


# --- a sale over TLS, end to end ------------------------------------------------------

def tls_config(tmp_path, pki: Pki, **acquirer):
    over = sim_overrides(tmp_path, tls=True, ca_file=str(pki.ca_file),
                         cert_file=str(pki.client_cert), key_file=str(pki.client_key), **acquirer)
    return load_config(SIM_TOML, overrides=over)


def test_sale_approved_over_tls_with_a_client_certificate_and_pin(tmp_path, pki):
    cfg = tls_config(tmp_path, pki, pin_sha256=pki.pin)
    session = run_scenario(cfg, "expect signon\n" + SALE_5000 + ONLINE_PIN_APPROVED)
    assert session.acquirer.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert session.terminal.link._tls.pin_sha256 == pki.pin


def test_wrong_ca_keeps_the_link_down_sale_goes_offline_nothing_in_clear(tmp_path, pki, other,
                                                                           caplog):
    """The acquirer's certificate is from another CA: "not trusted", the tap is approved
    offline (offline rules), and the wire carries nothing but TLS handshakes."""
    cfg = tls_config(tmp_path, pki)  # trusts pki's CA; the host below shows other's cert

    async def go():
        host = AcquirerSimulator(load_catalog(None), tmp_path / "other.db",
                                 ssl_context=other.server())
        recorder = Recorder(await host.start())
        relay = await recorder.start()
        run_cfg = replace(cfg, acquirer=replace(cfg.acquirer, port=recorder.port))
        try:
            await asyncio.to_thread(run_scenario, run_cfg, """
                keys 5000 ENTER
                expect screen "Insert, tap or swipe"
                tap approve
                expect screen "Approved offline"
                expect journal APPROVED
            """, start_acquirer=False)
        finally:
            relay.close()
            await host.stop()
        return recorder, host

    with caplog.at_level(logging.WARNING, logger="kpos.acquirer"):
        recorder, host = asyncio.run(go())
    assert host.requests_seen == 0
    assert_no_clear_iso(bytes(recorder.sent))
    assert f"acquirer TLS: certificate not trusted (CA {pki.ca_file})" in caplog.text


# --- each wrong certificate fails closed, with its reason ------------------------------

def test_server_from_another_ca_is_not_trusted(tmp_path, pki, other):
    result, sim = with_simulator(tmp_path, other.server(), pki.client())
    assert isinstance(result, NotSent)
    assert result.reason.startswith(f"acquirer TLS: certificate not trusted (CA {pki.ca_file})")
    assert sim.requests_seen == 0


def test_hostname_mismatch(tmp_path, pki):
    result, sim = with_simulator(tmp_path, pki.server(), pki.client(server_name="acquirer.bank.cn"))
    assert isinstance(result, NotSent)
    assert "hostname mismatch" in result.reason and "acquirer.bank.cn" in result.reason
    assert sim.requests_seen == 0


def test_pinned_key_mismatch(tmp_path, pki, other):
    result, sim = with_simulator(tmp_path, pki.server(), pki.client(pin_sha256=other.pin))
    assert isinstance(result, NotSent)
    assert "pinned key mismatch" in result.reason and "pin_sha256" in result.reason
    assert sim.requests_seen == 0


def test_the_right_pin_passes(tmp_path, pki):
    result, sim = with_simulator(tmp_path, pki.server(), pki.client(pin_sha256=pki.pin.upper()))
    assert result["t"] == "0810" and result["39"] == "00"
    assert sim.requests_seen == 1
    assert pki.pin == spki_sha256(ssl.PEM_cert_to_DER_cert(pki.server_cert.read_text()))


class OpenSslHost:
    """One TLS accept on a blocking socket (a thread): OpenSSL itself writes the alert of
    a failed handshake, as a real acquirer's TLS front end does (asyncio's server drops
    the connection without it). `reason`: why the handshake failed, "" when it passed;
    `plain`: every byte read after a good handshake (none is ever expected)."""

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.reason = ""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept_one, daemon=True)
        self.thread.start()

    def _accept_one(self) -> None:
        conn, _ = self.server.accept()
        conn.settimeout(TIMEOUT)
        tls = self.ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.reason = getattr(exc, "reason", "") or str(exc)
            raw = socket.socket(fileno=tls.detach())
            self._drain(raw)  # read what the client sent so close() sends no RST
            raw.close()
        finally:
            tls.close()
            self.server.close()
            self.done.set()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        try:
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(4096):
                pass
        except OSError:
            pass


def exchange_openssl(ctx: ssl.SSLContext, tls: TlsClient) -> tuple[Exception, str]:
    host = OpenSslHost(ctx)
    with pytest.raises(NotSent) as err:
        asyncio.run(exchange_with(tls, host.port))
    assert host.done.wait(TIMEOUT)
    return err.value, host.reason


def test_client_certificate_from_a_wrong_ca_is_refused(pki, other):
    """TLS 1.3: the refusal comes after the client's handshake, in place of the answer;
    the host never read the request, so it is NotSent (no reversal), with the reason."""
    error, host_reason = exchange_openssl(
        pki.server(), pki.client(cert_file=other.client_cert, key_file=other.client_key))
    assert host_reason == "CERTIFICATE_VERIFY_FAILED"
    assert "client certificate refused by the acquirer" in error.reason
    assert str(other.client_cert) in error.reason


def test_the_simulator_refuses_a_wrong_client_certificate(tmp_path, pki, other):
    """asyncio's TLS server hangs up without an alert: the request is never read (the
    outcome for the terminal is a link error; kpos doctor names cert_file, below)."""
    async def go():
        sim = AcquirerSimulator(load_catalog(None), tmp_path / "acq.db", ssl_context=pki.server())
        port = await sim.start()
        try:
            with pytest.raises(LinkError):
                await exchange_with(pki.client(cert_file=other.client_cert,
                                               key_file=other.client_key), port)
            return sim.requests_seen
        finally:
            await sim.stop()
    assert asyncio.run(go()) == 0


def test_no_client_certificate_is_refused(pki):
    """A TLS client without a certificate (not ours: ours always sends one)."""
    host = OpenSslHost(pki.server())

    async def go():
        ctx = ssl.create_default_context(cafile=pki.ca_file)
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port, ssl=ctx)
        writer.write(messages.frame(messages.encode(echo())))
        with pytest.raises(ssl.SSLError) as err:
            await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
        writer.transport.abort()
        return err.value
    error = asyncio.run(go())
    assert host.done.wait(TIMEOUT)
    assert host.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert error.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert "client certificate refused" in TlsClient(
        pki.ca_file, pki.client_cert, pki.client_key, server_name="x").refusal(error)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")
def test_tls_below_1_2_is_refused(pki):
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.load_cert_chain(pki.server_cert, pki.server_key)
    error, host_reason = exchange_openssl(old, pki.client())
    assert "TLS version too old" in error.reason
    assert host_reason  # the host's handshake failed too: nothing was exchanged


def test_key_file_readable_by_others_is_refused_naming_the_file(tmp_path, pki):
    os.chmod(pki.client_key, 0o644)
    result, sim = with_simulator(tmp_path, pki.server(), pki.client())
    assert isinstance(result, NotSent)
    assert str(pki.client_key) in result.reason and "0644" in result.reason
    assert "chmod 600" in result.reason
    assert sim.requests_seen == 0


@pytest.mark.parametrize("speaks_first", [False, True], ids=["silent", "answers-in-clear"])
def test_plain_tcp_server_is_a_handshake_failure_never_a_fallback(tmp_path, pki, speaks_first):
    """tls = true but the port is plain TCP: NotSent, and what reached the server is the
    ClientHello only (no ISO 8583 in clear), whether the server waits or talks first."""
    got = bytearray()

    async def go():
        done = asyncio.Event()

        async def plain(reader, writer):
            if speaks_first:
                writer.write(b"\x00\x04" b"0810")
            got.extend(await reader.read(4096))
            await done.wait()
            writer.close()
        server = await asyncio.start_server(plain, "127.0.0.1", 0)
        link = AcquirerLink("127.0.0.1", server.sockets[0].getsockname()[1],
                            connect_timeout=0.5 if not speaks_first else TIMEOUT,
                            response_timeout=TIMEOUT, tls=pki.client())
        try:
            with pytest.raises(NotSent) as err:
                await link.exchange(echo())
            return err.value
        finally:
            done.set()
            server.close()
            await link.close()
    error = asyncio.run(go())
    if speaks_first:
        assert "does not speak TLS" in error.reason
    else:
        assert "timed out" in error.reason
    assert_no_clear_iso(bytes(got))


# --- kpos doctor ------------------------------------------------------------------------

def doctor_config(tmp_path, pki: Pki, port: int, acquirer=None, **keys):
    cfg = tls_config(tmp_path, pki, **keys)
    return replace(cfg, acquirer=replace(acquirer or cfg.acquirer, host="127.0.0.1", port=port))


def doctor_on(tmp_path, ssl_context, pki: Pki, acquirer=None, **keys) -> tuple[str, str]:
    async def go():
        sim = AcquirerSimulator(load_catalog(None), tmp_path / "acq.db", ssl_context=ssl_context)
        port = await sim.start()
        try:
            return await asyncio.to_thread(check_acquirer,
                                           doctor_config(tmp_path, pki, port, acquirer, **keys))
        finally:
            await sim.stop()
    return asyncio.run(go())


def test_doctor_passes_a_good_tls_link(tmp_path, pki):
    status, detail = doctor_on(tmp_path, pki.server(), pki, pin_sha256=pki.pin)
    assert status == OK, detail
    assert "client certificate accepted" in detail


def test_doctor_names_the_file_to_fix(tmp_path, pki, other):
    status, detail = doctor_on(tmp_path, other.server(), pki)
    assert status == FAIL
    assert "certificate not trusted" in detail and "ca_file" in detail


def test_doctor_reports_a_refused_client_certificate(tmp_path, pki, other):
    cfg = tls_config(tmp_path, pki)
    wrong = replace(cfg.acquirer, cert_file=other.client_cert, key_file=other.client_key)
    status, detail = doctor_on(tmp_path, pki.server(), pki, acquirer=wrong)
    assert status == FAIL
    assert "client certificate refused" in detail and str(other.client_cert) in detail


# --- the test PKI itself --------------------------------------------------------------

def test_make_test_pki_writes_private_keys_0600(pki):
    for key in (pki.server_key, pki.client_key):
        assert os.stat(key).st_mode & 0o777 == 0o600
    assert not (pki.dir / "ca.key").exists()


def test_write_pair_tightens_an_existing_key_file(tmp_path):
    ca = new_ca()
    key = tmp_path / "k.pem"
    key.write_text("old")
    os.chmod(key, 0o644)
    write_pair(issue(ca, "x", server=False), tmp_path / "c.pem", key)
    assert os.stat(key).st_mode & 0o777 == 0o600
