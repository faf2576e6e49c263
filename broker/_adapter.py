"""The base class every adapter subclasses: its contract (see broker.hookspecs) and helpers.

An adapter is written as plain trio code::

    class MyAdapter(Adapter):
        async def run(self) -> None:          # produce: connect, read, emit
            ...
            self.emit([Envelope(source=self.name, body=...)])
        async def deliver(self, route, batch): # consume: send a batch to the peer
            ...

Its :class:`~broker._adapter_actor.AdapterActor` (a pykka actor served on the
:class:`~broker._loop.SharedLoop` the adapters share, or on a loop of its own when its
config says ``own_thread = true``) runs that code as trio tasks.  Envelopes for the
adapter arrive in the actor's mailbox, its :class:`~broker._inlet.Inlet` (bounded, per
route); what it produces goes to the router with a plain ``tell``.
If ``run`` or ``deliver`` raises, the instance ends, the actor reports the crash and
starts a fresh instance after a back-off; the inlet, and so everything queued,
survives the restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from broker._envelope import Envelope
from broker._inlet import Inlet
from broker._messages import (
    Backlog,
    Delivered,
    Failed,
    Inbound,
    Leftovers,
)

if TYPE_CHECKING:
    from broker._config import AdapterConfig, JunctionSettings

log = logging.getLogger("broker.adapter")


@dataclass
class AdapterStatus:
    """What a person wants to know about an adapter; written on its loop, read by any thread."""

    name: str
    type: str
    state: str = "stopped"
    detail: str = ""
    since: float = field(default_factory=time.time)
    restarts: int = 0
    reconnects: int = 0
    last_error: str = ""
    sent: int = 0
    received: int = 0
    #: False for an adapter whose state does not decide readiness (``required = false``).
    required: bool = True
    #: Numbers the adapter reports for ``/metrics`` by name (the Allxon adapter's
    #: ``allxon_budget_remaining_ratio``); a name is absent while it has no value.
    gauges: dict[str, float] = field(default_factory=dict)

    def set(self, state: str, detail: str = "") -> None:
        """A new state (``since`` is when the state last changed, not the detail)."""
        if state != self.state:
            self.since = time.time()
        self.state, self.detail = state, detail


@dataclass
class AdapterContext:
    """What the runtime gives an adapter: its settings, state dir and status.

    The way to the router is not part of it: an adapter reaches the router only through
    :class:`Adapter`'s ``emit``, ``publish``, ``ack``, ``fail`` and ``defer``.
    """

    #: Puts a message into the router's mailbox (internal: the Adapter helpers use it).
    _to_router: Callable[[Any], None]
    #: The adapter's mailbox (internal: the Adapter helpers record there what it owes).
    _inlet: Inlet
    settings: JunctionSettings
    status: AdapterStatus
    backlog: Backlog
    state_dir: Path
    #: Names of the routes that would take an envelope (pure, safe from any thread);
    #: lets an adapter refuse a request no route can carry (e.g. an Allxon command).
    routes_for: Callable[[Envelope], list[str]] = lambda env: []


class Adapter:
    """Base class of every adapter; subclasses override :meth:`run` and/or :meth:`deliver`.

    All methods run on the adapter's trio loop (shared with the router and the other
    adapters unless ``own_thread``): they must never block it.  ``emit`` never blocks; ``publish``
    waits (asynchronously) while the router is far behind, which is how a source that
    can pause reading passes back-pressure to its peer.
    """

    #: Set False in a subclass that cannot receive envelopes (a pure source).
    accepts_envelopes = True
    #: Set False in a subclass that never produces envelopes (a pure sink).
    produces_envelopes = True
    #: The most envelopes handed to one ``deliver`` call.
    max_batch = 512
    #: Seconds its actor lets envelopes gather once one reaches an empty queue, before it
    #: takes them: 0 hands each on at once. For a sink whose peer is paced anyway (Allxon
    #: sends on a call budget every few seconds): each wake-up of its trio loop costs about
    #: 50 µs of CPU, so at 1,000 envelopes a second, taking them every 20 ms instead of one
    #: by one is that much less CPU on a machine the other adapters share.
    gather_s = 0.0

    def __init__(self, name: str, config: AdapterConfig, ctx: AdapterContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.status = ctx.status
        self.log = logging.getLogger(f"junction.adapter.{name}")

    async def run(self) -> None:
        """Produce envelopes until cancelled.  Returning ends production, not the adapter."""
        await trio.sleep_forever()

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        """Send ``batch`` (envelopes of ``route``) to the peer.

        Return normally once the peer acknowledged them (that is when a ``persist`` route
        deletes them from the outbox); call :meth:`fail` for envelopes that can never be
        sent, and :meth:`defer` for those the peer will acknowledge later (then :meth:`ack`).
        Raising counts the whole batch as a transient failure and restarts the adapter.
        """
        raise NotImplementedError(f"adapter {self.name!r} does not accept envelopes")

    async def aclose(self) -> None:
        """Release resources; called once when the adapter stops or crashes."""

    def quiesce(self) -> bool:
        """Stop producing new envelopes (shutdown has begun); queued ones are still delivered.

        Return False (the default) to have :meth:`run` cancelled; an adapter whose
        connection also carries what it delivers returns True and stops emitting itself.
        """
        return False

    def release_deferred(self, crashed: bool) -> None:
        """This instance is gone with envelopes it deferred and never settled.

        After a crash they fail as transient (a persist route retries them, counting an
        attempt); after a clean stop (shutdown, reload) they are handed back like what
        was still queued: outbox rows wait for the next instance, memory envelopes are
        dead-lettered.
        """
        by_route = self.ctx._inlet.release_owed()
        if not by_route:
            return
        reason = "the adapter stopped before its peer acknowledged them"
        if crashed:
            for route, envs in by_route.items():
                self.fail(route, envs, reason, permanent=False)
        else:
            self.ctx._to_router(Leftovers(self.name, reason, envelopes=by_route))

    # --- helpers for subclasses -------------------------------------------------

    def emit(
        self, envelopes: Sequence[Envelope], on_settled: Callable[[], None] | None = None
    ) -> None:
        """Hand envelopes to the router (never blocks).

        ``on_settled``, for a source whose peer redelivers what it does not acknowledge:
        called once, on the router's loop (quick, thread-safe, never blocking), when every
        copy the routes made of these envelopes is delivered, kept in a ``persist`` outbox,
        dead-lettered or dropped by its route's policy (:mod:`broker._receipts`); then the
        source may acknowledge them to its peer.  An empty batch is settled at once.
        """
        if not envelopes:
            if on_settled is not None:
                on_settled()
            return
        batch = list(envelopes)
        self.ctx.backlog.add(len(batch))
        self.status.received += len(batch)
        self.ctx._to_router(Inbound(self.name, batch, on_settled))

    async def publish(
        self, envelopes: Sequence[Envelope], on_settled: Callable[[], None] | None = None
    ) -> None:
        """Like :meth:`emit`, but first waits while the router's backlog is over its mark."""
        await self.ctx.backlog.wait_room()
        self.emit(envelopes, on_settled)

    def fail(
        self, route: str, envelopes: Sequence[Envelope], reason: str, permanent: bool = True
    ) -> None:
        """Report envelopes that cannot be sent; the router dead-letters them with ``reason``.

        ``permanent=False`` says another attempt may succeed: a ``persist`` route retries
        it under its redelivery policy.
        """
        if envelopes:
            self.ctx._inlet.report(route, envelopes)
            self.ctx._to_router(
                Failed(route, self.name, list(envelopes), reason, retry=not permanent)
            )

    def defer(self, route: str, envelopes: Sequence[Envelope]) -> None:
        """Inside :meth:`deliver`: these are not acknowledged yet; :meth:`ack` them later.

        For a peer that acknowledges after ``deliver`` returns (a paced send): the envelopes
        stay pending -- in the outbox on a ``persist`` route -- until then.
        """
        self.ctx._inlet.defer(route, envelopes)

    def ack(self, route: str, envelopes: Sequence[Envelope]) -> None:
        """The peer acknowledged envelopes :meth:`defer`red earlier."""
        if envelopes:
            self.ctx._inlet.report(route, envelopes)
            self.status.sent += len(envelopes)
            self.ctx._to_router(Delivered(route, self.name, len(envelopes), list(envelopes)))
