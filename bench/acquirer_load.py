"""Benchmark 7: the acquirer simulator under 50 concurrent terminals.

The simulator runs in a process of its own (bench.common.acquirer_process); the load runs in
another (this file as a script), so the simulator's GIL and CPU are measured alone: CONNS
connections on 127.0.0.1, each sending 0200 contactless sales of the "approve" card (a real
ARQC in field 55, no MAC: the legacy mode) back to back, one in flight per connection,
distinct STANs; every request is encoded before the clock starts (the load process only
writes frames and decodes the answers: on 2 CPUs it shares the machine with the simulator).
Rows: approved authorisations/s over the whole load (first request to last answer), per
run; floor: 0800 echoes/s under the same load (the simulator's framing and asyncio alone).
Target >= 2,000/s. Every answer must be 00, else the run fails.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, Result, Size, Target, acquirer_process, sim_config  # noqa: E402

__all__ = ["run"]

CONNS = 50
AMOUNT = 10  # minor units


async def _load(port: int, per_conn: int, kind: str) -> dict:
    """In the load process: CONNS terminals, `per_conn` requests each; {rate, codes}."""
    from bench.sale import emulated_card
    from firmware.acquirer import messages
    cfg = sim_config(Path(tempfile.gettempdir()))
    ids = messages.TerminalIds(cfg.terminal.terminal_id, cfg.terminal.merchant_id)
    card = emulated_card(AMOUNT, contactless=True)
    codes: dict[str, int] = {}

    def request(stan: int) -> dict:
        if kind == "echo":
            return messages.echo_request(ids, stan=stan, batch=1, now=datetime.now())
        return messages.sale_request(ids, stan=stan, batch=1, amount=AMOUNT, currency=156, card=card,
                                     pin_block=None, now=datetime.now())

    go, ready = asyncio.Event(), []

    async def terminal(n: int) -> None:
        """One connection; its requests encoded and framed before the clock starts, so the
        load process spends its CPU on the wire and the answers, not on building sales."""
        frames = [messages.frame(messages.encode(request(n * per_conn + i + 1)))
                  for i in range(per_conn)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ready.append(n)
        if len(ready) == CONNS:
            go.set()
        await go.wait()
        try:
            for frame in frames:
                writer.write(frame)
                answer = messages.decode(await messages.read_frame(reader))
                codes[answer.get("39", "-")] = codes.get(answer.get("39", "-"), 0) + 1
        finally:
            writer.close()
    tasks = [asyncio.ensure_future(terminal(n)) for n in range(CONNS)]
    await asyncio.wait_for(go.wait(), 60)
    t0 = time.perf_counter()
    await asyncio.gather(*tasks)
    return {"rate": CONNS * per_conn / (time.perf_counter() - t0), "codes": codes}


def _run_load(port: int, per_conn: int, kind: str) -> float:
    out = subprocess.run([sys.executable, __file__, str(port), str(per_conn), kind], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if set(result["codes"]) != {"00"}:
        raise RuntimeError(f"acquirer load ({kind}): answers {result['codes']}, all 00 expected")
    return result["rate"]


def run(size: Size) -> list[Result]:
    per_conn, runs = size.pick(4, 40, 200), size.pick(1, 3, 3)
    sales, echoes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(runs):
            with acquirer_process(Path(tmp) / f"acquirer{n}.db") as (port, _):
                sales.append(_run_load(port, per_conn, "sale"))
                echoes.append(_run_load(port, per_conn, "echo"))
    return [Result(f"acquirer sim, {CONNS} terminals, {CONNS * per_conn} sales", "auth/s", sales,
                   floor=sorted(echoes)[len(echoes) // 2], target=Target("median", ">=", 2000.0),
                   note="floor: 0800 echoes/s, same load")]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_load(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))))
