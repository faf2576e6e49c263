"""What the Allxon agent simulator remembers, its call budget, and how it shows it.

Private to ``simulator``; pure (no trio, no sockets) so the bookkeeping is testable on its own.
The simulator decides *whether* a frame is accepted; this module records accepted frames per
module and card the way the Portal would show them (latest state wins; metrics, events and
alerts accumulate, bounded by ``history``) and tracks every command's ack sequence.
"""

from __future__ import annotations

import collections
import datetime
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET

from adapters.allxon.codec import (
    AlarmUpdateParams,
    AlertItem,
    CardParam,
    CommandAckParams,
    CommandParams,
    EventItem,
    MetricItem,
    Module,
    OctoMessage,
    PluginAlert,
    PluginCommandAck,
    PluginEvent,
    PluginMetric,
    PluginState,
    PluginUpdate,
    StateItem,
    UpdateParams,
)

__all__ = [
    "AlertRecord",
    "CallBudget",
    "CommandRecord",
    "ModuleRecord",
    "Rejection",
    "SimStore",
    "sample_command",
]

FIRST_ACK_STATES = frozenset({"ACCEPTED", "REJECTED"})
FINAL_ACK_STATES = frozenset({"ACKED", "ERRORED"})


class Rejection(enum.Enum):
    """Why the simulator answered a frame with an error frame instead of recording it."""

    BINARY = "binary"
    OVERSIZE = "oversize"
    OFFLINE = "offline"
    PARSE = "parse"
    INVALID = "invalid"
    WRONG_DIRECTION = "wrong-direction"
    SIGNATURE = "signature"
    UPDATE_FIRST = "update-first"
    APP_GUID = "app-guid"
    DECLARATION = "declaration"
    BUDGET = "budget"


class CallBudget:
    """At most ``limit`` calls in any rolling ``window`` seconds, on an injectable clock."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        if limit < 0 or window <= 0:
            raise ValueError(f"budget needs limit >= 0 and window > 0, got {limit}, {window}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._stamps: collections.deque[float] = collections.deque()

    def _expire(self, now: float) -> None:
        while self._stamps and self._stamps[0] <= now - self.window:
            self._stamps.popleft()

    def used(self) -> int:
        """Calls counted in the current window."""
        self._expire(self._clock())
        return len(self._stamps)

    def take(self) -> bool:
        """Count one call; False (and nothing counted) when the window is already full."""
        now = self._clock()
        self._expire(now)
        if len(self._stamps) >= self.limit:
            return False
        self._stamps.append(now)
        return True


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as received, and whether the Portal had that alarm enabled at the time."""

    item: AlertItem
    enabled: bool


@dataclass(slots=True)
class ModuleRecord:
    """Everything received for one module (``declaration`` None if never declared)."""

    name: str
    history: int
    declaration: Module | None = None
    states: dict[str, StateItem] = field(default_factory=dict)
    state_updates: int = 0
    metrics: collections.deque[MetricItem] = field(init=False)
    events: collections.deque[EventItem] = field(init=False)
    alerts: collections.deque[AlertRecord] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = collections.deque(maxlen=self.history)
        self.events = collections.deque(maxlen=self.history)
        self.alerts = collections.deque(maxlen=self.history)


@dataclass(slots=True)
class CommandRecord:
    """A command sent (``sent``; None if the plugin acked an id we never sent) and its acks."""

    command_id: str
    module_name: str
    sent: CommandParams | None = None
    states: list[str] = field(default_factory=list)
    acks: list[CommandAckParams] = field(default_factory=list)

    @property
    def final_state(self) -> str | None:
        """ACKED or ERRORED once the plugin finished (or the last state seen), else None."""
        return self.states[-1] if self.states else None

    @property
    def sequence_ok(self) -> bool:
        """True for exactly ACCEPTED|REJECTED then ACKED|ERRORED, so far (one or two acks)."""
        if not self.states or self.states[0] not in FIRST_ACK_STATES:
            return False
        if len(self.states) == 1:
            return True
        return len(self.states) == 2 and self.states[1] in FINAL_ACK_STATES

    @property
    def complete(self) -> bool:
        """Both acks arrived in a valid order."""
        return self.sequence_ok and len(self.states) == 2


class SimStore:
    """Recorded state of the simulated agent; the simulator mutates it, tests read it."""

    def __init__(self, history: int = 10_000) -> None:
        self.history = history
        self.update: UpdateParams | None = None
        self.update_count = 0
        self.modules: dict[str, ModuleRecord] = {}
        self.commands: dict[str, CommandRecord] = {}
        self.alarms_enabled: dict[tuple[str, str], bool] = {}
        self.calls = 0
        self.calls_by_method: collections.Counter[str] = collections.Counter()
        self.sent_by_method: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[Rejection] = collections.Counter()
        self.rejections: collections.deque[tuple[Rejection, str]] = collections.deque(maxlen=100)
        self.frames_received = 0
        self.largest_frame = 0
        self.connections_total = 0

    def module(self, name: str) -> ModuleRecord:
        """The record of module ``name``, created on first use."""
        record = self.modules.get(name)
        if record is None:
            record = self.modules[name] = ModuleRecord(name, self.history)
        return record

    def note_frame(self, size: int) -> None:
        """Count a received frame of ``size`` bytes (accepted or not)."""
        self.frames_received += 1
        self.largest_frame = max(self.largest_frame, size)

    def note_rejection(self, reason: Rejection, message: str) -> None:
        """Count a frame answered with an error frame."""
        self.rejected[reason] += 1
        self.rejections.append((reason, message))

    def note_sent(self, message: OctoMessage) -> None:
        """Remember a frame the agent sent (commands become CommandRecords)."""
        self.sent_by_method[message.method] += 1

    def note_command(self, params: CommandParams) -> None:
        """Remember a command about to be sent."""
        self.commands[params.command_id] = CommandRecord(
            params.command_id, params.module_name, sent=params
        )

    def note_alarm_update(self, params: AlarmUpdateParams) -> None:
        """Track which alarms are enabled (an empty update disables all)."""
        self.alarms_enabled.clear()
        for module in params.module_settings():
            for alarm in module.alarms:
                self.alarms_enabled[(module.module_name, alarm.name)] = alarm.enabled

    def record(self, message: OctoMessage) -> None:
        """Record an accepted plugin -> agent message."""
        self.calls += 1
        self.calls_by_method[message.method] += 1
        match message:
            case PluginUpdate(params=params):
                self.update = params
                self.update_count += 1
                for module in params.modules:
                    self.module(module.module_name).declaration = module
            case PluginState(params=params):
                self._record_states(params.module_name, params.states)
            case PluginMetric(params=params):
                self.module(params.module_name).metrics.extend(params.metrics)
            case PluginEvent(params=params):
                self.module(params.module_name).events.extend(params.events)
            case PluginAlert(params=params):
                record = self.module(params.module_name)
                for item in params.alarms:
                    enabled = self.alarms_enabled.get((params.module_name, item.name), False)
                    record.alerts.append(AlertRecord(item, enabled))
            case PluginCommandAck(params=params):
                command = self.commands.get(params.command_id)
                if command is None:
                    command = self.commands[params.command_id] = CommandRecord(
                        params.command_id, params.module_name
                    )
                command.states.append(params.command_state)
                command.acks.append(params)
                if isinstance(params.states, list):
                    self._record_states(params.module_name, params.states)
            case _:
                pass  # agent -> plugin methods are rejected before they get here

    def _record_states(self, module_name: str, states: list[StateItem]) -> None:
        record = self.module(module_name)
        for item in states:
            record.states[item.name] = item
        record.state_updates += len(states)

    def render(self, header: list[str]) -> str:
        """A readable text table of the declared cards and their latest values."""
        lines = list(header)
        rejected = ", ".join(f"{r.value}={n}" for r, n in sorted(self.rejected.items(), key=_k))
        lines.append(
            f"calls={self.calls} frames={self.frames_received} largest={self.largest_frame} B "
            f"rejected: {rejected or 'none'}"
        )
        if self.update is None:
            lines.append("(no plugin has declared itself yet)")
            return "\n".join(lines)
        update = self.update
        lines.append(
            f"plugin {update.app_name} {update.version} (sdk {update.sdk}, {update.type}) "
            f"appGUID={update.app_guid}, {self.update_count} update(s)"
        )
        for record in self.modules.values():
            lines.extend(self._render_module(record))
        return "\n".join(lines)

    def _render_module(self, record: ModuleRecord) -> list[str]:
        rows: list[tuple[str, str, str, str]] = []
        decl = record.declaration
        names = {
            "property": [c.name for c in decl.properties] if decl else [],
            "state": [c.name for c in decl.states] if decl else [],
            "metric": [c.name for c in decl.metrics] if decl else [],
            "event": [c.name for c in decl.events] if decl else [],
            "alarm": [c.name for c in decl.alarms] if decl else [],
            "command": [c.name for c in decl.commands] if decl else [],
            "config": [c.name for c in decl.configs] if decl else [],
        }
        for prop in decl.properties if decl else []:
            rows.append(("property", prop.name, _short(prop.value), ""))
        for name in _merge(names["state"], record.states):
            item = record.states.get(name)
            rows.append(("state", name, _short(item.value) if item else "-", _time(item)))
        for name in _merge(names["metric"], [m.name for m in record.metrics]):
            samples = [m for m in record.metrics if m.name == name]
            last = samples[-1] if samples else None
            value = f"{last.value} ({len(samples)} samples)" if last else "-"
            rows.append(("metric", name, value, _time(last)))
        for name in _merge(names["event"], [e.name for e in record.events]):
            seen = [e for e in record.events if e.name == name]
            last_event = seen[-1] if seen else None
            value = f"{_short(last_event.value)} ({len(seen)} total)" if last_event else "-"
            rows.append(("event", name, value, _time(last_event)))
        for name in _merge(names["alarm"], [a.item.name for a in record.alerts]):
            alerts = [a for a in record.alerts if a.item.name == name]
            enabled = self.alarms_enabled.get((record.name, name), False)
            flag = "enabled" if enabled else "disabled"
            if alerts:
                a = alerts[-1].item
                value = f"{a.action} {_short(a.message)} [{flag}]"
                rows.append(("alarm", name, value, a.time))
            else:
                rows.append(("alarm", name, f"- [{flag}]", ""))
        for name in names["command"]:
            cmds = [c for c in self.commands.values() if c.sent and _names(c.sent) == {name}]
            if cmds:
                last_cmd = cmds[-1]
                value = f"{last_cmd.command_id[:8]} {'->'.join(last_cmd.states) or 'sent'}"
                rows.append(("command", name, f"{value} ({len(cmds)} sent)", ""))
            else:
                rows.append(("command", name, "-", ""))
        rows.extend(("config", name, "", "") for name in names["config"])
        title = f"module {record.name}" + ("" if decl else " (undeclared)")
        return [title, *_table(("card", "name", "latest", "time"), rows)]


def _k(pair: tuple[Rejection, int]) -> str:
    return pair[0].value


def _names(params: CommandParams) -> set[str]:
    return {c.name for c in params.commands}


def _merge(declared: list[str], seen: Any) -> list[str]:
    out = list(declared)
    out.extend(name for name in dict.fromkeys(seen) if name not in declared)
    return out


def _short(value: Any, limit: int = 40) -> str:
    if value is UNSET:
        return "-"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time(item: StateItem | MetricItem | EventItem | None) -> str:
    if item is None or item.time is UNSET:
        return ""
    return item.time


def _table(head: tuple[str, ...], rows: list[tuple[str, str, str, str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(head), "  " + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _sample_value(param: CardParam, now: datetime.datetime) -> Any:
    if param.default_value is not UNSET:
        return param.default_value
    match param.display_type:
        case "datetime":
            fmt = {"YYYY-MM-DD": "%Y-%m-%d", "HH:MM": "%H:%M"}.get(
                str(param.display_format), "%Y-%m-%d %H:%M"
            )
            return now.strftime(fmt)
        case "switch" | "checkbox" | "tos":
            return True
        case "list" if isinstance(param.display_values, list) and param.display_values:
            return param.display_values[0]
        case "temperature":
            return "300"
        case _:
            return "sample"


def sample_command(
    update: UpdateParams | None, now: datetime.datetime
) -> tuple[str, str, dict[str, Any]] | None:
    """The first declared command with plausible arguments, for the CLI's scheduled demo."""
    if update is None:
        return None
    for module in update.modules:
        for command in module.commands:
            params = {p.name: _sample_value(p, now) for p in command.params}
            return module.module_name, command.name, params
    return None
