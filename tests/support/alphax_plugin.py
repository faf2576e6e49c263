"""Test (and bench) adapters for AlphaX: a source of ``channel_write`` envelopes, and the real
AlphaX adapter registered once more as ``alphax_tracked`` so a test can read its counters.

``channel_source`` emits, for each tick ``t`` in ``range(ticks)``, one write per device and
channel with ``value = t + value_offset`` and ``timestamp = start_ts + t * step_s``, so the
simulator's store can be checked value by value. ``rate`` paces ticks per second (0: as fast
as the router takes them); ``batch`` bounds envelopes per publish. ``EMITTED[name]`` counts
what was handed to the router (it survives restarts, like ``burst``'s progress).

``alphax_tracked`` is :class:`~adapters.alphax.actor.AlphaXAdapter` unchanged, except that each
instance is kept in ``INSTANCES[name]`` (the latest one after a restart); ``alphax_timed``
also records delivery latencies in ``TIMING`` (bench/alphax.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import trio

from adapters.alphax.actor import AlphaXAdapter
from adapters.alphax.config import AlphaXConfig
from broker._adapter import Adapter
from broker._config import AdapterConfig
from broker._envelope import ChannelWrite, Envelope
from broker.hookspecs import AdapterType, hookimpl

EMITTED: dict[str, int] = {}
INSTANCES: dict[str, AlphaXAdapter] = {}
_lock = threading.Lock()


def reset() -> None:
    with _lock:
        EMITTED.clear()
        INSTANCES.clear()


def emitted(name: str) -> int:
    with _lock:
        return EMITTED.get(name, 0)


class ChannelSourceConfig(AdapterConfig, kw_only=True):
    devices: list[str] = msgspec.field(default_factory=lambda: ["dev-1"])
    channels: list[int] = msgspec.field(default_factory=lambda: [1])
    ticks: int = 10
    start_ts: float = 1_700_000_000.0
    step_s: float = 0.001
    rate: float = 0.0
    batch: int = 256
    value_offset: float = 0.0
    #: Leave ``timestamp`` unset (the adapter then uses the envelope's ``ts``).
    no_timestamp: bool = False
    #: Stop after this many seconds even if ticks remain (0: no limit; benchmarks).
    duration_s: float = 0.0


class ChannelSource(Adapter):
    """Emits the configured grid of channel writes, then stops."""

    accepts_envelopes = False
    config: ChannelSourceConfig

    def _tick(self, tick: int) -> list[Envelope]:
        cfg = self.config
        ts = None if cfg.no_timestamp else cfg.start_ts + tick * cfg.step_s
        return [
            Envelope(
                source=self.name,
                subject=f"{device}/{channel}",
                body=ChannelWrite(
                    network_id=device,
                    channel=channel,
                    value=tick + cfg.value_offset,
                    timestamp=ts,
                ),
            )
            for device in cfg.devices
            for channel in cfg.channels
        ]

    async def _publish(self, envelopes: list[Envelope]) -> None:
        if envelopes:
            await self.publish(envelopes)
            with _lock:
                EMITTED[self.name] = EMITTED.get(self.name, 0) + len(envelopes)

    async def run(self) -> None:
        cfg = self.config
        tick = 0
        with _lock:
            # a restarted source resumes where the crashed one stopped
            per_tick = len(cfg.devices) * len(cfg.channels)
            tick = EMITTED.get(self.name, 0) // per_tick
        start = trio.current_time()
        stop_at = start + cfg.duration_s if cfg.duration_s else float("inf")
        pending: list[Envelope] = []
        while tick < cfg.ticks and trio.current_time() < stop_at:
            pending += self._tick(tick)
            tick += 1
            if len(pending) >= cfg.batch or tick == cfg.ticks or cfg.rate:
                await self._publish(pending)
                pending = []
                if cfg.rate:
                    await trio.sleep_until(start + tick / cfg.rate)
                else:
                    await trio.sleep(0)
        await self._publish(pending)
        self.status.set("finished", f"{tick} ticks")


class TrackedAlphaX(AlphaXAdapter):
    """The AlphaX adapter, kept where a test can ask it for ``stats()``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with _lock:
            INSTANCES[self.name] = self


class Timing:
    """What ``alphax_timed`` adapters delivered: count and envelope-to-delivered seconds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered = 0
        self.latencies: list[float] = []

    def reset(self) -> None:
        with self.lock:
            self.delivered = 0
            self.latencies = []


TIMING = Timing()


class TimedAlphaX(TrackedAlphaX):
    """The AlphaX adapter, recording for each envelope the time from its creation (``ts``)
    to its acknowledgement: HTTP 2xx received as the delivery returns (the simulator stores
    before answering), or its PUBACK received over MQTT (the adapter acks it then)."""

    #: ids of the envelopes the current ``deliver`` call failed or deferred (None outside)
    _settled: set[int] | None = None

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        settled: set[int] = set()
        self._settled = settled
        try:
            await super().deliver(route, batch)
        finally:
            self._settled = None
        self._record([env for env in batch if id(env) not in settled])

    def fail(
        self, route: str, envelopes: Sequence[Envelope], reason: str, permanent: bool = True
    ) -> None:
        if self._settled is not None:
            self._settled.update(id(env) for env in envelopes)
        super().fail(route, envelopes, reason, permanent)

    def defer(self, route: str, envelopes: Sequence[Envelope]) -> None:
        if self._settled is not None:
            self._settled.update(id(env) for env in envelopes)
        super().defer(route, envelopes)

    def ack(self, route: str, envelopes: Sequence[Envelope]) -> None:
        super().ack(route, envelopes)
        self._record(envelopes)

    def _record(self, envelopes: Sequence[Envelope]) -> None:
        """The envelopes just acknowledged (override to record them elsewhere)."""
        now = time.time()
        latencies = [now - env.ts for env in envelopes]
        with TIMING.lock:
            TIMING.delivered += len(envelopes)
            TIMING.latencies += latencies


def stats(name: str) -> dict[str, Any]:
    """The counters of the running ``alphax_tracked`` adapter ``name``."""
    with _lock:
        adapter = INSTANCES[name]
    return adapter.stats()


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType("channel_source", ChannelSourceConfig, ChannelSource, "test channel writes"),
        AdapterType("alphax_tracked", AlphaXConfig, TrackedAlphaX, "AlphaX, kept for tests"),
        AdapterType("alphax_timed", AlphaXConfig, TimedAlphaX, "AlphaX, timed (benchmarks)"),
    ]
