"""EMV card emulator: answers command APDUs for a catalog TestCard, like a chip would.

Synchronous, in-memory, no I/O; one instance per inserted card (its counters start
afresh), used from one thread (the card reader worker, or vpcd's handler).
`transmit(apdu) -> data + SW1 SW2` never raises on malformed commands: it answers 6700
(wrong length), 6D00 (unknown INS), 6E00 (unknown CLA), 6A86 (bad P1/P2), 6985 (wrong
order) and so on. A card with `chip = false` has nothing to answer: the constructor raises
ValueError. Short APDUs only. TEST DATA ONLY.

Contact (EMV Book 3): PSE 1PAY.SYS.DDF01 -> directory record (one 61 entry per
application; with several, 87 = priority | 80 asks for cardholder confirmation) -> SELECT
AID -> GPO (AIP + AFL: SFI 1 records 1..N, records 1-2 signed for ODA, the certificates
from firmware.sim.emv_pki in records 3..N) -> READ RECORD -> INTERNAL AUTHENTICATE (DDA
cards) -> GET DATA 9F36 / 9F13 / 9F17 -> VERIFY (plaintext offline PIN, any card) ->
GENERATE AC 1 (AAC when asked for one; TC when asked for one and the card approves
offline, see below; else ARQC) -> EXTERNAL AUTHENTICATE (ARPC method 1, once) -> issuer
script commands -> GENERATE AC 2 (TC or AAC, see `_second_ac_approves`).
The ATC is 0x0020 at insertion and each GPO (a new transaction) adds one; the last online
ATC (9F13) is 0x001F until an EXTERNAL AUTHENTICATE succeeds. Cryptograms (ARQC, TC, AAC)
all use firmware.emv.cryptogram.compute_arqc over the DOL data the card received.

Offline (catalog `offline`): an "approve" card gives a TC asked for at GENERATE AC 1
(approved offline by the card, Y1) or at GENERATE AC 2 with 8A "Z3" (the terminal could
not go online, Y3) while its consecutive offline count is below UCOL (9F23, as PUT DATA
left it); each such TC counts one, a successful EXTERNAL AUTHENTICATE resets the count to
0. Over the limit it answers ARQC at GENERATE AC 1 and AAC at GENERATE AC 2. A "decline"
card (the default) never approves offline: ARQC to a TC request at GENERATE AC 1, AAC
after "Z3".
Issuer script commands (CLA 04 or 84: PUT DATA of LCOL / UCOL, APPLICATION UNBLOCK, PIN
CHANGE/UNBLOCK) are taken once GENERATE AC 1 gave an ARQC; their MAC is not checked.

Contactless (`contactless=True`, qPBOC/qVSDC style): PPSE 2PAY.SYS.DDF01 with the directory
in BF0C; the GPO answer carries the ARQC (over the PDOL data), the ATC, 5F34 and the CTQ
(9F6C: online PIN when the TTQ says "CVM required" and "online PIN supported"), and
GENERATE AC is refused (6985). A card with `contactless = false` answers 6A82 to PPSE
and to every SELECT on the contactless interface.

outcome "garbage": once the application is selected every answer is malformed TLV.
outcome "broken:KIND": one deterministic defect (contact and contactless alike):
"tlv_length" record 2's template length runs 16 bytes past its end, "oversized_record"
record 1 is well formed but longer than a short APDU can carry (>256 bytes),
"missing_pan" record 2 lacks tag 5A, "bad_sw" READ RECORD answers 6F00, "app_blocked"
SELECT of the application answers its FCI with 6283 and GPO then 6985.
"""
from __future__ import annotations

import calendar
import random
import secrets
from dataclasses import dataclass

from firmware.emv import cryptogram, tlv
from firmware.emv.tlv import encode as T
from firmware.sim.catalog import CardApp, TestCard
from firmware.sim.emv_pki import CardPki

__all__ = ["CardEmulator", "ATR_CONTACT", "ATR_CONTACTLESS", "CVM_LISTS", "AIPS",
           "ATC_AT_INSERTION", "LAST_ONLINE_ATC"]

PSE, PPSE = b"1PAY.SYS.DDF01", b"2PAY.SYS.DDF01"
SFI_RECORDS = 1
ODA_RECORDS = 2  # records 1-2 (identity data) are signed for offline data authentication
MAX_RECORD = 256  # bytes of READ RECORD data a short R-APDU carries
AIPS = {"dda": "7C00", "sda": "5C00", "bad_sda": "5C00", "none": "1C00"}  # by TestCard.oda
AIP_ISSUER_AUTH = 0x04  # AIP byte 1: issuer authentication supported
SDA_TAG_LIST = b"\x82"  # 9F4A: the AIP joins the static data
# CVM lists (8E) by TestCard.cvm: amount X = Y = 0, then rules (CVM code, condition).
CVM_LISTS = {
    "online_pin": "42031E031F03",  # online PIN, else signature, else no CVM (if supported)
    "offline_pin": "0100",  # plaintext PIN by ICC, always, stop if it fails
    "signature": "5E031F03",  # signature, else no CVM
    "no_cvm": "1F00",  # no CVM required, always
}
CDOL1 = bytes.fromhex("9F02069F03069F1A0295055F2A029A039C019F37049F35019F3403")
CDOL2 = bytes.fromhex("8A029F02069F03069F1A0295055F2A029A039C019F3704")
PDOL_CONTACT = bytes.fromhex("9F02065F2A02")
PDOL_CONTACTLESS = bytes.fromhex("9F66049F02069F03069F1A0295055F2A029A039C019F3704")
IAD = bytes.fromhex("07010103A0000001")  # length, DKI, CVN 01, CVR (ARQC, online), ...
IAC_DEFAULT, IAC_DENIAL, IAC_ONLINE = "D8609CA800", "0010200000", "D8689CF800"
CID_AAC, CID_TC, CID_ARQC = 0x00, 0x40, 0x80  # 9F27, and GENERATE AC P1 bits 8-7
ARC_APPROVED = (b"00", b"10", b"11")  # 8A values after which the card agrees to a TC
ARC_UNABLE_ONLINE = b"Z3"  # 8A: the terminal could not go online and asks for a TC offline
ATC_AT_INSERTION = 0x0020
LAST_ONLINE_ATC = 0x001F
LCOL, UCOL = 0x05, 0x0A  # 9F14, 9F23: consecutive offline limits (GET DATA, PUT DATA)
PIN_TRY_LIMIT = 3  # a right PIN or PIN UNBLOCK sets the counter to max(pin_tries, this)
SCRIPT_MAC = 4  # bytes of MAC at the end of an issuer script command's data
TTQ_ONLINE_PIN, TTQ_CVM_REQUIRED = 0x04, 0x40  # 9F66 byte 1 bit 3, byte 2 bit 7
CTQ_ONLINE_PIN = b"\x80\x00"  # 9F6C: online PIN required
CTQ_NONE = b"\x00\x00"

ATR_CONTACT = bytes.fromhex("3B 6E 00 00 80 31 80 66 B0 84 0C 01 6E 01 83 00 90 00")
ATR_CONTACTLESS = bytes.fromhex("3B80800101")  # PC/SC ATR for an ISO 14443-4 card

SW_OK, SW_WRONG_LENGTH, SW_WRONG_DATA = b"\x90\x00", b"\x67\x00", b"\x6A\x80"
SW_NOT_FOUND, SW_RECORD_NOT_FOUND, SW_BAD_P1P2 = b"\x6A\x82", b"\x6A\x83", b"\x6A\x86"
SW_DATA_NOT_FOUND, SW_ORDER = b"\x6A\x88", b"\x69\x85"
SW_UNKNOWN_INS, SW_UNKNOWN_CLA = b"\x6D\x00", b"\x6E\x00"
SW_NO_DIAGNOSIS, SW_APP_BLOCKED = b"\x6F\x00", b"\x62\x83"
SW_PIN_BLOCKED, SW_AUTH_FAILED = b"\x69\x83", b"\x63\x00"
OVERRUN = 16  # broken:tlv_length: bytes the record's template length claims beyond its end
OVERSIZED_FILLER = 300  # broken:oversized_record: bytes of proprietary data (tag DF7F)


def _split(apdu: bytes) -> tuple[bytes, bytes] | None:
    """(header, data) of a short APDU, or None when the lengths do not add up."""
    if len(apdu) < 4:
        return None
    if len(apdu) <= 5:
        return apdu[:4], b""
    lc = apdu[4]
    if lc == 0 or len(apdu) not in (5 + lc, 6 + lc):
        return None
    return apdu[:4], apdu[5:5 + lc]


def _plain_pin(block: bytes) -> str | None:
    """The PIN in an ISO 9564 format 2 block (2L, L = 4..12 digits, F padding), or None."""
    text = block.hex().upper()
    if len(block) != 8 or text[0] != "2":
        return None
    n = int(text[1], 16)
    pin, padding = text[2:2 + n], text[2 + n:]
    if not 4 <= n <= 12 or not pin.isdigit() or padding != "F" * len(padding):
        return None
    return pin


def _pack(objects: list[bytes]) -> list[bytes]:
    """Encoded data objects into 70 records of at most MAX_RECORD bytes, in order."""
    records, body = [], b""
    for obj in objects:
        if body and len(T("70", body + obj)) > MAX_RECORD:
            records.append(T("70", body))
            body = b""
        body += obj
    return (records + [T("70", body)]) if body else records


def _corrupt(value: bytes) -> bytes:
    """The same bytes with the middle one inverted (a signature that no longer verifies)."""
    middle = len(value) // 2
    return value[:middle] + bytes([value[middle] ^ 0xFF]) + value[middle + 1:]


@dataclass
class _Txn:
    """One transaction on the selected application, from GPO on."""

    first_ac: int | None = None  # CID that GENERATE AC 1 answered
    arqc: bytes = b""  # the ARQC of GENERATE AC 1, for EXTERNAL AUTHENTICATE
    issuer_auth: bool | None = None  # EXTERNAL AUTHENTICATE verdict, None = not done
    second_ac: int | None = None  # CID that GENERATE AC 2 answered


class CardEmulator:
    def __init__(self, card: TestCard, imk_ac: bytes, *, contactless: bool = False):
        if not card.chip:
            raise ValueError(f"test card {card.name!r} has no chip (magstripe only)")
        self.card = card
        self.contactless = contactless
        self.atr = ATR_CONTACTLESS if contactless else ATR_CONTACT
        self.atc = ATC_AT_INSERTION
        self._imk_ac = imk_ac
        self._aip = bytes.fromhex(AIPS[card.oda])
        self._pse_selected = False
        self._app: CardApp | None = None  # the selected application
        self._txn: _Txn | None = None  # the transaction since GPO on that application
        self._last_online_atc = LAST_ONLINE_ATC
        self._offline_count = 0  # consecutive TCs given offline, against UCOL
        self._pin_limit = max(card.pin_tries, PIN_TRY_LIMIT)
        self._pin_tries = card.pin_tries
        self._updatable = {"9F14": bytes([LCOL]), "9F23": bytes([UCOL])}  # by PUT DATA
        self._records: list[bytes] | None = None  # built when first needed
        self._rng = random.Random(card.pan)  # deterministic garbage per card

    def __repr__(self) -> str:
        return f"CardEmulator({self.card.name!r}, atc={self.atc})"

    def transmit(self, apdu: bytes) -> bytes:
        parts = _split(bytes(apdu))
        if parts is None:
            return SW_WRONG_LENGTH
        (cla, ins, p1, p2), data = parts[0], parts[1]
        if cla not in _CLASSES:
            return SW_UNKNOWN_CLA
        handler = _HANDLERS.get((cla, ins))
        if handler is None:
            return SW_UNKNOWN_INS
        if self.card.outcome == "garbage" and self._app is not None and ins != 0xA4:
            return self._garbage()
        return handler(self, p1, p2, data)

    # --- selection ---------------------------------------------------------------

    def _select(self, p1: int, p2: int, name: bytes) -> bytes:
        if p1 != 0x04 or p2 not in (0x00, 0x02):
            return SW_BAD_P1P2
        self._pse_selected, self._app, self._txn = False, None, None
        if p2 == 0x02 or not name or (self.contactless and not self.card.contactless):
            return SW_NOT_FOUND
        if name == (PPSE if self.contactless else PSE) and self.card.pse:
            self._pse_selected = True
            return self._pse_fci(name) + SW_OK
        app = next((a for a in self.card.applications
                    if a.aid.upper().startswith(name.hex().upper())), None)
        if app is None:
            return SW_NOT_FOUND
        if self.card.broken == "app_blocked":
            return self._app_fci(app) + SW_APP_BLOCKED
        self._app = app
        return self._app_fci(app) + SW_OK

    def _gpo(self, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0, 0):
            return SW_BAD_P1P2
        if self._app is None or self._txn is not None:
            return SW_ORDER
        pdol = tlv.parse_dol(self._pdol())
        if len(data) < 2 or data[0] != 0x83 or data[1] != len(data) - 2:
            return SW_WRONG_DATA
        if len(data) - 2 != tlv.dol_length(pdol):
            return SW_WRONG_LENGTH
        self._txn = _Txn()
        self.atc = (self.atc + 1) & 0xFFFF
        if not self.contactless:
            afl = bytes([SFI_RECORDS << 3, 1, len(self._app_records()), ODA_RECORDS])
            return T("77", T("82", self._aip) + T("94", afl)) + SW_OK
        sent = tlv.split_dol(pdol, data[2:])
        afl = bytes([SFI_RECORDS << 3, 1, ODA_RECORDS, 0])
        arqc = self._cryptogram(sent)
        return T("77", T("82", self._aip) + T("94", afl) + self._ac_fields(CID_ARQC, arqc)
                 + T("5F34", bytes.fromhex(self.card.psn)) + T("9F6C", _ctq(sent["9F66"]))
                 ) + SW_OK

    def _read_record(self, p1: int, p2: int, _data: bytes) -> bytes:
        if p2 & 0x07 != 0x04 or p1 == 0:
            return SW_BAD_P1P2
        if p2 >> 3 != SFI_RECORDS:
            return SW_NOT_FOUND
        if self._pse_selected and not self.contactless:
            records = [T("70", b"".join(self._entries()))]
        elif self._txn is not None:
            if self.card.broken == "bad_sw":
                return SW_NO_DIAGNOSIS
            records = self._app_records()
        else:
            return SW_ORDER
        if p1 > len(records):
            return SW_RECORD_NOT_FOUND
        return records[p1 - 1] + SW_OK

    def _get_data(self, p1: int, p2: int, _data: bytes) -> bytes:
        tag = f"{p1:02X}{p2:02X}"
        value = {"9F36": self.atc.to_bytes(2, "big"),
                 "9F13": self._last_online_atc.to_bytes(2, "big"),
                 "9F17": bytes([self._pin_tries]), **self._updatable}.get(tag)
        return SW_DATA_NOT_FOUND if value is None else T(tag, value) + SW_OK

    # --- authentication ----------------------------------------------------------

    def _verify(self, p1: int, p2: int, block: bytes) -> bytes:
        """VERIFY, plaintext PIN (P2 80). No data: just the tries left (ISO 7816-4)."""
        if (p1, p2) != (0x00, 0x80):
            return SW_BAD_P1P2
        if self._txn is None:
            return SW_ORDER
        if self._pin_tries == 0:
            return SW_PIN_BLOCKED
        if not block:
            return bytes([0x63, 0xC0 | self._pin_tries])
        pin = _plain_pin(block)
        if pin is None:
            return SW_WRONG_DATA
        if pin == self.card.pin:
            self._pin_tries = self._pin_limit
            return SW_OK
        self._pin_tries -= 1
        return bytes([0x63, 0xC0 | self._pin_tries])

    def _internal_authenticate(self, p1: int, p2: int, ddol_data: bytes) -> bytes:
        """DDA: the signed dynamic application data over the DDOL data and 8 fresh bytes."""
        if self.card.oda != "dda":
            return SW_UNKNOWN_INS
        if (p1, p2) != (0, 0):
            return SW_BAD_P1P2
        if self._txn is None:
            return SW_ORDER
        if not ddol_data:
            return SW_WRONG_LENGTH
        number = secrets.token_bytes(8)  # ICC dynamic number
        return T("80", self._pki().sign_dynamic(ddol_data, bytes([len(number)]) + number)) + SW_OK

    def _external_authenticate(self, p1: int, p2: int, data: bytes) -> bytes:
        """Issuer authentication: 91 = ARPC (8) + ARC (2) against the last ARQC; once."""
        if (p1, p2) != (0, 0):
            return SW_BAD_P1P2
        txn = self._txn
        if txn is None or txn.first_ac != CID_ARQC or txn.second_ac is not None \
                or txn.issuer_auth is not None:
            return SW_ORDER
        if len(data) != 10:
            return SW_WRONG_LENGTH
        arpc, arc = data[:8], data[8:]
        txn.issuer_auth = arc.isascii() and arpc == cryptogram.compute_arpc(
            self._imk_ac, self.card.pan, self.card.psn, self.atc.to_bytes(2, "big"), txn.arqc,
            arc.decode("ascii"))
        if not txn.issuer_auth:
            return SW_AUTH_FAILED
        self._last_online_atc = self.atc
        self._offline_count = 0
        return SW_OK

    # --- cryptograms -------------------------------------------------------------

    def _generate_ac(self, p1: int, p2: int, data: bytes) -> bytes:
        requested = p1 & 0xC0
        if p2 != 0 or p1 & 0x2F or requested == 0xC0:
            return SW_BAD_P1P2
        txn = self._txn
        if txn is None or self.contactless:
            return SW_ORDER
        if txn.first_ac is None:
            return self._first_ac(txn, requested, data)
        if txn.first_ac == CID_ARQC and txn.second_ac is None:
            return self._second_ac(txn, requested, data)
        return SW_ORDER

    def _first_ac(self, txn: _Txn, requested: int, data: bytes) -> bytes:
        """AAC when the terminal asks for one; TC when it asks for one and the card may
        approve offline; otherwise ARQC (go online)."""
        cdol = tlv.parse_dol(CDOL1)
        if len(data) != tlv.dol_length(cdol):
            return SW_WRONG_LENGTH
        if requested == CID_TC and self._approve_offline():
            txn.first_ac = CID_TC
        else:
            txn.first_ac = CID_AAC if requested == CID_AAC else CID_ARQC
        ac = self._cryptogram(tlv.split_dol(cdol, data))
        if txn.first_ac == CID_ARQC:
            txn.arqc = ac
        return T("77", self._ac_fields(txn.first_ac, ac)) + SW_OK

    def _second_ac(self, txn: _Txn, requested: int, data: bytes) -> bytes:
        if requested == CID_ARQC:
            return SW_BAD_P1P2  # the second GENERATE AC asks for TC or AAC only
        cdol = tlv.parse_dol(CDOL2)
        if len(data) != tlv.dol_length(cdol):
            return SW_WRONG_LENGTH
        sent = tlv.split_dol(cdol, data)
        approve = self._second_ac_approves(txn, requested, sent["8A"])
        txn.second_ac = CID_TC if approve else CID_AAC
        return T("77", self._ac_fields(txn.second_ac, self._cryptogram(sent))) + SW_OK

    def _second_ac_approves(self, txn: _Txn, requested: int, arc: bytes) -> bool:
        """TC only when the catalog, the terminal, the issuer's ARC and issuer
        authentication all agree (a card that supports it must have passed it); after
        "Z3" (no host) when the card may approve offline."""
        if arc == ARC_UNABLE_ONLINE:
            return requested == CID_TC and self._approve_offline()
        needs_issuer_auth = bool(self._aip[0] & AIP_ISSUER_AUTH)
        issuer_ok = txn.issuer_auth is True or (txn.issuer_auth is None and not needs_issuer_auth)
        return (self.card.second_ac == "approve" and requested == CID_TC
                and arc in ARC_APPROVED and issuer_ok)

    def _approve_offline(self) -> bool:
        """Card risk management for a TC asked offline: counts the TC it allows."""
        ucol = int.from_bytes(self._updatable["9F23"], "big")
        if self.card.offline != "approve" or self._offline_count >= ucol:
            return False
        self._offline_count += 1
        return True

    def _cryptogram(self, sent: dict[str, bytes]) -> bytes:
        values = {**sent, "82": self._aip, "9F36": self.atc.to_bytes(2, "big")}
        return cryptogram.compute_arqc(self._imk_ac, self.card.pan, self.card.psn, values)

    def _ac_fields(self, cid: int, ac: bytes) -> bytes:
        return (T("9F27", bytes([cid])) + T("9F36", self.atc.to_bytes(2, "big"))
                + T("9F26", ac) + T("9F10", IAD))

    # --- issuer scripts ----------------------------------------------------------

    def _script_allowed(self) -> bool:
        return self._txn is not None and self._txn.first_ac == CID_ARQC

    def _put_data(self, p1: int, p2: int, data: bytes) -> bytes:
        """PUT DATA of an updatable data object (LCOL, UCOL): value || MAC (unchecked)."""
        if not self._script_allowed():
            return SW_ORDER
        tag = f"{p1:02X}{p2:02X}"
        if tag not in self._updatable:
            return SW_DATA_NOT_FOUND
        if len(data) <= SCRIPT_MAC:
            return SW_WRONG_LENGTH
        self._updatable[tag] = data[:-SCRIPT_MAC]
        return SW_OK

    def _application_unblock(self, _p1: int, _p2: int, _data: bytes) -> bytes:
        return SW_OK if self._script_allowed() else SW_ORDER

    def _pin_unblock(self, _p1: int, _p2: int, _data: bytes) -> bytes:
        """PIN CHANGE/UNBLOCK: the try counter goes back to its limit."""
        if not self._script_allowed():
            return SW_ORDER
        self._pin_tries = self._pin_limit
        return SW_OK

    # --- data --------------------------------------------------------------------

    def _pdol(self) -> bytes:
        return PDOL_CONTACTLESS if self.contactless else PDOL_CONTACT

    def _priority(self, app: CardApp) -> bytes:
        """87: priority, with bit 8 (cardholder confirmation) on a multi-application card."""
        return bytes([app.priority | (0x80 if len(self.card.applications) > 1 else 0)])

    def _entries(self) -> list[bytes]:
        return [T("61", T("4F", bytes.fromhex(a.aid)) + T("50", a.label.encode("ascii"))
                  + T("87", self._priority(a))) for a in self.card.applications]

    def _pse_fci(self, name: bytes) -> bytes:
        if self.contactless:
            return T("6F", T("84", name) + T("A5", T("BF0C", b"".join(self._entries()))))
        prop = T("88", bytes([SFI_RECORDS])) + T("5F2D", b"zhen")
        return T("6F", T("84", name) + T("A5", prop))

    def _app_fci(self, app: CardApp) -> bytes:
        prop = (T("50", app.label.encode("ascii")) + T("87", self._priority(app))
                + T("9F38", self._pdol()) + T("5F2D", b"zhen"))
        return T("6F", T("84", bytes.fromhex(app.aid)) + T("A5", prop))

    def _pki(self) -> CardPki:
        return CardPki(self.card.pan, self.card.expiry, rid=self.card.aid[:10])

    def _app_records(self) -> list[bytes]:
        """Records 1-2 (identity, signed) then the ODA certificates; built once per card."""
        if self._records is None:
            body1, body2 = self._identity_bodies()
            # Static data to authenticate (Book 2): the values inside the signed 70
            # templates (SFI 1..10), then the AIP because 9F4A names it.
            certificates = self._oda_objects(body1 + body2 + self._aip)
            self._records = _with_defect(self.card.broken, body1, body2) + _pack(certificates)
        return self._records

    def _identity_bodies(self) -> tuple[bytes, bytes]:
        card = self.card
        pan_hex = card.pan + ("F" if len(card.pan) % 2 else "")
        yy, mm = int(card.expiry[:2]), int(card.expiry[2:])
        last_day = calendar.monthrange(2000 + yy, mm)[1]
        track2 = f"{card.pan}D{card.expiry}{card.service_code}0000000000000"
        track2 += "F" * (len(track2) % 2)
        name = b"TEST/" + card.name.upper().encode("ascii")[:21]
        body1 = T("57", bytes.fromhex(track2)) + T("5F20", name)
        pan = b"" if card.broken == "missing_pan" else T("5A", bytes.fromhex(pan_hex))
        body2 = (pan
                 + T("5F24", bytes.fromhex(f"{card.expiry}{last_day:02d}"))
                 + T("5F25", bytes.fromhex("200101")) + T("5F34", bytes.fromhex(card.psn))
                 + T("5F28", bytes.fromhex("0156")) + T("8C", CDOL1) + T("8D", CDOL2)
                 + T("8E", bytes(8) + bytes.fromhex(CVM_LISTS[card.cvm]))
                 + T("9F07", bytes.fromhex("FF00")) + T("9F08", bytes.fromhex("0030"))
                 + T("9F0D", bytes.fromhex(IAC_DEFAULT)) + T("9F0E", bytes.fromhex(IAC_DENIAL))
                 + T("9F0F", bytes.fromhex(IAC_ONLINE)) + T("9F42", bytes.fromhex("0156"))
                 + T("9F14", bytes([LCOL])) + T("9F23", bytes([UCOL]))
                 + T("9F4A", SDA_TAG_LIST))
        return body1, body2

    def _oda_objects(self, static: bytes) -> list[bytes]:
        """The encoded certificates and keys for the card's kind of ODA. Nothing for "none",
        nor for a PAN the test PKI cannot certify (not 12..19 digits: a hostile test card
        that the terminal must refuse, not a reason for the card to fail)."""
        oda = self.card.oda
        if oda == "none":
            return []
        try:
            pki = self._pki()
        except ValueError:
            return []
        tags = {**pki.issuer_tags(), **(pki.dda_tags(static) if oda == "dda"
                                        else pki.sda_tags(static))}
        if oda == "bad_sda":
            tags["93"] = _corrupt(tags["93"])
        return [T(tag, value) for tag, value in tags.items()]

    def _garbage(self) -> bytes:
        """Malformed TLV (a template whose length overruns) or random bytes, then 9000."""
        if self._rng.random() < 0.5:
            return bytes.fromhex("7781FF8202") + self._rng.randbytes(6) + SW_OK
        return self._rng.randbytes(self._rng.randint(1, 40)) + SW_OK


def _ctq(ttq: bytes) -> bytes:
    """9F6C: online PIN when the reader requires a CVM and supports online PIN."""
    if ttq[1] & TTQ_CVM_REQUIRED and ttq[0] & TTQ_ONLINE_PIN:
        return CTQ_ONLINE_PIN
    return CTQ_NONE


def _with_defect(broken: str | None, body1: bytes, body2: bytes) -> list[bytes]:
    """The two identity records (70 templates), with a `broken:` card's defect."""
    if broken == "oversized_record":
        body1 += T("DF7F", bytes(OVERSIZED_FILLER))
    record2 = T("70", body2)
    if broken == "tlv_length":  # encoded as if OVERRUN bytes more followed, then cut
        record2 = T("70", body2 + bytes(OVERRUN))[:-OVERRUN]
    return [T("70", body1), record2]


_HANDLERS = {
    (0x00, 0xA4): CardEmulator._select,
    (0x80, 0xA8): CardEmulator._gpo,
    (0x00, 0xB2): CardEmulator._read_record,
    (0x80, 0xCA): CardEmulator._get_data,
    (0x00, 0x20): CardEmulator._verify,
    (0x00, 0x88): CardEmulator._internal_authenticate,
    (0x00, 0x82): CardEmulator._external_authenticate,
    (0x80, 0xAE): CardEmulator._generate_ac,
    (0x04, 0xDA): CardEmulator._put_data,  # issuer script commands: secure messaging CLA
    (0x84, 0xDA): CardEmulator._put_data,
    (0x84, 0x18): CardEmulator._application_unblock,
    (0x84, 0x24): CardEmulator._pin_unblock,
}
_CLASSES = frozenset(cla for cla, _ in _HANDLERS)
