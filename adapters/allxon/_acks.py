"""Command acks: what a reply envelope means for the Portal, and the ack message. Pure.

A command is acked twice (docs/protocols/allxon.md, "Commands and acks"): ``ACCEPTED`` or
``REJECTED`` at once, then ``ACKED`` (success) or ``ERRORED``. The reply that comes back
through the router is a ``CommandResult`` (or an ``ExecResult`` when the request was mapped to
an exec and the route has no ``reply_map``); ``outcome_of`` reads either:

- ``CommandResult(ok=True, result, states)`` -> ACKED with ``result`` (``{"response":
  message or "done"}`` when empty) and the states;
- ``ExecResult(ok=True, value)`` -> ACKED with ``value`` when it is an object, else
  ``{"response": value}``;
- ``ok=False`` (including the router's timeout result) -> ERRORED with
  ``{"response": message}`` (an exec's error name leads the message).

Result values are written as Octo text (``scalar_text``: the Portal shows them as is).
``ack_message`` builds the ack and keeps it under the 2 KB limit: first without the states,
then with the result replaced by a note saying how large it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from adapters.allxon._declared import Declared, Rejected, display_value, scalar_text
from adapters.allxon.codec import (
    CommandAckItem,
    CommandAckParams,
    CommandParams,
    PluginCommandAck,
    StateItem,
    epoch_str,
    fits_frame,
    signed_size,
)
from broker import CommandResult, ExecResult

__all__ = ["Outcome", "ack_message", "outcome_of", "state_items"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the second ack says: ``ACKED`` or ``ERRORED``, the result and extra states."""

    state: str
    result: dict[str, str]
    states: dict[str, Any] = field(default_factory=dict)


def _text_values(result: dict[str, Any]) -> dict[str, str]:
    return {str(k): scalar_text(v) for k, v in result.items()}


def outcome_of(body: object) -> Outcome:
    """Read a reply body (see the module docstring)."""
    if isinstance(body, CommandResult):
        if body.ok:
            result = _text_values(body.result) or {"response": body.message or "done"}
            return Outcome("ACKED", result, dict(body.states))
        return Outcome("ERRORED", {"response": body.message or "failed"}, dict(body.states))
    if isinstance(body, ExecResult):
        if body.ok:
            if isinstance(body.value, dict) and body.value:
                return Outcome("ACKED", _text_values(body.value))
            text = scalar_text(body.value)
            return Outcome("ACKED", {"response": text or body.message or "done"})
        parts = [p for p in (body.error, body.message) if p]
        return Outcome("ERRORED", {"response": ": ".join(parts) or "failed"})
    kind = getattr(body, "kind_name", type(body).__name__)
    return Outcome(
        "ERRORED", {"response": f"the reply was a {kind}, not a command_result or exec_result"}
    )


def state_items(
    declared: Declared, module: str, states: dict[str, Any], now: float
) -> tuple[list[StateItem], list[str]]:
    """States carried by a reply as wire items, and the problems of those left out."""
    items: list[StateItem] = []
    problems: list[str] = []
    for name, value in states.items():
        display = declared.states.get((module, name))
        if display is None:
            problems.append(f"state {name!r} is not declared in module {module!r}")
            continue
        try:
            fitted = display_value(value, display, f"state {module}/{name}")
        except Rejected as err:
            problems.append(str(err))
            continue
        items.append(StateItem(name=name, value=fitted, time=epoch_str(now)))
    return items, problems


def ack_message(
    app_guid: str,
    command: CommandParams,
    name: str,
    state: str,
    result: dict[str, str],
    now: float,
    states: list[StateItem] | None = None,
) -> tuple[PluginCommandAck, str]:
    """The ack of ``command`` (echoing its ids), under 2 KB; and a note if it had to shrink."""

    def build(res: dict[str, str], items: list[StateItem] | None) -> PluginCommandAck:
        return PluginCommandAck(
            params=CommandAckParams(
                app_guid=app_guid,
                epoch=epoch_str(now),
                command_id=command.command_id,
                command_source=command.command_source,
                module_name=command.module_name,
                command_state=state,
                command_acks=[CommandAckItem(name=name, result=res)],
                states=items if items else msgspec.UNSET,
            )
        )

    message = build(result, states)
    if fits_frame(message):
        return message, ""
    full = signed_size(message)
    if states:
        message = build(result, None)
        if fits_frame(message):
            return message, f"the ack was {full} bytes signed; its states were left out"
    note = f"the result was too large for one Octo message ({full} bytes signed)"
    return build({"response": note}, None), note


def with_epoch(message: PluginCommandAck, now: float) -> PluginCommandAck:
    """The same ack stamped with the time it is actually sent."""
    params = msgspec.structs.replace(message.params, epoch=epoch_str(now))
    return msgspec.structs.replace(message, params=params)
