"""PlaceOS real-time WebSocket codec: text frames <-> frozen msgspec structs, both directions.

Pure: ``str``/``bytes`` in, structs out and back; no trio, no sockets. The wire as the real
server speaks it is described in ``docs/protocols/placeos.md``; the public docs page is wrong
in a few places ("Where the public docs are wrong") and this codec follows the server:

- a ``notify`` ``value`` is *embedded* JSON, never a string holding JSON. A docs-style
  ``"value": "[]"`` therefore decodes to the JSON *string* ``"[]"`` (it is not parsed twice);
- ``unbind`` / ``debug`` / ``ignore`` successes carry no ``meta`` (a docs-style ``meta`` is
  tolerated, as are the docs' ``mod_id`` and ``klass`` extras: unknown fields are ignored);
- the PlaceOS error code travels in ``error_code``; ``code`` is an HTTP-like status from the
  driver. Request ids are integers only (the docs' "number or string" is a parse failure).

Client side (the adapter): request structs (``BindRequest`` ... ``IgnoreRequest``) and
``encode_request``; ``decode_server_frame`` turns one server frame into a ``SuccessFrame``,
``NotifyFrame``, ``ErrorFrame``, ``DebugFrame`` or ``Heartbeat`` in one pass (a tagged union on
``type``; the raw text ``pong`` / ``ping`` is recognised before any JSON parsing). Values stay
``msgspec.Raw`` so the hot path never parses them twice; ``decode_value`` parses one on demand.

Server side (the simulator): ``parse_request`` is as strict as the server's
``JSON::Serializable::Strict`` request (integer ``id``, known ``cmd``, every required field,
no unknown key) and raises ``RequestParseError`` where the real server would stay silent;
``encode_success`` / ``encode_error`` / ``encode_notify`` / ``encode_debug`` write replies
with the server's field order and with null fields omitted.

On the wire ``index`` is omitted when it is 1 (the server's default) and ``args`` when it is
``None``: requests are encoded with ``omit_defaults``.

Decoding is total (``broker.decode_json``, whose docstring states the bounds and choices):
for any text a frame or a ``CodecError``. A frame nested more than 128 levels (the frame's
own object included), a number beyond 4,300 digits or +-1.8e308, invalid UTF-8 (or an
escaped lone surrogate), ``NaN`` / ``Infinity``: all ``MalformedFrameError``.
A frame skips over its ``value`` (a ``Raw``): syntax and depth are checked with the frame,
UTF-8 and numbers only by ``decode_value``, which raises ``MalformedFrameError`` as well.
A key given twice: the last one wins (a second, different ``type`` is refused). Strings are
bounded by the frame, whose size the WebSocket limits (``max_message_bytes``, 4 MiB).
See docs/protocols/placeos.md, "Decoding limits".

Exceptions (all ``ValueError`` via ``CodecError``; each has ``excerpt``, the first 120
characters of the offending frame, and ``reason``, msgspec's message with its JSON path)::

    CodecError
     +-- MalformedFrameError    a server frame the client cannot decode
     +-- RequestParseError      a request the server would not parse (no reply is due)
          +-- RequestJSONError     not JSON at all, or beyond a decoding bound
          +-- RequestSchemaError   JSON, but not a valid request (``request_id`` if readable)
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec
from msgspec import UNSET, UnsetType

from broker import JsonRefused, decode_json

__all__ = [
    "PING",
    "PING_FRAME",
    "PONG",
    "PONG_FRAME",
    "BindRequest",
    "CodecError",
    "Command",
    "DebugFrame",
    "DebugRequest",
    "ErrorCode",
    "ErrorFrame",
    "ExecRequest",
    "Heartbeat",
    "IgnoreRequest",
    "MalformedFrameError",
    "Meta",
    "NotifyFrame",
    "Request",
    "RequestJSONError",
    "RequestParseError",
    "RequestSchemaError",
    "ServerFrame",
    "SuccessFrame",
    "UnbindRequest",
    "decode_server_frame",
    "decode_value",
    "encode_debug",
    "encode_error",
    "encode_notify",
    "encode_request",
    "encode_success",
    "error_code_name",
    "parse_request",
]

EXCERPT_CHARS: Final = 120
PING: Final = "ping"
PONG: Final = "pong"

Command: TypeAlias = Literal["bind", "unbind", "exec", "debug", "ignore"]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


# --------------------------------------------------------------------------- errors


def _excerpt(data: str | bytes) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    if len(text) <= EXCERPT_CHARS:
        return text
    return f"{text[:EXCERPT_CHARS]}... ({len(text) - EXCERPT_CHARS} more chars)"


class CodecError(ValueError):
    """Base of every error this codec raises; ``excerpt`` shows the start of the frame."""

    def __init__(self, what: str, reason: str, data: str | bytes) -> None:
        self.reason = reason
        self.excerpt = _excerpt(data)
        super().__init__(f"{what}: {reason}; frame: {self.excerpt!r}")


class MalformedFrameError(CodecError):
    """A frame from the server that is not JSON (or beyond a decoding bound), not an object
    or not a known frame type."""

    def __init__(self, reason: str, data: str | bytes) -> None:
        super().__init__("malformed PlaceOS server frame", reason, data)


class RequestParseError(CodecError):
    """A request the real server cannot parse: it logs it and sends no reply at all."""

    def __init__(self, reason: str, data: str | bytes, request_id: int | None = None) -> None:
        self.request_id = request_id
        super().__init__("unparseable PlaceOS request", reason, data)


class RequestJSONError(RequestParseError):
    """The request frame is not JSON (or beyond a decoding bound)."""


class RequestSchemaError(RequestParseError):
    """The request frame is JSON but not a request (wrong type, missing field, unknown key)."""


# --------------------------------------------------------------------------- error codes


class ErrorCode(enum.IntEnum):
    """PlaceOS ``error_code`` values (``PlaceOS::Driver::Proxy::RemoteDriver::ErrorCode``)."""

    PARSE_ERROR = 0  # invalid JSON (the current server stays silent instead)
    BAD_REQUEST = 1  # no such function on the module
    ACCESS_DENIED = 2  # privileged function or protected module
    REQUEST_FAILED = 3  # the driver raised: "module raised: <msg>"
    UNKNOWN_COMMAND = 4  # (the current server stays silent instead)
    SYSTEM_NOT_FOUND = 5  # (the current server reports module not found instead)
    MODULE_NOT_FOUND = 6
    UNEXPECTED_FAILURE = 7  # framework-level failure


def error_code_name(code: int | None) -> str:
    """The ``ErrorCode`` name for ``code``, or a clear label for a code this codec does not know.

    Never raises: a newer server may send codes beyond 7, and a client must still report them.
    """
    if code is None:
        return "MISSING_ERROR_CODE"
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN_ERROR_CODE_{code}"


# --------------------------------------------------------------------------- shared structs


class Meta(msgspec.Struct, frozen=True):
    """Where a reply comes from: system id, module name (or id for debug), index, name.

    ``index`` and ``name`` have defaults only to tolerate the docs' debug-success ``meta``.
    """

    sys: str
    mod: str
    index: int = 1
    name: str = ""


# --------------------------------------------------------------------------- client requests


class _RequestBase(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="cmd"):
    id: int
    sys: str
    mod: str
    index: int = 1
    name: str


class BindRequest(_RequestBase, frozen=True, kw_only=True, tag="bind"):
    """Subscribe to status ``name`` of module ``mod`` (by name) at ``index`` in system ``sys``."""


class UnbindRequest(_RequestBase, frozen=True, kw_only=True, tag="unbind"):
    """Drop a binding made by ``bind`` (success even when nothing was bound)."""


class ExecRequest(_RequestBase, frozen=True, kw_only=True, tag="exec"):
    """Call method ``name`` with positional ``args`` (``None``: none, omitted on the wire)."""

    args: list[Any] | None = None


class DebugRequest(_RequestBase, frozen=True, kw_only=True, tag="debug"):
    """Receive the log lines of module *id* ``mod`` as ``debug`` frames."""


class IgnoreRequest(_RequestBase, frozen=True, kw_only=True, tag="ignore"):
    """Stop the ``debug`` frames of module *id* ``mod`` (same ``sys`` and ``index``)."""


Request: TypeAlias = BindRequest | UnbindRequest | ExecRequest | DebugRequest | IgnoreRequest

_request_encoder = msgspec.json.Encoder()


def encode_request(request: Request) -> str:
    """One request as the text of one WebSocket frame."""
    return _request_encoder.encode(request).decode()


# --------------------------------------------------------------------------- server frames


class SuccessFrame(msgspec.Struct, frozen=True, tag_field="type", tag="success"):
    """Success of request ``id``: ``meta`` for bind/exec, ``value`` + ``code`` for exec."""

    id: int
    meta: Meta | None = None
    value: msgspec.Raw | UnsetType = UNSET
    code: int | None = None


_NULL: Final = msgspec.Raw(b"null")


class NotifyFrame(msgspec.Struct, frozen=True, tag_field="type", tag="notify"):
    """A status value of the binding made by request ``id``; ``null`` when it was deleted."""

    id: int
    value: msgspec.Raw = _NULL
    meta: Meta | None = None


class ErrorFrame(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    """Failure of request ``id``: PlaceOS ``error_code``, text ``msg``, HTTP-like ``code``."""

    id: int
    error_code: int | None = None
    msg: str = ""
    code: int | None = None

    @property
    def error_name(self) -> str:
        """``error_code`` as a name (``MODULE_NOT_FOUND``, ``UNKNOWN_ERROR_CODE_9`` ...)."""
        return error_code_name(self.error_code)


class DebugFrame(msgspec.Struct, frozen=True, tag_field="type", tag="debug"):
    """A log line of module id ``mod`` for a session that sent ``debug`` (``id``: that request)."""

    mod: str
    msg: str = ""
    level: str = "info"
    id: int | None = None
    meta: Meta | None = None


class Heartbeat(msgspec.Struct, frozen=True):
    """The raw text ``pong`` (or ``ping``): an application-level heartbeat, not JSON."""

    kind: Literal["ping", "pong"]


PING_FRAME: Final = Heartbeat("ping")
PONG_FRAME: Final = Heartbeat("pong")

ServerFrame: TypeAlias = SuccessFrame | NotifyFrame | ErrorFrame | DebugFrame | Heartbeat

_JsonFrame: TypeAlias = SuccessFrame | NotifyFrame | ErrorFrame | DebugFrame
_frame_decoder: msgspec.json.Decoder[_JsonFrame] = msgspec.json.Decoder(_JsonFrame)
_value_decoder = msgspec.json.Decoder()


def decode_server_frame(data: str | bytes) -> ServerFrame:
    """Decode one frame the server sent (text or binary) in one pass.

    Raises ``MalformedFrameError`` (with an excerpt) for anything that is not a heartbeat or
    a JSON object of a known ``type``.
    """
    if len(data) == 4:
        if data == PONG or data == b"pong":
            return PONG_FRAME
        if data == PING or data == b"ping":
            return PING_FRAME
    try:
        return decode_json(_frame_decoder, data)
    except JsonRefused as err:
        raise MalformedFrameError(err.reason, data) from None


def decode_value(raw: msgspec.Raw) -> Any:
    """Parse a raw ``value`` of a decoded frame; raises ``MalformedFrameError``.

    The frame decoder checked its syntax and depth but only skipped over it: invalid UTF-8
    in its strings and numbers too large are found here.
    """
    try:
        return decode_json(_value_decoder, raw, max_depth=None)
    except JsonRefused as err:
        raise MalformedFrameError(f"value: {err.reason}", bytes(raw)) from None


# --------------------------------------------------------------------------- server side


class _StrictRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The server's request shape: Crystal ``JSON::Serializable::Strict``.

    ``index: null`` means the default 1, and ``args`` is accepted on every command (the server
    declares it nilable for all and only exec uses it).
    """

    id: Int64
    cmd: Command
    sys: str
    mod: str
    name: str
    index: Int32 | None = None
    args: list[Any] | None = None


_strict_decoder = msgspec.json.Decoder(_StrictRequest)


class _IdOnly(msgspec.Struct):
    id: Int64 | None = None


_id_decoder = msgspec.json.Decoder(_IdOnly)


def _salvage_id(data: str | bytes) -> int | None:
    try:
        return decode_json(_id_decoder, data).id
    except JsonRefused:
        return None


def parse_request(data: str | bytes) -> Request:
    """Parse one client frame as strictly as the real server does.

    Raises ``RequestJSONError`` for text that is not JSON, ``RequestSchemaError`` for JSON the
    server rejects (string or float ``id``, unknown ``cmd``, a missing field, an unknown key).
    ``args`` sent with a command other than ``exec`` is accepted and dropped, as the server does.
    """
    try:
        raw = decode_json(_strict_decoder, data)
    except JsonRefused as err:
        if err.malformed:
            raise RequestJSONError(err.reason, data) from None
        raise RequestSchemaError(err.reason, data, _salvage_id(data)) from None
    index = 1 if raw.index is None else raw.index
    cmd = raw.cmd
    if cmd == "bind":
        return BindRequest(id=raw.id, sys=raw.sys, mod=raw.mod, index=index, name=raw.name)
    if cmd == "exec":
        return ExecRequest(
            id=raw.id, sys=raw.sys, mod=raw.mod, index=index, name=raw.name, args=raw.args
        )
    if cmd == "unbind":
        return UnbindRequest(id=raw.id, sys=raw.sys, mod=raw.mod, index=index, name=raw.name)
    if cmd == "debug":
        return DebugRequest(id=raw.id, sys=raw.sys, mod=raw.mod, index=index, name=raw.name)
    return IgnoreRequest(id=raw.id, sys=raw.sys, mod=raw.mod, index=index, name=raw.name)


class _Reply(msgspec.Struct, frozen=True, omit_defaults=True):
    """Every server reply, fields in the order of the server's ``Response`` struct."""

    id: int
    type: str
    msg: str | None = None
    value: msgspec.Raw | UnsetType = UNSET
    error_code: int | None = None
    meta: Meta | None = None
    mod: str | None = None
    level: str | None = None
    code: int | None = None


_reply_encoder = msgspec.json.Encoder()


def encode_success(
    request_id: int,
    *,
    meta: Meta | None = None,
    value: msgspec.Raw | UnsetType = UNSET,
    code: int | None = None,
) -> str:
    """A ``success`` reply: bare for unbind/debug/ignore, ``meta`` for bind, all for exec."""
    return _reply_encoder.encode(
        _Reply(id=request_id, type="success", meta=meta, value=value, code=code)
    ).decode()


def encode_error(request_id: int, error_code: int, msg: str, code: int | None = 500) -> str:
    """An ``error`` reply (the server's ``code`` defaults to 500)."""
    return _reply_encoder.encode(
        _Reply(id=request_id, type="error", msg=msg, error_code=int(error_code), code=code)
    ).decode()


def encode_notify(bind_id: int, value: msgspec.Raw, meta: Meta) -> str:
    """A ``notify`` carrying ``value`` (raw JSON, ``null`` for a deleted status)."""
    return _reply_encoder.encode(_Reply(id=bind_id, type="notify", value=value, meta=meta)).decode()


def encode_debug(request_id: int, module_id: str, level: str, msg: str, meta: Meta) -> str:
    """A ``debug`` frame: a log line of ``module_id`` for the session's ``debug`` request."""
    return _reply_encoder.encode(
        _Reply(id=request_id, type="debug", msg=msg, meta=meta, mod=module_id, level=level)
    ).decode()
