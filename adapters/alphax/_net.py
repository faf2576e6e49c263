"""UDP and TCP to AlphaX: one JSON uplink per datagram / per newline-terminated line.

**Best effort.** AlphaX answers nothing on these transports, so nothing is acknowledged:

- UDP: a datagram that leaves this host may still be lost. An uplink over
  ``max_datagram_bytes`` (1200, under a typical path MTU) is split by channel before sending.
  A send that raises (no route, ICMP refused reported by the kernel) is tried once more on a
  fresh socket, then its envelopes fail with the error (dead-lettered).
- TCP: lines are written with ``send_all``; a connection the server closed is noticed before
  writing when possible (plain TCP) and reconnected with back-off while the data waits. Bytes
  accepted by the kernel just before the connection broke may be lost; after a failed write the
  whole write is sent again on the new connection, so a value may be stored twice.

Counts of what was sent (datagrams, lines, values, bytes, errors) are kept on the writers.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import trio

from adapters.alphax import codec
from adapters.alphax._uplinks import Doc, Failure, encode_docs, split_for_datagrams
from adapters.alphax._writer import Sent
from adapters.alphax.config import AlphaXConfig, TcpWrite, UdpWrite
from broker import AdapterStatus, Envelope, LogGate, backoff_delay


class _Counts:
    """What UDP and TCP writers share: counts of what was sent, the log gate, the encoding."""

    defers_acks = False  # best effort: nothing is acknowledged, later or otherwise

    def __init__(self, cfg: AlphaXConfig, status: AdapterStatus, log: logging.Logger) -> None:
        self.cfg = cfg
        self.status = status
        self.log = log
        self.unencodable = 0
        self.sent_docs = 0
        self.sent_values = 0
        self.sent_bytes = 0
        self.errors = 0
        self._gate = LogGate(every_s=30.0)

    def encode(self, batch: Sequence[Envelope]) -> tuple[list[Doc], list[Failure]]:
        docs, failures = encode_docs(batch, self.cfg.token, self.cfg.uplink, self.cfg.v1_gaps)
        self.unencodable += len(failures)
        return docs, failures

    def count(self, doc: Doc) -> None:
        self.sent_docs += 1
        self.sent_values += len(doc.envelopes)
        self.sent_bytes += len(doc.body)

    def log_every(self, level: int, text: str) -> None:
        allowed, held = self._gate.allow(text)
        if allowed:
            more = f" ({held} more like it held back)" if held else ""
            self.log.log(level, "%s%s", text, more)

    def stats(self) -> dict[str, Any]:
        """Documents, values and bytes sent; send errors."""
        return {
            "unencodable": self.unencodable,
            "sent_docs": self.sent_docs,
            "sent_values": self.sent_values,
            "sent_bytes": self.sent_bytes,
            "errors": self.errors,
        }


class UdpWriter(_Counts):
    """Sends each doc as one datagram to ``host:port`` (see the module docstring)."""

    def __init__(
        self, cfg: AlphaXConfig, udp: UdpWrite, status: AdapterStatus, log: logging.Logger
    ) -> None:
        super().__init__(cfg, status, log)
        self.udp = udp
        self.where = f"udp {udp.host}:{udp.port}"
        self._sock: trio.socket.SocketType | None = None

    def open(self) -> None:
        """Nothing to connect: the socket is made by the first send."""
        self.status.set("ready", "udp to AlphaX")

    async def send(self, batch: Sequence[Envelope]) -> Sent:
        """Encode ``batch`` (splitting big uplinks) and send one datagram per uplink."""
        docs, failures = self.encode(batch)
        docs, more = split_for_datagrams(docs, self.cfg.token, self.udp.max_datagram_bytes)
        self.unencodable += len(more)
        return Sent(failures + more + await self.send_docs(docs))

    async def _socket(self) -> trio.socket.SocketType:
        if self._sock is None:
            infos = await trio.socket.getaddrinfo(
                self.udp.host, self.udp.port, type=socket.SOCK_DGRAM
            )
            family, kind, proto, _, address = infos[0]
            sock = trio.socket.socket(family, kind, proto)
            try:
                await sock.connect(address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    async def send_docs(self, docs: Sequence[Doc]) -> list[Failure]:
        """Send every doc; returns the envelopes of datagrams that could not be sent."""
        failures: list[Failure] = []
        for doc in docs:
            for attempt in (1, 2):
                try:
                    sock = await self._socket()
                    await sock.send(doc.body)
                except OSError as err:
                    self.close()
                    self.errors += 1
                    if attempt == 2:
                        reason = f"UDP send to {self.udp.host}:{self.udp.port} failed: {err}"
                        self.log_every(logging.ERROR, reason)
                        self.status.set("send-errors", reason)
                        failures += [(env, reason) for env in doc.envelopes]
                    continue
                self.count(doc)
                break
        if len(failures) < sum(len(d.envelopes) for d in docs):
            self.status.set("sending", f"{self.where} (best effort)")
        return failures

    def close(self) -> None:
        """Close the socket (a new one is made on the next send)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def aclose(self) -> None:
        """Release the socket."""
        self.close()


class TcpWriter(_Counts):
    """Writes each doc as one line on a kept-open TCP (or TLS) connection."""

    def __init__(
        self, cfg: AlphaXConfig, tcp: TcpWrite, status: AdapterStatus, log: logging.Logger
    ) -> None:
        super().__init__(cfg, status, log)
        self.tcp = tcp
        self.where = f"{'tls' if tcp.tls else 'tcp'} {tcp.host}:{tcp.port}"
        self._stream: trio.abc.Stream | None = None
        self.connects = 0

    def open(self) -> None:
        """The connection is made by the first send (and again after it broke)."""
        self.status.set("ready", "tcp to AlphaX")

    async def send(self, batch: Sequence[Envelope]) -> Sent:
        """Encode ``batch`` and write one line per uplink."""
        docs, failures = self.encode(batch)
        return Sent(failures + await self.send_docs(docs))

    async def _connect(self) -> trio.abc.Stream:
        if self._stream is not None and not self._peer_closed(self._stream):
            return self._stream
        await self._drop()
        self.status.set("connecting", self.where)
        with trio.fail_after(self.cfg.connect_timeout_s):
            stream: trio.abc.Stream
            if self.tcp.tls:
                context = ssl.create_default_context(cafile=self.cfg.ca_file)
                stream = await trio.open_ssl_over_tcp_stream(
                    self.tcp.host, self.tcp.port, ssl_context=context
                )
            else:
                stream = await trio.open_tcp_stream(self.tcp.host, self.tcp.port)
        self.connects += 1
        if self.connects > 1:
            self.status.reconnects += 1
        self.status.set("connected", f"{self.where} (best effort)")
        self._stream = stream
        return stream

    @staticmethod
    def _peer_closed(stream: trio.abc.Stream) -> bool:
        """True if the server closed a plain TCP connection (it never sends anything)."""
        if not isinstance(stream, trio.SocketStream):
            return False
        readable, _, _ = select.select([stream.socket.fileno()], [], [], 0)
        return bool(readable)

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def send_docs(self, docs: Sequence[Doc]) -> list[Failure]:
        """Write the docs as lines; reconnects and re-sends while the server is unreachable."""
        if not docs:
            return []
        data = b"".join(doc.body + b"\n" for doc in docs)
        attempt = 0
        while True:
            attempt += 1
            try:
                stream = await self._connect()
                await stream.send_all(data)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as err:
                await self._drop()
                self.errors += 1
                text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                reason = codec.redact(f"TCP to {self.tcp.host}:{self.tcp.port}: {text}")
                if self.cfg.max_attempts and attempt >= self.cfg.max_attempts:
                    self.log.error("%s; giving up after %d attempts", reason, attempt)
                    return [(env, reason) for doc in docs for env in doc.envelopes]
                delay = backoff_delay(attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
                self.status.set("disconnected", f"{reason}; retry in {delay:.1f} s")
                self.log_every(logging.WARNING, f"{reason}; reconnecting (data kept)")
                await trio.sleep(delay)
                continue
            for doc in docs:
                self.count(doc)
            return []

    def stats(self) -> dict[str, Any]:
        """The counts, and connections made."""
        return {**super().stats(), "connects": self.connects}

    async def aclose(self) -> None:
        """Close the connection."""
        await self._drop()
