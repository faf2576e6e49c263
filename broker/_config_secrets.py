"""Secrets in a config: the :data:`Secret` mark, finding marked fields, refusing short ones.

A field typed :data:`Secret` holds a credential: whatever the file says (inline,
``${ENV}``, ``${file:...}``), the loader registers its value with :mod:`broker._logs`
for redaction, and refuses one shorter than ``MIN_SECRET_LEN`` (it could not be kept out
of the logs without blanking ordinary words, and is too weak to be a credential).
A credential sent over a clear-text URL to another machine is warned about
(:func:`clear_text_warnings`): a warning, not an error, since a closed site network may
choose it.
"""

from __future__ import annotations

import ipaddress
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from broker import _logs as logs
from broker._errors import ConfigProblem


class _SecretMark:
    """The mark :data:`Secret` puts on a field (see :meth:`AdapterConfig.secrets`)."""

    def __repr__(self) -> str:
        return "Secret"


_SECRET = _SecretMark()
#: A string field holding a credential: whatever the file says (inline, ``${ENV}``,
#: ``${file:...}``), the loader registers its value with :mod:`broker._logs` for redaction.
Secret = Annotated[str, _SECRET]


def marked_secrets(value: Any) -> Iterator[str]:
    """Every non-empty :data:`Secret` field's value in ``value`` (see AdapterConfig.secrets)."""
    for _, secret in secret_paths(value, ""):
        yield secret


def secret_paths(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """``(TOML path, value)`` of every non-empty :data:`Secret` field in ``value``."""
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from secret_paths(item, f"{where}[{i}]")
        return
    if not isinstance(value, msgspec.Struct):
        return
    for name, tp in _secret_fields(type(value)).items():
        found = getattr(value, name)
        path = f"{where}.{name}" if where else name
        if tp is _SECRET:
            if isinstance(found, str) and found:
                yield path, found
        else:
            yield from secret_paths(found, path)


def short_secret_problems(converted: Any, where: str, file: str) -> list[ConfigProblem]:
    """A problem for each secret shorter than ``MIN_SECRET_LEN``: the logs could not hide
    it (a short string matches ordinary words), and it is too weak to be a credential."""
    problems = []
    marked = dict(secret_paths(converted, where))
    derived = [s for s in converted.secrets() if s not in marked.values()]
    found = [*((p, s, "") for p, s in marked.items()), *((where, s, " it reads") for s in derived)]
    for path, secret, how in found:
        if len(secret) < logs.MIN_SECRET_LEN:
            problems.append(
                ConfigProblem(
                    file,
                    path,
                    f"a secret{how} of {len(secret)} characters is too short to keep out of "
                    "the logs (it would match ordinary words) and too weak to be a credential",
                    hint=f"use one of at least {logs.MIN_SECRET_LEN} characters",
                )
            )
    return problems


_SECRET_FIELDS: dict[type, dict[str, Any]] = {}


def _secret_fields(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """``{field: _SECRET}`` for Secret fields, ``{field: None}`` for those that may hold
    structs (looked into); cached per struct type."""
    cached = _SECRET_FIELDS.get(cls)
    if cached is None:
        cached = {}
        names = {f.name for f in msgspec.structs.fields(cls)}
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            if name not in names:
                continue
            if _SECRET in getattr(tp, "__metadata__", ()):
                cached[name] = _SECRET
            elif not _is_leaf(tp):
                cached[name] = None
        _SECRET_FIELDS[cls] = cached
    return cached


def _is_leaf(tp: Any) -> bool:
    """True when a value of type ``tp`` cannot hold a struct (str, numbers, Literal...)."""
    if typing.get_origin(tp) is Annotated:
        return _is_leaf(typing.get_args(tp)[0])
    if typing.get_origin(tp) is Literal:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return all(_is_leaf(a) for a in typing.get_args(tp))
    return tp in (str, int, float, bool, bytes, type(None))


#: URL schemes that carry what they send in clear text (their TLS twins do not).
CLEAR_TEXT_SCHEMES = frozenset({"ws", "http", "mqtt", "tcp", "nats"})


def sends_in_clear(url: str) -> bool:
    """True when ``url`` would carry a credential unencrypted to another machine: a clear
    scheme (``ws``, ``http``, ``mqtt``, ``tcp``, ``nats``) to a host that is not loopback."""
    parts = urlsplit(url)
    if parts.scheme not in CLEAR_TEXT_SCHEMES or not parts.hostname:
        return False
    return not is_loopback(parts.hostname)


def is_loopback(host: str) -> bool:
    """``localhost``, or an address in 127.0.0.0/8 or ``::1``."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def clear_text_warnings(converted: Any, where: str, file: str) -> list[ConfigProblem]:
    """A warning for each URL this adapter sends a credential to in clear text."""
    return [
        ConfigProblem(
            file,
            f"{where}.{key}",
            "the credential goes to this host unencrypted: anyone on the way can read it",
            url,
            True,
            "use the TLS form (wss://, https://, mqtts://, tls://) unless the network is "
            "yours alone",
        )
        for key, url in converted.credential_urls()
        if sends_in_clear(url)
    ]
