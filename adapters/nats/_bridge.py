"""One thread owning an asyncio loop and the NATS connection, driven from trio.

nats-py is asyncio.  Junction drives it from trio with one thread that runs an asyncio loop
and owns the connection, and one crossing per *batch* (a crossing wakes the other loop, a
cost large next to handling one message): trio hands a batch over with ``call_soon_threadsafe``; the
asyncio side hands results back with ``TrioToken.run_sync_soon`` (which never blocks the
asyncio thread -- ``trio.from_thread.run_sync`` would).  ``run_sync_soon`` has no
back-pressure, so the trio side bounds what it asks for (credits: the sink's
``max_pending``, the source's ``max_ack_pending``).

:class:`AsyncioThread` is that thread; :func:`connect_options` turns the config into
``nats.connect`` keyword arguments (servers, TLS, the one login).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats.aio.client
import trio

from adapters.nats.config import NatsConfig

T = TypeVar("T")
log = logging.getLogger("junction.adapter.nats")


class AsyncioThread:
    """An asyncio loop on a thread of its own; ``await call(coro_fn, ...)`` from trio."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                tasks = asyncio.all_tasks(self.loop)
                for task in tasks:
                    task.cancel()
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def post(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the asyncio loop soon (any thread); False once it closed."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: its instance is gone
            return False
        return True

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` as a task on the loop (from any thread)."""
        if not self.post(_create_task, self.loop, coro):
            coro.close()

    async def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Await ``fn(*args)`` on the asyncio loop, from trio: one crossing each way."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[Any] = []

        def finished(fut: asyncio.Future[T]) -> None:
            box.append(fut)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        def begin() -> None:
            task = self.loop.create_task(fn(*args))
            task.add_done_callback(finished)
            box.append(task)

        if not self.post(begin):
            raise RuntimeError(f"{self.name}: the asyncio loop is closed")
        try:
            await done.wait()
        except BaseException:
            if box:  # cancelled from trio: cancel the asyncio side too
                self.post(box[0].cancel)
            raise
        fut = box[-1]
        if fut.cancelled():
            raise RuntimeError(f"{self.name}: the call was cancelled on the asyncio side")
        result: T = fut.result()
        return result

    async def stop(self) -> None:
        """Stop the loop (its tasks are cancelled) and wait for the thread to end."""
        if not self._started:
            self.loop.close()
            return
        self.post(self.loop.stop)
        await trio.to_thread.run_sync(self._thread.join, 10.0)


def _create_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> None:
    loop.create_task(coro)


def tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    """A verifying client context (the private CA when ``ca_file`` is set); None: no TLS."""
    if not cfg.tls:
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    return ctx


def connect_options(cfg: NatsConfig, name: str, tls: ssl.SSLContext | None) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` (callbacks are added by the caller)."""
    opts: dict[str, Any] = {
        "servers": list(cfg.servers),
        "name": f"junction-{name}",
        "connect_timeout": cfg.connect_timeout_s,
        "reconnect_time_wait": cfg.reconnect_wait_s,
        "max_reconnect_attempts": -1,  # forever: an outage holds data, it does not end us
        "allow_reconnect": True,
    }
    if tls is not None:
        opts["tls"] = tls
    if cfg.token:
        opts["token"] = cfg.token
    elif cfg.user:
        opts["user"], opts["password"] = cfg.user, cfg.password
    elif cfg.nkey_seed:
        opts["nkeys_seed_str"] = cfg.nkey_seed
    elif cfg.creds:
        opts["user_credentials"] = nats.aio.client.RawCredentials(cfg.creds)
    return opts
