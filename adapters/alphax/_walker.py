"""Pure: walking AlphaX read windows so that every record is read exactly once.

The read API has no cursor: a call names a window ``fcdt..tcdt`` (epoch seconds, both ends
inclusive), returns at most ``limit`` (1000) records, the OLDEST of the window, and shows
timestamps as whole seconds. A :class:`Walker` keeps, per stream, a high-water mark:

- ``hw``: the next window starts at this second; every record older is read;
- ``boundary``: how many times each record key (device, channel, second, raw, value) at second
  ``hw`` was already emitted. A window starting at ``hw`` returns those again; they are
  skipped by count, so two equal values in one second are still both emitted once.

A page under the cap means the window is read: the mark moves to the window's end. A full page
means there is more: the mark moves to the newest second in the page (everything older than
that second is complete, because the page is the oldest records), and the next call starts
there. A full page that is all one second would return the same page forever: that second is
split by channel (``ch=``, one call each) and the mark moves past it. Should one channel hold
more than ``limit`` records in one second, the API cannot page through them: the extra ones are
counted in ``unreadable`` and reported, not silently lost.

Limits of any timestamp-window reader, by design: a value written later with a timestamp older
than the mark is not read (``settle_s`` in the config keeps the window end behind "now" for
values on their way), and if the mark was saved after emitting but the process died before
persisting, the last page is emitted again (at least once).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.alphax import codec

Key = tuple[str, int, int, float | None, float | None]
ALL_CHANNELS: tuple[int, ...] = (*range(1, codec.MAX_CHANNELS + 1), *codec.DEVICE_CHANNELS)


@dataclass(frozen=True)
class Record:
    """One read record, protocol version aside; ``second`` is epoch seconds."""

    network_id: str
    channel: int
    second: int
    value: float | None
    raw: float | None = None

    @property
    def key(self) -> Key:
        return (self.network_id, self.channel, self.second, self.raw, self.value)


def records_from_v6(rows: Iterable[codec.V6Record]) -> list[Record]:
    """v6 rows as :class:`Record` (value = calibrated if present, else raw)."""
    return [Record(r.dev_netid, r.dev_chid, int(r.val_date), r.value, r.val_raw) for r in rows]


def records_from_v4(rows: Iterable[codec.V4Record]) -> list[Record]:
    """v4 rows as :class:`Record`."""
    return [Record(r.network_id, r.channel, r.epoch_s, r.value) for r in rows]


@dataclass(frozen=True)
class Window:
    """One read call: ``fcdt..tcdt`` inclusive, optionally narrowed to one channel."""

    fcdt: int
    tcdt: int
    channel: int | None = None


@dataclass
class StreamState:
    """A stream's high-water mark (see the module docstring); JSON round-trips."""

    hw: int
    boundary: Counter[Key] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"hw": self.hw, "boundary": [[*key, n] for key, n in self.boundary.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamState:
        boundary: Counter[Key] = Counter()
        for nid, ch, sec, raw, value, n in data.get("boundary", []):
            boundary[(str(nid), int(ch), int(sec), raw, value)] = int(n)
        return cls(int(data["hw"]), boundary)


Fetch = Callable[[Window], Awaitable[Sequence[Record]]]
OnPage = Callable[[list[Record]], Awaitable[None]]


class Walker:
    """Advances one stream's :class:`StreamState` through the windows up to a second."""

    def __init__(
        self,
        state: StreamState,
        *,
        limit: int = 1000,
        split_channels: Sequence[int] = ALL_CHANNELS,
    ) -> None:
        self.state = state
        self.limit = limit
        self.split_channels = tuple(split_channels)
        self.calls = 0
        self.splits = 0
        #: (second, channel, records seen) where one channel held more than a page in a second.
        self.unreadable: list[tuple[int, int | None, int]] = []

    async def catch_up(self, until: int, fetch: Fetch, on_page: OnPage) -> None:
        """Read everything up to second ``until``; ``on_page`` gets each page's new records.

        The state is advanced before ``on_page`` is awaited (which publishes and persists).
        A ``fetch`` that raises leaves the state at the last page handled.
        """
        state = self.state
        while state.hw <= until:
            self.calls += 1
            page = [r for r in await fetch(Window(state.hw, until)) if r.second >= state.hw]
            if len(page) < self.limit or not page:
                fresh = self._fresh(page)
                self._advance(until, page)
                await on_page(fresh)
                return
            newest = max(r.second for r in page)
            if newest > state.hw:
                fresh = self._fresh(page)
                self._advance(newest, page)
                await on_page(fresh)
                continue
            await on_page(await self._split_second(state.hw, fetch))

    async def _split_second(self, second: int, fetch: Fetch) -> list[Record]:
        """Read one over-full second channel by channel, then move the mark past it."""
        self.splits += 1
        found: list[Record] = []
        channels: Sequence[int | None] = self.split_channels or (None,)
        for channel in channels:
            self.calls += 1
            page = await fetch(Window(second, second + 1, channel))
            mine = [r for r in page if r.second == second]
            if len(page) >= self.limit and all(r.second == second for r in page):
                self.unreadable.append((second, channel, len(page)))
            found += mine
        fresh = self._fresh(found)
        self.state.hw, self.state.boundary = second + 1, Counter()
        return fresh

    def _fresh(self, page: Sequence[Record]) -> list[Record]:
        """The records of ``page`` not emitted yet (by count at the boundary second)."""
        hw, seen = self.state.hw, self.state.boundary
        counts: Counter[Key] = Counter()
        out: list[Record] = []
        for record in page:
            if record.second == hw:
                key = record.key
                counts[key] += 1
                if counts[key] <= seen[key]:
                    continue
            out.append(record)
        return out

    def _advance(self, second: int, page: Sequence[Record]) -> None:
        at: Counter[Key] = Counter(r.key for r in page if r.second == second)
        if second == self.state.hw:
            at |= self.state.boundary
        self.state.hw, self.state.boundary = second, at
