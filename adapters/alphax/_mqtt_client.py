"""paho's MQTT client with a cheaper hot path: Junction writes its own QoS 1 PUBLISH packets,
reads ahead, writes in batches, and takes PUBACKs without building objects nobody reads.

Measured on the Node-RED comparison's flood (py-spy, loop thread), paho's own per-message
costs under QoS 1 were: ``publish()`` (an ``MQTTMessage``, an ``MQTTMessageInfo`` with its
``Condition``, topic checks, the packet built in several steps, about 11-14 us), three
``recv`` system calls per 4-byte PUBACK (the fixed header's first byte, its length byte, then
the rest), one ``send`` per PUBLISH, and a fresh ``ReasonCode`` and ``Properties`` decoded for
every PUBACK even on MQTT 3.1.1, where a PUBACK carries neither. paho keeps the connection
(CONNECT/CONNACK, keepalive, PINGREQ/PINGRESP, DISCONNECT, its socket callbacks); the QoS 1
messages are the writer's own (:class:`~adapters.alphax._mqtt.MqttWriter`): it picks their
message ids, keeps them until their PUBACK and sends them again after a reconnect. paho's
``_out_messages`` stays empty.

- **Own PUBLISH packets.** :meth:`BatchingClient.write_publish` appends one QoS 1 PUBLISH
  (MQTT 3.1.1, section 3.3) for a message id the caller chose, checked as paho checks a topic
  and a payload (``ValueError`` otherwise).
- **PUBACKs to one hook.** A 3.1.1 PUBACK (2 bytes: the message id) calls ``on_puback_mid``
  with its id: from :meth:`drain_pubacks`, which takes every whole PUBACK at the head of the
  read-ahead in one loop, or from paho's own packet path (``_handle_pubackcomp``) when a
  PUBACK arrived split across reads. Anything else goes through paho.
- **Read-ahead.** Socket reads are served from one ``READ_AHEAD`` read. Whoever drives
  the reads must go on while :meth:`BatchingClient.read_ahead_pending` (as for a TLS socket's
  ``pending()``): bytes already read are invisible to ``wait_readable``.
- **Corked writes.** Between :meth:`cork` and :meth:`uncork` what is written is only appended
  to a buffer; ``uncork`` writes the buffer with as few ``send`` calls as the socket allows.
  Bytes the socket did not take stay buffered, in order, ahead of anything written later:
  ``want_write()`` is then true and ``loop_write()`` writes them first. A write error is
  handled as paho handles its own (``MQTT_ERR_CONN_LOST``: the connection is closed; the
  writer sends its un-acknowledged messages again after the next CONNACK). The caller must
  uncork before it waits for anything: corked bytes are not on the wire, so their PUBACKs
  never come.

Buffers belong to one socket: after a reconnect nothing read from or meant for the old socket
is served or sent on the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

#: One socket read; PUBACKs are 4 bytes, so one read covers thousands of them.
READ_AHEAD = 64 * 1024
#: The largest remaining length MQTT can express (four length bytes), as paho checks it.
MAX_REMAINING = 268_435_455

_PUBACK = 0x40  # fixed header of a PUBACK; its remaining length is 2 on MQTT 3.1.1
_PUBLISH_QOS1 = 0x32  # PUBLISH, QoS 1, no retain
_DUP = 0x08


class BatchingClient(mqtt.Client):
    """A paho ``Client`` with read-ahead, corked writes and a PUBACK fast path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ahead = b""
        self._ahead_at = 0
        self._ahead_sock: Any = None
        self._unsent = bytearray()
        self._unsent_sock: Any = None
        #: Between cork() and uncork() (read it, do not set it).
        self.corked = False
        #: Called with the message id of every MQTT 3.1.1 PUBACK (see the module docstring).
        self.on_puback_mid: Callable[[int], None] | None = None

    # --- reads --------------------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is not self._ahead_sock:  # a new connection: nothing of the old one is served
            self._ahead, self._ahead_at, self._ahead_sock = b"", 0, sock
        ahead, at = self._ahead, self._ahead_at
        if at >= len(ahead):
            # raises as paho's own would: BlockingIOError (nothing yet), ConnectionError, OSError
            ahead = super()._sock_recv(READ_AHEAD)
            at = 0
            if not ahead:  # the peer closed: paho sees the empty read
                self._ahead, self._ahead_at = b"", 0
                return ahead
        end = at + bufsize
        self._ahead, self._ahead_at = ahead, end
        return ahead[at:end]

    def read_ahead_pending(self) -> bool:
        """Bytes of the current socket read but not yet handed to paho."""
        return self._sock is self._ahead_sock and self._ahead_at < len(self._ahead)

    def fill_read_ahead(self) -> bool:
        """One socket read into the read-ahead when it is empty; False when the socket had
        nothing (``BlockingIOError``). An error or the peer closing is left to paho:
        :meth:`loop_read` then sees it (the same error, or the empty read) and disconnects."""
        if self.read_ahead_pending():
            return True
        sock = self._sock
        if sock is None:
            return False
        try:
            data = super()._sock_recv(READ_AHEAD)
        except BlockingIOError:
            return False
        except OSError:
            self.loop_read()  # paho reads again and handles the error as its own
            return False
        if not data:
            self.loop_read()  # the peer closed: paho sees the empty read
            return False
        self._ahead, self._ahead_at, self._ahead_sock = data, 0, sock
        return True

    def drain_pubacks(self) -> int:
        """Hand every whole 3.1.1 PUBACK at the head of the read-ahead to ``on_puback_mid``
        (only between packets: a packet paho has begun is paho's to finish); how many."""
        hook = self.on_puback_mid
        if (
            hook is None
            or self._in_packet["command"] != 0
            or self._sock is not self._ahead_sock
            or self._protocol != MQTTProtocolVersion.MQTTv311
        ):
            return 0
        ahead, at = self._ahead, self._ahead_at
        start, end = at, len(ahead) - 3
        while at < end and ahead[at] == _PUBACK and ahead[at + 1] == 2:
            self._ahead_at = at + 4  # before the hook: what it does never sees this ack again
            hook((ahead[at + 2] << 8) | ahead[at + 3])
            at += 4
        if at == start:
            return 0
        with self._msgtime_mutex:  # what paho's keepalive reads (it would set it per packet)
            self._last_bytes_received = mqtt.time_func()
        return (at - start) // 4

    # --- PUBLISH ------------------------------------------------------------------------------

    def write_publish(self, mid: int, topic: bytes, payload: bytes, dup: bool = False) -> bool:
        """Write one QoS 1 PUBLISH for ``mid`` (buffered while corked); False when there is no
        socket (the caller keeps the message for after the next CONNACK).

        Raises ``ValueError`` for what paho's ``publish`` refuses: an empty topic or one with a
        wildcard, a topic over 65535 bytes, a packet over MQTT's 268,435,455 bytes.
        """
        if not topic or b"+" in topic or b"#" in topic:
            raise ValueError("Publish topic cannot contain wildcards and cannot be empty.")
        if len(topic) > 65535:
            raise ValueError("Publish topic is longer than 65535 bytes.")
        remaining = 4 + len(topic) + len(payload)
        if remaining > MAX_REMAINING:
            raise ValueError("Payload too large.")
        sock = self._sock
        if sock is None:
            return False
        unsent = self._unsent
        if sock is not self._unsent_sock:  # bytes meant for a socket that is gone
            unsent.clear()
            self._unsent_sock = sock
        unsent.append(_PUBLISH_QOS1 | _DUP if dup else _PUBLISH_QOS1)
        while remaining > 0x7F:
            unsent.append((remaining & 0x7F) | 0x80)
            remaining >>= 7
        unsent.append(remaining)
        unsent += len(topic).to_bytes(2, "big")
        unsent += topic
        unsent += mid.to_bytes(2, "big")
        unsent += payload
        if not self.corked:
            self._flush()
        return True

    # --- writes -------------------------------------------------------------------------------

    def cork(self) -> None:
        """From now until :meth:`uncork`, what paho sends is buffered, not written."""
        self.corked = True

    def uncork(self) -> MQTTErrorCode:
        """Write what was buffered (what the socket does not take stays, see ``want_write``)."""
        self.corked = False
        return self._flush()

    def _sock_send(self, buf: bytes | bytearray) -> int:
        unsent = self._unsent
        if self._sock is not self._unsent_sock:  # meant for a socket that is gone
            unsent.clear()
            self._unsent_sock = self._sock
        if not self.corked and not unsent:
            return super()._sock_send(buf)
        if self._sock is None:
            raise ConnectionError("self._sock is None")
        unsent += buf  # in order behind what is already waiting
        return len(buf)

    def _flush(self) -> MQTTErrorCode:
        unsent = self._unsent
        if self._sock is not self._unsent_sock:
            unsent.clear()
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        while unsent:
            try:
                written = super()._sock_send(unsent)
            except BlockingIOError:  # the socket is full: want_write() says so
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except OSError:  # what paho's own _packet_write reports as a lost connection
                unsent.clear()
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            del unsent[:written]
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def want_write(self) -> bool:
        return (bool(self._unsent) and self._sock is self._unsent_sock) or super().want_write()

    def loop_write(self) -> MQTTErrorCode:
        # corked, paho's writes land in the buffer (_sock_send); uncorked, what is buffered
        # goes first, and paho's queued packets only once all of it is on the wire
        if not self.corked:
            rc = self._flush()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or (self._unsent and self._sock is not None):
                return rc
        return super().loop_write()

    # --- acknowledgements ---------------------------------------------------------------------

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        hook = self.on_puback_mid
        if (
            hook is None
            or cmd != "PUBACK"
            or self._protocol != MQTTProtocolVersion.MQTTv311
            or len(packet) != 2
        ):
            return super()._handle_pubackcomp(cmd)
        hook((packet[0] << 8) | packet[1])
        return MQTTErrorCode.MQTT_ERR_SUCCESS
