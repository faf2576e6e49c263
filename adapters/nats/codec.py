"""Pure parts of the NATS adapter: subjects, payloads, server versions (no I/O).

- **Subjects.** A publish subject is a template (``junction.{kind}.{subject}``); each field's
  value becomes exactly one subject token: ``.`` (the token separator), ``*`` and ``>``
  (wildcards), whitespace and control characters are replaced by ``_``, and an empty value
  becomes ``_``. So a PlaceOS subject ``sys-1/Display_1/power`` stays one token, and no
  envelope can publish to a wildcard or to a subject outside the template's shape.
- **Payloads.** The envelope as Junction's own JSON (:func:`broker.encode`); the source
  decodes it with :func:`broker.decode` (total: an envelope or an error, never a crash).
- **Versions.** :data:`FEATURES` lists what a config may ask for that an older server lacks,
  with the first server version that has it; :func:`missing_features` says, for a server
  version, which configured ones it lacks (checked on connect, refused in one line each).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from broker import Envelope, decode, encode

if TYPE_CHECKING:
    from adapters.nats.config import NatsConfig

#: Fields a subject or msg-id template may name.
TEMPLATE_FIELDS = ("kind", "subject", "source", "route", "id")
_FIELD = re.compile(r"\{([^{}]*)\}")
_BAD_TOKEN_CHARS = re.compile(r"[.*>\s\x00-\x1f\x7f]")
_BAD_ID_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


def subject_token(value: str) -> str:
    """``value`` as one NATS subject token (see the module docstring)."""
    return _BAD_TOKEN_CHARS.sub("_", value) or "_"


def check_subject_filter(subject: str) -> str:
    """A problem with ``subject`` as a stream or consumer subject (wildcards allowed), or ''."""
    if not subject:
        return "a subject is empty"
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token:
            return f"{subject!r} has an empty token"
        if re.search(r"[\s\x00-\x1f\x7f]", token):
            return f"{subject!r} has whitespace or a control character"
        if token == ">" and i != len(tokens) - 1:
            return f"{subject!r}: '>' may only be the last token"
        if token not in ("*", ">") and ("*" in token or ">" in token):
            return f"{subject!r}: a wildcard must be a whole token"
    return ""


Render = Callable[[Envelope, str], str]


def compile_subject_template(template: str, key: str, subject: bool = True) -> Render:
    """``template`` as a function ``(envelope, route) -> text``; ValueError naming ``key``.

    ``subject``: the result is a publish subject (fields become single tokens; the literal
    parts may hold no wildcard or empty token); else a plain id (whitespace replaced).
    """
    names = _FIELD.findall(template)
    for name in names:
        if name not in TEMPLATE_FIELDS:
            raise ValueError(
                f"{key}: unknown field {{{name}}} in {template!r}; fields: "
                + ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
            )
    if "{" in _FIELD.sub("", template) or "}" in _FIELD.sub("", template):
        raise ValueError(f"{key}: unbalanced braces in {template!r}")
    if not template:
        raise ValueError(f"{key} is empty")
    if subject:
        shape = _FIELD.sub("x", template)
        problem = check_subject_filter(shape)
        if problem or "*" in shape or ">" in shape:
            raise ValueError(
                f"{key}: {template!r} is not a publish subject "
                f"({problem or 'no wildcards in a publish subject'})"
            )
    clean = subject_token if subject else (lambda v: _BAD_ID_CHARS.sub("_", v) or "_")
    parts = _FIELD.split(template)  # literal, field, literal, field, ...

    def render(env: Envelope, route: str) -> str:
        values = {
            "kind": env.kind,
            "subject": env.subject,
            "source": env.source,
            "route": route,
            "id": env.id,
        }
        return "".join(part if i % 2 == 0 else clean(values[part]) for i, part in enumerate(parts))

    return render


class PayloadError(ValueError):
    """The envelope cannot be published: the data's fault (never sent again)."""


def encode_payload(env: Envelope, max_payload: int) -> bytes:
    """The envelope's bytes; PayloadError when it cannot be encoded or is too large."""
    try:
        data = encode(env)
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as err:
        raise PayloadError(f"cannot encode the envelope: {err}") from None
    if max_payload > 0 and len(data) > max_payload:
        raise PayloadError(
            f"the envelope is {len(data)} bytes; the server takes at most {max_payload} "
            "(max_payload)"
        )
    return data


def decode_payload(data: bytes) -> Envelope:
    """An envelope from a message's bytes; ``msgspec.DecodeError``/``ValidationError``."""
    return decode(data)


# --- server versions and the features that need them ----------------------------------------


def parse_version(text: str) -> tuple[int, int, int]:
    """``"2.10.7"``, ``"v2.11.0-beta.1"`` -> (2, 10, 7); unknown parts are 0."""
    match = re.match(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
    if match is None:
        return (0, 0, 0)
    return tuple(int(g or 0) for g in match.groups())  # type: ignore[return-value]


@dataclass(frozen=True)
class Feature:
    """Something a config asks for that servers before ``since`` lack."""

    name: str
    key: str
    since: tuple[int, int, int]
    wanted: Callable[[NatsConfig], bool]


def _any_stream(pred: Callable[..., bool]) -> Callable[[NatsConfig], bool]:
    return lambda cfg: any(pred(s) for s in cfg.streams)


FEATURES: tuple[Feature, ...] = (
    Feature("stream compression", "streams[].compression", (2, 10, 0),
            _any_stream(lambda s: s.compression != "none")),
    Feature("per-message TTL", "streams[].allow_msg_ttl", (2, 11, 0),
            _any_stream(lambda s: s.allow_msg_ttl)),
    Feature("per-message TTL", "publish.msg_ttl_s", (2, 11, 0),
            lambda cfg: cfg.publish is not None and cfg.publish.msg_ttl_s > 0),
    Feature("several filter subjects on one consumer", "consume.filter_subjects", (2, 10, 0),
            lambda cfg: cfg.consume is not None and len(cfg.consume.filter_subjects) > 1),
)  # fmt: skip


def missing_features(cfg: NatsConfig, version: str) -> list[str]:
    """One line per configured feature the server at ``version`` lacks."""
    have = parse_version(version)
    return [
        f"{f.key}: {f.name} needs nats-server {'.'.join(map(str, f.since[:2]))}+, "
        f"the server is {version}"
        for f in FEATURES
        if f.wanted(cfg) and have < f.since
    ]
