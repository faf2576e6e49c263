"""Loading plugins and collecting what they register.

Built-ins register first (through the same hooks as everyone), then every
distribution in the ``junction.plugins`` entry-point group, except the names listed
in ``[junction] disabled_plugins``.  A plugin that fails to import is reported by name
with the one line that explains it, and the rest still load; ``check_pending()``
then makes a misspelt hook function a loud error instead of a silent no-op.

A built-in is an entry point of that group declared by Junction's own distribution
(``pyproject.toml``), so the core names no adapter; they register as ``builtin:MODULE``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import pluggy

from broker import hookspecs
from broker._errors import PluginError
from broker.hookspecs import ENTRY_POINT_GROUP, AdapterType, Command, Transform

log = logging.getLogger("broker.plugins")


#: The distribution whose entry points are the built-ins (Junction itself).
DISTRIBUTION = "junction"


def _is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    name = ep.dist.name if ep.dist is not None else ""
    return re.sub(r"[-_.]+", "-", name).lower() == DISTRIBUTION


def builtin_modules() -> tuple[str, ...]:
    """The plugin modules Junction ships: its own ``junction.plugins`` entry points, in
    module name order (``adapters.allxon.plugin``, ...; none when Junction is not installed)."""
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return tuple(sorted({ep.value for ep in eps if _is_builtin(ep)}))


BUILTIN_MODULES = builtin_modules()


@dataclass
class PluginFailure:
    """A plugin that could not be loaded, and why (one line)."""

    name: str
    reason: str


@dataclass
class Plugins:
    """The loaded plugin manager and the registry built from its hooks."""

    pm: pluggy.PluginManager
    adapter_types: dict[str, AdapterType] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    def names(self) -> list[str]:
        """Names of the registered plugins, built-ins first."""
        return [name for name, _ in self.pm.list_name_plugin() if name is not None]


def load(disabled: Iterable[str] = (), builtins: Iterable[str] = BUILTIN_MODULES) -> Plugins:
    """Create the manager, register built-ins and entry-point plugins, build the registry.

    ``builtins`` are the modules registered first (tests add theirs to
    :data:`BUILTIN_MODULES`); Junction's own entry points are never loaded a second time.
    """
    plugins = _register(disabled, builtins, quiet=False)
    try:
        plugins.pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginError(
            f"plugin {err.plugin!r} implements a hook that does not exist: {err}"
        ) from err
    _collect(plugins)
    return plugins


def commands() -> dict[str, Command]:
    """The subcommands the installed plugins add to ``junction`` (for its parser).

    Registers plugins as :func:`load` does, but quietly: one that fails to import (or
    misspells a hook) adds no command here, and the commands that load plugins for real
    (``run``, ``check``, ``plugins``) report it.
    """
    plugins = _register((), BUILTIN_MODULES, quiet=True)
    _collect_commands(plugins)
    return plugins.commands


def _register(disabled: Iterable[str], builtins: Iterable[str], quiet: bool) -> Plugins:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm=pm)
    for modname in builtins:
        module = __import__(modname, fromlist=["_"])
        pm.register(module, name=f"builtin:{modname}")
    for name in disabled:
        pm.set_blocked(name)
        plugins.blocked.append(name)
    _load_entry_points(plugins, set(disabled), quiet)
    return plugins


def _load_entry_points(plugins: Plugins, disabled: set[str], quiet: bool = False) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if _is_builtin(ep):
            continue  # registered (or deliberately left out) as a built-in
        if ep.name in disabled:
            if not quiet:
                log.info("plugin %s is disabled by configuration", ep.name)
            continue
        if plugins.pm.get_plugin(ep.name) is not None:
            continue
        try:
            module = ep.load()
        except Exception as err:
            dist = ep.dist.name if ep.dist is not None else "?"
            reason = f"{type(err).__name__}: {err}"
            plugins.failures.append(PluginFailure(ep.name, f"{reason} (from {dist}, {ep.value})"))
            if not quiet:
                log.error(
                    "plugin %s failed to load and is skipped: %s (entry point %s in %s)",
                    ep.name,
                    reason,
                    ep.value,
                    dist,
                )
            continue
        try:
            plugins.pm.register(module, name=ep.name)
        except ValueError as err:
            plugins.failures.append(PluginFailure(ep.name, str(err)))
            if not quiet:
                log.error("plugin %s could not be registered: %s", ep.name, err)


_Named = TypeVar("_Named", AdapterType, Transform, Command)


def _collect(plugins: Plugins) -> None:
    hook = plugins.pm.hook
    for impl, atype in _registered(hook.junction_adapter_types, AdapterType, plugins.adapter_types):
        plugins.adapter_types[atype.name] = dataclasses.replace(atype, plugin=impl.plugin_name)
    for impl, tf in _registered(hook.junction_transforms, Transform, plugins.transforms):
        plugins.transforms[tf.name] = dataclasses.replace(tf, plugin=impl.plugin_name)
    _collect_commands(plugins)


def _collect_commands(plugins: Plugins) -> None:
    hook = plugins.pm.hook
    for impl, command in _registered(hook.junction_commands, Command, plugins.commands):
        plugins.commands[command.name] = dataclasses.replace(command, plugin=impl.plugin_name)


def _registered(
    hook: pluggy.HookCaller, kind: type[_Named], known: Mapping[str, object]
) -> Iterator[tuple[pluggy.HookImpl, _Named]]:
    """What each plugin returned from a registration ``hook``: every item of the ``kind``
    asked for, and under a name nobody registered before (else a PluginError)."""
    label = {AdapterType: "adapter type", Transform: "transform", Command: "command"}[kind]
    seen = set(known)
    for impl in hook.get_hookimpls():
        for item in _returned(impl):
            if not isinstance(item, kind):
                article = "an" if label[0] in "aeiou" else "a"
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {item!r}, not {article} {kind.__name__}"
                )
            if item.name in seen:
                raise PluginError(
                    f"{label} {item.name!r} is registered twice "
                    f"(again by plugin {impl.plugin_name!r})"
                )
            seen.add(item.name)
            yield impl, item


def _returned(impl: pluggy.HookImpl) -> list[object]:
    """What one plugin's registration hook returned, as a list (None = nothing)."""
    result = impl.function()
    if result is None:
        return []
    if not isinstance(result, list | tuple):
        name = impl.function.__name__
        raise PluginError(f"plugin {impl.plugin_name!r}: {name} must return a list")
    return list(result)
