"""bench/run.py smoke test: one fast benchmark at --quick size prints its table (text and
Markdown) and writes the JSON rows; a bad benchmark name is refused; the soak at --quick
size settles through the menu and reports the journal."""
import json
import re
import subprocess
import sys

from conftest import REPO

RUN = [sys.executable, str(REPO / "bench" / "run.py")]
TIMEOUT = 60  # s: the card benchmark at --quick takes a few


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)


def test_quick_card_benchmark_prints_its_table_and_json(tmp_path):
    out = tmp_path / "rows.json"
    done = bench("--only", "card", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr
    header, rule, *rows = done.stdout.split("\n\n")[0].splitlines()
    assert header.split()[:4] == ["benchmark", "unit", "median", "p10..p90"]
    assert set(rule) == {"-"}
    assert [r.split(" (")[0] for r in rows] == ["card session, contact", "card session, contactless"]
    data = json.loads(out.read_text())
    assert data["size"] == "quick" and "CPUs" in data["machine"]
    for row in data["rows"]:
        assert row["unit"] == "ms" and row["n"] == 10
        assert 0 < row["p10"] <= row["median"] <= row["p90"]
        assert row["floor"] > 0 and row["ratio"] == row["median"] / row["floor"]


def test_markdown_table_and_unknown_benchmark(tmp_path):
    done = bench("--only", "card", "--quick", "--markdown")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| benchmark | unit | median |") and lines[1].startswith("|---|")
    assert lines[2].startswith("| card session, contact (")
    refused = bench("--only", "nosuch")
    assert refused.returncode == 2 and "invalid choice: 'nosuch'" in refused.stderr


def test_quick_soak_settles_through_the_menu_and_reports_the_journal(tmp_path):
    out = tmp_path / "rows.json"
    done = bench("--only", "soak", "--quick", "--json", str(out))
    assert done.returncode in (0, 1), done.stderr  # 1: a target missed, still a table
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    first = next(row for name, row in rows.items() if name.startswith("soak: time per sale, first"))
    sales, settlements = re.search(r"(\d+) sales done, .* (\d+) settlements", first["note"]).groups()
    assert int(sales) >= 60 and int(settlements) == 5  # every 12 sales, none lost to a restart
    # chunks of at most 20 sales (the killed one does 10), the rest in more processes:
    # 20, 10 (SIGKILL), 20, 10 (the last: too few left for the SIGTERM one)
    assert re.search(r"(\d+) processes", first["note"]).group(1) == "4"
    assert rows["soak: settlement, menu to idle (SAF flushed first, 0500, report)"]["n"] == 5
    journal = rows["soak: journal size, start / middle / end"]
    assert journal["n"] == 3 and 0 < journal["p10"] <= journal["max"] < 1  # MB


def test_soak_never_kills_between_a_step_and_the_settlement_that_follows_it():
    from bench import soak

    # sales 1200-1202 are an outage (a fault every 100 sales, every other one an outage);
    # the settlement due at 1200 comes after the outage's last sale, 1202
    text, settle_after = soak._script(400, 1000, False, 400)
    assert settle_after == {1200, 1201, 1202}
    lines = text.splitlines()
    up = lines.index("acquirer up", lines.index("acquirer down"))
    assert lines[up + 1:up + 1 + len(soak.SETTLE)] == soak.SETTLE
    assert text.count("keys MENU 9 2") == 1
