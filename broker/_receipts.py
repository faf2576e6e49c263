"""Telling a source when the router is done with a batch it emitted (``emit(on_settled=)``).

A source whose peer redelivers what it does not acknowledge (a JetStream consumer) must
acknowledge an envelope only once Junction can no longer lose it.  So an adapter may hand
the router a batch with a callback, ``emit(envelopes, on_settled=fn)``; the router calls
``fn()`` once, after every copy it made of every envelope of that batch is *settled*:

- delivered (its target reported it: ``Delivered``);
- kept in a ``persist`` route's outbox (the router commits the outbox before it calls
  ``fn``: from then on the outbox redelivers it, across a crash too);
- dead-lettered (a transform raised, the target failed it, it was left when the target
  stopped) or dropped by the route's own policy (``filtered``, a full ``drop_*`` queue,
  ``block_timeout``): the router decided its fate, as the operator asked;
- or it matched no route.

A copy lost because Junction failed rather than by the operator's policy -- the outbox
could not take it (``outbox_full``, or ``outbox_error``: the write failed and what did not
fit the memory queue was dropped) -- *loses* its receipt (:meth:`Receipts.settle` with ``lost``,
:meth:`Receipts.lose_current`), and so does a batch whose routing raised
(:meth:`Receipts.abandon`): a lost receipt is never called, so the source does not
acknowledge and its peer delivers the batch again.

Only copies queued in memory are tracked: the router registers each when it offers it to
a target's inlet (:meth:`Receipts.track`), and every path that ends a memory copy
(``Delivered``, ``Failed``, ``Leftovers``, an overflow drop at the inlet, a ``block`` batch
that timed out) calls :meth:`Receipts.settle` with the target, the queue and the envelopes.
A copy is known by ``(target, queue, id(envelope))``: the same object comes back in those
reports (as :mod:`broker._durable` relies on), and the table keeps it alive meanwhile, so
its ``id`` cannot be reused.  Envelopes no receipt tracks cost a dictionary miss; a router
with no receipt open does nothing here.

``fn`` runs on the router's loop, after the message that settled the batch is handled and
its dead letters are stored (:meth:`Receipts.fire`; if storing them failed, every receipt
that message settled a copy of is lost too, :meth:`Receipts.lose_handled`): it must be
quick, must not block and must be thread-safe (hand the news to the source's own loop or
thread).  A receipt whose router stops first is never called: the peer redelivers
(at-least-once).  Nor is one begun before the outbox lost a transaction (a failed commit,
counted by ``Transactions.losses``): its kept copies may have been in that transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from broker._envelope import Envelope

log = logging.getLogger("broker.router")


@dataclass(eq=False, slots=True)
class _Receipt:
    """One emitted batch: its callback and how many of its copies are still in memory."""

    on_settled: Callable[[], None]
    copies: int = 0
    #: routing of the batch is over: no more copies will be registered
    closed: bool = False
    #: a copy was lost by a failure, or routing raised: never called (the peer redelivers)
    lost: bool = False
    #: the outbox's lost transactions when routing began (see :meth:`Receipts.fire`)
    losses: int = 0


class Receipts:
    """Open receipts and the memory copies they wait for (see the module docstring)."""

    def __init__(self) -> None:
        #: (target, queue, id(envelope)) -> (the envelope, the receipts of its copies); empty
        #: while no source waits, which the router's hot path checks before calling settle
        self.open_copies: dict[tuple[str, str, int], tuple[Envelope, list[_Receipt]]] = {}
        #: the receipt of the batch being routed now, if its source asked for one (offers
        #: register their copies while it is set)
        self.current: _Receipt | None = None
        #: settled receipts whose callbacks :meth:`fire` calls
        self.due: list[_Receipt] = []
        #: receipts whose copies were settled while handling this message (see lose_handled)
        self.handled: list[_Receipt] = []

    def __len__(self) -> int:
        """Memory copies still tracked (for tests and the snapshot)."""
        return sum(len(receipts) for _, receipts in self.open_copies.values())

    def begin(self, on_settled: Callable[[], None] | None, losses: int = 0) -> None:
        """Routing of a batch starts; ``on_settled`` (or None: nothing to track);
        ``losses``: the outbox's lost transactions so far."""
        self.current = _Receipt(on_settled, losses=losses) if on_settled is not None else None

    def end(self) -> None:
        """Routing of the batch is over; a batch with no copy in memory is settled now."""
        receipt, self.current = self.current, None
        if receipt is not None:
            receipt.closed = True
            if receipt.copies == 0 and not receipt.lost:
                self.due.append(receipt)

    def abandon(self) -> None:
        """Routing of the batch raised: its receipt is lost, never called."""
        receipt, self.current = self.current, None
        if receipt is not None:
            receipt.closed = receipt.lost = True

    def lose_current(self) -> None:
        """A copy of the batch being routed was lost by a failure: never call its receipt."""
        if self.current is not None:
            self.current.lost = True

    def track(self, target: str, queue: str, envelopes: Iterable[Envelope]) -> None:
        """Copies of the current batch offered to ``target``'s memory queue ``queue``."""
        receipt = self.current
        if receipt is None:
            return
        copies = self.open_copies
        for env in envelopes:
            key = (target, queue, id(env))
            entry = copies.get(key)
            if entry is None:
                copies[key] = (env, [receipt])
            else:
                entry[1].append(receipt)
            receipt.copies += 1

    def settle(
        self, target: str, queue: str, envelopes: Iterable[Envelope], *, lost: bool = False
    ) -> None:
        """These copies are done (delivered, dead-lettered or dropped by policy); with
        ``lost``, they were lost by a failure and their receipts are never called."""
        copies = self.open_copies
        if not copies:
            return
        for env in envelopes:
            key = (target, queue, id(env))
            entry = copies.get(key)
            if entry is None:
                continue
            receipts = entry[1]
            receipt = receipts.pop(0)
            if not receipts:
                del copies[key]
            receipt.copies -= 1
            handled = self.handled
            if not handled or handled[-1] is not receipt:
                handled.append(receipt)
            if lost:
                receipt.lost = True
            elif receipt.copies == 0 and receipt.closed and not receipt.lost:
                self.due.append(receipt)

    def lose_handled(self) -> None:
        """The dead letters of this message could not be stored: every receipt it settled
        a copy of (or ended) is lost, never called (the peer redelivers)."""
        for receipt in (*self.handled, *self.due):
            receipt.lost = True
        self.handled.clear()
        self.due.clear()

    def fire(self, losses: int) -> None:
        """Call the callbacks of the receipts settled since the last call; with the outbox's
        lost transactions so far, ``losses``: a receipt begun before one is lost instead."""
        due, self.due = self.due, []
        for receipt in due:
            if receipt.losses != losses:
                receipt.lost = True
                continue
            try:
                receipt.on_settled()
            except Exception:  # a source's callback must never take the router down
                log.exception("a source's on_settled callback raised")
