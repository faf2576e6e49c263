"""The outbox's dead letters and replays: the ``dead`` and ``replay`` tables.

A part of :class:`broker._outbox.Outbox` (its base class), kept apart so that each module
holds one concept: the pending rows and their transactions there, the envelopes that will
not be delivered, and the ones a person asked to replay, here. The table layout and what
each table means are in :mod:`broker._outbox`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker import _dead_filter as dead_filter
from broker._envelope import encode
from broker._outbox_turn import TurnLog
from broker._outbox_txn import Transactions
from broker._stored import DeadLetter, DeadRow, ReplayRow, Table, readable

__all__ = ["DeadLetterTables"]

log = logging.getLogger("broker.outbox")

#: Rows per ``IN (...)`` statement (well under SQLite's limit of bound parameters).
CHUNK = 500


class DeadLetterTables:
    """Dead letters and replays of one outbox file (see the module docstring)."""

    # set by Outbox.__init__
    path: Path
    max_dead: int
    dead_pruned: int
    rows: int
    bytes: int
    txns: Transactions
    turn: TurnLog
    _db: sqlite3.Connection

    _owing: bool
    _replays_gone: set[int]

    if TYPE_CHECKING:  # Outbox's and OwedWrites' own

        def _write(self, deletes_only: bool = False) -> AbstractContextManager[None]: ...

        def _rows(self, sql: str, args: Sequence[object] = ()) -> list[Any]: ...

        def _unreadable(self, table: Table, bad: Sequence[tuple[int, str]]) -> None: ...

        def _settle_owed(self, seqs: set[int]) -> int: ...

    def bury(self, letters: Sequence[DeadLetter]) -> None:
        """Store dead letters (and delete their pending rows) in one transaction."""
        if not letters:
            return
        with self._write():
            pruned = self._insert_dead(letters)
        if self.txns.grouped:
            self.turn.dead += letters
            if self._owing:  # rows still owed their insert are settled here
                self._settle_owed({d.seq for d in letters if d.seq is not None})
        if pruned > 0:
            self.dead_pruned += pruned
            log.warning(
                "outbox %s: %d oldest dead letters deleted to stay within max_dead_letters = %d",
                self.path,
                pruned,
                self.max_dead,
            )

    def _insert_dead(self, letters: Sequence[DeadLetter]) -> int:
        """Insert dead letters, delete their pending rows (inside a write); returns how many
        old dead letters were pruned to stay within ``max_dead``."""
        now = time.time()
        removed: list[int] = []
        for d in letters:
            env = d.envelope
            self._db.execute(
                "INSERT INTO dead (route, target, stage, env_id, kind, reason, failed_at, "
                "attempts, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.route,
                    d.target,
                    d.stage,
                    env.id,
                    env.kind,
                    d.reason,
                    now,
                    d.attempts,
                    encode(env),
                ),
            )
            if d.seq is not None:
                removed += [
                    r[0]
                    for r in self._db.execute(
                        "DELETE FROM pending WHERE seq = ? RETURNING size", (d.seq,)
                    )
                ]
        # bounded: past ``max_dead`` the oldest dead letters go (counted, logged)
        pruned: int = self._db.execute(
            "DELETE FROM dead WHERE seq <= (SELECT MAX(seq) FROM dead) - ?", (self.max_dead,)
        ).rowcount
        self.rows -= len(removed)
        self.bytes -= sum(removed)
        return pruned

    def dead_count(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM dead")[0][0])

    def dead_summary(self) -> list[tuple[str, str, str, int, float, float]]:
        """(route, stage, reason, count, first failed_at, last failed_at), biggest first."""
        rows = self._rows(
            "SELECT route, stage, reason, COUNT(*), MIN(failed_at), MAX(failed_at) FROM dead "
            "GROUP BY route, stage, reason ORDER BY COUNT(*) DESC, route"
        )
        return [(r, s, why, int(n), float(a), float(b)) for r, s, why, n, a, b in rows]

    def dead_rows(
        self,
        route: str | None = None,
        reason: str | None = None,
        ids: Sequence[int] = (),
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[DeadRow]:
        """Dead letters, oldest first (or newest, for the console's recent ones), filtered
        by route, reason (substring) or seqs."""
        where, args = dead_filter.where(route, reason, ids)
        order = "DESC" if newest_first else ""
        rows = self._rows(
            "SELECT seq, route, target, stage, env_id, kind, reason, failed_at, attempts, body "
            f"FROM dead{where} ORDER BY seq {order} LIMIT ?",
            (*args, limit),
        )
        return [DeadRow(*r) for r in rows]

    def dead_rows_by_seq(
        self, seqs: Sequence[int], route: str | None = None, reason: str | None = None
    ) -> list[DeadRow]:
        """The dead letters with these seqs (and matching the filters), any number of them."""
        rows: list[DeadRow] = []
        for i in range(0, len(seqs), CHUNK):
            group = seqs[i : i + CHUNK]
            rows += self.dead_rows(route, reason, group, limit=len(group))
        return rows

    def purge(
        self, route: str | None = None, reason: str | None = None, ids: Sequence[int] = ()
    ) -> int:
        """Delete dead letters (all, or those matching); returns how many."""
        where, args = dead_filter.where(route, reason, ids)
        with self._write():
            cur = self._db.execute(f"DELETE FROM dead{where}", args)
        return cur.rowcount

    def queue_replay(self, rows: Sequence[DeadRow]) -> int:
        """Move dead letters to the replay queue (one transaction); returns how many moved.

        A letter another process purged or queued meanwhile is not moved twice.
        """
        moved = 0
        with self._write():
            for r in rows:
                gone = self._db.execute(
                    "DELETE FROM dead WHERE seq = ? RETURNING route, target, stage, body",
                    (r.seq,),
                ).fetchall()
                for route, target, stage, body in gone:
                    self._db.execute(
                        "INSERT INTO replay (dead_seq, route, target, stage, body) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (r.seq, route, target, stage, body),
                    )
                    moved += 1
        return moved

    def replay_waiting(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM replay")[0][0])

    def next_replays(self, limit: int) -> list[ReplayRow]:
        """Up to ``limit`` queued replays, oldest first; they stay queued until
        :meth:`replayed` (so a crash in between replays them again, never loses them)."""
        rows = self._rows(
            "SELECT seq, route, target, stage, body FROM replay ORDER BY seq LIMIT ?",
            (limit + len(self._replays_gone),),
        )
        # rows taken in a lost transaction are skipped: their delete is owed
        good, bad = readable(rows, self._replays_gone)
        out = [ReplayRow(*row) for row in good]
        if bad:
            self._unreadable("replay", bad)
        return out

    def replayed(self, seqs: Sequence[int]) -> None:
        """Remove replays that were handed back to the router."""
        if seqs:
            with self._write():
                self._db.executemany("DELETE FROM replay WHERE seq = ?", [(q,) for q in seqs])
            if self.txns.grouped:
                self.turn.replayed += seqs

    def take_replays(self, limit: int) -> list[ReplayRow]:
        """Remove and return up to ``limit`` queued replays, oldest first."""
        rows = self.next_replays(limit)
        self.replayed([r.seq for r in rows])
        return rows
