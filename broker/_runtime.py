"""Running a configuration: build the actors, start them, stop them without loss.

The concurrency model, once
===========================
Junction is a handful of pykka actors served on trio loops.  Every adapter and the router
is an actor (:class:`~broker._loop_actor.LoopActor`): ``tell``, ``ask``, ``stop`` and the
pykka registry work as for any pykka actor, but no actor has a thread of its own -- its
mailbox is served by a task on a :class:`~broker._loop.SharedLoop`.  The router and every
adapter share one loop (thread ``junction-loop``); an adapter whose config says
``own_thread = true`` is served on a loop of its own (thread ``adapter-<name>``).

- **One way in.**  A message reaches an actor through its mailbox and nothing else.  The
  router's mailbox takes :class:`~broker._messages.Inbound` batches, acknowledgements and
  control messages; an adapter's mailbox is its :class:`~broker._inlet.Inlet`: control
  messages plus one bounded queue per route.  A put into a mailbox wakes the task that
  waits on it, once per idle period.
- **One back-pressure mechanism: bounded mailboxes.**  An adapter's is bounded per route
  and the route says what a full one does (:mod:`broker._inlet`); the router's is bounded
  by a high-water mark.  A sender that must not drop waits for room without blocking the
  loop: the router for a full ``block`` queue, a source for the router's mailbox
  (:meth:`~broker._messages.Backlog.wait_room`).
- **One place tracks an envelope in flight**: the target's inlet, from ``take`` (the batch
  being delivered; ``defer`` keeps an envelope owed until ``ack`` or ``fail``) until the
  router counts it delivered, failed or dead-lettered.  A stopped instance hands back what it
  still owes from there.  (A ``persist`` route's outbox also knows which row holds each
  envelope it has in memory: that is where the rows are, not a second record of flight.)
- **No thread without data.**  Restarts (each adapter actor supervises its own instance,
  with one :class:`~broker._backoff.Backoff`) and the router's tick are trio tasks.  The
  threads a bridge runs are the loops above, the main thread (signals, start and stop),
  the outbox's checkpointer, trio's worker threads for blocking calls (Allxon signatures,
  file writes, MQTT connects), an adapter's own I/O thread where its client library needs
  one (NATS: nats-py's asyncio loop, crossed once per batch) and the operations endpoint's
  loop (``ops-http``, with at most two worker threads taking snapshots, and at most two
  more for the web console: one snapshot at a time, dead-letter actions, explain).

Start-up order: plugins -> config -> routing table -> the operations endpoint's socket
(bound, not yet served: a taken port stops here) -> inlets -> the shared loop -> router
(served on that loop) -> the router's tick -> adapters -> the endpoint served.  Shutdown
reverses it and drains first: sources stop producing, the router finishes what it holds,
targets empty their queues, all within the grace period; whatever is still queued after
that is logged by route and counted; the loop closes last.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka
import trio

from broker import _config as config_mod
from broker import _plugins as plugins_mod
from broker._adapter import AdapterContext, AdapterStatus
from broker._adapter_actor import AdapterActor
from broker._backoff import Backoff
from broker._config import Config
from broker._console import ConsoleSource, console_app
from broker._envelope import Envelope
from broker._errors import ConfigError, ConfigProblem
from broker._heap import TRIM_EVERY_S, release_free_heap, use_one_arena
from broker._inlet import Inlet
from broker._loop import SharedLoop
from broker._messages import Backlog, Leftovers, Quiesce, Snapshot, Tick
from broker._ops_http import OpsServer
from broker._outbox import Outbox
from broker._router import Router
from broker._routing import RoutingTable, compile_table

if TYPE_CHECKING:
    from broker._reload import ReloadReport

log = logging.getLogger("broker.runtime")

#: Seconds between the router's ticks (reply deadlines, redelivery, dead-letter replay).
TICK_S = 0.25
#: An adapter instance that ran this long before it crashed restarts from the first delay.
STABLE_AFTER_S = 60.0


@dataclass
class Loaded:
    """A validated configuration with the plugins and compiled table it needs."""

    config: Config
    plugins: plugins_mod.Plugins
    table: RoutingTable
    #: Keys an embedding program adds to the web console's snapshot (the demo: the latest
    #: values); called in a worker thread of the operations endpoint, so it must not block.
    console_extra: Callable[[], dict[str, Any]] | None = None


def load(path: str, extra_plugins: Sequence[str] = ()) -> Loaded:
    """Load plugins, then the config and routes; raises ConfigError / PluginError.

    ``extra_plugins`` names modules to register beside the built-ins (tests, embedding).
    """
    disabled = _disabled_plugins(path)
    plugins = plugins_mod.load(
        disabled=disabled, builtins=(*plugins_mod.BUILTIN_MODULES, *extra_plugins)
    )
    types = {name: t.config for name, t in plugins.adapter_types.items()}
    problems: list[ConfigProblem] = []
    config = config_mod.load(path, types, problems)
    table = compile_table(config, plugins.transforms, problems)
    return Loaded(config, plugins, table)


def _disabled_plugins(path: str) -> list[str]:
    """Read ``[junction] disabled_plugins`` before plugins load (full checks come later)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # config.load reports it properly
    table = data.get("junction", {})
    value = table.get("disabled_plugins", []) if isinstance(table, dict) else []
    return [str(v) for v in value] if isinstance(value, list) else []


@dataclass
class StopReport:
    """What shutdown left undelivered (per ``adapter/route``) and the final counters."""

    left: dict[str, int]
    snapshot: dict[str, Any]
    #: Outbox rows of persist routes per ``adapter/route``, delivered after the next start.
    kept: dict[str, int] = field(default_factory=dict)


@dataclass
class Runtime:
    """The running bridge for one configuration."""

    loaded: Loaded
    statuses: dict[str, AdapterStatus] = field(default_factory=dict)
    inlets: dict[str, Inlet] = field(default_factory=dict)
    backlog: Backlog = field(default_factory=Backlog)
    router: pykka.ActorRef[Any] | None = None
    #: Each adapter's actor, by name (see broker._adapter_actor.AdapterActor).
    adapters: dict[str, pykka.ActorRef[Any]] = field(default_factory=dict)
    #: The loops of ``own_thread`` adapters, by name.
    own_loops: dict[str, SharedLoop] = field(default_factory=dict)
    #: The trio loop the adapters share (see broker._loop).
    loop: SharedLoop | None = None
    started_at: float = 0.0
    #: The durable outbox and dead-letter store (``<state_dir>/<[junction.outbox] file>``).
    outbox: Outbox | None = None
    #: The operations HTTP endpoint, when ``[junction.http] listen`` is set.
    ops: OpsServer | None = None
    #: Each adapter's context, so a reload can hand running adapters new settings.
    contexts: dict[str, AdapterContext] = field(default_factory=dict)
    _tick_scope: trio.CancelScope | None = None
    _tick_ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        cfg = self.loaded.config
        settings = cfg.junction
        use_one_arena()  # before the loops' threads exist: see broker._heap
        state_dir = Path(settings.state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # checked at load; this is what changed on disk since
            problem = f"cannot be created: {err.strerror or err}"
            raise ConfigError(
                [ConfigProblem(str(cfg.path), "junction.state_dir", problem, str(state_dir), True)]
            ) from None
        for warning in cfg.warnings:
            log.warning("%s", warning)
        http = settings.http
        if http.listen:
            # Bound first, so a taken port stops start-up before any adapter connects (a
            # unit restarting on failure would otherwise connect, send and exit each time);
            # served last (below), so /readyz and /metrics never see a half-built runtime.
            # A bind failure raises ConfigError; the caller's stop() cleans up.
            self.ops = OpsServer(
                self.snapshot,
                http.listen,
                http.ready_max_pending_age_s,
                origin=str(cfg.path),
                token=http.token,
                max_connections=http.max_connections,
                request_timeout_s=http.request_timeout_s,
                idle_timeout_s=http.idle_timeout_s,
                console=console_app(
                    ConsoleSource(self.snapshot, self._loaded, self.loaded.console_extra)
                ),
            )
            self.ops.bind()
        if settings.switch_interval_ms > 0:
            sys.setswitchinterval(settings.switch_interval_ms / 1000)
        for name, acfg in cfg.adapters.items():
            self.inlets[name] = Inlet(name, settings.block_timeout_s)
            self.statuses[name] = AdapterStatus(name=name, type=acfg.type, required=acfg.required)
        self.outbox = Outbox(
            settings.outbox_path(),
            settings.outbox.max_rows,
            settings.outbox.max_bytes,
            max_dead=settings.outbox.max_dead_letters,
        )
        self.loop = SharedLoop()
        self.loop.start()
        self.router = Router.start(
            self.loaded.table,
            self.inlets,
            settings,
            self.loaded.plugins.hook,
            self.backlog,
            outbox=self.outbox,
            persist_kinds=self._persist_kinds(),
            loop=self.loop,
        )
        self.loop.spawn(self._tick, "router-tick")
        for name in cfg.adapters:
            self.start_adapter(name)
        # what start-up built (modules, plugins, the compiled table) lives as long as the
        # process: out of the collector's sight, a full collection scans only what came after
        # (measured in bench/e2e.py: the longest pause at 1,000 msg/s went from 42 to 8 ms)
        gc.freeze()
        self.started_at = time.time()
        log.info(
            "junction started: %d adapters, %d routes (config %s)",
            len(cfg.adapters),
            len(self.loaded.table.routes),
            cfg.path,
        )
        if self.ops is not None:
            self.ops.serve()
            log.info(
                "operations endpoint on %s (/metrics /healthz /readyz /status; console at /)",
                self.ops.url,
            )

    def start_adapter(self, name: str) -> None:
        """Start the actor of adapter ``name`` (its inlet and status exist already).

        Its first instance is built here, so a constructor that refuses its config raises
        to the caller (start-up, reload); the actor builds the later ones itself.
        """
        cfg = self.loaded.config
        acfg = cfg.adapters[name]
        atype = self.loaded.plugins.adapter_types[acfg.type]
        assert self.router is not None and self.loop is not None
        ctx = AdapterContext(
            _to_router=self.router.tell,
            _inlet=self.inlets[name],
            settings=cfg.junction,
            status=self.statuses[name],
            backlog=self.backlog,
            state_dir=Path(cfg.junction.state_dir),
            routes_for=self._routes_for,
        )
        self.contexts[name] = ctx

        def make() -> Any:
            return atype.factory(name, acfg, ctx)

        first = make()
        loop = self.loop
        if acfg.own_thread:
            loop = self.own_loops[name] = SharedLoop(f"adapter-{name}")
            loop.start()
        settings = cfg.junction
        backoff = Backoff(
            settings.restart_backoff_s, settings.restart_backoff_max_s, STABLE_AFTER_S
        )
        running = threading.Event()
        self.adapters[name] = AdapterActor.start(
            name,
            make,
            self.inlets[name],
            self.statuses[name],
            backoff,
            loop=loop,
            first=first,
            running=running,
        )
        if not running.wait(10):
            log.error("adapter %s did not start within 10 s", name)

    def stop_adapter(self, name: str) -> None:
        """Stop adapter ``name``'s actor: its instance closes and hands back what it owed;
        its inlet (and what is queued there) stays with the runtime."""
        ref = self.adapters.pop(name, None)
        if ref is not None:
            try:
                ref.stop(timeout=15)
            except pykka.Timeout:
                log.error("adapter %s did not stop within 15 s", name)
        loop = self.own_loops.pop(name, None)
        if loop is not None:
            loop.close()

    def _quiesce_adapters(self) -> None:
        """Every adapter stops producing; targets go on draining their queues."""
        for name, ref in list(self.adapters.items()):
            try:
                ref.ask(Quiesce(), timeout=10)
            except (pykka.ActorDeadError, pykka.Timeout):
                log.warning("adapter %s did not confirm it stopped producing", name)

    def _persist_kinds(self) -> dict[str, frozenset[str]]:
        """Per adapter name, the kinds its type keeps durable by default."""
        types = self.loaded.plugins.adapter_types
        return {
            name: types[acfg.type].persist_kinds
            for name, acfg in self.loaded.config.adapters.items()
            if acfg.type in types
        }

    def _loaded(self) -> Loaded:
        """The configuration in effect (a reload replaces it), for the web console."""
        return self.loaded

    def _routes_for(self, env: Envelope) -> list[str]:
        return [r.name for r in self.loaded.table.match(env)]

    async def _tick(self) -> None:
        """The router's clock, as a task on its loop: a Tick into its mailbox, until
        shutdown ends it (:meth:`_stop_ticking`).  Every ``TRIM_EVERY_S`` it also hands the
        heap's free pages back to the system (:mod:`broker._heap`: after a backlog is
        delivered, the resident set comes down again)."""
        next_trim = trio.current_time() + TRIM_EVERY_S
        try:
            with trio.CancelScope() as self._tick_scope:
                while True:
                    await trio.sleep(TICK_S)
                    if trio.current_time() >= next_trim:
                        release_free_heap()
                        next_trim = trio.current_time() + TRIM_EVERY_S
                    router = self.router
                    if router is None:
                        return
                    try:
                        router.tell(Tick())
                    except pykka.ActorDeadError:
                        return
        finally:
            self._tick_ended.set()

    def _stop_ticking(self) -> None:
        """End the tick (on its loop) and wait until it has: no replay or redelivery is
        started while shutdown empties the inlets one after the other."""
        scope, loop = self._tick_scope, self.loop
        if scope is None or loop is None or not loop.call_soon(scope.cancel):
            return
        if not self._tick_ended.wait(5):
            log.error("the router's tick did not stop within 5 s")

    def reload(self, path: str | None = None) -> ReloadReport:
        """Apply a changed config file (default: the running one's) live; see broker._reload.

        An invalid file raises ConfigError / PluginError and changes nothing.
        """
        from broker import _reload as reload_mod  # it builds on this module

        return reload_mod.reload(self, path)

    def snapshot(self) -> dict[str, Any]:
        """The live picture: adapters, routes and their counters, queue depths."""
        routes: dict[str, Any] = {"router_error": "the router is not running"}
        if self.router is not None and self.router.is_alive():
            try:
                answer: Any = self.router.ask(Snapshot(), timeout=5)
                routes = dict(answer)
            except pykka.Timeout:
                routes = {"router_error": "the router did not answer within 5 s"}
            except pykka.ActorDeadError:
                pass
        return {
            "uptime_s": round(time.time() - self.started_at, 1) if self.started_at else 0,
            "adapters": {
                n: {**vars(s), "gauges": dict(s.gauges)} for n, s in self.statuses.items()
            },
            **routes,
        }

    def is_running(self) -> bool:
        """True from :meth:`start` until :meth:`stop` has stopped the router."""
        return self.router is not None and self.router.is_alive()

    def pending(self) -> int:
        """Envelopes not yet delivered: held by the router or queued for a target."""
        return self.backlog.value + sum(i.pending() for i in self.inlets.values())

    def stop(self, grace_s: float | None = None) -> StopReport:
        """Stop everything, draining queues for up to ``grace_s``; says what was left."""
        grace = self.loaded.config.junction.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        if self.ops is not None:
            self.ops.stop()  # first: nothing scrapes a runtime that is shutting down
        self._quiesce_adapters()
        quiet = 0
        while time.monotonic() < deadline:
            if self.router is not None and self.router.is_alive():
                self.router.ask(Snapshot())  # everything sent before this is now routed
            if self.pending() == 0:
                quiet += 1
                if quiet >= 2:
                    break
            else:
                quiet = 0
            time.sleep(0.02)
        self._stop_ticking()
        for name in list(self.adapters):
            self.stop_adapter(name)
        left, _ = settle_leftovers(self.router, self.inlets, grace)
        final = self.snapshot()
        kept = {k: n for k, n in final.get("persist_queues", {}).items() if n > 0}
        if left:
            log.error(
                "shutdown: %d envelopes were still queued after the %.1f s grace period; "
                "they are in the dead-letter store (junction dlq list): %s",
                sum(left.values()),
                grace,
                ", ".join(f"{k}={v}" for k, v in sorted(left.items())),
            )
        if kept:
            log.warning(
                "shutdown: %d envelopes of persist routes wait in the outbox for the next "
                "start: %s",
                sum(kept.values()),
                ", ".join(f"{k}={v}" for k, v in sorted(kept.items())),
            )
        if self.router is not None and self.router.is_alive():
            self.router.stop()
        if self.loop is not None:  # last: the router is served on it
            self.loop.close()
        if self.outbox is not None:
            self.outbox.close()
        log.info("junction stopped: %s", _summary(final))
        return StopReport(left=left, snapshot=final, kept=kept)


def settle_leftovers(
    router: pykka.ActorRef[Any] | None,
    inlets: dict[str, Inlet],
    grace: float,
    remove: bool = False,
) -> tuple[dict[str, int], dict[str, int]]:
    """Empty stopped targets' queues (in the router): outbox rows wait for a
    later run, the rest is dead-lettered. ``remove`` also has the router forget the
    inlets. Returns (dead-lettered, kept) per ``adapter/queue``."""
    left: dict[str, int] = {}
    kept: dict[str, int] = {}
    reason = f"shutdown: not delivered within the {grace:.1f} s grace period"
    for name, inlet in inlets.items():
        if router is None or not router.is_alive():
            for queue, envs in inlet.drain_all().items():
                left[f"{name}/{queue}"] = len(envs)
            continue
        answer: Any = router.ask(Leftovers(name, reason, remove=remove), timeout=30)
        held, dead = answer
        kept.update({f"{name}/{q}": n for q, n in held.items()})
        left.update({f"{name}/{q}": n for q, n in dead.items()})
    return left, kept


#: The ledger's words the stop line names, in the order the views show them.
_SUMMARY_WORDS = ("received", "delivered", "pending", "dead_lettered", "dropped", "filtered")


def _summary(snapshot: dict[str, Any]) -> str:
    """One line per stop: each route's ledger, in its own words (broker._ledger)."""
    parts = []
    for name, c in snapshot.get("routes", {}).items():
        ledger = c.get("ledger") or {}
        words = " ".join(f"{w}={ledger.get(w, 0)}" for w in _SUMMARY_WORDS)
        parts.append(f"{name} {words}" + ("" if ledger.get("balanced", True) else " NOT BALANCED"))
    return "; ".join(parts) or "no routes"
