"""The AlphaX adapter's I/O: one face (:class:`Conduit`) over the write transport and the read
poller.

::

    conduit = Conduit(cfg, name, status, log)
    conduit.start()                               # on the trio thread; MQTT starts connecting
    sent = await conduit.send(envelopes)          # the writer's Sent: failures, pending acks
    failures = await conduit.deliver(envelopes)   # send, then wait for any pending acks
    poller = conduit.poller(source, state_dir, publish)   # None without [poll]
    await conduit.aclose()

The write transport is one :class:`~adapters.alphax._writer.UplinkWriter`, chosen by the
``[adapters.<name>.write]`` table's ``transport`` (:func:`open_writer`). Behind it (private
modules):

- :mod:`._uplinks` (pure) checks and groups channel writes and builds the documents;
- :mod:`._http` posts them (``transport = "http"``, over :mod:`._http11`) and does the
  poller's GETs (httpx);
- :mod:`._mqtt` publishes them at QoS 1 (``"mqtt"``) on :mod:`._mqtt_link`'s connection;
- :mod:`._net` sends datagrams or lines (``"udp"``, ``"tcp"``: best effort);
- :mod:`._poller` and :mod:`._walker` read back with a persisted high-water mark;
- :mod:`._pacing` paces writes and reads to the tier.

``deliver`` returns once the peer has the data: HTTP 2xx, MQTT PUBACK, or (UDP/TCP) the bytes
handed to the kernel. Peer trouble that may pass (429, 5xx, a broker down) makes it wait and
retry; what can never be sent comes back as failures with a reason, for the adapter to
dead-letter.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, assert_never

import httpx
import trio

from adapters.alphax._http import HttpWriter, build_client
from adapters.alphax._mqtt import MqttWriter
from adapters.alphax._net import TcpWriter, UdpWriter
from adapters.alphax._poller import Poller, state_path
from adapters.alphax._uplinks import Failure
from adapters.alphax._writer import Pending, Sent, UplinkWriter
from adapters.alphax.config import AlphaXConfig, HttpWrite, MqttWrite, TcpWrite, UdpWrite
from broker import AdapterStatus, Envelope

__all__ = ["Conduit", "Failure", "Pending", "Sent", "UplinkWriter", "open_writer"]


def open_writer(
    cfg: AlphaXConfig, name: str, status: AdapterStatus, log: logging.Logger
) -> UplinkWriter:
    """The writer ``cfg.write`` asks for (built without I/O)."""
    match cfg.write:
        case HttpWrite() as http:
            return HttpWriter(cfg, http, status, log)
        case MqttWrite() as mqtt:
            return MqttWriter(cfg, mqtt, name, status, log)
        case UdpWrite() as udp:
            return UdpWriter(cfg, udp, status, log)
        case TcpWrite() as tcp:
            return TcpWriter(cfg, tcp, status, log)
        case _:
            assert_never(cfg.write)


class Conduit:
    """The transports of one adapter instance (built without I/O; see the module docstring)."""

    def __init__(
        self, cfg: AlphaXConfig, name: str, status: AdapterStatus, log: logging.Logger
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.status = status
        self.log = log
        self._client: httpx.AsyncClient | None = None
        self.writer = open_writer(cfg, name, status, log)
        self._poller: Poller | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The httpx client for the poller's reads, made on first use."""
        if self._client is None:
            self._client = build_client(self.cfg)
        return self._client

    def start(self) -> None:
        """Open the writer (MQTT begins connecting). Trio thread only."""
        self.writer.open()

    async def watch(self) -> None:
        """Return never; raise once the writer's connection driver died (MQTT), so the
        adapter instance crashes and is started again rather than wait on a dead client."""
        if isinstance(self.writer, MqttWriter):
            await self.writer.watch()
        await trio.sleep_forever()

    async def send(self, batch: Sequence[Envelope]) -> Sent:
        """Hand ``batch`` to the writer: what can never be sent, and acks still to come."""
        return await self.writer.send(batch)

    async def deliver(self, batch: Sequence[Envelope]) -> list[Failure]:
        """Send ``batch`` and wait for its acks; ``(envelope, reason)`` for what was not."""
        sent = await self.writer.send(batch)
        if sent.pending is None:
            return sent.failures
        return sent.failures + await sent.pending.wait()

    def poller(
        self,
        source: str,
        state_dir: Path,
        publish: Callable[[list[Envelope]], Awaitable[None]],
    ) -> Poller | None:
        """The read poller when ``[poll]`` is configured (run it with ``await poller.run()``)."""
        if self.cfg.poll is None:
            return None
        self._poller = Poller(
            self.cfg,
            self.client,
            source=source,
            state_file=state_path(state_dir, self.name),
            status=self.status,
            log=self.log,
            publish=publish,
        )
        return self._poller

    def stats(self) -> dict[str, Any]:
        """Counters of the transport in use (and of the poller), for tests and status views."""
        out: dict[str, Any] = {"transport": self.cfg.write.transport, **self.writer.stats()}
        if self._poller is not None:
            out["poll"] = self._poller.snapshot()
        return out

    async def aclose(self) -> None:
        """Close the writer and the read client (safe to call once whatever was started)."""
        try:
            await self.writer.aclose()
        finally:
            if self._client is not None:
                await self._client.aclose()
