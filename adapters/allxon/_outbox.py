"""What the adapter holds for the agent until the budget lets it go. Pure (no trio, no I/O).

Envelopes from routes become wire items (``state_item``, ``metric_item``, ``event_item``,
``alert_item``; a value that can never be sent raises ``Rejected``) and wait in the
``Outbox``, one buffer per kind:

- **states** coalesce: one entry per module/name, the latest value wins (the Portal shows only
  the latest); ``coalesced_states`` counts the values replaced before they were sent;
- **metrics** are kept as samples, in order, up to ``max_metrics``. Past the bound, and
  whenever a flush has fewer calls than the samples need, they coalesce: older samples of a
  name are dropped for its newest ("metric superseded"); if that is still not enough the
  oldest samples go ("metric buffer full"). So under a flood the oldest metrics are dropped
  first and the latest value of every name survives;
- **events** and **alerts** are kept in order, never coalesced; past their bound the oldest
  are dropped ("event buffer full", "alert buffer full").

``take(max_frames, epoch)`` packs the buffers into at most ``max_frames`` signed-size-checked
messages (each <= 2048 bytes with its signature, via ``codec.pack_items``), alerts first, then
states, events and metrics, oldest first, and removes what it took; ``put_back`` returns the
items of frames that could not be sent. ``dropped`` counts every loss by reason.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from adapters.allxon._declared import Declared, Rejected, display_value
from adapters.allxon.codec import (
    MAX_FRAME_BYTES,
    AlertItem,
    AlertParams,
    EventItem,
    EventParams,
    MetricItem,
    MetricParams,
    PluginAlert,
    PluginEvent,
    PluginMetric,
    PluginState,
    StateItem,
    StateParams,
    epoch_str,
    item_size,
    pack_items,
    signed_size,
)
from broker import Alert, Event, Metric, State

__all__ = [
    "DataMessage",
    "Entry",
    "Frame",
    "Kind",
    "Outbox",
    "alert_item",
    "event_item",
    "metric_item",
    "metric_value",
    "state_item",
]

Kind: TypeAlias = Literal["alert", "state", "event", "metric"]
ORDER: tuple[Kind, ...] = ("alert", "state", "event", "metric")
DataItem: TypeAlias = StateItem | MetricItem | EventItem | AlertItem
DataMessage: TypeAlias = PluginState | PluginMetric | PluginEvent | PluginAlert

_EPOCH_PLACEHOLDER = "9999999999"  # as long as any epoch string until 2286
_MAX_METRIC = 1e13  # 13 integer digits + 2 decimals = the 15 digits Octo allows


# ----------------------------------------------------------------------------- items


def metric_value(value: float) -> str:
    """A metric value as Octo wants it: a numeric string, at most 2 decimals, 15 digits."""
    if not math.isfinite(value):
        raise Rejected(f"metric value {value!r} is not a finite number")
    rounded = round(value, 2)
    if abs(rounded) >= _MAX_METRIC:
        raise Rejected(f"metric value {value!r} has more than the 15 digits Octo allows")
    text = f"{rounded:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _check_module(declared: Declared, module: str, allow_undeclared: bool) -> None:
    if module not in declared.modules and not allow_undeclared:
        raise Rejected(f"module {module!r} is not declared by this plugin")


def state_item(body: State, ts: float, declared: Declared, allow_undeclared: bool) -> StateItem:
    """The wire item of a ``state`` envelope (declared display type applied)."""
    _check_module(declared, body.module, allow_undeclared)
    key = (body.module, body.name)
    display = declared.states.get(key)
    if display is None and not allow_undeclared:
        raise Rejected(f"state {body.name!r} is not declared in module {body.module!r}")
    value = display_value(body.value, display, f"state {body.module}/{body.name}")
    return StateItem(name=body.name, value=value, time=epoch_str(body.time or ts))


def metric_item(body: Metric, ts: float, declared: Declared, allow_undeclared: bool) -> MetricItem:
    """The wire item of a ``metric`` envelope."""
    _check_module(declared, body.module, allow_undeclared)
    if (body.module, body.name) not in declared.metrics and not allow_undeclared:
        raise Rejected(f"metric {body.name!r} is not declared in module {body.module!r}")
    return MetricItem(
        name=body.name, value=metric_value(body.value), time=epoch_str(body.time or ts)
    )


def event_item(body: Event, ts: float, declared: Declared, allow_undeclared: bool) -> EventItem:
    """The wire item of an ``event`` envelope."""
    _check_module(declared, body.module, allow_undeclared)
    if (body.module, body.name) not in declared.events and not allow_undeclared:
        raise Rejected(f"event {body.name!r} is not declared in module {body.module!r}")
    value = display_value(body.value, "string", f"event {body.module}/{body.name}")
    return EventItem(name=body.name, value=value, time=epoch_str(body.time or ts))


def alert_item(body: Alert, ts: float, declared: Declared) -> AlertItem:
    """The wire item of an ``alert`` envelope (the alarm must be declared, always)."""
    if (body.module, body.alarm) not in declared.alarms:
        raise Rejected(f"alarm {body.alarm!r} is not declared in module {body.module!r}")
    message = display_value(body.message, "string", f"alert {body.module}/{body.alarm}")
    assert isinstance(message, str)
    return AlertItem(
        name=body.alarm, action=body.action, time=epoch_str(body.time or ts), message=message
    )


# ----------------------------------------------------------------------------- frames


@dataclass(slots=True)
class Entry:
    """One buffered item; ``seq`` orders all entries by arrival.

    ``handle`` is (route, envelope) for an item whose route waits for it to be sent (the
    adapter acknowledges it to the router when its frame goes out, or fails it when the
    item is dropped); None for latest-value data acknowledged on arrival.
    """

    seq: int
    module: str
    item: Any  # the DataItem of its kind
    handle: tuple[str, Any] | None = None


@dataclass(slots=True)
class Frame:
    """One message ready to sign, and the entries it carries (to put back on failure)."""

    kind: Kind
    module: str
    message: DataMessage
    entries: list[Entry]


def build_message(
    kind: Kind, app_guid: str, module: str, epoch: str, items: list[Any]
) -> DataMessage:
    """The message of ``kind`` carrying ``items`` for ``module``."""
    if kind == "state":
        return PluginState(
            params=StateParams(app_guid=app_guid, module_name=module, epoch=epoch, states=items)
        )
    if kind == "metric":
        return PluginMetric(
            params=MetricParams(app_guid=app_guid, module_name=module, epoch=epoch, metrics=items)
        )
    if kind == "event":
        return PluginEvent(
            params=EventParams(app_guid=app_guid, module_name=module, epoch=epoch, events=items)
        )
    return PluginAlert(
        params=AlertParams(app_guid=app_guid, module_name=module, epoch=epoch, alarms=items)
    )


def _by_seq(entry: Entry) -> int:
    return entry.seq


def _item_count(message: DataMessage) -> int:
    if isinstance(message, PluginState):
        return len(message.params.states)
    if isinstance(message, PluginMetric):
        return len(message.params.metrics)
    if isinstance(message, PluginEvent):
        return len(message.params.events)
    return len(message.params.alarms)


class Outbox:
    """Buffers per kind with coalescing and bounded, counted drops (module docstring)."""

    def __init__(
        self,
        app_guid: str,
        *,
        max_metrics: int = 5000,
        max_events: int = 1000,
        max_alerts: int = 200,
        limit: int = MAX_FRAME_BYTES,
    ) -> None:
        self.app_guid = app_guid
        self.max_metrics = max_metrics
        self.max_events = max_events
        self.max_alerts = max_alerts
        self.limit = limit
        self.states: dict[tuple[str, str], Entry] = {}
        self.metrics: deque[Entry] = deque()
        #: the newest buffered sample of each metric, so coalescing costs the number of
        #: metric names, not the number of samples buffered
        self._newest: dict[tuple[str, str], Entry] = {}
        self.events: deque[Entry] = deque()
        self.alerts: deque[Entry] = deque()
        self._empty_sizes: dict[tuple[Kind, str], int] = {}  # see signed_size_alone
        self.dropped: Counter[str] = Counter()
        self.coalesced_states = 0
        self._seq = itertools.count(1)
        #: Called with (entry, reason) for each dropped entry that has a ``handle``.
        self.on_drop: Callable[[Entry, str], None] | None = None

    def __len__(self) -> int:
        return len(self.states) + len(self.metrics) + len(self.events) + len(self.alerts)

    def pending(self) -> dict[str, int]:
        """Buffered entries per kind."""
        return {
            "state": len(self.states),
            "metric": len(self.metrics),
            "event": len(self.events),
            "alert": len(self.alerts),
        }

    def signed_size_alone(self, kind: Kind, module: str, item: DataItem) -> int:
        """Bytes of a signed message carrying only ``item`` (compare with the 2 KB limit)."""
        # the message with an empty item list, plus the item's own JSON: the same bytes as
        # encoding the one-item message, without building it for every envelope
        key = (kind, module)
        base = self._empty_sizes.get(key)
        if base is None:
            empty = build_message(kind, self.app_guid, module, _EPOCH_PLACEHOLDER, [])
            base = self._empty_sizes[key] = signed_size(empty)
        return base + item_size(item)

    # --- adding ------------------------------------------------------------------------------

    def add(
        self, kind: Kind, module: str, item: DataItem, handle: tuple[str, Any] | None = None
    ) -> None:
        """Buffer one item (the caller checked that it fits a frame on its own)."""
        entry = Entry(next(self._seq), module, item, handle)
        if kind == "state":
            key = (module, item.name)
            if self.states.pop(key, None) is not None:
                self.coalesced_states += 1
            self.states[key] = entry
        elif kind == "metric":
            self.metrics.append(entry)
            self._newest[(module, item.name)] = entry
            if len(self.metrics) > self.max_metrics:
                self._bound_metrics()
        elif kind == "event":
            self._bounded_append(self.events, entry, self.max_events, "event buffer full")
        else:
            self._bounded_append(self.alerts, entry, self.max_alerts, "alert buffer full")

    def _bounded_append(self, buf: deque[Entry], entry: Entry, bound: int, reason: str) -> None:
        buf.append(entry)
        while len(buf) > bound:
            self._dropped(buf.popleft(), reason)

    def _dropped(self, entry: Entry, reason: str) -> None:
        self.dropped[reason] += 1
        if entry.handle is not None and self.on_drop is not None:
            self.on_drop(entry, reason)

    def _bound_metrics(self) -> None:
        """Coalesce; if still near the bound, drop the oldest down to 90 % of it (so that the
        next coalescing is at least a tenth of the bound away: amortised O(1) per add)."""
        self.coalesce_metrics()
        floor = max(1, self.max_metrics * 9 // 10)
        while len(self.metrics) > floor:
            self._forget_metric(self.metrics.popleft())
            self.dropped["metric buffer full"] += 1

    def coalesce_metrics(self) -> int:
        """Keep only the newest sample of each metric; returns how many were dropped."""
        dropped = len(self.metrics) - len(self._newest)
        if dropped == 0:
            return 0
        self.metrics = deque(sorted(self._newest.values(), key=_by_seq))
        self.dropped["metric superseded"] += dropped
        return dropped

    def _forget_metric(self, entry: Entry) -> None:
        """``entry`` left the metric buffer: it is no longer its name's newest sample."""
        key = (entry.module, entry.item.name)
        if self._newest.get(key) is entry:
            del self._newest[key]

    # --- taking ------------------------------------------------------------------------------

    def _entries(self, kind: Kind) -> list[Entry]:
        if kind == "state":
            return sorted(self.states.values(), key=lambda e: e.seq)
        return list(self._buffer(kind))

    def _buffer(self, kind: Kind) -> deque[Entry]:
        if kind == "metric":
            return self.metrics
        if kind == "event":
            return self.events
        return self.alerts

    def _frames(self, kind: Kind, entries: list[Entry], epoch: str, most: int) -> list[Frame]:
        """The first ``most`` frames (by their oldest entry) that ``entries`` pack into."""
        by_module: dict[str, list[Entry]] = {}
        for entry in entries:
            by_module.setdefault(entry.module, []).append(entry)
        frames: list[Frame] = []
        for module, group in by_module.items():

            def build(items: list[Any], module: str = module) -> DataMessage:
                return build_message(kind, self.app_guid, module, epoch, items)

            # a module's frames are in age order: past its first ``most`` none is chosen
            messages = pack_items([e.item for e in group], build, self.limit, most)
            start = 0
            for message in messages:
                count = _item_count(message)
                frames.append(Frame(kind, module, message, group[start : start + count]))
                start += count
        frames.sort(key=lambda f: f.entries[0].seq)
        return frames[:most]

    def take(self, max_frames: int, epoch: str) -> list[Frame]:
        """Up to ``max_frames`` messages, by priority and age; their items leave the buffers."""
        out: list[Frame] = []
        for kind in ORDER:
            room = max_frames - len(out)
            if room <= 0:
                break
            entries = self._entries(kind)
            if not entries:
                continue
            # one frame more than there is room for says whether the buffer overflows it
            frames = self._frames(kind, entries, epoch, room + 1)
            if kind == "metric" and len(frames) > room and self.coalesce_metrics():
                frames = self._frames(kind, self._entries(kind), epoch, room)
            chosen = frames[:room]
            self._remove(kind, chosen)
            out.extend(chosen)
        return out

    def _remove(self, kind: Kind, frames: list[Frame]) -> None:
        if not frames:
            return
        if kind == "state":
            for frame in frames:
                for entry in frame.entries:
                    key = (entry.module, entry.item.name)
                    if self.states.get(key) is entry:
                        del self.states[key]
            return
        taken = {entry.seq for frame in frames for entry in frame.entries}
        buf = self._buffer(kind)
        kept = deque(e for e in buf if e.seq not in taken)
        if kind == "metric":
            for frame in frames:
                for entry in frame.entries:
                    self._forget_metric(entry)
            self.metrics = kept
        elif kind == "event":
            self.events = kept
        else:
            self.alerts = kept

    def put_back(self, frames: Iterable[Frame]) -> None:
        """Return the items of unsent frames, in their original order (a newer state wins)."""
        by_kind: dict[Kind, list[Entry]] = {}
        for frame in frames:
            by_kind.setdefault(frame.kind, []).extend(frame.entries)
        for kind, entries in by_kind.items():
            if kind == "state":
                for entry in entries:
                    self.states.setdefault((entry.module, entry.item.name), entry)
                continue
            entries.sort(key=lambda e: e.seq)
            merged = deque(heapq.merge(entries, self._buffer(kind), key=lambda e: e.seq))
            if kind == "metric":
                self.metrics = merged
                for entry in entries:
                    key = (entry.module, entry.item.name)
                    newest = self._newest.get(key)
                    if newest is None or newest.seq < entry.seq:
                        self._newest[key] = entry
                if len(merged) > self.max_metrics:
                    self._bound_metrics()
            elif kind == "event":
                self.events = merged
                while len(self.events) > self.max_events:
                    self._dropped(self.events.popleft(), "event buffer full")
            else:
                self.alerts = merged
                while len(self.alerts) > self.max_alerts:
                    self._dropped(self.alerts.popleft(), "alert buffer full")
