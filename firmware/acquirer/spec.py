"""ISO 8583:1987 field spec of the KPOS acquirer link (ASCII dialect), as data.

Pure data, any thread, never mutated after import. `SPEC` is a deep copy of
pyiso8583's `iso8583.specs.default` (ASCII MTI and lengths, binary bitmap, raw
binary fields 52/55/64) with only the changes listed in `_OVERRIDES`. `SPECS` maps the
terminal's [security] pin_format to its spec: 0 is `SPEC` (field 52 b8, a format 0 block);
4 is the same with field 52 b16 fixed (a format 4 AES block), for both directions of an
AES terminal (docs/acquirer-protocol.md §4). Framing
(the 2-byte length) is not part of the spec: see messages.frame/read_frame. A
second dialect (UnionPay BCD with TPDU and header) is another spec plus framing.
The field layout per message is documented in docs/acquirer-protocol.md.
"""
from __future__ import annotations

import copy

from iso8583.specs import default as _pyiso_default

__all__ = ["SPEC", "SPECS", "PIN_BLOCK_LEN", "NUMERIC_FIELDS", "BINARY_FIELDS", "SENSITIVE_FIELDS"]

# Field -> keys replaced in the pyiso8583 default field spec.
_OVERRIDES: dict[str, dict] = {
    "55": {"max_len": 999, "desc": "ICC data (EMV TLV)"},
    "60": {"desc": "Reserved Private: 60.1 msg type (2), 60.2 batch (6), 60.3 mgmt code (3)"},
    "61": {"desc": "Original data: batch (6) + STAN (6) [+ date MMDD (4)]"},
    "62": {"desc": "Working keys: hex PIK+KCV+MAK+KCV (0810)"},
    "63": {"desc": "Operator code"},
}


def _build_spec() -> dict:
    spec = copy.deepcopy(_pyiso_default)
    for field, changes in _OVERRIDES.items():
        spec[field].update(changes)
    return spec


SPEC: dict = _build_spec()

# [security] pin_format -> length in bytes of field 52 (ISO 9564 format 0: TDES; 4: AES).
PIN_BLOCK_LEN: dict[int, int] = {0: 8, 4: 16}


def _with_pin_block(length: int) -> dict:
    spec = copy.deepcopy(SPEC)
    spec["52"].update(max_len=length, desc=f"PIN data ({length}-byte ISO 9564 PIN block)")
    return spec


SPECS: dict[int, dict] = {fmt: _with_pin_block(n) if n != 8 else SPEC
                          for fmt, n in PIN_BLOCK_LEN.items()}

# Fields whose ASCII content must be decimal digits (ISO 8583:1987 type n, plus our
# private 60 and 61 which UnionPay defines as n). Checked on encode and decode.
NUMERIC_FIELDS: frozenset[str] = frozenset(
    [str(n) for n in range(2, 28)] + ["32", "33", "49", "50", "51", "60", "61"]
)

# Fields carried as raw bytes (data_enc "b"), apart from the bitmaps.
BINARY_FIELDS: frozenset[str] = frozenset(
    k for k, v in SPEC.items() if k.isdigit() and k not in ("1", "65") and v["data_enc"] == "b"
)

# Card data that must never reach a log line (DESIGN §9): PAN, track 2/3, PIN block, ICC,
# a wallet payment code (57) and a repayment's paid card (103).
SENSITIVE_FIELDS: frozenset[str] = frozenset({"2", "35", "36", "45", "52", "55", "57", "103"})
