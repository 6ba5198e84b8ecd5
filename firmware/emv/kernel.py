"""EMV kernel session: one card and one transaction, from application selection to the
second GENERATE AC (EMV Books 1-4; contactless in the qPBOC / qVSDC style).

Blocking. Every method runs on the card reader's single worker thread and talks to the
card only through `transmit(apdu) -> data + SW1 SW2`. The app drives the session step by
step, because the cardholder takes part between the steps:

    apps = s.candidates()             PSE / PPSE directory or the known-AID list, by priority
    cvm = s.select(apps[i])           SELECT, GPO, records, ODA, restrictions, TRM, CVM start
    ok, left, cvm = s.verify_pin(b)   offline plaintext PIN (VERIFY), as the CVM list asks
    card = s.first_ac(online_pin=..)  terminal action analysis, GENERATE AC 1 -> ARQC / TC / AAC
    card = s.complete(approved, arc, icc)  EXTERNAL AUTHENTICATE, scripts, GENERATE AC 2
    card = s.complete_offline()       no host answer after an ARQC: GENERATE AC 2 with 8A "Z3"

`select` and `verify_pin` return the CVM the terminal must perform next ("online_pin",
"offline_pin", "signature" or "none"). Errors are CardReadError with a short, PAN-free
reason; its `next` says whether a fallback swipe ("swipe") or a contact insert ("insert")
may follow. Every loop is bounded by the card's checked lists, so garbage from a card
ends in CardReadError, never another exception or a hang.

Offline approval, only with `KernelParams.offline_capable` (the app's offline policy
allows it) and only for contact cards:
- at GENERATE AC 1 the terminal asks for a TC when the TVR matches neither the denial nor
  the online action codes; a card TC there is an approval by the card offline ("Y1");
- after an ARQC that no host answered, `complete_offline` lets the default action codes
  decide (`offline_decision`, "TC" | "AAC"), and the card answers TC ("Y3") or AAC.
A tap always carries an ARQC; a tap TC is refused. A card answering a stronger cryptogram
than asked (TC to an ARQC request, ARQC to an AAC request) is a CardReadError.
`icc_data` of a result is field 55 of the cryptogram it carries (the values that card
signed, so firmware.emv.cryptogram.verify_arqc checks a TC or an AAC as well as an ARQC);
`arqc_icc` keeps field 55 of GENERATE AC 1 for a store-and-forward advice. The TVR, TSI and
CVM results are real and go into field 55, the journal and the merchant receipt. Logs
carry the masked PAN, AIDs, TVR and TSI only.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable, Mapping

from firmware.cardsafe import mask_pan
from firmware.emv import apdu, tlv
from firmware.emv.action import (
    ActionCodes, first_ac_decision, issuer_action_codes, parse_action_codes,
    store_and_forward_allowed, unable_to_go_online,
)
from firmware.emv.apdu import ApduError, Card, Transmit
from firmware.emv.card import ENTRY_CHIP, ENTRY_CONTACTLESS, CardData, CardReadError
from firmware.emv.cvm import CvmContext, CvmProcess, parse_cvm_list
from firmware.emv.oda import OdaError, perform_oda, static_data
from firmware.emv.reader import (
    TerminalParams, _App, _candidates, _check_cryptogram, _dol_data, _field55,
    _gpo, _identity, _label, _record, _select_app, terminal_values,
)
from firmware.emv.restrictions import check_restrictions
from firmware.emv.risk import RiskParams, terminal_risk_management
from firmware.emv.tvr import Tsi, Tvr

__all__ = ["KernelParams", "EmvSession", "App", "kernel_params", "read_card"]

log = logging.getLogger("kpos.emv")

App = _App
MAX_AFL_RECORDS = 64
MAX_SCRIPT_COMMANDS = 16
ARC_UNABLE_ONLINE = "Z3"  # 8A when the host could not be reached (Book 4 A6)
# TTQ (9F66) byte 2 bit 7: the reader requires a CVM (amount above the CVM limit).
TTQ_CVM_REQUIRED = 0x40
# CTQ (9F6C) byte 1: the card asks for online PIN (bit 8) or a signature (bit 7).
CTQ_ONLINE_PIN, CTQ_SIGNATURE = 0x80, 0x40
AIP_ISSUER_AUTH = 0x04  # AIP byte 1: issuer authentication supported
P1_BY_KIND = {"AAC": apdu.AC_AAC, "ARQC": apdu.AC_ARQC, "TC": apdu.AC_TC}
STRENGTH = {"AAC": 0, "ARQC": 1, "TC": 2}  # a card may answer what was asked or weaker


@dataclass(frozen=True)
class KernelParams:
    terminal: TerminalParams = field(default_factory=TerminalParams)
    capks: Mapping = field(default_factory=dict)  # (rid, index) -> oda.CaPublicKey
    risk: RiskParams = RiskParams(0, 0, 0, 0)
    tac: ActionCodes = parse_action_codes("0010000000", "D84004F800", "D84004A800")
    contactless_limit: int = 500_000  # minor units; a tap above it must be inserted
    cvm_limit: int = 100_000  # minor units; a tap above it needs a CVM
    offline_capable: bool = False  # contact: GENERATE AC 1 may ask for a TC (offline approval)


def kernel_params(cfg, capks: Mapping, offline_capable: bool = False) -> KernelParams:
    """KernelParams from a firmware.config.Config ([emv] section) and loaded CA keys;
    `offline_capable` when the app's offline policy allows offline approvals."""
    e = cfg.emv
    terminal = TerminalParams(terminal_type=e.terminal_type, capabilities=e.capabilities,
                              ifd_serial=cfg.terminal.terminal_id)
    return KernelParams(
        terminal=terminal, capks=capks,
        risk=RiskParams(e.floor_limit, e.random_threshold, e.random_target_percent,
                        e.random_max_percent),
        tac=parse_action_codes(e.tac_denial, e.tac_online, e.tac_default),
        contactless_limit=e.contactless_limit, cvm_limit=e.cvm_limit,
        offline_capable=offline_capable)


class EmvSession:
    """One card session. Not thread-safe: the reader worker only. `apdus` counts the
    commands sent, `card_seconds` the time spent inside `transmit` (the card's and the
    reader's share of the session). `arqc_icc` is field 55 of GENERATE AC 1 (b"" until
    then, and for an AAC); `offline_decision` what complete_offline asked the card for
    ("TC" | "AAC"; None until it ran after an ARQC)."""

    def __init__(self, transmit: Transmit, params: KernelParams, *, amount: int, currency: int,
                 when: datetime, unpredictable: bytes, contactless: bool = False,
                 sequence: int = 1, rng: Callable[[int, int], int] | None = None):
        self.params = params
        self.amount = amount
        self.currency = currency
        self.contactless = contactless
        self.when = when
        self.tvr, self.tsi = Tvr(), Tsi()
        self.apdus = 0
        self.card_seconds = 0.0
        self._transmit = transmit
        self._card = Card(self._timed_transmit)
        self._rng = rng or random.SystemRandom().randint
        self._values = terminal_values(params.terminal, amount=amount, currency=currency,
                                       when=when, unpredictable=unpredictable,
                                       contactless=contactless, sequence=sequence)
        self._data: dict[str, bytes] = {}  # what the card told us
        self._sent: dict[str, bytes] = {}  # DOL data the card saw (PDOL, CDOL1)
        self._app: App | None = None
        self._identity = None
        self._cvm: CvmProcess | None = None
        self._cl_cvm = "none"
        self._oda = "none"
        self._card_result: CardData | None = None
        self.arqc_icc = b""
        self.offline_decision: str | None = None
        self.saf_allowed = True  # complete_offline: may a terminal AAC become store-and-forward

    def __repr__(self) -> str:
        return f"EmvSession(aid={self._app.aid if self._app else None}, apdus={self.apdus})"

    # ---- steps ---------------------------------------------------------------------

    def candidates(self) -> list[App]:
        """The mutually supported applications, highest priority first (at least one)."""
        if self.contactless and self.amount > self.params.contactless_limit:
            raise CardReadError("Over contactless limit", next="insert")
        apps = self._guard(lambda: _candidates(self._card, self.params.terminal, self.contactless),
                           selecting=True)
        if not apps:
            raise CardReadError("no supported application", next=self._retry())
        return [app for _, app in sorted(enumerate(apps), key=lambda p: (p[1].priority, p[0]))]

    def select(self, app: App) -> str:
        """Select `app` and read it; returns the first CVM to perform."""
        self._app = app
        return self._guard(lambda: self._select(app))

    def verify_pin(self, pin_block: bytes) -> tuple[bool, int | None, str]:
        """Offline plaintext PIN: VERIFY with an ISO 9564 format 2 block (wiped by the
        caller). Returns (ok, tries left or None, next CVM)."""
        if self._cvm is None or self._cvm.current() != "offline_pin":
            raise CardReadError("no offline PIN expected")
        return self._guard(lambda: self._verify(pin_block))

    def first_ac(self, *, online_pin: bool = False, offline_capable: bool | None = None) -> CardData:
        """Finish CVM (online PIN entered or not), terminal action analysis, GENERATE AC 1.
        Returns the card with field 55, TVR, TSI and the cryptogram: ARQC (go online), TC
        (approved offline by the card, only when offline capable) or AAC (declined, no
        field 55). `offline_capable` overrides the params' for this transaction (the app's
        offline policy knows the caps left)."""
        if offline_capable is not None:
            self.params = replace(self.params, offline_capable=offline_capable)
        return self._guard(lambda: self._first_ac(online_pin))

    def complete(self, *, approved: bool, arc: str, icc_response: bytes | None) -> CardData:
        """After the host answered (or could not be reached: arc "Z3"): issuer
        authentication, scripts, GENERATE AC 2. Returns the card with the final cryptogram
        (TC or AAC). Contactless: nothing to send, the card has already left."""
        assert self._card_result is not None, "complete() before first_ac()"
        if self.contactless or self._card_result.cryptogram_type != "ARQC":
            return self._card_result
        return self._guard(lambda: self._complete(approved, arc, icc_response))

    def complete_offline(self) -> CardData:
        """The host could not be reached after the ARQC: the default action codes decide
        (`offline_decision`), GENERATE AC 2 with 8A "Z3" asks for that; the card answers
        TC (approved offline by the card) or AAC. No issuer authentication, no scripts.
        Contactless: nothing to send, the tap's ARQC card comes back, offline_decision "TC".
        After a TC or AAC at GENERATE AC 1: that card, unchanged."""
        assert self._card_result is not None, "complete_offline() before first_ac()"
        if self._card_result.cryptogram_type != "ARQC":
            return self._card_result
        if self.contactless:
            self.offline_decision = "TC"
            return self._card_result
        return self._guard(self._complete_offline)

    @property
    def needs_choice(self) -> bool:
        """Contact cards with several applications let the cardholder choose."""
        return not self.contactless

    def card(self) -> CardData:
        """The card as read by select(): identity and application, no cryptogram yet
        (the result of first_ac() once that ran)."""
        if self._card_result is not None:
            return self._card_result
        if self._identity is None:
            raise RuntimeError("card() before select()")
        return self._identity_card()

    def _identity_card(self) -> CardData:
        identity, app = self._identity, self._app
        return CardData(
            pan=identity.pan, expiry=identity.expiry, pan_seq=identity.pan_seq,
            track2=identity.track2, aid=app.aid, app_label=_label(self._data) or app.label,
            icc_data=b"", entry_mode=ENTRY_CONTACTLESS if self.contactless else ENTRY_CHIP,
            service_code=_service_code(identity.track2))

    # ---- select and read -----------------------------------------------------------

    def _select(self, app: App) -> str:
        try:
            fci = _select_app(self._card, app.aid)
        except ApduError as exc:
            raise CardReadError("application blocked" if exc.sw == 0x6283
                                else "application not selectable", next=self._retry()) from exc
        data = dict(fci)
        if self.contactless:
            self._values["9F66"] = self._ttq()
        sent, gpo = _gpo(self._card, fci, self._values)
        self._sent.update(sent)
        data.update({k: v for k, v in gpo.items() if k != "94"})
        static = self._read_records(data, gpo)
        self._data = data
        self._identity = _identity(data)
        self._restrictions()
        if self.contactless:
            return self._contactless_cvm()
        self._oda = perform_oda(
            capks=self.params.capks, aid=app.aid, aip=data["82"], card=data, static=static,
            terminal_caps=bytes.fromhex(self.params.terminal.capabilities),
            internal_authenticate=self._internal_authenticate, terminal_values=self._values,
            today=self.when.date(), tvr=self.tvr, tsi=self.tsi)
        self._risk_management()
        self._cvm = CvmProcess(self._cvm_list(), self._cvm_context(), self.tvr, self.tsi,
                               aip=data["82"])
        return self._next_cvm()

    def _read_records(self, data: dict[str, bytes], gpo: Mapping[str, bytes]) -> bytes | None:
        """READ RECORD over the AFL into `data`; returns the static data for ODA (None:
        it cannot be built, so ODA fails)."""
        oda_records: list[tuple[int, bytes]] = []
        for sfi, number, oda in _afl(gpo):
            raw = self._card.command(apdu.read_record(sfi, number))
            children = _record(raw, "malformed record")
            for tag, value in tlv.flatten(children).items():
                data.setdefault(tag, value)
            if oda:
                oda_records.append((sfi, raw))
        if self.contactless:
            return None
        try:
            return static_data(oda_records, data["82"], data.get("9F4A"))
        except OdaError as exc:  # a malformed SDA tag list fails ODA, not the read
            log.info("static data for ODA unusable: %s", exc.reason)
            return None

    def _restrictions(self) -> None:
        try:
            check_restrictions(self._data, today=self.when.date(),
                               terminal_country=self._values["9F1A"],
                               app_version=bytes.fromhex(self.params.terminal.app_version),
                               tvr=self.tvr)
        except ValueError as exc:
            raise CardReadError(str(exc)) from exc

    def _internal_authenticate(self, ddol_data: bytes) -> bytes:
        return self._card.command(apdu.internal_authenticate(ddol_data))

    def _risk_management(self) -> None:
        velocity = "9F14" in self._data and "9F23" in self._data
        atc = self._get_data("9F36") if velocity else None
        last_online = self._get_data("9F13") if velocity else None
        terminal_risk_management(
            amount=self.amount, params=self.params.risk, card=self._data, atc=atc,
            last_online_atc=last_online, rng=self._rng, tvr=self.tvr, tsi=self.tsi,
            aip=self._data["82"])

    def _get_data(self, tag: str) -> bytes | None:
        resp = self._card.exchange(apdu.get_data(tag))
        if not resp.ok:
            return None
        found = tlv.flatten(tlv.parse(resp.data)).get(tag)
        return found if found is not None and len(found) in (1, 2) else None

    # ---- cardholder verification ---------------------------------------------------

    def _cvm_list(self):
        raw = self._data.get("8E")
        if raw is None:
            return None
        try:
            return parse_cvm_list(raw)
        except ValueError as exc:
            raise CardReadError("malformed CVM list") from exc

    def _cvm_context(self) -> CvmContext:
        app_currency = self._data.get("9F42")
        return CvmContext(amount=self.amount,
                          same_currency=app_currency == self._values["5F2A"],
                          capabilities=bytes.fromhex(self.params.terminal.capabilities))

    def _next_cvm(self) -> str:
        """Run the CVM list up to the next method that needs the cardholder."""
        cvm = self._cvm
        for _ in range(64):  # each round settles one rule; CVM lists hold far fewer
            method = cvm.current()
            if method == "done":
                return "signature" if cvm.signature_required else "none"
            if method in ("signature", "none"):
                cvm.succeeded()
            elif method == "offline_pin" and self._pin_tries() == 0:
                cvm.failed("pin_try_limit_exceeded")
            else:
                return method
        raise CardReadError("CVM list does not end")

    def _pin_tries(self) -> int | None:
        tries = self._get_data("9F17")
        return tries[0] if tries is not None and len(tries) == 1 else None

    def _verify(self, pin_block: bytes) -> tuple[bool, int | None, str]:
        resp = self._card.exchange(apdu.verify_plaintext_pin(pin_block))
        if resp.ok:
            self._cvm.succeeded()
            log.info("offline PIN verified")
            return True, None, self._next_cvm()
        if resp.sw >> 4 == 0x63C and resp.sw & 0x0F:
            log.info("offline PIN wrong, %d tries left", resp.sw & 0x0F)
            return False, resp.sw & 0x0F, "offline_pin"
        if resp.sw >> 4 == 0x63C or resp.sw in (0x6983, 0x6984):
            log.info("offline PIN blocked (SW %04X)", resp.sw)
            self._cvm.failed("pin_try_limit_exceeded")
            return False, 0, self._next_cvm()
        log.info("offline PIN refused (SW %04X)", resp.sw)
        self._cvm.failed()
        return False, None, self._next_cvm()

    def _finish_cvm(self, online_pin: bool) -> str:
        """Close CVM processing before GENERATE AC; returns the CVM performed."""
        if self.contactless:
            return self._cl_cvm
        cvm = self._cvm
        for _ in range(64):
            method = cvm.current()
            if method == "done":
                break
            if method == "online_pin" and online_pin:
                cvm.succeeded()
            elif method == "online_pin":
                cvm.failed("pin_not_entered")
            elif method == "offline_pin":  # the cardholder did not get that far
                cvm.failed("pin_not_entered")
            else:
                cvm.succeeded()
        if cvm.signature_required:
            return "signature"
        return cvm.performed  # "" when CVM failed: the receipt then keeps a signature line

    def _contactless_cvm(self) -> str:
        ctq = self._data.get("9F6C", b"\x00\x00")
        over = self.amount > self.params.cvm_limit
        if ctq[:1] and ctq[0] & CTQ_ONLINE_PIN:
            self._cl_cvm = "online_pin"
        elif over and ctq[:1] and ctq[0] & CTQ_SIGNATURE:
            self._cl_cvm = "signature"
        elif over:
            self._cl_cvm = "online_pin"  # the reader asked for a CVM; PIN is what we offer
        else:
            self._cl_cvm = "none"
        return self._cl_cvm

    def _ttq(self) -> bytes:
        ttq = bytearray(bytes.fromhex(self.params.terminal.ttq))
        if self.amount > self.params.cvm_limit:
            ttq[1] |= TTQ_CVM_REQUIRED
        return bytes(ttq)

    # ---- cryptograms ---------------------------------------------------------------

    def _first_ac(self, online_pin: bool) -> CardData:
        performed = self._finish_cvm(online_pin)
        self._values["95"] = bytes(self.tvr)
        self._values["9F34"] = self._cvm_results(performed)
        if self.contactless and "9F26" not in self._data:
            raise CardReadError("card gave no cryptogram", next="insert")
        asked = "ARQC"  # a tap: the card's GPO answer
        if not self.contactless:
            asked = first_ac_decision(bytes(self.tvr), self.params.tac, self._iac(),
                                      online_capable=True,
                                      offline_capable=self.params.offline_capable)
            sent, fields = self._generate_ac(P1_BY_KIND[asked], "8C", "CDOL1")
            self._sent.update(sent)
            self._data.update(fields)
            self.tsi.set("card_risk_management_performed")
        kind = _check_cryptogram(self._data)
        if self.contactless and kind == "TC":
            raise CardReadError("offline tap not supported", next="insert")
        _check_answer(kind, asked)
        # an AAC at GENERATE AC 1 ends the sale at the terminal: nothing to send
        self._card_result = self._result(kind, performed, None if kind == "AAC" else self._sent)
        self.arqc_icc = self._card_result.icc_data
        log.info("GENERATE AC 1: %s (asked %s) tvr=%s tsi=%s cvm=%s", kind, asked,
                 self.tvr.hex(), self.tsi.hex(), performed)
        return self._card_result

    def _cvm_results(self, performed: str) -> bytes:
        if self.contactless:
            return {"online_pin": bytes.fromhex("420300"), "signature": bytes.fromhex("1E0300"),
                    "none": bytes.fromhex("1F0002")}[performed]
        return self._cvm.results

    def _generate_ac(self, p1: int, dol_tag: str, name: str) -> tuple[dict, dict]:
        if dol_tag not in self._data:
            raise CardReadError(f"card has no {name}")
        data, sent = _dol_data(self._data[dol_tag], {**self._data, **self._values})
        if not 0 < len(data) <= 255:
            raise CardReadError(f"{name} length unusable")
        nodes = tlv.parse(self._card.command(apdu.generate_ac(p1, data)))
        if len(nodes) != 1 or nodes[0].tag not in ("80", "77"):
            raise CardReadError("malformed GENERATE AC response")
        if nodes[0].tag == "77":
            return sent, tlv.flatten(nodes[0].children or ())
        raw = nodes[0].value  # format 1: CID, ATC, AC, optional IAD
        if len(raw) < 11:
            raise CardReadError("malformed GENERATE AC response")
        fields = {"9F27": raw[:1], "9F36": raw[1:3], "9F26": raw[3:11]}
        if len(raw) > 11:
            fields["9F10"] = raw[11:]
        return sent, fields

    def _result(self, kind: str, performed: str, sent: Mapping[str, bytes] | None) -> CardData:
        """The card with this cryptogram and its field 55 built over `sent`, the DOL data
        the card signed (None: no field 55)."""
        values = {**self._values, "95": bytes(self.tvr)}
        icc = b"" if sent is None else _field55(values, sent, self._data, self._app.aid)
        return replace(self._identity_card(), icc_data=icc, cryptogram=self._data["9F26"].hex().upper(),
                       cryptogram_type=kind, tvr=self.tvr.hex(), tsi=self.tsi.hex(), cvm=performed)

    def _complete(self, approved: bool, arc: str, icc_response: bytes | None) -> CardData:
        issuer = _issuer_data(icc_response)
        if "91" in issuer and len(issuer["91"]) in range(8, 17):
            self._issuer_authenticate(issuer["91"])
            self._values["91"] = issuer["91"]
        self._run_scripts(issuer.get("71", []), "script_failed_before_final_gen_ac")
        self._values["8A"] = arc.encode("ascii")[:2].ljust(2, b"0")
        self._values["95"] = bytes(self.tvr)
        asked = "TC" if approved else "AAC"
        sent, fields = self._generate_ac(P1_BY_KIND[asked], "8D", "CDOL2")
        self._data.update(fields)
        kind = _check_cryptogram(self._data)
        if kind == "ARQC":
            raise CardReadError("card answered ARQC to the second GENERATE AC")
        _check_answer(kind, asked)
        self._run_scripts(issuer.get("72", []), "script_failed_after_final_gen_ac")
        log.info("GENERATE AC 2: %s (asked %s, arc %s) tvr=%s tsi=%s", kind, asked, arc,
                 self.tvr.hex(), self.tsi.hex())
        self._card_result = self._result(kind, self._card_result.cvm, {**self._sent, **sent})
        return self._card_result

    def _complete_offline(self) -> CardData:
        iac = self._iac()
        self.offline_decision = unable_to_go_online(bytes(self.tvr), self.params.tac, iac)
        self.saf_allowed = store_and_forward_allowed(bytes(self.tvr), self.params.tac, iac)
        return self._complete(self.offline_decision == "TC", ARC_UNABLE_ONLINE, None)

    def _iac(self) -> ActionCodes:
        try:
            return issuer_action_codes(self._data)
        except ValueError as exc:  # "malformed tag 9F0D": names the tag, no value
            raise CardReadError(str(exc)) from exc

    def _issuer_authenticate(self, arpc: bytes) -> None:
        if not self._data.get("82", b"\x00")[0] & AIP_ISSUER_AUTH:
            return  # the card takes 91 in CDOL2 instead, if it wants it
        resp = self._card.exchange(apdu.external_authenticate(arpc))
        self.tsi.set("issuer_authentication_performed")
        if not resp.ok:
            self.tvr.set("issuer_authentication_failed")
            log.warning("issuer authentication failed (SW %04X)", resp.sw)

    def _run_scripts(self, scripts: list[bytes], failed_bit: str) -> None:
        sent = 0
        for script in scripts:
            self.tsi.set("script_processing_performed")
            commands = [n.value for n in tlv.find_all(tlv.parse(script), "86")]
            for command in commands:
                sent += 1
                if sent > MAX_SCRIPT_COMMANDS:
                    self.tvr.set(failed_bit)
                    return
                resp = self._card.exchange(apdu.script_command(command))
                if resp.sw >> 8 not in (0x90, 0x62, 0x63):
                    self.tvr.set(failed_bit)
                    log.warning("issuer script command failed (SW %04X)", resp.sw)
                    break

    # ---- plumbing ------------------------------------------------------------------

    def _timed_transmit(self, raw: bytes) -> bytes:
        self.apdus += 1
        start = time.perf_counter()
        try:
            return self._transmit(raw)
        finally:
            self.card_seconds += time.perf_counter() - start

    def _retry(self) -> str:
        return "insert" if self.contactless else "swipe"

    def _guard(self, step, *, selecting: bool = False):
        """Run a step; map every card-side failure to CardReadError."""
        try:
            return step()
        except CardReadError:
            raise
        except OSError as exc:
            raise CardReadError("card removed or reader error") from exc
        except ApduError as exc:
            raise CardReadError(str(exc), next=self._retry() if selecting else "") from exc
        except tlv.TlvError as exc:
            raise CardReadError("malformed card data") from exc


def _check_answer(kind: str, asked: str) -> None:
    """A card may answer a weaker cryptogram than asked, never a stronger one."""
    if STRENGTH[kind] > STRENGTH[asked]:
        raise CardReadError(f"card answered {kind} to a request for {asked}")


def _afl(gpo: Mapping[str, bytes]) -> list[tuple[int, int, bool]]:
    """(sfi, record, marked for ODA) from the AFL (94), validated and bounded."""
    afl = gpo.get("94", b"")
    if len(gpo.get("82", b"")) != 2 or not afl or len(afl) % 4:
        raise CardReadError("malformed AFL")
    entries = []
    for i in range(0, len(afl), 4):
        sfi, first, last, oda = afl[i] >> 3, afl[i + 1], afl[i + 2], afl[i + 3]
        if afl[i] & 0x07 or not 1 <= sfi <= 30 or not 1 <= first <= last or oda > last - first + 1:
            raise CardReadError("malformed AFL")
        entries += [(sfi, rec, rec < first + oda) for rec in range(first, last + 1)]
    if len(entries) > MAX_AFL_RECORDS:
        raise CardReadError("AFL lists too many records")
    return entries


def _service_code(track2: str) -> str:
    """The 3-digit service code after the '=' and YYMM of a track 2 (equivalent)."""
    code = track2.split("=", 1)[1][4:7]
    return code if len(code) == 3 else ""


def _issuer_data(icc_response: bytes | None) -> dict:
    """91 and the raw 71 / 72 scripts from the response's field 55 (bad TLV: nothing)."""
    if not icc_response:
        return {}
    try:
        nodes = tlv.parse(icc_response)
    except tlv.TlvError:
        log.warning("issuer data in the response is malformed; ignored")
        return {}
    found: dict = {}
    for node in nodes:
        if node.tag in ("71", "72"):
            found.setdefault(node.tag, []).append(tlv.encode(node.tag, node.value))
        elif node.tag == "91":
            found["91"] = node.value
    return found


def read_card(transmit: Transmit, params: TerminalParams | KernelParams, *, amount: int,
              currency: int, when: datetime, unpredictable: bytes, contactless: bool = False,
              sequence: int = 1) -> CardData:
    """Non-interactive read up to the first cryptogram: the highest-priority application,
    online PIN taken as entered, no offline PIN. For tools, benchmarks and tests; the
    terminal drives EmvSession itself. Raises CardReadError (also for an AAC)."""
    kp = params if isinstance(params, KernelParams) else KernelParams(terminal=params)
    session = EmvSession(transmit, kp, amount=amount, currency=currency, when=when,
                         unpredictable=unpredictable, contactless=contactless, sequence=sequence)
    session.select(session.candidates()[0])
    card = session.first_ac(online_pin=True)
    if card.cryptogram_type == "AAC":
        raise CardReadError("card declined (AAC)")
    log.info("chip read ok: %s aid=%s", mask_pan(card.pan), card.aid)
    return card

