"""Built-in transforms, registered through the same hook third parties use.

``celsius_to_kelvin``  adds 273.15 to ``body.value`` (Allxon reports temperatures in K)
``on_change``          passes an envelope only when its ``body.value`` differs from the
                       last one passed for the same subject (option ``min_delta`` for
                       numbers: a dead-band)
``throttle``           at most ``per_s`` envelopes per subject per second; the rest are
                       filtered (counted by the router as ``filtered``)
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from broker import Envelope
from broker.hookspecs import Transform, TransformFn, transform


@transform("celsius_to_kelvin", "value in degrees Celsius -> Kelvin (+273.15, 2 decimals)")
def celsius_to_kelvin(env: Envelope) -> Envelope:
    value = getattr(env.body, "value", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"body.value is {value!r}, not a temperature in Celsius")
    body = msgspec.structs.replace(env.body, value=round(value + 273.15, 2))
    return msgspec.structs.replace(env, body=body)


def _on_change(options: dict[str, Any]) -> TransformFn:
    min_delta = options.pop("min_delta", 0)
    if options:
        raise ValueError(f"unknown option(s) {sorted(options)}; valid: min_delta")
    if isinstance(min_delta, bool) or not isinstance(min_delta, int | float) or min_delta < 0:
        raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
    last: dict[str, Any] = {}
    missing = object()

    def on_change(env: Envelope) -> Envelope | None:
        value = getattr(env.body, "value", None)
        before = last.get(env.subject, missing)
        if before is not missing:
            if min_delta and _number(value) and _number(before):
                if abs(value - before) <= min_delta:
                    return None
            elif value == before:
                return None
        last[env.subject] = value
        return env

    return on_change


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _throttle(options: dict[str, Any]) -> TransformFn:
    per_s = options.pop("per_s", None)
    if options:
        raise ValueError(f"unknown option(s) {sorted(options)}; valid: per_s")
    if isinstance(per_s, bool) or not isinstance(per_s, int | float) or per_s <= 0:
        raise ValueError(f"per_s must be a number > 0, got {per_s!r}")
    interval = 1.0 / per_s
    next_ok: dict[str, float] = {}

    def throttle(env: Envelope) -> Envelope | None:
        now = time.monotonic()
        if now < next_ok.get(env.subject, 0.0):
            return None
        next_ok[env.subject] = now + interval
        return env

    return throttle


ALL: list[Transform] = [
    celsius_to_kelvin,
    Transform("on_change", _on_change, "pass only changed values per subject (option min_delta)"),
    Transform("throttle", _throttle, "at most per_s envelopes per subject per second"),
]
