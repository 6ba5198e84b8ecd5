"""PC/SC card reader over pyscard and pcscd: presence from a status-change thread, APDUs on the reader worker.

Contract (firmware.hal.reader.CardReader):
- `attach(post)` starts the monitor thread `kpos-pcsc-monitor`. It owns one PC/SC context and
  waits in SCardGetStatusChange (STATUS_WAIT_MS per call) on the first reader whose name matches
  `reader` (a case-insensitive regex, so a plain substring works; an invalid regex is taken as
  a literal substring). On a card arriving it posts CardInserted(), on the card leaving (or
  the reader or pcscd going away with a card in it) CardRemoved(); it does nothing else.
- While pcscd is unreachable, no reader matches or the reader was unplugged, `fault` holds a
  short operator text that fits a 20-column display in two lines ("pcscd not running",
  "no reader matches 'ACS'", "reader unplugged"; "" when fine; the PC/SC detail goes to the
  log) and the thread retries every RETRY_INTERVAL s, so it recovers on its own when pcscd
  or the reader comes back. Every change of `fault` is posted as ReaderStatus(fault), the
  first state after attach included (ReaderStatus("") once the reader is found); a
  ReaderStatus("") comes before the CardInserted of a card already in the reader, a fault
  after the CardRemoved of the card it took away. `wait_for(predicate, timeout)` waits on
  any change.
- `transmit(apdu) -> data + SW1 SW2` runs only on the reader worker (its own PC/SC context).
  It connects lazily on the first APDU after each insertion (T=0 or T=1, whichever the card
  offers; shared mode) and raises OSError with a short reason when the card is absent or
  gone, PcscReaderError (an OSError) when the reader or pcscd is unavailable. 61xx/6Cxx are
  the caller's (firmware.emv.apdu.Card). Blocking; pcscd bounds each call.
- `contactless`: forced by the constructor flag, else guessed (`looks_contactless`): a reader
  name that says contactless (CL, PICC, NFC, ...) or the card's ATR in the PC/SC form built
  for ISO 14443 cards (3B 8n 80 01 ..., PC/SC part 3).
- `probe`, `list_readers`, `card_atr`: one-shot looks for tools (`kpos doctor`) and tests;
  blocking, a few ms, any thread, each on its own short-lived context.
- `close()` (loop thread, after the worker is shut down) stops the monitor and releases
  both contexts; it waits at most CLOSE_TIMEOUT s for each.
APDUs and responses carry card data: they never reach logs or exception texts.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Callable

from smartcard import scard

from firmware.flows.types import CardInserted, CardRemoved, ReaderStatus

__all__ = ["PcscCardReader", "PcscReaderError", "match_reader", "is_contactless_atr",
           "looks_contactless", "probe", "list_readers", "card_atr", "PCSCD_DOWN",
           "READER_UNPLUGGED"]

log = logging.getLogger("kpos.reader.pcsc")

STATUS_WAIT_MS = 500  # one SCardGetStatusChange wait; close() also cancels it at once
RETRY_INTERVAL = 1.0  # s between attempts to reach pcscd or find the reader
CLOSE_TIMEOUT = 2.0  # s
PCSCD_DOWN = "pcscd not running"  # operator texts (`fault`)
READER_UNPLUGGED = "reader unplugged"
READER_ERROR = "card reader error"
CONTACTLESS_NAME = re.compile(r"contactless|\bCL\b|PICC|NFC|ACR122", re.IGNORECASE)
PROTOCOLS = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
SERVICE_GONE = {scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED,
                scard.SCARD_F_COMM_ERROR, scard.SCARD_E_INVALID_HANDLE}
CARD_GONE = {scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD,
             scard.SCARD_W_RESET_CARD, scard.SCARD_E_NOT_TRANSACTED}
READER_GONE = {scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE}
STATE_GONE = scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE


class PcscReaderError(OSError):
    """The PC/SC reader or pcscd is unavailable. `fault` is the short operator text; str()
    adds the PC/SC detail for logs and tools."""

    def __init__(self, fault: str, detail: str = ""):
        super().__init__(f"{fault} ({detail})" if detail else fault)
        self.fault = fault


def match_reader(pattern: str, names: list[str]) -> str | None:
    """First reader name matching `pattern` (case-insensitive regex or literal substring)."""
    try:
        regex = re.compile(pattern, re.IGNORECASE)
    except re.error:
        regex = re.compile(re.escape(pattern), re.IGNORECASE)
    return next((name for name in names if regex.search(name)), None)


def is_contactless_atr(atr: bytes) -> bool:
    """PC/SC part 3 ATR for contactless cards: 3B 8n 80 01 (ISO 14443-4 and storage cards)."""
    return len(atr) >= 4 and atr[0] == 0x3B and atr[1] & 0xF0 == 0x80 and atr[2:4] == b"\x80\x01"


def looks_contactless(reader_name: str, atr: bytes) -> bool:
    """A reader name that says contactless, or a contactless card's ATR (pure)."""
    return bool(CONTACTLESS_NAME.search(reader_name)) or is_contactless_atr(atr)


def _no_match(pattern: str) -> str:
    """The operator text for "no reader matches the configured pattern"."""
    return f"no reader matches {pattern!r}" if pattern else "no card reader"


def _reason(hresult: int) -> str:
    return f"{scard.SCardGetErrorMessage(hresult).rstrip('. ')} (0x{hresult & 0xFFFFFFFF:08X})"


def _error(hresult: int) -> PcscReaderError:
    """A failed PC/SC call as a PcscReaderError: pcscd gone, or some other reader error."""
    return PcscReaderError(PCSCD_DOWN if hresult in SERVICE_GONE else READER_ERROR, _reason(hresult))


def _establish() -> int:
    """A new PC/SC context; PcscReaderError naming pcscd when it is not reachable."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise PcscReaderError(PCSCD_DOWN, _reason(hresult))
    return context


def _list_readers(context: int) -> list[str]:
    hresult, names = scard.SCardListReaders(context, [])
    if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
        return []
    if hresult != scard.SCARD_S_SUCCESS:
        raise _error(hresult)
    return list(names)


def _release(context: int | None) -> None:
    if context is not None:
        hresult = scard.SCardReleaseContext(context)
        if hresult not in (scard.SCARD_S_SUCCESS, scard.SCARD_E_INVALID_HANDLE,
                           scard.SCARD_E_NO_SERVICE):
            log.warning("releasing PC/SC context: %s", _reason(hresult))


def list_readers() -> list[str]:
    """The readers pcscd lists now; PcscReaderError when pcscd is down."""
    context = _establish()
    try:
        return _list_readers(context)
    finally:
        _release(context)


def probe(pattern: str) -> str:
    """The name of the reader matching `pattern` now; PcscReaderError when pcscd is down or
    no reader matches (the detail lists the readers there are)."""
    names = list_readers()
    name = match_reader(pattern, names)
    if name is None:
        raise PcscReaderError(_no_match(pattern), f"readers: {', '.join(names) or 'none'}")
    return name


def card_atr(reader_name: str) -> bytes | None:
    """The ATR of the card in `reader_name` now (an ATR is not card data), None when the slot
    is empty or the card is mute; PcscReaderError when pcscd or the reader is gone."""
    context = _establish()
    try:
        hresult, states = scard.SCardGetStatusChange(
            context, 0, [(reader_name, scard.SCARD_STATE_UNAWARE)])
    finally:
        _release(context)
    if hresult in READER_GONE:
        raise PcscReaderError(READER_UNPLUGGED, _reason(hresult))
    if hresult not in (scard.SCARD_S_SUCCESS, scard.SCARD_E_TIMEOUT):
        raise _error(hresult)
    _, event, atr = states[0]
    if event & STATE_GONE:
        raise PcscReaderError(READER_UNPLUGGED)
    return bytes(atr) if _card_in(event) else None


def _card_in(event: int) -> bool:
    return bool(event & scard.SCARD_STATE_PRESENT) and not event & scard.SCARD_STATE_MUTE


class PcscCardReader:
    """A card reader behind pcscd, picked by name pattern (see the module contract)."""

    def __init__(self, reader: str, *, contactless: bool | None = None):
        self.pattern = reader
        self._forced_contactless = contactless
        self._cond = threading.Condition()
        self._post: Callable[[object], None] = lambda event: None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor_context: int | None = None
        # shared state, under _cond
        self.fault = "not started"
        self.reader_name: str | None = None
        self._present = False
        self._atr = b""
        self._generation = 0  # +1 per insertion: a connection belongs to one insertion
        # worker state, under _io
        self._io = threading.Lock()
        self._context: int | None = None
        self._handle: int | None = None
        self._protocol = 0
        self._handle_generation = -1

    # ---- contract: loop side -----------------------------------------------------------

    def attach(self, post: Callable[[object], None]) -> None:
        if self._thread is not None:
            raise RuntimeError("PcscCardReader.attach called twice")
        self._post = post
        self._thread = threading.Thread(target=self._monitor, name="kpos-pcsc-monitor",
                                        daemon=True)
        self._thread.start()

    def present(self) -> bool:
        with self._cond:
            return self._present

    @property
    def contactless(self) -> bool:
        if self._forced_contactless is not None:
            return self._forced_contactless
        with self._cond:
            name, atr = self.reader_name or "", self._atr
        return looks_contactless(name, atr)

    def status(self) -> str:
        """One line for the operator: the fault, or which reader is in use."""
        with self._cond:
            return self.fault or f"reader {self.reader_name}: card {'in' if self._present else 'out'}"

    def wait_for(self, predicate: Callable[["PcscCardReader"], bool], timeout: float) -> bool:
        """Block until predicate(self) is true (re-checked on every state change) or timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            context = self._monitor_context
        if context is not None:
            scard.SCardCancel(context)  # wakes SCardGetStatusChange; the thread releases it
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT)
            if self._thread.is_alive():
                log.warning("PC/SC monitor did not stop within %.1f s", CLOSE_TIMEOUT)
        if not self._io.acquire(timeout=CLOSE_TIMEOUT):
            log.warning("PC/SC transmit still busy at close; leaving its context to exit")
            return
        try:
            self._disconnect()
            _release(self._context)
            self._context = None
        finally:
            self._io.release()

    # ---- contract: reader worker ---------------------------------------------------------

    def transmit(self, apdu: bytes) -> bytes:
        with self._io:
            if self._stop.is_set():
                raise PcscReaderError("card reader closed")
            with self._cond:
                present, generation, name, fault = (self._present, self._generation,
                                                    self.reader_name, self.fault)
            if not present or name is None:
                if fault:
                    raise PcscReaderError(fault)
                raise OSError("no card in reader")
            if self._handle is None or self._handle_generation != generation:
                self._connect(name, generation)
            hresult, response = scard.SCardTransmit(self._handle, self._protocol, list(apdu))
            if hresult != scard.SCARD_S_SUCCESS:
                self._lost(hresult)
                raise OSError(f"card removed or not answering: {_reason(hresult)}")
            if len(response) < 2:  # vpcd answers an empty R-APDU when the card went away
                self._disconnect()
                raise OSError("card gave no status word (removed?)")
            return bytes(response)

    def _connect(self, name: str, generation: int) -> None:
        self._disconnect()
        if self._context is None:
            self._context = _establish()
        hresult, handle, protocol = scard.SCardConnect(self._context, name,
                                                       scard.SCARD_SHARE_SHARED, PROTOCOLS)
        if hresult != scard.SCARD_S_SUCCESS:
            self._lost(hresult)
            if hresult in CARD_GONE:
                raise OSError(f"no card in reader ({_reason(hresult)})")
            raise OSError(f"cannot connect to the card: {_reason(hresult)}")
        self._handle, self._protocol, self._handle_generation = handle, protocol, generation
        log.debug("connected to card in %s, protocol T=%d", name,
                  0 if protocol == scard.SCARD_PROTOCOL_T0 else 1)

    def _lost(self, hresult: int) -> None:
        """After a failed call: drop the handle, and the context too when pcscd went away."""
        self._disconnect()
        if hresult in SERVICE_GONE:
            _release(self._context)
            self._context = None

    def _disconnect(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            hresult = scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
            if hresult != scard.SCARD_S_SUCCESS and hresult not in CARD_GONE | SERVICE_GONE:
                log.warning("disconnecting card: %s", _reason(hresult))

    # ---- monitor thread ------------------------------------------------------------------

    def _monitor(self) -> None:
        while not self._stop.is_set():
            try:
                context = _establish()
            except PcscReaderError as exc:
                self._set(fault=exc.fault, name=None, present=False, detail=str(exc))
                self._stop.wait(RETRY_INTERVAL)
                continue
            with self._cond:
                self._monitor_context = context
            try:
                self._watch(context)
            except PcscReaderError as exc:
                self._set(fault=exc.fault, name=None, present=False, detail=str(exc))
            finally:
                with self._cond:
                    self._monitor_context = None
                _release(context)
            self._stop.wait(RETRY_INTERVAL)

    def _watch(self, context: int) -> None:
        """Follow the matching reader until pcscd goes away (PcscReaderError) or close()."""
        name, known, absent = None, scard.SCARD_STATE_UNAWARE, _no_match(self.pattern)
        while not self._stop.is_set():
            if name is None:
                name = match_reader(self.pattern, _list_readers(context))
                if name is None:
                    self._set(fault=absent, name=None, present=False)
                    self._stop.wait(RETRY_INTERVAL)
                    continue
                known = scard.SCARD_STATE_UNAWARE
            hresult, states = scard.SCardGetStatusChange(context, STATUS_WAIT_MS, [(name, known)])
            if hresult in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
                continue
            gone = hresult in READER_GONE
            if hresult != scard.SCARD_S_SUCCESS and not gone:
                raise _error(hresult)
            if gone or states[0][1] & STATE_GONE:  # unplugged: say so (not "no match") till back
                name, absent = None, READER_UNPLUGGED
                self._set(fault=absent, name=None, present=False)
                continue
            _, event, atr = states[0]
            known = event & ~scard.SCARD_STATE_CHANGED
            self._set(fault="", name=name, present=_card_in(event), atr=bytes(atr))

    def _set(self, *, fault: str, name: str | None, present: bool, atr: bytes = b"",
             detail: str = "") -> None:
        """Record the monitor's view; log and post fault changes and presence transitions."""
        with self._cond:
            was_present, old_fault = self._present, self.fault
            self.fault, self.reader_name, self._present = fault, name, present
            if present and not was_present:
                self._generation += 1
                self._atr = atr
            self._cond.notify_all()
        changed = fault != old_fault
        if changed and fault:
            log.warning("card reader fault: %s", detail or fault)
        elif changed:
            log.info("card reader %s ready", name)
            self._post(ReaderStatus(""))  # ready before the card already in it
        if present and not was_present:
            self._post(CardInserted())
        elif was_present and not present:
            self._post(CardRemoved())
        if changed and fault:
            self._post(ReaderStatus(fault))  # after the card it took away
