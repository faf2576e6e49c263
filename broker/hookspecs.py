"""The plugin contract: every hook Junction calls, and what an adapter must do.

Built-in adapters and transforms register through these same hooks, so a third-party
plugin can do anything a built-in can.  A plugin is a module (or object) with
functions marked ``@hookimpl`` whose names are the specs below; it is found through
the ``junction.plugins`` entry-point group::

    # pyproject.toml of a plugin distribution
    [project.entry-points."junction.plugins"]
    my_plugin = "my_package.plugin"

A plugin imports only what ``broker`` itself exports (``from broker import ...``, the
names in ``broker.__all__``); every other module is internal and may change.

Hooks
-----
Hooks are synchronous and must not block: they run in the router, on the trio loop
the adapters share (a hook that blocks stalls every adapter on it).  Observer
hooks are called once per batch, not per envelope, and not at all when no plugin
implements them.

Transforms and reload
---------------------
A transform's ``factory(options)`` is called once per route that names it, when the
routing table is compiled: at start-up, and again for *every* route on each hot reload
(the whole table is compiled anew and swapped in one step).  So whatever a transform
keeps in its closure (a last value, a hysteresis state) starts over after a reload;
envelopes already routed are not replayed through it.  Transforms run on the router's
loop: pure, quick and non-blocking; raising dead-letters the envelope, never the route.

The adapter contract
--------------------
An adapter type is an :class:`AdapterType`: its config struct (a subclass of
``AdapterConfig``, decoded from ``[adapters.<name>]`` with its TOML path in every error)
and a factory ``(name, config, context) -> Adapter``.  The factory must only build: no
I/O, no threads; raising refuses the config (at start-up: the bridge does not start; on
reload: that adapter alone is reported failed).

Lifecycle.  Each adapter name has one actor (a pykka actor served on a trio loop, see
the README's "Architecture") that owns the adapter's mailbox -- its per-route bounded
queues -- and runs one *instance* at a time.  For each instance it starts two trio tasks:
``run()`` (produce: connect, read, ``emit``/``publish``) and, unless
``accepts_envelopes`` is False, a delivery task that takes batches of at most
``max_batch`` envelopes of one route from the mailbox and awaits ``deliver(route,
batch)``.  ``gather_s`` lets envelopes gather that long after an idle mailbox wakes
(a paced sink).  If either task raises, the instance ends: ``aclose()`` runs, what it
had deferred fails as transient, and after a capped, jittered back-off a fresh instance
(the factory again, the same context) takes the same mailbox -- nothing queued is lost.
At shutdown ``quiesce()`` is called first (return True to stop emitting yourself, False
to have ``run()`` cancelled) while deliveries go on; an instance restarted during the
drain gets ``quiesce()`` *before* ``run()``, so keep a flag, not only a scope to cancel.
Then the instance is cancelled and ``aclose()`` awaited (at most 10 s).  The factory of a
restart runs on a worker thread; the first instance's on the caller's thread.

Settling what is delivered.  ``deliver`` returning counts its batch delivered, except
the envelopes it settled otherwise during the call: ``fail(route, envs, reason,
permanent=True)`` dead-letters (``permanent=False``: a ``persist`` route retries under
its redelivery policy), ``defer(route, envs)`` says the peer acknowledges later, and
``ack(route, envs)`` then counts them delivered.  Raising counts the unsettled rest as a
transient failure and restarts the instance.  A ``persist`` route deletes an envelope
from the outbox only when it is delivered, so ack only what the peer confirmed.

Settling what a source emitted.  A source whose peer redelivers what it does not
acknowledge (a JetStream consumer) passes ``on_settled`` to ``emit``/``publish``: the
router calls it once every copy its routes made of that batch is delivered, committed to a
``persist`` outbox, dead-lettered or dropped by its route's policy (or matched no route) --
then the source acknowledges to its peer.  It runs on the router's loop: quick,
non-blocking, thread-safe (see ``broker/_receipts.py``).

Threading rules.  Every method is called on the adapter's trio loop, which it shares
with the router and the other adapters unless its config says ``own_thread = true``:
never block it (sockets through trio, files and CPU-heavy work through
``trio.to_thread``).  ``emit`` never blocks; ``publish`` awaits room in the router's
mailbox -- how a source that can pause its peer passes back-pressure on.  The context's
``status`` is what ``junction status`` shows: set its state as the link changes.
Secrets in the config are registered for log redaction by the config layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from broker._adapter import Adapter, AdapterContext
    from broker._config import AdapterConfig
    from broker._envelope import Envelope

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
