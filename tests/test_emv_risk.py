"""Terminal risk management (firmware.emv.risk): floor limit, random selection, velocity."""
import pytest

from firmware.emv.risk import RiskParams, random_target_percent, terminal_risk_management
from firmware.emv.tvr import Tsi, Tvr

PARAMS = RiskParams(floor_limit=10_000, random_threshold=2_000, random_target_percent=20,
                    random_max_percent=80)
AIP_TRM = bytes.fromhex("0800")
VELOCITY_CARD = {"9F14": b"\x02", "9F23": b"\x05"}  # LCOL 2, UCOL 5


class FixedRng:
    """rng(a, b) that always answers `value` and records its calls."""

    def __init__(self, value: int):
        self.value, self.calls = value, []

    def __call__(self, low: int, high: int) -> int:
        self.calls.append((low, high))
        return self.value


def risk(amount=100_000, *, params=PARAMS, card=None, atc=b"\x00\x01",
         last_online_atc=b"\x00\x01", rng=None, aip=AIP_TRM, online_only=False):
    tvr, tsi = Tvr(), Tsi()
    terminal_risk_management(amount=amount, params=params, card=card or {}, atc=atc,
                             last_online_atc=last_online_atc, rng=rng or FixedRng(99),
                             tvr=tvr, tsi=tsi, aip=aip, online_only=online_only)
    return tvr.names(), tsi.names()


def test_nothing_without_the_aip_bit():
    rng = FixedRng(1)
    names, tsi = risk(0, params=RiskParams(0, 0, 99, 99), card=VELOCITY_CARD, atc=None,
                      rng=rng, aip=bytes.fromhex("F700"))
    assert (names, tsi, rng.calls) == ([], [], [])


@pytest.mark.parametrize("amount, floor, expected", [
    (9_999, 10_000, []), (10_000, 10_000, ["exceeds_floor_limit"]),
    (10_001, 10_000, ["exceeds_floor_limit"]), (0, 0, ["exceeds_floor_limit"]),
    (1, 0, ["exceeds_floor_limit"]),
])
def test_floor_limit(amount, floor, expected):
    params = RiskParams(floor, 0, 0, 0)
    assert risk(amount, params=params) == (expected, ["terminal_risk_management_performed"])


@pytest.mark.parametrize("amount, percent", [
    (0, 20), (1_999, 20), (2_000, 20), (2_133, 20), (2_134, 21), (6_000, 50), (9_999, 79),
])
def test_interpolated_target_percent(amount, percent):
    assert random_target_percent(amount, PARAMS) == percent


def test_target_percent_is_only_for_amounts_under_the_floor():
    with pytest.raises(ValueError):
        random_target_percent(10_000, PARAMS)


@pytest.mark.parametrize("amount, draw, selected", [
    (1_999, 20, True), (1_999, 21, False),     # below the threshold: the target percent
    (6_000, 50, True), (6_000, 51, False),     # halfway: 50 %
    (9_999, 79, True), (9_999, 80, False),     # just under the floor: 79 %
    (0, 1, True),
])
def test_random_selection(amount, draw, selected):
    rng = FixedRng(draw)
    names, _ = risk(amount, rng=rng)
    assert names == (["random_online"] if selected else [])
    assert rng.calls == [(1, 99)]


def test_random_selection_never_with_zero_percent():
    rng = FixedRng(1)
    assert risk(500, params=RiskParams(10_000, 2_000, 0, 0), rng=rng)[0] == []


@pytest.mark.parametrize("amount, online_only", [(10_000, False), (20_000, False),
                                                 (500, True)])
def test_random_selection_is_skipped(amount, online_only):
    rng = FixedRng(1)
    names, _ = risk(amount, rng=rng, online_only=online_only)
    assert "random_online" not in names and rng.calls == []


LOWER = "lower_consecutive_offline_limit_exceeded"
UPPER = "upper_consecutive_offline_limit_exceeded"


@pytest.mark.parametrize("atc, last_online, expected", [
    ("0010", "000E", []),                       # 2 offline: at the lower limit
    ("000F", "000C", [LOWER]),                  # 3
    ("0012", "000D", [LOWER]),                  # 5: at the upper limit
    ("0013", "000D", [LOWER, UPPER]),           # 6
    ("0005", "0008", []),                       # ATC behind the register: 0
    ("0001", "0000", ["new_card"]),
    ("0009", "0000", [LOWER, UPPER, "new_card"]),
    ("FFFF", "0001", [LOWER, UPPER]),
    (None, "0001", ["icc_data_missing", LOWER, UPPER]),
    ("0001", None, ["icc_data_missing", LOWER, UPPER]),
    (None, None, ["icc_data_missing", LOWER, UPPER]),
])
def test_velocity(atc, last_online, expected):
    names, tsi = risk(card=VELOCITY_CARD, atc=atc and bytes.fromhex(atc),
                      last_online_atc=last_online and bytes.fromhex(last_online))
    assert sorted(names) == sorted(["exceeds_floor_limit"] + expected)
    assert tsi == ["terminal_risk_management_performed"]


@pytest.mark.parametrize("card", [{}, {"9F14": b"\x00"}, {"9F23": b"\x00"}])
def test_velocity_needs_both_limits(card):
    names, _ = risk(card=card, atc=None, last_online_atc=None)
    assert names == ["exceeds_floor_limit"]


@pytest.mark.parametrize("field, kwargs", [
    ("floor_limit", dict(floor_limit=-1)),
    ("random_threshold", dict(random_threshold=-1)),
    ("random_max_percent", dict(random_max_percent=100)),
    ("random_max_percent", dict(random_target_percent=50, random_max_percent=40)),
])
def test_params_are_checked(field, kwargs):
    values = dict(floor_limit=100, random_threshold=0, random_target_percent=10,
                  random_max_percent=50)
    with pytest.raises(ValueError, match=field):
        RiskParams(**{**values, **kwargs})
