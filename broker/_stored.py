"""The rows of the outbox as Python values, and reading their envelopes totally.

A stored body is decoded with :func:`broker._envelope.decode`, which for any bytes returns an
envelope or raises a msgspec error. What does not decode (a float that was NaN, stored as
``null`` by msgspec's encoder; a body kind whose plugin is no longer installed; a damaged
file) must not stop the queue it is in, nor the router reading it: :func:`read_stored` says
why instead of raising, and :func:`move_to_dead` moves such rows of ``pending`` or ``replay``
to ``dead``, with their bodies as stored, where ``junction dlq`` shows them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from broker._envelope import Envelope, decode
from broker._queue_key import QueueKey

#: The tables whose rows are read back as envelopes by the running bridge.
Table = Literal["pending", "replay"]


@dataclass(frozen=True, slots=True)
class PendingRow:
    """One envelope waiting in the outbox."""

    seq: int
    target: str
    route: str
    created: float
    attempts: int
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class DeadRow:
    """One dead letter, as stored (its body may be one that never decoded: ``kind`` ``?``)."""

    seq: int
    route: str
    target: str
    stage: str
    env_id: str
    kind: str
    reason: str
    failed_at: float
    attempts: int
    body: bytes

    @property
    def envelope(self) -> Envelope:
        """The stored envelope; raises ``msgspec.DecodeError`` when it does not decode."""
        return decode(self.body)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter to store: ``seq`` is its outbox row when it was pending, else None."""

    route: str
    target: str
    stage: str
    envelope: Envelope
    reason: str
    attempts: int = 0
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """A dead letter queued for replay."""

    seq: int
    route: str
    target: str
    stage: str
    envelope: Envelope


def read_stored(body: bytes) -> Envelope | str:
    """The stored envelope, or the reason it cannot be read (never raises)."""
    try:
        return decode(body)
    except msgspec.DecodeError as err:  # ValidationError too
        return f"unreadable stored envelope: {err}"


def readable(
    rows: Sequence[Sequence[Any]], skip: set[int]
) -> tuple[list[tuple[Any, ...]], list[tuple[int, str]]]:
    """Rows read from ``pending`` or ``replay`` (seq first, body last) as
    ``(*columns, envelope)`` where the body decodes, and ``(seq, why)`` where it does not;
    rows whose seq is in ``skip`` (settled, their delete owed) are left out."""
    good: list[tuple[Any, ...]] = []
    bad: list[tuple[int, str]] = []
    for row in rows:
        seq = row[0]
        if skip and seq in skip:
            continue
        env = read_stored(row[-1])
        if isinstance(env, str):
            bad.append((seq, env))
        else:
            good.append((*row[:-1], env))
    return good, bad


_TAKE = {
    # route, target, stage, env_id, attempts, size, body
    "pending": "DELETE FROM pending WHERE seq = ? "
    "RETURNING route, target, 'deliver', env_id, attempts, size, body",
    "replay": "DELETE FROM replay WHERE seq = ? RETURNING route, target, stage, '', 0, 0, body",
}


def move_to_dead(
    db: sqlite3.Connection, table: Table, bad: Sequence[tuple[int, str]], now: float
) -> tuple[int, int]:
    """Move rows (seq, reason) of ``table`` to ``dead``, inside the caller's transaction.

    Returns (rows moved, their bytes as counted in ``pending``). A pending row becomes a
    ``deliver`` dead letter of its route; a replay row keeps the stage it failed at.
    """
    moved = size = 0
    for seq, why in bad:
        for route, target, stage, env_id, attempts, n, body in db.execute(
            _TAKE[table], (seq,)
        ).fetchall():
            db.execute(
                "INSERT INTO dead (route, target, stage, env_id, kind, reason, failed_at, "
                "attempts, body) VALUES (?, ?, ?, ?, '?', ?, ?, ?, ?)",
                (QueueKey.parse(route).route, target, stage, env_id, why, now, attempts, body),
            )
            moved, size = moved + 1, size + int(n)
    return moved, size
