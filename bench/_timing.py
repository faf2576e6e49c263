"""Bench-only plugins: the ``file`` sink and the AlphaX adapter, timed.

``timed_file`` writes exactly like the ``file`` adapter (JSON Lines, flushed per batch)
and then records, for every envelope whose value carries the moment its peer produced
it (``{"t": epoch_s, ...}`` in ``body.value``), how long it took to reach the file.

``alphax_e2e`` is the real AlphaX adapter; when a write is acknowledged (HTTP 2xx, as the
delivery returns; a PUBACK, as the adapter acks the deferred envelopes) it records, per
adapter name, ``now - body.value`` -- the bench maps the PlaceOS simulator's set-time into
the written value, so this is the whole path from the peer that produced the change to the
peer that acknowledged it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from adapters.alphax.config import AlphaXConfig
from adapters.utility.file import FileAdapter, FileConfig
from broker._envelope import Envelope
from broker.hookspecs import AdapterType, hookimpl
from tests.support.alphax_plugin import TimedAlphaX

LOCK = threading.Lock()
LATENCIES: list[float] = []
WRITTEN = [0]
#: adapter name -> [acknowledged count, latencies in seconds] (``alphax_e2e``)
ACKED: dict[str, tuple[list[int], list[float]]] = {}
#: adapter name -> distinct (channel, timestamp ms) it got acknowledged (``alphax_e2e``)
STORE_KEYS: dict[str, set[tuple[int, int]]] = {}


def reset() -> None:
    with LOCK:
        LATENCIES.clear()
        WRITTEN[0] = 0
        ACKED.clear()
        STORE_KEYS.clear()


def store_keys(name: str) -> int:
    """Distinct (channel, timestamp ms) adapter ``name`` got acknowledged since the reset."""
    with LOCK:
        return len(STORE_KEYS.get(name, ()))


def acked_count(name: str) -> int:
    """How many writes adapter ``name`` got acknowledged (cheap enough to poll)."""
    with LOCK:
        return ACKED[name][0][0] if name in ACKED else 0


def acked(name: str) -> tuple[int, list[float]]:
    """How many writes adapter ``name`` got acknowledged, and their latencies (a copy)."""
    with LOCK:
        count, lat = ACKED.get(name, ([0], []))
        return count[0], list(lat)


class TimedFileAdapter(FileAdapter):
    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        await super().deliver(route, batch)
        now = time.time()
        lat = []
        for env in batch:
            value = getattr(env.body, "value", None)
            if isinstance(value, dict) and "t" in value:
                lat.append(now - value["t"])
        with LOCK:
            LATENCIES.extend(lat)
            WRITTEN[0] += len(batch)


class E2ETimedAlphaX(TimedAlphaX):
    """``TimedAlphaX`` (called at each acknowledgement), timed from the peer's set-time."""

    def _record(self, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        now = time.time()
        lat = [now - float(getattr(env.body, "value", now)) for env in envelopes]
        # the simulator stores one value per (channel, timestamp ms): two writes of a channel
        # in the same millisecond are one stored value, so that is what "stored" is checked against
        keys = {(getattr(env.body, "channel", 0), round(env.ts * 1000)) for env in envelopes}
        with LOCK:
            count, latencies = ACKED.setdefault(self.name, ([0], []))
            count[0] += len(envelopes)
            latencies.extend(lat)
            STORE_KEYS.setdefault(self.name, set()).update(keys)


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType("timed_file", FileConfig, TimedFileAdapter, "file sink that times arrivals"),
        AdapterType("alphax_e2e", AlphaXConfig, E2ETimedAlphaX, "AlphaX, timed end to end"),
    ]
