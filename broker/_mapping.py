"""Field access, templates and the declarative ``map`` of a route, compiled once.

Paths name parts of an envelope: ``source``, ``subject``, ``kind``, ``id``, ``ts``,
``ts_ms``, ``correlation_id``, ``headers.<name>``, ``body.<field>`` and deeper
(``body.params.setpoint``, ``body.value.0`` for a list item).

A route's ``map`` builds the outgoing envelope::

    [routes.map]
    kind = "channel_write"                  # the outgoing body kind (default: unchanged)
    subject = "{body.system}/{body.name}"   # envelope subject (template)
    network_id = "4106"                     # a constant
    channel = 1
    value = { from = "body.value", scale = 1.0, offset = 273.15, round = 2 }
    timestamp = "{ts}"                      # a lone placeholder keeps the value's type
    args = ["{body.params.level}", 30]      # a list: each item compiled the same way

A template is a string with ``{path}`` or ``{path:format-spec}`` placeholders; a
string that is exactly one placeholder yields the value itself (a number stays a
number).  Values are checked against the body type when the envelope is built, so a
mapping that yields text where a number belongs fails with the field's name.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import msgspec

from broker._envelope import BODY_TYPES, Envelope
from broker._errors import JunctionError

MISSING: Any = object()
Getter = Callable[[Envelope], Any]

_ENVELOPE_FIELDS = {"source", "subject", "id", "ts", "correlation_id", "reply_to", "deadline"}


class MappingError(JunctionError, ValueError):
    """A mapping could not build the outgoing envelope (missing field, wrong type)."""


class MapSpecError(JunctionError, ValueError):
    """A ``map`` table is invalid: ``key`` names the entry, ``options`` the valid names."""

    def __init__(self, key: str, message: str, value: Any = MISSING, options: Any = ()) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.value = value
        self.options = list(options)


def compile_path(path: str) -> Getter:
    """A fast getter for ``path``; returns MISSING when any step is absent."""
    head, _, rest = path.partition(".")
    if head == "kind" and not rest:
        return lambda env: env.body.kind_name
    if head == "ts_ms" and not rest:
        return lambda env: int(env.ts * 1000)
    if head in _ENVELOPE_FIELDS and not rest:
        return lambda env: getattr(env, head)
    if head == "headers" and rest:
        return lambda env: env.headers.get(rest, MISSING)
    if head == "body" and rest:
        steps = rest.split(".")
        first, more = steps[0], steps[1:]
        if not more:
            return lambda env: getattr(env.body, first, MISSING)

        def deep(env: Envelope) -> Any:
            value = getattr(env.body, first, MISSING)
            for step in more:
                value = _step(value, step)
                if value is MISSING:
                    break
            return value

        return deep
    raise ValueError(
        f"unknown path {path!r}: start with body., headers., or one of "
        + ", ".join(sorted(_ENVELOPE_FIELDS | {"kind", "ts_ms"}))
    )


def _step(value: Any, step: str) -> Any:
    if isinstance(value, dict):
        return value.get(step, MISSING)
    if isinstance(value, list | tuple):
        try:
            return value[int(step)]
        except (ValueError, IndexError):
            return MISSING
    if isinstance(value, msgspec.Struct):
        return getattr(value, step, MISSING)
    return MISSING


def compile_template(text: str) -> Getter:
    """A getter for a template string (see the module docstring)."""
    parts = list(string.Formatter().parse(text))
    if not any(field is not None for _, field, _, _ in parts):
        return lambda env: text
    if len(parts) == 1 and parts[0][0] == "" and not parts[0][2] and not parts[0][3]:
        field = parts[0][1]
        assert field is not None
        getter = compile_path(field)

        def whole(env: Envelope) -> Any:
            value = getter(env)
            if value is MISSING:
                raise MappingError(f"template {text!r}: {field} is not present")
            return value

        return whole
    pieces: list[tuple[str, Getter | None, str, str, str | None]] = []
    for literal, field, spec, conv in parts:
        getter_: Getter | None = compile_path(field) if field is not None else None
        pieces.append((literal, getter_, field or "", spec or "", conv))

    def render(env: Envelope) -> str:
        out = []
        for literal, get, name, spec, conv in pieces:
            out.append(literal)
            if get is not None:
                value = get(env)
                if value is MISSING:
                    raise MappingError(f"template {text!r}: {name} is not present")
                if conv == "r":
                    value = repr(value)
                elif conv == "s":
                    value = str(value)
                out.append(format(value, spec))
        return "".join(out)

    return render


def compile_scaled(spec: dict[str, Any]) -> Getter:
    """``{from = path, scale = k, offset = c, round = n, default = v}`` -> value*k + c."""
    unknown = set(spec) - {"from", "scale", "offset", "round", "default"}
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)}; valid: from, scale, offset, round, default"
        )
    if "from" not in spec:
        raise ValueError("needs 'from' (the path of the number to scale)")
    getter = compile_path(str(spec["from"]))
    scale = spec.get("scale", 1)
    offset = spec.get("offset", 0)
    digits = spec.get("round")
    default = spec.get("default", MISSING)
    for key, val in (("scale", scale), ("offset", offset)):
        if isinstance(val, bool) or not isinstance(val, int | float):
            raise ValueError(f"{key} must be a number, got {val!r}")
    if digits is not None and (isinstance(digits, bool) or not isinstance(digits, int)):
        raise ValueError(f"round must be a whole number of digits, got {digits!r}")
    source = spec["from"]

    def scaled(env: Envelope) -> Any:
        value = getter(env)
        if value is MISSING or value is None:
            if default is not MISSING:
                return default
            raise MappingError(f"{source} is not present")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MappingError(f"{source} is {value!r}, not a number to scale")
        result = value * scale + offset
        return round(result, digits) if digits is not None else result

    return scaled


class Mapping:
    """A compiled ``map`` table: builds the outgoing envelope from the incoming one."""

    def __init__(self, spec: dict[str, Any], in_kinds: list[str]) -> None:
        """Compile ``spec``; raises MapSpecError naming the key at fault."""
        self.spec = spec
        kind = spec.get("kind")
        if kind is not None and kind not in BODY_TYPES:
            raise MapSpecError("kind", "unknown body kind", kind, BODY_TYPES)
        self.out_kind: str | None = kind
        self.subject: Getter | None = None
        self.fields: list[tuple[str, Getter]] = []
        targets = [kind] if kind else in_kinds
        for key, value in spec.items():
            if key == "kind":
                continue
            try:
                getter = _compile_value(value)
            except ValueError as err:
                raise MapSpecError(key, str(err), value) from err
            if key == "subject":
                self.subject = getter
                continue
            for target in targets:
                fields = BODY_TYPES[target].__struct_fields__
                if key not in fields:
                    raise MapSpecError(key, f"{target} has no field {key!r}", options=fields)
            self.fields.append((key, getter))

    def apply(self, env: Envelope) -> Envelope:
        """The mapped envelope (same id, correlation and deadline as the input)."""
        body = env.body
        cls = BODY_TYPES[self.out_kind] if self.out_kind else type(body)
        same = cls is type(body)
        values = {f: getattr(body, f) for f in body.__struct_fields__} if same else {}
        for key, getter in self.fields:
            values[key] = getter(env)
        try:
            new_body = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as err:
            raise MappingError(f"building {cls.kind_name}: {err}") from err
        subject = self.subject(env) if self.subject is not None else env.subject
        return msgspec.structs.replace(env, body=new_body, subject=str(subject))


def _compile_value(value: Any) -> Getter:
    if isinstance(value, str):
        return compile_template(value)
    if isinstance(value, dict):
        return compile_scaled(value)
    if isinstance(value, list):  # e.g. exec args = ["{body.params.power}", 30]
        items = [_compile_value(v) for v in value]
        return lambda env: [get(env) for get in items]
    return lambda env: value
