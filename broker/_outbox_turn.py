"""What the router's open outbox transaction holds, so that losing it loses nothing.

A grouped transaction (:mod:`broker._outbox_txn`) carries several router turns' writes.
When its ``COMMIT`` fails, or SQLite rolls it back by itself after an I/O error, those
writes are gone from the file while the router's memory already counts them done. So the
outbox keeps a :class:`TurnLog` of the open transaction -- what each write meant, not its
SQL -- and when the transaction is lost (:meth:`TurnLog.lose`) every write in it becomes
*owed*: new rows (with the seqs they were given), deletes, dead letters, taken replays and
unreadable rows moved to the dead letters. The outbox writes what it owes again with its
next write or at the end of the router's next turn (``Outbox._pay_owed``), and tries again
at most once a second while the file refuses it; ``Outbox.close`` pays it too. Meanwhile the outbox
answers as if the owed writes were in the file: a refill gets the owed new rows (in seq
order with the rest) and skips rows owed a delete, a replay owed its delete is not taken
again, an acknowledgement of an owed row settles it, and the row counts include them.
The router's memory (which envelope has which seq) never has to change.

What an owed write costs: it is in memory only, so a bridge killed before the file takes
it loses it, as it would lose a write within the commit linger. A row both added and
deleted within the lost transaction never reached the file and is owed nothing.

Every row's seq comes from a counter of the outbox that never goes back, so a row of a
lost transaction never shares its seq with a later one (SQLite's own ``AUTOINCREMENT``
counter is rolled back with the transaction).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from broker._envelope import Envelope
from broker._stored import DeadLetter, Table

__all__ = ["NewRow", "TurnLog"]

#: A row added in the open transaction: (seq, target, route, envelope, size of its body).
NewRow = tuple[int, str, str, Envelope, int]
#: Rows of ``pending`` or ``replay`` moved to the dead letters as unreadable: (seq, why).
Moved = tuple[Table, list[tuple[int, str]]]


@dataclass(slots=True)
class TurnLog:
    """Writes of one open transaction (or, as the outbox's ``owed``, writes to redo)."""

    appends: list[NewRow] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)
    moved: list[Moved] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.appends or self.deletes or self.dead or self.replayed or self.moved)

    def add(self, other: TurnLog) -> None:
        """Take ``other``'s writes after this log's own (keeps their order)."""
        self.appends += other.appends
        self.deletes += other.deletes
        self.dead += other.dead
        self.replayed += other.replayed
        self.moved += other.moved

    def gone(self) -> set[int]:
        """The ``pending`` rows these writes delete (deletes, buried and moved rows)."""
        moved = {seq for table, rows in self.moved if table == "pending" for seq, _ in rows}
        return {*self.deletes, *(d.seq for d in self.dead if d.seq is not None), *moved}

    def replays_gone(self) -> set[int]:
        """The ``replay`` rows these writes delete (taken, or moved as unreadable)."""
        moved = {seq for table, rows in self.moved if table == "replay" for seq, _ in rows}
        return {*self.replayed, *moved}

    def lose(self, owed: TurnLog) -> None:
        """This transaction was rolled back: add all it wrote to ``owed``, except rows it
        both added and settled (they never need to reach the file)."""
        added = {row[0] for row in self.appends}
        settled = self.gone()
        owed.appends += [row for row in self.appends if row[0] not in settled]
        owed.deletes += [s for s in self.deletes if s not in added]
        owed.dead += [
            d if d.seq not in added else dataclasses.replace(d, seq=None) for d in self.dead
        ]
        owed.replayed += self.replayed
        owed.moved += self.moved

    def settle_appends(self, seqs: set[int]) -> list[NewRow]:
        """Take the owed new rows with these seqs out (settled before they reached the
        file); returns them."""
        if not self.appends or not seqs:
            return []
        taken = [row for row in self.appends if row[0] in seqs]
        if taken:
            self.appends = [row for row in self.appends if row[0] not in seqs]
        return taken
