"""Benchmark: one EMV card session on the emulator, contact and contactless.

For each interface it runs N complete kernel sessions against the catalog's "approve" card
(contact: selection, GPO, records, DDA, restrictions, risk management, CVM, GENERATE AC 1,
EXTERNAL AUTHENTICATE and GENERATE AC 2 with the issuer's ARPC; contactless: PPSE, GPO with
the cryptogram, records) and prints the APDU count, the median and spread of the whole
session, the time spent inside `transmit` (the card's share: here the in-process emulator) and the rest (the terminal's own share: TLV, DOLs, ODA checks,
decisions). The floor is the same APDUs replayed straight into the emulator (no kernel).

    .venv/bin/python bench/card_session.py [N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.config import load_config  # noqa: E402
from firmware.emv.kernel import EmvSession, kernel_params  # noqa: E402
from firmware.emv.oda import load_capks  # noqa: E402
from firmware.sim.acquirer import issuer_icc_data  # noqa: E402
from firmware.sim.card_emulator import CardEmulator  # noqa: E402
from firmware.sim.catalog import load_catalog  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
AMOUNT = 12_50  # under the contactless CVM limit: a quick tap without PIN


def session_once(transmit, params, catalog, *, contactless: bool, record=None):
    """One full session; returns (seconds, card seconds, apdus)."""
    sink = transmit
    if record is not None:
        def sink(raw, _t=transmit):
            answer = _t(raw)
            record.append(raw)
            return answer
    start = time.perf_counter()
    s = EmvSession(sink, params, amount=AMOUNT, currency=156, when=datetime(2026, 11, 21, 12),
                   unpredictable=os.urandom(4), contactless=contactless)
    s.select(s.candidates()[0])
    card = s.first_ac(online_pin=False)
    if not contactless:
        req = {"2": card.pan, "23": "0" + (card.pan_seq or "00"), "55": card.icc_data}
        card = s.complete(approved=True, arc="00",
                          icc_response=issuer_icc_data(req, catalog.imk_ac, "00"))
        assert card.cryptogram_type == "TC", card.cryptogram_type
    return time.perf_counter() - start, s.card_seconds, s.apdus


def replay_once(emulator_factory, apdus) -> float:
    card = emulator_factory()
    start = time.perf_counter()
    for raw in apdus:
        card.transmit(raw)
    return time.perf_counter() - start


def run(n: int, contactless: bool, params, catalog, transmit_factory) -> dict:
    totals, cards, counts = [], [], set()
    for _ in range(n):
        total, card_s, apdus = session_once(transmit_factory(), params, catalog,
                                            contactless=contactless)
        totals.append(total)
        cards.append(card_s)
        counts.add(apdus)
    return {"total": totals, "card": cards, "apdus": counts}


def ms(values) -> str:
    q = statistics.quantiles(values, n=10)
    return f"{statistics.median(values) * 1000:7.2f} ({q[0] * 1000:.2f}-{q[-1] * 1000:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=200)
    args = ap.parse_args()
    cfg = load_config(REPO / "config" / "sim.toml")
    catalog = load_catalog()
    params = kernel_params(cfg, load_capks(cfg.emv.capk_file))
    card = catalog.cards["approve"]
    print(f"KPOS card session benchmark: {args.n} sessions per interface, card 'approve', "
          f"amount {AMOUNT} minor units, in-process emulator")
    print(f"{'interface':12} {'APDUs':>5}  {'session ms median (p10-p90)':>30}  "
          f"{'card share ms':>24}  {'terminal ms':>8}  {'terminal %':>10}  {'floor ms':>8}")
    for contactless in (False, True):
        def factory(cl=contactless):
            return CardEmulator(card, catalog.imk_ac, contactless=cl).transmit
        run(5, contactless, params, catalog, factory)  # warm-up: keys, imports, caches
        result = run(args.n, contactless, params, catalog, factory)
        apdus: list[bytes] = []
        session_once(factory(), params, catalog, contactless=contactless, record=apdus)
        floor = [replay_once(lambda cl=contactless: CardEmulator(card, catalog.imk_ac, contactless=cl),
                             apdus) for _ in range(args.n)]
        terminal = [t - c for t, c in zip(result["total"], result["card"])]
        share = statistics.median(terminal) / statistics.median(result["total"]) * 100
        print(f"{'contactless' if contactless else 'contact':12} {'/'.join(map(str, sorted(result['apdus']))):>5}  "
              f"{ms(result['total']):>30}  {ms(result['card']):>24}  "
              f"{statistics.median(terminal) * 1000:8.2f}  {share:9.1f}%  "
              f"{statistics.median(floor) * 1000:8.2f}")


if __name__ == "__main__":
    main()
