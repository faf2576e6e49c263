"""A msgspec ValidationError explained as a :class:`ConfigProblem` (for :mod:`broker._config`).

msgspec says what is wrong and where (`` - at `$.write.port` ``); this turns that into the
file, the TOML path, the value as written, and a hint: the nearest valid key or choice, the
tags of a tagged union, the range of a bounded number (``must be from 1 to 65535``).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Annotated, Any

import msgspec

from broker._errors import ConfigProblem

_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _problem(
    err: msgspec.ValidationError, data: Any, cls: type, where: str, file: str
) -> ConfigProblem:
    text = str(err)
    message, _, at = text.partition(" - at `$")
    parts = _path_parts(at.rstrip("`"))
    path = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
    path = path.lstrip(".")
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", message)
    if unknown:
        key = unknown.group(1)
        fields = _field_names(_type_at(cls, parts, data))
        return ConfigProblem(
            file,
            f"{path}.{key}".lstrip("."),
            "unknown key",
            hint=_suggest(key, fields) or _choices(fields),
        )
    missing = re.fullmatch(r"Object missing required field `(.*)`", message)
    if missing:
        tags = _tags_at(cls, parts, data)
        hint = f"one of {', '.join(tags[1:])}" if tags and missing.group(1) == tags[0] else ""
        key = f"{path}.{missing.group(1)}".lstrip(".")
        return ConfigProblem(file, key, "missing required key", hint=hint)
    found, ok = _value_at(data, parts)
    tags = _tags_at(cls, parts[:-1], data)
    if tags and message.startswith("Invalid value") and parts[-1] == tags[0]:
        allowed = tags[1:]
        hint = _suggest(str(found), allowed) if ok else ""
        return ConfigProblem(file, path, f"must be one of {', '.join(allowed)}", found, ok, hint)
    if isinstance(found, dict | list):  # a whole table: its own message says what is wrong
        ok = False
    if message.startswith("Invalid enum value"):
        allowed = [str(a) for a in typing.get_args(_type_at(cls, parts))]
        hint = _suggest(str(found), allowed) if ok else ""
        return ConfigProblem(file, path, f"must be one of {', '.join(allowed)}", found, ok, hint)
    return ConfigProblem(file, path, _humanize(message, cls, parts, data), found, ok)


def _tags_at(cls: Any, path: list[str | int], data: Any) -> list[str]:
    """``[tag field, tag, ...]`` when the key at ``path`` holds a tagged union, else ``[]``."""
    if not path or not isinstance(path[-1], str):
        return []
    owner = _type_at(cls, path[:-1], data)
    if not (isinstance(owner, type) and issubclass(owner, msgspec.Struct)):
        return []
    tagged = _variants(typing.get_type_hints(owner).get(path[-1]))
    return [tagged[0], *tagged[1]] if tagged is not None else []


def _path_parts(at: str) -> list[str | int]:
    parts: list[str | int] = []
    for m in _PATH_PART.finditer(at):
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) != "...":
            parts.append(int(m.group(2)))
    return parts


def _value_at(data: Any, parts: list[str | int]) -> tuple[Any, bool]:
    for part in parts:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None, False
    return data, True


def _type_at(cls: Any, parts: list[str | int], data: Any = None) -> Any:
    """Follow a path through struct annotations to find the struct whose keys are checked.

    ``data`` (the table as written) picks the variant of a tagged union by its tag.
    """
    for part in parts:
        cls = _unwrap(cls, data)
        if isinstance(part, int):
            args = typing.get_args(cls)
            cls = args[0] if args else None
        elif isinstance(cls, type) and issubclass(cls, msgspec.Struct):
            hints = typing.get_type_hints(cls)
            cls = hints.get(part)
        else:
            args = typing.get_args(cls)
            cls = args[-1] if args else None
        data, _ = _value_at(data, [part])
    return _unwrap(cls, data)


def _variants(tp: Any) -> tuple[str, dict[str, type]] | None:
    """``(tag field, {tag: struct})`` when ``tp`` is a union of tagged structs."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    found: dict[str, type] = {}
    field = None
    for arg in typing.get_args(tp):
        config = getattr(arg, "__struct_config__", None)
        if config is None or config.tag_field is None:
            return None
        field = config.tag_field
        found[str(config.tag)] = arg
    return (field, found) if field is not None else None


def _unwrap(tp: Any, data: Any = None) -> Any:
    """Pick the struct (or container) out of ``X | str | None`` style unions (of a tagged
    union: the variant ``data`` names, if it names one)."""
    tagged = _variants(tp)
    if tagged is not None:
        field, variants = tagged
        tag = data.get(field) if isinstance(data, dict) else None
        return variants.get(tag, tp) if isinstance(tag, str) else tp
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        candidates = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in candidates:
            if isinstance(a, type) and issubclass(a, msgspec.Struct):
                return a
        for a in candidates:
            if typing.get_origin(a) in (list, dict):
                return a
        return candidates[0] if candidates else tp
    return tp


def _field_names(cls: Any) -> list[str]:
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        return [f.encode_name for f in msgspec.structs.fields(cls)]
    return []


_BOUND = re.compile(r"Expected `(?:int|float)` (>=|>|<=|<) (\S+)")


def _humanize(
    message: str, cls: Any = None, parts: list[str | int] | None = None, data: Any = None
) -> str:
    m = re.fullmatch(r"Expected `(.*)`, got `(.*)`", message)
    if m:
        return f"expected {m.group(1)}, not {m.group(2)}"
    m = _BOUND.fullmatch(message)
    if m:
        meta = _meta_at(cls, parts or [], data)
        low, high = (meta.ge, meta.le) if meta is not None else (None, None)
        if low is not None and high is not None:
            return f"must be from {_num(low)} to {_num(high)}"
        return f"must be {m.group(1)} {_num(float(m.group(2)))}"
    return message[:1].lower() + message[1:]


def _num(bound: float) -> str:
    return f"{bound:g}"


def _meta_at(cls: Any, parts: list[str | int], data: Any) -> msgspec.Meta | None:
    """The msgspec.Meta bounds of the field at ``parts`` (None if not found)."""
    if not parts or not isinstance(parts[-1], str):
        return None
    owner = _type_at(cls, parts[:-1], data)
    if not (isinstance(owner, type) and issubclass(owner, msgspec.Struct)):
        return None
    name = next(
        (f.name for f in msgspec.structs.fields(owner) if f.encode_name == parts[-1]), parts[-1]
    )
    tp = typing.get_type_hints(owner, include_extras=True).get(name)
    for arg in (tp, *typing.get_args(tp)):
        if typing.get_origin(arg) is Annotated:
            for extra in arg.__metadata__:
                if isinstance(extra, msgspec.Meta):
                    return extra
    return None


def _suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _choices(options: Any) -> str:
    names = sorted(options)
    return f"valid: {', '.join(names)}" if names else ""
