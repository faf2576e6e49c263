"""``placeos_to_allxon_event``: a PlaceOS status change becomes an Allxon event.

Each change of a bound PlaceOS status (a door opened, a booking started) is reported
to the Allxon Portal as an occurrence of an event card::

    [[routes]]
    name = "door-events"
    from = "placeos"
    kind = "status_change"
    match = { "body.name" = "door" }
    to = "allxon"
    transforms = [{ name = "placeos_to_allxon_event", options = { module = "room-101" } }]

Options:

``module``  (required) the Allxon module that declares the event card.
``name``    the event card's name: a template over the incoming envelope, in the same
            language as a route's ``map`` (``{body.name}``, ``{body.system}``,
            ``{subject}``...); default ``"{body.name}"``, the status's own name.
            A fixed string (no placeholders) is a fixed name.
``value``   a template for the event's value text; by default the status value
            itself: a string as it is, anything else as its JSON text (``21.5``,
            ``true``, ``{"state":"open"}``; a deleted status, ``null``).

The output keeps the input's id and headers (so a dead letter or a log line can be
traced back), has subject ``<module>/<name>`` and ``time`` = when the change was
seen.  Anything that is not a ``status_change`` raises (the router dead-letters it):
that is a routing mistake worth seeing, not data to skip.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker import Envelope, Event, Getter, StatusChange, Transform, TransformFn, compile_template
from junction_example._options import Options

NAME = "placeos_to_allxon_event"
OPTIONS = ("module", "name", "value")
_json = msgspec.json.Encoder()


def render_value(value: Any) -> str:
    """A status value as event text: strings unchanged, anything else as JSON text."""
    if isinstance(value, str):
        return value
    return _json.encode(value).decode()


def _template(opts: Options, key: str, default: str) -> Getter:
    text = opts.text(key, default)
    try:
        return compile_template(text)
    except ValueError as err:
        raise ValueError(f"option {key!r} is not a valid template ({text!r}): {err}") from err


def make(options: dict[str, Any]) -> TransformFn:
    """Build the transform for one route from its options (ValueError if they are wrong)."""
    opts = Options(options, OPTIONS)
    module = opts.text("module")
    name_of = _template(opts, "name", "{body.name}")
    value_of = _template(opts, "value", "{body.value}") if opts.has("value") else None

    def placeos_to_allxon_event(env: Envelope) -> Envelope:
        body = env.body
        if not isinstance(body, StatusChange):
            raise ValueError(f"{NAME} takes status_change envelopes, got {env.kind}")
        name = str(name_of(env))
        if not name:
            raise ValueError(f"{NAME}: the event name rendered empty for subject {env.subject!r}")
        text = str(value_of(env)) if value_of is not None else render_value(body.value)
        event = Event(module=module, name=name, value=text, time=env.ts)
        return msgspec.structs.replace(env, subject=f"{module}/{name}", body=event)

    return placeos_to_allxon_event


TRANSFORM = Transform(
    NAME, make, "PlaceOS status_change -> Allxon event (options: module, name, value)"
)
