"""Store-and-forward: the background task that watches the acquirer link and forwards what
waits in the journal (pending reversals, then offline advices) once the host answers.

Contract: one StoreAndForward per terminal, created and used on the terminal's asyncio
loop only; no method blocks the loop. Journal work goes through the injected
`journal_call(fn)`, which runs fn(journal) on the journal worker (Terminal.journal_call);
exchanges go through the terminal's AcquirerLink, one exchange (or one pipelined window of
advices) at a time, so a sale waits for at most PIPELINE advices in flight. Delays are
seconds on the loop clock; `now()` is the terminal's local time (journal stamps, expiry
cutoffs, message fields 12/13).

- run(): the task, until cancelled. It sends an echo test (0800, 60.3 = 301, a fresh STAN)
  when the link has been idle for `echo_interval` (counted from the start of run()), when
  it is offline, or when its state is not known yet and something is queued: any answer
  means online, NotSent/NoResponse offline. While offline it probes on the backoff
  schedule, not every echo_interval. While online it drains the queue. Each pass with
  something queued first expires what is older than `cfg.expire_after` (journal.expire:
  the row is kept, an operator alert).
- Drain order (DESIGN §6, FIELD-NOTES §3): pending reversals first, oldest first, one in
  flight; each attempt is committed before the write; 0400 first, 0401 on repeats, same
  STAN and data; any answer acknowledges it. Then advices, oldest first, in batches of
  `cfg.batch`: a batch is claimed (read and marked attempted, Journal.claim_advices, one
  commit) before its first advice is written; each goes as 0220 (never attempted) or 0221
  (a repeat: the sealed 0220 with the repeat MTI), PIPELINE of them written back to back
  and their answers matched by STAN (AcquirerLink.exchange_many). One journal call per
  batch commits the answers to the batch before, purges the -wal file (acknowledged card
  data leaves it in the call that commits the ack) and claims the next batch; once a
  batch of the drain went through, that call runs while the next batch is on the link,
  so the journal's commits and fsyncs overlap the host's work. The answers received are
  also committed at once when a failure cuts a batch short or the drain is cancelled;
  a batch claimed meanwhile stays pending and goes later as 0221 repeats (the acquirer
  de-duplicates on terminal id + STAN + date). A code in APPROVED_CODES: accepted;
  RETRY_CODES (91/96): no result, the advice stays pending, back off; any other code:
  declined (kept by the journal, an operator alert).
- Failure (NotSent/NoResponse): the link is offline; the item stays pending and its next
  send is a repeat. The next try waits `backoff_delay(failures, ...)`; `failures` counts
  passes in a row that did not finish (link failures, 91/96, unreadable data) and resets
  when a pass finishes.
- Unreadable sealed data: the journal sets such an item aside itself (EXPIRED, "sealed
  data unreadable": an operator alert), so the queue behind it flows on. Any other
  JournalError reading a queue, or a MessageError building an item, is logged at ERROR,
  reported as LinkState.fault, and that queue is left alone for the pass, which then backs
  off like a failure (no busy loop); a bad reversal does not hold back the advices.
- flush(): settlement's call: the reversals and advices now, no backoff wait; True when
  the queue is empty. One drain runs at a time (the task's or flush()'s).
- send_reversals(): the app's call before any new online request: the pending reversals
  now, same rules, no backoff wait. It shares a lock with the drain, held for the reversal
  phase and for each pipelined window of advices, so the two never interleave and a sale
  waits for at most one window. poke(): wake the task now, skipping any wait.
  note_link(): the app's own exchanges count as link traffic, so echo tests only run on
  an idle link.
- on_status(LinkState) runs on the loop after every change of online/offline, of the
  queue stats or of the fault; stats cost one queue_stats() per pass, per STATS_EVERY
  drained batches and at the end of a drain, never one per message.
Logging: logger "kpos.saf", messages.describe() and journal texts only (log-safe).
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from firmware.acquirer import messages
from firmware.acquirer.codes import APPROVED_CODES
from firmware.acquirer.link import NoResponse, NotSent
from firmware.config import SafConfig
from firmware.journal import Journal, JournalError, PendingAdvice
from firmware.offline import QueueStats

__all__ = ["LinkState", "StoreAndForward", "backoff_delay", "RETRY_CODES"]

log = logging.getLogger("kpos.saf")

RETRY_CODES = frozenset({"91", "96"})  # issuer / system unavailable: not an answer yet
PIPELINE = 10  # advices written back to back before their answers are read
STATS_EVERY = 10  # batches: fresh queue stats (an O(queue) count) this often in a drain

JournalCall = Callable[[Callable[[Journal], Any]], Awaitable[Any]]


@dataclass(frozen=True)
class LinkState:
    """What the idle screen shows: is the acquirer there, and what waits for it."""

    online: bool | None  # None: not known yet
    stats: QueueStats
    fault: str = ""  # why part of the queue cannot be forwarded ("" = none); log-safe


def backoff_delay(failures: int, cfg: SafConfig, rng: Callable[[], float]) -> float:
    """Seconds to wait after a failure, `failures` being the failures in a row before it
    (0 for the first retry): min(retry_max, retry_first * 2**failures) * (0.5 + rng() / 2),
    exponential with "equal jitter" (rng() in [0, 1))."""
    return min(cfg.retry_max, cfg.retry_first * 2 ** min(failures, 64)) * (0.5 + rng() / 2)


def _commit_and_claim(journal: Journal, answered: list[tuple[int, str, bool]],
                      claim: tuple[int, int] | None, *, stats: bool,
                      ) -> tuple[QueueStats | None, list[PendingAdvice] | JournalError]:
    """Journal worker: the one call per batch of StoreAndForward._drain_advices. Commits
    `answered` and purges the -wal file (the acknowledged card data leaves it in the call
    that commits the ack), then claims `claim` = (limit, after txn id); a claim's
    JournalError is returned, not raised (the answers are committed by then). The stats
    when answers were committed and `stats` is asked for or the claim found nothing more
    (the end of the drain); else None."""
    if answered:
        journal.record_advice_results(answered)
        journal.purge_card_data()
    claimed: list[PendingAdvice] | JournalError = []
    if claim is not None:
        try:
            claimed = journal.claim_advices(claim[0], after=claim[1])
        except JournalError as exc:
            claimed = exc
    if answered and (stats or not isinstance(claimed, list) or not claimed):
        return journal.queue_stats(), claimed
    return None, claimed


class StoreAndForward:
    """Link health and the forwarding of reversals and advices (see the module docstring)."""

    def __init__(self, link, journal_call: JournalCall, ids: messages.TerminalIds,
                 cfg: SafConfig, *, echo_interval: float, now: Callable[[], datetime],
                 on_status: Callable[[LinkState], None],
                 rng: Callable[[], float] = random.random):
        if echo_interval <= 0:
            raise ValueError("echo_interval must be > 0 seconds")
        self._link = link  # firmware.acquirer.link.AcquirerLink
        self._journal = journal_call
        self._ids = ids
        self._cfg = cfg
        self._echo_interval = echo_interval
        self._now = now
        self._on_status = on_status
        self._rng = rng
        self._lock = asyncio.Lock()  # one of: a reversal phase, a window of advices
        self._drain_lock = asyncio.Lock()  # one drain at a time: the task's or flush()'s
        self._wake = asyncio.Event()
        self._poked = False
        self._online: bool | None = None
        self._stats = QueueStats()
        self._faults: dict[str, str] = {}  # queue name -> why it cannot be read
        self._reported: LinkState | None = None
        self._failures = 0  # passes in a row that did not finish
        self._last_traffic = -math.inf  # loop time of the last exchange, ours or the app's
        self._due = 0.0  # loop time of the next pass

    # -- the app's side ---------------------------------------------------------------------

    @property
    def online(self) -> bool | None:
        return self._online

    @property
    def state(self) -> LinkState:
        return LinkState(self._online, self._stats, "; ".join(self._faults.values()))

    def poke(self) -> None:
        """Something was queued or the link may be back: run a pass now, skipping any wait."""
        self._poked = True
        self._wake.set()

    def note_link(self, online: bool) -> None:
        """The app's own exchange got an answer (True) or NotSent/NoResponse (False)."""
        was = self._online
        self._traffic(online)
        if online and was is not True:
            self._failures = 0
            self.poke()  # the link is back: drain now
        elif not online:
            self._retry_later()

    async def send_reversals(self) -> bool:
        """Send the pending reversals now (before a new online request); True when none is
        left pending. A failure makes the task back off; it never waits itself."""
        acked = await self._reversal_phase()
        if acked is None:
            self._retry_later()
        return acked is not None

    async def flush(self) -> bool:
        """Send every pending reversal, then every pending advice, now (settlement: they go
        before the 0500); True when none is left pending. Same rules as the task's drain,
        never at the same time as it, no backoff wait (an echo test first when the link is
        known to be offline). A failure makes the task back off; it never waits itself."""
        try:
            done = (self._online is not False or await self._echo()) and await self._drain()
        except (JournalError, messages.MessageError) as exc:
            self._fault("queue", f"forwarding stopped: {exc}")
            done = False
        if not done:
            self._retry_later()
        return done

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The background task; ends only when cancelled."""
        self._last_traffic = max(self._last_traffic, asyncio.get_running_loop().time())
        while True:
            self._poked = False
            await self._pass()
            await self._sleep()

    async def _pass(self) -> None:
        try:
            finished = await self._expire_probe_drain()
        except (JournalError, messages.MessageError) as exc:
            self._fault("queue", f"forwarding stopped: {exc}")
            finished = False
        if not finished:
            self._retry_later()
            return
        self._clear_fault("queue")
        self._failures = 0
        self._due = self._last_traffic + self._echo_interval
        # Acknowledged advices and reversals leave the -wal file with their ack (above);
        # answered sales' sealed requests at the latest one echo interval after the answer.
        await self._journal(lambda j: j.purge_card_data())

    async def _expire_probe_drain(self) -> bool:
        """One pass; False when it stopped short (the caller backs off)."""
        await self._refresh()
        if self._stats.queued:
            cutoff = self._now() - timedelta(seconds=self._cfg.expire_after)
            if await self._journal(lambda j: j.expire(cutoff)):
                await self._refresh()
        if self._echo_due() and not await self._echo():
            return False
        return not self._stats.queued or await self._drain()

    def _echo_due(self) -> bool:
        if self._online is False or (self._online is None and self._stats.queued):
            return True
        return self._idle() >= self._echo_interval

    async def _sleep(self) -> None:
        """Until the next pass is due or poke() is called; note_link() may move the due time."""
        loop = asyncio.get_running_loop()
        while not self._poked and (delay := self._due - loop.time()) > 0:
            self._wake.clear()
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _retry_later(self) -> None:
        delay = backoff_delay(self._failures, self._cfg, self._rng)
        self._failures += 1
        self._due = asyncio.get_running_loop().time() + delay
        self._wake.set()  # a sleeping task recomputes its wait
        log.debug("next try in %.1f s (failure %d in a row)", delay, self._failures)

    def _idle(self) -> float:
        return asyncio.get_running_loop().time() - self._last_traffic

    # -- exchanges --------------------------------------------------------------------------

    async def _echo(self) -> bool:
        stan, batch = await self._journal(lambda j: (j.next_stan(), j.batch_no()))
        request = messages.echo_request(self._ids, stan=stan, batch=batch, now=self._now())
        response = await self._exchange(request)
        if response is not None and response.get("39") != "00":
            log.warning("echo test answered: %s", messages.describe(response))
        return response is not None

    async def _exchange(self, request: dict) -> dict | None:
        """The answer, or None when the link failed (it logged why): then offline."""
        try:
            response = await self._link.exchange(request)
        except (NotSent, NoResponse):
            self._traffic(False)
            return None
        self._traffic(True)
        return response

    async def _exchange_many(self, requests: list[dict]) -> list[dict | None] | None:
        """Pipelined answers (None per unanswered one); None when nothing could be sent."""
        try:
            responses = await self._link.exchange_many(requests)
        except NotSent:
            self._traffic(False)
            return None
        self._traffic(any(r is not None for r in responses))
        return responses

    def _traffic(self, online: bool) -> None:
        self._last_traffic = asyncio.get_running_loop().time()
        if online != self._online:
            self._online = online
            log.info("acquirer link %s", "online" if online else "offline")
            self._report()

    # -- the drain --------------------------------------------------------------------------

    async def _drain(self) -> bool:
        """Reversals, then advices batch by batch; False when something is left for later."""
        async with self._drain_lock:
            acked = await self._reversal_phase()
            if self._online is False:
                return False
            return await self._drain_advices() and acked is not None

    async def _reversal_phase(self) -> int | None:
        """_send_reversals under the lock, then fresh stats unless nothing was pending."""
        async with self._lock:
            acked = await self._send_reversals()
        if acked != 0:
            await self._refresh()
        return acked

    async def _send_reversals(self) -> int | None:
        """Lock held. How many were acknowledged; None when one is still pending."""
        pending = await self._load("reversals", lambda j: j.pending_reversals())
        if pending is None:
            return None
        for rev in pending:
            try:
                request = messages.reversal_request(rev.request, rev.reason_code,
                                                    repeat=rev.attempts > 0)
            except messages.MessageError as exc:
                self._fault("reversal data", f"reversal of STAN {rev.stan:06d} not built: {exc}")
                return None
            await self._journal(lambda j: j.record_reversal_attempt(rev.txn_id))
            response = await self._exchange(request)
            if response is None:
                log.warning("reversal of STAN %06d still pending", rev.stan)
                return None
            code = response.get("39", "")
            await self._journal(lambda j: (j.record_reversal_acked(rev.txn_id, code), j.purge_card_data()))
            log.info("reversal acknowledged: %s", messages.describe(response))
        self._clear_fault("reversal data")
        return len(pending)

    async def _drain_advices(self) -> bool:
        """Advices oldest first, batch by batch, one journal call per batch
        (_commit_and_claim: the answers to the batch before, the claim of the next batch,
        marked attempted). Once a batch of this drain went through, the link is known to
        work and that call runs while the next batch is on the link; so when a failure then
        stops the drain, the batch claimed meanwhile is sent later as 0221 repeats. False
        when a batch was cut short or the queue could not be read; the answers received are
        committed (and purged from the -wal file) before it returns, also when cancelled."""
        answered: list[tuple[int, str, bool]] = []  # answers not committed yet
        job = asyncio.ensure_future(self._journal_batch(answered, after=0, n=0))
        n = 0  # batches of this drain sent or on the link
        try:
            while True:
                batch, job = await asyncio.shield(job), None
                if not batch:
                    return batch is not None
                n += 1
                if n > 1:  # one went through: claim the next batch while this one is on the link
                    job, answered = self._batch_job(answered, batch, n), []
                if not await self._forward(batch, answered):
                    return False
                if job is None:
                    job, answered = self._batch_job(answered, batch, n), []
        finally:  # what was answered is recorded, also when cancelled
            if job is not None:  # still running (or it failed: raised above)
                await asyncio.wait([job])
            await self._journal_batch(answered, after=None, n=0)

    def _batch_job(self, answered: list[tuple[int, str, bool]], batch: list[PendingAdvice],
                   n: int) -> asyncio.Future:
        return asyncio.ensure_future(self._journal_batch(answered, after=batch[-1].txn_id, n=n))

    async def _journal_batch(self, answered: list[tuple[int, str, bool]], *, after: int | None,
                             n: int) -> list[PendingAdvice] | None:
        """_commit_and_claim on the journal worker: `answered` committed, then unless
        `after` is None the next batch above txn `after` claimed; None (a fault, reported)
        when it cannot be read. `n`: batches sent so far in this drain (0: the last call),
        for the stats period."""
        if not answered and after is None:
            return None
        claim = None if after is None else (self._cfg.batch, after)
        stats, claimed = await self._journal(lambda j: _commit_and_claim(
            j, answered, claim, stats=n % STATS_EVERY == 0))
        if answered:
            log.info("advices forwarded: %d answered", len(answered))
        if stats is not None:
            self._stats = stats
            self._report()
        if isinstance(claimed, JournalError):
            self._fault("advices", f"advices unreadable: {claimed}")
            return None
        if after is not None:
            self._clear_fault("advices")
        return claimed

    async def _forward(self, batch: list[PendingAdvice], answered: list[tuple[int, str, bool]]) -> bool:
        """Send one claimed batch, PIPELINE at a time written back to back (answers matched
        by STAN), appending (txn_id, code, accepted) to `answered` as they come; False when
        a failure or 91/96 cut it short."""
        for start in range(0, len(batch), PIPELINE):
            window = batch[start:start + PIPELINE]
            requests = [{**a.request, "t": "0221" if a.attempts else "0220"} for a in window]
            async with self._lock:
                responses = await self._exchange_many(requests)
            finished = responses is not None
            for advice, response in zip(window, responses or ()):
                if response is None:
                    finished = False
                    continue
                code = response.get("39", "")
                if code in RETRY_CODES:
                    log.warning("advice not taken yet, retrying later: %s", messages.describe(response))
                    finished = False
                    continue
                if code not in APPROVED_CODES:
                    log.warning("advice declined (kept, operator alert): %s", messages.describe(response))
                answered.append((advice.txn_id, code, code in APPROVED_CODES))
            if not finished:
                return False
        return True

    async def _load(self, queue: str, fn: Callable[[Journal], list]) -> list | None:
        """The queue from the journal; None (a fault, reported) when it cannot be read."""
        try:
            items = await self._journal(fn)
        except JournalError as exc:
            self._fault(queue, f"{queue} unreadable: {exc}")
            return None
        self._clear_fault(queue)
        return items

    # -- status -----------------------------------------------------------------------------

    def _fault(self, queue: str, reason: str) -> None:
        if self._faults.get(queue) != reason:
            log.error("%s (left for later)", reason)
            self._faults[queue] = reason
            self._report()

    def _clear_fault(self, queue: str) -> None:
        if self._faults.pop(queue, None) is not None:
            log.info("%s fault cleared", queue)
            self._report()

    async def _refresh(self) -> None:
        self._stats = await self._journal(lambda j: j.queue_stats())
        self._report()

    def _report(self) -> None:
        state = self.state
        if state != self._reported:
            self._reported = state
            self._on_status(state)
