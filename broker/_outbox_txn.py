"""The outbox's transactions: one per write, or one per router turn (group commit).

Every write of the outbox (:mod:`broker._outbox`) is all or nothing. Without ``grouped`` (the
``junction dlq`` commands, tests) each is its own ``BEGIN IMMEDIATE`` ... ``COMMIT``.

**Group commit** (``grouped``, the router's outbox): the writes of the router's turns join
one transaction, committed by :meth:`Transactions.end_turn` at the end of the first turn
that finds it older than its linger (:meth:`broker._loop_actor.LoopActor.turn_ended`; an idle
router is woken for it): :data:`NEW_ROWS_LINGER_S` when it holds new rows,
:data:`DELETE_LINGER_S` when it only deleted acknowledged rows. At a steady rate one commit
then carries several messages' new rows and deletes, instead of two commits per message; an
envelope delivered and acknowledged within the linger is inserted and deleted in the same
transaction and never written to the file. In a flood one commit carries many turns. Each
write stays all or nothing on its own: a ``SAVEPOINT`` inside the open transaction (the first
write of a transaction needs none), rolled back alone when it fails.

What the linger costs, and only to a source that does not acknowledge (a PlaceOS
WebSocket): a bridge killed with SIGKILL loses what it took in the last
:data:`NEW_ROWS_LINGER_S` and had not delivered yet. Delivery never waits for the commit,
so the linger adds nothing to latency. A source that is told its envelopes are kept (a NATS
consumer) is told only after :meth:`Transactions.commit`, which the router calls at once
for it. A crash within the linger of deletes sends those acknowledged envelopes once more
after the restart; it loses none.

A failed ``COMMIT`` (or SQLite rolling the transaction back by itself after an I/O error)
*loses* the transaction: :attr:`Transactions.losses` counts it (a source's receipt begun
before a loss is never called: :mod:`broker._receipts`), and the outbox owes the file what
the lost writes meant, writing it again with its next transaction (:mod:`broker._outbox_turn`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from broker._errors import JunctionError

__all__ = ["DELETE_LINGER_S", "NEW_ROWS_LINGER_S", "OutboxError", "Transactions"]

log = logging.getLogger("broker.outbox")

#: How long the router's transaction may stay open once it holds new rows.
NEW_ROWS_LINGER_S = 0.005
#: How long it may stay open while it only deleted acknowledged rows.
DELETE_LINGER_S = 0.05


class OutboxError(JunctionError, RuntimeError):
    """The outbox file cannot be opened or written (the message names the file)."""


class Transactions:
    """How the outbox's writes are committed (see the module docstring)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        committed: Callable[[], None],
        lost: Callable[[], None],
    ) -> None:
        self.db = db
        self.path = path
        self._committed = committed  # the outbox forgets the transaction's log
        self._on_lost = lost  # the outbox counts its rows again and redoes what it must
        #: Writes join the current turn's transaction (the router's outbox sets it).
        self.grouped = False
        self._open = False  # BEGIN done by a grouped write, COMMIT not yet
        self._must_commit = False  # the turn's transaction holds more than deletes
        self._began = 0.0  # time.monotonic() of its BEGIN
        #: Turn transactions committed (the tests count them).
        self.commits = 0
        #: Turn transactions lost (rolled back by a failure), since the outbox was opened.
        self.losses = 0

    def write(self, deletes_only: bool = False) -> contextlib.AbstractContextManager[None]:
        """One write: its own transaction, or a savepoint in the turn's."""
        if not self.grouped:
            return self._transaction()
        if not deletes_only:
            self._must_commit = True
        return self._savepoint()

    def end_turn(self) -> float | None:
        """The router's turn ends: commit if the transaction is past its linger.

        Returns in how many seconds the next call must come to commit what stays open
        (the router waits no longer than that for mail), or None when nothing is open.
        """
        if not self._open:
            return None
        linger = NEW_ROWS_LINGER_S if self._must_commit else DELETE_LINGER_S
        left = linger - (time.monotonic() - self._began)
        if left > 0:
            return left
        self.commit()
        return None

    def commit(self) -> None:
        """Commit the turn's transaction now, if one is open."""
        if not self._open:
            return
        self._open = self._must_commit = False
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as err:
            age_ms = (time.monotonic() - self._began) * 1000
            self._lost(err)
            raise OutboxError(
                f"outbox {self.path}: commit failed ({err}): the writes of the last "
                f"{age_ms:.0f} ms are not in the file; they are written again with the next "
                "transaction (until then they are in memory only: a bridge killed meanwhile "
                "loses them)"
            ) from err
        self.commits += 1
        self._committed()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise OutboxError(f"outbox {self.path}: {err}") from err

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        if self._open and not self._still_open():
            self._lost("SQLite rolled the open transaction back by itself")
            log.error(
                "outbox %s: SQLite rolled the open transaction back by itself (after an I/O "
                "error); its writes are written again with the next one",
                self.path,
            )
        if not self._open:  # the first write: the transaction itself is its all or nothing
            try:
                if self.db.in_transaction:  # a rollback after a loss failed: try once more
                    self.db.execute("ROLLBACK")
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise OutboxError(f"outbox {self.path}: {err}") from err
            self._open, self._began = True, time.monotonic()
            try:
                yield
            except BaseException as exc:
                self._open = self._must_commit = False  # nothing else was in it
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise OutboxError(f"outbox {self.path}: {exc}") from exc
                raise
            return
        self._execute("SAVEPOINT turn_write")
        try:
            yield
        except BaseException as exc:
            self._undo_write(exc)
            if isinstance(exc, sqlite3.Error):
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            raise
        self._execute("RELEASE turn_write")

    def _undo_write(self, exc: BaseException) -> None:
        """Roll back one failed write; the turn's others stay unless SQLite dropped them."""
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK TO turn_write")
                self.db.execute("RELEASE turn_write")
                return
        except sqlite3.Error as err:
            exc = err
        self._lost(exc)
        raise OutboxError(
            f"outbox {self.path}: {exc}; the transaction's earlier writes are not in the "
            "file either: they are written again with the next transaction"
        ) from exc

    def _lost(self, err: object) -> None:
        """The transaction is gone: roll back what is left; the outbox makes up for it."""
        self._open = self._must_commit = False
        self.losses += 1
        self._rollback()
        try:
            self._on_lost()
        except sqlite3.Error as again:
            log.error("outbox %s: rows not counted again after %s: %s", self.path, err, again)

    def _still_open(self) -> bool:
        try:
            return self.db.in_transaction
        except sqlite3.Error:  # a closed connection: the write below says so
            return True

    def _execute(self, sql: str) -> None:
        try:
            self.db.execute(sql)
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {self.path}: {err}") from err

    def _rollback(self) -> None:
        # SQLite may have rolled back by itself (disk full, I/O error): then there is none;
        # on a closed connection even asking raises
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as err:
            log.error("outbox %s: rollback failed: %s", self.path, err)
