"""A trio loop on a thread of its own that serves actors: the router and every adapter
(``junction-loop``), or one ``own_thread`` adapter (``adapter-<name>``).

Why share: each hand-off between Python threads costs a futex wake, a context switch and
a GIL hand-over, and adapters on threads of their own also wait for the GIL behind each
other.  Adapters on one loop wake each other with a trio event instead; the GIL gave them
no parallelism anyway.

What sharing asks of an adapter: never block the loop (sockets through trio, files and
CPU-heavy work through ``trio.to_thread``).  An adapter whose code blocks sets
``own_thread = true`` and gets a loop of its own.

A task's failure never ends the loop: :meth:`SharedLoop.spawn`'s callers catch their own
errors, and anything that still escapes is logged here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("broker.loop")


class SharedLoop:
    """A trio loop running on a daemon thread until :meth:`close`; tasks start from any thread."""

    def __init__(self, name: str = "junction-loop") -> None:
        self.name = name
        self.token: trio.lowlevel.TrioToken | None = None
        #: True once :meth:`close` began: a task cancelled from now on is being stopped,
        #: not crashing
        self.closing = False
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the loop's thread and return once it takes tasks."""
        self._thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self.token is None:
            raise RuntimeError(f"the shared loop did not start: {self._error!r}")

    def spawn(self, task: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``task`` on the loop (callable from any thread, the loop's own included)."""
        token = self.token
        if token is None or self.closing:
            raise RuntimeError(f"the shared loop is not running; cannot start {name}")
        token.run_sync_soon(self._start_task, task, name)

    @property
    def thread(self) -> threading.Thread | None:
        """The loop's thread, once started."""
        return self._thread

    def on_loop_thread(self) -> bool:
        """True when called from the loop's own thread (so trio may be used directly)."""
        return threading.get_ident() == self._thread_id

    def call_soon(self, fn: Callable[[], object]) -> bool:
        """Run the synchronous ``fn`` on the loop: at once on the loop's thread, soon from any
        other; False when the loop has finished (``fn`` will never run).  ``fn`` must not
        raise (it runs as a trio callback, where an error would end the loop)."""
        if self.on_loop_thread():
            fn()
            return True
        token = self.token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Cancel whatever still runs on the loop and wait for its thread to end."""
        self.closing = True
        token = self.token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._cancel)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the shared loop did not stop within %.0f s", timeout)

    # --- on the loop's thread ---------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as err:  # reported by start() or logged: the thread must end quietly
            self._error = err
            log.exception("the shared loop ended with an error")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._thread_id = threading.get_ident()
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    def _cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _start_task(self, task: Callable[[], Awaitable[None]], name: str) -> None:
        # a run_sync_soon callback: raising would end the whole loop
        try:
            if self._nursery is not None:
                self._nursery.start_soon(self._guarded, task, name, name=name)
        except Exception:
            log.exception("could not start %s on the shared loop", name)

    async def _guarded(self, task: Callable[[], Awaitable[None]], name: str) -> None:
        try:
            await task()
        except trio.Cancelled:
            raise
        except BaseException:  # one task's bug must not end the others' loop
            if not self.closing:
                log.exception("%s ended with an error on the shared loop", name)
