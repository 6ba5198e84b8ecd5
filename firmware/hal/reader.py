"""Card reader contract: presence events in, APDUs out (DESIGN §3).

`attach(post)` is called once on the loop; the backend then calls `post(CardInserted())` /
`post(CardRemoved())` from any thread. `transmit(apdu)` is blocking and is only called on
the reader's worker thread; it returns response data + SW1 SW2 and raises OSError when the
card is gone. `contactless` tells whether the presented card was tapped.
"""
from __future__ import annotations

from typing import Callable, Protocol

__all__ = ["CardReader"]


class CardReader(Protocol):
    contactless: bool

    def attach(self, post: Callable[[object], None]) -> None: ...

    def present(self) -> bool: ...

    def transmit(self, apdu: bytes) -> bytes: ...

    def close(self) -> None: ...
