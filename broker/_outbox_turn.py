"""What the router's open outbox transaction holds, so that losing it loses nothing.

A grouped transaction (:mod:`broker._outbox_txn`) carries several router turns' writes.
When its ``COMMIT`` fails, or SQLite rolls it back by itself after an I/O error, those
writes are gone from the file while the router's memory already counts them done. So the
outbox keeps a :class:`TurnLog` of the open transaction -- what each write meant, not its
SQL -- and when the transaction is lost (:meth:`TurnLog.lose`):

- its **new rows** (seq, target, route, envelope) are handed to the durable queues, which
  keep them in memory instead (a copy already in its target's window stays there; a
  spilled one is put into the window) and deliver them from there. They are no longer in
  the file, so a bridge stopped before delivering them loses them; the error says so.
- its **deletes, dead letters and taken replays** become *owed*: the outbox writes them
  again at the start of its next transaction, retrying while the file refuses them; until
  then a refill skips the rows owed a delete, so nothing is delivered twice in this run.
  A row both added and deleted within the lost transaction never reached the file and is
  owed nothing.

Every row's seq comes from a counter of the outbox that never goes back, so a row of a
lost transaction never shares its seq with a later one (SQLite's own ``AUTOINCREMENT``
counter is rolled back with the transaction).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from broker._envelope import Envelope
from broker._stored import DeadLetter

__all__ = ["NewRow", "TurnLog"]

#: A row added in the open transaction: (seq, target, route, envelope).
NewRow = tuple[int, str, str, Envelope]


@dataclass(slots=True)
class TurnLog:
    """Writes of one open transaction (or, as the outbox's ``owed``, writes to redo)."""

    appends: list[NewRow] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.appends or self.deletes or self.dead or self.replayed)

    def add(self, other: TurnLog) -> None:
        """Take ``other``'s writes after this log's own (keeps their order)."""
        self.appends += other.appends
        self.deletes += other.deletes
        self.dead += other.dead
        self.replayed += other.replayed

    def deleted_seqs(self) -> set[int]:
        """The pending rows these writes delete (plain deletes and buried rows)."""
        return {*self.deletes, *(d.seq for d in self.dead if d.seq is not None)}

    def lose(self, owed: TurnLog) -> list[NewRow]:
        """This transaction was rolled back: add what must be written again to ``owed``
        and return the new rows that are still to be delivered (from memory now)."""
        added = {row[0] for row in self.appends}
        settled = self.deleted_seqs()
        owed.deletes += [s for s in self.deletes if s not in added]
        owed.dead += [
            d if d.seq not in added else dataclasses.replace(d, seq=None) for d in self.dead
        ]
        owed.replayed += self.replayed
        return [row for row in self.appends if row[0] not in settled]
