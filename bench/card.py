"""Benchmark 2: one EMV card session on the emulator, contact and contactless.

For each interface, complete kernel sessions against the catalog's "approve" card (contact:
selection, GPO, records, DDA, restrictions, risk management, CVM, GENERATE AC 1, EXTERNAL
AUTHENTICATE and GENERATE AC 2 with the issuer's ARPC; contactless: PPSE, GPO with the
cryptogram, records). Rows: the whole session (the card's share inside `transmit`, here
the in-process emulator, is in the note) with the APDU count; floor: the same APDUs replayed
straight into a fresh emulator (no kernel). No target: the issue asks for the figures.
Blocking, on the caller's thread.
"""
from __future__ import annotations

import os
import statistics
import time
from datetime import datetime

from bench.common import CARD, SIM_TOML, Result, Size, ms
from firmware.config import load_config
from firmware.emv.kernel import EmvSession, kernel_params
from firmware.emv.oda import load_capks
from firmware.sim.acquirer import issuer_icc_data
from firmware.sim.card_emulator import CardEmulator
from firmware.sim.catalog import load_catalog

__all__ = ["run"]

AMOUNT = 12_50  # under the contactless CVM limit: a quick tap without PIN
WARM_UP = 5


def session_once(transmit, params, catalog, *, contactless: bool, record=None):
    """One full session; returns (seconds, card seconds, apdus)."""
    def sink(raw: bytes) -> bytes:
        if record is not None:
            record.append(raw)
        return transmit(raw)
    start = time.perf_counter()
    s = EmvSession(sink, params, amount=AMOUNT, currency=156, when=datetime(2026, 11, 21, 12),
                   unpredictable=os.urandom(4), contactless=contactless)
    s.select(s.candidates()[0])
    card = s.first_ac(online_pin=False)
    if not contactless:
        req = {"2": card.pan, "23": "0" + (card.pan_seq or "00"), "55": card.icc_data}
        card = s.complete(approved=True, arc="00",
                          icc_response=issuer_icc_data(req, catalog.imk_ac, "00"))
        if card.cryptogram_type != "TC":
            raise RuntimeError(f"contact session ended with {card.cryptogram_type}, not TC")
    return time.perf_counter() - start, s.card_seconds, s.apdus


def _replay(make_card, apdus) -> float:
    card = make_card()
    start = time.perf_counter()
    for raw in apdus:
        card.transmit(raw)
    return time.perf_counter() - start


def run(size: Size) -> list[Result]:
    n = size.pick(10, 200, 1000)
    cfg = load_config(SIM_TOML)
    catalog = load_catalog()
    params = kernel_params(cfg, load_capks(cfg.emv.capk_file))
    rows = []
    for contactless in (False, True):
        def make_card(cl=contactless):
            return CardEmulator(catalog.cards[CARD], catalog.imk_ac, contactless=cl)
        runs = [session_once(make_card().transmit, params, catalog, contactless=contactless)
                for _ in range(WARM_UP + n)][WARM_UP:]
        apdus: list[bytes] = []
        session_once(make_card().transmit, params, catalog, contactless=contactless, record=apdus)
        floor = [_replay(make_card, apdus) for _ in range(n)]
        total = ms([r[0] for r in runs])
        card_share = statistics.median(ms([r[1] for r in runs]))
        counts = "/".join(str(c) for c in sorted({r[2] for r in runs}))
        name = "contactless" if contactless else "contact"
        rows.append(Result(f"card session, {name} ({counts} APDUs)", "ms", total,
                           floor=statistics.median(ms(floor)),
                           note=f"card's share {card_share:.2f} ms; floor: APDUs replayed"))
    return rows
