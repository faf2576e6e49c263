"""The sink's asyncio side: pipelined JetStream publishes, PubAcks, age-outs, republishes.

Runs on the adapter's asyncio thread (:mod:`adapters.nats._bridge`).  The trio side hands
over a batch of :class:`Outgoing` (one crossing); each is published with ``publish_async``
(no wait for its PubAck before the next goes out) carrying ``Nats-Msg-Id``.  Results go
back in batches, at most one crossing per turn of the asyncio loop, through ``report``:

- a PubAck, ``duplicate`` or not, is *stored*: the stream has the message (a duplicate
  means an earlier publish with that id was stored within the stream's duplicate window);
- an answer that is the data's fault (the stream's ``max_msg_size``, a header the server
  refuses) is *refused* with the server's text;
- anything else -- no PubAck within ``ack_timeout_s`` (a leader election, a lost
  connection: its future may never resolve), no stream answering, a full buffer while
  reconnecting -- is not an answer: the message stays pending and is published again with
  the same ``Nats-Msg-Id`` once it has aged out, or at once after a reconnect.  The
  stream's duplicate window turns a second copy of a stored message into a duplicate
  PubAck, so nothing is stored twice as long as the retry comes within that window.

nats-py 2.16's ``publish_async`` never resolves the future of a publish JetStream answers
with an error (its reply handler raises instead of setting the exception), so a refusal
first looks like a missing PubAck.  Every republish is therefore a plain request
(``js.publish``, one task each), which does raise the server's error: a message the
stream refuses is refused after one ``ack_timeout_s``, not retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors

log = logging.getLogger("junction.adapter.nats")

#: JetStream error codes that sending the same message again cannot help (seen from
#: nats-server 2.15): 10054 "message size exceeds maximum allowed" (the stream's
#: max_msg_size), 10060 "expected stream does not match" (``publish.stream`` names another
#: stream than the one bound to the subject: every retry gets the same answer), 10166
#: "per-message TTL is disabled" (a Nats-TTL header, allow_msg_ttl off).  A subject no
#: stream binds (nats-py: ``NoStreamResponseError``) is retried: the stream may be created
#: meanwhile; the adapter logs it (rate-limited) and shows it as its last error.
PERMANENT_ERR_CODES = frozenset({10054, 10060, 10166})


@dataclass(slots=True)
class Outgoing:
    """One message to publish; ``ticket`` names it in the reports."""

    ticket: int
    subject: str
    payload: bytes
    headers: dict[str, str]
    sent_at: float = 0.0
    future: asyncio.Future[Any] | None = None
    attempts: int = 0


#: (ticket, None) stored; (ticket, reason) refused for good.
Result = tuple[int, str | None]


class Publisher:
    """Pending publishes of one connection (see the module docstring)."""

    def __init__(
        self,
        js: Any,
        ack_timeout_s: float,
        report: Callable[[list[Result]], None],
        on_trouble: Callable[[str], None],
    ) -> None:
        self.js = js
        self.ack_timeout_s = ack_timeout_s
        self.report = report
        self.on_trouble = on_trouble
        self.pending: dict[int, Outgoing] = {}
        self.connected = True
        self.republished = 0
        self._results: list[Result] = []
        self._flush_scheduled = False
        self._ager: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task on the loop, referenced until it ends (the loop keeps only weak ones)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def start(self) -> None:
        self._ager = asyncio.get_running_loop().create_task(self._age())

    def submit(self, batch: list[Outgoing]) -> None:
        """Publish a batch (called on the asyncio loop: one crossing per batch)."""
        for out in batch:
            self.pending[out.ticket] = out
        self._spawn(self._send_all(batch))

    async def _send_all(self, batch: list[Outgoing]) -> None:
        for out in batch:
            if out.ticket in self.pending:
                await self._send(out)

    def _again(self, out: Outgoing) -> None:
        """Publish ``out`` again, as a request of its own (see the module docstring)."""
        old, out.future = out.future, None
        if old is not None and not old.done():
            old.cancel()  # its PubAck, if it comes, is ignored: the new copy's counts
        out.sent_at = time.monotonic()
        out.attempts += 1
        self.republished += 1
        self._spawn(self._request(out))

    async def _request(self, out: Outgoing) -> None:
        try:
            await self.js.publish(
                out.subject, out.payload, timeout=self.ack_timeout_s, headers=dict(out.headers)
            )
        except nats.js.errors.APIError as err:
            if err.err_code in PERMANENT_ERR_CODES and self.pending.get(out.ticket) is out:
                del self.pending[out.ticket]
                reason = f"refused by JetStream: {err.description} ({err.err_code})"
                self._result((out.ticket, reason))
            else:
                self.on_trouble(f"publish refused: {err}")
            return
        except (nats.errors.Error, OSError, TimeoutError) as err:
            self.on_trouble(f"no PubAck: {type(err).__name__}: {err}")
            return  # it ages out again
        if self.pending.get(out.ticket) is out:
            del self.pending[out.ticket]
            self._result((out.ticket, None))

    async def _send(self, out: Outgoing) -> None:
        out.sent_at = time.monotonic()
        out.attempts += 1
        try:
            future = await self.js.publish_async(
                out.subject, out.payload, headers=dict(out.headers), wait_stall=self.ack_timeout_s
            )
        except (nats.errors.Error, OSError) as err:
            # closed, reconnecting with a full buffer, stalled: it ages out and goes again
            self.on_trouble(f"publish not sent: {type(err).__name__}: {err}")
            return
        out.future = future
        future.add_done_callback(lambda f, out=out: self._done(out, f))

    def _done(self, out: Outgoing, future: asyncio.Future[Any]) -> None:
        if self.pending.get(out.ticket) is not out:
            return  # already settled (an earlier copy's PubAck came first)
        if future.cancelled():
            return
        err = future.exception()
        if err is None:
            del self.pending[out.ticket]
            self._result((out.ticket, None))
            return
        if out.future is future:
            out.future = None  # no answer: it ages out and goes again
        self.on_trouble(f"no PubAck: {type(err).__name__}: {err}")

    def _result(self, result: Result) -> None:
        self._results.append(result)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        results, self._results = self._results, []
        self._flush_scheduled = False
        if results:
            self.report(results)

    async def _age(self) -> None:
        """Publish again what waited ``ack_timeout_s`` for its PubAck (while connected)."""
        tick = min(1.0, self.ack_timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            if not self.connected:
                continue
            limit = time.monotonic() - self.ack_timeout_s
            for out in [o for o in self.pending.values() if o.sent_at <= limit]:
                self._again(out)

    def reconnected(self) -> None:
        """The link is back: publish again everything without a PubAck, now."""
        self.connected = True
        for out in list(self.pending.values()):
            self._again(out)

    def disconnected(self) -> None:
        self.connected = False

    async def aclose(self) -> None:
        if self._ager is not None:
            self._ager.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ager
