"""ISO 8583 acquirer host simulator: sign-on, echo, sales (PIN and ARQC checked), offline
sale advices, reversals, over TCP, with every link fault the terminal must survive.

Runs on the caller's asyncio loop. All sqlite work (the Ledger) runs on one named worker
thread ("acq-ledger") through loop.run_in_executor, in arrival order, so the simulator never
blocks a loop it shares (`kpos sim`: the terminal's). `ledger_thread=False` (`kpos acquirer`,
a process of its own serving load tests) decides on the loop thread instead, in arrival
order too: each decision blocks the loop for its SQLite work (well under a millisecond,
no fsync: synchronous=NORMAL), and it spares every request two thread hops and the GIL
hand-overs between a busy loop and a busy ledger thread (about 1.4x the sales per second
under 50 terminals; docs/performance.md).
Each connection serves framed requests (2-byte length) one after another; connections are
served concurrently. Decisions follow docs/acquirer-protocol.md and the catalog; every sale
and advice decision (declines and unanswered ones too) and every reversal is recorded in
the ledger. An advice repeated (0221, or 0220 again) under a recorded advice's key is
answered with the recorded code and RRN and never debits twice.
Fault knobs (`Faults`, protocol doc §10) are read once per request on the loop, so tests
and scripts may change them at run time; delays are seconds. The network switch
(go_down / go_up / restart) closes and reopens the listener on the same port with the
same ledger. A catalog terminal with pin_format 4 signs on with 60.3 = 004 and gets AES-256
working keys as TR-31 blocks under its AES TMK; its requests are read with a 16-byte field
52 (messages.decode_request), its PIN blocks decrypted as format 4 and its MACs are CMACs
(docs/acquirer-protocol.md §3, §4). A sign-on code that does not match the terminal's
catalog pin_format is answered 63. Key knobs `key_change` / `bad_kcv` (docs/acquirer-protocol.md §3): the
next answer asks for a new sign-on; sign-on answers carry a wrong MAK KCV. Logs (logger "kpos.sim.acquirer") carry messages.describe() output only,
never a PAN, track 2, PIN block or ICC data. TEST HOST: catalog cards and keys only.

Chip data (docs/acquirer-protocol.md §8): field 55 of a sale must agree with fields 4 and
49 and carry an ARQC that verifies under the catalog's IMK-AC; every 0210 to a request
with an ARQC carries field 55 = 91 (ARPC method 1 + ARC) and 8A, both computed by
firmware/emv/cryptogram.py, the same code the card emulator uses, then for catalog cards
with `issuer_script` an issuer script (72). Online PIN (field 52) is required when the
CVM results (9F34) name online PIN or there is no field 55; a plain swipe (22 = 02x) of a
chip card (service code 2xx/6xx) is declined 45; a swipe's track 2 (35) must agree with
fields 2 and 14.
TLS (`ssl_context`, firmware.acquirer.tls.server_context): every connection is TLS; a
client whose handshake fails (no or untrusted client certificate, old version) never
reaches the request loop, so no ISO 8583 byte is read from it.
MAC (firmware.mac, docs/acquirer-protocol.md §MAC): a request carrying field 64/128 is
checked under the terminal's session MAK (retail MAC for a TDES session, CMAC for an AES
one); a bad MAC, or none when `require_mac` and the MTI needs one, is answered 39 = A0
without any ledger decision. The response to a MACed request is MACed. A request without
a MAC is answered without one (the legacy mode, terminal `[security] mac = "none"`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

from firmware import keys, mac
from firmware.acquirer import messages
from firmware.acquirer.messages import AesWorkingKeys, MessageError, WorkingKeys
from firmware.cardsafe import mask_pan
from firmware.emv import cryptogram, tlv
from firmware.sim.catalog import Catalog, TestCard, load_catalog
from firmware.sim.ledger import PIN_TRIES_LIMIT, Authorisation, Ledger
from firmware.sim import host_settle, host_txn, host_wallet

EXTENSIONS = (host_txn, host_wallet, host_settle)  # each has install(simulator)

__all__ = [
    "Faults", "FAULT_SWITCHES", "AcquirerSimulator", "serve", "sale_response", "advice_response",
    "NO_ANSWER", "Decision", "next_stan",
    "check_icc", "check_swipe", "check_arqc", "card_psn", "issuer_icc_data", "pin_required",
    "ISSUER_SCRIPT",
    "ARQC_VERIFIED", "ARQC_FAILED", "ARQC_NOT_CHECKED",
]

log = logging.getLogger("kpos.sim.acquirer")
T = TypeVar("T")

NO_ANSWER = "no_response"  # decision: read the request, never answer (catalog term)
# Test hook (tests/test_secrets_scan.py): with KPOS_SIM_PIN_BLOCKS=FILE in the environment,
# every field 52 received is appended to FILE as hex, one a line, so a test can hunt for the
# PIN blocks in what the terminal kept. FILE is the host's side: never in the terminal's dir.
PIN_BLOCKS_ENV = "KPOS_SIM_PIN_BLOCKS"

# Response field 39 codes the simulator decides itself.
RC_APPROVED, RC_DO_NOT_HONOUR = "00", "05"
RC_BAD_TERMINAL, RC_BAD_TXN, RC_BAD_CARD = "03", "12", "14"
RC_FORMAT, RC_LOW_FUNDS, RC_EXPIRED, RC_WRONG_PIN = "30", "51", "54", "55"
RC_PIN_TRIES, RC_SYSTEM, RC_DUPLICATE = "75", "96", "94"
RC_BAD_MAC = "A0"  # the request's MAC failed
RC_SECURITY = "63"  # a sign-on for keys of another cipher than the terminal's TMK
RC_USE_CHIP = "45"  # UnionPay: "请使用芯片", a chip card read by its magnetic stripe

SALE_PROCESSING_CODE = "000000"
SIGNON_DOUBLE_KEYS = "003"  # 60.3 of a sign-on asking for double-length keys
SIGNON_CODES = tuple(messages.SIGNON_CODES.values())  # 003 TDES keys, 004 AES key blocks

# Field 22 PAN entry (first two digits) that reads a chip: contact, contactless.
CHIP_ENTRY_MODES = ("05", "07")
# Field 22 PAN entry of a magnetic stripe read: plain swipe, fallback after a chip failure.
SWIPE_ENTRY, FALLBACK_ENTRY = "02", "80"
CHIP_SERVICE_CODES = "26"  # first digit of a track 2 service code naming an IC card
CVM_ONLINE_PIN = 0x02  # 9F34 byte 1, bits 6-1: enciphered PIN verified online
# Issuer script (72) for catalog cards with `issuer_script`: script id 9F18, then one
# command 86: PUT DATA (secure messaging CLA 04) of LCOL 9F14 = 03, then a 4-byte MAC.
# The MAC is a placeholder: the card emulator does not check script MACs.
SCRIPT_ID = bytes.fromhex("00000001")
SCRIPT_PUT_DATA = bytes.fromhex("04DA9F14" "05" "03") + bytes(4)  # header, Lc, LCOL, MAC
ISSUER_SCRIPT = tlv.encode("72", tlv.encode("9F18", SCRIPT_ID) + tlv.encode("86", SCRIPT_PUT_DATA))
# Chip data failures answer 05 "do not honour", as UnionPay does for card verification
# (CVN) failures and as issuers do to avoid telling a forger which check failed; the
# ledger keeps the precise reason. Field 55 absent or unparsable is a format error (30).
RC_CHIP_DATA = RC_DO_NOT_HONOUR
ARQC_VERIFIED, ARQC_FAILED, ARQC_NOT_CHECKED = "verified", "failed", ""

# Fields a request must carry, per MTI (else 39 = "30" format error).
REQUIRED: dict[str, tuple[str, ...]] = {
    "0800": ("11", "41"),
    "0200": ("2", "3", "4", "11", "41"),
    "0220": ("2", "3", "4", "11", "13", "41"),  # what the ledger row needs; the rest: ADVICE_FIELDS
    "0221": ("2", "3", "4", "11", "13", "41"),
    "0400": ("4", "11", "41"),
    "0401": ("4", "11", "41"),
}

# Request fields echoed in each response (docs/acquirer-protocol.md).
ECHO: dict[str, tuple[str, ...]] = {
    "0800": ("11", "12", "13", "41", "42", "60"),
    "0200": ("2", "3", "4", "11", "12", "13", "41", "42", "49"),
    "0220": ("2", "3", "4", "11", "41", "42", "49"),
    "0221": ("2", "3", "4", "11", "41", "42", "49"),
    "0400": ("3", "4", "11", "41", "42"),
    "0401": ("3", "4", "11", "41", "42"),
}
ECHO_OTHER = ("11", "41", "42")
# Other fields an advice must carry (messages.advice_request), checked after 03 and 12.
ADVICE_FIELDS = ("12", "14", "22", "25", "39", "42", "49", "60")

GARBLE_LEN = 48


FAULT_SWITCHES = ("drop", "disconnect", "garble", "close_before_read", "close_mid_frame",
                  "wrong_stan", "answer_twice")
# Knobs that take a value: name -> (convert, accept, what the value must be).
_FAULT_VALUES: dict[str, tuple[Callable, Callable, str]] = {
    "delay": (float, lambda v: 0 <= v <= 3600, "seconds 0..3600"),
    "times": (int, lambda v: v >= 1, "a count >= 1"),
    "mti": (str, lambda v: v.isascii() and v.isdigit() and len(v) <= 4, "1-4 MTI digits"),
}


@dataclass
class Faults:
    """Fault knobs, read once per request (loop thread). drop, disconnect, close_mid_frame
    and delay still let the host decide (and debit); close_before_read does not."""

    delay: float = 0.0  # seconds to wait before answering
    drop: bool = False  # read, decide, never answer
    disconnect: bool = False  # read, decide, close the connection without answering
    garble: bool = False  # answer random bytes, correctly framed
    close_before_read: bool = False  # close as the request arrives: no decision, no ledger row
    close_mid_frame: bool = False  # decide, write the first half of the framed answer, close
    wrong_stan: bool = False  # answer with field 11 = next_stan(request's STAN)
    answer_twice: bool = False  # write the same answer twice, back to back
    times: int | None = None  # None: every matching request; N: the next N, then reset all
    mti: str = ""  # apply only to requests whose MTI starts with this; "" = all

    @classmethod
    def parse(cls, words: Iterable[str]) -> "Faults":
        """Knobs from words: `none`, or switch names (FAULT_SWITCHES), `delay S`, `times N`,
        `mti PREFIX` in any order, e.g. "wrong_stan times 1 mti 0220". Knobs not named are
        off. ValueError naming the knob or value that is wrong."""
        words = list(words)
        if words == ["none"]:
            return cls()
        if not words:
            raise ValueError("fault: name a knob, or none")
        faults, rest = cls(), iter(words)
        for word in rest:
            if word in FAULT_SWITCHES:
                setattr(faults, word, True)
            elif word in _FAULT_VALUES:
                setattr(faults, word, _fault_value(word, next(rest, "")))
            else:
                known = ", ".join(FAULT_SWITCHES + tuple(_FAULT_VALUES))
                raise ValueError(f"fault: unknown knob {word!r} (none, {known})")
        return faults

    def set_to(self, other: "Faults") -> None:
        """Take every knob of `other`, in place: whoever holds this object sees the change."""
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))

    def take(self, mti: str) -> "Faults":
        """The knobs for one request of `mti`: a copy of these, or none when `mti` does not
        start with `self.mti`. Counts `times` down; after the last one every knob is reset."""
        if not mti.startswith(self.mti):
            return Faults()
        now = replace(self)
        if self.times is not None:
            self.times -= 1
            if self.times <= 0:
                self.set_to(Faults())
        return now


def _fault_value(knob: str, text: str):
    convert, accept, want = _FAULT_VALUES[knob]
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):  # NaN and infinity fail `accept` too
        raise ValueError(f"fault: {knob} wants {want}, got {text!r}")
    return value


@dataclass(frozen=True)
class Decision:
    """A sale decision: field 39 (or NO_ANSWER), why, and the ARQC verdict for the ledger.

    `rc` "" means "no objection" (only from check_icc). `reason` is short and log-safe.
    """

    rc: str
    reason: str
    arqc: str = ARQC_NOT_CHECKED


_PASS = Decision("", "")


def echo(req: dict, names: tuple[str, ...]) -> dict:
    return {k: req[k] for k in names if k in req}


def mmdd(now: datetime) -> str:
    return now.strftime("%m%d")


def expired(expiry_yymm: str, now: datetime) -> bool:
    """True when the card's last valid month (YYMM) is before the transaction month."""
    return expiry_yymm < now.strftime("%y%m")


def original_stan(req: dict) -> str:
    """STAN of the sale a reversal names: field 61 batch(6)+STAN(6), else field 11."""
    f61 = req.get("61", "")
    return f61[6:12] if len(f61) >= 12 else req["11"]


def batch_of(req: dict) -> str:
    """Field 60.2 batch number (6 digits) or '' when absent."""
    return req.get("60", "")[2:8]


def _tdes_working_keys(tmk: bytes) -> tuple[WorkingKeys, keys.SessionKeys]:
    """New double-length PIK and MAK, wrapped under the TDES TMK with their KCVs."""
    pik, mak = keys.random_key(), keys.random_key()
    wk = WorkingKeys(pik_enc=keys.wrap_key(tmk, pik), pik_kcv=keys.kcv(pik),
                     mak_enc=keys.wrap_key(tmk, mak), mak_kcv=keys.kcv(mak))
    return wk, keys.SessionKeys(pik=pik, mak=mak)


def _aes_working_keys(tmk: bytes) -> tuple[AesWorkingKeys, keys.SessionKeys]:
    """New AES-256 PIK and MAK as TR-31 blocks under the AES TMK with their KCVs."""
    pik, mak = keys.random_aes_key(), keys.random_aes_key()
    wk = AesWorkingKeys(pik_block=keys.wrap_aes_key(tmk, pik, keys.AES_PIK_USAGE),
                        pik_kcv=keys.aes_kcv(pik),
                        mak_block=keys.wrap_aes_key(tmk, mak, keys.AES_MAK_USAGE),
                        mak_kcv=keys.aes_kcv(mak))
    return wk, keys.SessionKeys(pik=pik, mak=mak, algorithm="A")


def _record_pin_block(path: str, block: bytes) -> None:
    """The PIN_BLOCKS_ENV test hook: one small blocking append (test runs only)."""
    with open(path, "a", encoding="ascii") as out:
        out.write(bytes(block).hex() + "\n")


class AcquirerSimulator:
    """The host. start() binds and returns the port; stop() closes connections and ledger;
    go_down() / go_up() / restart() switch the network (loop thread, all of them)."""

    def __init__(self, catalog: Catalog, ledger_path: Path, *, faults: Faults | None = None,
                 clock: Callable[[], datetime] | None = None, ssl_context=None,
                 require_mac: bool = False, ledger_thread: bool = True):
        self.catalog = catalog
        self.ledger_thread = ledger_thread  # False: ledger work on the loop (module docstring)
        self.ledger_path = Path(ledger_path)
        self.faults = faults or Faults()
        self.clock = clock or datetime.now
        self.ssl_context = ssl_context  # ssl.SSLContext: serve TLS; None: plain TCP
        self.require_mac = require_mac  # True: a financial request without a MAC gets A0
        self.mac_failures = 0  # requests answered A0 for their MAC
        # Key management knobs (ledger thread reads them; tests and scripts set them):
        self.key_change = False  # the next answer to a non-sign-on asks for a sign-on (60.3 003)
        self.bad_kcv = False  # sign-on answers carry a wrong MAK check value (keys still set)
        self.host, self.port = "127.0.0.1", 0
        self.requests_seen = 0  # decodable requests read and decided, all connections
        self.requests_handled = 0  # of those, answered or not as decision and faults say
        # loop thread: on_message("request" | "answer", fields) for every decoded request and
        # every answer sent (the browser panel's message log; it masks card data itself)
        self.on_message: Callable[[str, dict], None] | None = None
        self._server: asyncio.Server | None = None
        self._accepting = False  # False from go_down() until go_up(): connections are closed
        self._started = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None  # ledger_thread
        self._ledger: Ledger | None = None
        self._progress = asyncio.Condition()  # notified as the counters above grow
        self._waiting = 0  # tasks in _wait_count
        self._connections: set[asyncio.Task] = set()
        self._handlers = {"0800": self._network, "0200": self._sale, "0220": self._advice,
                          "0221": self._advice, "0400": self._reversal, "0401": self._reversal}
        self._routes: dict[tuple[str, str], Callable[[dict, datetime], dict | None]] = {}
        for extension in EXTENSIONS:  # the other message families (protocol doc §11-§13)
            extension.install(self)

    def route(self, mti: str, msg_type: str, handler: Callable[[dict, datetime], dict | None]
              ) -> None:
        """Decide requests with `mti` whose 60.1 message type is `msg_type` with `handler`
        (ledger thread; returns the response fields, "t" set by the caller, or None for no
        answer). `msg_type` "" routes the whole MTI."""
        self._routes[(mti, msg_type)] = handler

    @property
    def ledger(self) -> Ledger:
        """The ledger, for handlers running on the ledger thread."""
        assert self._ledger is not None, "acquirer simulator not started"
        return self._ledger

    # lifecycle and network switch (loop thread) ---------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._started:
            raise RuntimeError("acquirer simulator already started")
        self._started = True
        if self.ledger_thread:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="acq-ledger")
        self._ledger = await self.in_ledger(lambda _: Ledger(self.ledger_path, self.catalog))
        self.host, self.port = host, port
        await self.go_up()
        return self.port

    async def stop(self) -> None:
        """Close the listener, every connection, then the ledger (idempotent)."""
        if not self._started:
            return
        await self.go_down()
        await self.in_ledger(lambda ledger: ledger.close())  # after any decision in flight
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._executor = self._ledger = None
        self._started = False
        log.info("acquirer simulator on port %d stopped", self.port)

    @property
    def down(self) -> bool:
        """True while not listening: before start(), after go_down() or stop()."""
        return self._server is None

    async def go_down(self) -> None:
        """The network goes down: stop listening and close every open connection (a
        connect is refused: NotSent). The ledger stays open. No-op when already down."""
        if self._server is None:
            return
        server, self._server, self._accepting = self._server, None, False
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections))  # each ends by closing its writer
        await server.wait_closed()
        log.info("acquirer simulator down (port %d)", self.port)

    async def go_up(self) -> None:
        """Listen again on the same host and port, same ledger. No-op when already up."""
        if not self._started:
            raise RuntimeError("acquirer simulator not started")
        if self._server is not None:
            return
        self._accepting = True
        try:
            self._server = await asyncio.start_server(self._serve_connection, self.host, self.port,
                                                      ssl=self.ssl_context)
        except OSError:
            self._accepting = False
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("acquirer simulator listening on %s:%d%s", self.host, self.port,
                 " (TLS)" if self.ssl_context else "")

    async def restart(self) -> None:
        """stop() then start() on the same host and port with the same ledger file."""
        await self.stop()
        await self.start(self.host, self.port)

    async def in_ledger(self, fn: Callable[[Ledger], T]) -> T:
        """Run fn(ledger) on the ledger thread (or the loop: ledger_thread False) and await
        its result (tests use it too)."""
        return await self._ledger_job(fn)

    def _ledger_job(self, fn: Callable[[Ledger], T]) -> asyncio.Future:
        """fn(ledger), queued on the ledger thread now (or run now, on the loop); its future."""
        if not self._started:
            raise RuntimeError("acquirer simulator not started")
        loop = asyncio.get_running_loop()
        if self._executor is not None:
            return loop.run_in_executor(self._executor, lambda: fn(self._ledger))
        done = loop.create_future()
        try:
            done.set_result(fn(self._ledger))
        except Exception as exc:
            done.set_exception(exc)
        return done

    async def wait_requests(self, n: int, timeout: float) -> None:
        """Wait until `n` requests in total have been read; TimeoutError after `timeout` s."""
        await self._wait_count(lambda: self.requests_seen >= n, timeout)

    async def wait_handled(self, n: int, timeout: float) -> None:
        """Wait until `n` requests in total have been decided, recorded and answered (or
        left unanswered) as decision and faults say; TimeoutError after `timeout` s."""
        await self._wait_count(lambda: self.requests_handled >= n, timeout)

    async def _wait_count(self, reached: Callable[[], bool], timeout: float) -> None:
        self._waiting += 1
        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(reached), timeout)
        finally:
            self._waiting -= 1

    async def _count(self, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        if self._waiting:  # nobody waits under a load test: no lock, no wake-up
            async with self._progress:
                self._progress.notify_all()

    # connections (loop thread) --------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not self._accepting:  # accepted just before go_down(): the network is down
            writer.close()
            return
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            while await self._serve_one(reader, writer, peer):
                pass
        except ConnectionError as exc:
            log.info("connection from %s lost: %s", peer, exc)
        except asyncio.CancelledError:  # go_down()/stop(): end quietly (asyncio's server
            log.debug("connection from %s closed by the simulator", peer)  # logs a raise)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_one(self, reader, writer, peer) -> bool:
        """Read, decide and answer one request; False when the connection must end."""
        try:
            raw = await messages.read_frame(reader)
            req = messages.decode_request(raw, self.catalog.pin_format)
        except asyncio.IncompleteReadError:
            return False  # the terminal hung up
        except MessageError as exc:
            log.warning("malformed frame from %s, closing: %s", peer, exc)
            return False
        faults = self.faults.take(req["t"])
        if faults.close_before_read:
            log.info("fault: closing before reading %s", messages.describe(req))
            return False
        await self._count("requests_seen")
        if log.isEnabledFor(logging.INFO):  # describe() costs more than the rest of the read
            log.info("request from %s: %s", peer, messages.describe(req))
        if self.on_message is not None:
            self.on_message("request", req)
        if "52" in req and os.environ.get(PIN_BLOCKS_ENV):
            _record_pin_block(os.environ[PIN_BLOCKS_ENV], req["52"])
        # queued now and shielded: a request read is decided even if the host goes down
        # (on the loop, ledger_thread False, it is decided already: no await)
        job = self._ledger_job(lambda _: self._respond_maced(raw, req))
        resp = job.result() if job.done() else await asyncio.shield(job)
        keep = await self._answer(writer, req, resp, faults)
        await self._count("requests_handled")
        return keep

    async def _answer(self, writer: asyncio.StreamWriter, req: dict, resp: dict | None,
                      faults: Faults) -> bool:
        """Send `resp` (None: the decision is not to answer) as `faults` say; False when the
        connection must end."""
        stan = req.get("11")
        if faults.disconnect:
            log.info("fault: disconnect without answering STAN %s", stan)
            return False
        if resp is None or faults.drop:
            log.info("no answer to STAN %s (%s)", stan, "fault: drop" if resp else "decision")
            return True
        if faults.delay:
            await asyncio.sleep(faults.delay)  # the fault itself, not a wait for something
        if self.on_message is not None:
            self.on_message("answer", resp)
        data = messages.frame(self._answer_bytes(resp, faults))
        if faults.close_mid_frame:
            writer.write(data[:len(data) // 2])
            await writer.drain()
            log.info("fault: closed in the middle of the answer to STAN %s", stan)
            return False
        writer.write(data * 2 if faults.answer_twice else data)
        await writer.drain()
        return True

    @staticmethod
    def _answer_bytes(resp: dict, faults: Faults) -> bytes:
        if faults.garble:
            log.info("fault: garbled answer to STAN %s", resp.get("11"))
            return b"\xff" + os.urandom(GARBLE_LEN - 1)  # 0xFF never starts an ASCII MTI
        if faults.wrong_stan and "11" in resp:
            resp = {**resp, "11": next_stan(resp["11"])}
            log.info("fault: answer names the wrong STAN %s", resp["11"])
        if log.isEnabledFor(logging.INFO):
            log.info("answer%s: %s", " (twice)" if faults.answer_twice else "",
                     messages.describe(resp))
        return messages.encode(resp)

    # decisions (ledger thread) --------------------------------------------------------

    def _respond_maced(self, raw: bytes, req: dict) -> dict | None:
        """_respond() behind the MAC check (module docstring). Ledger thread only."""
        mti = req.get("t", "")
        if not mac.needs_mac(mti) or mti[2:3] not in tuple("02468"):
            return self._respond(req)
        maced = mac.mac_field(req) in req
        key = self._session_mac(req.get("41", "")) if maced else None
        if maced and (key is None or not key.verify(raw, req)) or not maced and self.require_mac:
            self.mac_failures += 1
            log.warning("MTI %s STAN %s: request MAC %s", mti, req.get("11"),
                        "failed" if maced else "missing")
            resp = {"t": messages.response_mti(mti), **echo(req, ECHO.get(mti, ECHO_OTHER)),
                    "39": RC_BAD_MAC}
        else:
            resp = self._respond(req)
        return key.sign(resp) if resp is not None and maced and key is not None else resp

    def _session_mac(self, tid: str) -> mac.MacKey | None:
        """The MacKey of `tid`'s last sign-on (a 32-byte MAK is AES: CMAC), None before it."""
        session = self._ledger.session_keys(tid)
        if session is None:
            return None
        return mac.MacKey("cmac" if len(session[1]) == 32 else "retail", session[1])

    def _respond(self, req: dict) -> dict | None:
        """The response fields for `req`, or None for no answer. Ledger thread only."""
        mti = req.get("t", "")
        try:
            resp_mti = messages.response_mti(mti)
        except MessageError as exc:
            log.warning("unanswerable request: %s", exc)
            return None
        handler = (self._routes.get((mti, str(req.get("60", ""))[:2]))
                   or self._routes.get((mti, "")))
        if handler is None:  # the built-in families check their fields here; routed ones own
            missing = [f for f in REQUIRED.get(mti, ()) if f not in req]  # their checks
            if missing:
                log.warning("MTI %s STAN %s: missing field %s", mti, req.get("11"), missing[0])
                return {"t": resp_mti, **echo(req, ECHO_OTHER), "39": RC_FORMAT}
            handler = self._handlers.get(mti)
        if handler is None:
            return {"t": resp_mti, **echo(req, ECHO_OTHER), "39": RC_BAD_TXN}
        try:
            resp = handler(req, self.clock())
        except Exception:
            log.exception("host error on MTI %s STAN %s", mti, req.get("11"))
            return {"t": resp_mti, **echo(req, ECHO.get(mti, ECHO_OTHER)), "39": RC_SYSTEM}
        if resp is not None:
            resp["t"] = resp_mti
            self._key_knobs(req, resp)
        return resp

    def _key_knobs(self, req: dict, resp: dict) -> None:
        """Apply `key_change` (one answer, then off) and `bad_kcv` (last hex digit of 62)."""
        signon = str(req.get("60", ""))[8:11] in SIGNON_CODES
        if self.key_change and not signon:
            self.key_change = False
            code = messages.SIGNON_CODES[self.catalog.pin_format(req.get("41", ""))]
            resp["60"] = str(req.get("60", "00000000"))[:8].ljust(8, "0") + code
            log.info("asking terminal %s for a new sign-on (60.3 %s)", req.get("41"), code)
        if self.bad_kcv and signon and resp.get("62"):
            last = resp["62"][-1]
            resp["62"] = resp["62"][:-1] + ("0" if last != "0" else "1")

    def _network(self, req: dict, now: datetime) -> dict:
        """0800 by 60.3: sign-on (003 TDES, 004 AES), echo test (301, messages.is_echo), else 12."""
        if messages.is_echo(req):
            return self._echo(req)
        if req.get("60", "")[8:11] in SIGNON_CODES:
            return self._signon(req)
        return {**echo(req, ECHO["0800"]), "39": RC_BAD_TXN}

    def _echo(self, req: dict) -> dict:
        """Echo test: 00 for a known terminal (03 otherwise); no keys, no RRN, no ledger write."""
        known = req["41"] in self.catalog.terminal_keys
        return {**echo(req, ECHO["0800"]), "39": RC_APPROVED if known else RC_BAD_TERMINAL}

    def _signon(self, req: dict) -> dict:
        tid = req["41"]
        resp = {**echo(req, ECHO["0800"]), "37": self._ledger.next_rrn()}
        tmk = self.catalog.terminal_keys.get(tid)
        if tmk is None:
            log.warning("sign-on from unknown terminal %s", tid)
            return {**resp, "39": RC_BAD_TERMINAL}
        fmt = self.catalog.pin_format(tid)
        if req["60"][8:11] != messages.SIGNON_CODES[fmt]:
            log.warning("sign-on from terminal %s: 60.3 %s, its keys are pin format %d", tid,
                        req["60"][8:11], fmt)
            return {**resp, "39": RC_SECURITY}
        wk, session = _aes_working_keys(tmk) if fmt == 4 else _tdes_working_keys(tmk)
        self._ledger.set_session_keys(tid, session.pik, session.mak)
        log.info("terminal %s signed on: %r", tid, session)
        return {**resp, "39": RC_APPROVED, "62": messages.working_keys_field(wk)}

    def _sale(self, req: dict, now: datetime) -> dict | None:
        decision = self._sale_decision(req, now)
        rc = None if decision.rc == NO_ANSWER else decision.rc
        auth = self._ledger.authorise(
            tid=req["41"], stan=req["11"], date=req.get("13") or mmdd(now), batch=batch_of(req),
            pan=req["2"], amount=int(req["4"]), rc=rc, reason=decision.reason,
            arqc=decision.arqc)
        log.info("sale STAN %s card %s amount %d: %s (%s; ARQC %s)", auth.stan, auth.pan_masked,
                 auth.amount, rc or "no answer", decision.reason, decision.arqc or "not checked")
        if rc is None:
            return None
        icc = issuer_icc_data(req, self.catalog.imk_ac, rc)
        card = self.catalog.by_pan(req["2"])
        if icc and card is not None and card.issuer_script:
            icc += ISSUER_SCRIPT
        return sale_response(req, auth, icc)

    def _sale_decision(self, req: dict, now: datetime) -> Decision:
        """The sale's decision, checks in the documented order (protocol doc §8)."""
        tid, pan, amount = req["41"], req["2"], int(req["4"])
        if tid not in self.catalog.terminal_keys:
            return Decision(RC_BAD_TERMINAL, "unknown terminal")
        if req["3"] != SALE_PROCESSING_CODE:
            return Decision(RC_BAD_TXN, "processing code is not a sale")
        if self._ledger.find(tid, req["11"], req.get("13") or mmdd(now)) is not None:
            return Decision(RC_DUPLICATE, "duplicate STAN")
        for check in (check_icc, check_swipe):
            verdict = check(req)
            if verdict.rc:
                return verdict
        if amount in self.catalog.magic_amounts:
            return Decision(self.catalog.magic_amounts[amount], "magic amount")
        card = self.catalog.by_pan(pan)
        if card is None or not self._ledger.has_account(pan):
            return Decision(RC_BAD_CARD, "unknown card")
        if card.outcome == NO_ANSWER:
            return Decision(NO_ANSWER, "catalog: no response")
        if card.forced_code:
            return Decision(card.forced_code, "catalog: forced code")
        arqc = check_arqc(req, self.catalog.imk_ac)
        if arqc == ARQC_FAILED:
            return Decision(RC_CHIP_DATA, "ARQC failed", arqc)
        rc, reason = self._account_code(req, tid, card, now)
        return Decision(rc, reason, arqc)

    def _account_code(self, req: dict, tid: str, card: TestCard, now: datetime, *,
                      check_pin: bool = True) -> tuple[str, str]:
        """(code, reason) from expiry, PIN (unless not `check_pin`) and balance, in that order."""
        if expired(req.get("14", card.expiry), now):
            return RC_EXPIRED, "card expired"
        pin = self._pin_code(req, tid, card) if check_pin else None
        if pin is not None:
            return pin
        if int(req["4"]) > self._ledger.balance(card.pan):
            return RC_LOW_FUNDS, "insufficient funds"
        return RC_APPROVED, "approved"

    def _pin_code(self, req: dict, tid: str, card: TestCard) -> tuple[str, str] | None:
        """None when the online PIN is right or not needed; else (55 / 75 tries / 96 no
        session key, reason). A PIN block sent when none was needed is checked all the same."""
        if "52" not in req:
            return (RC_WRONG_PIN, "PIN block absent") if pin_required(req) else None
        if self._ledger.pin_tries(card.pan) >= PIN_TRIES_LIMIT:
            return RC_PIN_TRIES, "PIN tries exceeded"
        session = self._ledger.session_keys(tid)
        if session is None:
            log.warning("PIN block from terminal %s that never signed on", tid)
            return RC_SYSTEM, "no session key (never signed on)"
        try:
            decrypt = keys.decrypt_pin_iso4 if len(session[0]) == 32 else keys.decrypt_pin_iso0
            ok = decrypt(req["52"], card.pan, session[0]) == card.pin  # 32 bytes: an AES PIK
        except ValueError as exc:
            log.info("PIN block for %s unreadable: %s", mask_pan(card.pan), exc)
            ok = False
        tries = self._ledger.record_pin(card.pan, ok)
        if ok:
            return None
        if tries >= PIN_TRIES_LIMIT:
            return RC_PIN_TRIES, "wrong PIN, tries exceeded"
        return RC_WRONG_PIN, "wrong PIN"

    def _advice(self, req: dict, now: datetime) -> dict:
        """0220 / 0221: the recorded answer again for a known advice, else decide and record
        (debiting on 00) in one ledger transaction (protocol doc §9)."""
        tid, stan, date = req["41"], req["11"], req["13"]
        decision = self._advice_format(req)
        if not decision.rc:
            recorded = self._ledger.repeat_advice(tid, stan, date)
            if recorded is not None:
                log.info("advice %s STAN %s: repeat %d, answering %s again", req["t"], stan,
                         recorded.repeats, recorded.rc)
                return advice_response(req, recorded)
            decision = self._advice_decision(req, now)
        auth = self._ledger.advise(
            tid=tid, stan=stan, date=date, batch=batch_of(req), pan=req["2"],
            amount=int(req["4"]), rc=decision.rc, reason=decision.reason, arqc=decision.arqc)
        log.info("advice STAN %s card %s amount %d: %s (%s; cryptogram %s)", stan,
                 auth.pan_masked, auth.amount, auth.rc, decision.reason,
                 decision.arqc or "not checked")
        return advice_response(req, auth)

    def _advice_format(self, req: dict) -> Decision:
        """Terminal known (03), a sale (12), every advice field present and 39 an advice
        code (30); rc "" when the advice may be decided."""
        if req["41"] not in self.catalog.terminal_keys:
            return Decision(RC_BAD_TERMINAL, "unknown terminal")
        if req["3"] != SALE_PROCESSING_CODE:
            return Decision(RC_BAD_TXN, "processing code is not a sale")
        missing = [f for f in ADVICE_FIELDS if f not in req]
        if missing:
            return Decision(RC_FORMAT, f"field {missing[0]} missing")
        if req["39"] not in messages.ADVICE_CODES:
            return Decision(RC_FORMAT, "field 39 is not an advice code")
        return _PASS

    def _advice_decision(self, req: dict, now: datetime) -> Decision:
        """A new advice's decision: online duplicate (94), chip data, card, catalog, expiry,
        balance. No PIN (an advice has no PIN block), no magic amounts, and a catalog
        no_response card is decided all the same: advices are batch-like."""
        tid = req["41"]
        if self._ledger.find(tid, req["11"], req["13"]) is not None:
            return Decision(RC_DUPLICATE, "duplicate of an online sale")
        verdict = check_icc(req)
        if verdict.rc:
            return verdict
        arqc = check_arqc(req, self.catalog.imk_ac)
        if arqc == ARQC_FAILED:
            return Decision(RC_CHIP_DATA, "cryptogram failed", arqc)
        if not advice_cryptogram_ok(req):
            return Decision(RC_CHIP_DATA, "cryptogram type does not match the advice", arqc)
        card = self.catalog.by_pan(req["2"])
        if card is None or not self._ledger.has_account(req["2"]):
            return Decision(RC_BAD_CARD, "unknown card", arqc)
        if card.forced_code:
            return Decision(card.forced_code, "catalog: forced code", arqc)
        rc, reason = self._account_code(req, tid, card, now, check_pin=False)
        return Decision(rc, reason, arqc)

    def _reversal(self, req: dict, now: datetime) -> dict:
        tid = req["41"]
        resp = echo(req, ECHO["0400"])
        if tid not in self.catalog.terminal_keys:
            return {**resp, "39": RC_BAD_TERMINAL}
        stan, date = original_stan(req), req.get("13") or mmdd(now)
        result = self._ledger.reverse(tid, stan, date, mti=req["t"], reason=req.get("39", ""))
        log.info("reversal %s of STAN %s: found=%s credited=%s", req["t"], stan,
                 result.found, result.credited)
        return {**resp, "39": RC_APPROVED}


# Cryptogram Information Data (9F27) an advice's field 55 must carry, by its field 39:
# approved offline by the card (Y1, Y3) -> a TC; store-and-forward (00) -> the ARQC.
ADVICE_CID = {"Y1": 0x40, "Y3": 0x40, "00": 0x80}


def advice_cryptogram_ok(req: Mapping[str, object]) -> bool:
    """True when a chip advice's 9F27 is the cryptogram type its field 39 claims (the
    simulator's cryptograms do not cover the type, so it is checked here). An advice
    without field 55 or 9F27 (no chip data) passes: check_icc has judged those."""
    try:
        cid = (_icc_values(req) or {}).get("9F27")
    except tlv.TlvError:
        return False
    want = ADVICE_CID.get(str(req.get("39", "")))
    return cid is None or want is None or (len(cid) == 1 and cid[0] & 0xC0 == want)


def _decided(req: dict, echoed: tuple[str, ...], auth: Authorisation) -> dict:
    resp = {**echo(req, echoed), "37": auth.rrn, "39": auth.rc}
    if auth.auth_code:
        resp["38"] = auth.auth_code
    return resp


def sale_response(req: dict, auth: Authorisation, icc: bytes | None = None) -> dict:
    """0210 fields (without MTI) for a recorded sale decision; `icc` is field 55 if any."""
    resp = _decided(req, ECHO["0200"], auth)
    if icc:
        resp["55"] = icc
    return resp


def advice_response(req: dict, auth: Authorisation) -> dict:
    """0230 fields (without MTI) for a recorded advice decision: no field 55."""
    return _decided(req, ECHO["0220"], auth)


def next_stan(stan: str) -> str:
    """The STAN after `stan` (6 digits), 999999 wrapping to 000001: the wrong_stan fault."""
    return f"{int(stan) % 999999 + 1:06d}"


# --- chip data: field 55 checks, ARQC, ARPC (pure, any thread) -----------------------


def _chip_entry(req: Mapping[str, object]) -> bool:
    return str(req.get("22", ""))[:2] in CHIP_ENTRY_MODES


def _icc_values(req: Mapping[str, object]) -> Mapping[str, bytes] | None:
    """Field 55 as tag -> value; None when absent. TlvError when malformed."""
    icc = req.get("55")
    return None if icc is None else tlv.parse_flat(bytes(icc))


def _bcd_int(value: bytes | None) -> int | None:
    """The number in a BCD value (n format, e.g. 9F02, 5F2A), None if absent or not BCD."""
    text = value.hex() if value else ""
    return int(text) if text.isdigit() else None


def _field_int(req: Mapping[str, object], field: str) -> int | None:
    text = req.get(field)
    return int(text) if isinstance(text, str) and text.isdigit() else None


def check_icc(req: Mapping[str, object]) -> Decision:
    """Field 55 verdict: Decision with rc "" (no objection), or the decline and its reason.

    A chip or contactless entry (22 = 05x / 07x) must carry 55 (else 30); a magstripe
    entry carries none. When present, 9F02 must equal field 4 and 5F2A field 49, so a
    terminal that shows the card one amount and asks the host for another is refused (05).
    """
    try:
        values = _icc_values(req)
    except tlv.TlvError as exc:
        return Decision(RC_FORMAT, f"field 55 malformed: {exc}")
    if values is None:
        return Decision(RC_FORMAT, "field 55 absent on chip entry") if _chip_entry(req) else _PASS
    if _bcd_int(values.get("9F02")) != _field_int(req, "4"):
        return Decision(RC_CHIP_DATA, "amount mismatch 9F02")
    if _bcd_int(values.get("5F2A")) != _field_int(req, "49"):
        return Decision(RC_CHIP_DATA, "currency mismatch 5F2A")
    return _PASS


def check_swipe(req: Mapping[str, object]) -> Decision:
    """Magnetic stripe verdict (22 = 02x swipe, 80x fallback), rc "" for other entries.

    Field 35 must be present, well formed and agree with fields 2 and 14 (else 30); a
    plain swipe of a chip card (service code 2xx / 6xx) is declined 45: insert the chip.
    """
    entry = str(req.get("22", ""))[:2]
    if entry not in (SWIPE_ENTRY, FALLBACK_ENTRY):
        return _PASS
    track2 = req.get("35")
    if not isinstance(track2, str) or "=" not in track2:
        return Decision(RC_FORMAT, "track 2 absent or malformed")
    pan, rest = track2.split("=", 1)
    if len(rest) < 7 or not rest[:7].isdigit():
        return Decision(RC_FORMAT, "track 2 absent or malformed")
    if pan != req.get("2"):
        return Decision(RC_FORMAT, "track 2 PAN differs from field 2")
    if "14" in req and rest[:4] != req["14"]:
        return Decision(RC_FORMAT, "track 2 expiry differs from field 14")
    if entry == SWIPE_ENTRY and rest[4] in CHIP_SERVICE_CODES:
        return Decision(RC_USE_CHIP, "chip card swiped")
    return _PASS


def pin_required(req: Mapping[str, object]) -> bool:
    """Online PIN (field 52) is required unless field 55's CVM results (9F34) name another
    CVM: offline PIN, signature, no CVM, or none performed. Without field 55 (a swipe or
    fallback) or without 9F34 it is required; a keyed card (22 = 01x, a supervisor keyed
    the number in front of the merchant: signature) never needs it."""
    if str(req.get("22", ""))[:2] == "01":
        return False
    try:
        values = _icc_values(req)
    except tlv.TlvError:
        return True
    cvm_results = (values or {}).get("9F34", b"")
    return not cvm_results or cvm_results[0] & 0x3F == CVM_ONLINE_PIN


def card_psn(req: Mapping[str, object], values: Mapping[str, bytes]) -> str | None:
    """PAN sequence number, 2 digits: field 23 ("0" + PSN), else tag 5F34, else None."""
    f23 = req.get("23")
    if isinstance(f23, str) and len(f23) == 3 and f23.isdigit():
        return f23[1:]
    psn = values.get("5F34")
    return psn.hex() if psn and len(psn) == 1 and psn.hex().isdigit() else None


def check_arqc(req: Mapping[str, object], imk_ac: bytes) -> str:
    """ARQC_VERIFIED / ARQC_FAILED for field 55's 9F26, ARQC_NOT_CHECKED without field 55."""
    if req.get("55") is None:
        return ARQC_NOT_CHECKED
    try:
        psn = card_psn(req, _icc_values(req))
    except tlv.TlvError:
        return ARQC_FAILED
    ok = cryptogram.verify_arqc(imk_ac, str(req["2"]), psn, req["55"])
    return ARQC_VERIFIED if ok else ARQC_FAILED


def issuer_icc_data(req: Mapping[str, object], imk_ac: bytes, rc: str) -> bytes | None:
    """Field 55 of the 0210: 91 = ARPC + ARC, then 8A = ARC (ASCII of `rc`).

    None when the request has no usable ARQC to answer (no field 55, malformed TLV,
    9F26 not 8 bytes or 9F36 not 2 bytes). Sent on approvals and declines alike.
    """
    try:
        values = _icc_values(req)
    except tlv.TlvError:
        return None
    if values is None:
        return None
    arqc, atc = values.get("9F26", b""), values.get("9F36", b"")
    if len(arqc) != 8 or len(atc) != 2:
        return None
    arc = rc.encode("ascii")
    arpc = cryptogram.compute_arpc(imk_ac, str(req["2"]), card_psn(req, values), atc, arqc, rc)
    return tlv.encode("91", arpc + arc) + tlv.encode("8A", arc)


async def serve(catalog_path: str | Path | None, ledger_path: str | Path, host: str, port: int,
                faults: Faults | None = None, ssl_context=None) -> None:
    """`kpos acquirer`: run the simulator until this coroutine is cancelled."""
    sim = AcquirerSimulator(load_catalog(catalog_path), Path(ledger_path), faults=faults,
                            ssl_context=ssl_context, ledger_thread=False)
    await sim.start(host, port)
    try:
        await asyncio.Event().wait()  # forever, until cancelled
    finally:
        await sim.stop()
