"""The AlphaX adapter's I/O: one face (:class:`Conduit`) over the four write transports and
the read poller.

::

    conduit = Conduit(cfg, name, status, log)
    conduit.start()                               # on the trio thread; MQTT starts connecting
    failures = await conduit.deliver(envelopes)   # [(envelope, reason)] that can never be sent
    failures, published = await conduit.publish(envelopes)   # MQTT: without awaiting PUBACKs
    lost = await published.wait()                 # ... which this then awaits
    poller = conduit.poller(source, state_dir, publish)   # None without [poll]
    await conduit.aclose()

Behind it (private modules):

- :mod:`._uplinks` (pure) checks and groups channel writes and builds the documents;
- :mod:`._http` posts them (``transport = "http"``, over :mod:`._http11`) and does the
  poller's GETs (httpx);
- :mod:`._mqtt` publishes them at QoS 1 (``"mqtt"``);
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from adapters.alphax import _uplinks
from adapters.alphax._http import HttpWriter, build_client, build_pool
from adapters.alphax._mqtt import Acks, MqttWriter
from adapters.alphax._net import TcpWriter, UdpWriter
from adapters.alphax._poller import Poller, state_path
from adapters.alphax._uplinks import Failure
from adapters.alphax.config import AlphaXConfig
from broker.adapter import AdapterStatus
from broker.envelope import Envelope

__all__ = ["Conduit", "Failure", "Published"]


@dataclass(frozen=True)
class Published:
    """Envelopes handed to the MQTT broker and the PUBACKs they wait for."""

    envelopes: list[Envelope]
    acks: Acks
    writer: MqttWriter

    async def wait(self) -> list[Failure]:
        """Wait for the PUBACKs; what was given up on (ack timeout), with the reason."""
        return await self.writer.wait_acked(self.acks)


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
        self._http: HttpWriter | None = None
        self.mqtt = MqttWriter(cfg, name, status, log) if cfg.transport == "mqtt" else None
        self.udp = UdpWriter(cfg, status, log) if cfg.transport == "udp" else None
        self.tcp = TcpWriter(cfg, status, log) if cfg.transport == "tcp" else None
        self._poller: Poller | None = None
        self.encode_failures = 0

    @property
    def client(self) -> httpx.AsyncClient:
        """The httpx client for the poller's reads, made on first use."""
        if self._client is None:
            self._client = build_client(self.cfg)
        return self._client

    @property
    def http(self) -> HttpWriter:
        """The HTTP writer, made on first use."""
        if self._http is None:
            self._http = HttpWriter(self.cfg, build_pool(self.cfg), self.status, self.log)
        return self._http

    def start(self) -> None:
        """Begin connecting where a transport keeps a connection (MQTT). Trio thread only."""
        if self.mqtt is not None:
            self.mqtt.start()

    async def deliver(self, batch: Sequence[Envelope]) -> list[Failure]:
        """Send ``batch``; returns ``(envelope, reason)`` for what can never be sent."""
        if self.mqtt is not None:
            failures, published = await self.publish(batch)
            return failures + (await published.wait() if published is not None else [])
        cfg = self.cfg
        groups, failures = _uplinks.group_writes(batch)
        docs, more = _uplinks.build_docs(groups, cfg.token, cfg.uplink, cfg.v1_gaps)
        failures += more
        if self.udp is not None:
            docs, more = _uplinks.split_for_datagrams(docs, cfg.token, cfg.max_datagram_bytes)
            failures += more
            self.encode_failures += len(failures)
            return failures + await self.udp.send(docs)
        self.encode_failures += len(failures)
        if self.tcp is not None:
            return failures + await self.tcp.send(docs)
        return failures + await self.http.send(docs)

    async def publish(self, batch: Sequence[Envelope]) -> tuple[list[Failure], Published | None]:
        """MQTT only: publish ``batch`` without waiting for its PUBACKs.

        Returns what can never be sent, and the envelopes handed to the broker with their
        acknowledgements to await (None when nothing was published).
        """
        if self.mqtt is None:
            raise RuntimeError("publish() needs transport = 'mqtt'")
        groups, failures = _uplinks.group_writes(batch)
        messages, more = _uplinks.build_messages(
            groups, self.cfg.token, self.cfg.topic_form, self.cfg.v1_gaps
        )
        self.encode_failures += len(failures) + len(more)
        acks, refused = await self.mqtt.publish(messages)
        failures += more + refused
        if not messages:
            return failures, None
        unsent = {id(env) for env, _ in failures}
        envelopes = [env for env in batch if id(env) not in unsent]
        return failures, Published(envelopes, acks, self.mqtt)

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
        out: dict[str, Any] = {"transport": self.cfg.transport, "unencodable": self.encode_failures}
        if self._http is not None:
            h = self._http
            out.update(
                posts=h.posts,
                gzipped=h.gzipped,
                retries=h.retries,
                rejected=h.rejected,
                statuses=dict(h.statuses),
                paced_waits=h.pacer.waits,
            )
        if self.mqtt is not None:
            m = self.mqtt
            out.update(
                published=m.published,
                acked=m.acked,
                late_acks=m.late_acks,
                outstanding=m.outstanding(),
                inflight_full=m.inflight_full,
                queue_full=m.queue_full,
                ack_timeouts=m.ack_timeouts,
                connects=m.connects,
                resent=m.resent,
                refused=m.refused,
            )
        for net in (self.udp, self.tcp):
            if net is not None:
                out.update(
                    sent_docs=net.sent_docs,
                    sent_values=net.sent_values,
                    sent_bytes=net.sent_bytes,
                    errors=net.errors,
                )
        if self._poller is not None:
            out["poll"] = self._poller.snapshot()
        return out

    async def aclose(self) -> None:
        """Close every transport (safe to call once whatever was started)."""
        try:
            if self.mqtt is not None:
                await self.mqtt.aclose()
            for net in (self.udp, self.tcp):
                if net is not None:
                    await net.aclose()
        finally:
            try:
                if self._http is not None:
                    await self._http.pool.aclose()
            finally:
                if self._client is not None:
                    await self._client.aclose()
