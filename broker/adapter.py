"""Adapters: the base class protocol adapters subclass, and the actor that hosts one.

An adapter is written as plain trio code::

    class MyAdapter(Adapter):
        async def run(self) -> None:          # produce: connect, read, emit
            ...
            self.emit([Envelope(source=self.name, body=...)])
        async def deliver(self, route, batch): # consume: send a batch to the peer
            ...

Its :class:`AdapterHost` (a pykka actor) runs that code as a task on the
:class:`~broker.loop.SharedLoop` the adapters share, or in a trio loop on a thread of
its own when its config says ``own_thread = true``.  Envelopes for the adapter arrive
through its :class:`~broker.inlet.Inlet` (bounded, per route); what it produces goes to
the router with a plain ``tell``.
If ``run`` or ``deliver`` raises, the loop ends, the host reports the crash and the
supervisor starts a fresh instance after a back-off; the inlet, and so everything
queued, survives the restart.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka
import trio

from broker.envelope import Envelope
from broker.inlet import Inlet
from broker.loop import SharedLoop
from broker.messages import (
    Backlog,
    Crashed,
    Delivered,
    Failed,
    Inbound,
    Leftovers,
    describe,
)

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
    """What the runtime gives an adapter: its router, settings, state dir and status."""

    router: pykka.ActorRef[Any]
    settings: JunctionSettings
    status: AdapterStatus
    backlog: Backlog
    state_dir: Path
    #: Names of the routes that would take an envelope (pure, safe from any thread);
    #: lets an adapter refuse a request no route can carry (e.g. an Allxon command).
    routes_for: Callable[[Envelope], list[str]] = lambda env: []


class Adapter:
    """Base class of every adapter; subclasses override :meth:`run` and/or :meth:`deliver`.

    All methods run on the adapter's trio thread.  ``emit`` never blocks; ``publish``
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
        # ids of the envelopes fail()ed or defer()red during the current deliver() call,
        # so they are not also counted as delivered (None outside a deliver call)
        self._settled_in_deliver: set[int] | None = None
        # envelopes defer()red and not yet ack()ed or fail()ed, by id(): what this instance
        # owes the router when it stops
        self._deferred: dict[int, tuple[str, Envelope]] = {}

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
        owed, self._deferred = self._deferred, {}
        by_route: dict[str, list[Envelope]] = {}
        for route, env in owed.values():
            by_route.setdefault(route, []).append(env)
        if not by_route:
            return
        reason = "the adapter stopped before its peer acknowledged them"
        if crashed:
            for route, envs in by_route.items():
                self.fail(route, envs, reason, permanent=False)
        else:
            self.ctx.router.tell(Leftovers(self.name, reason, envelopes=by_route))

    # --- helpers for subclasses -------------------------------------------------

    def emit(self, envelopes: Sequence[Envelope]) -> None:
        """Hand envelopes to the router (never blocks)."""
        if not envelopes:
            return
        batch = list(envelopes)
        self.ctx.backlog.add(len(batch))
        self.status.received += len(batch)
        self.ctx.router.tell(Inbound(self.name, batch))

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Like :meth:`emit`, but first waits while the router's backlog is over its mark."""
        while self.ctx.backlog.over():
            await trio.sleep(0.002)
        self.emit(envelopes)

    def fail(
        self, route: str, envelopes: Sequence[Envelope], reason: str, permanent: bool = True
    ) -> None:
        """Report envelopes that cannot be sent; the router dead-letters them with ``reason``.

        ``permanent=False`` says another attempt may succeed: a ``persist`` route retries
        it under its redelivery policy.
        """
        if envelopes:
            if self._settled_in_deliver is not None:
                self._settled_in_deliver.update(id(e) for e in envelopes)
            for env in envelopes:
                self._deferred.pop(id(env), None)
            self.ctx.router.tell(
                Failed(route, self.name, list(envelopes), reason, retry=not permanent)
            )

    def defer(self, route: str, envelopes: Sequence[Envelope]) -> None:
        """Inside :meth:`deliver`: these are not acknowledged yet; :meth:`ack` them later.

        For a peer that acknowledges after ``deliver`` returns (a paced send): the envelopes
        stay pending -- in the outbox on a ``persist`` route -- until then.
        """
        if self._settled_in_deliver is not None:
            self._settled_in_deliver.update(id(e) for e in envelopes)
        for env in envelopes:
            self._deferred[id(env)] = (route, env)

    def ack(self, route: str, envelopes: Sequence[Envelope]) -> None:
        """The peer acknowledged envelopes :meth:`defer`red earlier."""
        if envelopes:
            for env in envelopes:
                self._deferred.pop(id(env), None)
            self.status.sent += len(envelopes)
            self.ctx.router.tell(Delivered(route, self.name, len(envelopes), list(envelopes)))


class AdapterHost(pykka.ThreadingActor):
    """Runs one adapter instance on a trio loop, and stops it symmetrically.

    With a ``loop``, the instance is a task on that shared loop; without one, it gets a
    ``trio.run`` on a thread of its own.  Either way a crash is reported to the supervisor
    and never ends anything but this instance.
    """

    use_daemon_thread = True

    def __init__(
        self,
        adapter: Adapter,
        inlet: Inlet,
        supervisor: pykka.ActorRef[Any] | None,
        generation: int,
        loop: SharedLoop | None = None,
    ) -> None:
        super().__init__()
        self.adapter = adapter
        self.loop = loop
        self.inlet = inlet
        self.supervisor = supervisor
        self.generation = generation
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._started = threading.Event()
        self._done = threading.Event()
        self._main_scope: trio.CancelScope | None = None
        self._source_scope: trio.CancelScope | None = None
        self._wake_event: trio.Event | None = None
        self._stopping = False

    # --- pykka lifecycle --------------------------------------------------------

    def on_start(self) -> None:
        name = self.adapter.name
        if self.loop is not None:
            self._token = self.loop.token
            self.loop.spawn(self._task_main, f"adapter-{name}")
        else:
            self._thread = threading.Thread(
                target=self._thread_main, name=f"adapter-{name}", daemon=True
            )
            self._thread.start()
        self._started.wait(10)

    def on_stop(self) -> None:
        self._shutdown_loop()

    def on_failure(self, *exc_info: Any) -> None:
        self._shutdown_loop()

    def on_receive(self, message: Any) -> Any:
        if message == "quiesce":
            self._call_soon(self._quiesce)
            return True
        return None

    # --- the trio side ----------------------------------------------------------

    def _thread_main(self) -> None:
        error: BaseException | None = None
        try:
            trio.run(self._trio_main)
        except BaseException as err:
            error = err
        finally:
            self._finish(error)

    async def _task_main(self) -> None:
        """The instance as a task on the shared loop: its errors end it, not the loop."""
        assert self.loop is not None
        error: BaseException | None = None
        try:
            await self._trio_main()
        except BaseException as err:
            if self.loop.closing:  # the loop is being stopped: a stop, not a crash
                self._stopping = True
                self._finish(None)
                raise
            error = err
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        """The instance's loop or task ended: hand back what it owed, report a crash."""
        status = self.adapter.status
        try:
            self.inlet.detach()
            self._started.set()
            try:
                self.adapter.release_deferred(crashed=error is not None and not self._stopping)
            except Exception:  # the router is gone (shutdown's end): nothing left to tell
                log.debug("adapter %s: deferred envelopes not released", self.adapter.name)
        finally:
            self._done.set()
        if error is not None and not self._stopping:
            text = describe(error)
            repeat = status.last_error == text
            status.set("crashed", text)
            status.last_error = text
            # The traceback once; the same error again is one line.
            log.error(
                "adapter %s crashed: %s%s",
                self.adapter.name,
                text,
                " (same error as last time)" if repeat else "",
                exc_info=None if repeat else error,
            )
            if self.supervisor is not None:
                self.supervisor.tell(Crashed(self.adapter.name, self.generation, describe(error)))
        elif not self._stopping:
            status.set("stopped", "its loop ended")

    async def _trio_main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._wake_event = trio.Event()
        self.adapter.status.set("running")
        try:
            async with trio.open_nursery() as nursery:
                self._main_scope = nursery.cancel_scope
                if self.adapter.accepts_envelopes:
                    nursery.start_soon(self._pump)
                nursery.start_soon(self._run_source)
                self.inlet.attach(self._schedule_wake)
                self._started.set()
        finally:
            with trio.CancelScope(shield=True):
                await self.adapter.aclose()

    async def _run_source(self) -> None:
        with trio.CancelScope() as scope:
            self._source_scope = scope
            await self.adapter.run()

    def _quiesce(self) -> None:
        # Runs on the trio loop: must never raise.
        try:
            handled = self.adapter.quiesce()
        except Exception:
            log.exception("adapter %s failed to quiesce; cancelling its loop", self.adapter.name)
            handled = False
        if not handled and self._source_scope is not None:
            self._source_scope.cancel()

    def _schedule_wake(self) -> None:
        # the router offers on the shared loop's thread: an adapter on that loop is woken
        # at once (call_soon); one on a thread of its own through its token
        if self.loop is not None:
            if not self.loop.call_soon(self._wake):
                raise RuntimeError("loop not running")
            return
        token = self._token
        if token is None:
            raise RuntimeError("loop not running")
        token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        # Runs on the trio loop: must never raise (that would kill the whole run).
        try:
            if self._wake_event is not None:
                self._wake_event.set()
        except Exception:  # pragma: no cover - Event.set cannot fail today
            log.exception("wake-up failed for %s", self.adapter.name)

    async def _pump(self) -> None:
        adapter, inlet, router = self.adapter, self.inlet, self.adapter.ctx.router
        while True:
            self._wake_event = trio.Event()
            item = inlet.take(adapter.max_batch)
            if item is None:
                await self._wake_event.wait()
                if adapter.gather_s:
                    await trio.sleep(adapter.gather_s)
                continue
            route, batch = item
            batch = self._drop_expired(route, batch)
            if not batch:
                continue
            settled: set[int] = set()
            adapter._settled_in_deliver = settled
            try:
                await adapter.deliver(route, batch)
            except trio.Cancelled:
                adapter._settled_in_deliver = None
                inlet.requeue(route, [e for e in batch if id(e) not in settled])
                raise
            except BaseException as err:
                adapter._settled_in_deliver = None
                rest = [e for e in batch if id(e) not in settled]
                router.tell(
                    Failed(route, adapter.name, rest, f"adapter raised {describe(err)}", retry=True)
                )
                raise
            adapter._settled_in_deliver = None
            sent = batch if not settled else [e for e in batch if id(e) not in settled]
            adapter.status.sent += len(sent)
            if sent:
                router.tell(Delivered(route, adapter.name, len(sent), sent))

    def _drop_expired(self, route: str, batch: list[Envelope]) -> list[Envelope]:
        """Fail envelopes whose deadline passed while they waited (stale); keep the rest."""
        now = 0.0
        expired: list[Envelope] = []
        for env in batch:
            if env.deadline is not None:
                now = now or time.time()
                if env.deadline <= now:
                    expired.append(env)
        if not expired:
            return batch
        self.adapter.fail(route, expired, "stale: its deadline passed before it could be sent")
        return [e for e in batch if e.deadline is None or e.deadline > now]

    # --- stopping ---------------------------------------------------------------

    def _call_soon(self, fn: Any) -> None:
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn)

    def _shutdown_loop(self) -> None:
        self._stopping = True
        self._call_soon(self._cancel_all)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
            if self._thread.is_alive():
                log.error("adapter %s did not stop within 10 s", self.adapter.name)
        elif self.loop is not None and self._started.is_set() and not self._done.wait(10):
            log.error("adapter %s did not stop within 10 s", self.adapter.name)
        self.adapter.status.set("stopped")

    def _cancel_all(self) -> None:
        if self._main_scope is not None:
            self._main_scope.cancel()
