"""The router's side of ``persist`` routes: outbox rows in, acknowledged rows out.

For each (target, route) whose policy is ``persist`` the outbox holds every envelope not
yet acknowledged; the target's inlet holds a bounded *window* of them in memory. While the
window has room, new envelopes go to the outbox and straight into the window; once it is
full the queue is *spilled*: new envelopes go to the outbox only, and are loaded into the
window, oldest first, as the target acknowledges what it holds. So a target that is down
for an hour costs disk, not memory, and order per (target, route) is kept.

A row that does not decode when it is loaded is moved to the dead letters by the outbox
(``Outbox.unreadable``) and the queue goes on with the next one.

When the outbox loses a transaction (its commit failed), nothing changes here: the outbox
owes the file those writes and answers as if they were in it (:mod:`broker._outbox_turn`).

A transient failure (the adapter crashed mid-batch) is retried after a back-off up to the
route's ``redelivery.attempts``; a permanent one, the last attempt, or an envelope past its
``stale_after_s`` is buried in the dead-letter store with the reason. A retried envelope
goes to the back of the window: order holds for first deliveries and after a restart, and
a retry may arrive after envelopes that were behind it.

Runs in the router only (one task); the router tells it what happened and asks it what is
pending. Envelopes in the window are known by object identity (``id()``): the same object
comes back in ``Delivered``/``Failed``, and is kept alive by the window meanwhile.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from broker._backoff import backoff_delay
from broker._config import RedeliveryPolicy
from broker._envelope import Envelope
from broker._inlet import Inlet
from broker._outbox import DeadLetter, Outbox, OutboxError
from broker._queue_key import QueueKey
from broker._staleness import IN_THE_OUTBOX, is_stale, stale_reason

log = logging.getLogger("broker.durable")

#: Refill a spilled window once this share of it is free (fewer, larger loads).
_REFILL_SHARE = 4


@dataclass
class _Queue:
    """One persist (target, route): rows in the outbox and which of them are in memory."""

    rows: int = 0
    spilled: bool = False
    loaded_upto: int = 0
    seq_of: dict[int, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    waiting: int = 0
    #: Rows at or below ``loaded_upto`` must be loaded again (their copies were lost).
    rewound: bool = False


@dataclass(frozen=True, slots=True)
class Settled:
    """What a Failed meant: the envelopes buried (with the reason), how many will be
    retried, and those that are not the outbox's."""

    buried: tuple[tuple[Envelope, str], ...] = ()
    retrying: int = 0
    #: Envelopes of this queue name that are not in the outbox (a memory envelope that
    #: shares the name, e.g. after a reload changed the route's policy): the router's.
    unknown: tuple[Envelope, ...] = ()


class DurableQueues:
    """All persist queues of one router (see the module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        inlets: dict[str, Inlet],
        policy_of: Callable[[QueueKey], RedeliveryPolicy],
        capacity_of: Callable[[QueueKey], int],
    ) -> None:
        self.outbox = outbox
        self.inlets = inlets
        self.policy_of = policy_of
        self.capacity_of = capacity_of
        #: per (target, queue); the outbox rows name the queue by its ``QueueKey.name``
        self.queues: dict[tuple[str, QueueKey], _Queue] = {}
        self._retries: list[tuple[float, int, str, QueueKey, Envelope]] = []
        self._order = itertools.count()
        #: (envelope, queue, reason) buried while refilling; the router drains it for its ledger
        self.stale_buried: list[tuple[Envelope, QueueKey, str]] = []
        #: (queue, rows) that did not decode while refilling (the outbox made them dead
        #: letters and logged why); the router drains it for its ledger, as ``stale_buried``
        self.unreadable_buried: list[tuple[QueueKey, int]] = []

    # --- start-up -----------------------------------------------------------------

    def recover(self) -> dict[tuple[str, QueueKey], int]:
        """Adopt the rows a previous run left; returns them per (target, queue)."""
        found = {(t, QueueKey.parse(name)): n for (t, name), n in self.outbox.keys().items()}
        for (target, key), n in found.items():
            q = self.queues.setdefault((target, key), _Queue())
            q.rows, q.spilled, q.loaded_upto = n, True, 0
            if target not in self.inlets:
                log.warning(
                    "outbox: %d envelopes of route %s wait for adapter %r, which this "
                    "configuration does not have; they stay in %s",
                    n,
                    key.name,
                    target,
                    self.outbox.path,
                )
        return found

    # --- the flow -----------------------------------------------------------------

    def offer(
        self, target: str, key: QueueKey, batch: list[Envelope]
    ) -> tuple[int, list[Envelope]]:
        """Commit ``batch`` and put what fits into the window; returns (stored, refused)."""
        policy = self.policy_of(key)
        if policy.stale_after_s is not None:
            limit = policy.stale_after_s
            batch = [
                e if e.deadline is not None else msgspec.structs.replace(e, deadline=e.ts + limit)
                for e in batch
            ]
        route = key.name
        seqs, refused = self.outbox.append(target, route, batch)
        if not seqs:
            return 0, refused
        q = self.queues.setdefault((target, key), _Queue())
        q.rows += len(seqs)
        inlet = self.inlets.get(target)
        if q.spilled or inlet is None:
            q.spilled = True
            return len(seqs), refused
        room = max(0, self.capacity_of(key) - inlet.depth(route))
        take = min(room, len(seqs))
        for env, seq in zip(batch[:take], seqs[:take], strict=True):
            q.seq_of[id(env)] = seq
        if take:
            inlet.push(route, batch[:take])
            q.loaded_upto = seqs[take - 1]
        if take < len(seqs):
            q.spilled = True
        return len(seqs), refused

    def delivered(self, target: str, key: QueueKey, envelopes: list[Envelope]) -> int:
        """The target acknowledged these; delete their rows. Returns how many were ours."""
        q = self.queues.get((target, key))
        if q is None:
            return 0
        seqs = [s for s in (q.seq_of.pop(id(e), None) for e in envelopes) if s is not None]
        for s in seqs:
            q.attempts.pop(s, None)
        try:
            q.rows -= self.outbox.remove(seqs)
        except OutboxError as err:  # the outbox owes the deletes (broker._outbox_turn)
            log.error(
                "outbox: %d acknowledged rows of %s not deleted yet: %s", len(seqs), key.name, err
            )
            q.rows -= len(seqs)
        with contextlib.suppress(OutboxError):
            self._refill(target, key, q)
        return len(seqs)

    def failed(
        self, target: str, key: QueueKey, envelopes: list[Envelope], reason: str, retry: bool
    ) -> Settled:
        """Retry what may be retried (at the back of the window: a retry may overtake
        nothing it failed before, but later envelopes may pass it); bury the rest."""
        q = self.queues.get((target, key))
        if q is None:
            return Settled()
        policy = self.policy_of(key)
        now = time.time()
        letters: list[DeadLetter] = []
        buried: list[tuple[Envelope, str]] = []
        retried: list[int] = []
        unknown: list[Envelope] = []
        for env in envelopes:
            seq = q.seq_of.get(id(env))
            if seq is None:
                unknown.append(env)
                continue
            attempts = q.attempts.get(seq, 0) + 1
            stale = is_stale(env, now)
            if retry and not stale and attempts < policy.attempts:
                q.attempts[seq] = attempts
                delay = backoff_delay(attempts, policy.backoff_initial_s, policy.backoff_max_s)
                heapq.heappush(self._retries, (now + delay, next(self._order), target, key, env))
                q.waiting += 1
                retried.append(seq)
                continue
            why = reason if not retry else f"{reason} (after {attempts} attempts)"
            if stale:
                why = stale_reason(f"({reason})")
            q.seq_of.pop(id(env), None)
            q.attempts.pop(seq, None)
            letters.append(DeadLetter(key.route, target, "deliver", env, why, attempts, seq))
            buried.append((env, why))
        try:
            if retried:
                self.outbox.count_attempt(retried)
            self._bury(q, letters)
        except OutboxError as err:
            # the rows stay: rewind so they load again (and fail or succeed then), and
            # still hand the router what is not ours -- it must not be lost with this error
            log.error("outbox: failures of route %s not recorded: %s", key.name, err)
            q.loaded_upto = min([q.loaded_upto, *(d.seq - 1 for d in letters if d.seq)])
            q.spilled = q.rewound = bool(letters) or q.spilled
            buried = []
        with contextlib.suppress(OutboxError):  # a refill can wait for the next tick
            self._refill(target, key, q)
        return Settled(buried=tuple(buried), retrying=len(retried), unknown=tuple(unknown))

    def leftovers(self, target: str, key: QueueKey, envelopes: list[Envelope]) -> list[Envelope]:
        """The target stopped with these still queued: ours stay in the outbox (loaded again
        when the target runs); returns the others, which only ever were in memory."""
        q = self.queues.get((target, key))
        if q is None:
            return list(envelopes)
        unknown = [e for e in envelopes if id(e) not in q.seq_of]
        self._orphan(q, envelopes)
        return unknown

    def _orphan(self, q: _Queue, envelopes: list[Envelope]) -> None:
        """Forget in-memory copies that will not be settled; their rows load again later."""
        seqs = [s for s in (q.seq_of.pop(id(e), None) for e in envelopes) if s is not None]
        if seqs:
            q.loaded_upto = min(q.loaded_upto, min(seqs) - 1)
            q.spilled = q.rewound = True

    def _bury(self, q: _Queue, letters: list[DeadLetter]) -> None:
        if letters:
            self.outbox.bury(letters)
            q.rows -= sum(1 for d in letters if d.seq is not None)

    def tick(self, now: float) -> None:
        """Re-offer retries that are due; refill spilled windows."""
        while self._retries and self._retries[0][0] <= now:
            _, _, target, key, env = heapq.heappop(self._retries)
            q = self.queues.get((target, key))
            inlet = self.inlets.get(target)
            if q is None:
                continue
            q.waiting -= 1
            if inlet is None:  # the target went away meanwhile: load it again when it is back
                self._orphan(q, [env])
                continue
            inlet.push(key.name, [env])
        for (target, key), q in self.queues.items():
            if q.spilled:
                self._refill(target, key, q)

    def _refill(self, target: str, key: QueueKey, q: _Queue) -> None:
        if not q.spilled:
            return
        inlet = self.inlets.get(target)
        if inlet is None:
            return
        capacity = self.capacity_of(key)
        route = key.name
        room = capacity - inlet.depth(route)
        if room < max(1, capacity // _REFILL_SHARE):
            return
        before = self.outbox.unreadable
        rows = self.outbox.load(target, route, q.loaded_upto, room)
        unreadable = self.outbox.unreadable - before  # made dead letters as they were read
        if unreadable:
            q.rows -= unreadable
            self.unreadable_buried.append((key, unreadable))
        live = set(q.seq_of.values()) if q.rewound else set()
        now = time.time()
        fresh: list[Envelope] = []
        stale: list[DeadLetter] = []
        for row in rows:
            q.loaded_upto = row.seq
            if row.seq in live:
                continue  # its copy is in memory (loaded before the rewind)
            env = row.envelope
            if is_stale(env, now):
                stale.append(
                    DeadLetter(
                        key.route,
                        target,
                        "deliver",
                        env,
                        stale_reason(IN_THE_OUTBOX),
                        row.attempts,
                        row.seq,
                    )
                )
                continue
            q.seq_of[id(env)] = row.seq
            if row.attempts:
                q.attempts[row.seq] = row.attempts
            fresh.append(env)
        self._bury(q, stale)
        self.stale_buried.extend((d.envelope, key, d.reason) for d in stale)
        if fresh:
            inlet.push(route, fresh)
        if len(rows) + unreadable < room:
            q.spilled = q.rewound = False

    # --- inspection ---------------------------------------------------------------

    def pending(self, target: str, key: QueueKey) -> int | None:
        """Rows not yet acknowledged for (target, queue); None if it is not a persist queue."""
        q = self.queues.get((target, key))
        return None if q is None else q.rows

    def in_memory(self, target: str, key: QueueKey) -> int:
        """Rows of (target, queue) whose copy is in the target's queue or being delivered."""
        q = self.queues.get((target, key))
        return 0 if q is None else len(q.seq_of) - q.waiting

    def oldest_age_s(self, target: str, key: QueueKey, now: float) -> float | None:
        q = self.queues.get((target, key))
        if q is None or q.rows <= 0:
            return None
        created = self.outbox.oldest(target, key.name)
        return None if created is None else max(0.0, now - created)
