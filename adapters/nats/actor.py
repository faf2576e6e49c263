"""The NATS JetStream adapter: a sink that publishes envelopes, a source that consumes them.

nats-py is asyncio; Junction is trio.  Each instance runs one thread with an asyncio loop
that owns the connection (:mod:`adapters.nats._bridge`), and crosses to trio once per batch:
each hand-over between the threads wakes the other loop, a cost large next to handling one
message, so it is paid per batch rather than per message.

Sink (``[publish]``): ``deliver`` encodes each envelope (:func:`codec.encode_payload`: one
too large for the server's ``max_payload``, or not encodable, is failed at once with the
reason -- the data's fault), renders its subject and ``Nats-Msg-Id``, *defers* the batch and
hands it to the :class:`~adapters.nats._publisher.Publisher` in one crossing.  Each
envelope is acked to the router at its PubAck (a duplicate PubAck too: the stream has it);
one the stream refuses for good is failed with the server's text.  What has no PubAck is
published again with the same id (after ``ack_timeout_s``, or at once on reconnect), so an
outage holds the data: deliveries wait once ``max_pending`` publishes are outstanding, and
the route's queue (or its ``persist`` outbox) holds the rest -- nothing is dead-lettered for
a server being away.

Source (``[consume]``): the :class:`~adapters.nats._puller.Puller` fetches batches from the
durable consumer; each batch is published to the router with ``on_settled``
(:mod:`broker._receipts`), and acknowledged to JetStream only when the router reports every
copy settled (delivered, kept in a ``persist`` outbox, dead-lettered or dropped by its
route).  An instance SIGKILLed with batches in flight loses nothing: the server delivers
them again after ``ack_wait_s``, to this consumer's next instance or another one.

At start the server's version is read and a configured feature it lacks is refused in one
line (:class:`~adapters.nats._link.NatsRefused`: the instance ends, and retries after the
actor's back-off, in case the cluster is upgraded or another server answers).
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from typing import Any

import trio

from adapters.nats._bridge import AsyncioThread, tls_context
from adapters.nats._link import Callbacks, Link
from adapters.nats._publisher import Outgoing, Result
from adapters.nats.codec import PayloadError, compile_subject_template, encode_payload
from adapters.nats.config import NatsConfig
from broker import Adapter, Envelope, LogGate


class NatsAdapter(Adapter):
    """NATS JetStream sink and/or source; see the module docstring."""

    config: NatsConfig
    max_batch = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.accepts_envelopes = cfg.publish is not None
        self.produces_envelopes = cfg.consume is not None
        self.tls = tls_context(cfg)  # built here: off the loop (the actor's worker thread)
        self.thread = AsyncioThread(f"nats-{self.name}")
        self.link = Link(
            cfg,
            self.name,
            self.tls,
            Callbacks(self._from_publisher, self._from_puller, self._state, self._trouble),
        )
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = trio.Event()
        self._quiet = False
        self._trouble_gate = LogGate(every_s=10.0, per=1)
        self.max_payload = 0
        self.version = ""
        # sink
        pub = cfg.publish
        self._subject = compile_subject_template(pub.subject, "publish.subject") if pub else None
        self._msg_id = (
            compile_subject_template(pub.msg_id, "publish.msg_id", subject=False) if pub else None
        )
        self._headers: dict[str, str] = {}
        if pub is not None and pub.msg_ttl_s:
            self._headers["Nats-TTL"] = f"{max(1, round(pub.msg_ttl_s))}s"
        if pub is not None and pub.stream:
            self._headers["Nats-Expected-Stream"] = pub.stream
        self._tickets = itertools.count(1)
        self._inflight: dict[int, tuple[str, Envelope]] = {}
        self._room = trio.Event()
        # source
        self._batches: trio.MemorySendChannel[tuple[int, list[Envelope]]]
        self._batches_out: trio.MemoryReceiveChannel[tuple[int, list[Envelope]]]
        self._batches, self._batches_out = trio.open_memory_channel(float("inf"))
        self.republished = 0

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (on the asyncio thread), set up, then pass fetched batches to the router."""
        self._token = trio.lowlevel.current_trio_token()
        self.thread.start()
        self.status.set("connecting", ", ".join(self.config.servers))
        self.version, self.max_payload = await self.thread.call(self.link.open)
        self.status.set("connected", f"nats-server {self.version}")
        self.log.info("connected to nats-server %s", self.version)
        self._ready.set()
        if self._quiet and self.link.puller is not None:
            self.thread.post(self.link.puller.stop_fetching)
        async for batch_id, envelopes in self._batches_out:
            await self.publish(envelopes, on_settled=self._settler(batch_id))

    def _settler(self, batch_id: int) -> Any:
        puller, thread = self.link.puller, self.thread
        assert puller is not None

        def settled() -> None:  # on the router's loop: one thread-safe hand-over
            thread.post(puller.settled, batch_id)

        return settled

    def quiesce(self) -> bool:
        """Shutdown began: fetch no more; the link stays up for acks and deliveries."""
        self._quiet = True
        if self.link.puller is not None:
            self.thread.post(self.link.puller.stop_fetching)
        return True

    async def aclose(self) -> None:
        """Close the connection and stop the asyncio thread."""
        try:
            if self.link.nc is not None:
                with trio.move_on_after(5):
                    await self.thread.call(self.link.close)
        except RuntimeError:
            pass  # the loop is gone already
        finally:
            await self.thread.stop()

    # --- sink -------------------------------------------------------------------

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        """Publish ``batch``; acks come with the PubAcks (see the module docstring)."""
        await self._ready.wait()
        assert self._subject is not None and self._msg_id is not None
        pub = self.config.publish
        assert pub is not None
        while self._inflight and len(self._inflight) + len(batch) > pub.max_pending:
            self._room = trio.Event()
            await self._room.wait()
        outgoing: list[Outgoing] = []
        sendable: list[Envelope] = []
        refused: dict[str, list[Envelope]] = defaultdict(list)
        for env in batch:
            try:
                payload = encode_payload(env, self.max_payload)
            except PayloadError as err:
                refused[str(err)].append(env)
                continue
            ticket = next(self._tickets)
            headers = {"Nats-Msg-Id": self._msg_id(env, route), **self._headers}
            outgoing.append(Outgoing(ticket, self._subject(env, route), payload, headers))
            self._inflight[ticket] = (route, env)
            sendable.append(env)
        for reason, envs in refused.items():
            self.fail(route, envs, reason)
        if not outgoing:
            return
        publisher = self.link.publisher
        assert publisher is not None
        self.defer(route, sendable)
        if not self.thread.post(publisher.submit, outgoing):
            raise RuntimeError("the NATS connection's loop is closed")

    def _to_trio(self, fn: Any, *args: Any) -> None:
        """From the asyncio thread: run ``fn(*args)`` on this adapter's trio loop soon."""
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):  # the loop is gone: nobody waits
                self._token.run_sync_soon(self._guarded, fn, *args)

    def _guarded(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the trio loop, never raising: a callback that raises under
        ``run_sync_soon`` ends the whole shared loop (every adapter on it).  ``ack`` and
        ``fail`` raise ``ActorDeadError`` once the router is gone (a late PubAck)."""
        try:
            fn(*args)
        except Exception:
            self.log.exception("NATS callback %s failed", getattr(fn, "__name__", fn))

    def _from_publisher(self, results: list[Result]) -> None:
        # asyncio thread: one crossing per batch of results
        self._to_trio(self._settle, results)

    def _settle(self, results: list[Result]) -> None:
        # trio: ack what is stored, fail what was refused, by route
        stored: dict[str, list[Envelope]] = defaultdict(list)
        refused: dict[tuple[str, str], list[Envelope]] = defaultdict(list)
        for ticket, reason in results:
            entry = self._inflight.pop(ticket, None)
            if entry is None:
                continue
            route, env = entry
            if reason is None:
                stored[route].append(env)
            else:
                refused[(route, reason)].append(env)
        for route, envs in stored.items():
            self.ack(route, envs)
        for (route, reason), envs in refused.items():
            self.fail(route, envs, reason)
        publisher = self.link.publisher
        if publisher is not None:
            self.republished = publisher.republished
        self._room.set()

    # --- source -----------------------------------------------------------------

    def _from_puller(self, batch_id: int, envelopes: list[Envelope]) -> None:
        # asyncio thread: the credits bound what the channel can hold
        self._to_trio(self._batches.send_nowait, (batch_id, envelopes))

    # --- status -----------------------------------------------------------------

    def _state(self, state: str, detail: str) -> None:
        self._to_trio(self._set_state, state, detail)

    def _set_state(self, state: str, detail: str) -> None:
        if state == "connected" and self.status.state == "disconnected":
            self.status.reconnects += 1
        self.status.set(state, detail)
        if state == "disconnected":
            self.log.warning("lost the NATS connection; reconnecting (data held)")
        else:
            self.log.info("NATS connection back: %s", detail)

    def _trouble(self, text: str) -> None:
        self._to_trio(self._note_trouble, text)

    def _note_trouble(self, text: str) -> None:
        # a connection, auth or TLS error, a publish no stream answers: shown and logged
        # (rate-limited per kind of trouble: some repeat for every message)
        self.status.last_error = text
        ok, held = self._trouble_gate.allow(text[:40])
        if ok:
            self.log.warning("NATS: %s%s", text, f" ({held} more not logged)" if held else "")

    def stats(self) -> dict[str, Any]:
        """Counters for tests and status views."""
        puller = self.link.puller
        return {
            "inflight": len(self._inflight),
            "republished": self.republished,
            "acked": puller.acked if puller else 0,
            "terminated": puller.terminated if puller else 0,
        }
