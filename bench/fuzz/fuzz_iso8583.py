"""atheris (libFuzzer) harness: ISO 8583 response decoding and matching, coverage-guided.

Run: .venv/bin/python bench/fuzz/fuzz_iso8583.py -max_total_time=300 [corpus_dir]
(docs/fuzzing.md). A crash is any exception but MessageError from decode, any exception
from describe / match_response, or a matched approval that is not a genuine one.
"""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from firmware.acquirer.codes import APPROVED_CODES
    from firmware.acquirer.messages import (
        MessageError, TerminalIds, decode, describe, match_response, sale_request,
    )
    from firmware.emv.card import CardData

PAN = "6226090000000014"
REQUEST = sale_request(TerminalIds("10000001", "123456789012345"), stan=123, batch=1,
                       amount=1250, currency=156,
                       card=CardData(pan=PAN, expiry="3012", pan_seq="01",
                                     track2=f"{PAN}=3012201", aid="A000000333010101",
                                     app_label="UnionPay Debit", icc_data=b""),
                       pin_block=None, now=datetime(2026, 5, 1, 14, 7, 9))


def test_one_input(data: bytes) -> None:
    try:
        doc = decode(data)
    except MessageError:
        return
    describe(doc)
    if match_response(REQUEST, doc) is None and doc.get("39") in APPROVED_CODES:
        assert doc["t"] == "0210" and all(doc[k] == REQUEST[k] for k in ("3", "4", "11", "41", "42"))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
