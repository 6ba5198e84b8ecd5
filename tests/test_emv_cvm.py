"""Cardholder verification (firmware.emv.cvm): conditions, methods, failures, CVM Results."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.emv.cvm import (DONE, METHODS, CvmContext, CvmList, CvmProcess, CvmRule,
                              parse_cvm_list)
from firmware.emv.tvr import Tsi, Tvr

AIP_CVM = bytes.fromhex("1800")  # cardholder verification and terminal risk management


def cvm_list(rules: str, x: int = 0, y: int = 0) -> CvmList:
    return parse_cvm_list(x.to_bytes(4, "big") + y.to_bytes(4, "big") + bytes.fromhex(rules))


def start(rules: str | None, *, x=0, y=0, amount=1000, same_currency=True, txn_type="goods",
          unattended=False, caps="E0E8C0", aip=AIP_CVM, pin_pad=True):
    tvr, tsi = Tvr(), Tsi()
    ctx = CvmContext(amount, same_currency, txn_type, unattended, bytes.fromhex(caps))
    parsed = None if rules is None else cvm_list(rules, x, y)
    return CvmProcess(parsed, ctx, tvr, tsi, aip=aip, pin_pad=pin_pad), tvr, tsi


def drive(process: CvmProcess, outcomes: list) -> list[str]:
    """Answer each method in turn: True = succeeded, False = failed, str = failed(bit)."""
    seen = []
    for outcome in outcomes:
        seen.append(process.current())
        if outcome is True:
            process.succeeded()
        else:
            process.failed(outcome or None)
    assert process.current() == DONE
    return seen


# ---- parsing ---------------------------------------------------------------------------

def test_parse_cvm_list():
    parsed = cvm_list("41031E00", x=5000, y=0x01020304)
    assert (parsed.x, parsed.y) == (5000, 0x01020304)
    assert parsed.rules == (CvmRule(0x01, True, 0x03, b"\x41\x03"),
                            CvmRule(0x1E, False, 0x00, b"\x1e\x00"))


def test_parse_keeps_rfu_bit_out_of_the_code():
    assert parse_cvm_list(bytes(8) + b"\xdf\x00").rules[0].code == 0x1F


@pytest.mark.parametrize("length", [0, 7, 9, 11])
def test_parse_rejects_short_or_odd_lists(length):
    with pytest.raises(ValueError, match="^malformed tag 8E$"):
        parse_cvm_list(bytes(length))


# ---- no list, no support ---------------------------------------------------------------

def test_card_without_cardholder_verification():
    process, tvr, tsi = start("0100", aip=bytes.fromhex("0800"))
    assert process.current() == DONE
    assert process.results == bytes.fromhex("3F0000") and process.performed == "none"
    assert tvr.names() == [] and tsi.names() == []


@pytest.mark.parametrize("rules", [None, ""])  # absent, or a list with no rules
def test_missing_cvm_list(rules):
    process, tvr, tsi = start(rules)
    assert process.current() == DONE
    assert process.results == bytes.fromhex("3F0000") and process.performed == "none"
    assert tvr.names() == ["icc_data_missing"]
    assert tsi.names() == []  # Book 3 10.5: verification ends without the TSI bit


# ---- conditions ------------------------------------------------------------------------
# Rule 1 is "no CVM" under the condition; rule 2 "signature, always". The first method
# offered says whether the condition was satisfied.

CONDITIONS = [
    ("00", {}, True),
    ("01", dict(txn_type="cash", unattended=True), True),
    ("01", dict(txn_type="cash"), False),
    ("01", dict(unattended=True), False),
    ("02", {}, True),
    ("02", dict(txn_type="services", unattended=True), True),
    ("02", dict(txn_type="cash"), False),
    ("02", dict(txn_type="cash", unattended=True), False),
    ("02", dict(txn_type="cashback"), False),
    ("03", {}, True),
    ("03", dict(caps="E0E0C0"), False),  # the terminal has no 'no CVM'
    ("04", dict(txn_type="cash"), True),
    ("04", dict(txn_type="cash", unattended=True), False),
    ("04", {}, False),
    ("05", dict(txn_type="cashback"), True),
    ("05", {}, False),
    ("06", dict(amount=999, x=1000), True),
    ("06", dict(amount=1000, x=1000), False),
    ("06", dict(amount=999, x=1000, same_currency=False), False),
    ("07", dict(amount=1001, x=1000), True),
    ("07", dict(amount=1000, x=1000), False),
    ("07", dict(amount=1001, x=1000, same_currency=False), False),
    ("08", dict(amount=999, y=1000), True),
    ("08", dict(amount=999, x=5000, y=999), False),
    ("08", dict(amount=999, y=1000, same_currency=False), False),
    ("09", dict(amount=1001, y=1000), True),
    ("09", dict(amount=1001, x=0, y=1001), False),
    ("09", dict(amount=1001, y=1000, same_currency=False), False),
    ("0A", {}, False),  # RFU: not understood
    ("80", {}, False),  # payment-system specific: not understood here
]


@pytest.mark.parametrize("condition, ctx, satisfied", CONDITIONS)
def test_condition(condition, ctx, satisfied):
    process, tvr, _ = start(f"1F{condition}1E00", **ctx)
    assert process.current() == ("none" if satisfied else "signature")
    assert tvr.names() == []


# ---- methods that succeed --------------------------------------------------------------

SUCCESSES = [
    # rule, method, CVM Results, signature required, TVR
    ("0100", "offline_pin", "010002", False, []),
    ("0200", "online_pin", "020000", False, ["online_pin_entered"]),
    ("4203", "online_pin", "420300", False, ["online_pin_entered"]),
    ("0300", "offline_pin", "030000", True, []),
    ("1E00", "signature", "1E0000", True, []),
    ("5E03", "signature", "5E0300", True, []),
    ("1F00", "none", "1F0002", False, []),
]


@pytest.mark.parametrize("rule, method, results, signature, names", SUCCESSES)
def test_method_succeeds(rule, method, results, signature, names):
    process, tvr, tsi = start(rule)
    assert drive(process, [True]) == [method]
    assert process.results == bytes.fromhex(results)
    assert process.performed == method and process.signature_required is signature
    assert tvr.names() == names and tsi.names() == ["cvm_performed"]
    assert method in METHODS


# ---- failures --------------------------------------------------------------------------

FAILURES = [
    # rules, caps, pin pad, outcomes, methods offered, CVM Results, TVR
    ("01001F00", "E0E8C0", True, ["pin_try_limit_exceeded"], ["offline_pin"], "010001",
     ["cvm_not_successful", "pin_try_limit_exceeded"]),
    ("41004200", "E0E8C0", True, ["pin_not_entered", "pin_not_entered"],
     ["offline_pin", "online_pin"], "420001", ["cvm_not_successful", "pin_not_entered"]),
    ("41001F06", "E0E8C0", True, [False], ["offline_pin"], "410001",
     ["cvm_not_successful"]),                        # next rule's condition not satisfied
    ("1F06", "E0E8C0", True, [], [], "3F0001", ["cvm_not_successful"]),  # nothing applies
    ("0000", "E0E8C0", True, [], [], "000001", ["cvm_not_successful"]),  # 'fail CVM'
    ("4000", "E0E8C0", True, [], [], "400001", ["cvm_not_successful"]),
    ("20001F00", "E0E8C0", True, [], [], "3F0001",
     ["cvm_not_successful", "unrecognised_cvm"]),   # unrecognised, stop
    ("3F00", "E0E8C0", True, [], [], "3F0001", ["cvm_not_successful", "unrecognised_cvm"]),
    ("0200", "E0A8C0", True, [], [], "3F0001",
     ["cvm_not_successful", "pin_pad_not_working"]),  # online PIN not in 9F33
    ("0100", "E068C0", True, [], [], "3F0001",
     ["cvm_not_successful", "pin_pad_not_working"]),  # no offline PIN in 9F33
    ("0400", "E028C0", True, [], [], "3F0001",
     ["cvm_not_successful", "pin_pad_not_working"]),  # enciphered, no offline PIN at all
    ("0400", "E0F8C0", True, [], [], "3F0001", ["cvm_not_successful"]),  # never enciphered
    ("1F00", "E0E0C0", True, [], [], "3F0001", ["cvm_not_successful"]),  # no 'no CVM'
    ("0300", "E0C8C0", True, [], [], "3F0001", ["cvm_not_successful"]),  # no signature
    ("0100", "E0E8C0", False, [], [], "010001",
     ["cvm_not_successful", "pin_pad_not_working"]),  # PIN pad down
    ("42004100", "E0E8C0", False, [], [], "410001",
     ["cvm_not_successful", "pin_pad_not_working"]),
]


@pytest.mark.parametrize("rules, caps, pin_pad, outcomes, offered, results, names", FAILURES)
def test_verification_fails(rules, caps, pin_pad, outcomes, offered, results, names):
    process, tvr, tsi = start(rules, caps=caps, pin_pad=pin_pad)
    assert drive(process, outcomes) == offered
    assert process.results == bytes.fromhex(results)
    assert process.performed == "" and process.signature_required is False
    assert sorted(tvr.names()) == sorted(names) and tsi.names() == ["cvm_performed"]


FALLBACKS = [
    # rules, caps, pin pad, outcomes, methods offered, CVM Results, TVR
    ("41001E00", "E0E8C0", True, ["pin_not_entered", True], ["offline_pin", "signature"],
     "1E0000", ["pin_not_entered"]),
    ("40001F00", "E0E8C0", True, [True], ["none"], "1F0002", []),  # 'fail CVM', continue
    ("60001E00", "E0E8C0", True, [True], ["signature"], "1E0000", ["unrecognised_cvm"]),
    ("46001F00", "E0E8C0", True, [True], ["none"], "1F0002", ["unrecognised_cvm"]),  # RFU
    ("44001F00", "E0F8C0", True, [True], ["none"], "1F0002", []),  # enciphered: next
    ("43001F00", "E088C0", True, [True], ["none"], "1F0002", []),  # PIN but no signature
    ("41001E00", "E028C0", True, [True], ["signature"], "1E0000", ["pin_pad_not_working"]),
    ("42001E00", "E0E8C0", False, [True], ["signature"], "1E0000", ["pin_pad_not_working"]),
    ("01032003040302031F03", "E028C0", True, [True], ["none"], "1F0302", []),  # '03' skips
    ("42005E001F00", "E0E8C0", True, [False, False, True],
     ["online_pin", "signature", "none"], "1F0002", []),
]


@pytest.mark.parametrize("rules, caps, pin_pad, outcomes, offered, results, names", FALLBACKS)
def test_failed_rule_falls_back_to_the_next(rules, caps, pin_pad, outcomes, offered, results,
                                            names):
    process, tvr, tsi = start(rules, caps=caps, pin_pad=pin_pad)
    assert drive(process, outcomes) == offered
    assert process.results == bytes.fromhex(results)
    assert tvr.names() == names and tsi.names() == ["cvm_performed"]


# ---- misuse ----------------------------------------------------------------------------

def test_results_only_once_done_and_no_steps_after():
    process, _, _ = start("0100")
    with pytest.raises(RuntimeError):
        process.results
    process.succeeded()
    for step in (process.succeeded, process.failed):
        with pytest.raises(RuntimeError):
            step()


def test_unknown_failure_bit_is_a_key_error():
    process, _, _ = start("0100")
    with pytest.raises(KeyError, match="pin_wrong"):
        process.failed("pin_wrong")


@pytest.mark.parametrize("ctx", [dict(txn_type="refund"), dict(amount=-1), dict(caps="E0E8")])
def test_bad_context_is_rejected(ctx):
    with pytest.raises(ValueError):
        start("1F00", **ctx)


# ---- property --------------------------------------------------------------------------

@given(rules=st.lists(st.binary(min_size=2, max_size=2), max_size=8),
       outcomes=st.lists(st.booleans(), min_size=9, max_size=9),
       caps=st.binary(min_size=3, max_size=3), aip=st.binary(min_size=2, max_size=2),
       amount=st.integers(0, 10_000), x=st.integers(0, 10_000), y=st.integers(0, 10_000),
       txn_type=st.sampled_from(["goods", "services", "cash", "cashback"]),
       unattended=st.booleans(), same_currency=st.booleans(), pin_pad=st.booleans())
def test_always_done_within_rules_plus_one_steps(rules, outcomes, caps, aip, amount, x, y,
                                                 txn_type, unattended, same_currency,
                                                 pin_pad):
    tvr, tsi = Tvr(), Tsi()
    ctx = CvmContext(amount, same_currency, txn_type, unattended, caps)
    parsed = parse_cvm_list(x.to_bytes(4, "big") + y.to_bytes(4, "big") + b"".join(rules))
    process = CvmProcess(parsed, ctx, tvr, tsi, aip=aip, pin_pad=pin_pad)
    for outcome in outcomes[:len(rules) + 1]:
        if process.current() == DONE:
            break
        assert process.current() in METHODS
        if outcome:
            process.succeeded()
        else:
            process.failed()
    assert process.current() == DONE
    assert len(process.results) == 3
    failed = tvr.is_set("cvm_not_successful")
    assert failed == (process.results[2] == 0x01) == (process.performed == "")
