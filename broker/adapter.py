"""Adapters: the base class protocol adapters subclass, and the actor that runs one.

An adapter is written as plain trio code::

    class MyAdapter(Adapter):
        async def run(self) -> None:          # produce: connect, read, emit
            ...
            self.emit([Envelope(source=self.name, body=...)])
        async def deliver(self, route, batch): # consume: send a batch to the peer
            ...

Its :class:`AdapterActor` (a pykka actor served on the
:class:`~broker.loop.SharedLoop` the adapters share, or on a loop of its own when its
config says ``own_thread = true``) runs that code as trio tasks.  Envelopes for the
adapter arrive in the actor's mailbox, its :class:`~broker.inlet.Inlet` (bounded, per
route); what it produces goes to the router with a plain ``tell``.
If ``run`` or ``deliver`` raises, the instance ends, the actor reports the crash and
starts a fresh instance after a back-off; the inlet, and so everything queued,
survives the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from broker.backoff import Backoff
from broker.envelope import Envelope
from broker.inlet import Inlet
from broker.loop import SharedLoop
from broker.loop_actor import LoopActor
from broker.messages import (
    Backlog,
    Delivered,
    Failed,
    Inbound,
    Leftovers,
    Quiesce,
    describe,
)
from broker.staleness import BEFORE_SENDING, is_stale, stale_reason

if TYPE_CHECKING:
    from broker.config import AdapterConfig, JunctionSettings

log = logging.getLogger(__name__)


@dataclass
class AdapterStatus:
    """What a person wants to know about an adapter; written by its thread, read by any."""

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

    def set(self, state: str, detail: str = "") -> None:
        if state != self.state or detail != self.detail:
            self.state, self.detail, self.since = state, detail, time.time()


@dataclass
class AdapterContext:
    """What the runtime gives an adapter: its settings, state dir and status.

    The way to the router is not part of it: an adapter reaches the router only through
    :class:`Adapter`'s ``emit``, ``publish``, ``ack``, ``fail`` and ``defer``.
    """

    #: Puts a message into the router's mailbox (internal: the Adapter helpers use it).
    to_router: Callable[[Any], None]
    #: The adapter's mailbox (internal: the Adapter helpers record there what it owes).
    inlet: Inlet
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
    #: Seconds the host lets envelopes gather once one reaches an empty queue, before it
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
        by_route = self.ctx.inlet.release_owed()
        if not by_route:
            return
        reason = "the adapter stopped before its peer acknowledged them"
        if crashed:
            for route, envs in by_route.items():
                self.fail(route, envs, reason, permanent=False)
        else:
            self.ctx.to_router(Leftovers(self.name, reason, envelopes=by_route))

    # --- helpers for subclasses -------------------------------------------------

    def emit(self, envelopes: Sequence[Envelope]) -> None:
        """Hand envelopes to the router (never blocks)."""
        if not envelopes:
            return
        batch = list(envelopes)
        self.ctx.backlog.add(len(batch))
        self.status.received += len(batch)
        self.ctx.to_router(Inbound(self.name, batch))

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Like :meth:`emit`, but first waits while the router's backlog is over its mark."""
        await self.ctx.backlog.wait_room()
        self.emit(envelopes)

    def fail(
        self, route: str, envelopes: Sequence[Envelope], reason: str, permanent: bool = True
    ) -> None:
        """Report envelopes that cannot be sent; the router dead-letters them with ``reason``.

        ``permanent=False`` says another attempt may succeed: a ``persist`` route retries
        it under its redelivery policy.
        """
        if envelopes:
            self.ctx.inlet.report(route, envelopes)
            self.ctx.to_router(
                Failed(route, self.name, list(envelopes), reason, retry=not permanent)
            )

    def defer(self, route: str, envelopes: Sequence[Envelope]) -> None:
        """Inside :meth:`deliver`: these are not acknowledged yet; :meth:`ack` them later.

        For a peer that acknowledges after ``deliver`` returns (a paced send): the envelopes
        stay pending -- in the outbox on a ``persist`` route -- until then.
        """
        self.ctx.inlet.defer(route, envelopes)

    def ack(self, route: str, envelopes: Sequence[Envelope]) -> None:
        """The peer acknowledged envelopes :meth:`defer`red earlier."""
        if envelopes:
            self.ctx.inlet.report(route, envelopes)
            self.status.sent += len(envelopes)
            self.ctx.to_router(Delivered(route, self.name, len(envelopes), list(envelopes)))


class AdapterActor(LoopActor):
    """The actor of one adapter *name*: its mailbox, its running instance, its restarts.

    Served on a :class:`~broker.loop.SharedLoop` -- the one the adapters and the router
    share, or a loop of its own for ``own_thread = true``.  Its mailbox is the adapter's
    :class:`~broker.inlet.Inlet`: control messages (:class:`Quiesce`, ``stop``) and the
    envelopes the router queued for it.  Beside the mailbox it runs the current instance
    (built by ``make``) as a trio task: the instance's :meth:`Adapter.run` and, for a
    target, the delivery task that takes batches from the inlet.  When the instance
    raises, the actor reports the crash, waits its :class:`~broker.backoff.Backoff` (a
    trio sleep) and runs a fresh instance on the same inlet, so nothing queued is lost.
    ``stop`` cancels the instance, waits for its ``aclose``, hands back what it owed, and
    is answered only then.
    """

    def __init__(
        self,
        name: str,
        make: Callable[[], Adapter],
        inlet: Inlet,
        status: AdapterStatus,
        backoff: Backoff,
        *,
        loop: SharedLoop,
        first: Adapter | None = None,
        running: threading.Event | None = None,
    ) -> None:
        super().__init__(loop=loop, mailbox=inlet)
        self.name = name
        self.make = make
        self.inlet = inlet
        self.status = status
        self.backoff = backoff
        #: the instance running now (or the last one); tests and reload read it
        self.adapter: Adapter | None = first
        self.generation = 0
        #: set once the first instance takes envelopes, or has crashed (start waits for it)
        self.running = running or threading.Event()
        self._source_scope: trio.CancelScope | None = None
        self._instance_scope: trio.CancelScope | None = None
        self._wake_event: trio.Event | None = None
        self._quiesced = False

    # --- the mailbox --------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Quiesce):
            self._quiesce()
            return True
        return super().on_receive(message)

    def _quiesce(self) -> None:
        self._quiesced = True
        adapter = self.adapter
        try:
            handled = adapter.quiesce() if adapter is not None else False
        except Exception:
            log.exception("adapter %s failed to quiesce; cancelling its source", self.name)
            handled = False
        if not handled and self._source_scope is not None:
            self._source_scope.cancel()

    # --- the instance and its restarts ----------------------------------------------

    def on_stop(self) -> None:
        # on the loop, from the stop message: end the instance; run_beside then returns
        if self._instance_scope is not None:
            self._instance_scope.cancel()

    def _stopping(self) -> bool:
        return self.actor_stopped.is_set() or (self.loop is not None and self.loop.closing)

    async def run_beside(self) -> None:
        """Run instances one after the other until the actor stops (see the class doc)."""
        while not self._stopping():
            adapter = self.adapter if self.generation == 0 else None
            if adapter is None:
                try:
                    adapter = self.make()
                except Exception as err:  # its constructor refused: a crash like any other
                    await self._crashed(err)
                    continue
            self.adapter = adapter
            self.generation += 1
            self.backoff.started()
            if self.generation > 1:
                log.info("adapter %s restarted (generation %d)", self.name, self.generation)
            error = await self._run_instance(adapter)
            if self._stopping():
                return
            if error is None:
                self.status.set("stopped", "its loop ended")
                self.running.set()
                await trio.sleep_forever()  # until stop: nothing runs, the inlet keeps
            else:
                await self._crashed(error)

    async def _crashed(self, error: BaseException) -> None:
        text = describe(error)
        repeat = self.status.last_error == text
        self.status.set("crashed", text)
        self.status.last_error = text
        # The traceback once; the same error again is one line.
        log.error(
            "adapter %s crashed: %s%s",
            self.name,
            text,
            " (same error as last time)" if repeat else "",
            exc_info=None if repeat else error,
        )
        ran = self.backoff.lasted()
        delay = self.backoff.failed()
        self.status.restarts += 1
        self.status.set("restarting", f"in {delay:.1f} s after: {text}")
        log.warning(
            "adapter %s crashed after %.1f s (%s); restart %d in %.1f s",
            self.name,
            ran,
            text,
            self.backoff.failures,
            delay,
        )
        self.running.set()  # a start() waiting for the first instance waits no longer
        await trio.sleep(delay)

    async def _run_instance(self, adapter: Adapter) -> BaseException | None:
        """Run one instance until it ends; its error, or None when it ended by itself or
        was stopped.  The instance always closes and hands back what it owed."""
        adapter.status.set("running")
        error: BaseException | None = None
        with trio.CancelScope() as self._instance_scope:
            try:
                async with trio.open_nursery() as nursery:
                    if adapter.accepts_envelopes:
                        nursery.start_soon(self._deliver_from_inlet, adapter)
                    nursery.start_soon(self._run_source, adapter)
                    self.inlet.attach(self._schedule_wake)
                    self.running.set()
            except BaseException as err:  # the instance's bug ends it, never the loop
                if not self._stopping():
                    error = err
                elif not _only_cancelled(err):
                    log.error("adapter %s failed while stopping: %s", self.name, describe(err))
            finally:
                self._instance_scope = None
                self.inlet.detach()
                with trio.CancelScope(shield=True):
                    await self._close(adapter)
                crashed = error is not None and not self._stopping()
                try:
                    adapter.release_deferred(crashed=crashed)
                except Exception:  # the router is gone (shutdown's end): nothing left to tell
                    log.debug("adapter %s: deferred envelopes not released", self.name)
                if self._stopping():
                    self.status.set("stopped")
        return error

    async def _close(self, adapter: Adapter) -> None:
        try:
            await adapter.aclose()
        except Exception:
            log.exception("adapter %s: aclose failed", self.name)

    async def _run_source(self, adapter: Adapter) -> None:
        with trio.CancelScope() as scope:
            self._source_scope = scope
            if self._quiesced and not adapter.quiesce():
                return  # shutdown began before this instance: it produces nothing
            await adapter.run()

    def _schedule_wake(self) -> None:
        # called by the inlet, on any thread, at most once per idle period
        assert self.loop is not None
        if not self.loop.call_soon(self._wake):
            raise RuntimeError("loop not running")

    def _wake(self) -> None:
        # a trio callback (or inline on the loop's thread): must never raise
        if self._wake_event is not None:
            self._wake_event.set()

    async def _deliver_from_inlet(self, adapter: Adapter) -> None:
        inlet, to_router = self.inlet, adapter.ctx.to_router
        while True:
            self._wake_event = trio.Event()
            item = inlet.take(adapter.max_batch)
            if item is None:
                await self._wake_event.wait()
                if adapter.gather_s:
                    await trio.sleep(adapter.gather_s)
                continue
            route, batch = item
            batch = self._drop_expired(adapter, route, batch)
            if not batch:
                continue
            try:
                await adapter.deliver(route, batch)
            except trio.Cancelled:
                inlet.requeue(route, inlet.settle_batch(route, batch))
                raise
            except BaseException as err:
                rest = inlet.settle_batch(route, batch)
                to_router(
                    Failed(route, adapter.name, rest, f"adapter raised {describe(err)}", retry=True)
                )
                raise
            sent = inlet.settle_batch(route, batch)
            adapter.status.sent += len(sent)
            if sent:
                to_router(Delivered(route, adapter.name, len(sent), sent))

    @staticmethod
    def _drop_expired(adapter: Adapter, route: str, batch: list[Envelope]) -> list[Envelope]:
        """Fail envelopes whose deadline passed while they waited (stale); keep the rest."""
        if all(env.deadline is None for env in batch):
            return batch
        now = time.time()
        expired = [env for env in batch if is_stale(env, now)]
        if expired:
            adapter.fail(route, expired, stale_reason(BEFORE_SENDING))
            return [env for env in batch if not is_stale(env, now)]
        return batch


def _only_cancelled(err: BaseException) -> bool:
    """True for a trio cancellation, alone or in (nested) nursery groups."""
    if isinstance(err, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in err.exceptions)
    return isinstance(err, trio.Cancelled)
