"""Where ``junction dlq`` finds the dead letters: CONFIG's outbox, opened without creating it.

Only ``[junction] state_dir`` and ``[junction.outbox] file`` are taken from CONFIG: the
rest of the file (adapters, routes) may be broken or use plugins this process lacks,
which is exactly when dead letters need looking at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker import _operator_view as operator_view
from broker import _state_lock as state_lock
from broker._dlq_format import err
from broker._errors import JunctionError
from broker._outbox import Outbox, OutboxError

EXIT_OK, EXIT_FAIL = 0, 1


@dataclass(frozen=True)
class Located:
    """Where CONFIG's bridge keeps its outbox, and the route names CONFIG declares."""

    config: str
    state_dir: Path
    path: Path
    routes: frozenset[str]


def locate(config_path: str) -> Located:
    """Read ``[junction] state_dir`` and ``[junction.outbox] file`` from ``config_path``.

    Raises ConfigError (exit 2) for problems in the file as a whole (unreadable, bad TOML)
    or in its ``[junction]`` table; the rest of the file is not looked at
    (:mod:`broker._operator_view`).
    """
    view = operator_view.read(config_path)
    state_dir = Path(view.junction.state_dir)
    return Located(
        config=config_path,
        state_dir=state_dir,
        path=view.junction.outbox_path(),
        routes=view.route_names,
    )


def open_store(where: Located) -> Outbox | None:
    """The outbox, or None (said on stderr) when there is none: never creates one."""
    try:
        exists = where.path.is_file()
    except PermissionError:
        err(f"cannot look into {where.state_dir}: permission denied (run as the bridge's user)")
        return None
    if not exists:
        note = ""
        if not where.state_dir.is_absolute():
            note = f"; state_dir {str(where.state_dir)!r} is relative to the working directory"
        err(
            f"no outbox at {where.path.resolve()} (the bridge has not run with this "
            f"state_dir){note}"
        )
        return None
    return Outbox(where.path, checkpoints=False)  # the bridge checkpoints its own WAL


def bridge_pid(state_dir: Path) -> int | None:
    """The pid of the bridge holding ``state_dir``, or None when none runs with it."""
    try:
        return state_lock.holder(state_dir)
    except JunctionError:
        return None


def with_store(config: str, body: Callable[[Located, Outbox], int]) -> int:
    """Locate and open CONFIG's outbox, run ``body``, close it; store errors exit 1."""
    where = locate(config)
    try:
        box = open_store(where)
        if box is None:
            return EXIT_FAIL
        try:
            return body(where, box)
        finally:
            box.close()
    except (OutboxError, sqlite3.Error) as error:
        text = str(error) if isinstance(error, OutboxError) else f"outbox {where.path}: {error}"
        err(text)
        return EXIT_FAIL
