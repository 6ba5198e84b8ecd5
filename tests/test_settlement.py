"""Settlement and batch upload over real TCP to the acquirer simulator on 127.0.0.1, with a
real journal file on its worker thread, the terminal's AcquirerLink and StoreAndForward:
balanced, forced and real out of balance, reversals and advices first, cash kept out of the
0500 and the upload, D0 fees, link failures and lost answers (resumable), power cuts of the
real `kpos settle` process at its crash points, the wire format, the simulator's settlement
host, the `kpos report` command.

Sales are real: chip reads of catalog cards (no online PIN), sent and answered. Waits are
bounded (WAIT, the link's timeouts, the subprocess timeout); nothing sleeps.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink
from firmware.bridge import Worker
from firmware.clock import FixedClock
from firmware.cli import main as kpos_main
from firmware.config import FeesConfig, SafConfig, SettlementConfig, load_config
from firmware.journal import JOURNAL_NAME, Journal
from firmware.receipts import lines_text
from firmware.reports import BatchTotals, ReportHeader, Tally
from firmware.saf import StoreAndForward
from firmware.settlement import (
    Settlement, parse_totals_field, settlement_request, totals_field, upload_done_request,
    upload_request, verdict,
)
from firmware.sim.acquirer import AcquirerSimulator, Faults
from firmware.sim.host_settle import host_totals
from firmware.vault import Vault
from conftest import REPO, run_bounded
from test_acquirer_sim import CATALOG, IDS, NOW, TID, Terminal, chip_card
from test_doctor import write_config

WAIT = 10.0  # upper bound for what a test waits on; never reached when all is well
RESPONSE_TIMEOUT = 0.5  # the link's: a dropped answer costs this much
SAF = SafConfig(retry_first=0.02, retry_max=0.1, expire_after=3600.0, batch=50)
FEES = FeesConfig(card_rate=60, wechat_rate=38, alipay_rate=38, unionpay_qr_rate=38)
CNY = 156
_cards: dict[tuple[str, int], object] = {}


def card_for(name: str, amount: int):
    """A real chip read of catalog card `name` for `amount` (cached: reads take time)."""
    if (name, amount) not in _cards:
        _cards[name, amount] = chip_card(name, amount)
    return _cards[name, amount]


class Simulator(AcquirerSimulator):
    """The simulator, keeping every request it decides, in order (ledger thread)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests: list[dict] = []

    def _respond(self, req: dict) -> dict | None:
        self.requests.append(req)
        return super()._respond(req)

    def seen(self) -> list[tuple[str, str]]:
        """(MTI, 60.3) of every request, in order (echo tests left out)."""
        return [(r["t"], r.get("60", "")[8:11]) for r in self.requests if not messages.is_echo(r)]


@dataclass
class Env:
    sim: Simulator
    journal: Journal
    worker: Worker
    link: AcquirerLink
    clock: FixedClock
    saf: StoreAndForward = None
    stans: list[int] = field(default_factory=list)

    async def j(self, fn):
        return await self.worker.run(fn, self.journal)

    async def settle(self, settlement: SettlementConfig | None = None):
        return await Settlement(self.link, self.j, IDS, saf=self.saf, fees=FEES, operator="01",
                                now=self.clock.now, currency=CNY, settlement=settlement).run()

    async def sale(self, amount: int, name: str = "no_cvm", *, answered: bool = True) -> int:
        """An online sale of catalog card `name`, sent and answered (or its answer lost:
        then UNKNOWN with a pending reversal, though the host approved it); its txn id."""
        txn_id, request = await self.j(lambda j: _recorded_sale(j, card_for(name, amount), amount))
        response = await self.link.exchange(request)
        if answered:
            await self.j(lambda j: j.record_response(
                txn_id, response_code=response["39"], approved=response["39"] == "00",
                rrn=response.get("37"), auth_code=response.get("38")))
        else:
            await self.j(lambda j: j.record_no_response(txn_id, reason_code="98", detail="lost"))
        return txn_id

    async def offline(self, amount: int, name: str = "no_cvm") -> int:
        """An offline approval with its 0220 pending; its txn id."""
        card = card_for(name, amount)

        def record(j: Journal) -> int:
            stan, batch = j.next_stan(), j.batch_no()
            sale = messages.sale_request(IDS, stan=stan, batch=batch, amount=amount, currency=CNY,
                                         card=card, pin_block=None, now=NOW)
            return j.record_offline_approval(
                kind="sale", stan=stan, batch=batch, amount=amount, currency=CNY, card=card,
                advice=messages.advice_request(sale, code="00", icc_data=None), code="00")
        return await self.j(record)

    async def ledger_debits(self) -> Tally:
        debits = await self.sim.in_ledger(lambda ledger: ledger.debits(TID))
        return Tally(len(debits), sum(a.amount for a in debits))

    async def host(self, sql: str, *args) -> list[tuple]:
        return await self.sim.in_ledger(lambda ledger: ledger.db.execute(sql, args).fetchall())


def _recorded_sale(j: Journal, card, amount: int) -> tuple[int, dict]:
    stan, batch = j.next_stan(), j.batch_no()
    request = messages.sale_request(IDS, stan=stan, batch=batch, amount=amount, currency=CNY,
                                    card=card, pin_block=None, now=NOW)
    return j.record_request(kind="sale", stan=stan, batch=batch, amount=amount, currency=CNY,
                            card=card, request=request, reversible=True), request


@asynccontextmanager
async def env(tmp_path, *, journal_path=None, vault_path=None):
    clock = FixedClock(NOW)
    sim = Simulator(CATALOG, tmp_path / "acquirer.db", clock=lambda: NOW)
    await sim.start()
    worker = Worker("journal")
    vault = Vault.open(vault_path or tmp_path / "vault.key")
    journal = await worker.run(lambda: Journal(journal_path or tmp_path / "journal.db", vault,
                                               now=clock.now))
    link = AcquirerLink("127.0.0.1", sim.port, connect_timeout=2.0, response_timeout=RESPONSE_TIMEOUT)
    e = Env(sim, journal, worker, link, clock)
    e.saf = StoreAndForward(link, e.j, IDS, SAF, echo_interval=60.0, now=clock.now,
                            on_status=lambda state: None, rng=lambda: 0.0)
    try:
        yield e
    finally:
        await link.close()
        await sim.stop()
        await worker.run(journal.close)
        worker.shutdown()


run = run_bounded
pytestmark = pytest.mark.usefixtures("no_card_data_in_logs")


# --- the wire format (pure) ------------------------------------------------------------------


def test_0500_carries_the_totals_in_31_digits_and_the_verdict_comes_back_in_the_last():
    totals = BatchTotals(debit=Tally(3, 123456), credit=Tally(1, 2000))
    req = settlement_request(IDS, stan=42, batch=7, totals=totals, currency=CNY, operator="01",
                             now=NOW)
    assert req == {"t": "0500", "11": "000042", "12": "103000", "13": "0514", "41": TID,
                   "42": IDS.merchant_id, "60": "00000007201",
                   "48": "003000000123456001000000002000" + "0", "49": "156", "63": "01 "}
    assert messages.decode(messages.encode(req)) == req
    assert parse_totals_field(req["48"]) == (3, 123456, 1, 2000)
    after = settlement_request(IDS, stan=43, batch=7, totals=totals, currency=CNY, operator="01",
                               now=NOW, after_upload=True)
    assert after["60"] == "00000007207"
    assert [verdict({"48": req["48"][:-1] + d}) for d in "1230"] == [
        "balanced", "out_of_balance", "error", "error"]
    with pytest.raises(messages.MessageError, match="field 48"):
        totals_field(BatchTotals(debit=Tally(1000, 1)))
    with pytest.raises(messages.MessageError, match="field 48"):
        parse_totals_field("12")


def test_0320_names_the_original_and_carries_no_card_data(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            txn_id = await e.sale(1234)
            record = await e.j(lambda j: j.get(txn_id))
            req = upload_request(IDS, record, stan=99, batch=1, now=NOW)
            assert {k: req[k] for k in ("t", "3", "4", "11", "39", "48", "60", "61")} == {
                "t": "0320", "3": "000000", "4": "000000001234", "11": "000099", "39": "00",
                "48": "sale", "60": "00000001201", "61": f"000001{record.stan:06d}0514"}
            assert (req["37"], req["38"]) == (record.rrn, record.auth_code)
            assert not {"2", "14", "35", "52", "55"} & req.keys()
            done = upload_done_request(IDS, stan=100, batch=1, count=5, now=NOW)
            assert (done["t"], done["60"], done["48"]) == ("0320", "00000001202", "0005")
    run(main())


# --- settling -------------------------------------------------------------------------------


def test_balanced_settlement_closes_the_batch_with_the_ledgers_totals(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            for amount, name in ((1500, "no_cvm"), (2250, "signature"), (999, "no_cvm")):
                await e.sale(amount, name)
            declined = await e.sale(2000, "do_not_honour")
            assert (await e.j(lambda j: j.get(declined))).status == "DECLINED"
            result = await e.settle()
            assert (result.settled, result.batch, result.result, result.uploaded) == (
                True, 1, "balanced", 0)
            assert result.final == "balanced" and result.host_code == "00"
            assert result.summary() == "Balanced"
            assert result.totals.debit == await e.ledger_debits() == Tally(3, 4749)
            assert result.totals.credit == Tally(0, 0)
            assert result.totals.fees == 9 + 14 + 6  # 9.00, 13.50 -> 14, 5.994 -> 6
            assert e.sim.seen()[-1] == ("0500", "201")
            row = await e.j(lambda j: j.settlement(1))
            assert (row["status"], row["result"], row["debit_count"], row["debit_amount"]) == (
                "SETTLED", "balanced", 3, 4749)
            assert await e.j(lambda j: (j.batch_no(), j.settled(1), j.open_settlement())) == (
                2, True, None)
            after = await e.sale(700)  # the next sale is in the next batch at once
            assert (await e.j(lambda j: j.get(after))).batch == 2
            [(tid, batch, verdict_digit)] = await e.host(
                "SELECT tid, batch, verdict FROM settlements")
            assert (tid, batch, verdict_digit) == (TID, "000001", "1")
    run(main())


def test_pending_reversals_and_advices_go_before_the_0500(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            await e.sale(1100)
            lost = await e.sale(3300, answered=False)  # the host approved it, the answer was lost
            offline = await e.offline(440)
            result = await e.settle()
            assert e.sim.seen()[-3:] == [("0400", "000"), ("0220", "000"), ("0500", "201")]
            assert (result.settled, result.result) == (True, "balanced")
            assert result.totals.debit == await e.ledger_debits() == Tally(2, 1540)
            assert result.totals.offline == Tally(1, 440)
            assert (await e.j(lambda j: j.get(lost))).status == "REVERSED"
            assert (await e.j(lambda j: j.get(offline))).advice_status == "ACKED"
    run(main())


def test_forced_out_of_balance_uploads_every_transaction_then_settles(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            ids = [await e.sale(a) for a in (1000, 2000)] + [await e.offline(300)]
            await e.sale(2000, "do_not_honour")  # declined: not uploaded
            e.sim.settle_unbalanced = 1
            result = await e.settle()
            assert (result.settled, result.result, result.uploaded, result.final) == (
                True, "out_of_balance", 3, "balanced")
            assert result.summary() == "Uploaded 3, balanced"
            assert e.sim.seen()[-6:] == [("0500", "201")] + [("0320", "201")] * 3 + [
                ("0320", "202"), ("0500", "207")]
            uploads = [r for r in e.sim.requests if r["t"] == "0320" and r["60"].endswith("201")]
            records = [await e.j(lambda j: j.get(i)) for i in ids]
            assert [u["61"][6:12] for u in uploads] == [f"{r.stan:06d}" for r in records]
            assert len({u["11"] for u in uploads}) == 3  # a fresh STAN each
            assert not [u for u in uploads if {"2", "35", "55"} & u.keys()]
            assert [r for r in e.sim.requests if r["t"] == "0320"][-1]["48"] == "0003"
            host = await e.host("SELECT stan, amount, repeats FROM batch_uploads ORDER BY stan")
            assert host == sorted((f"{r.stan:06d}", r.amount, 0) for r in records)
            row = await e.j(lambda j: j.settlement(1))
            assert (row["status"], row["uploaded"], row["to_upload"]) == ("SETTLED", 3, 3)
            assert e.sim.settle_unbalanced == 0
    run(main())


def test_a_transaction_the_host_never_got_stays_out_of_balance_after_the_upload(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            await e.sale(1000)
            await e.offline(250)
            expired = await e.j(lambda j: j.expire(NOW + timedelta(days=1)))  # never forwarded
            assert len(expired) == 1
            result = await e.settle()
            assert (result.settled, result.result, result.uploaded, result.final) == (
                True, "out_of_balance", 2, "out_of_balance")
            assert result.totals.debit == Tally(2, 1250) != await e.ledger_debits()
            [first, after] = await e.host("SELECT mgmt, verdict FROM settlements WHERE mti = '0500'")
            assert (first, after) == (("201", "2"), ("207", "2"))
    run(main())


def test_cash_stays_out_of_the_0500_and_the_upload_and_d0_fees_apply(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            card_ids = [await e.sale(a) for a in (1500, 2345)]
            cash_id = await e.j(lambda j: j.record_cash(amount=1234, tendered=2000, currency=CNY,
                                                        operator="01", terminal_id=TID))
            e.sim.settle_unbalanced = 1  # force the upload: it must not carry the cash row
            result = await e.settle(SettlementConfig(mode="D0", d0_rate=55, d0_fixed=30))
            assert (result.settled, result.uploaded, result.final) == (True, 2, "balanced")
            assert result.totals.debit == await e.ledger_debits() == Tally(2, 3845)
            assert result.totals.cash == Tally(1, 1234)
            first = next(r for r in e.sim.requests if r["t"] == "0500")
            assert parse_totals_field(first["48"]) == (2, 3845, 0, 0)
            uploads = [r for r in e.sim.requests if r["t"] == "0320" and r["60"].endswith("201")]
            stans = [(await e.j(lambda j: j.get(i))).stan for i in card_ids + [cash_id]]
            assert [u["61"][6:12] for u in uploads] == [f"{s:06d}" for s in stans[:2]]
            assert not [u for u in uploads if u["48"] == "cash"]
            # D0: 0.55% of each item rounded half up, plus 0.30 each (worked out in decimal)
            pct = [int((Decimal(a) * 55 / 10000).quantize(Decimal(1), ROUND_HALF_UP))
                   for a in (1500, 2345)]
            assert result.totals.fees == sum(pct) + 2 * 30 == 8 + 13 + 60
            assert result.totals.net == 3845 - 81
            header = ReportHeader("KPOS DEMO STORE", IDS.merchant_id, TID, "01", 1, NOW, CNY)
            report = lines_text(result.report_lines(header))
            for line in ("CASH (NOT SETTLED)         12.34", "FEES                        0.81",
                         "NET                        37.64", "SETTLEMENT MODE               D0",
                         "CREDITED            IN REAL TIME"):
                assert line + "\n" in report, report
    run(main())


def test_link_down_leaves_the_settlement_open_and_the_next_run_settles_the_same_batch(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            await e.sale(1200)
            await e.sim.go_down()
            result = await e.settle()
            assert not result.settled and result.batch == 1 and result.summary() == result.detail
            assert result.detail.startswith("settlement: connect to 127.0.0.1")
            row = await e.j(lambda j: j.open_settlement())
            assert (row["batch"], row["status"]) == (1, "STARTED")
            assert await e.j(lambda j: j.batch_no()) == 2  # closed once, at the first run
            await e.sim.go_up()
            result = await e.settle()
            assert (result.settled, result.batch, result.result) == (True, 1, "balanced")
            assert await e.j(lambda j: j.batch_no()) == 2
            assert e.sim.seen().count(("0500", "201")) == 1
    run(main())


def test_an_advice_that_cannot_be_forwarded_stops_the_settlement_before_the_0500(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            await e.offline(500)
            await e.sim.go_down()
            result = await e.settle()
            assert not result.settled
            assert result.detail == "reversals or advices still pending (acquirer unreachable?)"
            assert (await e.j(lambda j: j.settlement(1)))["status"] == "STARTED"
            await e.sim.go_up()
            assert (await e.settle()).settled
            assert e.sim.seen()[-2:] == [("0221", "000"), ("0500", "201")]  # a repeat now
    run(main())


def test_a_lost_upload_answer_resumes_and_the_host_counts_the_item_once(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            first, second = await e.sale(1000), await e.sale(2000)
            e.sim.settle_unbalanced = 1
            e.sim.faults.set_to(Faults.parse("drop times 1 mti 0320".split()))
            result = await e.settle()
            assert not result.settled and result.detail.startswith("batch upload: no response")
            assert (await e.j(lambda j: j.settlement(1)))["status"] == "UPLOADING"
            result = await e.settle()
            assert (result.settled, result.uploaded, result.final) == (True, 2, "balanced")
            host = await e.host("SELECT stan, repeats FROM batch_uploads ORDER BY stan")
            stans = [(await e.j(lambda j: j.get(i))).stan for i in (first, second)]
            assert host == [(f"{stans[0]:06d}", 1), (f"{stans[1]:06d}", 0)]
            attempts = await e.j(lambda j: j._db.execute(
                "SELECT attempts, status FROM batch_upload ORDER BY txn_id").fetchall())
            assert [tuple(r) for r in attempts] == [(2, "ACKED"), (1, "ACKED")]
    run(main())


def test_a_refused_settlement_stays_open_with_the_hosts_code(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            e.sim.route("0500", "", lambda req, now: {"11": req["11"], "41": req["41"],
                                                      "42": req["42"], "39": "96"})
            result = await e.settle()
            assert not result.settled
            assert result.detail == "settlement: refused by the host, code 96"
    run(main())


# --- the simulator's settlement host ----------------------------------------------------------


def test_host_totals_follow_the_kinds_rules(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            pan = CATALOG.cards["approve"].pan

            def book(ledger):
                def rec(kind, stan, amount, rc="00", money="debit", batch="000001"):
                    return ledger.record(kind, tid=TID, stan=stan, date="0514", batch=batch,
                                         pan=pan, amount=amount, rc=rc, money=money)
                rec("sale", "000001", 1000)
                sale = rec("sale", "000002", 500)
                rec("void", "000003", 500, money="credit")  # takes the 500 back out
                rec("refund", "000004", 300, money="credit")
                rec("preauth", "000005", 9000, money="none")
                rec("advice", "000006", 70)
                rec("sale", "000007", 800, rc="51")
                rec("sale", "000008", 600, batch="000002")
                rec("sale", "000009", 40)
                ledger.reverse(TID, "000009", "0514")
                return sale, host_totals(ledger.db, TID, "000001")
            _sale, totals = await e.sim.in_ledger(book)
            assert totals == (2, 1070, 1, 300)
    run(main())


def test_host_answers_0500_and_0320_by_the_protocol(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            await e.sale(1500)
            term = await Terminal.connect(e.sim.port)
            try:
                good = BatchTotals(debit=Tally(1, 1500))
                req = settlement_request(IDS, stan=900, batch=1, totals=good, currency=CNY,
                                         operator="01", now=NOW)
                resp = await term.ask(req)
                assert (resp["t"], resp["39"], resp["48"], resp["60"]) == (
                    "0510", "00", req["48"][:-1] + "1", req["60"])
                wrong = settlement_request(IDS, stan=901, batch=1, totals=BatchTotals(
                    debit=Tally(1, 1501)), currency=CNY, operator="01", now=NOW)
                assert (await term.ask(wrong))["48"][-1] == "2"
                assert (await term.ask({**req, "11": "000902", "48": "1"}))["39"] == "30"
                assert (await term.ask({**req, "11": "000903", "41": "99999999"}))["39"] == "03"
                assert (await term.ask({**req, "11": "000904", "60": "00000001999"}))["39"] == "12"
                record = (await e.j(lambda j: j.batch_records(1)))[0]
                for stan in (905, 906):  # the same original twice: recorded once
                    upload = upload_request(IDS, record, stan=stan, batch=1, now=NOW)
                    assert (await term.ask(upload))["39"] == "00"
                assert await e.host("SELECT stan, repeats FROM batch_uploads") == [
                    (f"{record.stan:06d}", 1)]
                after = settlement_request(IDS, stan=907, batch=1, totals=good, currency=CNY,
                                           operator="01", now=NOW, after_upload=True)
                assert (await term.ask(after))["48"][-1] == "1"  # the upload matches the ledger
            finally:
                await term.close()
    run(main())


# --- power cuts of the real `kpos settle` process ------------------------------------------------


def _kpos_env(crash: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KPOS_CRASH_AT"}
    return {**env, "KPOS_CRASH_AT": crash} if crash else env


async def _kpos(config, *args: str, crash: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware", *args, "--config", str(config), cwd=REPO,
        env=_kpos_env(crash), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("crash, resent", [("settle.closed:1", 0), ("upload.sent:2", 1),
                                           ("upload.acked:2", 0)])
def test_a_power_cut_during_settlement_resumes_and_nothing_is_counted_twice(
        tmp_path, test_pans, crash, resent):
    async def main():
        async with env(tmp_path) as e:
            config = write_config(tmp_path, e.sim.port)
            cfg = load_config(config)
            await e.worker.run(e.journal.close)  # the sales go into the terminal's own journal
            e.journal = await e.worker.run(lambda: Journal(
                cfg.terminal.data_dir / JOURNAL_NAME, Vault.open(cfg.security.vault_key_file),
                now=e.clock.now))
            ids = [await e.sale(a) for a in (1000, 2000, 3000)]
            stans = [(await e.j(lambda j: j.get(i))).stan for i in ids]
            e.sim.settle_unbalanced = 1
            await e.worker.run(e.journal.close)
            code, out, err = await _kpos(config, "settle", crash=crash)
            assert code == -9, out + err  # SIGKILL at the crash point
            code, out, err = await _kpos(config, "settle")
            assert code == 0, out + err
            assert "SETTLEMENT REPORT" in out and "OUT OF BALANCE" in out
            assert not [pan for pan in test_pans if pan in out + err]
            host = await e.host("SELECT stan, repeats FROM batch_uploads ORDER BY stan")
            assert [s for s, _ in host] == [f"{s:06d}" for s in stans]  # each counted once
            assert sum(r for _, r in host) == resent
            with sqlite3.connect(cfg.terminal.data_dir / JOURNAL_NAME) as db:
                assert db.execute("SELECT batch, status, report_printed_at IS NOT NULL FROM "
                                  "settlement").fetchall() == [(1, "SETTLED", 1)]
                assert db.execute("SELECT value FROM counter WHERE name = 'batch'").fetchone() == (2,)
            assert (cfg.terminal.data_dir / "receipts" / "settle-000001.bin").exists()
    run(main())


def lines_of(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_kpos_report_prints_the_x_report_and_a_settlement_copy(tmp_path, capsys):
    async def sell_and_settle(cfg):
        async with env(tmp_path, journal_path=cfg.terminal.data_dir / JOURNAL_NAME,
                       vault_path=cfg.security.vault_key_file) as e:
            await e.sale(1999)
            assert kpos_main(["report", "x", "--config", str(config)]) == 0  # next to the terminal
            assert (await e.settle()).settled
            await e.sale(500)
    config = write_config(tmp_path, 5000)
    cfg = load_config(config)
    assert kpos_main(["report", "x", "--config", str(config)]) == 2  # no journal yet
    run(sell_and_settle(cfg))
    out = capsys.readouterr().out
    assert "X REPORT - BATCH OPEN" in out and "19.99" in out
    assert kpos_main(["report", "settlement", "--config", str(config)]) == 0
    copy = capsys.readouterr().out
    assert "SETTLEMENT REPORT" in copy and ["BATCH", "NO.", "000001"] in lines_of(copy)
    assert ["HOST", "RESULT", "BALANCED"] in lines_of(copy)
    assert ["SETTLEMENT", "MODE", "T+1"] in lines_of(copy)  # [settlement] mode of the config
    assert kpos_main(["report", "x", "--config", str(config)]) == 0
    assert ["BATCH", "NO.", "000002"] in lines_of(capsys.readouterr().out)
    assert kpos_main(["report", "settlement", "--batch", "2", "--config", str(config)]) == 1
    assert sorted(p.name for p in (cfg.terminal.data_dir / "receipts").iterdir()) == [
        "settle-000001-copy.bin", "settle-000001-copy.txt", "xreport-000001.bin",
        "xreport-000001.txt", "xreport-000002.bin", "xreport-000002.txt"]
