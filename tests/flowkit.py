"""Test helper for the pure flows (sale, shell): feed events, collect actions, check every
screen shown on the way."""
from __future__ import annotations

from firmware.flows.types import Screen, Show


def make_drive(start, step, check_screen, default_cfg):
    """drive(events, state=None, cfg=default_cfg) -> (final state, the actions of each step),
    `check_screen` run on every screen shown."""
    def drive(events, state=None, cfg=default_cfg):
        if state is None:
            state, _ = start(cfg)
        per_step = []
        for event in events:
            state, actions = step(cfg, state, event)
            for action in actions:
                if isinstance(action, Show):
                    check_screen(action.screen)
            per_step.append(actions)
        return state, per_step
    return drive


def flat(per_step) -> list:
    return [a for actions in per_step for a in actions]


def shows(per_step) -> list[Screen]:
    return [a.screen for a in flat(per_step) if isinstance(a, Show)]
