"""MQTT to AlphaX: QoS 1 publishes and the PUBACKs they wait for.

``publish`` writes a batch and returns; the batch's :class:`Acks` call back once every PUBACK
of the batch arrived (or some were given up on), so a caller publishes its next batch while
the previous one's PUBACKs are on their way (:meth:`MqttWriter.send`, the
:class:`~adapters.alphax._writer.UplinkWriter` face, returns them as ``Sent.pending``). No
task waits per batch: the reader that takes a PUBACK settles its batch. The connection itself
is :class:`~._mqtt_link.MqttLink`'s.

Facts this module relies on (read in the paho 2.2 source and measured with it):

- The QoS 1 messages are the writer's own, not paho's: it picks each message id (1..65535,
  never one still awaiting its PUBACK), writes the PUBLISH packet itself
  (:meth:`~._mqtt_client.BatchingClient.write_publish`) and keeps the message in ``_pending``
  until its PUBACK. After a reconnect's CONNACK it writes every un-acknowledged message again,
  DUP set, in the order they were first published, before any new one (publishing waits for
  the link, and the re-sends are written inside the CONNACK's callback) -- within this process.
  Nothing survives a process restart: the adapter hands back the envelopes still waiting for
  their PUBACKs instead.
- Callbacks run on the trio thread inside ``loop_read``/``loop_write``/``loop_misc`` and the
  reader's :meth:`~._mqtt_client.BatchingClient.drain_pubacks`; a message is recorded before
  any read can bring its PUBACK; an ack for a mid we never recorded (or gave up on) is only
  counted (``stray_acks``).
- The writer keeps the window: it publishes while fewer than ``max_inflight`` messages await
  their PUBACK and waits for room otherwise (counted: ``inflight_full``), asking the reader to
  read at once (``read_soon``) rather than after its linger.

While the broker is unreachable a publish waits (the route's queue and overflow policy then
apply upstream); once connected, a batch whose acks take longer than ``ack_timeout_s`` of
connected time fails its un-acknowledged envelopes with a reason (dead-lettered); those
messages are forgotten, so no reconnect sends them again, and a PUBACK already on its way for
one is counted as a stray ack. The check runs with paho's keepalive (every ``_MISC_S``).

Topics hold the token: they are logged only through ``redact_topic``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from adapters.alphax import codec
from adapters.alphax._mqtt_link import MqttLink
from adapters.alphax._uplinks import Failure, Message, build_messages, group_writes
from adapters.alphax._writer import Sent
from adapters.alphax.config import AlphaXConfig, MqttWrite
from broker import AdapterStatus, Envelope

_POLL_S = 0.25
_MAX_MID = 65535

#: What a batch's owner is told once the batch is settled: the envelopes given up on.
OnSettled = Callable[[list[Failure]], None]


@dataclass(eq=False)
class Acks:
    """The PUBACKs one :meth:`MqttWriter.publish` call still waits for."""

    remaining: int
    #: ``MqttLink.connected_time()`` when the batch was written (its ack timeout counts from it)
    written_at: float = 0.0
    #: given up on (ack timeout), with the reason
    failures: list[Failure] = field(default_factory=list)
    settled: bool = False
    on_settled: OnSettled | None = None


@dataclass(slots=True)
class _Pending:
    message: Message
    topic: bytes
    batch: Acks


@dataclass(frozen=True)
class Published:
    """Envelopes handed to the MQTT broker and the PUBACKs they wait for (``Sent.pending``)."""

    envelopes: list[Envelope]
    acks: Acks
    writer: MqttWriter

    def when_settled(self, callback: OnSettled) -> None:
        """Call ``callback(given_up)`` on the trio thread once every PUBACK arrived or was
        given up on (at once if that already happened)."""
        self.writer.when_settled(self.acks, callback)

    async def wait(self) -> list[Failure]:
        """Wait for the PUBACKs; what was given up on (ack timeout), with the reason."""
        done = trio.Event()
        self.when_settled(lambda _failures: done.set())
        while not done.is_set():
            self.writer._check_driver()
            with trio.move_on_after(_POLL_S):
                await done.wait()
        return self.acks.failures


class MqttWriter(MqttLink):
    """Publishes AlphaX messages at QoS 1 on one paho client (see the module docstring)."""

    defers_acks = True  # PUBACKs: see send

    def __init__(
        self,
        cfg: AlphaXConfig,
        mqtt_cfg: MqttWrite,
        name: str,
        status: AdapterStatus,
        log: logging.Logger,
    ) -> None:
        super().__init__(cfg, mqtt_cfg, name, status, log)
        self.client.on_puback_mid = self._on_puback
        self._pending: dict[int, _Pending] = {}  # mid -> message, in publish order
        self._open: dict[Acks, None] = {}  # batches written and not settled, oldest first
        self._last_mid = 0
        #: mids given up on while connected: not used again until the next CONNACK, so a
        #: PUBACK still on its way for one never settles a later message
        self._given_up: set[int] = set()
        self._room = trio.Event()
        self._waiting_for_room = False
        self.unencodable = 0
        self.published = 0
        self.acked = 0
        self.stray_acks = 0
        self.inflight_full = 0
        self.max_outstanding = 0  # the most messages awaiting a PUBACK at once
        self.ack_timeouts = 0

    def open(self) -> None:
        """Start connecting (the UplinkWriter name for :meth:`start`)."""
        self.start()

    async def send(self, batch: Sequence[Envelope]) -> Sent:
        """Encode and publish ``batch`` without waiting for its PUBACKs (``Sent.pending``)."""
        groups, failures = group_writes(batch)
        messages, more = build_messages(
            groups, self.cfg.token, self.mqtt.topic_form, self.cfg.v1_gaps
        )
        self.unencodable += len(failures) + len(more)
        acks, refused = await self.publish(messages)
        failures += more + refused
        if not messages:
            return Sent(failures)
        unsent = {id(env) for env, _ in failures}
        envelopes = [env for env in batch if id(env) not in unsent]
        return Sent(failures, Published(envelopes, acks, self))

    def stats(self) -> dict[str, Any]:
        """Publishes, PUBACKs, waits for room, timeouts, connections, refusals."""
        return {
            "unencodable": self.unencodable,
            "published": self.published,
            "acked": self.acked,
            "outstanding": self.outstanding(),
            "max_outstanding": self.max_outstanding,
            "inflight_full": self.inflight_full,
            "ack_timeouts": self.ack_timeouts,
            "connects": self.connects,
            "resent": self.resent,
            "refused": self.refused,
        }

    def outstanding(self) -> int:
        """Messages handed to paho and neither acknowledged nor given up on."""
        return len(self._pending)

    async def publish(self, messages: Sequence[Message]) -> tuple[Acks, list[Failure]]:
        """Write ``messages`` in order; return without waiting for their PUBACKs.

        Returns the acknowledgements to wait for (:meth:`when_settled`) and the messages
        refused outright. Waits only for the link and for room in the window, so a caller
        can publish the next batch while this one's PUBACKs are on their way.
        """
        acks = Acks(remaining=len(messages))
        failures: list[Failure] = []
        if not messages:  # nothing to wait for (e.g. every envelope was unencodable)
            acks.settled = True
            return acks, failures
        self.start()
        done = 0
        try:
            for message in messages:
                if not await self._publish(message, acks):
                    reason = "the MQTT client refused the message (see the log)"
                    failures += [(env, reason) for env in message.envelopes]
                done += 1
        finally:
            self._uncork()  # the batch's packets in as few writes as the socket takes
            if done < len(messages):  # cancelled: the written ones are awaited (or timed out)
                acks.remaining -= len(messages) - done
                if acks.remaining == 0 and not acks.settled:
                    self._settle_batch(acks)
            if not acks.settled:
                acks.written_at = self.connected_time()
                self._open[acks] = None
        return acks, failures

    def when_settled(self, acks: Acks, callback: OnSettled) -> None:
        """Call ``callback(acks.failures)`` once ``acks`` is settled (at once if it is)."""
        if acks.settled:
            callback(acks.failures)
        else:
            acks.on_settled = callback

    def _uncork(self) -> None:
        """Write what the batch published so far (before any wait: a corked message is not
        on the wire, so its PUBACK cannot come)."""
        client = self.client
        if client.corked:
            client.uncork()
            self._kick()

    async def _publish(self, message: Message, batch: Acks) -> bool:
        while True:
            # Publish only while connected: the re-sends after a CONNACK go first (the v4 and
            # channel topic forms carry no timestamp: arrival order is their time). Also the
            # connect runs on a worker thread: nothing may touch the client then. No
            # checkpoint on the fast path: a batch goes out without a scheduler round per
            # message (the acks are read by the reader, or at once when the window is full).
            if not self._link_up.is_set():
                self._uncork()
                await self._link_up.wait()
                self._check_driver()
            await self._wait_for_room()
            if not self._link_up.is_set():
                continue
            try:
                topic = message.topic.encode()
                mid = self._next_mid()
                self.client.cork()  # written (and the writer task kicked) by _uncork
                # False: the connection just dropped (a write error); sent after the CONNACK
                self.client.write_publish(mid, topic, message.payload)
            except ValueError as err:  # payload too large, bad topic: not retryable
                self._count_down(batch)
                self.log.error("MQTT publish refused: %s", codec.redact(str(err), self.cfg.token))
                return False
            self.published += 1
            pending = self._pending
            pending[mid] = _Pending(message, topic, batch)
            if len(pending) > self.max_outstanding:
                self.max_outstanding = len(pending)
            return True

    def _next_mid(self) -> int:
        """The next message id not awaiting a PUBACK (the window is at most 65535)."""
        mid, pending, given_up = self._last_mid, self._pending, self._given_up
        while True:
            mid = mid + 1 if mid < _MAX_MID else 1
            if mid not in pending and mid not in given_up:
                self._last_mid = mid
                return mid

    def _count_down(self, batch: Acks) -> None:
        batch.remaining -= 1
        if batch.remaining == 0:
            self._settle_batch(batch)

    def _settle_batch(self, batch: Acks) -> None:
        batch.settled = True
        self._open.pop(batch, None)
        callback, batch.on_settled = batch.on_settled, None
        if callback is not None:
            try:
                callback(batch.failures)
            except Exception:  # the adapter's bug must not break the reader (or paho)
                self.log.exception("settling an MQTT batch failed")

    async def _wait_for_room(self) -> None:
        """Wait while ``max_inflight`` messages await their PUBACK (the writer's window)."""
        window = self.mqtt.max_inflight
        if len(self._pending) < window:
            return
        self._uncork()
        self.inflight_full += 1
        self._log_every(
            logging.INFO,
            "inflight",
            f"in-flight window of {window} full: waiting for PUBACKs before publishing more "
            f"({self.inflight_full} times so far)",
        )
        while len(self._pending) >= window:
            self._check_driver()
            self._room = trio.Event()
            self._waiting_for_room = True
            self.read_soon()
            with trio.move_on_after(_POLL_S):
                await self._room.wait()
        self._waiting_for_room = False

    def _every_misc(self) -> None:
        """Give up on the batches whose PUBACKs took ``ack_timeout_s`` of connected time."""
        if not self._open:
            return
        deadline = self.connected_time() - self.mqtt.ack_timeout_s
        expired = []
        for batch in self._open:  # oldest first: stop at the first still in time
            if batch.written_at > deadline:
                break
            expired.append(batch)
        for batch in expired:
            self._give_up(batch)

    def _give_up(self, batch: Acks) -> None:
        lost = [mid for mid, p in self._pending.items() if p.batch is batch]
        reason = (
            f"no PUBACK from {self.where} within {self.mqtt.ack_timeout_s:g} s of connected time; "
            "given up (an ack still on its way means AlphaX has it: a duplicate if replayed)"
        )
        for mid in lost:  # forgotten: no reconnect sends them again
            batch.failures += [(env, reason) for env in self._pending.pop(mid).message.envelopes]
        if len(self._given_up) + len(lost) < _MAX_MID // 2:  # else ids would run out
            self._given_up.update(lost)
        self.ack_timeouts += len(lost)
        self.log.error("%d MQTT messages: %s", len(lost), reason)
        batch.remaining = 0
        self._settle_batch(batch)
        if self._waiting_for_room:
            self._room.set()

    def _wake(self) -> None:
        super()._wake()
        self._room.set()

    async def aclose(self) -> None:
        """Disconnect and end the driver task; un-acknowledged messages are reported."""
        left = self.outstanding() if self._started else 0
        if left:
            self.log.warning(
                "closing the MQTT connection with %d un-acknowledged messages (those of an "
                "unfinished delivery are requeued, given-up ones were dead-lettered)",
                left,
            )
        await super().aclose()

    async def watch(self) -> None:
        """Return never while the connection driver runs; raise once it died, so the adapter
        crashes and its actor starts a new one (with a new client) instead of waiting."""
        await self._driver_done.wait()
        self._check_driver()
        await trio.sleep_forever()  # ended by aclose: nothing more to watch

    # paho's callbacks and the PUBACK hook (on the trio thread, inside a read)

    def _connected(self) -> None:
        """CONNACK: write every un-acknowledged message again (DUP), oldest first."""
        client = self.client
        self._given_up.clear()  # a new connection: no PUBACK of the old one comes now
        for mid, p in self._pending.items():
            if not client.write_publish(mid, p.topic, p.message.payload, dup=True):
                return  # the connection dropped again: the next CONNACK sends them

    def _on_puback(self, mid: int) -> None:
        self._acks_seen += 1
        pending = self._pending.pop(mid, None)
        if pending is None:
            self.stray_acks += 1
            return
        self.acked += 1
        batch = pending.batch
        batch.remaining -= 1
        if batch.remaining == 0:
            self._settle_batch(batch)
        if self._waiting_for_room:
            self._room.set()
