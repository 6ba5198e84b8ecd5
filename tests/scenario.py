"""Test helper: run a scenario script against a fresh simulator session."""
from __future__ import annotations

import asyncio

from firmware.sim.runner import SimSession, sim_session
from firmware.sim.script import parse_script, run_script


def run_scenario(cfg, script: str, **session_kw) -> SimSession:
    """Start acquirer + terminal, run `script`, stop; returns the session for after-checks."""
    async def go() -> SimSession:
        async with sim_session(cfg, **session_kw) as session:
            await run_script(session, parse_script(script), log=lambda line: None)
            return session
    return asyncio.run(go())
