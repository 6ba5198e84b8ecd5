"""Example budgets of the fuzz tests: a fixed, derandomized CI budget, and a long run.

`fuzz(n)` is the hypothesis settings of one fuzz test: `n` examples, the same ones every
run (derandomized, no example database), no deadline (timing belongs to pytest-timeout).
With KPOS_FUZZ=long in the environment every test gets KPOS_FUZZ_EXAMPLES examples
(default 20000; `e2e` tests a tenth of that) drawn afresh each run: docs/fuzzing.md.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["LONG", "fuzz"]

LONG = os.environ.get("KPOS_FUZZ") == "long"
LONG_EXAMPLES = int(os.environ.get("KPOS_FUZZ_EXAMPLES", "20000"))


def fuzz(examples: int, *, e2e: bool = False) -> settings:
    if LONG:
        examples = max(examples, LONG_EXAMPLES // 10 if e2e else LONG_EXAMPLES)
    return settings(max_examples=examples, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
