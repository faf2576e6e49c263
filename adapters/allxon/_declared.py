"""What the plugin declared, and the rules that follow from it. Pure (no trio, no sockets).

- ``Declared`` indexes the cards of the announce for quick look-ups (is this state declared,
  what is its display type, which params does this command take);
- ``check_command`` turns a ``v2/notifyPluginCommand`` into a ``CommandRequest`` body or a
  rejection reason (unknown module or command, missing required parameter, a list value
  that is not one of the declared choices);
- ``AlarmView`` keeps which alarms the Portal enabled (every AlarmUpdate replaces the whole
  picture; an empty one disables all) and turns the update into ``AlarmUpdate`` bodies;
  ``config_bodies`` does the same for ``v2/notifyPluginConfigUpdate``. Settings for names
  the plugin does not declare are ignored and returned so that the caller can log them;
- ``display_value`` fits a route's value to a state/property display type (string, table,
  link) or raises ``Rejected`` with the reason the envelope can never be sent;
- ``with_property`` gives the module list with one property value changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from adapters.allxon.cards import (
    MAX_STRING_VALUE,
    MAX_TABLE_VALUE,
    CommandCard,
    Module,
    Value,
)
from adapters.allxon.codec import AlarmUpdateParams, CommandParams, ConfigUpdateParams
from broker import AlarmSetting, AlarmUpdate, CommandRequest, ConfigSetting, ConfigUpdate

__all__ = [
    "AlarmView",
    "CommandCheck",
    "Declared",
    "Rejected",
    "check_command",
    "config_bodies",
    "display_value",
    "scalar_text",
    "with_property",
]


class Rejected(ValueError):
    """An envelope that can never be sent to the agent; the message says why."""


class Declared:
    """Look-ups over the declared modules (names are case-sensitive, as on the wire)."""

    def __init__(self, modules: Sequence[Module]) -> None:
        self.modules = {m.module_name: m for m in modules}
        self.states = {(m.module_name, c.name): c.display_type for m in modules for c in m.states}
        self.properties = {
            (m.module_name, c.name): c.display_type for m in modules for c in m.properties
        }
        self.metrics = {(m.module_name, c.name) for m in modules for c in m.metrics}
        self.events = {(m.module_name, c.name) for m in modules for c in m.events}
        self.alarms = {(m.module_name, c.name) for m in modules for c in m.alarms}
        self.configs = {(m.module_name, c.name) for m in modules for c in m.configs}
        self.commands: dict[tuple[str, str], CommandCard] = {
            (m.module_name, c.name): c for m in modules for c in m.commands
        }

    def alarm_modules(self) -> list[str]:
        """Modules that declare at least one alarm."""
        return [name for name, m in self.modules.items() if m.alarms]


# ----------------------------------------------------------------------------- values


def scalar_text(value: Any) -> str:
    """A value as Octo text: bools ``true``/``false``, numbers without a trailing ``.0``,
    ``None`` empty, lists and objects as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def display_value(value: Any, display_type: str | None, what: str) -> Value:
    """Fit ``value`` to a string/table/link card (``None``: undeclared, sent as is).

    Raises ``Rejected`` naming ``what`` when it cannot fit (too long, wrong shape).
    """
    if display_type is None:
        if isinstance(value, str | list | dict):
            return value
        return scalar_text(value)
    if display_type == "table":
        flat = isinstance(value, list) and all(
            isinstance(row, dict) and all(not isinstance(v, dict | list) for v in row.values())
            for row in value
        )
        if not flat:
            raise Rejected(f"{what} is a table card: its value must be a list of flat objects")
        size = len(msgspec.json.encode(value))
        if size > MAX_TABLE_VALUE:
            raise Rejected(f"{what}: table value is {size} bytes, at most {MAX_TABLE_VALUE}")
        return list(value)
    if display_type == "link":
        if not (isinstance(value, dict) and isinstance(value.get("url"), str)):
            raise Rejected(f'{what} is a link card: its value must be {{"url": ..., "alias": ...}}')
        return dict(value)
    text = scalar_text(value)
    if len(text) > MAX_STRING_VALUE:
        raise Rejected(f"{what}: value is {len(text)} characters, at most {MAX_STRING_VALUE}")
    return text


def with_property(
    modules: Sequence[Module], module: str, name: str, value: Any
) -> tuple[list[Module], bool]:
    """The modules with property ``module/name`` set to ``value``, and whether it changed."""
    out: list[Module] = []
    changed = False
    found = False
    for m in modules:
        if m.module_name != module:
            out.append(m)
            continue
        props = list(m.properties)
        for i, prop in enumerate(props):
            if prop.name == name:
                found = True
                fitted = display_value(value, prop.display_type, f"property {module}/{name}")
                if prop.value != fitted:
                    props[i] = msgspec.structs.replace(prop, value=fitted)
                    changed = True
        out.append(msgspec.structs.replace(m, properties=props) if changed else m)
    if not found:
        raise Rejected(f"property {name!r} is not declared in module {module!r}")
    return out, changed


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class CommandCheck:
    """The outcome of checking a command: a request body, or the reason it is rejected.

    ``ignored`` lists parameters the Portal sent that the card does not declare.
    """

    request: CommandRequest | None
    reason: str = ""
    command: str = ""
    ignored: list[str] = field(default_factory=list)


def check_command(declared: Declared, params: CommandParams) -> CommandCheck:
    """Validate a Portal command against the declaration (see the module docstring)."""
    module = params.module_name
    names = [c.name for c in params.commands]
    first = names[0] if names else ""
    if module not in declared.modules:
        return CommandCheck(None, f"module {module!r} is not declared by this plugin", first)
    if len(params.commands) != 1:
        return CommandCheck(
            None, f"expected exactly one command per request, got {len(names)}: {names}", first
        )
    invocation = params.commands[0]
    card = declared.commands.get((module, invocation.name))
    if card is None:
        known = sorted(name for (mod, name) in declared.commands if mod == module)
        return CommandCheck(
            None,
            f"command {invocation.name!r} is not declared in module {module!r} "
            f"(declared: {', '.join(known) or 'none'})",
            first,
        )
    given = {p.name: p.value for p in invocation.params}
    declared_params = {p.name: p for p in card.params}
    ignored = [name for name in given if name not in declared_params]
    values: dict[str, Any] = {}
    missing: list[str] = []
    for param in card.params:
        value = given.get(param.name)
        if value is None or value == "":
            if param.default_value is not msgspec.UNSET:
                values[param.name] = param.default_value
            elif param.required:
                missing.append(param.name)
            continue
        if (
            param.display_type == "list"
            and isinstance(param.display_values, list)
            and value not in param.display_values
        ):
            return CommandCheck(
                None,
                f"parameter {param.name!r} is {value!r}, not one of {param.display_values}",
                first,
            )
        values[param.name] = value
    if missing:
        return CommandCheck(
            None, f"missing required parameter(s) of {card.name!r}: {', '.join(missing)}", first
        )
    request = CommandRequest(
        module=module, command=card.name, command_id=params.command_id, params=values
    )
    return CommandCheck(request, command=first, ignored=ignored)


# ----------------------------------------------------------------------------- settings


class AlarmView:
    """Which alarms the Portal enabled, per the latest ``v2/notifyPluginAlarmUpdate``."""

    def __init__(self) -> None:
        self.enabled: set[tuple[str, str]] = set()
        self.updates = 0

    def is_enabled(self, module: str, alarm: str) -> bool:
        return (module, alarm) in self.enabled

    def apply(
        self, params: AlarmUpdateParams, declared: Declared
    ) -> tuple[list[AlarmUpdate], list[str]]:
        """Replace the enabled set; return one body per declared module and what was ignored.

        An update without modules disables everything: it yields an empty ``AlarmUpdate`` for
        each module that declares alarms, so routes learn it too.
        """
        enabled: set[tuple[str, str]] = set()
        bodies: list[AlarmUpdate] = []
        ignored: list[str] = []
        settings_by_module = params.module_settings()
        for module in settings_by_module:
            name = module.module_name
            if name not in declared.modules:
                ignored.append(f"module {name!r}")
                continue
            settings: list[AlarmSetting] = []
            for alarm in module.alarms:
                if (name, alarm.name) not in declared.alarms:
                    ignored.append(f"alarm {name}/{alarm.name}")
                    continue
                if alarm.enabled:
                    enabled.add((name, alarm.name))
                settings.append(
                    AlarmSetting(
                        name=alarm.name,
                        enabled=alarm.enabled,
                        params={p.name: p.value for p in alarm.params},
                    )
                )
            bodies.append(AlarmUpdate(module=name, alarms=settings))
        if not settings_by_module:
            bodies = [AlarmUpdate(module=name, alarms=[]) for name in declared.alarm_modules()]
        self.enabled = enabled
        self.updates += 1
        return bodies, ignored


def config_bodies(
    params: ConfigUpdateParams, declared: Declared
) -> tuple[list[ConfigUpdate], list[str]]:
    """One ``ConfigUpdate`` body per declared module in the update, and what was ignored."""
    bodies: list[ConfigUpdate] = []
    ignored: list[str] = []
    for module in params.module_settings():
        name = module.module_name
        if name not in declared.modules:
            ignored.append(f"module {name!r}")
            continue
        settings: list[ConfigSetting] = []
        for config in module.configs:
            if (name, config.name) not in declared.configs:
                ignored.append(f"config {name}/{config.name}")
                continue
            settings.append(
                ConfigSetting(name=config.name, params={p.name: p.value for p in config.params})
            )
        bodies.append(ConfigUpdate(module=name, configs=settings))
    return bodies, ignored
