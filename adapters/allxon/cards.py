"""Allxon Octo plugin declarations: the card structs of ``v2/notifyPluginUpdate`` and their rules.

Pure. The structs (``Module``, ``PropertyCard``, ``CommandCard``, ``CardParam``, ...,
``UpdateParams``) are frozen msgspec structs with camelCase wire names, unknown fields ignored,
optional fields ``UNSET`` (left out of the output, never ``null``) and card arrays that default
to ``[]`` and are always written. ``WireStruct`` is the base every Octo wire struct shares
(also used by ``_messages``); it deliberately has no ``omit_defaults`` (msgspec then silently
dropped ``"jsonrpc": "2.0"``, which equals its default).

 ``validate_update(params)`` returns every problem at once (an empty list means valid), each
naming the wire path of the bad field (``modules[0].commands[2].params[1].displayFormat``) and
the bad value, so a misdeclared card fails at start-up with a message a person can act on
instead of a card silently missing on the Portal.

The rules (``docs/protocols/allxon.md``, "Declaring cards"; field limits from the older public
SDK):

- names (cards, params, modules) match ``^[a-zA-Z][a-zA-Z0-9_-]*$``; card/param names are at most
  32 characters, ``moduleName`` at most 64 (applying the name pattern to ``moduleName`` is our
  reading of "Names match"); module names unique; card names unique per card type per module;
  param names unique per card;
- ``version`` and ``sdk`` match ``^[0-9]+\\.[0-9]+\\.[0-9]+$``; ``type`` is ``ib`` or ``oob``;
- properties and states: displayType ``string|table|link``; a property's value must fit its
  type (string <= 512 chars; table = array of flat objects, <= 1024 bytes, headers <= 128 chars;
  link = ``{"url", "alias"}``);
- metrics: displayType ``temperature|custom``; custom needs ``displayUnit``;
- commands: ``type`` is ``"asynchronous"``; params displayType ``string|text|datetime|switch|
  checkbox|list|tos``; alarm/config params ``string|datetime|switch|checkbox|list|temperature``;
- datetime needs ``displayFormat`` in ``YYYY-MM-DD|HH:MM|YYYY-MM-DD HH:MM``; switch and checkbox
  need ``displayValues == [false, true]``; list needs a ``displayValues`` array;
  ``valueEncoding``, when given, is ``base64``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "AlarmCard",
    "CardError",
    "CardParam",
    "CommandCard",
    "ConfigCard",
    "EventCard",
    "MetricCard",
    "Module",
    "PropertyCard",
    "StateCard",
    "UpdateParams",
    "Value",
    "WireStruct",
    "validate_update",
]

Value: TypeAlias = str | list[dict[str, Any]] | dict[str, Any]
"""A state/property/event value: a string, a table (array of flat objects) or a link object."""


class WireStruct(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of every Octo wire struct: frozen, camelCase on the wire, unknown fields ignored,
    no ``omit_defaults``."""


class _Display(WireStruct, frozen=True, kw_only=True):
    """The name and optional display fields every card shares (name first on the wire)."""

    name: str
    display_name: str | UnsetType = UNSET
    display_category: str | UnsetType = UNSET
    description: str | UnsetType = UNSET


# --------------------------------------------------------------------------- cards


class PropertyCard(_Display, frozen=True, kw_only=True):
    """A property: ``displayType`` string|table|link and its (static) value."""

    display_type: str
    value: Value | UnsetType = UNSET


class StateCard(_Display, frozen=True, kw_only=True):
    """A state card: ``displayType`` string|table|link; values come in notifyPluginState."""

    display_type: str


class MetricCard(_Display, frozen=True, kw_only=True):
    """A chart: ``displayType`` temperature|custom; custom needs ``displayUnit``."""

    display_type: str
    display_unit: str | UnsetType = UNSET


class EventCard(_Display, frozen=True, kw_only=True):
    """An event kind."""


class CardParam(_Display, frozen=True, kw_only=True):
    """A parameter of a command, alarm or config card (which displayTypes are legal differs;
    see ``cards.validate_update``)."""

    display_type: str
    required: bool = False
    default_value: Any | UnsetType = UNSET
    display_values: list[Any] | UnsetType = UNSET
    display_format: str | UnsetType = UNSET
    display_mask: Any | UnsetType = UNSET
    display_unit: str | UnsetType = UNSET
    required_on: Any | UnsetType = UNSET
    value_from_property: str | UnsetType = UNSET
    value_encoding: str | UnsetType = UNSET


class CommandCard(_Display, frozen=True, kw_only=True):
    """A command the Portal can run; ``type`` is always ``"asynchronous"``."""

    type: str = "asynchronous"
    params: list[CardParam] = msgspec.field(default_factory=list)


class AlarmCard(_Display, frozen=True, kw_only=True):
    """An alarm the Portal can enable, with its settings."""

    params: list[CardParam] = msgspec.field(default_factory=list)


class ConfigCard(_Display, frozen=True, kw_only=True):
    """A config the Portal can set."""

    params: list[CardParam] = msgspec.field(default_factory=list)


class Module(WireStruct, frozen=True, kw_only=True):
    """One module of a plugin; every card array is written, ``[]`` when empty."""

    module_name: str
    display_name: str | UnsetType = UNSET
    description: str | UnsetType = UNSET
    properties: list[PropertyCard] = msgspec.field(default_factory=list)
    states: list[StateCard] = msgspec.field(default_factory=list)
    metrics: list[MetricCard] = msgspec.field(default_factory=list)
    events: list[EventCard] = msgspec.field(default_factory=list)
    commands: list[CommandCard] = msgspec.field(default_factory=list)
    alarms: list[AlarmCard] = msgspec.field(default_factory=list)
    configs: list[ConfigCard] = msgspec.field(default_factory=list)


class UpdateParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginUpdate``: the plugin's identity and every card."""

    app_guid: str = msgspec.field(name="appGUID")
    app_name: str
    epoch: str
    type: str = "ib"
    sdk: str
    version: str
    modules: list[Module] = msgspec.field(default_factory=list)
    display_name: str | UnsetType = UNSET
    start_command: str | UnsetType = UNSET
    stop_command: str | UnsetType = UNSET


# --------------------------------------------------------------------------- validation

NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]*$")
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")
MAX_NAME = 32
MAX_MODULE_NAME = 64
MAX_STRING_VALUE = 512
MAX_TABLE_VALUE = 1024
MAX_TABLE_HEADER = 128

PLUGIN_TYPES = frozenset({"ib", "oob"})
STATE_TYPES = frozenset({"string", "table", "link"})
METRIC_TYPES = frozenset({"temperature", "custom"})
COMMAND_PARAM_TYPES = frozenset({"string", "text", "datetime", "switch", "checkbox", "list", "tos"})
SETTING_PARAM_TYPES = frozenset({"string", "datetime", "switch", "checkbox", "list", "temperature"})
DATETIME_FORMATS = frozenset({"YYYY-MM-DD", "HH:MM", "YYYY-MM-DD HH:MM"})
COMMAND_TYPE = "asynchronous"


@dataclass(frozen=True, slots=True)
class CardError:
    """One rule broken: where (wire path), what was there, and why it is wrong."""

    path: str
    value: Any
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} (got {self.value!r})"


class _Checker:
    def __init__(self) -> None:
        self.errors: list[CardError] = []

    def fail(self, path: str, value: Any, message: str) -> None:
        self.errors.append(CardError(path, value, message))

    def name(self, path: str, value: str, limit: int = MAX_NAME) -> None:
        if not NAME_RE.match(value):
            self.fail(path, value, "must match ^[a-zA-Z][a-zA-Z0-9_-]*$")
        if len(value) > limit:
            self.fail(path, value, f"is {len(value)} characters, at most {limit} allowed")

    def one_of(self, path: str, value: Any, allowed: frozenset[str]) -> None:
        if value not in allowed:
            self.fail(path, value, f"must be one of {sorted(allowed)}")

    def unique(self, path: str, names: Sequence[str], what: str) -> None:
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                self.fail(f"{path}[{index}].name", name, f"duplicate {what} name")
            seen.add(name)


def validate_update(params: UpdateParams) -> list[CardError]:
    """Every way ``params`` breaks the Octo declaration rules; ``[]`` when it is valid."""
    check = _Checker()
    if not params.app_guid:
        check.fail("appGUID", params.app_guid, "must not be empty")
    if not params.app_name:
        check.fail("appName", params.app_name, "must not be empty")
    for field, value in (("version", params.version), ("sdk", params.sdk)):
        if not VERSION_RE.match(value):
            check.fail(field, value, "must match ^[0-9]+.[0-9]+.[0-9]+$")
    check.one_of("type", params.type, PLUGIN_TYPES)
    seen_modules: set[str] = set()
    for index, module in enumerate(params.modules):
        path = f"modules[{index}]"
        check.name(f"{path}.moduleName", module.module_name, MAX_MODULE_NAME)
        if module.module_name in seen_modules:
            check.fail(f"{path}.moduleName", module.module_name, "duplicate module name")
        seen_modules.add(module.module_name)
        _check_module(check, path, module)
    return check.errors


def _check_module(check: _Checker, path: str, module: Module) -> None:
    groups: list[tuple[str, Sequence[Any]]] = [
        ("properties", module.properties),
        ("states", module.states),
        ("metrics", module.metrics),
        ("events", module.events),
        ("commands", module.commands),
        ("alarms", module.alarms),
        ("configs", module.configs),
    ]
    for group, cards in groups:
        for index, card in enumerate(cards):
            check.name(f"{path}.{group}[{index}].name", card.name)
        check.unique(f"{path}.{group}", [card.name for card in cards], group.rstrip("s"))
    for index, prop in enumerate(module.properties):
        card_path = f"{path}.properties[{index}]"
        check.one_of(f"{card_path}.displayType", prop.display_type, STATE_TYPES)
        _check_property_value(check, f"{card_path}.value", prop.display_type, prop.value)
    for index, state in enumerate(module.states):
        check.one_of(f"{path}.states[{index}].displayType", state.display_type, STATE_TYPES)
    for index, metric in enumerate(module.metrics):
        card_path = f"{path}.metrics[{index}]"
        check.one_of(f"{card_path}.displayType", metric.display_type, METRIC_TYPES)
        if metric.display_type == "custom" and not metric.display_unit:
            check.fail(f"{card_path}.displayUnit", None, "required for custom")
    for index, command in enumerate(module.commands):
        card_path = f"{path}.commands[{index}]"
        if command.type != COMMAND_TYPE:
            check.fail(f"{card_path}.type", command.type, f"must be {COMMAND_TYPE!r}")
        _check_params(check, f"{card_path}.params", command.params, COMMAND_PARAM_TYPES)
    for index, alarm in enumerate(module.alarms):
        card_path = f"{path}.alarms[{index}].params"
        _check_params(check, card_path, alarm.params, SETTING_PARAM_TYPES)
    for index, config in enumerate(module.configs):
        card_path = f"{path}.configs[{index}].params"
        _check_params(check, card_path, config.params, SETTING_PARAM_TYPES)


def _check_params(
    check: _Checker, path: str, params: Sequence[CardParam], allowed: frozenset[str]
) -> None:
    for index, param in enumerate(params):
        param_path = f"{path}[{index}]"
        check.name(f"{param_path}.name", param.name)
        check.one_of(f"{param_path}.displayType", param.display_type, allowed)
        if param.display_type == "datetime" and param.display_format not in DATETIME_FORMATS:
            check.fail(
                f"{param_path}.displayFormat",
                None if param.display_format is UNSET else param.display_format,
                f"datetime needs displayFormat one of {sorted(DATETIME_FORMATS)}",
            )
        if param.display_type in ("switch", "checkbox") and not _is_false_true(
            param.display_values
        ):
            check.fail(
                f"{param_path}.displayValues",
                None if param.display_values is UNSET else param.display_values,
                f"{param.display_type} needs displayValues [false, true]",
            )
        if param.display_type == "list" and not isinstance(param.display_values, list):
            check.fail(
                f"{param_path}.displayValues",
                None if param.display_values is UNSET else param.display_values,
                "list needs a displayValues array",
            )
        if param.value_encoding is not UNSET and param.value_encoding != "base64":
            check.fail(f"{param_path}.valueEncoding", param.value_encoding, "must be 'base64'")
    check.unique(path, [param.name for param in params], "param")


def _is_false_true(values: Any) -> bool:
    # `[0, 1] == [False, True]` in Python; the wire needs real booleans.
    return (
        isinstance(values, list) and len(values) == 2 and values[0] is False and values[1] is True
    )


def _check_property_value(check: _Checker, path: str, display_type: str, value: Any) -> None:
    if value is UNSET:
        check.fail(path, None, "a property needs a value")
        return
    if display_type == "string":
        if not isinstance(value, str):
            check.fail(path, value, "a string property needs a string value")
        elif len(value) > MAX_STRING_VALUE:
            check.fail(path, value[:40] + "...", f"longer than {MAX_STRING_VALUE} characters")
    elif display_type == "table":
        if not isinstance(value, list) or not all(
            isinstance(row, dict) and all(not isinstance(v, dict | list) for v in row.values())
            for row in value
        ):
            check.fail(path, value, "a table property needs an array of flat objects")
            return
        size = len(msgspec.json.encode(value))
        if size > MAX_TABLE_VALUE:
            check.fail(path, f"<{size} bytes>", f"table larger than {MAX_TABLE_VALUE} bytes")
        for row_index, row in enumerate(value):
            for header in row:
                if len(header) > MAX_TABLE_HEADER:
                    check.fail(
                        f"{path}[{row_index}]", header, f"header over {MAX_TABLE_HEADER} chars"
                    )
    elif display_type == "link" and not (
        isinstance(value, dict) and isinstance(value.get("url"), str)
    ):
        check.fail(path, value, 'a link property needs {"url": ..., "alias": ...}')
