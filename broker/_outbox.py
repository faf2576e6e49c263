"""The durable outbox and the dead-letter store: one SQLite file (WAL) in the state directory.

``pending``  envelopes of ``persist`` routes, written when the router takes them (and
             committed within the router's commit linger, :mod:`broker._outbox_txn`) and
             deleted only when their target acknowledged them; after a crash or restart
             they are delivered again, in ``seq`` order per (target, route), with their
             original ids.
``dead``     envelopes that will not be delivered, with the route, the stage where they
             failed (``route``: matching, mapping or a transform; ``deliver``: the target
             refused them or they went stale) and the reason.
``replay``   dead letters a person asked to replay (``junction dlq replay``); the running
             bridge takes them a few at a time, so a backfill is paced.

Reading is total: a pending or replay row whose body does not decode (a float stored as
``null`` because it was NaN, a body kind whose plugin is gone, a damaged file) is moved to
``dead`` as it is read, with its body as stored and the reason ``unreadable stored envelope:
...``; it never stops its queue or the router (``unreadable`` counts them).

The router is the only writer while the bridge runs (``synchronous=NORMAL`` in WAL mode
survives a killed process, only a power cut can lose the last commits). The ``junction dlq``
commands open the same file from another process; SQLite's locking and ``busy_timeout`` keep
the two apart.

The router's outbox commits once per router turn, not once per write
(:mod:`broker._outbox_txn`); what a failed commit loses is made up for by
:mod:`broker._outbox_turn`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from broker._envelope import Envelope, encode
from broker._outbox_dead import CHUNK, DeadLetterTables
from broker._outbox_owed import INSERT, OwedWrites
from broker._outbox_turn import TurnLog
from broker._outbox_txn import OutboxError, Transactions
from broker._stored import (
    DeadLetter,
    DeadRow,
    PendingRow,
    ReplayRow,
    Table,
    move_to_dead,
    readable,
)

__all__ = ["DeadLetter", "DeadRow", "Outbox", "OutboxError", "PendingRow", "ReplayRow"]

log = logging.getLogger("broker.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    target   TEXT NOT NULL,
    route    TEXT NOT NULL,
    env_id   TEXT NOT NULL,
    created  REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    size     INTEGER NOT NULL,
    body     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_by_key ON pending (target, route, seq);
CREATE TABLE IF NOT EXISTS dead (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    route     TEXT NOT NULL,
    target    TEXT NOT NULL DEFAULT '',
    stage     TEXT NOT NULL,
    env_id    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    reason    TEXT NOT NULL,
    failed_at REAL NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    body      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_by_route ON dead (route, reason);
CREATE TABLE IF NOT EXISTS replay (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    dead_seq INTEGER NOT NULL,
    route    TEXT NOT NULL,
    target   TEXT NOT NULL DEFAULT '',
    stage    TEXT NOT NULL,
    body     BLOB NOT NULL
);
"""


#: WAL size past which the checkpointer makes the next commit start the WAL over.
_WAL_RESTART_BYTES = 64 << 20


class Outbox(DeadLetterTables, OwedWrites):
    """The store (see the module docstring). Not thread-safe: one thread at a time uses it."""

    def __init__(
        self,
        path: Path,
        max_rows: int = 1_000_000,
        max_bytes: int = 512 << 20,
        checkpoints: bool = True,
        max_dead: int = 1_000_000,
    ) -> None:
        """Open (or create) the store; ``checkpoints=False`` for a second opener (the
        ``junction dlq`` commands, tests) that leaves the WAL to the bridge's own."""
        self.path = path
        self.checkpoints = checkpoints
        self.max_dead = max_dead
        #: Dead letters deleted (oldest first) to stay within ``max_dead``, by this opener.
        self.dead_pruned = 0
        #: Pending and replay rows moved to ``dead`` because they did not decode.
        self.unreadable = 0
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            # checkpoints (which fsync) run on a thread of their own, not in a writer's commit
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.executescript(_SCHEMA)
            self._recount()
            # seqs come from this counter, which never goes back (broker._outbox_turn)
            self._next_seq = 1 + int(
                self._db.execute(
                    "SELECT MAX(COALESCE((SELECT MAX(seq) FROM pending), 0), COALESCE(("
                    "SELECT seq FROM sqlite_sequence WHERE name = 'pending'), 0))"
                ).fetchone()[0]
            )
        except sqlite3.DatabaseError as err:
            hint = ""
            if "not a database" in str(err) or "malformed" in str(err):
                hint = (
                    "; it is not an outbox Junction can read: move it aside to start with an "
                    "empty one (its envelopes stay in the moved file), or restore a good copy"
                )
            raise OutboxError(f"outbox {path}: {err}{hint}") from err
        except (sqlite3.Error, OSError) as err:
            raise OutboxError(f"outbox {path}: {getattr(err, 'strerror', None) or err}") from err
        #: One transaction per write, or per router turn (``txns.grouped``: the router's).
        self.txns = Transactions(self._db, path, self._turn_committed, self._turn_lost)
        #: The open grouped transaction's writes (broker._outbox_turn); what is owed.
        self.turn = TurnLog()
        self._init_owed()
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="outbox-checkpoint", daemon=True
        )
        if checkpoints:
            self._checkpointer.start()

    def close(self) -> None:
        try:
            self._pay_owed(force=True)
            self.commit()
        except OutboxError as err:
            log.error("%s", err)
        if self._owing:
            log.error(
                "outbox %s: closed with writes owed since a lost commit that the file "
                "refused: %d new rows, %d deletes, %d dead letters are lost (deleted rows "
                "are delivered again after the restart)",
                self.path,
                len(self.owed.appends),
                len(self.owed.deletes),
                len(self.owed.dead),
            )
        if not self.checkpoints:
            self._db.close()
            return
        self._stop.set()
        self._checkpointer.join(5)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:  # the next open replays the WAL; nothing is lost
            log.warning("outbox %s: final checkpoint failed: %s", self.path, err)
        self._db.close()

    def _checkpoint_loop(self, every_s: float = 0.1) -> None:
        """Move the WAL into the database file now and then, off the loop the router runs on."""
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        except sqlite3.Error as err:
            log.error("outbox %s: no checkpoint connection (%s); the WAL grows", self.path, err)
            return
        try:
            wal = Path(f"{self.path}-wal")
            while not self._stop.wait(every_s):
                try:
                    size = wal.stat().st_size if wal.exists() else 0
                    # PASSIVE never blocks the writer, but under a steady stream it cannot
                    # reset the WAL; past the mark, RESTART waits for a gap between commits
                    # so the next one starts the WAL over (a short, rare stall)
                    mode = "RESTART" if size > _WAL_RESTART_BYTES else "PASSIVE"
                    db.execute(f"PRAGMA wal_checkpoint({mode})")
                except (OSError, sqlite3.Error) as err:
                    log.warning("outbox %s: checkpoint failed: %s", self.path, err)
        finally:
            db.close()

    # --- pending ------------------------------------------------------------------

    def append(
        self, target: str, route: str, envelopes: Sequence[Envelope]
    ) -> tuple[list[int], list[Envelope]]:
        """Commit ``envelopes`` for (target, route) in one transaction.

        Returns the new rows' seqs, in order, and the envelopes refused because the outbox
        is at its bound of rows or bytes (a prefix is stored, the rest refused).
        """
        now = time.time()
        rows: list[tuple[int, str, str, str, float, int, bytes]] = []
        first = seq = self._next_seq
        room_rows = self.max_rows - self.rows
        room_bytes = self.max_bytes - self.bytes
        refused: list[Envelope] = []
        added_bytes = 0
        for i, env in enumerate(envelopes):
            body = encode(env)
            if len(rows) >= room_rows or added_bytes + len(body) > room_bytes:
                refused = list(envelopes[i:])
                break
            added_bytes += len(body)
            rows.append((seq, target, route, env.id, now, len(body), body))
            seq += 1
        if not rows:
            return [], refused
        self._next_seq = seq  # taken even if the write fails: a seq is never used twice
        with self._write():
            if len(rows) == 1:  # a steady rate's usual batch
                self._db.execute(INSERT, rows[0])
            else:
                self._db.executemany(INSERT, rows)
        seqs = list(range(first, seq))
        if self.txns.grouped:  # kept until the commit (broker._outbox_turn)
            if len(rows) == 1:
                self.turn.appends.append((first, target, route, envelopes[0], rows[0][5]))
            else:
                stored = zip(rows, envelopes, strict=False)  # the refused ones have no row
                self.turn.appends += [(r[0], target, route, e, r[5]) for r, e in stored]
        self.rows += len(rows)
        self.bytes += added_bytes
        return seqs, refused

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows (one transaction); returns how many were deleted."""
        keys = list(seqs)
        if not keys:
            return 0
        try:
            with self._write(deletes_only=True):
                count = self._delete_pending(keys)
        except OutboxError:
            if self.txns.grouped:  # owed: written again with the next transaction
                self.owed.deletes += keys
                self._owed_changed()
            raise
        if self.txns.grouped:
            self.turn.deletes += keys
            if self._owing:  # rows still owed their insert are settled here
                count += self._settle_owed(set(keys))
        return count

    def _delete_pending(self, keys: list[int]) -> int:
        """Delete these pending rows (inside a write); returns how many there were."""
        count = size = 0
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            marks = ",".join("?" * len(chunk))
            sizes = self._db.execute(
                f"DELETE FROM pending WHERE seq IN ({marks}) RETURNING size", chunk
            ).fetchall()
            count, size = count + len(sizes), size + sum(r[0] for r in sizes)
        self.rows -= count
        self.bytes -= size
        return count

    def load(self, target: str, route: str, after_seq: int, limit: int) -> list[PendingRow]:
        """Up to ``limit`` rows of (target, route) after ``after_seq``, oldest first."""
        gone = self._owed_gone  # settled rows whose delete is owed (broker._outbox_turn)
        rows = self._rows(
            "SELECT seq, created, attempts, body FROM pending "
            "WHERE target = ? AND route = ? AND seq > ? ORDER BY seq LIMIT ?",
            (target, route, after_seq, limit + len(gone)),
        )
        good, bad = readable(rows, gone)
        out = [PendingRow(s, target, route, c, a, env) for s, c, a, env in good]
        if bad:
            self._unreadable("pending", bad)
        if self._owing and self.owed.appends:  # rows owed their insert, in seq order
            out = sorted(out + self._owed_rows(target, route, after_seq), key=lambda r: r.seq)
        return out[:limit]

    def keys(self) -> dict[tuple[str, str], int]:
        """Rows waiting per (target, route)."""
        rows = self._rows("SELECT target, route, COUNT(*) FROM pending GROUP BY target, route")
        return {(t, r): n for t, r, n in rows}

    def oldest(self, target: str, route: str) -> float | None:
        """When the oldest row of (target, route) was committed (epoch s), or None."""
        rows = self._rows(
            "SELECT MIN(created) FROM (SELECT created FROM pending "
            "WHERE target = ? AND route = ? ORDER BY seq LIMIT 64)",
            (target, route),
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def count_attempt(self, seqs: Iterable[int]) -> None:
        """Record one more failed delivery attempt for these rows."""
        with self._write():
            self._db.executemany(
                "UPDATE pending SET attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs]
            )

    # --- helpers ------------------------------------------------------------------

    def _unreadable(self, table: Table, bad: Sequence[tuple[int, str]]) -> None:
        """Move rows of ``table`` that do not decode to ``dead`` (one transaction)."""
        with self._write():
            moved, size = move_to_dead(self._db, table, bad, time.time())
        self._moved_log(table, list(bad))
        if table == "pending":
            self.rows -= moved
            self.bytes -= size
        self.unreadable += moved
        log.error(
            "outbox %s: %d %s row(s) could not be read and became dead letters (%s)",
            self.path,
            moved,
            table,
            bad[0][1],
        )

    def _write(self, deletes_only: bool = False) -> AbstractContextManager[None]:
        if self._owing:
            self._pay_owed()
        return self.txns.write(deletes_only)

    def end_turn(self) -> float | None:
        """The router's turn ends: commit its writes once past their linger; returns in how
        many seconds to call again for what stays open (see ``broker._outbox_txn``)."""
        if self._owing:
            self._pay_owed()
        again = self.txns.end_turn()
        if self._owing:  # come back to try again
            retry = max(0.0, self._owed_retry_at - time.monotonic())
            again = retry if again is None else min(again, retry)
        return again

    def _turn_committed(self) -> None:
        self.turn = TurnLog()

    def commit(self) -> None:
        """Commit the turn's transaction now, if one is open (before telling a source that
        its envelopes are kept, and at close)."""
        self.txns.commit()

    def _recount(self) -> None:
        """Count the rows from the file (at open, and after a turn's writes were lost)."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM pending").fetchone()
        self.rows, self.bytes = int(row[0]), int(row[1])

    def _rows(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """All rows of a read; any SQLite error becomes an OutboxError naming the file."""
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {self.path}: {err}") from err
