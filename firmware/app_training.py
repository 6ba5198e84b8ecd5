"""The terminal's training mode (练习模式): practice transactions run the full flow against a
local training host and a training journal (firmware.training), never the real acquirer
or the real batch.

A mixin of firmware.app.Terminal (loop thread only). `_set_training(on)` switches only
when the terminal is idle (no other flow or housekeeping task in flight), under the
sign-on lock, with the store-and-forward task stopped, and ends by posting
TrainingSet(on, reason) (on: the mode now; reason: why a switch was refused).

What is swapped while training, and restored as it was when training ends:
- `journal` (the training journal, on the same journal worker), so `journal_call`,
  settlement, reports, reprints and lookups see the training batch only;
- `link` (an AcquirerLink to the training host; the real one's connection is closed),
  `saf` and `_saf_task` (a StoreAndForward of the training journal on the training link;
  the real task is cancelled, and started again at the end);
- `session_keys`, `signed_on`, `online` (cleared, then set by the training sign-on, which
  happens before TrainingSet is posted), `_reversals_queued`.
Unchanged: operators, devices, workers, ids, config, the daily sign-on task (it signs on
to whichever host is current). `training` is True while in training mode and
`training_host` is the running TrainingHost (None otherwise). `_close_training()` is for
the terminal's stop: it ends training without restarting the real store-and-forward task.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from firmware.acquirer.link import AcquirerLink
from firmware.acquirer.tls import TlsClient
from firmware.flows.types import TrainingSet
from firmware.journal import Journal, JournalError
from firmware.saf import StoreAndForward
from firmware.training import TrainingError, TrainingHost, open_training_journal

__all__ = ["TrainingWork"]

log = logging.getLogger("kpos.app")


@dataclass(frozen=True)
class _Aside:
    """The real acquirer side and journal, set aside while training."""

    journal: Journal
    link: AcquirerLink
    saf: StoreAndForward
    session_keys: Any  # firmware.keys.SessionKeys | None
    signed_on: bool
    online: bool
    reversals_queued: int


class TrainingWork:
    """Terminal mixin: training mode on and off."""

    training = False  # True while transactions go to the training host and journal
    training_host: TrainingHost | None = None
    _aside: _Aside | None = None

    async def _set_training(self, on: bool) -> TrainingSet:
        """Switch training mode on or off when idle; post (and return) TrainingSet."""
        if on == self.training:
            reason = ""
        elif self._training_busy():
            reason = "Terminal busy, try again"
        else:
            reason = await (self._enter_training() if on else self._leave_training())
        answer = TrainingSet(self.training, reason)
        self._bridge.post(answer)
        return answer

    async def _close_training(self) -> None:
        """At stop, before the link and journal close: end training, real parts restored
        (their store-and-forward task is not restarted)."""
        if self.training:
            await self._leave_training(resume=False)

    def _training_busy(self) -> bool:
        others = self._tasks - {asyncio.current_task()}
        return bool(others or self._background)

    async def _enter_training(self) -> str:
        host = TrainingHost(self.cfg, self._tmk)
        try:
            port = await host.start()
            journal = await self.journal_worker.run(
                lambda: open_training_journal(self.cfg, self.clock.now))
        except (TrainingError, JournalError) as exc:
            await host.stop()
            log.error("training mode not started: %s", exc)
            return "Training host failed"
        async with self._signon_lock:  # no sign-on (daily, menu) across the swap
            await self._stop_saf()
            started = not self._training_busy()  # nothing began while the host started
            if started:
                self._swap_in(host, port, journal)
            self._start_saf()
        if not started:
            await self.journal_worker.run(journal.close)
            await host.stop()
            return "Terminal busy, try again"
        await self._aside.link.close()
        log.warning("TRAINING mode on: transactions go to the training host on port %d", port)
        await self._connect()  # sign on to the training host, its reversals first
        return ""

    def _swap_in(self, host: TrainingHost, port: int, journal: Journal) -> None:
        """Set the real parts aside and put the training ones in their place."""
        self._aside = _Aside(self.journal, self.link, self.saf, self.session_keys,
                             self.signed_on.is_set(), self.online.is_set(),
                             self._reversals_queued)
        self.journal = journal
        self.link = self._make_link("127.0.0.1", port)
        self.saf = self._make_saf(self.link, lambda fn: self.journal_worker.run(fn, journal))
        self.session_keys = None
        self.signed_on.clear()
        self.online.clear()
        self._reversals_queued = 0
        self.training, self.training_host = True, host

    async def _leave_training(self, *, resume: bool = True) -> str:
        host, link, journal = self.training_host, self.link, self.journal
        async with self._signon_lock:
            await self._stop_saf()
            self._swap_out()
            if resume:
                self._start_saf()
        await link.close()
        await self.journal_worker.run(journal.close)
        await host.stop()
        log.warning("TRAINING mode off")
        if resume:
            self._link_status(self.saf.state)  # the idle screen shows the real queue again
        return ""

    def _swap_out(self) -> None:
        """Put the real parts back as they were set aside."""
        aside = self._aside
        self.journal, self.link, self.saf = aside.journal, aside.link, aside.saf
        self.session_keys = aside.session_keys
        _set(self.signed_on, aside.signed_on)
        _set(self.online, aside.online)
        self._reversals_queued = aside.reversals_queued
        self.training, self.training_host, self._aside = False, None, None

    # ---- the acquirer side (one recipe for the real and the training one) ---------------

    def _make_link(self, host: str, port: int, tls: TlsClient | None = None) -> AcquirerLink:
        """`tls`: the real acquirer's (TlsClient.from_config); the training host is plain
        TCP on loopback."""
        acquirer = self.cfg.acquirer
        return AcquirerLink(host, port, connect_timeout=acquirer.connect_timeout,
                            response_timeout=acquirer.response_timeout, tls=tls)

    def _make_saf(self, link: AcquirerLink, journal_call) -> StoreAndForward:
        return StoreAndForward(link, journal_call, self.ids, self.cfg.saf,
                               echo_interval=self.cfg.acquirer.echo_interval,
                               now=self.clock.now, on_status=self._link_status)

    def _start_saf(self) -> None:
        self._saf_task = asyncio.get_running_loop().create_task(self.saf.run(), name="saf")
        self._saf_task.add_done_callback(self._task_done)

    async def _stop_saf(self) -> None:
        """Cancel the store-and-forward task and wait until it has ended (what it had
        answered is recorded by then)."""
        task, self._saf_task = self._saf_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])


def _set(event: asyncio.Event, value: bool) -> None:
    if value:
        event.set()
    else:
        event.clear()
