"""What the operator commands read of a config file: ``[junction]`` and the route names.

``junction status``, ``junction reload`` and ``junction dlq`` talk to a bridge that is
already running (or to the state it left): they need its state directory, its operations
endpoint and the route names, never an adapter's settings. So only the ``[junction]``
table (with ``[junction.http]`` and ``[junction.outbox]``) is expanded and checked here:
an operator's shell without ``ALPHAX_TOKEN`` exported, or without the plugin an adapter
needs, can still ask a bridge for its status, reload it, or look at its dead letters.
Problems elsewhere in the file are left to ``junction check`` (and to the bridge itself,
which checks a reloaded file with its own environment).

Nothing is created here: a state directory the operator cannot write is fine to read.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from typing import Any

from broker import _config as config_mod
from broker._config import JunctionSettings
from broker._errors import ConfigError, ConfigProblem


@dataclass(frozen=True)
class OperatorView:
    """The parts of one config file the operator commands use."""

    path: str
    junction: JunctionSettings
    #: The ``name`` of each ``[[routes]]`` entry (for ``dlq --route`` suggestions).
    route_names: frozenset[str]
    #: Why ``[junction.http] token`` did not resolve in this shell (its variable unset):
    #: only ``junction status`` needs the token, so only it refuses the file for this.
    token_problems: tuple[ConfigProblem, ...] = ()


def read(path: str | os.PathLike[str]) -> OperatorView:
    """Read ``[junction]`` and the route names of ``path``; raises ConfigError (exit 2)
    for an unreadable file, bad TOML, or a problem inside ``[junction]``."""
    file = str(path)
    text = config_mod.read_text(file)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([ConfigProblem(file, "", f"TOML syntax error: {err}")]) from err
    table = data.get("junction", {})
    if not isinstance(table, dict):
        raise ConfigError([ConfigProblem(file, "junction", "must be a table", table, True)])
    # The whole file is expanded so that every secret this shell can resolve is registered
    # for redaction (``dlq show`` prints envelopes); only [junction]'s problems count.
    elsewhere: list[ConfigProblem] = []  # not this command's business: dropped
    config_mod._expand({k: v for k, v in data.items() if k != "junction"}, "", file, elsewhere)
    problems: list[ConfigProblem] = []
    table = config_mod._expand(table, "junction", file, problems)
    token_problems = tuple(p for p in problems if p.path == "junction.http.token")
    problems = [p for p in problems if p not in token_problems]
    settings = config_mod._convert(table, JunctionSettings, "junction", file, problems)
    if settings is None or problems:
        raise ConfigError(problems)
    return OperatorView(
        path=file,
        junction=settings,
        route_names=_route_names(data),
        token_problems=token_problems,
    )


def _route_names(data: dict[str, Any]) -> frozenset[str]:
    routes = data.get("routes", [])
    if not isinstance(routes, list):
        return frozenset()
    return frozenset(
        r["name"] for r in routes if isinstance(r, dict) and isinstance(r.get("name"), str)
    )
