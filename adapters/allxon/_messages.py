"""Allxon Octo v2 message structs: data items, the params of every method, the messages, and
the agent's error frame.

Private: import them from ``adapters.allxon.codec``, the public face, which also encodes and
decodes them. Same conventions as ``cards.WireStruct`` (frozen, camelCase, unknown fields
ignored, ``UNSET`` optional fields left out, item arrays always written).
"""

from __future__ import annotations

import enum
from typing import Any, Literal, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType

from adapters.allxon.cards import UpdateParams, Value, WireStruct

# Method names (the base, without the authorization suffix).
UPDATE = "v2/notifyPluginUpdate"
COMMAND = "v2/notifyPluginCommand"
COMMAND_ACK = "v2/notifyPluginCommandAck"
STATE = "v2/notifyPluginState"
METRIC = "v2/notifyPluginMetric"
EVENT = "v2/notifyPluginEvent"
ALERT = "v2/notifyPluginAlert"
ALARM_UPDATE = "v2/notifyPluginAlarmUpdate"
CONFIG_UPDATE = "v2/notifyPluginConfigUpdate"


# --------------------------------------------------------------------------- data items


class NamedValue(WireStruct, frozen=True, kw_only=True):
    """``{name, value}``: a command argument or an alarm/config setting value."""

    name: str
    value: Any = None


class StateItem(WireStruct, frozen=True, kw_only=True):
    """One state value (latest wins on the Portal)."""

    name: str
    value: Value
    time: str | UnsetType = UNSET


class MetricItem(WireStruct, frozen=True, kw_only=True):
    """One metric sample; the value is a numeric string (at most 15 digits, 2 decimals)."""

    name: str
    value: str
    time: str | UnsetType = UNSET


class EventItem(WireStruct, frozen=True, kw_only=True):
    """One event occurrence."""

    name: str
    value: Value
    time: str | UnsetType = UNSET


class AlertItem(WireStruct, frozen=True, kw_only=True):
    """An alarm being triggered or resolved."""

    name: str
    action: str  # "trigger" | "resolve"
    time: str
    message: str = ""


class CommandInvocation(WireStruct, frozen=True, kw_only=True):
    """One command of a notifyPluginCommand, with its arguments."""

    name: str
    params: list[NamedValue] = msgspec.field(default_factory=list)


class CommandAckItem(WireStruct, frozen=True, kw_only=True):
    """The result of one command of an ack."""

    name: str
    result: dict[str, Any] = msgspec.field(default_factory=dict)


class AlarmSetting(WireStruct, frozen=True, kw_only=True):
    """An alarm's Portal setting."""

    name: str
    enabled: bool = False
    params: list[NamedValue] = msgspec.field(default_factory=list)


class ConfigSetting(WireStruct, frozen=True, kw_only=True):
    """A config's Portal setting."""

    name: str
    params: list[NamedValue] = msgspec.field(default_factory=list)


class AlarmModuleSettings(WireStruct, frozen=True, kw_only=True):
    """The alarm settings of one module; an empty list means all disabled."""

    module_name: str
    epoch: str | UnsetType = UNSET
    alarms: list[AlarmSetting] = msgspec.field(default_factory=list)


class ConfigModuleSettings(WireStruct, frozen=True, kw_only=True):
    """The config settings of one module."""

    module_name: str
    epoch: str | UnsetType = UNSET
    configs: list[ConfigSetting] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------- params


class CommandParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginCommand`` (agent -> plugin)."""

    app_guid: str = msgspec.field(name="appGUID")
    epoch: str
    command_id: str
    command_source: str = "remote"
    module_name: str
    commands: list[CommandInvocation] = msgspec.field(default_factory=list)
    serial_number: str | UnsetType = UNSET


class CommandAckParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginCommandAck``; sent twice per command (ACCEPTED|REJECTED,
    then ACKED|ERRORED)."""

    app_guid: str = msgspec.field(name="appGUID")
    epoch: str
    command_id: str
    command_source: str = "remote"
    module_name: str
    command_state: str
    command_acks: list[CommandAckItem] = msgspec.field(default_factory=list)
    states: list[StateItem] | UnsetType = UNSET


class StateParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginState``."""

    app_guid: str = msgspec.field(name="appGUID")
    module_name: str
    epoch: str
    states: list[StateItem] = msgspec.field(default_factory=list)


class MetricParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginMetric``."""

    app_guid: str = msgspec.field(name="appGUID")
    module_name: str
    epoch: str
    metrics: list[MetricItem] = msgspec.field(default_factory=list)


class EventParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginEvent``."""

    app_guid: str = msgspec.field(name="appGUID")
    module_name: str
    epoch: str
    events: list[EventItem] = msgspec.field(default_factory=list)


class AlertParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginAlert``."""

    app_guid: str = msgspec.field(name="appGUID")
    module_name: str
    epoch: str
    alarms: list[AlertItem] = msgspec.field(default_factory=list)


class AlarmUpdateParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginAlarmUpdate``. ``modules`` absent (UNSET) or ``null`` (None)
    means every alarm is disabled; ``module_settings()`` folds both into ``[]``."""

    app_guid: str = msgspec.field(name="appGUID")
    epoch: str
    version: str | UnsetType = UNSET
    modules: list[AlarmModuleSettings] | UnsetType | None = UNSET

    def module_settings(self) -> list[AlarmModuleSettings]:
        """The module settings, ``[]`` when the frame had none (all alarms disabled)."""
        return self.modules if isinstance(self.modules, list) else []


class ConfigUpdateParams(WireStruct, frozen=True, kw_only=True):
    """Params of ``v2/notifyPluginConfigUpdate`` (same shape as the alarm update)."""

    app_guid: str = msgspec.field(name="appGUID")
    epoch: str
    version: str | UnsetType = UNSET
    modules: list[ConfigModuleSettings] | UnsetType | None = UNSET

    def module_settings(self) -> list[ConfigModuleSettings]:
        """The module settings, ``[]`` when the frame had none."""
        return self.modules if isinstance(self.modules, list) else []


# --------------------------------------------------------------------------- messages


class PluginUpdate(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginUpdate`` (plugin -> agent; first frame of every connection)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginUpdate"] = "v2/notifyPluginUpdate"
    params: UpdateParams


class PluginCommand(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginCommand`` (agent -> plugin)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginCommand"] = "v2/notifyPluginCommand"
    params: CommandParams


class PluginCommandAck(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginCommandAck`` (plugin -> agent)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginCommandAck"] = "v2/notifyPluginCommandAck"
    params: CommandAckParams


class PluginState(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginState`` (plugin -> agent)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginState"] = "v2/notifyPluginState"
    params: StateParams


class PluginMetric(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginMetric`` (plugin -> agent)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginMetric"] = "v2/notifyPluginMetric"
    params: MetricParams


class PluginEvent(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginEvent`` (plugin -> agent)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginEvent"] = "v2/notifyPluginEvent"
    params: EventParams


class PluginAlert(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginAlert`` (plugin -> agent)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginAlert"] = "v2/notifyPluginAlert"
    params: AlertParams


class PluginAlarmUpdate(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginAlarmUpdate`` (agent -> plugin)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginAlarmUpdate"] = "v2/notifyPluginAlarmUpdate"
    params: AlarmUpdateParams


class PluginConfigUpdate(WireStruct, frozen=True, kw_only=True):
    """``v2/notifyPluginConfigUpdate`` (agent -> plugin)."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Literal["v2/notifyPluginConfigUpdate"] = "v2/notifyPluginConfigUpdate"
    params: ConfigUpdateParams


OctoMessage: TypeAlias = (
    PluginUpdate
    | PluginCommand
    | PluginCommandAck
    | PluginState
    | PluginMetric
    | PluginEvent
    | PluginAlert
    | PluginAlarmUpdate
    | PluginConfigUpdate
)


# --------------------------------------------------------------------------- error frames


class AgentError(enum.Enum):
    """What an agent error frame means (docs/protocols/allxon.md, "Errors from the agent")."""

    DEVICE_OFFLINE = "device_offline"  # -32000: agent cannot reach its cloud; re-send update later
    INVALID_REQUEST = "invalid_request"  # -32600: bad signature, epoch too far off, ...
    PARSE_ERROR = "parse_error"  # -32700
    UNKNOWN = "unknown"


# Absolute values, including the docs' typo forms (one extra zero).
_ERROR_CODES = {
    32000: AgentError.DEVICE_OFFLINE,
    320000: AgentError.DEVICE_OFFLINE,
    32600: AgentError.INVALID_REQUEST,
    326000: AgentError.INVALID_REQUEST,
    32700: AgentError.PARSE_ERROR,
    327000: AgentError.PARSE_ERROR,
}

_ERROR_CODE_TEXT = {
    AgentError.DEVICE_OFFLINE: "-32000",
    AgentError.INVALID_REQUEST: "-32600",
    AgentError.PARSE_ERROR: "-32700",
}


class ErrorObject(WireStruct, frozen=True, kw_only=True):
    """``{"code": "-32600", "message": "..."}``; the agent writes ``code`` as a string."""

    code: str | int
    message: str = ""
    data: Any | UnsetType = UNSET

    @property
    def kind(self) -> AgentError:
        """The meaning of ``code``: sign and the docs' typo forms (``-326000``) tolerated."""
        try:
            number = abs(int(str(self.code).strip()))
        except ValueError:
            return AgentError.UNKNOWN
        return _ERROR_CODES.get(number, AgentError.UNKNOWN)


class AgentErrorFrame(WireStruct, frozen=True, kw_only=True):
    """``{"jsonrpc":"2.0","error":{...},"id":null}`` (agent -> plugin)."""

    jsonrpc: Literal["2.0"] = "2.0"
    error: ErrorObject
    id: str | int | None = None

    @property
    def kind(self) -> AgentError:
        """Shortcut for ``error.kind``."""
        return self.error.kind


def error_frame(kind: AgentError, message: str) -> AgentErrorFrame:
    """Build the error frame the agent would send (``code`` as a string, e.g. ``"-32600"``)."""
    code = _ERROR_CODE_TEXT.get(kind, "-32603")
    return AgentErrorFrame(error=ErrorObject(code=code, message=message))


InboundFrame: TypeAlias = OctoMessage | AgentErrorFrame
