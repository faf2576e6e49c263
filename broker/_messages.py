"""Messages actors send each other (internal; not part of the plugin contract)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from broker._envelope import Envelope
from broker._errors import unwrap


@dataclass(frozen=True, slots=True)
class Inbound:
    """An adapter hands the router a batch of envelopes it produced.

    ``on_settled``: called once when the router is done with every copy of the batch
    (see :mod:`broker._receipts`); None: the source does not need to know."""

    source: str
    envelopes: list[Envelope]
    on_settled: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Delivered:
    """A target adapter's peer acknowledged ``count`` envelopes of ``route`` (those listed)."""

    route: str
    target: str
    count: int
    envelopes: list[Envelope] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Failed:
    """A target adapter could not send these envelopes; the router dead-letters them."""

    route: str
    target: str
    envelopes: list[Envelope]
    reason: str
    #: True: a transient failure (the adapter crashed mid-batch) that a persist route retries.
    retry: bool = False


@dataclass(frozen=True, slots=True)
class Leftovers:
    """Target ``target`` stopped: the router keeps what is in the outbox for later and
    dead-letters the rest with ``reason``. ``envelopes`` (by queue) are ones the adapter
    held unacknowledged; without them the router empties the target's inlet itself (on its
    loop, between two of its messages, so nothing refills it meanwhile) and, with
    ``remove``, forgets the inlet.
    Answered with ({queue: kept}, {queue: dead-lettered})."""

    target: str
    reason: str
    envelopes: dict[str, list[Envelope]] | None = None
    remove: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic wake-up for the router (reply deadlines)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Ask the router for its counters (answered with a dict)."""


@dataclass(frozen=True, slots=True)
class Quiesce:
    """Shutdown began: the adapter stops producing; what is queued for it is still sent."""


class Backlog:
    """Envelopes handed to the router and not yet routed: the fill level of the router's
    mailbox, in envelopes.  A source that can pause its peer waits in :meth:`wait_room`
    while it is over ``high_water`` -- the one way a source is slowed down."""

    def __init__(self, high_water: int = 20_000) -> None:
        self.high_water = high_water
        self._value = 0
        self._lock = threading.Lock()
        #: sources waiting for room: (their loop's token, the event to set)
        self._waiters: list[tuple[trio.lowlevel.TrioToken, trio.Event]] = []

    def add(self, n: int) -> None:
        with self._lock:
            self._value += n

    def sub(self, n: int) -> None:
        with self._lock:
            self._value -= n
            if not self._waiters or self._value > self.high_water:
                return
            waiters, self._waiters = self._waiters, []
        for token, event in waiters:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

    @property
    def value(self) -> int:
        return self._value

    async def wait_room(self) -> None:
        """Return once the router's mailbox is at or under its mark (at once if it is)."""
        while self._value > self.high_water:
            event = trio.Event()
            with self._lock:
                if self._value <= self.high_water:
                    return
                self._waiters.append((trio.lowlevel.current_trio_token(), event))
            await event.wait()


def describe(obj: Any) -> str:
    """A short text for an exception (single-error groups unwrapped), for a log line."""
    if isinstance(obj, BaseExceptionGroup):
        obj = unwrap(obj)
    text = f"{type(obj).__name__}: {obj}" if isinstance(obj, BaseException) else str(obj)
    return text if len(text) <= 300 else text[:297] + "..."
