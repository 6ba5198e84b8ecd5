"""atheris (libFuzzer) harness: the EMV BER-TLV and DOL parsers, coverage-guided.

Run: .venv/bin/python bench/fuzz/fuzz_tlv.py -max_total_time=300 [corpus_dir]
(docs/fuzzing.md). A crash is any exception but TlvError, or a parse that does not
re-encode to the same structure.
"""
from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from firmware.emv import tlv
    from firmware.emv.tlv import TlvError


def shape(nodes) -> list:
    return [(n.tag, shape(n.children)) if n.children is not None else (n.tag, n.value)
            for n in nodes]


def test_one_input(data: bytes) -> None:
    try:
        nodes = tlv.parse(data)
    except TlvError:
        pass
    else:
        assert shape(tlv.parse(tlv.encode_nodes(nodes))) == shape(nodes)
    try:
        dol = tlv.parse_dol(data)
    except TlvError:
        return
    assert len(tlv.build_dol(dol, {})) == tlv.dol_length(dol)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
