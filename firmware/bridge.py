"""Thread -> loop event bridge, and single-thread workers for blocking calls.

Contract (DESIGN §2): everything that owns state runs on one asyncio loop. Library
callbacks on foreign threads only call `EventBridge.post()`, which is thread-safe and never
blocks. Blocking calls (pyscard transmit, printer writes, sqlite3) run on a named `Worker`:
one thread per device, so each device is used from one thread, in order.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Callable, TypeVar

__all__ = ["EventBridge", "Worker", "WorkerTimeout"]

log = logging.getLogger("kpos.bridge")
T = TypeVar("T")


class WorkerTimeout(TimeoutError):
    """A blocking call did not finish in time; the worker thread may still be stuck in it."""


class EventBridge:
    """Delivers events from any thread to the loop's event queue, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()

    def post(self, event: Any) -> None:
        """Thread-safe, non-blocking. Events posted after the loop closed are dropped."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # loop closed during shutdown
            log.debug("event dropped after loop close: %s", type(event).__name__)

    async def get(self) -> Any:
        """Loop only: the next event."""
        return await self._queue.get()

    def pending(self) -> int:
        return self._queue.qsize()


class Worker:
    """One named thread that runs blocking calls in submission order."""

    def __init__(self, name: str):
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kpos-{name}")

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Loop only: run fn(*args) on this worker and await its result (or WorkerTimeout)."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise WorkerTimeout(f"{self.name}: {getattr(fn, '__name__', 'call')} took over {timeout} s") from None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Any non-loop thread: run fn(*args) on the worker and block for the result."""
        return self._pool.submit(fn, *args).result()

    def shutdown(self) -> None:
        """Let queued calls finish; do not wait for a call stuck on a device."""
        self._pool.shutdown(wait=False, cancel_futures=False)
