"""MQTT to AlphaX: QoS 1 publishes and the PUBACKs they wait for.

``publish`` hands a batch to paho and returns; ``wait_acked`` waits for that batch's PUBACKs,
so a caller can publish its next batch while the previous one's PUBACKs are on their way
(:meth:`MqttWriter.send`, the :class:`~adapters.alphax._writer.UplinkWriter` face, returns
them as ``Sent.pending``). The connection itself is :class:`~._mqtt_link.MqttLink`'s.

Facts this module relies on (read in the paho 2.2 source and measured with it):

- A QoS 1 message published while disconnected, or published and not yet acknowledged when
  the connection dropped, stays in paho's ``_out_messages`` and is (re)sent, with DUP set,
  after the next CONNACK -- within this process. Nothing survives a process restart: the
  adapter hands back the envelopes still waiting for their PUBACKs instead.
- Callbacks run on the trio thread inside ``loop_read``/``loop_write``/``loop_misc``, and
  ``publish()`` returns before any read: a PUBACK cannot overtake ``publish()``; an ack for
  a mid we never recorded is only counted (``stray_acks``).
- paho's in-flight window is off (``max_inflight_messages_set(0)``): with a window, paho
  re-walks its whole outgoing queue on each PUBACK once the window is full (``_update_inflight``),
  the largest cost of a flood. The writer keeps the window: it publishes while fewer than
  ``max_inflight`` messages await their PUBACK and waits for room otherwise (counted:
  ``inflight_full``), so paho writes every message at once and holds no queue of its own.
- Past ``max_queued_messages_set(n)`` paho refuses with ``MQTT_ERR_QUEUE_SIZE`` (the message
  would be lost); ``max_queued >= max_inflight`` (the config checks), so that happens only if
  given-up messages stayed in paho; the writer then waits and counts it (``queue_full``).

Our own record (``_pending``: mid -> message and its batch) holds every message handed to paho
and not acknowledged, so a message without PUBACK is never forgotten silently: ``wait_acked``
waits for its batch's PUBACKs. While the broker is unreachable it waits (the route's queue and
overflow policy then apply upstream); once connected, acks taking longer than
``ack_timeout_s`` of connected time fail the envelopes with a reason (dead-lettered), and the
message is taken out of paho's resend queue (:meth:`MqttWriter._forget`), so no reconnect
sends it again. A PUBACK already on its way for it is counted as a stray ack.

Topics hold the token: they are logged only through ``redact_topic``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from adapters.alphax import codec
from adapters.alphax._mqtt_link import MqttLink
from adapters.alphax._uplinks import Failure, Message, build_messages, group_writes
from adapters.alphax._writer import Sent
from adapters.alphax.config import AlphaXConfig, MqttWrite
from broker import AdapterStatus, Envelope

# NO_CONN and CONN_LOST (a write error inside publish): paho keeps the message in its
# _out_messages and sends it after the next CONNACK, so we record it and wait for the PUBACK
_ACCEPTED = (
    MQTTErrorCode.MQTT_ERR_SUCCESS,
    MQTTErrorCode.MQTT_ERR_NO_CONN,
    MQTTErrorCode.MQTT_ERR_CONN_LOST,
)
_POLL_S = 0.25


@dataclass
class Acks:
    """The PUBACKs one :meth:`MqttWriter.publish` call still waits for."""

    remaining: int
    done: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        if self.remaining == 0:
            self.done.set()


@dataclass
class _Pending:
    message: Message
    batch: Acks
    published_at: float


@dataclass(frozen=True)
class Published:
    """Envelopes handed to the MQTT broker and the PUBACKs they wait for (``Sent.pending``)."""

    envelopes: list[Envelope]
    acks: Acks
    writer: MqttWriter

    async def wait(self) -> list[Failure]:
        """Wait for the PUBACKs; what was given up on (ack timeout), with the reason."""
        return await self.writer.wait_acked(self.acks)


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
        self.client.on_publish = self._on_publish
        self._pending: dict[int, _Pending] = {}
        self._room = trio.Event()
        self._waiting_for_room = False
        self.unencodable = 0
        self.published = 0
        self.acked = 0
        self.stray_acks = 0
        self.inflight_full = 0
        self.max_outstanding = 0  # the most messages awaiting a PUBACK at once
        self.queue_full = 0
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
            "queue_full": self.queue_full,
            "ack_timeouts": self.ack_timeouts,
            "connects": self.connects,
            "resent": self.resent,
            "refused": self.refused,
        }

    def outstanding(self) -> int:
        """Messages handed to paho and neither acknowledged nor given up on."""
        return len(self._pending)

    async def publish(self, messages: Sequence[Message]) -> tuple[Acks, list[Failure]]:
        """Hand ``messages`` to paho in order; return without waiting for their PUBACKs.

        Returns the acknowledgements to wait for (:meth:`wait_acked`) and the messages
        refused outright. Waits only for the link and for room under ``max_queued``, so a
        caller can publish the next batch while this one's PUBACKs are on their way.
        """
        self.start()
        acks = Acks(remaining=len(messages))
        failures: list[Failure] = []
        try:
            for message in messages:
                if not await self._publish(message, acks):
                    reason = "the MQTT client refused the message (see the log)"
                    failures += [(env, reason) for env in message.envelopes]
        finally:
            self._uncork()  # the batch's packets in as few writes as the socket takes
        return acks, failures

    def _uncork(self) -> None:
        """Write what the batch published so far (before any wait: a corked message is not
        on the wire, so its PUBACK cannot come)."""
        client = self.client
        if client.corked:
            client.uncork()
            self._kick()

    async def _publish(self, message: Message, batch: Acks) -> bool:
        while True:
            # Publish only while connected: paho sends what it queued while disconnected only
            # after CONNACK, so a message published during the handshake would overtake them
            # (the v4 and channel topic forms carry no timestamp: arrival order is their time).
            # Also the connect runs on a worker thread: nothing may touch the client then.
            # No checkpoint on the fast path: a batch goes out without a scheduler round per
            # message (the acks are read once the batch waits for them, or for room).
            if not self._link_up.is_set():
                self._uncork()
                await self._link_up.wait()
                self._check_driver()
            await self._wait_for_room()
            if not self._link_up.is_set():
                continue
            self.client.cork()  # written (and the writer task kicked) by _uncork
            try:
                info = self.client.publish(message.topic, message.payload, qos=1)
            except ValueError as err:  # payload too large, bad topic: not retryable
                self._settle(batch)
                self.log.error("MQTT publish refused: %s", codec.redact(str(err), self.cfg.token))
                return False
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self._note_queue_full()  # paho still holds given-up messages: wait for room
                self._uncork()
                await trio.sleep(0.05)
                continue
            if info.rc not in _ACCEPTED:
                self._settle(batch)
                self.log.error("MQTT publish failed: %s", mqtt.error_string(info.rc))
                return False
            self.published += 1
            # publish() never reads: its PUBACK cannot have been handled yet
            pending = self._pending
            pending[info.mid] = _Pending(message, batch, time.monotonic())
            if len(pending) > self.max_outstanding:
                self.max_outstanding = len(pending)
            return True

    @staticmethod
    def _settle(batch: Acks) -> None:
        batch.remaining -= 1
        if batch.remaining == 0:
            batch.done.set()

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
            with trio.move_on_after(_POLL_S):
                await self._room.wait()
        self._waiting_for_room = False

    def _note_queue_full(self) -> None:
        self.queue_full += 1
        self._log_every(
            logging.WARNING,
            "queue",
            f"max_queued = {self.mqtt.max_queued} un-acknowledged messages reached: waiting for "
            f"PUBACKs before publishing more ({self.queue_full} times so far)",
        )

    async def wait_acked(self, batch: Acks) -> list[Failure]:
        """Wait for the PUBACKs of one :meth:`publish`; the messages given up on, with why.

        Waiting counts only connected time against ``ack_timeout_s``.
        """
        budget = self.mqtt.ack_timeout_s
        while not batch.done.is_set():
            began = trio.current_time()
            with trio.move_on_after(min(_POLL_S, budget)):
                await batch.done.wait()
            if batch.done.is_set():
                break
            self._check_driver()
            if self.connected:
                budget -= trio.current_time() - began
            if budget <= 0:
                return self._give_up(batch)
        return []

    def _give_up(self, batch: Acks) -> list[Failure]:
        lost = [(mid, p) for mid, p in self._pending.items() if p.batch is batch]
        for mid, _ in lost:
            del self._pending[mid]
            self._forget(mid)
        batch.remaining = 0
        self.ack_timeouts += len(lost)
        reason = (
            f"no PUBACK from {self.where} within {self.mqtt.ack_timeout_s:g} s of connected time; "
            "given up (an ack still on its way means AlphaX has it: a duplicate if replayed)"
        )
        self.log.error("%d MQTT messages: %s", len(lost), reason)
        return [(env, reason) for _, p in lost for env in p.message.envelopes]

    def _forget(self, mid: int) -> None:
        """Take a given-up message out of paho's resend queue (``_out_messages``).

        Left there, paho would send it again (DUP) after every reconnect: a broker that
        drops the connection on that message would get it in a loop, and the message holds
        a place under ``max_queued`` for good. paho has no API for this; its own PUBACK
        path does the same under ``_out_message_mutex`` (paho 2.2: pop the message; if it
        was in flight, free its in-flight slot and let the next queued one go).
        """
        client = self.client
        with client._out_message_mutex:
            message = client._out_messages.pop(mid, None)
            if message is None or message.state != mqtt.mqtt_ms_wait_for_puback:
                return
            client._inflight_messages -= 1
            if self.connected and client._max_inflight_messages > 0:
                client._update_inflight()

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

    # paho's callback (on the trio thread, inside loop_read)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        try:
            self._acks_seen += 1
            pending = self._pending.pop(mid, None)
            if pending is None:
                self.stray_acks += 1
                return
            self.acked += 1
            self._settle(pending.batch)
            if self._waiting_for_room:
                self._room.set()
        except Exception:  # paho would re-raise it out of loop_read
            self.log.exception("MQTT state update failed")
