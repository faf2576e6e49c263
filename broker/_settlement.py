"""What targets report back to the router: sent, failed, or left behind when they stopped.

Each report settles items a route's ledger counts as pending: the inlet's in-flight
count goes down (:meth:`~broker._inlet.Inlet.done`) in the same step the counters go up,
so the ledger balances at every moment.  Items of a ``persist`` queue are the outbox's:
:mod:`broker._durable` deletes, retries or buries their rows; the rest is dead-lettered
here.
"""

from __future__ import annotations

import logging
import time

import pluggy

from broker._dead_letters import DeadLetters
from broker._durable import DurableQueues
from broker._inlet import Inlet
from broker._ledger import Ledger
from broker._messages import Delivered, Failed, Leftovers
from broker._outbox import OutboxError
from broker._queue_key import QueueKey
from broker._receipts import Receipts

#: the router's logger: these lines are the router's (as before it was split in modules)
log = logging.getLogger("broker.router")


class Settlement:
    """Settles :class:`Delivered`, :class:`Failed` and :class:`Leftovers` reports."""

    def __init__(
        self,
        ledger: Ledger,
        dead: DeadLetters,
        inlets: dict[str, Inlet],
        durable: DurableQueues | None,
        hooks: pluggy.HookRelay | None = None,
        receipts: Receipts | None = None,
    ) -> None:
        self.ledger = ledger
        #: the sources waiting to hear their batches are settled (broker._receipts)
        self.receipts = receipts if receipts is not None else Receipts()
        self.dead = dead
        #: the router's (changed in place on a reload)
        self.inlets = inlets
        self.durable = durable
        self._hooks = hooks
        self._observed = hooks is not None and bool(
            hooks.junction_envelopes_delivered.get_hookimpls()
        )

    def delivered(self, msg: Delivered) -> None:
        inlet = self.inlets.get(msg.target)
        if inlet is not None:
            inlet.done(msg.route, msg.count)
        if self.receipts.open_copies:  # else nothing to settle (no source waits)
            self.receipts.settle(msg.target, msg.route, msg.envelopes)
        key = QueueKey.parse(msg.route)
        durable = self.durable
        if durable is not None and durable.pending(msg.target, key) is not None:
            try:
                durable.delivered(msg.target, key, msg.envelopes)
            except OutboxError as err:  # delivered twice after a restart, never lost
                log.error("outbox: acknowledged rows not deleted: %s", err)
        c = self.ledger.counters.get(key.route)
        if c is not None:
            if key.reply:  # an answer handed back to the asker
                c.replies += msg.count
            else:
                c.delivered += msg.count
            if msg.envelopes:
                c.observe(msg.envelopes, time.time())
        if self._observed and self._hooks is not None:
            self._hooks.junction_envelopes_delivered(
                route=msg.route, target=msg.target, count=msg.count
            )

    def failed(self, msg: Failed) -> None:
        inlet = self.inlets.get(msg.target)
        if inlet is not None:
            inlet.done(msg.route, len(msg.envelopes))
        if self.receipts.open_copies:  # else nothing to settle (no source waits)
            self.receipts.settle(msg.target, msg.route, msg.envelopes)
        key = QueueKey.parse(msg.route)
        name = key.route
        durable = self.durable
        memory = msg.envelopes
        if durable is not None and durable.pending(msg.target, key) is not None:
            settled = durable.failed(
                msg.target, key, msg.envelopes, f"{msg.target}: {msg.reason}", msg.retry
            )
            self.ledger.of(name).retries += settled.retrying
            for env, why in settled.buried:
                self.dead.dead_letter(name, env, why, store=False)
            memory = list(settled.unknown)
        for env in memory:
            self.dead.dead_letter(
                name, env, f"{msg.target}: {msg.reason}", stage="deliver", target=msg.target
            )

    def leftovers(self, msg: Leftovers) -> tuple[dict[str, int], dict[str, int]]:
        """What a stopped target left: outbox rows wait, the rest is dead-lettered.
        Returns ({queue: kept}, {queue: dead-lettered})."""
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
            self.receipts.settle(msg.target, queue, envs)
            key = QueueKey.parse(queue)
            memory = envs
            if self.durable is not None:
                memory = self.durable.leftovers(msg.target, key, envs)
            for env in memory:
                self.dead.dead_letter(
                    key.route, env, msg.reason, stage="deliver", target=msg.target
                )
            if len(envs) > len(memory):
                kept[queue] = len(envs) - len(memory)
            if memory:
                dead[queue] = len(memory)
        return kept, dead
