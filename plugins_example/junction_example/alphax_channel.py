"""``placeos_to_alphax_channel``: a PlaceOS status change becomes an AlphaX channel write.

Which AlphaX device (``network_id``) and channel (1..32) a status lands on is a fact of
the site, so the route carries a channel map keyed by the envelope subject, which the
PlaceOS adapter writes as ``<system>/<module>_<index>/<status>``::

    [[routes]]
    name = "room-values-to-alphax"
    from = "placeos"
    kind = "status_change"
    to = "alphax"
    [[routes.transforms]]
    name = "placeos_to_alphax_channel"
    [routes.transforms.options]
    scale = 1.0                 # default for every entry: value * scale + offset
    offset = 0.0
    round = 3                   # optional: round the written value to 3 decimals
    unmapped = "drop"           # or "error"
    [routes.transforms.options.map]
    "sys-1/Environment_1/temperature" = { network_id = "4106", channel = 1 }
    "sys-1/Environment_1/humidity"    = { network_id = "4106", channel = 2 }
    "sys-1/Display_1/power"           = { network_id = "4107", channel = 1 }
    "sys-1/Sensor_1/co2"              = { network_id = "4107", channel = 3, scale = 0.001 }

Decisions (what a site integrator can rely on):

- An **unmapped subject** is filtered (returns None): the router counts it as
  ``filtered`` on the route, and this module logs each such subject once (INFO), so
  binding more statuses than the map names is harmless and visible.  With
  ``unmapped = "error"`` it raises instead, and the router dead-letters it.
- A **boolean** is written as 1 or 0 (then scaled like any number).
- A **deleted status** (value ``null``) is filtered: there is nothing to write.
- Any other **non-numeric value** (text, a list, NaN) raises ValueError naming the
  subject and value: the router dead-letters the envelope with that reason.
- The write's ``timestamp`` is when the change was seen (the envelope's ``ts``); the
  output keeps the input's id and headers, with subject ``<network_id>/<channel>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec

from broker import ChannelWrite, Envelope, StatusChange, Transform, TransformFn
from junction_example._options import Options, as_float, is_number

NAME = "placeos_to_alphax_channel"
OPTIONS = ("map", "scale", "offset", "round", "unmapped")
ENTRY_KEYS = ("network_id", "channel", "scale", "offset")
MAX_CHANNEL = 32
_LOG_SUBJECTS_MAX = 1000  # stop remembering (and logging) unmapped subjects past this

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Channel:
    """Where one subject's values go, and how they are scaled."""

    network_id: str
    channel: int
    scale: float
    offset: float


def _channel(subject: str, spec: Any, scale: float, offset: float) -> Channel:
    """One ``map`` entry, checked; errors name the subject and the key at fault."""
    where = f"map.{subject!r}"
    if not isinstance(spec, dict):
        raise ValueError(f'{where} must be a table like {{ network_id = "4106", channel = 1 }}')
    opts = Options(spec, ENTRY_KEYS)
    network_id: Any = spec.get("network_id")
    if is_number(network_id) and float(network_id).is_integer():
        network_id = str(int(network_id))  # network_id = 4106 written without quotes
    if not isinstance(network_id, str) or not network_id:
        raise ValueError(f'{where}.network_id must be a device id such as "4106"')
    channel = spec.get("channel")
    if not isinstance(channel, int) or isinstance(channel, bool):
        raise ValueError(f"{where}.channel must be a whole number 1..{MAX_CHANNEL}")
    if not 1 <= channel <= MAX_CHANNEL:
        raise ValueError(f"{where}.channel must be 1..{MAX_CHANNEL}, got {channel}")
    try:
        return Channel(
            network_id, channel, opts.number("scale", scale), opts.number("offset", offset)
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def to_number(subject: str, value: Any) -> float | None:
    """The status value as a float (booleans 1/0); None for a deleted status."""
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    number = as_float(value)
    if number is not None:
        return number
    raise ValueError(
        f"{subject}: value {value!r} is not a number; an AlphaX channel holds numbers "
        "(map this status elsewhere, or convert it with a transform before this one)"
    )


def make(options: dict[str, Any]) -> TransformFn:
    """Build the transform for one route from its options (ValueError if they are wrong)."""
    opts = Options(options, OPTIONS)
    scale = opts.number("scale", 1.0)
    offset = opts.number("offset", 0.0)
    digits = options.get("round")
    if digits is not None and (not isinstance(digits, int) or isinstance(digits, bool)):
        raise ValueError(f"option 'round' must be a whole number of decimals, got {digits!r}")
    strict = opts.choice("unmapped", ("drop", "error"), "drop") == "error"
    table = opts.table("map")
    if not table:
        raise ValueError("option 'map' names no subject; add 'sys/Mod_1/name' = { ... }")
    channels = {subject: _channel(subject, spec, scale, offset) for subject, spec in table.items()}
    unmapped_seen: set[str] = set()

    def placeos_to_alphax_channel(env: Envelope) -> Envelope | None:
        body = env.body
        if not isinstance(body, StatusChange):
            raise ValueError(f"{NAME} takes status_change envelopes, got {env.kind}")
        target = channels.get(env.subject)
        if target is None:
            if strict:
                raise ValueError(f"{env.subject!r} is not in the channel map of {NAME}")
            if env.subject not in unmapped_seen and len(unmapped_seen) <= _LOG_SUBJECTS_MAX:
                unmapped_seen.add(env.subject)
                if len(unmapped_seen) > _LOG_SUBJECTS_MAX:
                    log.warning(
                        "%s: over %d unmapped subjects; no longer logging each one "
                        "(the route's 'filtered' counter still counts them)",
                        NAME,
                        _LOG_SUBJECTS_MAX,
                    )
                else:
                    log.info(
                        "%s: subject %r is not in the channel map; its changes are filtered "
                        "(logged once per subject)",
                        NAME,
                        env.subject,
                    )
            return None
        number = to_number(env.subject, body.value)
        if number is None:
            log.debug("%s: %s was deleted; nothing to write", NAME, env.subject)
            return None
        value = number * target.scale + target.offset
        if digits is not None:
            value = round(value, digits)
        write = ChannelWrite(
            network_id=target.network_id, channel=target.channel, value=value, timestamp=env.ts
        )
        return msgspec.structs.replace(
            env, subject=f"{target.network_id}/{target.channel}", body=write
        )

    return placeos_to_alphax_channel


TRANSFORM = Transform(
    NAME,
    make,
    "PlaceOS status_change -> AlphaX channel_write through a per-site channel map",
)
