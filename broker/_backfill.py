"""Progress of an outbox backfill: what a previous run left, delivered after a restart.

After a crash or a long outage a ``persist`` route may start with thousands of envelopes
in the outbox. The router counts them (``recovered``) and then, every
:data:`REPORT_EVERY_S` while any of them waits, logs one line per such route: how many the
last run left, how many of those are still to deliver, how many were delivered since the
start and at what rate, and about how long the rest takes at that rate; a last line says
when they are through. A route delivers its queues in order, so the backlog is through
once it delivered as many as the last run left (or nothing is pending): new traffic does
not keep the report going. So the person watching a restart at 3 a.m. sees it move.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["BackfillProgress"]

log = logging.getLogger("broker.router")

#: Seconds between progress lines.
REPORT_EVERY_S = 5.0


@dataclass
class _Route:
    left: int  # what the last run left in the outbox
    delivered_at_start: int
    began: float


class BackfillProgress:
    """Per route with recovered envelopes: report until its pending count reaches 0."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._routes: dict[str, _Route] = {}
        self._next = 0.0

    def recovered(self, route: str, n: int, delivered: int) -> None:
        """``n`` envelopes of ``route`` were left by the last run (at start)."""
        known = self._routes.get(route)
        if known is not None:
            known.left += n
        else:
            self._routes[route] = _Route(n, delivered, self._clock())
        self._next = self._clock() + REPORT_EVERY_S

    def tick(self, counts: Callable[[str], tuple[int, int]]) -> None:
        """Report if due; ``counts(route)`` gives (pending, delivered so far)."""
        if not self._routes:
            return
        now = self._clock()
        if now < self._next:
            return
        self._next = now + REPORT_EVERY_S
        for name, r in list(self._routes.items()):
            pending, delivered = counts(name)
            done = delivered - r.delivered_at_start
            took = now - r.began
            # a route's queues are delivered in order, so once it delivered as many as the
            # last run left, those are through (what is pending now came in since)
            left = min(pending, max(0, r.left - done))
            if left <= 0:
                log.info(
                    "outbox backfill of route %s done: the %d envelopes the last run left "
                    "are delivered (%.0f s)",
                    name,
                    r.left,
                    took,
                )
                del self._routes[name]
                continue
            rate = done / took if took > 0 else 0.0
            eta = f", about {left / rate:.0f} s left" if rate > 0 else ""
            log.info(
                "outbox backfill of route %s: %d of the %d the last run left still to "
                "deliver; %d delivered since the start (%.0f/s%s)",
                name,
                left,
                r.left,
                done,
                rate,
                eta,
            )

    def routes(self) -> Mapping[str, int]:
        """The routes still being reported, with what the last run left."""
        return {name: r.left for name, r in self._routes.items()}
