"""The router actor: match, map, transform, dispatch; count everything; answer askers.

It receives batches from adapters (:class:`~broker.messages.Inbound`), runs each
envelope through every matching route, and offers the results to each target's
inlet in one batch per (target, route).  Targets confirm what they sent
(:class:`~broker.messages.Delivered`) or could not send (:class:`~broker.messages.Failed`).

Per route it counts ``matched``, ``queued``, ``delivered``, ``failed`` (dead-lettered)
and ``dropped`` by reason.  A mapping or transform that raises is contained: the
envelope is dead-lettered (logged with route and reason, counted, stored in the
dead-letter store of the outbox, and sent to the ``dead_letter`` adapter when one is
configured) and the router carries on.

The loss ledger of a route: every item it hands a target (one per envelope and target,
replies included), every input it filters and every input it dead-letters is
``received``; at every moment ``received = delivered + pending + dead_lettered +
dropped``, where ``pending`` is measured where the items are (the target's queue and
what the adapter holds, or the outbox rows of a ``persist`` route), not derived.

``persist`` routes go through :mod:`broker.durable` and the outbox (:mod:`broker.outbox`).

The router is served by a task on the adapters' shared trio loop
(:class:`~broker.loop_actor.LoopActor`): a batch from an adapter on that loop reaches it
without a thread hop, and its results reach the adapters the same way.  So it never
blocks: a ``block`` route whose target's queue is full holds the rest of the batch
(:meth:`Router.blocked`) and the router waits for room asynchronously, up to the
``block_timeout_s``, before it takes its next message -- the loop runs on meanwhile.
Outbox writes stay on the loop: SQLite in WAL mode with ``synchronous=NORMAL`` commits
without an fsync, and the checkpoints run on a thread of their own.

Request/reply: a route with ``expects_reply = true`` records each request's
correlation id, the asker and a deadline.  An envelope that comes back carrying
that correlation id is a reply: it goes (through the route's ``reply_map``) to the
asker.  A request with no reply by its deadline gets a timeout result instead.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pluggy
import trio

from broker.config import JunctionSettings, RedeliveryPolicy
from broker.durable import DurableQueues
from broker.envelope import CommandResult, Envelope, ExecResult, LogLine
from broker.errors import TransformError
from broker.inlet import Inlet
from broker.logs import LogGate
from broker.loop import SharedLoop
from broker.loop_actor import LoopActor
from broker.mapping import MappingError
from broker.messages import (
    Backlog,
    Delivered,
    Failed,
    Inbound,
    Leftovers,
    Snapshot,
    Tick,
    describe,
)
from broker.outbox import DeadLetter, Outbox, OutboxError
from broker.overflow import Overflow
from broker.queue_key import QueueKey
from broker.routing import CompiledRoute, RoutingTable, resolve_policies, run_route

log = logging.getLogger(__name__)

DEAD_LETTER_ROUTE = "dead_letter"
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
#: Dead letters taken from the replay queue per tick (4 ticks a second).
REPLAYS_PER_TICK = 250


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
        return {
            "matched": self.matched,
            "queued": self.queued,
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": dict(self.dropped),
            # "filtered" is a transform's decision, not a loss: shown apart from real drops
            "filtered": self.dropped.get("filtered", 0),
            "dropped_total": sum(n for reason, n in self.dropped.items() if reason != "filtered"),
            "replies": self.replies,
            "reply_timeouts": self.reply_timeouts,
            "recovered": self.recovered,
            "retries": self.retries,
            "latency": {
                "le": list(LATENCY_BUCKETS),
                "counts": list(self.latency),
                "sum": round(self.latency_sum, 6),
                "count": sum(self.latency),
            },
        }


@dataclass
class _Pending:
    route: CompiledRoute
    asker: str
    deadline: float
    request: Envelope


@dataclass
class _Stall:
    """The rest of a batch a ``block`` route could not queue yet (its target is full)."""

    inlet: Inlet  # the target's (no reload can swap it: no message is taken meanwhile)
    target: str
    queue: QueueKey
    envelopes: list[Envelope]
    size: int
    deadline: float  # time.monotonic(): then what still does not fit is dropped
    counters: RouteCounters
    overflow_reason: str


@dataclass(frozen=True, slots=True)
class Swap:
    """Replace the routing table in one step (hot reload; see broker.reload).

    ``settings``, ``inlets`` (by adapter name) and ``persist_kinds`` replace the router's
    when given, in the same step, so no envelope sees a new table with old targets.
    """

    table: RoutingTable
    settings: JunctionSettings | None = None
    inlets: dict[str, Inlet] | None = None
    persist_kinds: dict[str, frozenset[str]] | None = None


class Router(LoopActor):
    """Routes envelopes between adapters (see the module docstring)."""

    def __init__(
        self,
        table: RoutingTable,
        inlets: dict[str, Inlet],
        settings: JunctionSettings,
        hooks: pluggy.HookRelay | None = None,
        backlog: Backlog | None = None,
        outbox: Outbox | None = None,
        persist_kinds: dict[str, frozenset[str]] | None = None,
        *,
        loop: SharedLoop | None = None,
    ) -> None:
        super().__init__(loop=loop)
        self._stalls: list[_Stall] = []
        self.table = table
        self.inlets = inlets
        self.settings = settings
        self.hooks = hooks
        self.backlog = backlog or Backlog()
        self.counters: dict[str, RouteCounters] = {r.name: RouteCounters() for r in table.routes}
        self.unrouted: Counter[tuple[str, str]] = Counter()
        self.dead_letters = 0
        self._pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._throttle = LogGate(every_s=1.0, per=5)
        self._observe = self._observers()
        self.outbox = outbox
        self.persist_kinds = persist_kinds or {}
        self._by_name: dict[str, CompiledRoute] = {}
        self._policies = self._resolve_policies(table)
        self._graveyard: list[DeadLetter] = []
        #: replay rows handed back to the routes but not yet deleted from the queue
        self._handed_back: set[int] = set()
        self.durable: DurableQueues | None = None
        if outbox is not None:
            self.durable = DurableQueues(outbox, inlets, self._redelivery, self._capacity)
            for (_target, key), n in self.durable.recover().items():
                c = self.counters.setdefault(key.route, RouteCounters())
                c.received += n
                c.recovered += n
                log.info("outbox: %d envelopes of route %s left by the last run", n, key.name)

    # --- policies -----------------------------------------------------------------

    def _resolve_policies(self, table: RoutingTable) -> dict[tuple[str, str], Overflow]:
        self._by_name = {r.name: r for r in table.routes}
        return resolve_policies(table, self.persist_kinds, durable=self.outbox is not None)

    def _route_by_name(self, name: str) -> CompiledRoute | None:
        return self._by_name.get(name)

    def _redelivery(self, key: QueueKey) -> RedeliveryPolicy:
        route = self._route_by_name(key.route)
        return route.redelivery if route is not None else self.settings.redelivery

    def _capacity(self, key: QueueKey) -> int:
        route = self._route_by_name(key.route)
        return route.queue_size if route is not None else self.settings.queue_size

    def _observers(self) -> tuple[bool, bool, bool]:
        if self.hooks is None:
            return False, False, False
        h = self.hooks
        return (
            bool(h.junction_envelopes_received.get_hookimpls()),
            bool(h.junction_envelopes_delivered.get_hookimpls()),
            bool(h.junction_envelope_dropped.get_hookimpls()),
        )

    # --- dispatch ---------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except OutboxError as err:
            # the store failed (disk full, locked too long): say so, keep routing
            ok, held = self._throttle.allow("outbox-error")
            if ok:
                log.error(
                    "outbox error while handling %s: %s%s",
                    type(message).__name__,
                    err,
                    f" ({held} more not logged)" if held else "",
                )
            return None

    def _handle(self, message: Any) -> Any:
        try:
            if type(message) is Inbound:
                self._route(message.source, message.envelopes)
            elif type(message) is Delivered:
                self._delivered(message)
            elif type(message) is Failed:
                self._failed(message)
            elif type(message) is Tick:
                now = time.time()
                self._expire_replies(now)
                if self.durable is not None:
                    self.durable.tick(now)
                    self._take_replays()
            elif type(message) is Snapshot:
                return self.snapshot()
            elif type(message) is Leftovers:
                return self._leftovers(message)
            elif type(message) is Swap:
                self._swap(message.table, message.settings, message.inlets, message.persist_kinds)
            else:
                log.warning("router ignored an unknown message %r", type(message).__name__)
        finally:
            if self._graveyard or (self.durable is not None and self.durable.stale_buried):
                self._bury()
        return None

    def _failed(self, msg: Failed) -> None:
        inlet = self.inlets.get(msg.target)
        if inlet is not None:
            inlet.done(msg.route, len(msg.envelopes))
        key = QueueKey.parse(msg.route)
        name = key.route
        durable = self.durable
        memory = msg.envelopes
        if durable is not None and durable.pending(msg.target, key) is not None:
            settled = durable.failed(
                msg.target, key, msg.envelopes, f"{msg.target}: {msg.reason}", msg.retry
            )
            c = self.counters.setdefault(name, RouteCounters())
            c.retries += settled.retrying
            for env, why in settled.buried:
                self._dead_letter(name, env, why, store=False)
            memory = list(settled.unknown)
        for env in memory:
            self._dead_letter(
                name, env, f"{msg.target}: {msg.reason}", stage="deliver", target=msg.target
            )

    def _leftovers(self, msg: Leftovers) -> tuple[dict[str, int], dict[str, int]]:
        """What a stopped target left: outbox rows wait, the rest is dead-lettered."""
        inlet = self.inlets.get(msg.target)
        if msg.envelopes is not None:
            held = msg.envelopes
            if inlet is not None:  # they were taken and never settled
                for queue, envs in held.items():
                    inlet.done(queue, len(envs))
        else:
            held = inlet.drain_all() if inlet is not None else {}
        if msg.remove:
            self.inlets.pop(msg.target, None)
        kept: dict[str, int] = {}
        dead: dict[str, int] = {}
        for queue, envs in held.items():
            key = QueueKey.parse(queue)
            memory = envs
            if self.durable is not None:
                memory = self.durable.leftovers(msg.target, key, envs)
            name = key.route
            for env in memory:
                self._dead_letter(name, env, msg.reason, stage="deliver", target=msg.target)
            if len(envs) > len(memory):
                kept[queue] = len(envs) - len(memory)
            if memory:
                dead[queue] = len(memory)
        return kept, dead

    def _bury(self) -> None:
        """Write the dead letters gathered while handling one message (one transaction)."""
        letters, self._graveyard = self._graveyard, []
        if self.durable is not None:
            for env, key, why in self.durable.stale_buried:
                self._dead_letter(key.route, env, why, store=False)
            self.durable.stale_buried.clear()
        if self.outbox is None or not letters:
            return
        try:
            self.outbox.bury(letters)
        except OutboxError as err:
            log.error("%d dead letters could not be stored: %s", len(letters), err)

    def _take_replays(self) -> None:
        """Feed dead letters queued by ``junction dlq replay`` back in, a few per tick."""
        assert self.outbox is not None
        if self._handed_back:  # a delete that failed last time: never replay them twice
            self.outbox.replayed(sorted(self._handed_back))
            self._handed_back.clear()
        try:
            rows = self.outbox.next_replays(REPLAYS_PER_TICK)
        except OutboxError as err:
            log.error("replay queue unreadable: %s", err)
            return
        batches: dict[tuple[str, CompiledRoute], list[Envelope]] = {}
        for row in rows:
            route = self._route_by_name(row.route)
            if (
                route is not None
                and row.stage == "deliver"
                and route.spec.expects_reply
                and row.target not in route.targets
                and row.target in self.inlets
            ):  # an answer for the asker: back to the reply queue it failed on
                self._offer(
                    row.target,
                    QueueKey(route.name, reply=True),
                    [row.envelope],
                    route.queue_size,
                    self._reply_policy(row.target, row.envelope),
                )
                continue
            if route is None or (row.stage == "deliver" and row.target not in route.targets):
                # back to the dead letters, counted as received again so the ledger holds
                where = f"route {row.route!r}" if route is None else f"target {row.target!r}"
                c = self.counters.setdefault(row.route, RouteCounters())
                c.received += 1
                self._dead_letter(
                    row.route,
                    row.envelope,
                    f"replay: {where} is no longer in the routing table",
                    stage=row.stage,
                    target=row.target,
                )
            elif row.stage == "deliver":
                batches.setdefault((row.target, route), []).append(row.envelope)
            else:
                self.counters[route.name].matched += 1
                self._run_one(route, row.envelope, batches)
        if rows:
            log.info("replaying %d dead letters", len(rows))
        for (target, route), batch in batches.items():
            self._offer(
                target, QueueKey(route.name), batch, route.queue_size, self._policy(route, target)
            )
        self._bury()  # what failed again is stored before the replays are let go
        self._handed_back.update(r.seq for r in rows)
        self.outbox.replayed(sorted(self._handed_back))
        self._handed_back.clear()

    def _route(self, source: str, envelopes: list[Envelope]) -> None:
        self.backlog.sub(len(envelopes))
        if self._observe[0] and self.hooks is not None:
            self.hooks.junction_envelopes_received(adapter=source, envelopes=envelopes)
        batches: dict[tuple[str, CompiledRoute], list[Envelope]] = {}
        pending = self._pending
        table = self.table
        counters = self.counters
        for env in envelopes:
            if pending and env.correlation_id in pending:
                self._reply(env)
                continue
            try:
                routes = table.match(env)
            except Exception as err:  # a predicate bug must not take the router down
                self._dead_letter("(matching)", env, f"matching raised {describe(err)}")
                continue
            if not routes:
                self._unrouted(env)
                continue
            for route in routes:
                counters[route.name].matched += 1
                self._run_one(route, env, batches)
        for (target, route), batch in batches.items():
            self._offer(
                target, QueueKey(route.name), batch, route.queue_size, self._policy(route, target)
            )

    def _run_one(
        self,
        route: CompiledRoute,
        env: Envelope,
        batches: dict[tuple[str, CompiledRoute], list[Envelope]],
    ) -> None:
        """Map and transform ``env`` on ``route``; add the results to the per-target batches."""
        if route.mapping is None and not route.transforms:
            outs = [env]
        else:
            try:
                outs = run_route(route, env)
            except (MappingError, TransformError) as err:
                self.counters[route.name].received += 1
                self._dead_letter(route.name, env, describe(err))
                return
            except Exception as err:  # anything else in mapping: same containment
                self.counters[route.name].received += 1
                self._dead_letter(route.name, env, f"route raised {describe(err)}")
                return
            if not outs:
                self.counters[route.name].received += 1
                self._drop(QueueKey(route.name), env, "filtered")
                return
        if route.spec.expects_reply:
            outs = [self._expect_reply(route, out) for out in outs]
        for target in route.targets:
            key = (target, route)
            batch = batches.get(key)
            if batch is None:
                batches[key] = list(outs)
            else:
                batch.extend(outs)

    def _policy(self, route: CompiledRoute, target: str) -> str:
        return self._policies.get((route.name, target)) or (
            route.overflow if route.overflow is not Overflow.AUTO else Overflow.DROP_OLDEST
        )

    def _offer(
        self, target: str, key: QueueKey, batch: list[Envelope], size: int, policy: str
    ) -> None:
        name = key.name
        counters = self.counters.setdefault(key.route, RouteCounters())
        counters.received += len(batch)
        overflow_reason = ""  # set when a failing outbox sends a persist batch to memory
        if policy == "persist" and self.durable is not None:
            try:
                stored, refused = self.durable.offer(target, key, batch)
            except OutboxError as err:
                ok, held = self._throttle.allow(f"outbox-write:{name}")
                if ok:
                    log.error(
                        "outbox write failed for route %s; %d envelopes held in memory only "
                        "(what does not fit the queue is dropped as outbox_error): %s%s",
                        name,
                        len(batch),
                        err,
                        f" ({held} more not logged)" if held else "",
                    )
                policy, overflow_reason = "drop_newest", "outbox_error"
            else:
                counters.queued += stored
                for env in refused:
                    self._drop(key, env, "outbox_full", target)
                return
        inlet = self.inlets.get(target)
        if inlet is None:  # validated at load time; only reachable after a bad swap
            for env in batch:
                self._drop(key, env, f"no adapter {target!r}")
            return
        inlet_policy = "block" if policy == "persist" else policy
        result = inlet.offer(name, batch, size, inlet_policy)
        counters.queued += result.accepted
        for env, reason in result.dropped:
            self._drop(key, env, overflow_reason or reason, target)
        if result.waiting:
            deadline = time.monotonic() + inlet.block_timeout_s
            self._stalls.append(
                _Stall(
                    inlet,
                    target,
                    key,
                    result.waiting,
                    size,
                    deadline,
                    counters,
                    overflow_reason,
                )
            )

    # --- waiting for room (block) -----------------------------------------------------

    def blocked(self) -> bool:
        """A ``block`` batch waits for room: no next message until it is queued or dropped."""
        return bool(self._stalls)

    async def wait_unblocked(self) -> None:
        """Queue the held batches as their targets make room; past a batch's deadline,
        drop what still does not fit (``block_timeout``)."""
        loop = self.loop
        assert loop is not None
        while self._stalls:
            stall = self._stalls[0]
            inlet = stall.inlet
            room = trio.Event()
            inlet.when_room(functools.partial(loop.call_soon, room.set))
            result = inlet.offer(stall.queue.name, stall.envelopes, stall.size, "block")
            stall.counters.queued += result.accepted
            for env, reason in result.dropped:
                self._drop(stall.queue, env, stall.overflow_reason or reason, stall.target)
            left = stall.deadline - time.monotonic()
            if result.waiting and left > 0:
                stall.envelopes = result.waiting
                with trio.move_on_after(left):
                    await room.wait()
                continue
            inlet.when_room(None)
            for env in result.waiting:
                self._drop(stall.queue, env, stall.overflow_reason or "block_timeout", stall.target)
            self._stalls.pop(0)

    def _delivered(self, msg: Delivered) -> None:
        inlet = self.inlets.get(msg.target)
        if inlet is not None:
            inlet.done(msg.route, msg.count)
        key = QueueKey.parse(msg.route)
        if self.durable is not None and self.durable.pending(msg.target, key) is not None:
            try:
                self.durable.delivered(msg.target, key, msg.envelopes)
            except OutboxError as err:  # delivered twice after a restart, never lost
                log.error("outbox: acknowledged rows not deleted: %s", err)
        c = self.counters.get(key.route)
        if c is not None:
            if key.reply:  # an answer handed back to the asker
                c.replies += msg.count
            else:
                c.delivered += msg.count
            if msg.envelopes:
                c.observe(msg.envelopes, time.time())
        if self._observe[1] and self.hooks is not None:
            self.hooks.junction_envelopes_delivered(
                route=msg.route, target=msg.target, count=msg.count
            )

    # --- request / reply --------------------------------------------------------

    def _expect_reply(self, route: CompiledRoute, env: Envelope) -> Envelope:
        cid = env.correlation_id or env.id
        asker = env.reply_to or env.source
        timeout = route.spec.reply_timeout_s or self.settings.reply_timeout_s
        deadline = env.deadline or (time.time() + timeout)
        if env.correlation_id != cid or env.reply_to != asker or env.deadline != deadline:
            env = msgspec.structs.replace(
                env, correlation_id=cid, reply_to=asker, deadline=deadline
            )
        self._pending[cid] = _Pending(route, asker, deadline, env)
        heapq.heappush(self._deadlines, (deadline, cid))
        return env

    def _reply(self, env: Envelope) -> None:
        assert env.correlation_id is not None
        waiting = self._pending.pop(env.correlation_id)
        self._answer(waiting, env)

    def _answer(self, waiting: _Pending, reply: Envelope) -> None:
        route = waiting.route
        mapping = route.reply_mapping
        if mapping is not None:
            try:
                reply = mapping.apply(reply)
            except MappingError as err:
                self._dead_letter(route.name, reply, f"reply_map: {describe(err)}")
                return
        policy = self._reply_policy(waiting.asker, reply)
        self._offer(
            waiting.asker, QueueKey(route.name, reply=True), [reply], route.queue_size, policy
        )

    def _reply_policy(self, asker: str, reply: Envelope) -> str:
        keep = self.persist_kinds.get(asker, frozenset())
        return "persist" if reply.kind in keep and self.durable is not None else "block"

    def _expire_replies(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, cid = heapq.heappop(self._deadlines)
            waiting = self._pending.get(cid)
            if waiting is None or waiting.deadline > now:
                continue
            del self._pending[cid]
            self.counters[waiting.route.name].reply_timeouts += 1
            req = waiting.request
            text = f"no reply within the deadline on route {waiting.route.name!r}"
            log.warning(
                "reply timeout: route=%s correlation_id=%s target=%s",
                waiting.route.name,
                cid,
                ",".join(waiting.route.targets),
            )
            body: Any
            if req.kind == "exec_request":
                body = ExecResult(ok=False, error="timeout", message=text)
            elif req.kind == "command_request":
                body = CommandResult(ok=False, message=text)
            else:
                body = LogLine(level="error", message=text)
            reply = Envelope(
                source=",".join(waiting.route.targets),
                subject=req.subject,
                body=body,
                correlation_id=cid,
            )
            self._answer(waiting, reply)

    # --- losses -------------------------------------------------------------------

    def _drop(self, key: QueueKey, env: Envelope, reason: str, target: str = "") -> None:
        route = key.name
        c = self.counters.get(key.route)
        if c is not None:
            c.dropped[reason] += 1
        if reason != "filtered":
            ok, held = self._throttle.allow(f"drop:{route}")
            if ok:
                log.warning(
                    "dropped: route=%s target=%s reason=%s id=%s%s",
                    route,
                    target or "-",
                    reason,
                    env.id,
                    f" ({held} more not logged)" if held else "",
                )
        if self._observe[2] and self.hooks is not None:
            self.hooks.junction_envelope_dropped(route=route, envelope=env, reason=reason)

    def _dead_letter(
        self,
        route: str,
        env: Envelope,
        reason: str,
        *,
        stage: str = "route",
        target: str = "",
        store: bool = True,
    ) -> None:
        c = self.counters.get(route)
        if c is not None:
            c.failed += 1
        self.dead_letters += 1
        if store and self.outbox is not None:
            self._graveyard.append(DeadLetter(route, target, stage, env, reason))
        ok, held = self._throttle.allow(f"dead:{route}")
        if ok:
            log.warning(
                "dead letter: route=%s id=%s kind=%s reason=%s%s",
                route,
                env.id,
                env.kind,
                reason,
                f" ({held} more not logged)" if held else "",
            )
        if self._observe[2] and self.hooks is not None:
            self.hooks.junction_envelope_dropped(
                route=route, envelope=env, reason=f"dead_letter: {reason}"
            )
        sink = self.settings.dead_letter
        if sink and sink in self.inlets:
            marked = msgspec.structs.replace(
                env,
                headers={
                    **env.headers,
                    "x-dead-letter-route": route,
                    "x-dead-letter-reason": reason,
                },
            )
            self.inlets[sink].offer(
                DEAD_LETTER_ROUTE, [marked], self.settings.queue_size, "drop_oldest"
            )

    def _unrouted(self, env: Envelope) -> None:
        key = (env.source, env.kind)
        self.unrouted[key] += 1
        if self.unrouted[key] == 1:
            log.info(
                "no route takes %s from %s (first one: subject=%r); counting them as unrouted",
                env.kind,
                env.source,
                env.subject,
            )

    # --- table and introspection -----------------------------------------------

    def _swap(
        self,
        table: RoutingTable,
        settings: JunctionSettings | None = None,
        inlets: dict[str, Inlet] | None = None,
        persist_kinds: dict[str, frozenset[str]] | None = None,
    ) -> None:
        if settings is not None:
            self.settings = settings
        if inlets is not None and inlets is not self.inlets:
            # in place, on this thread: the durable queues hold this same dict
            self.inlets.clear()
            self.inlets.update(inlets)
        if persist_kinds is not None:
            self.persist_kinds = persist_kinds
        self.table = table
        self._policies = self._resolve_policies(table)
        for r in table.routes:
            self.counters.setdefault(r.name, RouteCounters())
        log.info("routing table replaced: %d routes", len(table.routes))

    def snapshot(self) -> dict[str, Any]:
        """Counters and ledger per route, unrouted counts, pending replies, queues, outbox."""
        now = time.time()
        routes = {}
        for name, c in self.counters.items():
            entry = c.as_dict()
            pending, oldest = self._pending_of(name, now)
            dropped = sum(c.dropped.values())
            delivered = c.delivered + c.replies
            entry["ledger"] = {
                "received": c.received,
                "delivered": delivered,
                "pending": pending,
                "dead_lettered": c.failed,
                "dropped": dropped,
                "balanced": c.received == delivered + pending + c.failed + dropped,
            }
            entry["outbox"] = {
                "pending": pending if oldest is not None else 0,
                "oldest_age_s": oldest,
            }
            routes[name] = entry
        outbox: dict[str, Any] = {}
        if self.outbox is not None:
            ages = [r["outbox"]["oldest_age_s"] for r in routes.values()]
            known = [a for a in ages if a is not None]
            outbox = {
                "path": str(self.outbox.path),
                "rows": self.outbox.rows,
                "bytes": self.outbox.bytes,
                "oldest_age_s": max(known) if known else None,
            }
            outbox["dead_pruned"] = self.outbox.dead_pruned
            try:
                outbox["dead_letters"] = self.outbox.dead_count()
                outbox["replays_waiting"] = self.outbox.replay_waiting()
            except OutboxError as err:
                outbox["error"] = str(err)
        return {
            "routes": routes,
            "unrouted": {f"{s}/{k}": n for (s, k), n in self.unrouted.items()},
            "dead_letters": self.dead_letters,
            "pending_replies": len(self._pending),
            "queues": {name: inlet.depths() for name, inlet in self.inlets.items()},
            "outbox": outbox,
            # outbox rows per "target/queue" (kept across a restart)
            "persist_queues": {f"{t}/{k.name}": q.rows for (t, k), q in self.durable.queues.items()}
            if self.durable is not None
            else {},
        }

    def _pending_of(self, name: str, now: float) -> tuple[int, float | None]:
        """Items of route ``name`` not settled yet, where they are; and the oldest persisted."""
        pending = 0
        oldest: float | None = None
        for key in (QueueKey(name), QueueKey(name, reply=True)):
            queue = key.name
            for target, inlet in self.inlets.items():
                rows = self.durable.pending(target, key) if self.durable is not None else None
                if rows is None:
                    pending += inlet.route_pending(queue)
                    continue
                assert self.durable is not None
                # outbox rows, plus what is in the queue without a row (memory envelopes of
                # the same name, e.g. before a reload made the route persist)
                window = self.durable.in_memory(target, key)
                pending += rows + max(0, inlet.route_pending(queue) - window)
                try:
                    age = self.durable.oldest_age_s(target, key, now)
                except OutboxError:  # the count above holds; the age cannot be read now
                    age = None
                if age is not None:
                    oldest = age if oldest is None else max(oldest, age)
        if self.durable is not None:  # rows for adapters this configuration lacks
            for (target, key), q in self.durable.queues.items():
                if target not in self.inlets and key.route == name:
                    pending += q.rows
        return pending, oldest
