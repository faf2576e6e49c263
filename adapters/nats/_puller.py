"""The source's asyncio side: fetch from a durable pull consumer, ack what Junction settled.

Runs on the adapter's asyncio thread.  It fetches up to ``batch`` messages at a time, never
holding more than ``max_ack_pending`` unacknowledged (the credits that bound the trio side:
``TrioToken.run_sync_soon`` has no back-pressure of its own), decodes them and hands each
fetched batch over in one crossing.  A batch is acknowledged only when the router reports
it settled (:mod:`broker._receipts`): until then its messages stay unacknowledged on the
server, which redelivers them after ``ack_wait_s`` if this instance dies.  While the router
holds them longer (a target down, a slow peer) they are marked in progress (``+WPI``)
every third of ``ack_wait_s``, so a live instance is not redelivered to meanwhile.

Each envelope comes in with ``source`` = this adapter's name, so routes take it with
``from = "<name>"`` as from any source; the source it had before crossing NATS is kept in
the ``x-nats-origin-source`` header (matchable as ``headers.x-nats-origin-source``).

A message that is not a Junction envelope can never become one: it is terminated
(``+TERM``: no redelivery), logged with its stream sequence (a limits stream still has it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from adapters.nats.codec import decode_payload
from broker import Envelope, LogGate

log = logging.getLogger("junction.adapter.nats")

#: The header that keeps an envelope's ``source`` from before it crossed NATS: routes name
#: the adapter that consumed it (``from = "<this adapter>"``), as for any other source.
ORIGIN_HEADER = "x-nats-origin-source"


class Puller:
    """The fetch loop and the unacknowledged batches of one consumer binding."""

    def __init__(
        self,
        sub: Any,
        batch: int,
        credits: int,
        fetch_timeout_s: float,
        ack_wait_s: float,
        hand_over: Callable[[int, list[Envelope]], None],
        source: str,
    ) -> None:
        self.sub = sub
        self.source = source
        self.batch = batch
        self.credits = credits
        self.fetch_timeout_s = fetch_timeout_s
        self.ack_wait_s = ack_wait_s
        self.hand_over = hand_over
        self.log = logging.getLogger(f"junction.adapter.{source}")
        #: batch id -> (its messages, when they were fetched or last marked in progress)
        self.held: dict[int, tuple[list[Any], float]] = {}
        self.stopped = False
        self.acked = 0
        self.terminated = 0
        self._ids = itertools.count(1)
        self._room = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._gate = LogGate(every_s=5.0, per=3)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task on the loop, referenced until it ends (the loop keeps only weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._fetch_loop()), loop.create_task(self._progress())]

    def stop_fetching(self) -> None:
        """Shutdown began: fetch nothing more; what is held is still acknowledged."""
        self.stopped = True
        self._room.set()

    async def _fetch_loop(self) -> None:
        while not self.stopped:
            if self.credits <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                msgs = await self.sub.fetch(
                    min(self.batch, self.credits), timeout=self.fetch_timeout_s
                )
            except TimeoutError:  # nothing there (nats-py raises bare asyncio timeouts too)
                continue
            except (nats.errors.Error, OSError) as err:
                self._warn(f"fetch failed: {type(err).__name__}: {err}")
                await asyncio.sleep(min(1.0, self.fetch_timeout_s))
                continue
            if not msgs:
                continue
            await self._take(msgs)

    async def _take(self, msgs: list[Any]) -> None:
        envelopes: list[Envelope] = []
        kept: list[Any] = []
        for msg in msgs:
            try:
                env = decode_payload(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                self.terminated += 1
                ok, held = self._gate.allow("not an envelope")  # a publisher can send many
                if ok:
                    self.log.error(
                        "message %s on %s (stream sequence %s) is not a Junction envelope, "
                        "terminated (not redelivered)%s: %s",
                        self.terminated,
                        msg.subject,
                        _stream_seq(msg),
                        f" ({held} more not logged)" if held else "",
                        err,
                    )
                with contextlib.suppress(nats.errors.Error):
                    await msg.term()
                continue
            if env.source != self.source:
                headers = {**env.headers, ORIGIN_HEADER: env.source}
                env = msgspec.structs.replace(env, source=self.source, headers=headers)
            envelopes.append(env)
            kept.append(msg)
        if not kept:
            return
        batch_id = next(self._ids)
        self.credits -= len(kept)
        self.held[batch_id] = (kept, time.monotonic())
        self.hand_over(batch_id, envelopes)

    def settled(self, batch_id: int) -> None:
        """The router is done with batch ``batch_id``: acknowledge it (on the loop)."""
        entry = self.held.pop(batch_id, None)
        if entry is None:
            return
        self._spawn(self._ack(entry[0]))

    async def _ack(self, msgs: list[Any]) -> None:
        for msg in msgs:
            try:
                await msg.ack()
            except nats.errors.Error as err:  # closed: the server redelivers it later
                self._warn(f"ack not sent: {type(err).__name__}: {err}")
        self.acked += len(msgs)
        self.credits += len(msgs)
        self._room.set()

    async def _progress(self) -> None:
        """Mark batches held a third of ``ack_wait_s`` as in progress (``+WPI``)."""
        every = self.ack_wait_s / 3
        while True:
            await asyncio.sleep(min(every, 1.0))
            limit = time.monotonic() - every
            for batch_id, (msgs, since) in list(self.held.items()):
                if since > limit:
                    continue
                self.held[batch_id] = (msgs, time.monotonic())
                for msg in msgs:
                    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                        await msg.in_progress()

    def _warn(self, text: str) -> None:
        ok, held = self._gate.allow(text[:40])
        if ok:
            self.log.warning("%s%s", text, f" ({held} more not logged)" if held else "")

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _stream_seq(msg: Any) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:
        return "?"
