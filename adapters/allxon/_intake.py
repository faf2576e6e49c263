"""What ``deliver`` does with one envelope, as plain functions (no trio, no I/O).

``data_item`` turns a ``state``/``metric``/``event``/``alert`` envelope into the wire item
that goes into the outbox, checked against the declaration and the 2 KB limit; it raises
``Rejected`` (dead-letter it, with the reason) or ``AlarmNotEnabled`` (drop it and count it:
the Portal decides which alarms it wants). ``property_modules`` applies a ``property``
envelope to the declared modules and checks that the announce still obeys the card rules and
still fits one message.
"""

from __future__ import annotations

import time

from adapters.allxon._declared import AlarmView, Declared, Rejected, with_property
from adapters.allxon._outbox import (
    DataItem,
    Kind,
    Outbox,
    alert_item,
    event_item,
    metric_item,
    state_item,
)
from adapters.allxon.cards import Module, validate_update
from adapters.allxon.codec import MAX_FRAME_BYTES, PluginUpdate, epoch_str, signed_size
from adapters.allxon.config import AllxonConfig
from broker import Alert, Envelope, Event, Metric, Property, State

__all__ = ["AlarmNotEnabled", "data_item", "property_modules"]


class AlarmNotEnabled(Exception):
    """An alert for an alarm the Portal has not enabled (dropped and counted, not an error)."""

    def __init__(self, body: Alert) -> None:
        super().__init__(f"alarm {body.module}/{body.alarm} is not enabled on the Portal")
        self.body = body


def data_item(
    env: Envelope, declared: Declared, alarms: AlarmView, outbox: Outbox, allow_undeclared: bool
) -> tuple[Kind, str, DataItem]:
    """(kind, module, item) for a data envelope; raises Rejected or AlarmNotEnabled."""
    body = env.body
    kind: Kind
    item: DataItem
    if isinstance(body, State):
        kind, item = "state", state_item(body, env.ts, declared, allow_undeclared)
    elif isinstance(body, Metric):
        kind, item = "metric", metric_item(body, env.ts, declared, allow_undeclared)
    elif isinstance(body, Event):
        kind, item = "event", event_item(body, env.ts, declared, allow_undeclared)
    elif isinstance(body, Alert):
        kind, item = "alert", alert_item(body, env.ts, declared)
        if not alarms.is_enabled(body.module, body.alarm):
            raise AlarmNotEnabled(body)
    else:
        raise Rejected(
            "the allxon adapter sends state, metric, event, alert and property envelopes "
            f"and command replies, not {env.kind}"
        )
    module = body.module
    size = outbox.signed_size_alone(kind, module, item)
    if size > MAX_FRAME_BYTES:
        raise Rejected(
            f"{kind} {module}/{item.name} needs {size} bytes signed even alone; the agent "
            f"takes at most {MAX_FRAME_BYTES} per message"
        )
    return kind, module, item


def property_modules(
    config: AllxonConfig, app_guid: str, modules: list[Module], body: Property
) -> list[Module] | None:
    """The modules with the property set, or None when the value did not change."""
    changed_modules, changed = with_property(modules, body.module, body.name, body.value)
    if not changed:
        return None
    params = config.update_params(app_guid, epoch_str(time.time()), changed_modules)
    problems = validate_update(params)
    if problems:
        raise Rejected("; ".join(str(p) for p in problems[:3]))
    size = signed_size(PluginUpdate(params=params))
    if size > MAX_FRAME_BYTES:
        raise Rejected(
            f"with this value the announce would be {size} bytes signed, over {MAX_FRAME_BYTES}"
        )
    return changed_modules
