"""paho's MQTT client with a cheaper socket path: reads ahead, writes in batches, and
acknowledges a PUBACK without building objects nobody reads.

Measured on the Node-RED comparison's flood (py-spy, loop thread), paho's own per-message
costs under QoS 1 were: three ``recv`` system calls per 4-byte PUBACK (the fixed header's first
byte, its length byte, then the rest), one ``send`` per PUBLISH, and a fresh ``ReasonCode`` and
``Properties`` decoded for every PUBACK even on MQTT 3.1.1, where a PUBACK carries neither.
:class:`BatchingClient` changes only paho's private funnels for these (``_sock_recv``,
``_sock_send``, ``_handle_pubackcomp``, ``loop_write``, ``want_write``); the protocol state
(``_out_messages``, in-flight counts, resends after a reconnect) stays paho's own.

- **Read-ahead.** Socket reads are served from one ``READ_AHEAD`` read. Whoever drives
  ``loop_read`` must call it again while :meth:`BatchingClient.read_ahead_pending` (as for a
  TLS socket's ``pending()``): paho stops after as many packets as it has messages in flight,
  and bytes already read are invisible to ``wait_readable``.
- **Corked writes.** Between :meth:`cork` and :meth:`uncork` what paho sends is only appended
  to a buffer; ``uncork`` writes the buffer with as few ``send`` calls as the socket allows.
  Bytes the socket did not take stay buffered, in order, ahead of anything paho sends later:
  ``want_write()`` is then true and ``loop_write()`` writes them first. A write error is
  handled as paho handles its own (``MQTT_ERR_CONN_LOST``: the connection is closed and the
  un-acknowledged messages are sent again after the next CONNACK). The caller must uncork
  before it waits for anything: corked bytes are not on the wire, so their PUBACKs never come.
- **PUBACK fast path** (MQTT 3.1.1, the 2-byte PUBACK): the message id is read directly and
  paho's own ``_do_on_publish`` is called with one shared success code and one shared empty
  property set. Anything else (MQTT 5, a malformed PUBACK, PUBCOMP) goes through paho.

Buffers belong to one socket: after a reconnect nothing read from or meant for the old socket
is served or sent on the new one.
"""

from __future__ import annotations

from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: One socket read; PUBACKs are 4 bytes, so one read covers thousands of them.
READ_AHEAD = 64 * 1024

_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)  # what paho decodes a 3.1.1 PUBACK to
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


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
        if cmd != "PUBACK" or self._protocol != MQTTProtocolVersion.MQTTv311 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
