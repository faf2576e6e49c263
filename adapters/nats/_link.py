"""The NATS connection of one adapter instance, on its asyncio thread: connect, check, set up.

:meth:`Link.open` connects (every configured server, TLS, the one login), reads the server
version and refuses -- one line per problem, naming the key and the version -- a configured
feature that server lacks (:func:`adapters.nats.codec.missing_features`), or JetStream not
enabled; then it creates each declared stream (or checks the one that exists: a different
retention cannot be changed and is refused; other settings are updated) and the durable
consumer, and starts the :class:`~adapters.nats._publisher.Publisher` and
:class:`~adapters.nats._puller.Puller` the config asks for.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.api as api
import nats.js.errors

from adapters.nats._bridge import connect_options
from adapters.nats._publisher import Publisher, Result
from adapters.nats._puller import Puller
from adapters.nats.codec import missing_features
from adapters.nats.config import ConsumeSpec, NatsConfig, StreamSpec
from broker import Envelope, JunctionError


class NatsRefused(JunctionError):
    """The server cannot serve this config (a missing feature, JetStream off, a stream that
    exists with another retention): a one-line reason naming the key."""


@dataclass
class Callbacks:
    """What the link tells the trio side (each called on the asyncio thread)."""

    results: Callable[[list[Result]], None]
    batch: Callable[[int, list[Envelope]], None]
    state: Callable[[str, str], None]
    trouble: Callable[[str], None]


class Link:
    """One connection and what runs on it (asyncio side)."""

    def __init__(self, cfg: NatsConfig, name: str, tls: ssl.SSLContext | None, cb: Callbacks):
        self.cfg = cfg
        self.name = name
        self.tls = tls
        self.cb = cb
        self.log = logging.getLogger(f"junction.adapter.{name}")
        self.nc: Any = None
        self.publisher: Publisher | None = None
        self.puller: Puller | None = None
        self.version = ""
        self.max_payload = 0

    async def open(self) -> tuple[str, int]:
        """Connect, check and set up; returns (server version, max_payload)."""
        opts = connect_options(self.cfg, self.name, self.tls)
        self.nc = await nats.connect(
            **opts,
            error_cb=self._error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )
        info = self.nc._server_info
        self.version = str(info.get("version", "0.0.0"))
        self.max_payload = int(self.nc.max_payload)
        problems = missing_features(self.cfg, self.version)
        if not info.get("jetstream"):
            problems.insert(0, f"JetStream is not enabled on the server ({self.version}; -js)")
        if problems:
            raise NatsRefused("; ".join(problems))
        js = self.nc.jetstream(
            timeout=self.cfg.api_timeout_s,
            publish_async_max_pending=2 * (self.cfg.publish.max_pending if self.cfg.publish else 1),
        )
        for spec in self.cfg.streams:
            await self._ensure_stream(js, spec)
        if self.cfg.publish is not None:
            self.publisher = Publisher(
                js, self.cfg.publish.ack_timeout_s, self.cb.results, self.cb.trouble
            )
            self.publisher.start()
        if self.cfg.consume is not None:
            sub = await self._ensure_consumer(js, self.cfg.consume)
            c = self.cfg.consume
            self.puller = Puller(
                sub, c.batch, c.max_ack_pending, c.fetch_timeout_s, c.ack_wait_s,
                self.cb.batch, self.name,
            )  # fmt: skip
            self.puller.start()
        return self.version, self.max_payload

    async def _ensure_stream(self, js: Any, spec: StreamSpec) -> None:
        config = api.StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            retention=api.RetentionPolicy(spec.retention),
            storage=api.StorageType(spec.storage),
            num_replicas=spec.replicas,
            duplicate_window=spec.duplicate_window_s,
            max_age=spec.max_age_s,
            max_bytes=spec.max_bytes,
            max_msgs=spec.max_msgs,
            max_msg_size=spec.max_msg_size,
            discard=api.DiscardPolicy(spec.discard),
        )
        if spec.compression != "none":
            config.compression = api.StoreCompression(spec.compression)
        if spec.allow_msg_ttl:
            config.allow_msg_ttl = True
        where = f"streams[{self.cfg.streams.index(spec)}]"
        try:
            info = await js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
            except nats.js.errors.APIError as err:
                raise NatsRefused(f"{where}: stream {spec.name} not created: {err}") from None
            self.log.info("stream %s created (%s)", spec.name, spec.retention)
            return
        have = info.config
        retention = str(getattr(have.retention, "value", have.retention))  # str or enum
        if have.retention is not None and retention != spec.retention:
            raise NatsRefused(
                f"{where}.retention: stream {spec.name} exists with retention "
                f"{retention!r}, the config says {spec.retention!r} (JetStream cannot change it)"
            )
        if (
            sorted(have.subjects or []) != sorted(spec.subjects)
            or have.num_replicas != spec.replicas
            or have.max_age != spec.max_age_s
            or have.duplicate_window != spec.duplicate_window_s
        ):
            try:
                await js.update_stream(config)
            except nats.js.errors.APIError as err:
                raise NatsRefused(f"{where}: stream {spec.name} not updated: {err}") from None
            self.log.info("stream %s updated to the config", spec.name)

    async def _ensure_consumer(self, js: Any, spec: ConsumeSpec) -> Any:
        config = api.ConsumerConfig(
            durable_name=spec.durable,
            name=spec.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait_s,
            max_ack_pending=spec.max_ack_pending,
            max_deliver=spec.max_deliver,
            deliver_policy=api.DeliverPolicy(spec.deliver_policy),
        )
        if len(spec.filter_subjects) == 1:
            config.filter_subject = spec.filter_subjects[0]
        elif spec.filter_subjects:
            config.filter_subjects = list(spec.filter_subjects)
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is None or _differs(info.config, spec):
            try:
                await js.add_consumer(spec.stream, config)
            except nats.js.errors.APIError as err:
                raise NatsRefused(
                    f"consume: consumer {spec.durable} on stream {spec.stream} not "
                    f"{'created' if info is None else 'updated'}: {err}"
                ) from None
        return await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)

    # --- connection events (asyncio side) ----------------------------------------

    async def _error(self, err: Exception) -> None:
        self.cb.trouble(f"{type(err).__name__}: {err}")

    async def _disconnected(self) -> None:
        if self.publisher is not None:
            self.publisher.disconnected()
        self.cb.state("disconnected", "reconnecting")

    async def _reconnected(self) -> None:
        if self.publisher is not None:
            self.publisher.reconnected()
        self.cb.state("connected", f"reconnected; nats-server {self.version}")

    async def close(self) -> None:
        if self.puller is not None:
            await self.puller.aclose()
        if self.publisher is not None:
            await self.publisher.aclose()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()


def _differs(have: api.ConsumerConfig, spec: ConsumeSpec) -> bool:
    filters = list(have.filter_subjects or ([have.filter_subject] if have.filter_subject else []))
    return (
        have.ack_wait != spec.ack_wait_s
        or have.max_ack_pending != spec.max_ack_pending
        or (have.max_deliver or -1) != spec.max_deliver
        or sorted(filters) != sorted(spec.filter_subjects)
    )
