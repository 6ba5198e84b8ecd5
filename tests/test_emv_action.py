"""Terminal action analysis (firmware.emv.action): TAC/IAC matching and the first GENERATE AC."""
import pytest

from firmware.emv.action import (ActionCodes, cryptogram_type, first_ac_decision,
                                 issuer_action_codes, parse_action_codes, unable_to_go_online)
from firmware.config import load_config
from firmware.emv.tvr import Tvr

from conftest import SIM_TOML

ZERO, ALL = "0000000000", "FFFFFFFFFF"
EXPIRED = "0040000000"           # expired application
FLOOR = "0000008000"             # exceeds floor limit
EXPIRED_AND_FLOOR = "0040008000"


def codes(denial=ZERO, online=ZERO, default=ZERO) -> ActionCodes:
    return parse_action_codes(denial, online, default)


# tvr, TAC, IAC, online capable, offline capable, decision
DECISIONS = [
    # nothing set in the TVR: no code can match
    (ZERO, codes(ALL, ALL, ALL), codes(ALL, ALL, ALL), True, True, "TC"),
    (ZERO, codes(), codes(), True, False, "ARQC"),          # online-only terminal
    (ZERO, codes(ALL, ALL, ALL), codes(ALL, ALL, ALL), False, True, "TC"),
    # denial, from the terminal or from the issuer, beats online
    (EXPIRED, codes(denial=EXPIRED, online=EXPIRED), codes(), True, True, "AAC"),
    (EXPIRED, codes(online=EXPIRED), codes(denial=EXPIRED), True, True, "AAC"),
    (EXPIRED, codes(), codes(denial=ALL, online=ALL), False, True, "AAC"),
    (FLOOR, codes(denial=EXPIRED), codes(), True, True, "TC"),  # other bit: no match
    # online
    (FLOOR, codes(online=FLOOR), codes(), True, True, "ARQC"),
    (FLOOR, codes(), codes(online=FLOOR), True, True, "ARQC"),
    (EXPIRED_AND_FLOOR, codes(online=FLOOR), codes(), True, True, "ARQC"),  # any one bit
    (FLOOR, codes(default=FLOOR), codes(), True, True, "TC"),  # default is not asked online
    # offline-only terminal: the default codes decide
    (FLOOR, codes(online=FLOOR), codes(), False, True, "TC"),
    (FLOOR, codes(default=FLOOR), codes(), False, True, "AAC"),
    (FLOOR, codes(), codes(default=FLOOR), False, True, "AAC"),
]


@pytest.mark.parametrize("tvr, tac, iac, online, offline, decision", DECISIONS)
def test_first_ac_decision(tvr, tac, iac, online, offline, decision):
    assert first_ac_decision(bytes.fromhex(tvr), tac, iac, online_capable=online,
                             offline_capable=offline) == decision


def test_decision_takes_a_tvr_object():
    tvr = Tvr()
    tvr.set("exceeds_floor_limit")
    assert first_ac_decision(tvr, codes(online=FLOOR), codes(), online_capable=True,
                             offline_capable=True) == "ARQC"


@pytest.mark.parametrize("tvr, tac, iac, decision", [
    (FLOOR, codes(), codes(), "TC"),
    (FLOOR, codes(default=FLOOR), codes(), "AAC"),
    (FLOOR, codes(), codes(default=FLOOR), "AAC"),
    (FLOOR, codes(denial=FLOOR, online=FLOOR), codes(), "TC"),  # only default counts now
    (ZERO, codes(default=ALL), codes(default=ALL), "TC"),
])
def test_unable_to_go_online(tvr, tac, iac, decision):
    assert unable_to_go_online(bytes.fromhex(tvr), tac, iac) == decision


def test_issuer_action_codes_from_the_card():
    card = {"9F0E": bytes.fromhex("0010000000"), "9F0F": bytes.fromhex("F0F8FC8000"),
            "9F0D": bytes.fromhex("F0780CF800")}
    assert issuer_action_codes(card) == ActionCodes(*(card[tag] for tag in
                                                      ("9F0E", "9F0F", "9F0D")))


def test_absent_issuer_action_codes():
    iac = issuer_action_codes({})
    assert (iac.denial, iac.online, iac.default) == (bytes(5), b"\xff" * 5, b"\xff" * 5)


@pytest.mark.parametrize("tag", ["9F0E", "9F0F", "9F0D"])
def test_malformed_issuer_action_code_names_the_tag(tag):
    with pytest.raises(ValueError, match=f"^malformed tag {tag}$"):
        issuer_action_codes({tag: bytes(4)})


@pytest.mark.parametrize("args, name", [
    (("00000000", ZERO, ZERO), "denial"),
    ((ZERO, "zz00000000", ZERO), "online"),
    ((ZERO, ZERO, "000000000000"), "default"),
])
def test_parse_action_codes_names_the_bad_one(args, name):
    with pytest.raises(ValueError, match=name):
        parse_action_codes(*args)


def test_parse_action_codes():
    tac = parse_action_codes("0010000000", "d84004f800", "D84000A800")
    assert tac == ActionCodes(bytes.fromhex("0010000000"), bytes.fromhex("D84004F800"),
                              bytes.fromhex("D84000A800"))


def test_short_tvr_is_rejected():
    with pytest.raises(ValueError, match="TVR"):
        unable_to_go_online(bytes(4), codes(), codes())


@pytest.mark.parametrize("cid, kind", [
    (0x00, "AAC"), (0x40, "TC"), (0x80, "ARQC"), (0xC0, "RFU"),
    (0x01, "AAC"), (0x48, "TC"), (0x9F, "ARQC"), (0xFF, "RFU"),
])
def test_cryptogram_type(cid, kind):
    assert cryptogram_type(cid) == kind


@pytest.mark.parametrize("bits, decision", [
    ((), "TC"),
    (("random_online",), "TC"),
    (("exceeds_floor_limit",), "AAC"),  # at or over the floor limit: no approval offline
    (("online_pin_entered",), "AAC"),  # an online PIN nobody could check
    (("sda_failed",), "AAC"),
])
def test_no_host_with_the_shipped_terminal_codes(bits, decision):
    e = load_config(SIM_TOML).emv
    tvr = Tvr()
    for bit in bits:
        tvr.set(bit)
    tac = parse_action_codes(e.tac_denial, e.tac_online, e.tac_default)
    assert unable_to_go_online(tvr, tac, codes()) == decision


def test_store_and_forward_overrides_only_the_go_online_bits():
    from firmware.emv.action import store_and_forward_allowed
    from firmware.emv.tvr import Tvr
    tac = parse_action_codes("0010000000", "D84004F800", "D84004A800")
    none = parse_action_codes("0000000000", "0000000000", "0000000000")
    for bits in (["exceeds_floor_limit"], ["random_online", "online_pin_entered"],
                 ["upper_consecutive_offline_limit_exceeded", "merchant_forced_online"]):
        tvr = Tvr()
        for bit in bits:
            tvr.set(bit)
        assert unable_to_go_online(bytes(tvr), tac, none) == "AAC"  # the defaults say no ...
        assert store_and_forward_allowed(bytes(tvr), tac, none)  # ... SAF's caps take over
    for bit in ("oda_not_performed", "sda_failed", "expired_application", "card_on_exception_file"):
        tvr = Tvr()
        tvr.set("exceeds_floor_limit")
        tvr.set(bit)
        assert not store_and_forward_allowed(bytes(tvr), tac, none), bit
    issuer_says_no = parse_action_codes("0000000000", "0000000000", "0000008000")
    floor = Tvr()
    floor.set("exceeds_floor_limit")
    assert store_and_forward_allowed(bytes(floor), none, issuer_says_no)  # masked for IACs too
