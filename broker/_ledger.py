"""The router's books: what happened on each route, and the snapshot that shows them.

**The ledger's words** (:data:`VOCABULARY`) have one meaning each, and ``junction status``,
the live view, ``/metrics`` (``junction_route_<word>``), the web console and the benchmarks'
notes all use them:

- ``received``: the items a route answers for -- one per envelope it hands each of its
  targets, and one per input it filters or dead-letters itself; also the replies it hands
  back to an asker, the rows a previous run left in the outbox (``recovered``) and the
  dead letters replayed into it (``replayed``).
- ``delivered``: items their target acknowledged (replies handed back included).
- ``pending``: items not settled yet, measured where they are (the target's queue, what
  the adapter holds, or the outbox rows of a ``persist`` route), not derived.
- ``dead_lettered``: items stored as dead letters, with the reason.
- ``dropped``: items lost by the route's overflow policy or by a failure, by reason
  (``drop_oldest``, ``block_timeout``, ``outbox_full``, ...); never a filter's decision.
- ``filtered``: inputs the route's map or transforms chose to drop (a decision, not a loss).
- ``balanced``: at every moment ``received = delivered + pending + dead_lettered + dropped
  + filtered``.
- ``matched``: input envelopes the route's match took. It differs from ``received`` by
  the fan-out (one input, several targets), ``replies``, ``recovered`` and ``replayed``,
  which the views show beside it.

A route's snapshot carries these words twice: at its top level (the router's counters,
``pending`` and ``balanced`` left out) and in its ``ledger`` (all of them, ``pending``
measured). Beside them at the top level: ``queued`` (items a target's queue or the outbox
accepted), ``drop_reasons`` (``dropped`` by reason), ``retries``, ``reply_timeouts`` and a
histogram of delivery latency (envelope ``ts`` to acknowledged).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker._durable import DurableQueues
from broker._envelope import Envelope
from broker._inlet import Inlet
from broker._outbox import Outbox, OutboxError
from broker._queue_key import QueueKey

#: the router's logger: these lines are the router's (as before it was split in modules)
log = logging.getLogger("broker.router")

#: Each ledger word and its one meaning (see the module docstring).
VOCABULARY = {
    "received": "items the route answers for: one per envelope handed to each target, "
    "each input it filtered or dead-lettered, replies, recovered rows and replays",
    "delivered": "items their target acknowledged (replies handed back included)",
    "pending": "items not settled yet: queued, being delivered, or in the outbox",
    "dead_lettered": "items stored as dead letters, with the reason",
    "dropped": "items lost by the route's overflow policy or a failure, by reason",
    "filtered": "inputs the route's map or transforms chose to drop (a decision, not a loss)",
    "balanced": "received = delivered + pending + dead_lettered + dropped + filtered",
    "matched": "input envelopes the route's match took (before the fan-out to its targets)",
    "replies": "replies handed back to the adapter that asked",
    "recovered": "items the last run left in the outbox, received again at start",
    "replayed": "dead letters replayed into the route (junction dlq replay, the console)",
    "queued": "items a target's queue (or the outbox) accepted",
    "drop_reasons": "dropped, by reason",
}

#: Upper bounds (seconds) of the delivery latency histogram: envelope ``ts`` to acknowledged.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass
class RouteCounters:
    """What happened to envelopes on one route."""

    matched: int = 0
    queued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    replies: int = 0
    reply_timeouts: int = 0
    received: int = 0
    recovered: int = 0
    replayed: int = 0
    retries: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe(self, envelopes: list[Envelope], now: float) -> None:
        """Add each envelope's age (``ts`` to now) to the latency histogram."""
        counts = self.latency
        total = 0.0
        for env in envelopes:
            age = now - env.ts
            total += age
            counts[bisect.bisect_left(LATENCY_BUCKETS, age)] += 1
        self.latency_sum += total

    def as_dict(self) -> dict[str, Any]:
        losses = {reason: n for reason, n in self.dropped.items() if reason != "filtered"}
        return {  # the ledger's words (VOCABULARY), and the router's own counters
            "matched": self.matched,
            "queued": self.queued,
            "delivered": self.delivered + self.replies,
            "dead_lettered": self.failed,
            "dropped": sum(losses.values()),
            "drop_reasons": losses,
            # "filtered" is a transform's decision, not a loss: counted apart from drops
            "filtered": self.dropped.get("filtered", 0),
            "replies": self.replies,
            "reply_timeouts": self.reply_timeouts,
            "recovered": self.recovered,
            "replayed": self.replayed,
            "retries": self.retries,
            "latency": {
                "le": list(LATENCY_BUCKETS),
                "counts": list(self.latency),
                "sum": round(self.latency_sum, 6),
                "count": sum(self.latency),
            },
        }


class Ledger:
    """The counters of every route the router has seen, and what no route took."""

    def __init__(self, routes: Iterable[str] = ()) -> None:
        self.counters: dict[str, RouteCounters] = {name: RouteCounters() for name in routes}
        #: envelopes no route took, per (source, kind)
        self.unrouted: Counter[tuple[str, str]] = Counter()
        self.dead_letters = 0

    def of(self, route: str) -> RouteCounters:
        """The counters of ``route``, made when it has none yet."""
        c = self.counters.get(route)
        if c is None:
            c = self.counters[route] = RouteCounters()
        return c

    def add_routes(self, routes: Iterable[str]) -> None:
        for name in routes:
            self.of(name)

    def recovered(self, key: QueueKey, n: int) -> None:
        """``n`` items of ``key`` a previous run left in the outbox: received again."""
        c = self.of(key.route)
        c.received += n
        c.recovered += n

    def unrouted_one(self, env: Envelope) -> None:
        key = (env.source, env.kind)
        self.unrouted[key] += 1
        if self.unrouted[key] == 1:
            log.info(
                "no route takes %s from %s (first one: subject=%r); counting them as unrouted",
                env.kind,
                env.source,
                env.subject,
            )

    # --- the snapshot -----------------------------------------------------------------

    def snapshot(
        self,
        inlets: Mapping[str, Inlet],
        durable: DurableQueues | None,
        outbox: Outbox | None,
        pending_replies: int,
    ) -> dict[str, Any]:
        """Counters and ledger per route, unrouted counts, pending replies, queues, outbox."""
        now = time.time()
        routes = {}
        for name, c in self.counters.items():
            entry = c.as_dict()
            pending, oldest = self.pending_of(name, now, inlets, durable)
            filtered, dropped = entry["filtered"], entry["dropped"]
            delivered = entry["delivered"]  # replies handed back included
            entry["ledger"] = {  # the ledger's words (VOCABULARY), nothing else
                "received": c.received,
                "delivered": delivered,
                "pending": pending,
                "dead_lettered": c.failed,
                "dropped": dropped,
                "filtered": filtered,
                "balanced": c.received == delivered + pending + c.failed + dropped + filtered,
                "matched": c.matched,
                "replies": c.replies,
                "recovered": c.recovered,
                "replayed": c.replayed,
            }
            entry["outbox"] = {
                "pending": pending if oldest is not None else 0,
                "oldest_age_s": oldest,
            }
            routes[name] = entry
        store: dict[str, Any] = {}
        if outbox is not None:
            ages = [r["outbox"]["oldest_age_s"] for r in routes.values()]
            known = [a for a in ages if a is not None]
            store = {
                "path": str(outbox.path),
                "rows": outbox.rows,
                "bytes": outbox.bytes,
                "oldest_age_s": max(known) if known else None,
            }
            store["dead_pruned"] = outbox.dead_pruned
            store["unreadable"] = outbox.unreadable  # rows that did not decode: dead letters
            try:
                store["dead_letters"] = outbox.dead_count()
                store["replays_waiting"] = outbox.replay_waiting()
            except OutboxError as err:
                store["error"] = str(err)
        return {
            "routes": routes,
            "unrouted": {f"{s}/{k}": n for (s, k), n in self.unrouted.items()},
            "dead_letters": self.dead_letters,
            "pending_replies": pending_replies,
            "queues": {name: inlet.depths() for name, inlet in inlets.items()},
            "outbox": store,
            # outbox rows per "target/queue" (kept across a restart)
            "persist_queues": {f"{t}/{k.name}": q.rows for (t, k), q in durable.queues.items()}
            if durable is not None
            else {},
        }

    @staticmethod
    def pending_of(
        name: str, now: float, inlets: Mapping[str, Inlet], durable: DurableQueues | None
    ) -> tuple[int, float | None]:
        """Items of route ``name`` not settled yet, where they are; and the oldest persisted."""
        pending = 0
        oldest: float | None = None
        for key in (QueueKey(name), QueueKey(name, reply=True)):
            queue = key.name
            for target, inlet in inlets.items():
                rows = durable.pending(target, key) if durable is not None else None
                if rows is None:
                    pending += inlet.route_pending(queue)
                    continue
                assert durable is not None
                # outbox rows, plus what is in the queue without a row (memory envelopes of
                # the same name, e.g. before a reload made the route persist)
                window = durable.in_memory(target, key)
                pending += rows + max(0, inlet.route_pending(queue) - window)
                try:
                    age = durable.oldest_age_s(target, key, now)
                except OutboxError:  # the count above holds; the age cannot be read now
                    age = None
                if age is not None:
                    oldest = age if oldest is None else max(oldest, age)
        if durable is not None:  # rows for adapters this configuration lacks
            for (target, key), q in durable.queues.items():
                if target not in inlets and key.route == name:
                    pending += q.rows
        return pending, oldest
