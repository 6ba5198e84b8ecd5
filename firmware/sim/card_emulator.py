"""EMV card emulator: answers command APDUs for a catalog TestCard, like a chip would.

Synchronous, in-memory, no I/O; one instance per inserted card, used from one thread
(the card reader worker, or vpcd's handler later). `transmit(apdu) -> data + SW1 SW2`
never raises on malformed commands: it answers 6700 (wrong length), 6D00 (unknown INS),
6E00 (unknown CLA), 6A86 (bad P1/P2), 6985 (wrong order) and so on. TEST DATA ONLY.

Contact cards: PSE 1PAY.SYS.DDF01 -> directory record -> SELECT AID -> GPO (format 2:
AIP + AFL) -> records -> GENERATE AC (ARQC over CDOL1 data, format 2). Contactless
(`contactless=True`): PPSE 2PAY.SYS.DDF01 with the directory in BF0C, and the ARQC comes
back in the GPO response (qPBOC/qVSDC style), computed over the PDOL data.
outcome "garbage": once the application is selected every answer is malformed TLV.
outcome "broken:KIND": one deterministic defect in the application records (contact and
contactless alike): "tlv_length" record 2's template length runs 16 bytes past its end,
"oversized_record" record 1 is well formed but longer than a short APDU can carry (>256
bytes), "missing_pan" record 2 lacks tag 5A, "bad_sw" READ RECORD answers 6F00.
"""
from __future__ import annotations

import calendar
import random

from firmware.emv import cryptogram, tlv
from firmware.emv.tlv import encode as T
from firmware.sim.catalog import TestCard

__all__ = ["CardEmulator"]

PSE, PPSE = b"1PAY.SYS.DDF01", b"2PAY.SYS.DDF01"
SFI_RECORDS = 1
AIP = bytes.fromhex("7C00")  # SDA, DDA, cardholder verification, TRM, issuer auth
AFL = bytes([SFI_RECORDS << 3, 1, 2, 0])  # SFI 1, records 1-2
CDOL1 = bytes.fromhex("9F02069F03069F1A0295055F2A029A039C019F37049F35019F3403")
CDOL2 = bytes.fromhex("8A029F02069F03069F1A0295055F2A029A039C019F3704")
PDOL_CONTACT = bytes.fromhex("9F02065F2A02")
PDOL_CONTACTLESS = bytes.fromhex("9F66049F02069F03069F1A0295055F2A029A039C019F3704")
IAD = bytes.fromhex("07010103A0000001")  # length, DKI, CVN 01, CVR (ARQC, online), ...
CID_ARQC = b"\x80"
SERVICE_CODE = "220"  # international, IC card, PIN required

ATR_CONTACT = bytes.fromhex("3B 6E 00 00 80 31 80 66 B0 84 0C 01 6E 01 83 00 90 00")
ATR_CONTACTLESS = bytes.fromhex("3B80800101")  # PC/SC ATR for an ISO 14443-4 card

SW_OK, SW_WRONG_LENGTH, SW_WRONG_DATA = b"\x90\x00", b"\x67\x00", b"\x6A\x80"
SW_NOT_FOUND, SW_RECORD_NOT_FOUND, SW_BAD_P1P2 = b"\x6A\x82", b"\x6A\x83", b"\x6A\x86"
SW_DATA_NOT_FOUND, SW_ORDER = b"\x6A\x88", b"\x69\x85"
SW_UNKNOWN_INS, SW_UNKNOWN_CLA = b"\x6D\x00", b"\x6E\x00"
SW_NO_DIAGNOSIS = b"\x6F\x00"
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


class CardEmulator:
    def __init__(self, card: TestCard, imk_ac: bytes, *, contactless: bool = False):
        self.card = card
        self.contactless = contactless
        self.atr = ATR_CONTACTLESS if contactless else ATR_CONTACT
        self.atc = 0
        self._imk_ac = imk_ac
        self._selected: str | None = None  # None, "PSE" or "APP"
        self._gpo_data: bytes | None = None  # what the terminal sent, once GPO succeeded
        self._generated = False
        self._rng = random.Random(card.pan)  # deterministic garbage per card

    def __repr__(self) -> str:
        return f"CardEmulator({self.card.name!r}, atc={self.atc})"

    def transmit(self, apdu: bytes) -> bytes:
        parts = _split(bytes(apdu))
        if parts is None:
            return SW_WRONG_LENGTH
        (cla, ins, p1, p2), data = parts[0], parts[1]
        if cla not in (0x00, 0x80):
            return SW_UNKNOWN_CLA
        handler = _HANDLERS.get((cla, ins))
        if handler is None:
            return SW_UNKNOWN_INS
        if self.card.outcome == "garbage" and self._selected == "APP" and ins != 0xA4:
            return self._garbage()
        return handler(self, p1, p2, data)

    # --- commands --------------------------------------------------------------

    def _select(self, p1: int, p2: int, name: bytes) -> bytes:
        if p1 != 0x04 or p2 not in (0x00, 0x02):
            return SW_BAD_P1P2
        self._selected, self._gpo_data, self._generated = None, None, False
        if p2 == 0x02 or not name:
            return SW_NOT_FOUND
        if name == (PPSE if self.contactless else PSE) and self.card.pse:
            self._selected = "PSE"
            return self._pse_fci(name) + SW_OK
        if self.card.aid.upper().startswith(name.hex().upper()):
            self._selected = "APP"
            return self._app_fci() + SW_OK
        return SW_NOT_FOUND

    def _gpo(self, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0, 0):
            return SW_BAD_P1P2
        if self._selected != "APP" or self._gpo_data is not None:
            return SW_ORDER
        pdol = tlv.parse_dol(self._pdol())
        if len(data) < 2 or data[0] != 0x83 or data[1] != len(data) - 2:
            return SW_WRONG_DATA
        if len(data) - 2 != tlv.dol_length(pdol):
            return SW_WRONG_LENGTH
        self._gpo_data = data[2:]
        body = T("82", AIP) + T("94", AFL)
        if self.contactless:
            body += self._cryptogram(tlv.split_dol(pdol, self._gpo_data))
        return T("77", body) + SW_OK

    def _read_record(self, p1: int, p2: int, _data: bytes) -> bytes:
        if p2 & 0x07 != 0x04 or p1 == 0:
            return SW_BAD_P1P2
        if p2 >> 3 != SFI_RECORDS:
            return SW_NOT_FOUND
        if self._selected == "PSE" and not self.contactless:
            records = [self._directory_record()]
        elif self._selected == "APP" and self._gpo_data is not None:
            if self.card.broken == "bad_sw":
                return SW_NO_DIAGNOSIS
            records = self._app_records()
        else:
            return SW_ORDER
        if p1 > len(records):
            return SW_RECORD_NOT_FOUND
        return records[p1 - 1] + SW_OK

    def _generate_ac(self, p1: int, p2: int, data: bytes) -> bytes:
        if p2 != 0 or p1 & 0x2F:
            return SW_BAD_P1P2
        if self._gpo_data is None or self._generated:
            return SW_ORDER
        cdol = tlv.parse_dol(CDOL1)
        if len(data) != tlv.dol_length(cdol):
            return SW_WRONG_LENGTH
        self._generated = True
        if p1 & 0xC0 == 0x00:  # terminal asked for an AAC: decline
            return T("77", self._ac_fields(b"\x00", bytes(8))) + SW_OK
        return T("77", self._cryptogram(tlv.split_dol(cdol, data))) + SW_OK

    def _get_data(self, p1: int, p2: int, _data: bytes) -> bytes:
        tag = f"{p1:02X}{p2:02X}"
        if tag == "9F36":
            return T(tag, self.atc.to_bytes(2, "big")) + SW_OK
        if tag == "9F17":
            return T(tag, b"\x03") + SW_OK
        return SW_DATA_NOT_FOUND

    # --- data ------------------------------------------------------------------

    def _pdol(self) -> bytes:
        return PDOL_CONTACTLESS if self.contactless else PDOL_CONTACT

    def _entry(self) -> bytes:
        return T("61", T("4F", bytes.fromhex(self.card.aid))
                 + T("50", self.card.label.encode("ascii")) + T("87", b"\x01"))

    def _pse_fci(self, name: bytes) -> bytes:
        if self.contactless:
            return T("6F", T("84", name) + T("A5", T("BF0C", self._entry())))
        prop = T("88", bytes([SFI_RECORDS])) + T("5F2D", b"zhen")
        return T("6F", T("84", name) + T("A5", prop))

    def _directory_record(self) -> bytes:
        return T("70", self._entry())

    def _app_fci(self) -> bytes:
        prop = (T("50", self.card.label.encode("ascii")) + T("87", b"\x01")
                + T("9F38", self._pdol()) + T("5F2D", b"zhen"))
        return T("6F", T("84", bytes.fromhex(self.card.aid)) + T("A5", prop))

    def _app_records(self) -> list[bytes]:
        pan_hex = self.card.pan + ("F" if len(self.card.pan) % 2 else "")
        yy, mm = int(self.card.expiry[:2]), int(self.card.expiry[2:])
        last_day = calendar.monthrange(2000 + yy, mm)[1]
        track2 = f"{self.card.pan}D{self.card.expiry}{SERVICE_CODE}0000000000000"
        track2 += "F" * (len(track2) % 2)
        name = b"TEST/" + self.card.name.upper().encode("ascii")[:21]
        record1 = T("57", bytes.fromhex(track2)) + T("5F20", name)
        pan = b"" if self.card.broken == "missing_pan" else T("5A", bytes.fromhex(pan_hex))
        record2 = (pan
                   + T("5F24", bytes.fromhex(f"{self.card.expiry}{last_day:02d}"))
                   + T("5F25", bytes.fromhex("200101")) + T("5F34", bytes.fromhex(self.card.psn))
                   + T("5F28", bytes.fromhex("0156")) + T("8C", CDOL1) + T("8D", CDOL2)
                   + T("9F07", bytes.fromhex("FF00")) + T("9F08", bytes.fromhex("0030"))
                   + T("9F0D", bytes.fromhex("D8609CA800")) + T("9F0E", bytes.fromhex("0010000000"))
                   + T("9F0F", bytes.fromhex("D8689CF800")))
        return _with_defect(self.card.broken, record1, record2)

    def _cryptogram(self, sent: dict[str, bytes]) -> bytes:
        self.atc = (self.atc + 1) & 0xFFFF
        values = {**sent, "82": AIP, "9F36": self.atc.to_bytes(2, "big")}
        arqc = cryptogram.compute_arqc(self._imk_ac, self.card.pan, self.card.psn, values)
        return self._ac_fields(CID_ARQC, arqc)

    def _ac_fields(self, cid: bytes, ac: bytes) -> bytes:
        return (T("9F27", cid) + T("9F36", self.atc.to_bytes(2, "big")) + T("9F26", ac)
                + T("9F10", IAD))

    def _garbage(self) -> bytes:
        """Malformed TLV (a template whose length overruns) or random bytes, then 9000."""
        if self._rng.random() < 0.5:
            return bytes.fromhex("7781FF8202") + self._rng.randbytes(6) + SW_OK
        return self._rng.randbytes(self._rng.randint(1, 40)) + SW_OK


def _with_defect(broken: str | None, body1: bytes, body2: bytes) -> list[bytes]:
    """The two application records (70 templates), with a `broken:` card's defect."""
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
    (0x80, 0xAE): CardEmulator._generate_ac,
    (0x80, 0xCA): CardEmulator._get_data,
}
