"""Terminal risk management (EMV Book 3 10.6): floor limit, random selection, velocity.

Pure, any thread, no I/O; randomness only through the `rng(a, b)` callable passed in
(an int in a..b inclusive: the kernel passes random.SystemRandom().randint, tests a fixed
function). Amounts are integer minor units of the transaction currency. The ATC (9F36)
and Last Online ATC Register (9F13) come from GET DATA, so the kernel passes them, None
when the card did not return them. Only TVR byte 4 bits, new_card, icc_data_missing and
the TSI bit are set here; the exception file check belongs to the caller.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Mapping

from firmware.emv.tvr import Tsi, Tvr

__all__ = ["RiskParams", "terminal_risk_management", "random_target_percent"]

AIP_TRM_REQUIRED = 0x08  # AIP byte 1: terminal risk management is to be performed


@dataclass(frozen=True)
class RiskParams:
    floor_limit: int  # minor units; 0 sends every transaction online
    random_threshold: int  # minor units, below the floor limit
    random_target_percent: int  # 0..99
    random_max_percent: int  # target..99

    def __post_init__(self):
        for field in fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"{field.name} must be >= 0")
        if not self.random_target_percent <= self.random_max_percent <= 99:
            raise ValueError("random_max_percent must be between random_target_percent and 99")


def terminal_risk_management(*, amount: int, params: RiskParams, card: Mapping[str, bytes],
                             atc: bytes | None, last_online_atc: bytes | None,
                             rng: Callable[[int, int], int], tvr: Tvr, tsi: Tsi,
                             aip: bytes, online_only: bool = False) -> None:
    """Set the TVR risk bits; does nothing unless the AIP asks for terminal risk management."""
    if not aip[0] & AIP_TRM_REQUIRED:
        return
    if amount >= params.floor_limit:
        tvr.set("exceeds_floor_limit")
    elif not online_only and rng(1, 99) <= random_target_percent(amount, params):
        tvr.set("random_online")
    if "9F14" in card and "9F23" in card:
        _check_velocity(card, atc, last_online_atc, tvr)
    tsi.set("terminal_risk_management_performed")


def random_target_percent(amount: int, params: RiskParams) -> int:
    """Book 3 10.6.2 for an amount under the floor limit: the target percentage below the
    threshold, rising linearly to the maximum at the floor limit (integer arithmetic)."""
    if amount >= params.floor_limit:
        raise ValueError("random selection is only for amounts under the floor limit")
    if amount < params.random_threshold:
        return params.random_target_percent
    spread = params.random_max_percent - params.random_target_percent
    return (params.random_target_percent + spread * (amount - params.random_threshold)
            // (params.floor_limit - params.random_threshold))


def _check_velocity(card: Mapping[str, bytes], atc: bytes | None,
                    last_online_atc: bytes | None, tvr: Tvr) -> None:
    """Consecutive offline transactions against the card's lower and upper limits."""
    if atc is None or last_online_atc is None:
        for name in ("lower_consecutive_offline_limit_exceeded",
                     "upper_consecutive_offline_limit_exceeded", "icc_data_missing"):
            tvr.set(name)
        return
    last_online = int.from_bytes(last_online_atc, "big")
    offline_count = max(int.from_bytes(atc, "big") - last_online, 0)
    if offline_count > int.from_bytes(card["9F14"], "big"):
        tvr.set("lower_consecutive_offline_limit_exceeded")
    if offline_count > int.from_bytes(card["9F23"], "big"):
        tvr.set("upper_consecutive_offline_limit_exceeded")
    if last_online == 0:
        tvr.set("new_card")
