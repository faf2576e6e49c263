"""Bench-only adapters for bench/outbox.py: a paced source and a sink that acknowledges at once.

``outbox_source``  emits ``channel_write`` envelopes (the kind AlphaX keeps durable), ``batch``
                   per publish, at ``rate`` envelopes per second (0: as fast as the router's
                   back-pressure lets it) until ``count`` (0: no limit) or ``duration_s``
                   (0: no limit). Each envelope is built just before it is published, so its
                   ``ts`` is its creation time. ``EMITTED[name]`` counts what was published;
                   :func:`finished` says it is done (its loop then ends).
``outbox_sink``    ``deliver()`` counts the batch and returns (= acknowledged) at once. With
                   ``gated = true`` it waits, inside ``deliver()``, until :func:`open_gate` is
                   called -- a peer that is down. With ``timed = true`` it records, on entry to
                   ``deliver()``, ``time.time() - env.ts`` for every envelope of the batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import trio

from broker._adapter import Adapter
from broker._config import AdapterConfig
from broker._envelope import ChannelWrite, Envelope
from broker.hookspecs import AdapterType, hookimpl

LOCK = threading.Lock()
EMITTED: dict[str, int] = {}
DELIVERED: dict[str, int] = {}
LATENCIES: dict[str, list[float]] = {}
GATES: dict[str, threading.Event] = {}
FINISHED: set[str] = set()


def reset() -> None:
    with LOCK:
        EMITTED.clear()
        DELIVERED.clear()
        LATENCIES.clear()
        GATES.clear()
        FINISHED.clear()


def emitted(name: str) -> int:
    with LOCK:
        return EMITTED.get(name, 0)


def finished(name: str) -> bool:
    """Source ``name`` has published all it will."""
    with LOCK:
        return name in FINISHED


def delivered(name: str) -> int:
    with LOCK:
        return DELIVERED.get(name, 0)


def latencies(name: str) -> list[float]:
    """Creation-to-deliver() seconds recorded by timed sink ``name``, in arrival order (a copy)."""
    with LOCK:
        return list(LATENCIES.get(name, ()))


def _gate(name: str) -> threading.Event:
    with LOCK:
        return GATES.setdefault(name, threading.Event())


def open_gate(name: str) -> None:
    """Let gated sink ``name`` acknowledge (callable from any thread)."""
    _gate(name).set()


class SourceConfig(AdapterConfig, kw_only=True):
    count: int = 0
    rate: float = 0.0
    batch: int = 256
    duration_s: float = 0.0
    devices: int = 10
    channels: int = 32


class OutboxSource(Adapter):
    """Emits the configured stream of channel writes, then stops."""

    accepts_envelopes = False
    config: SourceConfig

    async def run(self) -> None:
        cfg = self.config
        start = trio.current_time()
        stop_at = start + cfg.duration_s if cfg.duration_s else float("inf")
        limit = cfg.count or float("inf")
        per_device = cfg.channels
        sent = 0
        while sent < limit and trio.current_time() < stop_at:
            n = int(min(cfg.batch, limit - sent))
            now = time.time()
            batch = [
                Envelope(
                    source=self.name,
                    subject="bench",
                    ts=now,
                    body=ChannelWrite(
                        network_id=f"dev-{(i // per_device) % cfg.devices}",
                        channel=i % per_device + 1,
                        value=float(i),
                        timestamp=now,
                    ),
                )
                for i in range(sent, sent + n)
            ]
            await self.publish(batch)
            sent += n
            with LOCK:
                EMITTED[self.name] = sent
            if cfg.rate:
                await trio.sleep_until(start + sent / cfg.rate)
            else:
                await trio.sleep(0)
        with LOCK:
            FINISHED.add(self.name)
        self.status.set("finished", str(sent))


class SinkConfig(AdapterConfig, kw_only=True):
    gated: bool = False
    timed: bool = False
    max_batch: int = 512


class OutboxSink(Adapter):
    """Acknowledges every batch at once (after its gate opens, when gated)."""

    produces_envelopes = False
    config: SinkConfig

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_batch = self.config.max_batch

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        if self.config.timed:
            now = time.time()
            lat = [now - env.ts for env in batch]
            with LOCK:
                LATENCIES.setdefault(self.name, []).extend(lat)
        if self.config.gated:
            gate = _gate(self.name)
            while not gate.is_set():
                await trio.sleep(0.002)
        with LOCK:
            DELIVERED[self.name] = DELIVERED.get(self.name, 0) + len(batch)


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType("outbox_source", SourceConfig, OutboxSource, "bench source of channel writes"),
        AdapterType("outbox_sink", SinkConfig, OutboxSink, "bench sink, acknowledges at once"),
    ]
