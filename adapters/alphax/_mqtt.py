"""MQTT to AlphaX: QoS 1 publishes through paho-mqtt 2.x, acknowledged before ``send`` returns.

paho runs its network loop in its own thread (``loop_start``) and reconnects by itself
(``reconnect_delay_set``). Measured facts this module relies on (paho 2.2 source and
library-findings.md):

- A QoS 1 message published while disconnected, or published and not yet acknowledged when
  the connection dropped, stays in paho's ``_out_messages`` and is (re)sent, with DUP set,
  after the next CONNACK -- within this process. Nothing survives a process restart: the
  envelopes of an unfinished ``send`` are requeued by the adapter host instead.
- ``on_publish`` runs on paho's thread while paho holds its own out-message lock, and the
  PUBACK may be handled before ``publish()`` has returned the mid to us. So this module never
  calls ``publish()`` under its own lock, and an ack for a mid not yet recorded is parked in
  ``_early`` and matched when the record is made.
- Past ``max_queued_messages_set(n)`` paho refuses with ``MQTT_ERR_QUEUE_SIZE`` (the message
  would be lost); so the writer waits for room itself and counts each time it has to.

Our own record (``_pending``: mid -> message and its batch) holds every message handed to paho
and not acknowledged, so a message without PUBACK is never forgotten silently: ``send`` waits
for its batch's PUBACKs. While the broker is unreachable it waits (the route's queue and
overflow policy then apply upstream); once connected, acks taking longer than
``ack_timeout_s`` of connected time fail the envelopes with a reason (dead-lettered). paho
still holds such a message and may deliver it later: counted as ``late_acks``, a possible
duplicate at AlphaX, never a loss.

TCP tuning, because ``send`` waits for its batch's PUBACKs (so nothing of ours is on the wire
to carry TCP ACKs): the socket gets ``TCP_NODELAY`` on every (re)connect (paho does not set
it), and ``TCP_QUICKACK`` after every PUBACK (see ``_quick_ack``). Without them a batch stalls
tens of milliseconds on Nagle's algorithm and delayed ACKs (measured with a default mosquitto:
11.8k instead of 97k channel writes/s, and p50 25 ms instead of 1 ms at 1,000 messages/s).

Callbacks hand results to the trio loop with ``TrioToken.run_sync_soon`` (guarded: a raising
callback would kill the loop; after the loop ends the call is skipped). Topics hold the token:
they are logged only through ``redact_topic``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from adapters.alphax import codec
from adapters.alphax._uplinks import Failure, Message
from adapters.alphax.config import AlphaXConfig
from broker.adapter import AdapterStatus

_ACCEPTED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
_POLL_S = 0.25
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


@dataclass
class _Batch:
    remaining: int
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Pending:
    message: Message
    batch: _Batch | None  # None once the batch gave up on it (ack timeout)
    published_at: float


class MqttWriter:
    """One paho client publishing AlphaX messages at QoS 1 (see the module docstring)."""

    def __init__(
        self, cfg: AlphaXConfig, name: str, status: AdapterStatus, log: logging.Logger
    ) -> None:
        self.cfg = cfg
        self.status = status
        self.log = log
        url = urlsplit(cfg.mqtt_url_or_default)
        self.tls = url.scheme == "mqtts"
        self.host = url.hostname or ""
        self.port = url.port or (8883 if self.tls else 1883)
        self.where = f"{self.host}:{self.port}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"junction-{name}-{secrets.token_hex(4)}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(cfg.token, cfg.password or None)
        if self.tls:
            self.client.tls_set_context(ssl.create_default_context(cafile=cfg.ca_file))
        self.client.max_inflight_messages_set(cfg.max_inflight)
        self.client.max_queued_messages_set(cfg.max_queued)
        self.client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish = self._on_publish
        self.client.on_socket_open = self._on_socket_open
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._early: dict[int, float] = {}
        self._room = trio.Event()
        self._link_up = trio.Event()  # set while connected (trio's view; see _up / _down)
        self._waiting_for_room = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._started = False
        self._last_logged: dict[str, float] = {}
        self.connected = False
        self.connects = 0
        self.published = 0
        self.acked = 0
        self.late_acks = 0
        self.inflight_full = 0
        self.queue_full = 0
        self.ack_timeouts = 0
        self.refused = 0
        #: Un-acknowledged messages at each reconnect (paho sends them again, DUP set).
        self.resent = 0

    # --- trio side -------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (non-blocking; paho's thread connects and reconnects)."""
        if self._started:
            return
        self._started = True
        self._token = trio.lowlevel.current_trio_token()
        self.status.set("connecting", self.where)
        self.client.connect_async(self.host, self.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def outstanding(self) -> int:
        """Messages handed to paho and not acknowledged (including given-up ones)."""
        with self._lock:
            return len(self._pending)

    async def send(self, messages: Sequence[Message]) -> list[Failure]:
        """Publish ``messages`` at QoS 1 and return once all are acknowledged (or failed)."""
        self.start()
        failures: list[Failure] = []
        if not messages:
            return failures
        batch = _Batch(remaining=len(messages))
        for message in messages:
            if not await self._publish(message, batch):
                reason = "the MQTT client refused the message (see the log)"
                failures += [(env, reason) for env in message.envelopes]
        return failures + await self._await_acks(batch)

    async def _publish(self, message: Message, batch: _Batch) -> bool:
        while True:
            # Publish only while connected: paho sends what it queued while disconnected only
            # after CONNACK, so a message published during the handshake would overtake them
            # (the v4 and channel topic forms carry no timestamp: arrival order is their time).
            await self._link_up.wait()
            await self._wait_for_room()
            if self.outstanding() >= self.cfg.max_inflight:
                self.inflight_full += 1
                self._log_every(
                    logging.INFO,
                    "inflight",
                    f"in-flight window of {self.cfg.max_inflight} full: messages queue in the "
                    f"client ({self.inflight_full} times so far)",
                )
            try:
                info = self.client.publish(message.topic, message.payload, qos=1)
            except ValueError as err:  # payload too large, bad topic: not retryable
                self._settle(batch)
                self.log.error("MQTT publish refused: %s", codec.redact(str(err), self.cfg.token))
                return False
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self._note_queue_full()  # paho still holds given-up messages: wait for room
                await trio.sleep(0.05)
                continue
            if info.rc not in _ACCEPTED:
                self._settle(batch)
                self.log.error("MQTT publish failed: %s", mqtt.error_string(info.rc))
                return False
            self.published += 1
            with self._lock:
                if self._early.pop(info.mid, None) is not None:
                    self.acked += 1
                    batch.remaining -= 1
                    finished = batch.remaining == 0
                else:
                    self._pending[info.mid] = _Pending(message, batch, time.monotonic())
                    finished = False
                    self._prune_early()
            if finished:
                batch.done.set()
            return True

    def _settle(self, batch: _Batch) -> None:
        with self._lock:
            batch.remaining -= 1
            finished = batch.remaining == 0
        if finished:
            batch.done.set()

    async def _wait_for_room(self) -> None:
        if self.outstanding() < self.cfg.max_queued:
            return
        self._note_queue_full()
        while self.outstanding() >= self.cfg.max_queued:
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
            f"max_queued = {self.cfg.max_queued} un-acknowledged messages reached: waiting for "
            f"PUBACKs before publishing more ({self.queue_full} times so far)",
        )

    async def _await_acks(self, batch: _Batch) -> list[Failure]:
        budget = self.cfg.ack_timeout_s
        while not batch.done.is_set():
            began = trio.current_time()
            with trio.move_on_after(min(_POLL_S, budget)):
                await batch.done.wait()
            if batch.done.is_set():
                break
            if self.connected:
                budget -= trio.current_time() - began
            if budget <= 0:
                return self._give_up(batch)
        return []

    def _give_up(self, batch: _Batch) -> list[Failure]:
        with self._lock:
            lost = [p for p in self._pending.values() if p.batch is batch]
            for pending in lost:
                pending.batch = None
            batch.remaining = 0
        self.ack_timeouts += len(lost)
        reason = (
            f"no PUBACK from {self.where} within {self.cfg.ack_timeout_s:g} s of connected time; "
            "the MQTT client still holds the message and may deliver it late (a duplicate)"
        )
        self.log.error("%d MQTT messages: %s", len(lost), reason)
        return [(env, reason) for p in lost for env in p.message.envelopes]

    def _prune_early(self) -> None:
        # Called under the lock. An early ack is matched microseconds after it arrives; one
        # older than a minute can only be a stray and must not match a reused mid later.
        if self._early:
            old = time.monotonic() - 60
            for mid in [m for m, t in self._early.items() if t < old]:
                del self._early[mid]

    async def aclose(self) -> None:
        """Disconnect and join paho's thread; un-acknowledged messages are reported."""
        if not self._started:
            return
        left = self.outstanding()
        if left:
            self.log.warning(
                "closing the MQTT connection with %d un-acknowledged messages (those of an "
                "unfinished delivery are requeued, given-up ones were dead-lettered)",
                left,
            )
        self._token = None
        self.client.disconnect()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.client.loop_stop)

    def _log_every(self, level: int, key: str, text: str, every_s: float = 60.0) -> None:
        now = time.monotonic()
        if now - self._last_logged.get(key, -every_s) >= every_s:
            self._last_logged[key] = now
            self.log.log(level, "MQTT %s: %s", self.where, text)

    # --- paho's thread ---------------------------------------------------------------------

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a raising callback would end the trio run
            self.log.exception("MQTT state update failed")

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        finished: _Batch | None = None
        self._quick_ack(client)
        with self._lock:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._early[mid] = time.monotonic()
                return
            self.acked += 1
            batch = pending.batch
            if batch is None:
                self.late_acks += 1
            else:
                batch.remaining -= 1
                if batch.remaining == 0:
                    finished = batch
            room = self._waiting_for_room
        if finished is not None:
            self._call_soon(finished.done.set)
        if room:
            self._call_soon(self._wake_room)

    @staticmethod
    def _quick_ack(client: mqtt.Client) -> None:
        # A broker with Nagle on (mosquitto's default) holds PUBACK n+1 until our TCP ACK of
        # PUBACK n arrives, and Linux delays that ACK up to 40 ms when we have nothing to send
        # -- which is the case while a batch waits for its acks. TCP_QUICKACK (Linux, not
        # sticky: set again on every ack) sends the ACK now. Measured against a default
        # mosquitto: 11.8k -> 97k channel writes/s (bulk), p50 25 -> 1 ms (one per channel).
        sock = cast(socket.socket | None, client.socket())
        if sock is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _wake_room(self) -> None:
        self._room.set()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Any,
    ) -> None:
        if reason.is_failure:
            self.refused += 1
            self._call_soon(self._refused, str(reason))
            return
        self.connected = True
        self.connects += 1
        outstanding = self.outstanding()
        if self.connects > 1:
            self.resent += outstanding
        self._call_soon(self._up, self.connects, outstanding)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Any,
    ) -> None:
        was = self.connected
        self.connected = False
        if was:
            self._call_soon(self._down, str(reason))

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle's algorithm on: with QoS 1 pipelining, a small PUBLISH written
        # while an earlier one is unacknowledged at the TCP level waits for that ACK (tens of
        # ms with delayed ACKs). Each publish is one complete packet: send it at once.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as err:  # not a TCP socket (e.g. a proxy wrapper)
            self.log.debug("MQTT socket: TCP_NODELAY not set: %s", err)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._call_soon(self._down, "connection failed")

    # --- state changes, on the trio thread ---------------------------------------------------

    def _up(self, connects: int, outstanding: int) -> None:
        self._link_up.set()
        if connects > 1:
            self.status.reconnects += 1
        self.status.set("connected", f"mqtt {self.where}")
        self.log.info(
            "MQTT connected to %s (connection %d; %d un-acknowledged messages are re-sent)",
            self.where,
            connects,
            outstanding,
        )

    def _down(self, reason: str) -> None:
        if self._link_up.is_set():
            self._link_up = trio.Event()
        self.status.set("disconnected", f"mqtt {self.where}: {reason}; paho reconnects")
        self._log_every(
            logging.WARNING,
            f"down:{reason}",
            f"disconnected ({reason}); reconnecting, {self.outstanding()} messages kept",
            every_s=10.0,
        )

    def _refused(self, reason: str) -> None:
        self.status.set("auth-failed", f"mqtt {self.where} refused the connection: {reason}")
        self._log_every(
            logging.ERROR,
            f"refused:{reason}",
            f"the broker refused the connection: {reason} (check the token and password)",
        )
