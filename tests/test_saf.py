"""StoreAndForward against the real acquirer simulator on 127.0.0.1, a real journal file on
its worker thread and the terminal's AcquirerLink: drain order, repeats, declines, 91/96,
expiry, backoff, link up/down, echo tests, reversals before a sale, unreadable data.

Waits are on on_status events, the simulator's request counters and asyncio events, each
bounded by WAIT; nothing sleeps. Backoff delays are a few milliseconds (rng = 0).
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from conftest import run_bounded
from firmware.acquirer import messages
from firmware.acquirer.link import AcquirerLink
from firmware.bridge import Worker
from firmware.clock import FixedClock
from firmware.config import SafConfig
from firmware.journal import Journal
from firmware.saf import PIPELINE, LinkState, StoreAndForward, backoff_delay
from firmware.sim.acquirer import AcquirerSimulator, Faults
from firmware.vault import Vault
from test_acquirer_sim import CATALOG, IDS, NOW, TID, chip_card

WAIT = 10.0  # upper bound for anything a test waits on; never reached when all is well
RESPONSE_TIMEOUT = 0.5  # the link's: a dropped answer costs this much
CFG = SafConfig(retry_first=0.02, retry_max=0.1, expire_after=3600.0, batch=50)
CNY = 156
_cards: dict[tuple[str, int], object] = {}


def card_for(name: str, amount: int):
    """A real chip read of catalog card `name` for `amount` (cached: reads take time)."""
    if (name, amount) not in _cards:
        _cards[name, amount] = chip_card(name, amount)
    return _cards[name, amount]


def new_sale(journal: Journal, card, amount: int) -> tuple[int, int, dict]:
    """Journal worker: a fresh STAN, the batch and the 0200 the terminal built for them."""
    stan, batch = journal.next_stan(), journal.batch_no()
    return stan, batch, messages.sale_request(IDS, stan=stan, batch=batch, amount=amount,
                                              currency=CNY, card=card, pin_block=None, now=NOW)


class Simulator(AcquirerSimulator):
    """The simulator, noting each request it decides: (MTI, STAN, attempts the journal held
    for that STAN at that instant), and optionally rewriting its answers."""

    def __init__(self, *args, journal_path, **kwargs):
        super().__init__(*args, **kwargs)
        self.journal_path = journal_path
        self.seen: list[tuple[str, str, int | None]] = []
        self.rewrite = None  # (request, response) -> response

    def _respond(self, req: dict) -> dict | None:  # ledger thread
        self.seen.append((req["t"], req["11"], self._attempts(req)))
        resp = super()._respond(req)
        return self.rewrite(req, resp) if self.rewrite and resp else resp

    def _attempts(self, req: dict) -> int | None:
        table = {"02": "advice", "04": "reversal"}.get(req["t"][:2])
        if table is None:
            return None
        with sqlite3.connect(self.journal_path) as db:  # a reader of its own, as a host can't
            row = db.execute(f"SELECT x.attempts FROM {table} x JOIN txn t ON t.id = x.txn_id "
                             "WHERE t.stan = ?", (int(req["11"]),)).fetchone()
        return row[0] if row else None

    def mtis(self, stan: int) -> list[str]:
        return [mti for mti, s, _ in self.seen if s == f"{stan:06d}"]


class Statuses:
    """on_status sink: every LinkState reported, and a way to wait for one."""

    def __init__(self):
        self.seen: list[LinkState] = []
        self._changed = asyncio.Event()

    def __call__(self, state: LinkState) -> None:
        self.seen.append(state)
        self._changed.set()

    async def wait(self, ok, what: str) -> LinkState:
        async def until():
            while not (self.seen and ok(self.seen[-1])):
                self._changed.clear()
                await self._changed.wait()
        try:
            async with asyncio.timeout(WAIT):
                await until()
        except TimeoutError:
            raise AssertionError(f"no status {what}; last {self.seen[-1:]}") from None
        return self.seen[-1]


@dataclass
class Env:
    sim: Simulator
    journal: Journal
    worker: Worker
    link: AcquirerLink
    clock: FixedClock
    statuses: Statuses
    saf: StoreAndForward = None
    task: asyncio.Task | None = None
    calls: list[str] = field(default_factory=list)  # journal methods the SAF called
    counting: CountingJournal | None = None  # the journal as the SAF sees it

    async def j(self, fn):
        return await self.worker.run(fn, self.journal)

    def start(self) -> None:
        self.task = asyncio.create_task(self.saf.run())

    async def advice(self, name: str = "approve", amount: int = 1000) -> int:
        """An offline approval of `amount` by catalog card `name`, its 0220 queued; its STAN."""
        card = card_for(name, amount)

        def record(journal: Journal) -> int:
            stan, batch, sale = new_sale(journal, card, amount)
            journal.record_offline_approval(
                kind="sale", stan=stan, batch=batch, amount=amount, currency=CNY, card=card,
                advice=messages.advice_request(sale, code="00", icc_data=None), code="00")
            return stan
        return await self.j(record)

    async def reversal(self, amount: int = 2000) -> int:
        """A sale that got no answer: UNKNOWN, its reversal pending; its STAN."""
        card = card_for("approve", amount)

        def record(journal: Journal) -> int:
            stan, batch, sale = new_sale(journal, card, amount)
            txn_id = journal.record_request(kind="sale", stan=stan, batch=batch, amount=amount,
                                            currency=CNY, card=card, request=sale, reversible=True)
            journal.record_no_response(txn_id, reason_code="98", detail="no response in 0.5 s")
            return stan
        return await self.j(record)

    async def row(self, table: str, stan: int) -> tuple[str, int]:
        """(status, attempts) of the advice or reversal of `stan`."""
        def read(_journal: Journal):  # a connection of its own: what is on disk
            with sqlite3.connect(self.sim.journal_path) as db:
                return db.execute(f"SELECT x.status, x.attempts FROM {table} x JOIN txn t "
                                  "ON t.id = x.txn_id WHERE t.stan = ?", (stan,)).fetchone()
        return tuple(await self.j(read))

    async def debits(self) -> list[tuple[str, str, int]]:
        return [(a.kind, a.stan, a.repeats) for a in await self.sim.in_ledger(lambda l: l.debits(TID))]

    async def drained(self) -> LinkState:
        return await self.statuses.wait(lambda s: s.online and s.stats.queued == 0, "drained")


class PowerCut(Exception):
    """The terminal died here: this journal call and every later one never run."""


class CountingJournal:
    """The journal as the SAF sees it, counting which methods it calls; "|" in `calls`
    starts each journal call (one hop to the worker). `cut` = (method, n): the n-th use of
    that method and everything after it raise PowerCut instead (nothing of it runs)."""

    def __init__(self, journal: Journal, calls: list[str]):
        self._journal, self._calls = journal, calls
        self.cut: tuple[str, int] | None = None

    def __getattr__(self, name):
        self._calls.append(name)
        if self.cut is not None and self._calls.count(self.cut[0]) >= self.cut[1]:
            raise PowerCut(f"cut at {self.cut[0]} #{self.cut[1]}")
        return getattr(self._journal, name)

    def hop(self, fn):
        """Journal worker: the SAF's journal_call(fn) runs fn(self) here."""
        self._calls.append("|")
        return fn(self)

    def advice_hops(self) -> list[list[str]]:
        """The journal calls that claimed advices or committed their answers, each as the
        methods it used."""
        hops: list[list[str]] = []
        for name in self._calls:
            if name == "|":
                hops.append([])
            elif hops:
                hops[-1].append(name)
        return [h for h in hops if {"claim_advices", "record_advice_results"} & set(h)]


@asynccontextmanager
async def env(tmp_path, *, cfg: SafConfig = CFG, echo_interval: float = 60.0, vault=None):
    clock = FixedClock(NOW)
    journal_path = tmp_path / "journal.db"
    sim = Simulator(CATALOG, tmp_path / "acquirer.db", journal_path=journal_path, clock=lambda: NOW)
    await sim.start()
    worker = Worker("journal")
    vault = vault or Vault.open(tmp_path / "vault.key")
    journal = await worker.run(lambda: Journal(journal_path, vault, now=clock.now))
    link = AcquirerLink("127.0.0.1", sim.port, connect_timeout=2.0, response_timeout=RESPONSE_TIMEOUT)
    e = Env(sim, journal, worker, link, clock, Statuses())
    e.counting = counting = CountingJournal(journal, e.calls)
    e.saf = StoreAndForward(link, lambda fn: worker.run(counting.hop, fn), IDS, cfg,
                            echo_interval=echo_interval, now=clock.now, on_status=e.statuses,
                            rng=lambda: 0.0)
    try:
        yield e
    finally:
        if e.task is not None:
            e.task.cancel()
            await asyncio.wait([e.task], timeout=WAIT)
            assert e.task.done(), "the task did not end when cancelled"
            if not e.task.cancelled():
                e.task.result()  # the task crashed: show why
        await link.close()
        await sim.stop()
        await worker.run(journal.close)
        worker.shutdown()


run = run_bounded
pytestmark = pytest.mark.usefixtures("no_card_data_in_logs")


# --- the backoff schedule ---------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_equal_jitter():
    cfg = SafConfig(retry_first=5.0, retry_max=300.0, expire_after=3600.0, batch=50)
    assert [backoff_delay(n, cfg, lambda: 0.0) for n in range(8)] == [
        2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 150.0, 150.0]
    assert backoff_delay(0, cfg, lambda: 0.5) == 3.75
    assert backoff_delay(3, cfg, lambda: 0.999) == pytest.approx(39.98)
    assert backoff_delay(10_000, cfg, lambda: 0.999) == pytest.approx(299.85)  # no overflow


# --- drain order, batches, repeats ------------------------------------------------------------


def test_reversals_go_first_then_advices_oldest_first_in_batches(tmp_path):
    async def main():
        async with env(tmp_path, cfg=SafConfig(0.02, 0.1, 3600.0, batch=2)) as e:
            a1 = await e.advice(amount=1001)
            r1 = await e.reversal()
            a2 = await e.advice(amount=1002)
            r2 = await e.reversal()
            a3 = await e.advice(amount=1003)
            e.start()
            state = await e.drained()
            assert [(m, int(s)) for m, s, _ in e.sim.seen] == [
                ("0800", 6), ("0400", r1), ("0400", r2), ("0220", a1), ("0220", a2), ("0220", a3)]
            assert [n for _, _, n in e.sim.seen[1:]] == [1, 1, 1, 1, 1]  # committed before the write
            assert sorted(s for _, s, _ in await e.debits()) == [f"{s:06d}" for s in (a1, a2, a3)]
            assert [await e.row("advice", s) for s in (a1, a2, a3)] == [("ACKED", 1)] * 3
            assert [await e.row("reversal", s) for s in (r1, r2)] == [("ACKED", 1)] * 2
            assert (state.stats.alerts, state.fault) == (0, "")
            # batches of 2: one claim (read + attempts commit) per batch and the empty one
            # that ends the drain, one results commit per batch, stats per batch
            assert e.calls.count("claim_advices") == 3
            assert e.calls.count("record_advice_results") == 2
            assert e.calls.count("queue_stats") <= 5
    run(main())


def test_attempts_are_committed_before_the_write_and_the_next_send_is_0221(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            first, second = await e.advice(amount=1100), await e.advice(amount=1200)
            e.sim.faults.set_to(Faults.parse("disconnect times 1 mti 0220".split()))
            e.start()
            await e.drained()
            # the host read the 0220 (attempts already 1 on disk), decided, hung up
            assert [(m, n) for m, s, n in e.sim.seen if s == f"{first:06d}"] == [
                ("0220", 1), ("0221", 2)]
            assert e.sim.mtis(second) == ["0221"]  # its batch was marked attempted too
            assert await e.row("advice", first) == ("ACKED", 2)
            assert sorted(await e.debits()) == [("advice", f"{first:06d}", 1),
                                               ("advice", f"{second:06d}", 0)]
            assert any(s.online is False for s in e.statuses.seen)
    run(main())


def test_one_journal_call_per_batch_commits_the_answers_and_claims_the_next(tmp_path):
    """Batches of 2, five advices: the first batch is claimed alone; then each journal call
    commits the answers to one batch and claims the batch after the one on the link; the
    last answers close the drain: 5 calls for 3 batches (reading, marking attempted and
    committing each batch apart took 3 per batch)."""
    async def main():
        async with env(tmp_path, cfg=SafConfig(0.02, 0.1, 3600.0, batch=2)) as e:
            stans = [await e.advice(amount=1000 + n) for n in range(5)]
            e.start()
            state = await e.drained()
            results = ["record_advice_results", "purge_card_data"]
            assert e.counting.advice_hops() == [
                ["claim_advices"],  # batch 1
                [*results, "claim_advices"],  # batch 1's answers, batch 2
                ["claim_advices"],  # batch 3, while batch 2 is on the link
                [*results, "claim_advices", "queue_stats"],  # batch 2's answers, nothing more
                [*results, "queue_stats"],  # batch 3's answers: the drain is over
            ]
            assert [e.sim.mtis(s) for s in stans] == [["0220"]] * 5
            assert [await e.row("advice", s) for s in stans] == [("ACKED", 1)] * 5
            assert (state.stats.queued, state.stats.alerts) == (0, 0)
    run(main())


def test_a_cut_between_batches_keeps_the_committed_answers_and_repeats_the_rest(tmp_path):
    """The terminal dies as it is about to commit batch 2's answers (batch 3 claimed and
    on the link meanwhile): batch 1's answers were committed and its card data purged, so
    after the restart only batches 2 and 3 go again, as 0221 repeats the host answers from
    its record (one debit each); then no sealed blob is left in the journal's files."""
    cfg = SafConfig(0.02, 0.1, 3600.0, batch=2)

    def on_disk() -> bytes:
        return b"".join(path.read_bytes() for path in tmp_path.glob("journal.db*"))

    async def main():
        async with env(tmp_path, cfg=cfg) as e:
            stans = [await e.advice(amount=1000 + n) for n in range(6)]
            with sqlite3.connect(tmp_path / "journal.db") as db:
                blobs = [r[0] for r in db.execute("SELECT blob FROM sealed_request ORDER BY txn_id")]
            e.counting.cut = ("record_advice_results", 2)
            e.start()
            with pytest.raises(PowerCut):
                async with asyncio.timeout(WAIT):
                    await e.task
            e.task = None
            assert [e.sim.mtis(s) for s in stans] == [["0220"]] * 6
            assert [await e.row("advice", s) for s in stans] == [("ACKED", 1)] * 2 + [("PENDING", 1)] * 4
            assert [b in on_disk() for b in blobs] == [False] * 2 + [True] * 4
        async with env(tmp_path, cfg=cfg) as e:  # the restart
            e.start()
            await e.drained()
            assert [e.sim.mtis(s) for s in stans] == [[]] * 2 + [["0221"]] * 4
            assert [await e.row("advice", s) for s in stans] == [("ACKED", 1)] * 2 + [("ACKED", 2)] * 4
            debits = {stan: repeats for _, stan, repeats in await e.debits()}
            assert debits == {f"{s:06d}": 0 if n < 2 else 1 for n, s in enumerate(stans)}
            assert [b for b in blobs if b in on_disk()] == []
    run(main())


def test_dropped_0230_is_repeated_as_0221_with_the_same_stan_and_debited_once(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            stan = await e.advice(amount=1500)
            before = await e.sim.in_ledger(lambda l: l.balance(CATALOG.cards["approve"].pan))
            e.sim.faults.set_to(Faults.parse("drop times 1 mti 0220".split()))
            e.start()
            await e.drained()
            assert e.sim.mtis(stan) == ["0220", "0221"]
            [auth] = await e.sim.in_ledger(lambda l: l.records(TID))
            assert (auth.kind, auth.stan, auth.rc, auth.repeats) == ("advice", f"{stan:06d}", "00", 1)
            after = await e.sim.in_ledger(lambda l: l.balance(CATALOG.cards["approve"].pan))
            assert before - after == 1500
            assert await e.row("advice", stan) == ("ACKED", 2)
    run(main())


def test_a_doubled_answer_is_not_taken_for_the_next_advice(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            first, second = await e.advice(amount=1300), await e.advice(amount=1400)
            e.sim.faults.set_to(Faults.parse("answer_twice times 1 mti 0220".split()))
            e.start()
            await e.drained()
            assert (e.sim.mtis(first), e.sim.mtis(second)) == (["0220"], ["0220"])
            assert [await e.row("advice", s) for s in (first, second)] == [("ACKED", 1)] * 2
    run(main())


def test_send_reversals_waits_for_the_advices_in_flight_only(tmp_path):
    """The advices of one pipelined window (saf.PIPELINE) are in flight together; a
    reversal asked for meanwhile goes right after them, before the rest of the queue."""
    async def main():
        async with env(tmp_path) as e:
            advices = [await e.advice(amount=1000 + n) for n in range(PIPELINE + 2)]
            card_for("approve", 2000)  # read now: the reversal below is queued in a moment
            e.sim.faults.set_to(Faults.parse("delay 0.3 times 1 mti 0220".split()))
            e.start()
            await e.sim.wait_requests(2, WAIT)  # the echo, then the first 0220, held 0.3 s
            rev = await e.reversal()
            assert await e.saf.send_reversals() is True
            await e.drained()
            window = [("0220", stan) for stan in advices[:PIPELINE]]
            rest = [("0220", stan) for stan in advices[PIPELINE:]]
            assert [(m, int(s)) for m, s, _ in e.sim.seen[1:]] == window + [("0400", rev)] + rest
    run(main())


# --- what the host answers --------------------------------------------------------------------


def test_declined_advice_is_kept_and_raises_an_alert(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            low = await e.advice("low_balance", 5000)  # balance 1000: 51
            good = await e.advice("approve", 700)
            e.start()
            state = await e.drained()
            assert state.stats.alerts == 1
            assert await e.row("advice", low) == ("DECLINED", 1)
            assert await e.row("advice", good) == ("ACKED", 1)
            [alert] = await e.j(lambda j: j.alerts())
            assert (alert.what, alert.stan, alert.response_code) == ("advice declined", low, "51")
            assert (await e.j(lambda j: j.get(alert.txn_id))).status == "APPROVED"
    run(main())


@pytest.mark.parametrize("code", ["91", "96"])
def test_issuer_or_system_unavailable_leaves_the_advice_pending(tmp_path, code):
    async def main():
        async with env(tmp_path, cfg=SafConfig(0.02, 0.1, 3600.0, batch=1)) as e:
            stan = await e.advice("approve", 800)
            later = await e.advice("approve", 900)
            e.sim.rewrite = lambda req, resp: {**resp, "39": code} if req["t"] != "0800" else resp
            e.start()
            await e.sim.wait_handled(4, WAIT)  # echo, 0220, then at least two repeats
            assert e.sim.mtis(stan)[:3] == ["0220", "0221", "0221"]
            assert e.sim.mtis(later) == []  # one in flight, oldest first: it waits
            status, attempts = await e.row("advice", stan)
            assert status == "PENDING" and attempts >= 3
            assert await e.row("advice", later) == ("PENDING", 0)
            assert e.saf.online is True
    run(main())


def test_expired_items_raise_alerts_and_keep_their_rows(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            stan = await e.advice(amount=600)
            rev = await e.reversal()
            e.clock.advance(CFG.expire_after + 1)
            fresh = await e.advice(amount=650)
            e.start()
            state = await e.drained()
            assert state.stats.alerts == 2
            assert await e.row("advice", stan) == ("EXPIRED", 0)
            assert await e.row("reversal", rev) == ("EXPIRED", 0)
            assert await e.row("advice", fresh) == ("ACKED", 1)
            assert e.sim.mtis(stan) == [] and e.sim.mtis(rev) == []
            alerts = {(a.what, a.stan) for a in await e.j(lambda j: j.alerts())}
            assert alerts == {("advice expired", stan), ("reversal expired", rev)}
    run(main())


# --- link health ------------------------------------------------------------------------------


def test_host_down_then_up_offline_then_online_and_drained(tmp_path):
    async def main():
        async with env(tmp_path, echo_interval=60.0) as e:  # offline probes follow the backoff
            first = await e.advice(amount=1600)
            e.start()
            await e.drained()
            await e.sim.go_down()
            stan = await e.advice(amount=1700)
            e.saf.poke()
            state = await e.statuses.wait(lambda s: s.online is False, "offline")
            assert state.stats.advices == 1 and await e.row("advice", stan) == ("PENDING", 1)
            await e.sim.go_up()
            await e.drained()
            assert e.sim.mtis(stan) == ["0221"]  # the failed try counted: the send is a repeat
            assert await e.row("advice", stan) == ("ACKED", 2)
            assert await e.row("advice", first) == ("ACKED", 1)
    run(main())


def test_poke_skips_the_backoff_wait(tmp_path):
    async def main():
        async with env(tmp_path, cfg=SafConfig(30.0, 60.0, 3600.0, 50)) as e:
            await e.sim.go_down()
            stan = await e.advice(amount=1800)
            e.start()
            await e.statuses.wait(lambda s: s.online is False, "offline")  # next probe in 15 s
            await e.sim.go_up()
            e.saf.poke()
            await e.drained()
            assert await e.row("advice", stan) == ("ACKED", 1)
    run(main())


def test_echo_tests_keep_an_idle_link_checked(tmp_path):
    async def main():
        async with env(tmp_path, echo_interval=1.0) as e:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            e.start()
            await e.statuses.wait(lambda s: s.online is True, "online")
            t1 = loop.time()
            assert t1 - t0 >= 0.9  # not at once: the link has been idle for a second
            await e.sim.wait_handled(2, WAIT)
            assert loop.time() - t1 >= 0.9  # the next one after another idle second
            assert [m for m, _, _ in e.sim.seen] == ["0800"] * 2
            assert len({s for _, s, _ in e.sim.seen}) == 2  # a fresh STAN each
            assert len(e.statuses.seen) == 2  # stats, then online: nothing changed since
    run(main())


def test_the_apps_own_traffic_defers_the_echo(tmp_path):
    async def main():
        async with env(tmp_path, echo_interval=1.0) as e:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            e.start()
            loop.call_later(0.6, e.saf.note_link, True)  # the app's exchange got an answer
            await e.sim.wait_handled(1, WAIT)
            assert loop.time() - t0 >= 1.5  # one idle second after that answer, not at 1.0
    run(main())


def test_app_traffic_reports_the_link_state(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            e.saf.note_link(False)
            assert e.statuses.seen[-1].online is False
            e.saf.note_link(True)
            assert e.saf.online is True and e.statuses.seen[-1].online is True
    run(main())


# --- reversals before a sale ------------------------------------------------------------------


def test_send_reversals_clears_them_before_a_sale(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            rev = await e.reversal()
            assert await e.saf.send_reversals() is True
            sale = messages.sale_request(IDS, stan=await e.j(lambda j: j.next_stan()), batch=1,
                                         amount=300, currency=CNY, card=card_for("approve", 300),
                                         pin_block=None, now=NOW)
            await e.link.exchange(sale)
            assert [(m, int(s)) for m, s, _ in e.sim.seen] == [("0400", rev), ("0200", int(sale["11"]))]
            assert await e.row("reversal", rev) == ("ACKED", 1)
            assert (await e.j(lambda j: j.queue_stats())).reversals == 0
            assert await e.saf.send_reversals() is True  # nothing left: nothing sent
            assert len(e.sim.seen) == 2
    run(main())


def test_unanswered_reversal_stays_pending_and_is_repeated_as_0401(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            rev = await e.reversal()
            e.sim.faults.set_to(Faults.parse("drop times 1 mti 04".split()))
            assert await e.saf.send_reversals() is False
            assert await e.row("reversal", rev) == ("PENDING", 1)
            assert (await e.j(lambda j: j.get(j.pending_reversals()[0].txn_id))).status == "UNKNOWN"
            assert e.saf.online is False and e.statuses.seen[-1].online is False
            assert await e.saf.send_reversals() is True
            assert e.sim.mtis(rev) == ["0400", "0401"]
            assert await e.row("reversal", rev) == ("ACKED", 2)
            assert e.saf.online is True
    run(main())


def test_host_down_reversal_not_sent_stays_pending(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            rev = await e.reversal()
            await e.sim.go_down()
            assert await e.saf.send_reversals() is False
            assert await e.row("reversal", rev) == ("PENDING", 1)
            assert e.sim.seen == []
    run(main())


# --- unreadable sealed data -------------------------------------------------------------------


def test_unreadable_reversal_is_set_aside_and_does_not_hold_back_the_advices(tmp_path, caplog):
    async def main():
        old_key = Vault.open(tmp_path / "old.key")
        async with env(tmp_path, vault=old_key) as e:
            rev = await e.reversal()
        # the vault key was replaced: that reversal's sealed request no longer opens
        async with env(tmp_path) as e:
            stan = await e.advice(amount=450)
            e.start()
            state = await e.statuses.wait(lambda s: s.stats.queued == 0 and s.stats.alerts, "alert")
            assert state.stats.alerts == 1 and not state.fault
            assert await e.row("reversal", rev) == ("EXPIRED", 0)  # an operator alert, kept
            assert await e.row("advice", stan) == ("ACKED", 1)
            assert await e.saf.send_reversals() is True
    run(main())
    assert any(r.levelno == logging.ERROR and r.name == "kpos.journal" and "does not open" in r.message
               for r in caplog.records)


def test_a_reversal_that_no_longer_builds_is_a_fault_not_a_crash(tmp_path):
    async def main():
        async with env(tmp_path) as e:
            card = card_for("approve", 2000)

            def record(journal: Journal) -> int:
                stan, batch, sale = new_sale(journal, card, 2000)
                del sale["60"]  # no batch: the 0400 cannot name the original
                txn_id = journal.record_request(kind="sale", stan=stan, batch=batch, amount=2000,
                                                currency=CNY, card=card, request=sale, reversible=True)
                journal.record_no_response(txn_id, reason_code="98", detail="no response")
                return stan
            stan = await e.j(record)
            assert await e.saf.send_reversals() is False
            assert e.saf.state.fault == (f"reversal of STAN {stan:06d} not built: field 61: original "
                                         "needs field 11 (STAN) and 60.2 (batch)")
            assert e.statuses.seen[-1].fault == e.saf.state.fault
            assert await e.row("reversal", stan) == ("PENDING", 0) and e.sim.seen == []
    run(main())
