"""The MQTT connection to AlphaX's broker: paho-mqtt 2.x driven from trio.

:class:`MqttLink` owns the paho client and keeps it connected; :class:`~._mqtt.MqttWriter`
(a subclass) publishes on it and keeps the record of what awaits a PUBACK.

paho runs on this adapter's trio loop (shared unless ``own_thread``): no paho network
thread (``loop_start`` is not used). One driver task (a trio system task, see ``start``)
owns the connection:

- connect: ``client.reconnect()`` runs in ``trio.to_thread`` (DNS, TCP connect and the TLS
  handshake block; nothing else touches the client meanwhile: publishing waits for CONNACK);
  failures back off from ``reconnect_min_s`` doubling to ``reconnect_max_s``, reset by a CONNACK;
- read: ``trio.lowlevel.wait_readable(sock)``, then everything readable: one 64 KiB read, its
  whole PUBACKs handed to the writer in one pass (``BatchingClient.drain_pubacks``), any other
  packet through ``client.loop_read()`` (and again while the read-ahead or a TLS socket holds
  bytes, see :mod:`._mqtt_client`); then the reader lingers ``ACK_LINGER_S`` so that the
  PUBACKs arriving meanwhile are read together (a writer waiting for room cuts it short);
- write: a batch is written corked (``BatchingClient.cork``: the packets are collected and
  written together when the batch is done or before the writer waits for anything, see
  ``MqttWriter.publish``); whatever could not be written (``want_write()``: a full socket
  buffer, or packets paho queued itself, such as PINGREQ) is written by a writer task on
  ``wait_writable``;
- ``client.loop_misc()`` every ``_MISC_S``: keepalive PINGREQ, a missing PINGRESP, and a
  CONNACK that never comes (paho closes the socket after ``keepalive_s``; the status says so);
  then the writer's ack timeouts (``_every_misc``);
- ``on_socket_close`` calls ``trio.lowlevel.notify_closing`` so a task parked on the socket
  wakes; every task checks that ``client.socket()`` is still its socket after each paho call.

Callbacks run on the trio thread inside ``loop_read``/``loop_write``/``loop_misc`` and the
reader's PUBACK pass.

TCP tuning, because with nothing more to publish the adapter only waits for PUBACKs (nothing
of ours is on the wire to carry TCP ACKs): the socket gets ``TCP_NODELAY`` on every
(re)connect (paho does not set it), and ``TCP_QUICKACK`` after every read that brought PUBACKs
(see ``_quick_ack``). Without them a batch stalls tens of milliseconds on Nagle's algorithm
and delayed ACKs (measured with a default mosquitto: 11.8k instead of 97k channel writes/s,
and p50 25 ms instead of 1 ms at 1,000 messages/s).

Repeated lines (disconnects, refusals, a full window) go through :class:`broker._logs.LogGate`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import ssl
import time
from typing import Any, cast
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from adapters.alphax._mqtt_client import BatchingClient
from adapters.alphax.config import AlphaXConfig, MqttWrite
from broker import AdapterStatus, LogGate, backoff_delay

_MISC_S = 0.25  # loop_misc period: keepalive, the CONNACK / PINGRESP deadlines, ack timeouts
#: How long the reader lets PUBACKs gather before it reads again (see MqttLink._reader).
ACK_LINGER_S = 0.005
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class MqttLink:
    """One paho client, kept connected by a driver task (see the module docstring)."""

    def __init__(
        self,
        cfg: AlphaXConfig,
        mqtt_cfg: MqttWrite,
        name: str,
        status: AdapterStatus,
        log: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.mqtt = mqtt_cfg
        self.status = status
        self.log = log
        url = urlsplit(mqtt_cfg.url_for(cfg.tier))
        self.tls = url.scheme == "mqtts"
        self.host = url.hostname or ""
        self.port = url.port or (8883 if self.tls else 1883)
        self.where = f"{self.host}:{self.port}"
        self.client = BatchingClient(
            CallbackAPIVersion.VERSION2,
            client_id=f"junction-{name}-{secrets.token_hex(4)}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(cfg.token, mqtt_cfg.password or None)
        if self.tls:
            self.client.tls_set_context(ssl.create_default_context(cafile=cfg.ca_file))
        # paho's own window is off (0): with one, paho walks its whole outgoing queue on every
        # PUBACK once the window is full (``_update_inflight``); the writer keeps the window
        # itself (``max_inflight``, see MqttWriter._wait_for_room), so paho sends each message
        # at once and its queue never holds more than the window
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(mqtt_cfg.max_queued)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        # no on_socket_register_write: paho then writes inside publish() itself (see _kick)
        self._link_up = trio.Event()  # set while connected (see _up / _down)
        self._write = trio.Event()  # paho has bytes it could not write (see _kick)
        self._driver_error: str | None = None
        self._started = False
        self._driver: trio.CancelScope | None = None
        self._driver_done = trio.Event()
        self._acks_seen = 0  # PUBACKs handled (the subclass counts them; see _reader)
        self._read_soon = trio.Event()  # cuts the reader's linger short (see read_soon)
        self.ack_linger_s = ACK_LINGER_S
        self._connected_at: float | None = None  # time.monotonic() of the last CONNACK
        self._connected_total = 0.0
        self._drop_reason = ""  # of the last on_disconnect (see _no_connack)
        self._gate = LogGate(every_s=60.0)
        self._down_gate = LogGate(every_s=10.0)
        self.connected = False
        self.connects = 0
        self.refused = 0
        #: Un-acknowledged messages at each reconnect (paho sends them again, DUP set).
        self.resent = 0

    # --- trio side -------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (non-blocking; the driver task connects and reconnects)."""
        if self._started:
            return
        self._started = True
        self.status.set("connecting", self.where)
        # connect_async only records host, port and keepalive; the driver calls reconnect()
        self.client.connect_async(self.host, self.port, keepalive=self.mqtt.keepalive_s)
        self._driver = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._drive, name=f"mqtt {self.where}")

    def outstanding(self) -> int:
        """Messages handed to paho and not acknowledged (counted by the subclass)."""
        return 0

    def _connected(self) -> None:
        """CONNACK arrived (inside paho's read): the subclass writes its re-sends here."""

    def _wake(self) -> None:
        """The driver died: wake every task waiting on the link (they then raise)."""
        self._link_up.set()

    async def aclose(self) -> None:
        """Disconnect and end the driver task."""
        if not self._started:
            return
        with trio.CancelScope(shield=True):
            if self._link_up.is_set():
                self.client.disconnect()  # queues DISCONNECT, written now or by the writer
                self._kick()
                with trio.move_on_after(1.0):
                    while self.client.socket() is not None:
                        await trio.sleep(0.01)
            if self._driver is not None:
                self._driver.cancel()
            await self._driver_done.wait()
            sock = self.client.socket()
            if sock is not None:  # DISCONNECT not written within the second: just close
                self._on_socket_close(self.client, None, sock)
                sock.close()

    def _log_every(self, level: int, key: str, text: str, gate: LogGate | None = None) -> None:
        allowed, held = (gate or self._gate).allow(key)
        if allowed:
            more = f" ({held} more held back)" if held else ""
            self.log.log(level, "MQTT %s: %s%s", self.where, text, more)

    # --- the driver: connect, read, write, keepalive, reconnect -------------------------------

    async def _drive(self) -> None:
        # A system task: an exception here would end the whole trio run, so none escapes.
        try:
            assert self._driver is not None
            with self._driver:
                await self._connect_forever()
        except Exception as err:
            self.log.exception("MQTT %s: the connection driver failed", self.where)
            self.status.set("crashed", f"mqtt {self.where}: the connection driver failed")
            self._driver_error = f"the MQTT connection driver failed: {err!r}"
            self._wake()  # every waiting publish: _check_driver raises for them
        finally:
            self._driver_done.set()

    def _check_driver(self) -> None:
        """Raise once the driver died: the adapter crashes and its actor starts a new
        one (with a new client), rather than every publish waiting forever."""
        if self._driver_error is not None:
            raise RuntimeError(self._driver_error)

    async def _connect_forever(self) -> None:
        # Waits between attempts (the project's one back-off, broker._backoff): about
        # reconnect_min_s after a connection that got its CONNACK, else doubling per failed
        # attempt up to reconnect_max_s, jittered so a fleet does not reconnect in step.
        least, most = float(self.mqtt.reconnect_min_s), float(self.mqtt.reconnect_max_s)
        failures = 0
        while True:
            connacked = await self._connect_once()
            failures = 0 if connacked else failures + 1
            await trio.sleep(backoff_delay(max(1, failures), least, most))

    async def _connect_once(self) -> bool:
        """One connection, from connect to close; whether it got its CONNACK."""
        try:
            # DNS, TCP connect and TLS handshake block: on a worker thread. The trio side
            # does not touch the client meanwhile (publishing waits for _link_up).
            rc = await trio.to_thread.run_sync(self.client.reconnect)
        except (OSError, ValueError) as err:  # refused, unreachable, timeout, TLS
            self._down(f"connection failed: {type(err).__name__}: {err}")
            return False
        sock = self.client.socket()
        if sock is None or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._down(f"connection failed: {mqtt.error_string(rc)}")
            return False
        connects, refused = self.connects, self.refused
        self._drop_reason = ""
        try:
            await self._serve(sock)
        except Exception:  # a bug of ours or paho's: drop this connection, keep driving
            self.log.exception("MQTT %s: connection handling failed", self.where)
            self.connected = False
            self._stop_connected_clock()
            self._down("connection handling failed")
            # the next reconnect() closes the socket paho still holds
        if self.connects > connects:
            return True
        if self.refused == refused:  # no CONNACK at all (a refusal set auth-failed)
            self._down(self._no_connack())
        return False

    async def _serve(self, sock: Any) -> None:
        """Run the reader, writer and keepalive tasks until paho closes ``sock``."""
        self._kick()  # CONNECT may be partly unwritten
        async with trio.open_nursery() as nursery:
            for task in (self._reader, self._writer, self._misc):
                nursery.start_soon(self._until_closed, task, sock, nursery.cancel_scope)

    @staticmethod
    async def _until_closed(task: Any, sock: Any, scope: trio.CancelScope) -> None:
        try:
            await task(sock)
        except trio.ClosedResourceError:  # notify_closing from on_socket_close
            pass
        finally:
            scope.cancel()

    async def _reader(self, sock: Any) -> None:
        pending = getattr(sock, "pending", None)  # TLS: decrypted bytes epoll cannot see
        while self._mine(sock):
            await trio.lowlevel.wait_readable(sock)
            acks = self._acks_seen
            self._read_all(sock, pending)
            if not self._mine(sock):
                break
            if self._acks_seen != acks:
                self._quick_ack(sock)
            self._kick()
            # Lazy acknowledgements: PUBACKs that arrive meanwhile are read together after a
            # short linger instead of waking the loop for each one (at 1,000 messages/s that
            # is one wake-up in ``ACK_LINGER_S`` instead of one per message). A writer waiting
            # for room in its window cuts the linger short (``read_soon``).
            if self.ack_linger_s > 0 and not self._read_soon.is_set():
                with trio.move_on_after(self.ack_linger_s):
                    await self._read_soon.wait()
            self._read_soon = trio.Event()

    def _read_all(self, sock: Any, pending: Any) -> None:
        """Everything readable now: whole PUBACKs in one loop, other packets through paho."""
        client = self.client
        while self._mine(sock):
            if not client.fill_read_ahead():
                # nothing in the socket; a TLS socket may still hold decrypted bytes
                if pending is None or not pending():
                    return
                client.loop_read()
                continue
            client.drain_pubacks()
            if client.read_ahead_pending():  # another packet (or a split one) at the head
                client.loop_read()

    def read_soon(self) -> None:
        """Read what has arrived without waiting out the linger (a writer needs room)."""
        self._read_soon.set()

    async def _writer(self, sock: Any) -> None:
        client = self.client
        while self._mine(sock):
            await self._write.wait()
            self._write = trio.Event()
            while self._mine(sock) and client.want_write():
                await trio.lowlevel.wait_writable(sock)
                if self._mine(sock):
                    client.loop_write()

    async def _misc(self, sock: Any) -> None:
        client = self.client
        while self._mine(sock):
            await trio.sleep(_MISC_S)
            if self._mine(sock):
                client.loop_misc()
                self._kick()
                self._every_misc()

    def _every_misc(self) -> None:
        """Called every ``_MISC_S`` while a connection is served (the writer's ack timeouts)."""

    def connected_time(self) -> float:
        """Seconds spent connected (CONNACK to disconnect) since this link was made."""
        since = self._connected_at
        return self._connected_total + (time.monotonic() - since if since is not None else 0.0)

    def _no_connack(self) -> str:
        # paho gives up on a CONNACK after keepalive_s (loop_misc): "Keep alive timeout"
        if self._drop_reason == "Keep alive timeout":
            return f"no CONNACK within keepalive_s = {self.mqtt.keepalive_s} s"
        return f"connection closed before CONNACK ({self._drop_reason or 'no reason given'})"

    def _mine(self, sock: Any) -> bool:
        """Whether paho still uses ``sock`` (a call into paho may have closed it)."""
        return self.client.socket() is sock

    def _kick(self) -> None:
        # paho left bytes unwritten (socket buffer full, or queued inside a callback)
        if self.client.want_write():
            self._write.set()

    # --- paho's callbacks (on the trio thread, inside loop_read / loop_write / loop_misc) ---

    @staticmethod
    def _quick_ack(sock: Any) -> None:
        # A broker with Nagle on (mosquitto's default) holds PUBACK n+1 until our TCP ACK of
        # PUBACK n arrives, and Linux delays that ACK up to 40 ms when we have nothing to send
        # -- which is the case while a batch waits for its acks. TCP_QUICKACK (Linux, not
        # sticky: set again after every read that brought acks) sends the ACK now. Measured
        # against a default mosquitto: 11.8k -> 97k channel writes/s (bulk), p50 25 -> 1 ms.
        if _QUICKACK is not None:
            with contextlib.suppress(OSError, AttributeError):
                cast(socket.socket, sock).setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Any,
    ) -> None:
        try:
            if reason.is_failure:
                self.refused += 1
                self._refused(str(reason))
                return
            self.connected = True
            self._connected_at = time.monotonic()
            self.connects += 1
            outstanding = self.outstanding()
            if self.connects > 1:
                self.resent += outstanding
            self._connected()
            if self.connected:  # the re-sends did not lose the connection again
                self._up(self.connects, outstanding)
        except Exception:
            self.log.exception("MQTT state update failed")

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
        self._stop_connected_clock()
        self._drop_reason = str(reason)
        if was:
            try:
                self._down(str(reason))
            except Exception:
                self.log.exception("MQTT state update failed")

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # On the connect worker thread. paho leaves Nagle's algorithm on: with QoS 1
        # pipelining, a small PUBLISH written while an earlier one is unacknowledged at the TCP
        # level waits for that ACK (tens of ms with delayed ACKs). Send each packet at once.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as err:  # not a TCP socket (e.g. a proxy wrapper)
            self.log.debug("MQTT socket: TCP_NODELAY not set: %s", err)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Wake the tasks parked on this socket (they raise ClosedResourceError) before paho
        # closes it: trio must not wait on a closed (and maybe reused) file descriptor.
        # Outside the trio thread (reconnect() on the worker closing a socket already closed
        # here) there is nothing to wake.
        try:
            trio.lowlevel.notify_closing(sock)
        except RuntimeError:  # not on the trio thread: no task of ours waits on it
            return
        except (OSError, ValueError):  # already closed: nothing registered
            pass
        self._write.set()  # the writer re-checks its socket

    # --- state changes ------------------------------------------------------------------------

    def _stop_connected_clock(self) -> None:
        if self._connected_at is not None:
            self._connected_total += time.monotonic() - self._connected_at
            self._connected_at = None

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
        self.status.set("disconnected", f"mqtt {self.where}: {reason}; reconnecting")
        self._log_every(
            logging.WARNING,
            f"down:{reason}",
            f"disconnected ({reason}); reconnecting, {self.outstanding()} messages kept",
            self._down_gate,
        )

    def _refused(self, reason: str) -> None:
        self.status.set("auth-failed", f"mqtt {self.where} refused the connection: {reason}")
        self._log_every(
            logging.ERROR,
            f"refused:{reason}",
            f"the broker refused the connection: {reason} (check the token and password)",
        )
