"""Hot reload: apply a changed configuration to a running bridge without a restart.

:func:`reload` (``Runtime.reload``) parses and validates the new file with the same
:func:`broker._runtime.load` as start-up; an invalid file raises ConfigError / PluginError
and changes nothing.  A valid one is diffed against the running configuration:

adapters   *added* ones start (new inlet, status, actor); *removed* ones get up
           to ``shutdown_grace_s`` to empty their inlet, then stop, and what is still
           queued for them is reported as left; *changed* ones (config struct differs by
           msgspec equality -- a rotated ``${file:...}`` secret counts) restart with the new
           config on the inlet they had, so nothing queued is lost; *unchanged* ones are
           not touched (same instance, same connection, same bindings).
routes     the router swaps to the new compiled table in one message; counters are kept by
           route name, so routes that remain keep counting.
settings   ``[junction]`` keys in :data:`LIVE_SETTINGS` apply at once; any other change
           (state_dir, outbox, http, restart back-off, disabled_plugins) needs a restart:
           it is reported and the running value is kept.  That is not an error.

The outcome is a :class:`ReloadReport`, logged at INFO as one line.

``junction run`` reloads on SIGHUP (on its main loop, never inside the handler) and
holds ``<state_dir>/junction.pid`` while it runs (:mod:`broker._state_lock`). ``junction
reload CONFIG`` reads only CONFIG's ``[junction]`` table (the operator's shell need not
hold the adapters' secrets), signals the pid holding that lock (:func:`request_reload`),
and prints what the bridge wrote to ``<state_dir>/reload-outcome.json``: the bridge
checks the file with its own environment, and refuses an invalid one with the problems
listed, running on with the previous configuration.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from broker import _plugins as plugins_mod
from broker import _state_lock as state_lock
from broker._adapter import AdapterStatus
from broker._config import JunctionSettings
from broker._errors import ConfigError, JunctionError, PluginError
from broker._inlet import Inlet
from broker._logs import redact
from broker._messages import describe
from broker._router import Swap
from broker._routing import CompiledRoute
from broker._runtime import Loaded, Runtime, load, settle_leftovers

log = logging.getLogger("broker.reload")

#: ``[junction]`` keys a reload applies to the running bridge; a change to any other
#: key needs a restart (it is reported, and the running value is kept).
LIVE_SETTINGS: tuple[str, ...] = (
    "log_level",
    "queue_size",
    "block_timeout_s",
    "reply_timeout_s",
    "redelivery",
    "dead_letter",
    "shutdown_grace_s",
)

#: Where the bridge tells ``junction reload`` what it made of the signal.
OUTCOME_FILE = "reload-outcome.json"

_reloading = threading.Lock()  # one reload at a time (two SIGHUPs, or a test and a signal)


class BridgeUnreachable(JunctionError):
    """No running bridge to signal: no pid file, a stale one, or not ours to signal."""


@dataclass
class ReloadReport:
    """What a reload changed; ``str()`` is one line for the log."""

    path: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    routes_added: list[str] = field(default_factory=list)
    routes_removed: list[str] = field(default_factory=list)
    routes_changed: list[str] = field(default_factory=list)
    #: ``[junction]`` changes applied now, as ``key old -> new``.
    settings_applied: list[str] = field(default_factory=list)
    #: ``[junction]`` changes that need a restart (the running value is kept).
    needs_restart: list[str] = field(default_factory=list)
    #: Envelopes still queued for a removed adapter when it stopped, dead-lettered, per
    #: ``adapter/route``.
    left: dict[str, int] = field(default_factory=dict)
    #: Outbox rows of persist routes to removed adapters: they wait for an adapter of
    #: that name to come back.
    kept: dict[str, int] = field(default_factory=dict)
    #: Adapters that could not be (re)started, with the reason.
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """True when the reload changed anything (or found something it could not apply)."""
        return any(
            (
                self.added,
                self.removed,
                self.restarted,
                self.routes_added,
                self.routes_removed,
                self.routes_changed,
                self.settings_applied,
                self.needs_restart,
            )
        )

    def __str__(self) -> str:
        if not self.changed:
            return f"{self.path}: no changes"
        parts = []
        adapters = [f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed]
        adapters += [f"~{n} (restarted)" for n in self.restarted]
        if adapters or self.unchanged:
            parts.append(
                f"adapters {' '.join(adapters) or 'same'}, {len(self.unchanged)} untouched"
            )
        routes = [f"+{n}" for n in self.routes_added] + [f"-{n}" for n in self.routes_removed]
        routes += [f"~{n}" for n in self.routes_changed]
        if routes:
            parts.append(f"routes {' '.join(routes)}")
        if self.settings_applied:
            parts.append(f"settings applied: {', '.join(self.settings_applied)}")
        if self.needs_restart:
            parts.append(f"needs a restart (running value kept): {', '.join(self.needs_restart)}")
        if self.left:
            parts.append(
                "left undelivered by removed adapters: "
                + ", ".join(f"{k}={v}" for k, v in sorted(self.left.items()))
            )
        if self.failed:
            parts.append(
                "failed to start: "
                + ", ".join(f"{k} ({v})" for k, v in sorted(self.failed.items()))
            )
        return f"{self.path}: " + "; ".join(parts)


# --- the diff (pure) ---------------------------------------------------------------


def plan(running: Loaded, new: Loaded) -> tuple[ReloadReport, Loaded]:
    """Compare ``new`` with the ``running`` configuration.

    Returns the report (without ``left`` / ``failed``, which only applying can tell)
    and the configuration to run: ``new`` with the running value of every
    ``[junction]`` key that cannot change live.
    """
    report = ReloadReport(path=new.config.path)
    old_adapters, new_adapters = running.config.adapters, new.config.adapters
    for name, acfg in new_adapters.items():
        if name not in old_adapters:
            report.added.append(name)
        elif old_adapters[name] != acfg:
            report.restarted.append(name)
        else:
            report.unchanged.append(name)
    report.removed = [n for n in old_adapters if n not in new_adapters]

    old_routes = {r.name: r for r in running.table.routes}
    new_routes = {r.name: r for r in new.table.routes}
    for name, route in new_routes.items():
        if name not in old_routes:
            report.routes_added.append(name)
        elif _route_key(old_routes[name]) != _route_key(route):
            report.routes_changed.append(name)
    report.routes_removed = [n for n in old_routes if n not in new_routes]

    old_s, new_s = running.config.junction, new.config.junction
    for path, before, after in _setting_changes(old_s, new_s):
        # redacted: a changed [junction.http] token is reported, never shown
        text = redact(f"{path} {_show(before)} -> {_show(after)}")
        if path.split(".", 1)[0] in LIVE_SETTINGS:
            report.settings_applied.append(text)
        else:
            report.needs_restart.append(text)
    settings = msgspec.structs.replace(old_s, **{k: getattr(new_s, k) for k in LIVE_SETTINGS})
    config = msgspec.structs.replace(new.config, junction=settings)
    return report, dataclasses.replace(new, config=config)


def _route_key(route: CompiledRoute) -> tuple[Any, ...]:
    # queue_size and overflow also follow [junction] defaults, so compare the compiled values
    return (route.spec, route.queue_size, route.overflow)


def _setting_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every differing field; needs-restart tables itemised."""
    out: list[tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(type(old)):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        key = prefix + f.name
        nested = isinstance(before, msgspec.Struct) and type(before) is type(after)
        if nested and key not in LIVE_SETTINGS:
            out.extend(_setting_changes(before, after, key + "."))
        else:
            out.append((key, before, after))
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else f"{text[:100]}...{text[-50:]}"  # paths end telling


# --- applying it -------------------------------------------------------------------


def reload(runtime: Runtime, path: str | None = None) -> ReloadReport:
    """Validate ``path`` (default: the running config's file) and apply it to ``runtime``.

    Raises ConfigError / PluginError, with nothing changed, when the file is invalid.
    """
    with _reloading:
        running = runtime.loaded
        file = path or running.config.path
        new = load(file, extra_plugins=_extra_plugins(running.plugins))
        report, merged = plan(running, new)
        if report.changed:
            _apply(runtime, report, merged)
        else:
            runtime.loaded = merged  # same content; adopt it so the file's path is current
        log.info("reload: %s", report)
        if report.needs_restart:
            log.warning(
                "reload: %s changed but only applies at a restart; still running with the old "
                "value",
                ", ".join(t.split(" ", 1)[0] for t in report.needs_restart),
            )
        return report


def reload_logged(runtime: Runtime) -> ReloadReport | None:
    """:func:`reload` for a signal: an invalid file is logged and the bridge runs on.

    Either way the outcome is written for ``junction reload`` (:func:`wait_outcome`).
    """
    began = time.time()
    file = runtime.loaded.config.path
    state_dir = runtime.loaded.config.junction.state_dir
    problems: list[str] = []
    try:
        report = reload(runtime)
    except ConfigError as err:
        problems = [str(p) for p in err.problems]
        log.error(
            "reload of %s refused, still running the previous configuration: %s",
            file,
            "; ".join(problems),
        )
    except PluginError as err:
        problems = [f"plugin error: {err}"]
        log.error(
            "reload of %s refused (plugin error), still running the previous configuration: %s",
            file,
            err,
        )
    except Exception as err:  # a bug must not end a bridge that was running fine
        problems = [f"reload failed: {describe(err)}"]
        log.exception("reload of %s failed; still running the previous configuration", file)
    else:
        _write_outcome(
            state_dir,
            ReloadOutcome(
                pid=os.getpid(),
                began=began,
                applied=True,
                summary=str(report),
                needs_restart=list(report.needs_restart),
                failed=dict(report.failed),
            ),
        )
        return report
    summary = f"{file}: refused, still running the previous configuration"
    _write_outcome(
        state_dir,
        ReloadOutcome(
            pid=os.getpid(), began=began, applied=False, summary=summary, problems=problems
        ),
    )
    return None


def _extra_plugins(plugins: plugins_mod.Plugins) -> list[str]:
    """Modules registered beside the built-ins when the running config was loaded."""
    builtin = set(plugins_mod.BUILTIN_MODULES)
    names = (n.removeprefix("builtin:") for n in plugins.names() if n.startswith("builtin:"))
    return [n for n in names if n not in builtin]


def _apply(runtime: Runtime, report: ReloadReport, merged: Loaded) -> None:
    router = runtime.router
    if router is None:
        raise RuntimeError("reload needs a started runtime")
    settings = merged.config.junction
    adapters = merged.config.adapters
    gone = set(report.removed)

    # New dicts, never mutated in place: other threads (ops endpoint, router) read them.
    inlets = dict(runtime.inlets)
    statuses = dict(runtime.statuses)
    for name in report.added:
        inlets[name] = inlets.get(name) or Inlet(name, settings.block_timeout_s)
        statuses[name] = statuses.get(name) or AdapterStatus(name=name, type=adapters[name].type)
    for name in (*report.added, *report.restarted):
        statuses[name].type = adapters[name].type
        statuses[name].required = adapters[name].required
    for inlet in inlets.values():
        inlet.block_timeout_s = settings.block_timeout_s
    runtime.statuses = statuses
    runtime.inlets = inlets
    runtime.loaded = merged  # from here _factory and _routes_for see the new config and table

    routed = {n: i for n, i in inlets.items() if n not in gone}
    # One message: every envelope routed before it used the old table, every one after the new.
    # Removed adapters' inlets stay known to the router until they are emptied (_remove), so
    # what they still deliver is settled and counted.
    router.ask(Swap(merged.table, settings, inlets, runtime._persist_kinds()), timeout=60)
    for name, ctx in runtime.contexts.items():
        if name not in gone:
            ctx.settings = settings  # untouched adapters (and their later restarts) see them

    for name in report.restarted:
        runtime.stop_adapter(name)
        _start(runtime, name, report)
    for name in report.added:
        _start(runtime, name, report)
    if gone:
        _remove(runtime, sorted(gone), settings, report)  # the router forgets their inlets
        runtime.inlets = routed
        runtime.statuses = {n: s for n, s in statuses.items() if n not in gone}
        for name in gone:
            runtime.contexts.pop(name, None)

    if any(t.startswith("log_level ") for t in report.settings_applied):
        logging.getLogger().setLevel(settings.log_level.upper())


def _start(runtime: Runtime, name: str, report: ReloadReport) -> None:
    """Start adapter ``name``'s actor with an instance built from the new config."""
    status = runtime.statuses[name]
    try:
        runtime.start_adapter(name)
    except Exception as err:  # its constructor refused the config: the others go on
        text = describe(err)
        report.failed[name] = text
        status.set("crashed", f"reload could not start it: {text}")
        status.last_error = text
        log.error("reload: adapter %s could not be started: %s", name, text)
        runtime.stop_adapter(name)


def _remove(
    runtime: Runtime, names: list[str], settings: JunctionSettings, report: ReloadReport
) -> None:
    """Give removed adapters the grace period to empty their inlets, then stop them."""
    deadline = time.monotonic() + settings.shutdown_grace_s
    for name in names:
        inlet = runtime.inlets[name]
        while inlet.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        runtime.stop_adapter(name)
        left, kept = settle_leftovers(
            runtime.router, {name: inlet}, settings.shutdown_grace_s, remove=True
        )
        report.left.update(left)
        report.kept.update(kept)
    if report.left:
        log.error(
            "reload: %d envelopes were still queued for removed adapters after the %.1f s "
            "grace period; they are in the dead-letter store (junction dlq list): %s",
            sum(report.left.values()),
            settings.shutdown_grace_s,
            ", ".join(f"{k}={v}" for k, v in sorted(report.left.items())),
        )
    if report.kept:
        log.warning(
            "reload: %d envelopes of persist routes to removed adapters stay in the outbox "
            "until an adapter of that name is back: %s",
            sum(report.kept.values()),
            ", ".join(f"{k}={v}" for k, v in sorted(report.kept.items())),
        )


# --- `junction reload`: signal the owner, read its answer -----------------------------


def request_reload(state_dir: str | os.PathLike[str]) -> int:
    """Send SIGHUP to the bridge holding ``state_dir``; returns its pid."""
    try:
        pid = state_lock.holder(state_dir)
    except JunctionError as err:
        raise BridgeUnreachable(str(err)) from None
    if pid is None:
        where = state_lock.pid_path(state_dir).resolve()
        raise BridgeUnreachable(
            f"no junction is running with this state_dir: nothing holds {where} "
            "(is the bridge started, with the same state_dir, from the same working directory?)"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise BridgeUnreachable(
            f"junction (pid {pid}) ended before it could be signalled"
        ) from None
    except PermissionError:
        raise BridgeUnreachable(
            f"not allowed to signal junction (pid {pid}): run this as the user running the bridge"
        ) from None
    return pid


class ReloadOutcome(msgspec.Struct, kw_only=True):
    """What the bridge made of a SIGHUP, written to ``<state_dir>/reload-outcome.json``
    for ``junction reload`` to print: the bridge checks the file with its own environment
    (its secrets), which the operator's shell need not have."""

    pid: int
    #: When the bridge began this reload (epoch seconds): newer than the request's signal.
    began: float
    applied: bool
    summary: str
    problems: list[str] = []
    needs_restart: list[str] = []
    #: Adapters that could not be (re)started, with the reason: the reload was partial.
    failed: dict[str, str] = {}


def outcome_path(state_dir: str | os.PathLike[str]) -> Path:
    """Where the bridge of ``state_dir`` writes the outcome of its last reload."""
    return Path(state_dir) / OUTCOME_FILE


def _write_outcome(state_dir: str, outcome: ReloadOutcome) -> None:
    path = outcome_path(state_dir)
    tmp = path.with_name(OUTCOME_FILE + ".tmp")
    try:
        tmp.write_bytes(msgspec.json.encode(outcome))
        os.replace(tmp, path)
    except OSError as err:
        log.warning("reload: cannot write %s for `junction reload`: %s", path, describe(err))


def wait_outcome(
    state_dir: str | os.PathLike[str], since: float, timeout_s: float
) -> ReloadOutcome | None:
    """The outcome of the first reload that began at or after ``since``; None on timeout."""
    path = outcome_path(state_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = msgspec.json.decode(path.read_bytes(), type=ReloadOutcome)
        except (OSError, msgspec.DecodeError):
            found = None
        if found is not None and found.began >= since:
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
