"""systemd service notification (the sd_notify datagram protocol): READY, STATUS, WATCHDOG,
STOPPING for boot/kpos.service (Type=notify, WatchdogSec).

Contract: `Notifier.from_env()` reads NOTIFY_SOCKET once: a filesystem path, or "@name"
for an abstract socket. Unset, it is a no-op, so the same code runs under a shell, in
tests and under systemd. Each call sends one datagram "KEY=value\\n..." without blocking
(a full socket queue drops the message); any thread. It never raises into the caller: the
first failure is logged as a warning, later ones at debug level.
`watchdog_interval()`: half of WATCHDOG_USEC, in seconds, or None when the service has no
watchdog (unset, not a positive integer, or WATCHDOG_PID names another process).
`watchdog_pings(notifier, interval, alive)` (loop task): WATCHDOG=1 every `interval`
seconds while `alive()` is true. A stalled loop or a false `alive()` stops the pings, and
systemd restarts the service after WatchdogSec.
`link_status(online, queued, alerts)`: the STATUS= text for the acquirer link and queue.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Callable, Mapping

__all__ = ["Notifier", "watchdog_interval", "watchdog_pings", "link_status"]

log = logging.getLogger(__name__)

STATUS_MAX = 200  # characters of a STATUS= text (systemctl status shows one line)


class Notifier:
    def __init__(self, address: str | None):
        self.address = address or None
        self._failed = False
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = self._try(_open)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str = "") -> None:
        """The terminal serves: systemd's start job completes (Type=notify)."""
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        """One line for `systemctl status` (no card data: it reaches the system journal)."""
        self._send("", text)

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self, status: str = "") -> None:
        self._send("STOPPING=1", status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, assignment: str, status: str = "") -> None:
        lines = [assignment] if assignment else []
        if status:
            lines.append("STATUS=" + " ".join(status.split())[:STATUS_MAX])
        if self._sock is not None and lines:
            message = ("\n".join(lines) + "\n").encode()
            self._try(lambda: self._sock.sendto(message, _sockaddr(self.address)))

    def _try(self, action: Callable[[], object]):
        try:
            return action()
        except OSError as exc:
            level = logging.DEBUG if self._failed else logging.WARNING
            log.log(level, "systemd notify socket %s: %s", self.address, exc)
            self._failed = True
            return None


def _open() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


def _sockaddr(address: str) -> str:
    return "\0" + address[1:] if address.startswith("@") else address


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None: no watchdog."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6


async def watchdog_pings(notifier: Notifier, interval: float,
                         alive: Callable[[], bool]) -> None:
    """Loop task: WATCHDOG=1 now and every `interval` seconds while alive(); runs until
    cancelled. A false alive() skips the ping (logged), so systemd's watchdog fires."""
    while True:
        if alive():
            notifier.watchdog()
        else:
            log.error("terminal not alive: watchdog ping withheld")
        await asyncio.sleep(interval)


def link_status(online: bool | None, queued: int, alerts: int) -> str:
    """STATUS= text from the link state (firmware.saf.LinkState)."""
    link = {True: "online", False: "offline", None: "connecting"}[online]
    return f"{link}, {queued} queued, {alerts} alerts"
