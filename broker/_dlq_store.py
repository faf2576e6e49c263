"""Where ``junction dlq`` finds the dead letters: CONFIG's outbox, opened without creating it.

Only ``[junction] state_dir`` and ``[junction.outbox] file`` are taken from CONFIG: the
rest of the file (adapters, routes) may be broken or use plugins this process lacks,
which is exactly when dead letters need looking at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker import _config as config_mod
from broker import _reload as reload_mod
from broker._dlq_format import err
from broker._errors import ConfigError, ConfigProblem
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
    or in its ``[junction]`` table; problems elsewhere are ignored here.
    """
    problems: list[ConfigProblem] = []
    try:
        cfg = config_mod.load(config_path, {}, problems)
    except ConfigError as error:
        raise ConfigError(_ours(error.problems) or error.problems) from error
    ours = _ours(problems)
    if ours:
        raise ConfigError(ours)
    settings = cfg.junction
    state_dir = Path(settings.state_dir)
    return Located(
        config=config_path,
        state_dir=state_dir,
        path=state_dir / settings.outbox.file,
        routes=frozenset(r.name for r in cfg.routes),
    )


def _ours(problems: Sequence[ConfigProblem]) -> list[ConfigProblem]:
    """The problems that stop this command: the file's own and those in ``[junction]``."""
    return [p for p in problems if p.path in ("", "junction") or p.path.startswith("junction.")]


def open_store(where: Located) -> Outbox | None:
    """The outbox, or None (said on stderr) when there is none: never creates one."""
    if not where.path.is_file():
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
    """The pid of a bridge running with ``state_dir`` (its pid file names a live process)."""
    try:
        return reload_mod.running_pid(state_dir)
    except reload_mod.BridgeUnreachable:
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
