"""Running a configuration: build the actors, start them, stop them without loss.

Start-up order: plugins -> config -> routing table -> inlets -> the shared loop -> router
(served on that loop) -> supervisor -> adapters.  Shutdown reverses it and drains first:
sources stop producing, the router finishes what it holds, targets empty their queues,
all within the grace period; whatever is still queued after that is logged by route and
counted; the loop closes last.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka

from broker import config as config_mod
from broker import plugins as plugins_mod
from broker.adapter import Adapter, AdapterContext, AdapterStatus
from broker.config import Config
from broker.envelope import Envelope
from broker.errors import ConfigProblem
from broker.inlet import Inlet
from broker.loop import SharedLoop
from broker.messages import Backlog, Leftovers, Snapshot, Tick
from broker.ops_http import OpsServer
from broker.outbox import Outbox
from broker.router import Router
from broker.routing import RoutingTable, compile_table
from broker.supervisor import Supervisor

if TYPE_CHECKING:
    from broker.reload import ReloadReport

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A validated configuration with the plugins and compiled table it needs."""

    config: Config
    plugins: plugins_mod.Plugins
    table: RoutingTable


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
    except (OSError, tomllib.TOMLDecodeError):
        return []  # config.load reports it properly
    value = data.get("junction", {}).get("disabled_plugins", [])
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
    supervisor: pykka.ActorRef[Any] | None = None
    #: The trio loop the adapters share (see broker.loop).
    loop: SharedLoop | None = None
    started_at: float = 0.0
    #: The durable outbox and dead-letter store (``<state_dir>/<[junction.outbox] file>``).
    outbox: Outbox | None = None
    #: The operations HTTP endpoint, when ``[junction.http] listen`` is set.
    ops: OpsServer | None = None
    #: Each adapter's context, so a reload can hand running adapters new settings.
    contexts: dict[str, AdapterContext] = field(default_factory=dict)
    _ticker: threading.Thread | None = None
    _ticking: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        cfg = self.loaded.config
        settings = cfg.junction
        state_dir = Path(settings.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        if settings.switch_interval_ms > 0:
            sys.setswitchinterval(settings.switch_interval_ms / 1000)
        for name, acfg in cfg.adapters.items():
            self.inlets[name] = Inlet(name, settings.block_timeout_s)
            self.statuses[name] = AdapterStatus(name=name, type=acfg.type, required=acfg.required)
        self.outbox = Outbox(
            state_dir / settings.outbox.file,
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
        self.supervisor = Supervisor.start(
            settings.restart_backoff_s, settings.restart_backoff_max_s, self.loop
        )
        sup = self.supervisor.proxy()
        for name in cfg.adapters:
            sup.add(
                name, self._factory(name, state_dir), self.inlets[name], self.statuses[name]
            ).get()
        self._ticker = threading.Thread(target=self._tick, name="router-ticker", daemon=True)
        self._ticker.start()
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
        if settings.http.listen:
            # Last, so /readyz and /metrics never see a half-built runtime. A bind failure
            # raises ConfigError; the caller's stop() cleans up what already started.
            self.ops = OpsServer(
                self.snapshot,
                settings.http.listen,
                settings.http.ready_max_pending_age_s,
                origin=str(cfg.path),
            )
            self.ops.start()
            log.info("operations endpoint on %s (/metrics /healthz /readyz /status)", self.ops.url)

    def _factory(self, name: str, state_dir: Path) -> Any:
        acfg = self.loaded.config.adapters[name]
        atype = self.loaded.plugins.adapter_types[acfg.type]
        assert self.router is not None
        ctx = AdapterContext(
            router=self.router,
            settings=self.loaded.config.junction,
            status=self.statuses[name],
            backlog=self.backlog,
            state_dir=state_dir,
            routes_for=self._routes_for,
        )
        self.contexts[name] = ctx

        def make() -> Adapter:
            return atype.factory(name, acfg, ctx)

        return make

    def _persist_kinds(self) -> dict[str, frozenset[str]]:
        """Per adapter name, the kinds its type keeps durable by default."""
        types = self.loaded.plugins.adapter_types
        return {
            name: types[acfg.type].persist_kinds
            for name, acfg in self.loaded.config.adapters.items()
            if acfg.type in types
        }

    def _routes_for(self, env: Envelope) -> list[str]:
        return [r.name for r in self.loaded.table.match(env)]

    def _tick(self) -> None:
        while not self._ticking.wait(0.25):
            router = self.router
            if router is None:
                return
            try:
                router.tell(Tick())
            except pykka.ActorDeadError:
                return

    def reload(self, path: str | None = None) -> ReloadReport:
        """Apply a changed config file (default: the running one's) live; see broker.reload.

        An invalid file raises ConfigError / PluginError and changes nothing.
        """
        from broker import reload as reload_mod  # it builds on this module

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
            "adapters": {n: vars(s).copy() for n, s in self.statuses.items()},
            **routes,
        }

    def pending(self) -> int:
        """Envelopes not yet delivered: held by the router or queued for a target."""
        return self.backlog.value + sum(i.pending() for i in self.inlets.values())

    def stop(self, grace_s: float | None = None) -> StopReport:
        """Stop everything, draining queues for up to ``grace_s``; says what was left."""
        grace = self.loaded.config.junction.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        if self.ops is not None:
            self.ops.stop()  # first: nothing scrapes a runtime that is shutting down
        if self.supervisor is not None:
            self.supervisor.proxy().quiesce().get()
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
        self._ticking.set()
        if self.supervisor is not None:
            self.supervisor.stop()  # every adapter has stopped when this returns
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


def _summary(snapshot: dict[str, Any]) -> str:
    parts = []
    for name, c in snapshot.get("routes", {}).items():
        parts.append(
            f"{name} matched={c['matched']} delivered={c['delivered']} "
            f"filtered={c['filtered']} dropped={c['dropped_total']} failed={c['failed']}"
        )
    return "; ".join(parts) or "no routes"
