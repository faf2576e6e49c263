"""A bench-only plugin: the ``file`` sink, timed.

``timed_file`` writes exactly like the ``file`` adapter (JSON Lines, flushed per batch)
and then records, for every envelope whose value carries the moment its peer produced
it (``{"t": epoch_s, ...}`` in ``body.value``), how long it took to reach the file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from adapters.utility.file import FileAdapter, FileConfig
from broker.envelope import Envelope
from broker.hookspecs import AdapterType, hookimpl

LOCK = threading.Lock()
LATENCIES: list[float] = []
WRITTEN = [0]


def reset() -> None:
    with LOCK:
        LATENCIES.clear()
        WRITTEN[0] = 0


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


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType("timed_file", FileConfig, TimedFileAdapter, "file sink that times arrivals")
    ]
