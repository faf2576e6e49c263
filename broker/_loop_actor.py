"""A pykka actor served by a task on a trio loop instead of a thread of its own.

Every actor of Junction is one: the router and every adapter (see broker._runtime).
Why: their messages come almost all from each other, on the :class:`~broker._loop.SharedLoop`.
As threaded actors, every batch crossed to the receiver's thread and every result
crossed back: two futex wakes and two GIL hand-overs per hop, and the woken side waits for
the GIL while the other runs (measured in bench/e2e.py at 1,000 msg/s: the hop to a
threaded router alone had a p99 of 1.5 ms).  On the loop, a ``tell`` from a loop task is
an append and an event; only other threads pay a cross-thread wake.

It is still a pykka actor: ``tell``, ``ask`` (from other threads: a future that a loop
task waits on would block the loop), ``stop``, ``is_alive`` and the registry behave as
for a :class:`pykka.ThreadingActor`.  What the actor must do in exchange: handle every
message without blocking (no waiting on locks or futures; short, bounded work only), and
when it has to wait (room in a full queue), say so through :meth:`LoopActor.blocked` and
wait in :meth:`LoopActor.wait_unblocked`, which is async and lets the loop run meanwhile.
An actor with long-running work of its own (an adapter's connection) runs it in
:meth:`LoopActor.run_beside`, a task beside its mailbox; ``stop`` cancels it and is
answered once it has ended.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka
import trio
from pykka import ActorRegistry
from pykka.messages import _ActorStop

from broker._loop import SharedLoop

log = logging.getLogger("broker.loop_actor")

#: Messages handled in a row, or seconds spent, before the actor lets the loop's other
#: tasks run (whichever comes first): a flood into the router must not starve the adapters.
BURST = 64
SLICE_S = 0.002


class Mailbox:
    """An actor's mailbox: what ``tell``, ``ask`` and ``stop`` put in, thread-safe, and
    the one wake-up of the actor's task while it waits for mail.

    Unbounded, as pykka's own inboxes are (a bounded ``put`` would block the sender's
    thread, which may be the loop itself): what must be bounded travels in a mailbox that
    also has bounded lanes (an adapter's :class:`~broker._inlet.Inlet`), or is counted
    by its sender (the router's :class:`~broker._messages.Backlog`).
    """

    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.lock = threading.Lock()
        #: set by the serving task while it waits for mail; the next put calls it once
        self.waker: Callable[[], None] | None = None

    def put(self, envelope: Any, /) -> None:
        with self.lock:
            self.items.append(envelope)
            waker, self.waker = self.waker, None
        if waker is not None:
            waker()

    def get(self) -> Any:
        return self.items.popleft()

    def empty(self) -> bool:
        return not self.items


#: Threads of the loops LoopActors are served on: a future waited on there never completes.
_SERVING_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


class _LoopFuture(pykka.ThreadingFuture[Any]):
    """A threading future that refuses to wait on a thread serving a LoopActor."""

    def get(self, *, timeout: float | None = None) -> Any:
        if self._result is None and threading.current_thread() in _SERVING_THREADS:
            raise RuntimeError(
                "waiting for an actor's answer on the trio loop that serves the router would "
                "deadlock it: tell, and take the answer as a message, instead"
            )
        return super().get(timeout=timeout)


class LoopActor(pykka.Actor):
    """A pykka actor whose messages a task on ``loop`` handles, in order, one at a time.

    Start it with ``start(..., loop=<a running SharedLoop>)``.
    """

    actor_inbox: Mailbox

    def __init__(
        self,
        *args: Any,
        loop: SharedLoop | None = None,
        mailbox: Mailbox | None = None,
        **kwargs: Any,
    ) -> None:
        self.loop = loop
        #: a mailbox that outlives this actor (an adapter's inlet), or None for a new one
        self._given_mailbox = mailbox
        super().__init__(*args, **kwargs)
        #: stop requests answered once the actor's tasks have ended (see _serve)
        self._stop_replies: list[pykka.Future[Any]] = []

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]  # pykka calls it on self
        return self._given_mailbox if self._given_mailbox is not None else Mailbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return _LoopFuture()

    def _start_actor_loop(self) -> None:
        loop = self.loop
        if loop is None or loop.thread is None:
            raise RuntimeError(f"{type(self).__name__} needs a running loop: start(..., loop=)")
        _SERVING_THREADS.add(loop.thread)
        loop.spawn(self._serve, type(self).__name__.lower())

    # --- what a subclass may override ---------------------------------------------------

    def blocked(self) -> bool:
        """True when the actor must wait (in :meth:`wait_unblocked`) before its next message."""
        return False

    async def wait_unblocked(self) -> None:
        """Wait, letting the loop run, until :meth:`blocked` is False."""

    def turn_ended(self) -> float | None:
        """A run of messages ends: the actor is about to wait or to let the loop run others
        (the router commits its outbox writes here). Returns None, or in how many seconds
        the actor wants this called again even if no mail comes. The default does nothing."""
        return None

    async def run_beside(self) -> None:
        """The actor's own long-running work (an adapter's connection), as a task beside
        its mailbox; cancelled when the actor stops, and the stop is answered only once it
        has ended.  The default has none."""

    # --- the serving task -----------------------------------------------------------------

    async def _serve(self) -> None:
        stopped = self.actor_stopped
        try:
            async with trio.open_nursery() as nursery:
                self._actor_loop_setup()
                if type(self).run_beside is not LoopActor.run_beside:
                    nursery.start_soon(self.run_beside)
                await self._serve_mailbox()
                nursery.cancel_scope.cancel()
        finally:
            self.actor_inbox.waker = None
            if not stopped.is_set():  # the loop is closing under it
                self._stop()
            self._actor_loop_teardown()
            replies, self._stop_replies = self._stop_replies, []
            for reply in replies:
                reply.set(None)

    async def _serve_mailbox(self) -> None:
        inbox = self.actor_inbox
        stopped = self.actor_stopped
        while not stopped.is_set():
            if not inbox.items:
                again = self.turn_ended()
                wake = trio.Event()
                with inbox.lock:
                    if not inbox.items:
                        inbox.waker = self._waker(wake)
                if inbox.waker is not None:
                    if again is None:
                        await wake.wait()
                    else:
                        with trio.move_on_after(again):
                            await wake.wait()
                continue
            began, handled = time.perf_counter(), 0
            while inbox.items and not stopped.is_set():
                self._handle_envelope(inbox.items.popleft())
                handled += 1
                if self.blocked():
                    self.turn_ended()
                    await self.wait_unblocked()
                if handled >= BURST or time.perf_counter() - began > SLICE_S:
                    self.turn_ended()
                    await trio.lowlevel.checkpoint()
                    began, handled = time.perf_counter(), 0
        self.turn_ended()

    def _waker(self, wake: trio.Event) -> Callable[[], None]:
        loop = self.loop
        assert loop is not None

        def waker() -> None:  # called by a put, on any thread
            if not loop.call_soon(wake.set):
                self._abandon()

        return waker

    def _abandon(self) -> None:
        """The loop has finished: nobody will ever handle what is in the inbox."""
        if not self.actor_stopped.is_set():
            ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
        self._actor_loop_teardown()

    def _handle_envelope(self, envelope: Any) -> None:
        """One message, as pykka's own actor loop handles it (replies, failures, stop)."""
        if isinstance(envelope.message, _ActorStop) and envelope.reply_to is not None:
            # answered in _serve, once the tasks beside the mailbox have ended
            self._stop_replies.append(envelope.reply_to)
            self._stop()
            return
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                log.info("exception returned from %s to its caller", self, exc_info=True)
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            # pykka's threads stop every actor here; on the loop that would wait for adapter
            # tasks the waiting itself keeps from running, so this actor alone stops
            log.exception("%s stopped by %r", self, sys.exc_info()[1])
            self._stop()
