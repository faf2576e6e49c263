"""The plugin contract: every hook Junction calls, typed and documented.

Built-in adapters and transforms register through these same hooks, so a third-party
plugin can do anything a built-in can.  A plugin is a module (or object) with
functions marked ``@hookimpl`` whose names are the specs below; it is found through
the ``junction.plugins`` entry-point group::

    # pyproject.toml of a plugin distribution
    [project.entry-points."junction.plugins"]
    my_plugin = "my_package.plugin"

Hooks are synchronous and must not block: they run in the router, on the trio loop
the adapters share (a hook that blocks stalls every adapter on it).  Observer
hooks are called once per batch, not per envelope, and not at all when no plugin
implements them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from broker.adapter import Adapter, AdapterContext
    from broker.config import AdapterConfig
    from broker.envelope import Envelope

PROJECT = "junction"
ENTRY_POINT_GROUP = "junction.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

TransformFn = Callable[["Envelope"], "Envelope | Sequence[Envelope] | None"]
"""A transform takes one envelope and returns it (changed or not), several, or None
to filter it out (counted as dropped with reason ``filtered``).  Raising dead-letters
the envelope; the router keeps running."""


@dataclass(frozen=True)
class AdapterType:
    """An adapter type: the ``type`` name in config, its config struct and its class."""

    name: str
    config: type[AdapterConfig]
    factory: Callable[[str, Any, AdapterContext], Adapter]
    description: str = ""
    plugin: str = field(default="", compare=False)
    #: Envelope kinds a route to this adapter keeps in the durable outbox unless the route
    #: says otherwise (``overflow``): data whose loss matters, not latest-value samples.
    persist_kinds: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Transform:
    """A named transform.  ``factory(options)`` is called once per route that uses it,
    with the route's ``options`` table, and returns the function applied to each
    envelope; it may raise ValueError for bad options (reported as a config error)."""

    name: str
    factory: Callable[[dict[str, Any]], TransformFn]
    description: str = ""
    plugin: str = field(default="", compare=False)


def transform(name: str, description: str = "") -> Callable[[TransformFn], Transform]:
    """Decorator for a stateless transform that takes no options."""

    def wrap(fn: TransformFn) -> Transform:
        def factory(options: dict[str, Any]) -> TransformFn:
            if options:
                raise ValueError(f"takes no options, got {sorted(options)}")
            return fn

        return Transform(name=name, factory=factory, description=description or (fn.__doc__ or ""))

    return wrap


@dataclass(frozen=True)
class Command:
    """A ``junction`` subcommand a plugin adds: ``junction NAME ...`` (the demo bundle adds
    ``demo`` and ``sim``).

    ``configure(parser)`` adds the command's arguments to the sub-parser made for it;
    ``run(args)`` runs it with the parsed arguments and returns the exit status (0 done,
    1 failed, 2 usage or configuration error). ``add_help=False`` leaves ``-h`` to ``run``,
    for a command that passes its arguments on (``junction sim PEER --help``)."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    add_help: bool = True
    plugin: str = field(default="", compare=False)


@hookspec
def junction_adapter_types() -> Sequence[AdapterType]:  # type: ignore[empty-body]
    """Return the adapter types this plugin provides."""


@hookspec
def junction_transforms() -> Sequence[Transform]:  # type: ignore[empty-body]
    """Return the transforms this plugin provides."""


@hookspec
def junction_commands() -> Sequence[Command]:  # type: ignore[empty-body]
    """Return the ``junction`` subcommands this plugin adds.

    Called on every ``junction`` invocation, before its arguments are parsed: keep the
    module and this hook cheap, and import what a command needs inside its ``run``.  A
    name that is already a command (its own or another plugin's) is a plugin error.
    """


@hookspec
def junction_envelopes_received(adapter: str, envelopes: Sequence[Envelope]) -> None:
    """Observe a batch the router received from ``adapter`` (before matching)."""


@hookspec
def junction_envelopes_delivered(route: str, target: str, count: int) -> None:
    """Observe that ``target`` confirmed ``count`` envelopes of ``route`` as sent."""


@hookspec
def junction_envelope_dropped(route: str, envelope: Envelope, reason: str) -> None:
    """Observe an envelope that was dropped or dead-lettered, with the reason."""
