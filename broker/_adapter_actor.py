"""The actor of one adapter name: its mailbox, its running instance, its restarts.

An :class:`AdapterActor` is the pykka actor behind every adapter (see broker._runtime for
the concurrency model): its mailbox is the adapter's :class:`~broker._inlet.Inlet`, and
beside it runs one :class:`~broker._adapter.Adapter` instance at a time -- restarted after a
crash, on the same inlet, after a back-off that is a trio sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from broker._adapter import Adapter, AdapterStatus
from broker._backoff import Backoff
from broker._envelope import Envelope
from broker._errors import JunctionError, unwrap
from broker._inlet import Inlet
from broker._loop import SharedLoop
from broker._loop_actor import LoopActor
from broker._messages import Delivered, Failed, Quiesce, describe
from broker._staleness import BEFORE_SENDING, is_stale, stale_reason

#: The crash and restart lines keep the logger name they always had.
log = logging.getLogger("broker.adapter")
#: Seconds an instance's ``aclose`` may take when it stops.
CLOSE_S = 10.0


class AdapterActor(LoopActor):
    """The actor of one adapter *name*: its mailbox, its running instance, its restarts.

    Served on a :class:`~broker._loop.SharedLoop` -- the one the adapters and the router
    share, or a loop of its own for ``own_thread = true``.  Its mailbox is the adapter's
    :class:`~broker._inlet.Inlet`: control messages (:class:`Quiesce`, ``stop``) and the
    envelopes the router queued for it.  Beside the mailbox it runs the current instance
    (built by ``make``) as a trio task: the instance's :meth:`Adapter.run` and, for a
    target, the delivery task that takes batches from the inlet.  When the instance
    raises, the actor reports the crash, waits its :class:`~broker._backoff.Backoff` (a
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
        try:
            while not self._stopping():
                adapter = self.adapter if self.generation == 0 else None
                self.backoff.started()
                if adapter is None:
                    try:
                        # off the loop: a constructor may read files or build TLS contexts
                        adapter = await trio.to_thread.run_sync(self.make)
                    except Exception as err:  # its constructor refused: a crash like any other
                        await self._crashed(err)
                        continue
                self.adapter = adapter
                self.generation += 1
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
        finally:
            if self.generation == 0 and self.adapter is not None:
                # stopped before its first instance ran: that instance still closes
                with trio.CancelScope(shield=True):
                    await self._close(self.adapter)
            if self._stopping():
                self.status.set("stopped")

    async def _crashed(self, error: BaseException) -> None:
        text = describe(error)
        repeat = self.status.last_error == text
        self.status.set("crashed", text)
        self.status.last_error = text
        # The traceback once; the same error again is one line, and so is a JunctionError
        # (raised on purpose, with the reason in its text: a traceback would bury it).
        log.error(
            "adapter %s crashed: %s%s",
            self.name,
            text,
            " (same error as last time)" if repeat else "",
            exc_info=None if repeat or isinstance(unwrap(error), JunctionError) else error,
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
        """``aclose``, shielded from the stop that ends the instance but bounded, so a stop
        is answered (within the runtime's 15 s) even when a peer hangs its close."""
        with trio.move_on_after(CLOSE_S, shield=True) as scope:
            try:
                await adapter.aclose()
            except Exception:
                log.exception("adapter %s: aclose failed", self.name)
        if scope.cancelled_caught:
            log.error("adapter %s: aclose did not finish within %.0f s", self.name, CLOSE_S)

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
        inlet, to_router = self.inlet, adapter.ctx._to_router
        while True:
            self._wake_event = trio.Event()
            item = inlet.take(adapter.max_batch)
            if item is None:
                await self._wake_event.wait()
                if adapter.gather_s:
                    await trio.sleep(adapter.gather_s)
                continue
            route, taken = item
            batch = self._drop_expired(adapter, route, taken)
            if not batch:
                inlet.settle_batch(route, taken)  # every one failed as stale: the call ends
                continue
            try:
                await adapter.deliver(route, batch)
            except BaseException as err:
                rest = inlet.settle_batch(route, taken)
                if _only_cancelled(err):  # stopped mid-batch (a nursery groups its Cancelled)
                    inlet.requeue(route, rest)
                else:
                    to_router(
                        Failed(
                            route, adapter.name, rest, f"adapter raised {describe(err)}", retry=True
                        )
                    )
                raise
            sent = inlet.settle_batch(route, taken)
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
