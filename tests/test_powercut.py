"""Power-cut harness (firmware/sim/powercut.py): the reconciler catches each broken rule on
doctored files, the child's cashier settles a full batch and sells on, and a real run of
200 kill points ends with nothing lost or charged twice."""
import asyncio
import random
import sqlite3
import time

import pytest

from firmware.config import load_config
from firmware.emv.card import CardData
from firmware.hal.printer_sim import SimPrinter
from firmware.journal import Journal
from firmware.sim.catalog import load_catalog
from firmware.sim.host_settle import SCHEMA as HOST_SETTLE_SCHEMA
from firmware.sim.ledger import Ledger
from firmware.sim.powercut import (
    REPO_CONFIG, Report, _Instance, _read, _sell_at_random, child_overrides, reconcile, run,
)
from firmware.sim.runner import sim_session
from firmware.vault import Vault
from tests.test_journal import ICC_DATA, PAN, TID, TRACK2, Clock, record_sale
from tests.test_journal_saf import offline_sale

DATE = "0301"  # MMDD of the test journal's clock
TOTALS = (2, 2000, 0, 0)  # the world's batch 1: debit count and amount, credit count and amount


class World:
    """A journal, a ledger and a receipts dir that agree: one online and one offline sale."""

    def __init__(self, tmp_path, card, vault):
        self.catalog = load_catalog()
        self.journal_path, self.ledger_path = tmp_path / "journal.db", tmp_path / "ledger.db"
        self.printer = SimPrinter(tmp_path / "receipts")
        self.journal = Journal(self.journal_path, vault, now=Clock())
        self.ledger = Ledger(self.ledger_path, self.catalog)
        self.card = card
        self.online_id, self.online_stan = self.approve_online(1200)
        self.offline_id, self.offline_stan = offline_sale(self.journal, card, 800, code="00")
        self.ledger.advise(**self.key(self.offline_stan), amount=800, rc="00")
        self.journal.record_advice_results([(self.offline_id, "00", True)])
        self.print(self.offline_id, self.offline_stan)

    def key(self, stan: int) -> dict:
        return dict(tid=TID, stan=f"{stan:06d}", date=DATE, batch="000001", pan=PAN)

    def approve_online(self, amount: int, *, in_ledger: bool = True) -> tuple[int, int]:
        txn_id, stan = record_sale(self.journal, self.card, amount)
        self.journal.record_response(txn_id, response_code="00", approved=True, rrn="1", auth_code="2")
        if in_ledger:
            self.ledger.authorise(**self.key(stan), amount=amount, rc="00")
        self.print(txn_id, stan)
        return txn_id, stan

    def print(self, txn_id: int, stan: int) -> None:
        for copy in ("merchant", "customer"):
            self.printer.print_receipt(b"\x1b@", "receipt", f"000001-{stan:06d}-{copy}")
            self.journal.mark_printed(txn_id, copy)

    def settle(self, totals: tuple = TOTALS, *, sent: tuple | None = TOTALS,
               status: str = "SETTLED", final: str = "balanced") -> int:
        """Settle batch 1 in the journal (`status`, `totals`, the host's `final` verdict)
        and, unless `sent` is None, record its 0500 (60.3 201, terminal totals `sent`) in
        the ledger."""
        batch = self.journal.begin_settlement()["batch"]
        if status == "SETTLED":
            self.journal.record_settlement_result(batch, status=status, result="balanced",
                                                  totals=totals, detail=final)
        if sent is not None:
            self.ledger.ensure(HOST_SETTLE_SCHEMA)
            field48 = "{:03d}{:012d}{:03d}{:012d}0".format(*sent)
            self.ledger_sql("INSERT INTO settlements (tid, batch, mti, mgmt, terminal_totals, "
                            "host_totals, verdict, operator, created_at) VALUES "
                            f"('{TID}', '{batch:06d}', '0500', '201', '{field48}', '', '1', "
                            "'01', '2026-03-01T12:00:00')")
        return batch

    def ledger_sql(self, *statements: str) -> None:
        db = sqlite3.connect(self.ledger_path)
        for statement in statements:
            db.execute(statement)
        db.commit()
        db.close()

    def violations(self) -> list[str]:
        self.journal.close()
        self.ledger.close()
        return reconcile(self.journal_path, self.ledger_path, self.printer.out_dir,
                         self.catalog).violations


@pytest.fixture
def world(tmp_path):
    card = CardData(pan=PAN, expiry="3012", pan_seq="01", track2=TRACK2, aid="A000000333010101",
                    app_label="UnionPay Debit", icc_data=ICC_DATA)
    return World(tmp_path, card, Vault.open(tmp_path / "vault.key"))


def test_files_that_agree_reconcile_clean(world):
    world.journal.close()
    world.ledger.close()
    found = reconcile(world.journal_path, world.ledger_path, world.printer.out_dir, world.catalog)
    assert found.violations == []
    assert (found.approved_online, found.approved_offline, found.advices) == (1, 1, 1)


def test_a_debit_without_an_approved_row(world):
    world.ledger.authorise(**world.key(777), amount=500, rc="00")
    assert world.violations() == ["STAN 000777 batch 000001: charged 500, no journal row"]


def test_a_debit_with_a_malformed_batch_matches_no_row(world):
    world.ledger.authorise(**{**world.key(world.online_stan), "batch": "", "date": "0302"},
                           amount=500, rc="00")
    assert world.violations() == [f"STAN {world.online_stan:06d} batch : charged 500, no journal row"]


def test_a_debit_of_a_declined_row(world):
    txn_id, stan = record_sale(world.journal, world.card, 300)
    world.journal.record_response(txn_id, response_code="05", approved=False, rrn="1", auth_code=None)
    world.ledger.authorise(**world.key(stan), amount=300, rc="00")
    assert world.violations() == [f"STAN {stan:06d} batch 000001: charged 300, journal DECLINED"]


def test_an_approved_row_without_a_debit(world):
    txn_id, stan = world.approve_online(500, in_ledger=False)
    assert world.violations() == [f"txn {txn_id} STAN {stan:06d}: approved 500, ledger debits []"]


def test_a_reversed_debit_of_an_approved_row(world):
    world.ledger.reverse(TID, f"{world.online_stan:06d}", DATE)
    assert world.violations() == [
        f"txn {world.online_id} STAN {world.online_stan:06d}: approved 1200, ledger debits []"]


def test_a_double_debit(world):
    stan = f"{world.online_stan:06d}"
    world.ledger_sql(
        "DROP INDEX authorisations_one_approval",
        "INSERT INTO authorisations (tid, stan, date, batch, pan_masked, pan_key, amount, rc, rrn,"
        " created_at) SELECT tid, stan, date, batch, pan_masked, pan_key, amount, rc, '9', created_at"
        f" FROM authorisations WHERE stan = '{stan}'",
        f"UPDATE accounts SET balance = balance - 1200 WHERE pan_masked LIKE '%{PAN[-4:]}'")
    assert world.violations() == [
        f"txn {world.online_id} STAN {stan}: approved 1200, ledger debits [1200, 1200]",
        f"STAN {stan} date {DATE}: debited 2 times"]


def test_a_balance_that_does_not_match_the_debits(world):
    world.ledger_sql(f"UPDATE accounts SET balance = balance - 1 WHERE pan_masked LIKE '%{PAN[-4:]}'")
    assert world.violations() == ["card approve: balance moved by 2001, debits 2000"]


def test_a_receipt_without_a_journal_row(world):
    world.printer.print_receipt(b"\x1b@", "receipt", "000001-000777-merchant")
    assert world.violations() == ["receipt 000001-000777-merchant.bin: no journal row",
                                  "receipt 000001-000777-merchant.txt: no journal row"]


def test_an_interrupted_receipt_write_is_not_a_receipt(world):
    (world.printer.out_dir / ".000001-000777-merchant.bin.x1y2.tmp").write_bytes(b"half")
    assert world.violations() == []


def test_an_approved_row_without_its_receipt(world):
    (world.printer.out_dir / f"000001-{world.online_stan:06d}-customer.bin").unlink()
    assert world.violations() == [
        f"txn {world.online_id} STAN {world.online_stan:06d}: approved, customer copy not printed"]


def test_a_pending_advice(world):
    txn_id, stan = offline_sale(world.journal, world.card, 400, code="Y1")
    world.ledger.advise(**world.key(stan), amount=400, rc="00")
    world.print(txn_id, stan)
    assert world.violations() == [f"txn {txn_id} STAN {stan:06d}: advice left PENDING",
                                  f"txn {txn_id} STAN {stan:06d}: offline approval, advice PENDING"]


def test_an_offline_approval_declined_when_forwarded_is_counted(world):
    txn_id, stan = offline_sale(world.journal, world.card, 400, code="00")
    world.ledger.advise(**world.key(stan), amount=400, rc="51")
    world.journal.record_advice_results([(txn_id, "51", False)])
    world.print(txn_id, stan)
    world.journal.close()
    world.ledger.close()
    found = reconcile(world.journal_path, world.ledger_path, world.printer.out_dir, world.catalog)
    assert (found.violations, found.offline_declined, found.approved_offline) == ([], 1, 2)


def test_a_request_left_in_flight_and_its_reversal(world):
    txn_id, stan = record_sale(world.journal, world.card, 300)
    assert world.violations() == [f"txn {txn_id} STAN {stan:06d}: left SENDING",
                                  f"txn {txn_id} STAN {stan:06d}: reversal left ARMED"]


def test_a_settled_batch_that_agrees_with_the_ledger(world):
    world.settle()
    world.printer.print_receipt(b"\x1b@", "report", "settle-000001")
    world.journal.mark_report_printed(1)
    world.journal.close()
    world.ledger.close()
    found = reconcile(world.journal_path, world.ledger_path, world.printer.out_dir, world.catalog)
    assert (found.violations, found.batches_settled, found.batches_uploaded) == ([], 1, 0)


def test_a_settlement_left_open(world):
    world.settle(status="STARTED", sent=None)
    assert world.violations() == ["batch 000001: settlement left STARTED"]


def test_a_batch_settled_out_of_balance(world):
    world.settle(final="out_of_balance")
    assert world.violations() == ["batch 000001: settled out_of_balance"]


def test_settled_totals_the_host_was_not_sent(world):
    world.settle(sent=(2, 1999, 0, 0))
    assert world.violations() == ["batch 000001: settled totals (2, 2000, 0, 0), the host was "
                                  "sent (2, 1999, 0, 0), the ledger holds (2, 2000, 0, 0)"]


def test_settled_totals_the_ledger_does_not_hold(world):
    world.settle(totals=(1, 1200, 0, 0), sent=(1, 1200, 0, 0))
    assert world.violations() == ["batch 000001: settled totals (1, 1200, 0, 0), the host was "
                                  "sent (1, 1200, 0, 0), the ledger holds (2, 2000, 0, 0)"]


def test_a_settled_batch_the_ledger_never_saw(world):
    world.settle(sent=None)
    assert world.violations() == ["batch 000001: settled, the ledger has no 0500 of it"]


def test_a_settlement_report_of_a_batch_not_settled(world):
    world.printer.print_receipt(b"\x1b@", "report", "settle-000001")
    assert world.violations() == ["settlement report settle-000001.bin: batch not settled",
                                  "settlement report settle-000001.txt: batch not settled"]


def test_a_settlement_report_marked_printed_without_its_file(world):
    world.settle()
    world.journal.mark_report_printed(1)
    assert world.violations() == ["batch 000001: settlement report marked printed, no report file"]


def test_the_cashier_settles_a_full_batch_and_sells_on(tmp_path, capsys):
    """The child's cashier (no kill here, the acquirer in-process), batches of 3: sales 1-3,
    the 4th refused "Batch full", a settlement from the menu, sales 5-7 in the next batch,
    the 8th refused and settled again; then the reconciler finds everything in order."""
    overrides = child_overrides(tmp_path, 1)  # port 1: replaced by the in-process acquirer's
    overrides["settlement"]["max_batch_txns"] = 3
    cfg = load_config(REPO_CONFIG, overrides=overrides)

    async def sell() -> None:
        async with sim_session(cfg) as session:
            await _sell_at_random(session, random.Random(2), count=8)

    asyncio.run(sell())
    events = [line for line in capsys.readouterr().out.splitlines() if '"settle' in line]
    assert events == ['{"event": "settle", "resume": false}',
                      '{"event": "settled", "outcome": "Settled"}'] * 2
    journal = tmp_path / "terminal" / "journal.db"
    settled = _read(journal, "SELECT batch, status FROM settlement")
    batches = _read(journal, "SELECT batch, COUNT(*) FROM txn GROUP BY batch")
    assert [tuple(row) for row in settled] == [(1, "SETTLED"), (2, "SETTLED")]
    assert [tuple(row) for row in batches] == [(1, 3), (2, 3)]
    found = reconcile(journal, cfg.sim.ledger, tmp_path / "terminal" / "receipts", load_catalog())
    assert (found.violations, found.batches_settled) == ([], 2)


def test_reports_add_up():
    a, b = Report(sales=2, violations=["x"], wall_time=3.0), Report(sales=5, wall_time=1.0)
    a.kills["random"], b.kills["commit.after"] = 1, 2
    total = a + b
    assert (total.sales, total.total_kills, total.violations, total.wall_time) == (7, 3, ["x"], 3.0)


def test_a_child_that_dies_otherwise_is_a_violation_with_its_code(tmp_path):
    instance = _Instance("job 1", 1, 1, tmp_path, tmp_path / "missing.toml")
    assert asyncio.run(instance._cycle(port=9)) is False  # not a kill
    log = tmp_path / "terminal.log"
    assert (instance.report.total_kills, instance.report.violations) == (
        0, [f"job 1: child died with code 1 (no output); see {log}"])
    assert "missing.toml" in log.read_text()  # the child's stderr: its traceback


@pytest.mark.timeout(420)
def test_200_kill_points_lose_nothing_and_charge_nothing_twice(tmp_path):
    started = time.monotonic()
    report = run(kills=200, seed=4, workdir=tmp_path / "run", jobs=4)  # 50 kills a journal
    print(f"\n{report.text()}\n200-kill run took {time.monotonic() - started:.1f} s")
    assert report.violations == []
    assert report.total_kills >= 200
    assert report.integrity_checks >= report.total_kills - 2  # the first kills may precede the journal
    assert report.total_kills - report.kills["random"] > 50  # crash points were hit
    assert report.approved_online and report.approved_offline and report.reversed and report.advices
    # Full batches were settled, some after an upload; kills landed in settlements and the
    # next child resumed them.
    assert report.settle_outcomes["Settled"] and report.batches_settled and report.batches_uploaded
    assert sum(report.kills[p] for p in ("settle.closed", "upload.sent", "upload.acked"))
    assert report.settle_resumed
