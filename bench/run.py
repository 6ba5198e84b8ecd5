"""KPOS benchmarks and soak: run them all (or one) and print one table.

    .venv/bin/python bench/run.py [--long | --quick] [--only NAME ...] [--markdown] [--json FILE]

Each row: name, unit, median, spread (p10..p90), n, floor (the same work without the
terminal, measured in the same run), median / floor, target, met or MISSED. Default sizes
take a few minutes on a 2-core machine; --long runs the issue's full sizes (10,000 SAF
advices, 10,000 sales for memory, 100,000 soak transactions); --quick is the smoke test's.
Exit status 0 when every target is met, 1 when one is missed (the table says which).
Blocking; benchmarks run one after another, each in a fresh process (`--child NAME`, which
prints its rows as JSON) so that one's heap and threads do not weigh on the next's figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import acquirer_load, card, keypad, sale, saf, soak, start  # noqa: E402
from bench.common import Result, Size, Target, nproc  # noqa: E402

BENCHMARKS = {  # name -> run(size) -> [Result]; the table's order
    "sale": sale.run_overhead,
    "card": card.run,
    "saf": saf.run,
    "start": start.run,
    "keypad": keypad.run,
    "memory": sale.run_memory,
    "acquirer": acquirer_load.run,
    "soak": soak.run,
}
COLUMNS = ("benchmark", "unit", "median", "p10..p90", "n", "floor", "x floor", "target", "result")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    size = Size("long" if args.long else "quick" if args.quick else "default")
    if args.child:
        return _child(args.child, size)
    started, rows = time.perf_counter(), []
    for name in args.only or BENCHMARKS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(_in_child(name, size))
    took = time.perf_counter() - started
    table = [_cells(r) for r in rows]
    print(_markdown(table) if args.markdown else _text(table))
    print(f"\n{machine()}; {size.name} sizes; {took:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(_json(rows, size, took), indent=2) + "\n")
    return 1 if any(r.met is False for r in rows) else 0


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = ap.add_mutually_exclusive_group()
    sizes.add_argument("--long", action="store_true", help="the full sizes (takes hours)")
    sizes.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                    help=f"run only this one (repeatable): {', '.join(BENCHMARKS)}")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--child", choices=list(BENCHMARKS), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _child(name: str, size: Size) -> int:
    """In the fresh process: run one benchmark, print its rows (samples included) as JSON."""
    logging.basicConfig(level=logging.INFO, filename=str(Path(tempfile.gettempdir()) / "kpos-bench.log"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    rows = [{f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.init}
            for r in BENCHMARKS[name](size)]
    print(json.dumps(rows, default=dataclasses.asdict))
    return 0


def _in_child(name: str, size: Size) -> list[Result]:
    flag = {"quick": ["--quick"], "long": ["--long"], "default": []}[size.name]
    done = subprocess.run([sys.executable, __file__, "--child", name, *flag], stdout=subprocess.PIPE,
                          text=True, check=True)
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return [Result(**{**r, "target": r["target"] and Target(**r["target"])}) for r in rows]


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def _cells(r: Result) -> list[str]:
    s = r.stats
    verdict = "-" if r.met is None else "met" if r.met else f"MISSED ({r.target.stat} {_fmt(s[r.target.stat])})"
    name = f"{r.name} [{r.note}]" if r.note else r.name
    return [name, r.unit, _fmt(s["median"]), f"{_fmt(s['p10'])}..{_fmt(s['p90'])}", str(s["n"]),
            _fmt(r.floor), _fmt(r.ratio), str(r.target or "-"), verdict]


def _text(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [list(COLUMNS), *table]) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [list(COLUMNS), *table]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table])


def _json(rows: list[Result], size: Size, took: float) -> dict:
    return {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
            "size": size.name, "seconds": round(took, 1),
            "rows": [{"name": r.name, "unit": r.unit, **r.stats, "floor": r.floor, "ratio": r.ratio,
                      "target": str(r.target) if r.target else None, "met": r.met, "note": r.note}
                     for r in rows]}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return f"{nproc()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


if __name__ == "__main__":
    sys.exit(main())
