"""The router actor: match, map, transform, dispatch.

It receives batches from adapters (:class:`~broker._messages.Inbound`), runs each
envelope through every matching route, and offers the results to each target's
inlet in one batch per (target, route).  Targets confirm what they sent
(:class:`~broker._messages.Delivered`) or could not send (:class:`~broker._messages.Failed`).

What the router counts and how its ledger balances is in :mod:`broker._ledger`; what it
cannot deliver (drops, dead letters, replays) in :mod:`broker._dead_letters`; requests
waiting for their answers in :mod:`broker._replies`.  A mapping or transform that raises
is contained: the envelope is dead-lettered and the router carries on.  ``persist``
routes go through :mod:`broker._durable` and the outbox (:mod:`broker._outbox`).

The router is served by a task on the adapters' shared trio loop
(:class:`~broker._loop_actor.LoopActor`): a batch from an adapter on that loop reaches it
without a thread hop, and its results reach the adapters the same way.  So it never
blocks: a ``block`` route whose target's queue is full holds the rest of the batch
(:meth:`Router.blocked`) and the router waits for room asynchronously, up to the
``block_timeout_s``, before it takes its next message -- the loop runs on meanwhile.
Outbox writes stay on the loop: SQLite in WAL mode with ``synchronous=NORMAL`` commits
without an fsync, and the checkpoints run on a thread of their own.

Inside the router a queue is a :class:`~broker._queue_key.QueueKey`; inlets, messages
and adapters name it by its text (``QueueKey.name``), converted where they meet.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import pluggy
import trio

from broker._backfill import BackfillProgress
from broker._config import JunctionSettings, RedeliveryPolicy
from broker._dead_letters import Batches, DeadLetters, Replays
from broker._durable import DurableQueues
from broker._envelope import Envelope
from broker._errors import TransformError
from broker._inlet import Inlet
from broker._ledger import Ledger, RouteCounters
from broker._logs import LogGate
from broker._loop import SharedLoop
from broker._loop_actor import LoopActor
from broker._mapping import MappingError
from broker._messages import (
    Backlog,
    Delivered,
    Failed,
    Inbound,
    Leftovers,
    Snapshot,
    Tick,
    describe,
)
from broker._outbox import Outbox, OutboxError
from broker._overflow import Overflow
from broker._queue_key import QueueKey
from broker._receipts import Receipts
from broker._replies import Replies
from broker._routing import CompiledRoute, RoutingTable, resolve_policies, run_route
from broker._settlement import Settlement

log = logging.getLogger("broker.router")


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
    """Replace the routing table in one step (hot reload; see broker._reload).

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
        self.ledger = Ledger(r.name for r in table.routes)
        self.dead = DeadLetters(self.ledger, inlets, settings, outbox, hooks)
        self._gate = LogGate(every_s=1.0, per=5)
        self._observe = hooks is not None and bool(
            hooks.junction_envelopes_received.get_hookimpls()
        )
        self.outbox = outbox
        if outbox is not None:  # one commit per turn (broker._outbox_txn): see turn_ended
            outbox.txns.grouped = True
        self.persist_kinds = persist_kinds or {}
        self._by_name: dict[str, CompiledRoute] = {}
        self._policies = self._resolve_policies(table)
        self.replies = Replies(
            self.ledger, self.dead, self.offer, settings, self.persist_kinds, outbox is not None
        )
        self.replays = Replays(self, self.dead, outbox) if outbox is not None else None
        self.durable: DurableQueues | None = None
        #: progress lines while what the last run left is delivered (broker._backfill)
        self.backfill = BackfillProgress()
        if outbox is not None:
            self.durable = DurableQueues(outbox, inlets, self._redelivery, self._capacity)
            for (_target, key), n in self.durable.recover().items():
                self.ledger.recovered(key, n)
                self.backfill.recovered(key.route, n, self.ledger.of(key.route).delivered)
                log.info("outbox: %d envelopes of route %s left by the last run", n, key.name)
        #: sources told when their batches are settled (emit(on_settled=...))
        self.receipts = Receipts()
        self.settlement = Settlement(
            self.ledger, self.dead, inlets, self.durable, hooks, self.receipts
        )

    # --- policies -----------------------------------------------------------------

    def _resolve_policies(self, table: RoutingTable) -> dict[tuple[str, str], Overflow]:
        self._by_name = {r.name: r for r in table.routes}
        return resolve_policies(table, self.persist_kinds, durable=self.outbox is not None)

    def route_by_name(self, name: str) -> CompiledRoute | None:
        return self._by_name.get(name)

    def _redelivery(self, key: QueueKey) -> RedeliveryPolicy:
        route = self._by_name.get(key.route)
        return route.redelivery if route is not None else self.settings.redelivery

    def _capacity(self, key: QueueKey) -> int:
        route = self._by_name.get(key.route)
        return route.queue_size if route is not None else self.settings.queue_size

    def policy(self, route: CompiledRoute, target: str) -> Overflow:
        """The overflow policy of ``route`` at ``target`` (``auto`` resolved)."""
        return self._policies.get((route.name, target)) or (
            route.overflow if route.overflow is not Overflow.AUTO else Overflow.DROP_OLDEST
        )

    def reply_policy(self, asker: str, reply: Envelope) -> Overflow:
        return self.replies.policy(asker, reply)

    # --- dispatch ---------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except OutboxError as err:
            # the store failed (disk full, locked too long): say so, keep routing
            ok, held = self._gate.allow("outbox-error")
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
            match message:
                case Inbound():
                    on_settled = message.on_settled
                    if on_settled is None:  # the common case: no source waits to hear
                        self._route(message.source, message.envelopes)
                    else:
                        self.receipts.begin(on_settled, self._losses())
                        try:
                            self._route(message.source, message.envelopes)
                        except BaseException:  # not routed (or not all): never settled
                            self.receipts.abandon()
                            raise
                        self.receipts.end()
                case Delivered():
                    self.settlement.delivered(message)
                case Failed():
                    self.settlement.failed(message)
                case Tick():
                    now = time.time()
                    self.replies.expire(now)
                    if self.durable is not None and self.replays is not None:
                        self.durable.tick(now)
                        self.replays.take()
                        self.backfill.tick(self._backfill_counts)
                case Snapshot():
                    # what the picture counts is in the file when it is seen (junction dlq,
                    # junction status read both), not up to a commit linger later
                    self._commit_outbox()
                    return self.snapshot()
                case Leftovers():
                    return self.settlement.leftovers(message)
                case Swap():
                    self._swap(
                        message.table, message.settings, message.inlets, message.persist_kinds
                    )
                case _:
                    log.warning("router ignored an unknown message %r", type(message).__name__)
        finally:
            receipts = self.receipts
            if self.dead.waiting(self.durable) and not self.dead.bury(self.durable):
                receipts.lose_handled()  # lost with the dead letters: the peer redelivers
            if receipts.handled:
                receipts.handled.clear()
            self._fire_receipts()  # after the dead letters and the kept rows are committed
        return None

    def _backfill_counts(self, route: str) -> tuple[int, int]:
        """(pending, delivered) of ``route``, for the backfill's progress lines."""
        pending, _ = self.ledger.pending_of(route, time.time(), self.inlets, self.durable)
        return pending, self.ledger.of(route).delivered

    def turn_ended(self) -> float | None:
        """Commit the outbox's writes once past their linger (broker._outbox_txn)."""
        if self.outbox is not None:
            try:
                return self.outbox.end_turn()
            except OutboxError as err:
                self._outbox_failed(err)
        return None

    def _losses(self) -> int:
        """Transactions the outbox lost so far (a receipt begun before one never fires)."""
        return self.outbox.txns.losses if self.outbox is not None else 0

    def _fire_receipts(self) -> None:
        """Tell the sources whose batches are settled, once what they wrote is committed."""
        if self.receipts.due:
            if self._commit_outbox():
                self.receipts.fire(self._losses())
            else:  # not kept after all: the peer redelivers
                self.receipts.lose_handled()

    def _commit_outbox(self) -> bool:
        if self.outbox is None:
            return True
        try:
            self.outbox.commit()
        except OutboxError as err:
            self._outbox_failed(err)
            return False
        return True

    def _outbox_failed(self, err: OutboxError) -> None:
        ok, held = self._gate.allow("outbox-commit")
        if ok:
            log.error("%s%s", err, f" ({held} more not logged)" if held else "")

    def _route(self, source: str, envelopes: list[Envelope]) -> None:
        self.backlog.sub(len(envelopes))
        if self._observe and self.hooks is not None:
            self.hooks.junction_envelopes_received(adapter=source, envelopes=envelopes)
        batches: Batches = {}
        pending = self.replies.pending
        table = self.table
        counters = self.ledger.counters
        for env in envelopes:
            if pending and env.correlation_id in pending:
                self.replies.reply(env)
                continue
            try:
                routes = table.match(env)
            except Exception as err:  # a predicate bug must not take the router down
                self.dead.dead_letter("(matching)", env, f"matching raised {describe(err)}")
                continue
            if not routes:
                self.ledger.unrouted_one(env)
                continue
            for route in routes:
                counters[route.name].matched += 1
                self.run_one(route, env, batches)
        for (target, route), batch in batches.items():
            self.offer(
                target, QueueKey(route.name), batch, route.queue_size, self.policy(route, target)
            )

    def run_one(self, route: CompiledRoute, env: Envelope, batches: Batches) -> None:
        """Map and transform ``env`` on ``route``; add the results to the per-target batches."""
        if route.mapping is None and not route.transforms:
            outs = [env]
        else:
            try:
                outs = run_route(route, env)
            except (MappingError, TransformError) as err:
                self.ledger.counters[route.name].received += 1
                self.dead.dead_letter(route.name, env, describe(err))
                return
            except Exception as err:  # anything else in mapping: same containment
                self.ledger.counters[route.name].received += 1
                self.dead.dead_letter(route.name, env, f"route raised {describe(err)}")
                return
            if not outs:
                self.ledger.counters[route.name].received += 1
                self.dead.drop(QueueKey(route.name), env, "filtered")
                return
        if route.spec.expects_reply:
            outs = [self.replies.expect(route, out) for out in outs]
        for target in route.targets:
            key = (target, route)
            batch = batches.get(key)
            if batch is None:
                batches[key] = list(outs)
            else:
                batch.extend(outs)

    def offer(
        self, target: str, key: QueueKey, batch: list[Envelope], size: int, policy: Overflow
    ) -> None:
        """Hand ``batch`` to ``target``'s queue ``key`` under ``policy`` (counted received)."""
        counters = self.ledger.of(key.route)
        counters.received += len(batch)
        overflow_reason = ""  # set when a failing outbox sends a persist batch to memory
        if policy is Overflow.PERSIST and self.durable is not None:
            try:
                stored, refused = self.durable.offer(target, key, batch)
            except OutboxError as err:
                ok, held = self._gate.allow(f"outbox-write:{key.name}")
                if ok:
                    log.error(
                        "outbox write failed for route %s; %d envelopes held in memory only "
                        "(what does not fit the queue is dropped as outbox_error): %s%s",
                        key.name,
                        len(batch),
                        err,
                        f" ({held} more not logged)" if held else "",
                    )
                policy, overflow_reason = Overflow.DROP_NEWEST, "outbox_error"
            else:
                counters.queued += stored
                for env in refused:
                    self.dead.drop(key, env, "outbox_full", target)
                if refused:  # lost by a failure, not by policy: the source must not ack
                    self.receipts.lose_current()
                return
        inlet = self.inlets.get(target)
        if inlet is None:  # validated at load time; only reachable after a bad swap
            for env in batch:
                self.dead.drop(key, env, f"no adapter {target!r}")
            return
        inlet_policy = Overflow.BLOCK if policy is Overflow.PERSIST else policy
        result = inlet.offer(key.name, batch, size, inlet_policy)
        counters.queued += result.accepted
        receipts = self.receipts
        if receipts.current is not None:  # a batch whose source waits to hear (routing)
            receipts.track(target, key.name, batch)
        for env, reason in result.dropped:
            self.dead.drop(key, env, overflow_reason or reason, target)
        if result.dropped:  # outbox_error: lost by a failure (the receipt is never called)
            dropped = [env for env, _ in result.dropped]
            receipts.settle(target, key.name, dropped, lost=bool(overflow_reason))
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
        self._commit_outbox()  # the wait may be long: keep what the turn wrote meanwhile
        while self._stalls:
            stall = self._stalls[0]
            inlet = stall.inlet
            room = trio.Event()
            inlet.when_room(functools.partial(loop.call_soon, room.set))
            result = inlet.offer(stall.queue.name, stall.envelopes, stall.size, Overflow.BLOCK)
            stall.counters.queued += result.accepted
            for env, reason in result.dropped:
                self.dead.drop(stall.queue, env, stall.overflow_reason or reason, stall.target)
            if result.dropped:
                dropped = [env for env, _ in result.dropped]
                lost = bool(stall.overflow_reason)
                self.receipts.settle(stall.target, stall.queue.name, dropped, lost=lost)
                self._fire_receipts()
            left = stall.deadline - time.monotonic()
            if result.waiting and left > 0:
                stall.envelopes = result.waiting
                with trio.move_on_after(left):
                    await room.wait()
                continue
            inlet.when_room(None)
            for env in result.waiting:
                self.dead.drop(
                    stall.queue, env, stall.overflow_reason or "block_timeout", stall.target
                )
            self.receipts.settle(
                stall.target, stall.queue.name, result.waiting, lost=bool(stall.overflow_reason)
            )
            self._fire_receipts()
            self._stalls.pop(0)

    # --- table and introspection -----------------------------------------------

    def _swap(
        self,
        table: RoutingTable,
        settings: JunctionSettings | None = None,
        inlets: dict[str, Inlet] | None = None,
        persist_kinds: dict[str, frozenset[str]] | None = None,
    ) -> None:
        if settings is not None:
            self.settings = self.dead.settings = self.replies.settings = settings
        if inlets is not None and inlets is not self.inlets:
            # in place, on this thread: the durable queues and dead letters hold this dict
            self.inlets.clear()
            self.inlets.update(inlets)
        if persist_kinds is not None:
            self.persist_kinds = self.replies.persist_kinds = persist_kinds
        self.table = table
        self._policies = self._resolve_policies(table)
        self.ledger.add_routes(r.name for r in table.routes)
        log.info("routing table replaced: %d routes", len(table.routes))

    def snapshot(self) -> dict[str, Any]:
        """Counters and ledger per route, unrouted counts, pending replies, queues, outbox."""
        return self.ledger.snapshot(
            self.inlets, self.durable, self.outbox, len(self.replies.pending)
        )
