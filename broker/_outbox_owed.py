"""The outbox's owed writes: what a lost transaction wrote, until the file takes it again.

A part of :class:`broker._outbox.Outbox` (its base class); what is owed and why is in
:mod:`broker._outbox_turn`. Here: taking a lost transaction's writes on as owed, counting
the rows as if they were in the file, answering reads with them, and writing them again.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from broker._envelope import encode
from broker._outbox_dead import CHUNK
from broker._outbox_turn import TurnLog
from broker._outbox_txn import OutboxError, Transactions
from broker._stored import DeadLetter, PendingRow, Table, move_to_dead

__all__ = ["OwedWrites"]

log = logging.getLogger("broker.outbox")

#: How long owed writes wait before they are tried again while the file refuses them.
OWED_RETRY_S = 1.0

INSERT = (
    "INSERT INTO pending (seq, target, route, env_id, created, size, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class OwedWrites:
    """Owed writes of one outbox (see the module docstring)."""

    # set by Outbox.__init__
    path: Path
    rows: int
    bytes: int
    dead_pruned: int
    txns: Transactions
    turn: TurnLog
    _db: sqlite3.Connection

    def _init_owed(self) -> None:
        #: Writes owed since a transaction was lost (empty almost always).
        self.owed = TurnLog()
        self._owing = False  # bool(self.owed), read on every write
        self._owed_gone: set[int] = set()  # pending rows owed a delete: reads skip them
        self._replays_gone: set[int] = set()  # replay rows owed a delete: not taken again
        self._owed_retry_at = 0.0

    if TYPE_CHECKING:  # Outbox's and DeadLetterTables' own

        def _delete_pending(self, keys: list[int]) -> int: ...

        def _insert_dead(self, letters: Sequence[DeadLetter]) -> int: ...

        def _recount(self) -> None: ...

    # --- taking writes on ------------------------------------------------------------

    def _turn_lost(self) -> None:
        """The open transaction was rolled back: all it wrote is owed."""
        turn, self.turn = self.turn, TurnLog()
        turn.lose(self.owed)
        self._owed_changed()

    def _owed_changed(self) -> None:
        owed = self.owed
        gone = owed.gone()  # the appends do not change it
        if gone & {row[0] for row in owed.appends}:  # owed rows settled meanwhile
            owed.appends = [row for row in owed.appends if row[0] not in gone]
        self._owed_gone, self._replays_gone = gone, owed.replays_gone()
        self._owing = bool(owed)
        self._count_with_owed()

    def _count_with_owed(self) -> None:
        """Count the rows as the file will have them once it takes what is owed."""
        try:
            self._recount()
            gone = sorted(self._owed_gone)
            for i in range(0, len(gone), CHUNK):
                chunk = gone[i : i + CHUNK]
                n, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM pending "
                    f"WHERE seq IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchone()
                self.rows -= int(n)
                self.bytes -= int(size)
        except sqlite3.Error as err:  # the counts stay as they were; the bounds are loose
            log.error("outbox %s: rows not counted again: %s", self.path, err)
            return
        self.rows += len(self.owed.appends)
        self.bytes += sum(row[4] for row in self.owed.appends)

    # --- answering with them -----------------------------------------------------------

    def _settle_owed(self, seqs: set[int]) -> int:
        """Acknowledged or buried before their insert reached the file: owed no more."""
        taken = self.owed.settle_appends(seqs)
        if taken:
            self.rows -= len(taken)
            self.bytes -= sum(row[4] for row in taken)
            self._owing = bool(self.owed)
        return len(taken)

    def _owed_rows(self, target: str, route: str, after_seq: int) -> list[PendingRow]:
        """The owed new rows of (target, route) after ``after_seq`` (a refill merges them)."""
        now = time.time()
        return [
            PendingRow(seq, t, r, now, 0, env)
            for seq, t, r, env, _ in self.owed.appends
            if t == target and r == route and seq > after_seq
        ]

    # --- writing them again ----------------------------------------------------------

    def _pay_owed(self, force: bool = False) -> None:
        """Write what is owed, as one write of the open transaction or the next one (at
        most once per :data:`OWED_RETRY_S` while the file refuses it, unless ``force``)."""
        if not self.txns.grouped or not self._owing:
            return
        if not force and time.monotonic() < self._owed_retry_at:
            return
        owed, self.owed = self.owed, TurnLog()
        now = time.time()
        try:
            with self.txns.write():
                if owed.appends:
                    self._db.executemany(
                        INSERT,
                        [
                            (seq, t, r, env.id, now, size, encode(env))
                            for seq, t, r, env, size in owed.appends
                        ],
                    )
                self._delete_pending(owed.deletes)
                self.dead_pruned += self._insert_dead(owed.dead)
                self._db.executemany(
                    "DELETE FROM replay WHERE seq = ?", [(q,) for q in owed.replayed]
                )
                for table, bad in owed.moved:
                    move_to_dead(self._db, table, bad, now)
        except OutboxError as err:
            owed.add(self.owed)
            self.owed = owed
            self._owed_retry_at = time.monotonic() + OWED_RETRY_S
            self._owed_changed()
            log.error(
                "outbox %s: the writes owed since a lost commit are refused: %s", self.path, err
            )
            return
        self.turn.add(owed)  # owed again if this transaction is lost too
        self._owing, self._owed_gone, self._replays_gone = False, set(), set()
        self._recount()  # inside the transaction: what it commits
        log.warning(
            "outbox %s: written again after a lost commit: %d new rows, %d deletes, "
            "%d dead letters, %d replays taken, %d unreadable rows moved",
            self.path,
            len(owed.appends),
            len(owed.deletes),
            len(owed.dead),
            len(owed.replayed),
            sum(len(bad) for _, bad in owed.moved),
        )

    def _moved_log(self, table: Table, bad: list[tuple[int, str]]) -> None:
        """Log unreadable rows moved to the dead letters in the open transaction."""
        if self.txns.grouped:
            self.turn.moved.append((table, bad))
