"""Messages actors send each other (internal; not part of the plugin contract)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from broker.envelope import Envelope
from broker.errors import unwrap


@dataclass(frozen=True, slots=True)
class Inbound:
    """An adapter hands the router a batch of envelopes it produced."""

    source: str
    envelopes: list[Envelope]


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
    own thread, so nothing refills it meanwhile) and, with ``remove``, forgets the inlet.
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
class Crashed:
    """An adapter's loop ended with an error; the supervisor restarts it."""

    adapter: str
    generation: int
    error: str


@dataclass(frozen=True, slots=True)
class RestartDue:
    """The supervisor's back-off for ``adapter`` has elapsed."""

    adapter: str
    generation: int


class Backlog:
    """Envelopes handed to the router and not yet processed, for source back-pressure."""

    def __init__(self, high_water: int = 20_000) -> None:
        self.high_water = high_water
        self._value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._value += n

    def sub(self, n: int) -> None:
        with self._lock:
            self._value -= n

    @property
    def value(self) -> int:
        return self._value

    def over(self) -> bool:
        return self._value > self.high_water


def describe(obj: Any) -> str:
    """A short text for an exception (single-error groups unwrapped), for a log line."""
    if isinstance(obj, BaseExceptionGroup):
        obj = unwrap(obj)
    text = f"{type(obj).__name__}: {obj}" if isinstance(obj, BaseException) else str(obj)
    return text if len(text) <= 300 else text[:297] + "..."
