"""Which dead letters a ``junction dlq`` command acts on, and how fast a replay moves them.

Selections are taken oldest first and capped at the count shown (and confirmed) before
anything changes: a replayed letter that fails again is stored under a new, higher seq,
so it is not picked up a second time by the same command.  A replay is paced in chunks
of what the router takes per tick (:data:`~broker._dead_letters.REPLAYS_PER_TICK`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from broker._dead_filter import reason_matches
from broker._dead_letters import REPLAYS_PER_TICK
from broker._dlq_format import ranges
from broker._outbox import DeadRow, Outbox

#: The router's tick: it takes queued replays this often.
TICK_S = 0.25


# --- selecting -----------------------------------------------------------------------------


@dataclass
class Selection:
    """Which dead letters a command acts on (filters as given, seqs resolved up front)."""

    route: str | None
    reason: str | None
    #: With ``--ids``: the seqs found (matching the filters), else None.
    seqs: list[int] | None
    count: int
    routes: set[str]
    #: ``--ids`` seqs not found or not matching the filters.
    missing: list[int]

    def describe(self) -> str:
        parts = []
        if self.route is not None:
            parts.append(f"route {self.route!r}")
        if self.reason is not None:
            parts.append(f"reason containing {self.reason!r}")
        if self.seqs is not None:
            parts.append(f"seqs {ranges(self.seqs)}" if self.seqs else "the given seqs")
        return ", ".join(parts) or "all"

    def chunks(self, box: Outbox, sizes: Iterator[int]) -> Iterator[list[DeadRow]]:
        """The selection, oldest first, in chunks of the sizes asked for.

        Each chunk must be moved out of ``dead`` (replayed or purged) before the next is
        asked for: without ``--ids`` each chunk is "the oldest rows still matching",
        capped so the total never exceeds :attr:`count`.
        """
        done = 0
        for size in sizes:
            size = min(size, self.count - done)
            if size <= 0:
                return
            if self.seqs is not None:
                group = self.seqs[done : done + size]
                rows = box.dead_rows_by_seq(group, self.route, self.reason)
            else:
                rows = box.dead_rows(self.route, self.reason, limit=size)
            if not rows:
                return
            done += size
            yield rows


def select(
    box: Outbox, route: str | None, reason: str | None, ids: Sequence[int] | None
) -> Selection:
    """Count (and with ``ids`` resolve) what the filters select, without changing anything."""
    if ids is not None:
        rows = box.dead_rows_by_seq(ids, route, reason)
        found = [r.seq for r in rows]
        return Selection(
            route,
            reason,
            found,
            len(found),
            {r.route for r in rows},
            sorted(set(ids) - set(found)),
        )
    groups = summary(box, route, reason)
    return Selection(route, reason, None, sum(g[3] for g in groups), {g[0] for g in groups}, [])


def summary(
    box: Outbox, route: str | None, reason: str | None
) -> list[tuple[str, str, str, int, float, float]]:
    return [
        g
        for g in box.dead_summary()
        if (route is None or g[0] == route) and (reason is None or reason_matches(reason, g[2]))
    ]


# --- pacing ------------------------------------------------------------------------------


def chunk_schedule(
    total: int, rate: float, max_chunk: int = REPLAYS_PER_TICK
) -> Iterator[tuple[float, int]]:
    """When (seconds after the start) to queue how many of ``total`` replays at ``rate``/s.

    A chunk holds what ``rate`` allows in one router tick (at least 1, at most
    ``max_chunk``, what the router takes per tick); chunk k starts once the chunks
    before it have had their time at ``rate``, so after t seconds at most
    ``rate * t + chunk`` have been queued.
    """
    if total <= 0:
        return
    size = max(1, min(max_chunk, int(rate * TICK_S)))
    queued = 0
    while queued < total:
        n = min(size, total - queued)
        yield queued / rate, n
        queued += n


@dataclass
class ReplayOutcome:
    """How many dead letters a replay moved, and whether Ctrl-C cut it short."""

    moved: int
    interrupted: bool


def replay_paced(
    box: Outbox,
    sel: Selection,
    rate: float,
    paced: bool,
    report: Callable[[int, int, float], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayOutcome:
    """Move the selection into the replay queue chunk by chunk (see :func:`chunk_schedule`).

    ``paced`` False queues the chunks back to back. ``report(moved, total, elapsed)`` is
    called about once a second and at the end. Ctrl-C stops between chunks (a chunk is
    one transaction, so it is moved whole or not at all).
    """
    start = clock()
    moved = 0
    last = start
    if paced:
        sizes = _on_time(chunk_schedule(sel.count, rate), start, clock, sleep)
    else:
        sizes = forever(REPLAYS_PER_TICK)
    try:
        for rows in sel.chunks(box, sizes):
            moved += box.queue_replay(rows)
            now = clock()
            if now - last >= 1.0:
                report(moved, sel.count, now - start)
                last = now
    except KeyboardInterrupt:
        report(moved, sel.count, clock() - start)
        return ReplayOutcome(moved, True)
    report(moved, sel.count, clock() - start)
    return ReplayOutcome(moved, False)


def _on_time(
    plan: Iterator[tuple[float, int]],
    start: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Iterator[int]:
    """The sizes of ``plan``, each handed out no earlier than ``start`` + its offset."""
    for at, size in plan:
        wait = start + at - clock()
        if wait > 0:
            sleep(wait)
        yield size


def forever(n: int) -> Iterator[int]:
    """Chunks of ``n``, for as long as they are asked for."""
    while True:
        yield n
