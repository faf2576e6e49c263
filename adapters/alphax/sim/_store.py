"""The AlphaX simulator's data store: token -> networkId -> channel -> sorted (time, value) list.

Thread-safe (one lock): the HTTP, UDP and TCP sides write from the trio thread, the MQTT side
from paho's thread. Cheap on purpose, so the simulator takes thousands of writes per second:
one ``bisect.insort`` per value (an append when data arrives in time order) and window reads by
binary search, merged lazily by time so a capped read touches only what it returns.

The store is append-only: a value written twice (a client retry that double-delivers) shows up
twice, so tests can catch duplicates. Times are epoch seconds as floats.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

Point = tuple[float, float]  # (epoch seconds, value)


class StoredValue(NamedTuple):
    """One value as the read endpoints see it."""

    timestamp: float
    network_id: str
    channel: int
    value: float


class SimStore:
    """Values by token, device and channel, plus counts of what was rejected and why."""

    def __init__(self, default_token: str) -> None:
        self.default_token = default_token
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, dict[int, list[Point]]]] = {}
        self._count = 0
        self._rejects: Counter[str] = Counter()
        self._reject_log: deque[tuple[str, str]] = deque(maxlen=200)
        self._devices: dict[str, dict[str, object]] = {}

    # -- writes ---------------------------------------------------------------------------

    def add(
        self, token: str, network_id: str, channel: int, timestamp: float, value: float
    ) -> None:
        """Store one value."""
        with self._lock:
            series = self._data.setdefault(token, {}).setdefault(network_id, {})
            bisect.insort(series.setdefault(channel, []), (timestamp, value))
            self._count += 1

    def add_channels(
        self, token: str, network_id: str, timestamp: float, values: Iterable[tuple[int, float]]
    ) -> int:
        """Store many channels of one device at one time (a v1/v2 uplink); returns how many."""
        n = 0
        with self._lock:
            device = self._data.setdefault(token, {}).setdefault(network_id, {})
            for channel, value in values:
                bisect.insort(device.setdefault(channel, []), (timestamp, value))
                n += 1
            self._count += n
        return n

    def add_many(
        self, network_id: str, channel: int, points: Iterable[Point], *, token: str | None = None
    ) -> int:
        """Bulk-load one channel with ``(epoch seconds, value)`` points (default token)."""
        with self._lock:
            series = (
                self._data.setdefault(token or self.default_token, {})
                .setdefault(network_id, {})
                .setdefault(channel, [])
            )
            new = list(points)
            series.extend(new)
            series.sort()
            self._count += len(new)
        return len(new)

    def set_device(self, network_id: str, **fields: object) -> None:
        """Set v6 device metadata (``dev_tag``, ``dev_site``, ``loc_lat``, ...) for a device."""
        with self._lock:
            self._devices.setdefault(network_id, {}).update(fields)

    def device(self, network_id: str) -> dict[str, object]:
        """A copy of the v6 metadata set for a device (empty if none)."""
        with self._lock:
            return dict(self._devices.get(network_id, {}))

    def reject(self, reason: str, detail: str = "") -> None:
        """Count one rejected input; ``detail`` must already be redacted."""
        with self._lock:
            self._rejects[reason] += 1
            self._reject_log.append((reason, detail))

    def clear(self) -> None:
        """Forget all values and reject counts (device metadata stays)."""
        with self._lock:
            self._data.clear()
            self._count = 0
            self._rejects.clear()
            self._reject_log.clear()

    # -- reads ----------------------------------------------------------------------------

    def _tokens(self, token: str | None) -> list[str]:
        return list(self._data) if token is None else [token]

    def values(self, network_id: str, channel: int, *, token: str | None = None) -> list[Point]:
        """All ``(time, value)`` of one channel, oldest first (all tokens when ``token`` None)."""
        with self._lock:
            series = [
                self._data.get(t, {}).get(network_id, {}).get(channel, [])
                for t in self._tokens(token)
            ]
            return list(heapq.merge(*series)) if len(series) != 1 else list(series[0])

    def count(self, *, token: str | None = None, network_id: str | None = None) -> int:
        """How many values are stored (optionally for one token and/or device)."""
        with self._lock:
            if token is None and network_id is None:
                return self._count
            total = 0
            for t in self._tokens(token):
                for nid, channels in self._data.get(t, {}).items():
                    if network_id is None or nid == network_id:
                        total += sum(len(series) for series in channels.values())
            return total

    def devices(self, *, token: str | None = None) -> list[str]:
        """Network ids with stored values."""
        with self._lock:
            return sorted({nid for t in self._tokens(token) for nid in self._data.get(t, {})})

    def rejects(self) -> dict[str, int]:
        """Counts of rejected inputs by reason (codec error class name, ``unknown_token``...)."""
        with self._lock:
            return dict(self._rejects)

    def reject_log(self) -> list[tuple[str, str]]:
        """The last 200 rejects as ``(reason, redacted detail)``."""
        with self._lock:
            return list(self._reject_log)

    def query(
        self,
        token: str,
        *,
        start: float,
        end: float,
        network_id: str | None = None,
        channel: int | None = None,
        limit: int | None = None,
    ) -> list[StoredValue]:
        """Values with ``start <= time <= end``, oldest first, at most ``limit`` of them.

        Ties in time are ordered by network id, then channel, so pages are stable.
        """
        with self._lock:
            streams: list[Iterator[StoredValue]] = []
            for nid, channels in self._data.get(token, {}).items():
                if network_id is not None and nid != network_id:
                    continue
                for ch, series in channels.items():
                    if channel is not None and ch != channel:
                        continue
                    lo = bisect.bisect_left(series, (start, float("-inf")))
                    hi = bisect.bisect_right(series, (end, float("inf")))
                    if lo < hi:
                        streams.append(_window(series, lo, hi, nid, ch))
            merged = heapq.merge(*streams)
            return list(merged if limit is None else itertools.islice(merged, limit))


def _window(series: list[Point], lo: int, hi: int, nid: str, ch: int) -> Iterator[StoredValue]:
    for i in range(lo, hi):
        ts, value = series[i]
        yield StoredValue(ts, nid, ch, value)
