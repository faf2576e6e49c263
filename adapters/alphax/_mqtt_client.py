"""paho's MQTT client, reading its socket 64 KiB at a time.

paho reads a packet in pieces straight from the socket: the fixed header's first byte, its
remaining-length bytes one by one, then the rest -- three ``recv`` calls (three system calls)
for a 4-byte PUBACK, and a flood of QoS 1 publishes brings one PUBACK per message.
:class:`ReadAheadClient` serves those small reads from one large read instead. Only
``_sock_recv`` changes (paho's one funnel for socket reads: it turns TLS's want-read into
``BlockingIOError``, which paho takes as "no more for now"); everything above it is paho's.

The read-ahead belongs to one socket: after a reconnect, bytes read from the old socket are
dropped, never served on the new one. Whoever drives ``loop_read`` must call it again while
:meth:`ReadAheadClient.read_ahead_pending` (as for a TLS socket's ``pending()``): paho stops
after as many packets as it has messages in flight, and what is left in the buffer is no
longer visible to ``wait_readable``.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt

#: One socket read; PUBACKs are 4 bytes, so one read covers thousands of them.
READ_AHEAD = 64 * 1024


class ReadAheadClient(mqtt.Client):
    """A paho ``Client`` whose socket reads are served from one ``READ_AHEAD`` read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ahead = b""
        self._ahead_at = 0
        self._ahead_sock: Any = None

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
