"""The web console's blocking work, run in worker threads: dead letters, explain, the config.

Each function here is called through ``trio.to_thread`` by :mod:`broker._console` and
returns plain JSON-able values, or raises :class:`Refused` with the HTTP status and a
message for the person at the page (never a traceback).

The router owns the bridge's outbox connection, which is not thread-safe; like ``junction
dlq`` (:mod:`broker._dlq`), every dead-letter action here opens a second
``Outbox(path, checkpoints=False)`` of its own, does its one thing and closes it. A
replay only moves rows to the outbox's ``replay`` table: the running router takes them
from there at its next tick, as it does for ``junction dlq replay``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from broker import _explain as explain_mod
from broker._dlq import PURGE_CHUNK
from broker._dlq_format import ranges
from broker._errors import JunctionError
from broker._logs import redact
from broker._outbox import Outbox, OutboxError
from broker._routing import compile_table
from broker._stored import DeadRow

if TYPE_CHECKING:
    from broker._runtime import Loaded

#: Characters of a dead letter's body shown in the list.
PREVIEW_CHARS = 160
#: Seqs one replay or purge may name (the page lists far fewer).
MAX_SEQS = 5000
#: What an envelope looks like, for an explain that does not parse.
EXAMPLE = explain_mod.EXAMPLE_ENVELOPE


class Refused(Exception):
    """A request the console cannot do: its HTTP status and what to tell the person."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def answer(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


def _open(path: Path) -> Outbox:
    if not path.is_file():
        raise Refused(404, f"no outbox at {path}: the bridge has stored nothing yet")
    try:
        return Outbox(path, checkpoints=False)  # the bridge checkpoints its own WAL
    except OutboxError as err:
        raise Refused(503, str(err)) from err


@contextmanager
def _store(path: Path) -> Iterator[Outbox]:
    """The outbox at ``path``, opened for one action; its errors become Refused (503)."""
    box = _open(path)
    try:
        yield box
    except OutboxError as err:
        raise Refused(503, str(err)) from err
    finally:
        box.close()


# --- dead letters --------------------------------------------------------------------------


def dead_letters(path: Path, route: str | None, reason: str | None, limit: int) -> dict[str, Any]:
    """The newest ``limit`` dead letters matching the filters, and how many there are."""
    with _store(path) as box:
        rows = box.dead_rows(route, reason, limit=limit, newest_first=True)
        return {
            "total": box.dead_count(),
            "replays_waiting": box.replay_waiting(),
            "limit": limit,
            "dead_letters": [_item(r) for r in rows],
        }


def _item(row: DeadRow) -> dict[str, Any]:
    subject = ""
    try:
        env = row.envelope
        subject = env.subject
        preview = msgspec.json.encode(env.body).decode()
    except (msgspec.DecodeError, msgspec.ValidationError):
        preview = row.body[: PREVIEW_CHARS * 4].decode("utf-8", "replace")
    if len(preview) > PREVIEW_CHARS:
        preview = preview[: PREVIEW_CHARS - 3] + "..."
    return {
        "seq": row.seq,
        "route": row.route,
        "target": row.target,
        "stage": row.stage,
        "reason": row.reason,
        "failed_at": row.failed_at,
        "attempts": row.attempts,
        "kind": row.kind,
        "env_id": row.env_id,
        "subject": subject,
        "preview": preview,
    }


def _rows(box: Outbox, seqs: Sequence[int]) -> tuple[list[DeadRow], list[int]]:
    """The dead letters with these seqs, and the seqs not found; Refused when none is."""
    rows = box.dead_rows_by_seq(seqs)
    found = {r.seq for r in rows}
    missing = [s for s in seqs if s not in found]
    if not rows:
        raise Refused(
            400,
            f"no dead letter with seq {ranges(missing)} (replayed or purged already?)",
            missing=missing,
        )
    return rows, missing


def replay(path: Path, seqs: Sequence[int], routes: frozenset[str]) -> dict[str, Any]:
    """Queue these dead letters for the running router to replay."""
    with _store(path) as box:
        rows, missing = _rows(box, seqs)
        queued = box.queue_replay(rows)
        gone = sorted({r.route for r in rows} - routes)
        warnings = [
            f"route {name!r} is no longer in the routing table: its replays are dead-lettered again"
            for name in gone
        ]
        return {"queued": queued, "missing": missing, "warnings": warnings}


def purge(path: Path, seqs: Sequence[int]) -> dict[str, Any]:
    """Delete these dead letters for good."""
    with _store(path) as box:
        rows, missing = _rows(box, seqs)
        found = [r.seq for r in rows]
        purged = 0
        for i in range(0, len(found), PURGE_CHUNK):
            purged += box.purge(ids=found[i : i + PURGE_CHUNK])
        return {"purged": purged, "missing": missing}


def parse_seqs(value: Any) -> list[int]:
    """``{"seqs": [...]}``'s value: positive whole numbers, without repeats, in order."""
    if not isinstance(value, list) or not value:
        raise Refused(400, 'name the dead letters: {"seqs": [12, 13]}')
    if len(value) > MAX_SEQS:
        raise Refused(400, f"at most {MAX_SEQS} seqs at once (got {len(value)})")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v <= 0]
    if bad:
        raise Refused(400, f"seqs are positive whole numbers (got {bad[0]!r})")
    return list(dict.fromkeys(value))


# --- explain and the configuration ------------------------------------------------------


def explain(loaded: Loaded, envelope: Any) -> dict[str, Any]:
    """What the loaded table makes of an envelope (given as a JSON object or its text).

    The table is compiled afresh from the loaded configuration, as ``junction explain``
    compiles it: the running router's transforms keep state (``on_change``, ``throttle``)
    that an explain must neither see nor change.
    """
    from broker._envelope import decode

    if isinstance(envelope, str):
        text = envelope
    elif isinstance(envelope, dict):
        text = msgspec.json.encode(envelope).decode()
    else:
        raise Refused(
            400, 'send {"envelope": {...}}: the envelope as a JSON object', example=EXAMPLE
        )
    try:
        env = decode(text)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise Refused(400, f"not an envelope: {err}", example=EXAMPLE) from None
    try:
        table = compile_table(loaded.config, loaded.plugins.transforms)
    except JunctionError as err:
        raise Refused(500, f"the loaded routing table does not compile again: {err}") from None
    verdicts = explain_mod.explain(table, env)
    return {
        "matched": sum(v.matched for v in verdicts),
        "routes": [_verdict(v) for v in verdicts],
        "text": explain_mod.render(verdicts),
    }


def _verdict(v: explain_mod.RouteVerdict) -> dict[str, Any]:
    out = dataclasses.asdict(v)
    out["steps"] = [{"step": name, "output": value} for name, value in v.steps]
    return out


def config_text(loaded: Loaded) -> dict[str, Any]:
    """The configuration file's text as written, every secret the bridge knows redacted
    (``${NAME}`` references are not secrets and stay)."""
    path = Path(loaded.config.path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise Refused(503, f"cannot read {path}: {reason}") from None
    return {"path": str(path), "text": redact(text)}
