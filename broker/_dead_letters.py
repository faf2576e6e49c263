"""What the router cannot deliver: drops, dead letters, the dead-letter sink, replays.

A mapping or transform that raises, a target that refuses an envelope, an answer whose
``reply_map`` fails: the envelope is *dead-lettered* -- logged with route and reason,
counted, stored in the dead-letter store of the outbox (one transaction per message the
router handles, :meth:`DeadLetters.bury`), and sent to the ``dead_letter`` adapter when
one is configured.  A *drop* (a full queue, a filter) is counted and logged, not kept.

``junction dlq replay`` queues dead letters in the outbox; :class:`Replays` feeds them
back in, :data:`REPLAYS_PER_TICK` per router tick: a ``route`` failure through its route
again, a ``deliver`` failure straight to its target.
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec
import pluggy

from broker._config import JunctionSettings
from broker._durable import DurableQueues
from broker._envelope import Envelope
from broker._inlet import Inlet
from broker._ledger import Ledger
from broker._logs import LogGate
from broker._outbox import DeadLetter, Outbox, OutboxError
from broker._overflow import Overflow
from broker._queue_key import QueueKey
from broker._routing import CompiledRoute

#: the router's logger: these lines are the router's (as before it was split in modules)
log = logging.getLogger("broker.router")

#: The queue name dead letters are offered under at the ``dead_letter`` adapter.
DEAD_LETTER_ROUTE = "dead_letter"
#: Dead letters taken from the replay queue per tick (4 ticks a second).
REPLAYS_PER_TICK = 250

Batches = dict[tuple[str, CompiledRoute], list[Envelope]]


class DeadLetters:
    """Counts, logs, stores and forwards what will not be delivered."""

    def __init__(
        self,
        ledger: Ledger,
        inlets: dict[str, Inlet],
        settings: JunctionSettings,
        outbox: Outbox | None = None,
        hooks: pluggy.HookRelay | None = None,
    ) -> None:
        self.ledger = ledger
        #: the router's (changed in place on a reload)
        self.inlets = inlets
        #: the router's; replaced on a reload
        self.settings = settings
        self.outbox = outbox
        self._hooks = hooks
        self._observed = hooks is not None and bool(hooks.junction_envelope_dropped.get_hookimpls())
        #: dead letters gathered while handling one message, stored by bury()
        self.graveyard: list[DeadLetter] = []
        self._gate = LogGate(every_s=1.0, per=5)

    def drop(self, key: QueueKey, env: Envelope, reason: str, target: str = "") -> None:
        """Count (and log, unless ``filtered``) an envelope lost on ``key``'s queue."""
        route = key.name
        c = self.ledger.counters.get(key.route)
        if c is not None:
            c.dropped[reason] += 1
        if reason != "filtered":
            ok, held = self._gate.allow(f"drop:{route}")
            if ok:
                log.warning(
                    "dropped: route=%s target=%s reason=%s id=%s%s",
                    route,
                    target or "-",
                    reason,
                    env.id,
                    f" ({held} more not logged)" if held else "",
                )
        if self._observed and self._hooks is not None:
            self._hooks.junction_envelope_dropped(route=route, envelope=env, reason=reason)

    def dead_letter(
        self,
        route: str,
        env: Envelope,
        reason: str,
        *,
        stage: str = "route",
        target: str = "",
        store: bool = True,
    ) -> None:
        """Count, log, store (``store``: not stored yet) and forward a dead letter."""
        c = self.ledger.counters.get(route)
        if c is not None:
            c.failed += 1
        self.ledger.dead_letters += 1
        if store and self.outbox is not None:
            self.graveyard.append(DeadLetter(route, target, stage, env, reason))
        ok, held = self._gate.allow(f"dead:{route}")
        if ok:
            log.warning(
                "dead letter: route=%s id=%s kind=%s reason=%s%s",
                route,
                env.id,
                env.kind,
                reason,
                f" ({held} more not logged)" if held else "",
            )
        if self._observed and self._hooks is not None:
            self._hooks.junction_envelope_dropped(
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
                DEAD_LETTER_ROUTE, [marked], self.settings.queue_size, Overflow.DROP_OLDEST
            )

    def waiting(self, durable: DurableQueues | None) -> bool:
        """Dead letters gathered and not stored yet (here or buried by the outbox)."""
        return bool(self.graveyard) or (
            durable is not None and bool(durable.stale_buried or durable.unreadable_buried)
        )

    def bury(self, durable: DurableQueues | None) -> bool:
        """Write the dead letters gathered while handling one message (one transaction);
        False when they could not be stored (the receipts waiting on them must not fire)."""
        letters, self.graveyard = self.graveyard, []
        if durable is not None:
            for env, key, why in durable.stale_buried:
                self.dead_letter(key.route, env, why, store=False)
            durable.stale_buried.clear()
            for key, n in durable.unreadable_buried:  # stored and logged by the outbox
                c = self.ledger.counters.get(key.route)
                if c is not None:
                    c.failed += n
                self.ledger.dead_letters += n
            durable.unreadable_buried.clear()
        if self.outbox is None or not letters:
            return True
        try:
            self.outbox.bury(letters)
        except OutboxError as err:
            log.error("%d dead letters could not be stored: %s", len(letters), err)
            return False
        return True


class Dispatch(Protocol):
    """What :class:`Replays` needs of the router to run dead letters again."""

    inlets: dict[str, Inlet]
    durable: DurableQueues | None

    def route_by_name(self, name: str) -> CompiledRoute | None: ...

    def run_one(self, route: CompiledRoute, env: Envelope, batches: Batches) -> None: ...

    def offer(
        self, target: str, key: QueueKey, batch: list[Envelope], size: int, policy: Overflow
    ) -> None: ...

    def policy(self, route: CompiledRoute, target: str) -> Overflow: ...

    def reply_policy(self, asker: str, reply: Envelope) -> Overflow: ...


class Replays:
    """Feeds dead letters queued by ``junction dlq replay`` back in, a few per tick."""

    def __init__(self, router: Dispatch, dead: DeadLetters, outbox: Outbox) -> None:
        self.router = router
        self.dead = dead
        self.outbox = outbox
        #: replay rows handed back to the routes but not yet deleted from the queue
        self._handed_back: set[int] = set()

    def take(self) -> None:
        """Run up to :data:`REPLAYS_PER_TICK` queued replays; delete them once handed back."""
        router, outbox, ledger = self.router, self.outbox, self.dead.ledger
        if self._handed_back:  # a delete that failed last time: never replay them twice
            outbox.replayed(sorted(self._handed_back))
            self._handed_back.clear()
        try:
            rows = outbox.next_replays(REPLAYS_PER_TICK)
        except OutboxError as err:
            log.error("replay queue unreadable: %s", err)
            return
        batches: Batches = {}
        for row in rows:
            ledger.of(row.route).replayed += 1
            route = router.route_by_name(row.route)
            if (
                route is not None
                and row.stage == "deliver"
                and route.spec.expects_reply
                and row.target not in route.targets
                and row.target in router.inlets
            ):  # an answer for the asker: back to the reply queue it failed on
                router.offer(
                    row.target,
                    QueueKey(route.name, reply=True),
                    [row.envelope],
                    route.queue_size,
                    router.reply_policy(row.target, row.envelope),
                )
                continue
            if route is None or (row.stage == "deliver" and row.target not in route.targets):
                # back to the dead letters, counted as received again so the ledger holds
                where = f"route {row.route!r}" if route is None else f"target {row.target!r}"
                ledger.of(row.route).received += 1
                self.dead.dead_letter(
                    row.route,
                    row.envelope,
                    f"replay: {where} is no longer in the routing table",
                    stage=row.stage,
                    target=row.target,
                )
            elif row.stage == "deliver":
                batches.setdefault((row.target, route), []).append(row.envelope)
            else:  # counted replayed above, not matched again
                router.run_one(route, row.envelope, batches)
        if rows:
            log.info("replaying %d dead letters", len(rows))
        for (target, route), batch in batches.items():
            router.offer(
                target, QueueKey(route.name), batch, route.queue_size, router.policy(route, target)
            )
        self.dead.bury(router.durable)  # what failed again is stored before the replays go
        self._handed_back.update(r.seq for r in rows)
        outbox.replayed(sorted(self._handed_back))
        self._handed_back.clear()
