"""Allxon Octo v2 wire codec: JSON-RPC 2.0 notification frames <-> frozen msgspec structs.

Pure: text in, structs out and back; no trio, no sockets, no signatures (see ``signing``). Every
field is described in ``docs/protocols/allxon.md`` ("Methods" and the sections after it). This
module is the public face: it re-exports the declaration structs of ``cards`` and the message
structs of ``_messages`` (kept apart only to keep modules small).

Encoding rules that the agent depends on, kept by construction:

- every frame carries ``"jsonrpc": "2.0"`` (no ``omit_defaults`` anywhere: with it, msgspec
  silently dropped that field, which equals its default);
- module card arrays and item arrays default to ``[]`` and are always written, never ``null``;
- optional fields are ``UNSET`` by default and then left out of the output (never ``null``);
- field names are the wire's camelCase (``appGUID`` spelled out), Python attributes snake_case.

Decoding (``decode_frame``) reads a small header first (``method`` / ``params`` kept raw /
``error``) because a tagged union cannot decode the agent's error frames, which carry no method.
The method may still carry its ``?authorization=...`` suffix: the base method (text before the
first ``?``) selects a per-method params decoder built once at import. Unknown fields are
ignored everywhere (peers evolve).

Decoding is total (``broker.decode_json``, whose docstring states the bounds and choices):
for any text a frame or a ``CodecError``. Text nested more than 128 levels, a number beyond
4,300 digits or +-1.8e308, invalid UTF-8 (or an escaped lone surrogate),
``NaN`` / ``Infinity`` anywhere, params included: ``MalformedFrameError``; JSON of the wrong
shape is ``InvalidParamsError``. A key given twice: the last one wins. Strings are bounded by
the frame, which the connection limits to 64 KiB (``connection.RECEIVE_LIMIT``). See
docs/protocols/allxon.md, "Decoding limits".

Exceptions (all ``ValueError`` via ``CodecError``, each carries ``excerpt``, the first 120
characters of the offending frame)::

    CodecError
     +-- MalformedFrameError   not JSON (or beyond a bound), not an object, a batch, neither
     |                         method nor error
     +-- UnknownMethodError    a method this codec does not know (``.method``)
     +-- InvalidParamsError    params do not match the method's schema (``.method``, path in text)
     +-- FrameTooLargeError    one item cannot fit in a frame even alone (``pack_items``)
     +-- CredentialError       a plugin_credential.json that cannot be used

Size: the 2 KB limit applies to the *signed* frame. Signing inserts exactly
``SIGNATURE_OVERHEAD`` (89) bytes, so ``signed_size(msg) == encoded_size(msg) + 89``;
``pack_items`` splits a list of states/metrics/events/alerts into frames that each fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from adapters.allxon._messages import (
    ALARM_UPDATE,
    ALERT,
    COMMAND,
    COMMAND_ACK,
    CONFIG_UPDATE,
    EVENT,
    METRIC,
    STATE,
    UPDATE,
    AgentError,
    AgentErrorFrame,
    AlarmModuleSettings,
    AlarmSetting,
    AlarmUpdateParams,
    AlertItem,
    AlertParams,
    CommandAckItem,
    CommandAckParams,
    CommandInvocation,
    CommandParams,
    ConfigModuleSettings,
    ConfigSetting,
    ConfigUpdateParams,
    ErrorObject,
    EventItem,
    EventParams,
    InboundFrame,
    MetricItem,
    MetricParams,
    NamedValue,
    OctoMessage,
    PluginAlarmUpdate,
    PluginAlert,
    PluginCommand,
    PluginCommandAck,
    PluginConfigUpdate,
    PluginEvent,
    PluginMetric,
    PluginState,
    PluginUpdate,
    StateItem,
    StateParams,
    error_frame,
)
from adapters.allxon.cards import (
    AlarmCard,
    CardParam,
    CommandCard,
    ConfigCard,
    EventCard,
    MetricCard,
    Module,
    PropertyCard,
    StateCard,
    UpdateParams,
    Value,
)
from adapters.allxon.signing import SIGNATURE_OVERHEAD
from broker import JsonRefused, decode_json

__all__ = [
    "KNOWN_METHODS",
    "MAX_FRAME_BYTES",
    "SIGNATURE_OVERHEAD",
    "AgentError",
    "AgentErrorFrame",
    "AlarmCard",
    "AlarmModuleSettings",
    "AlarmSetting",
    "AlarmUpdateParams",
    "AlertItem",
    "AlertParams",
    "CardParam",
    "CodecError",
    "CommandAckItem",
    "CommandAckParams",
    "CommandCard",
    "CommandInvocation",
    "CommandParams",
    "ConfigCard",
    "ConfigModuleSettings",
    "ConfigSetting",
    "ConfigUpdateParams",
    "CredentialError",
    "ErrorObject",
    "EventCard",
    "EventItem",
    "EventParams",
    "FrameTooLargeError",
    "InboundFrame",
    "InvalidParamsError",
    "MalformedFrameError",
    "MetricCard",
    "MetricItem",
    "MetricParams",
    "Module",
    "NamedValue",
    "OctoMessage",
    "PluginAlarmUpdate",
    "PluginAlert",
    "PluginCommand",
    "PluginCommandAck",
    "PluginConfigUpdate",
    "PluginCredential",
    "PluginEvent",
    "PluginMetric",
    "PluginState",
    "PluginUpdate",
    "PropertyCard",
    "StateCard",
    "StateItem",
    "StateParams",
    "UnknownMethodError",
    "UpdateParams",
    "Value",
    "base_method",
    "decode_credential",
    "decode_frame",
    "encode_credential",
    "encode_message",
    "encoded_size",
    "epoch_str",
    "error_frame",
    "fits_frame",
    "pack_items",
    "signed_size",
]

MAX_FRAME_BYTES = 2048
"""The agent's limit for one frame, signature included.

See docs/protocols/allxon.md, "Framing and size".
"""

_EXCERPT_CHARS = 120

# --------------------------------------------------------------------------- errors


class CodecError(ValueError):
    """A frame (or credential file) could not be decoded or encoded; says what and where."""

    def __init__(self, message: str, text: str | bytes = "") -> None:
        if isinstance(text, bytes | bytearray | memoryview):
            text = bytes(text).decode("utf-8", "replace")
        self.excerpt = text[:_EXCERPT_CHARS] + ("..." if len(text) > _EXCERPT_CHARS else "")
        super().__init__(f"{message}; frame starts {self.excerpt!r}" if text else message)


class MalformedFrameError(CodecError):
    """Not a JSON-RPC 2.0 notification or error frame at all."""


class UnknownMethodError(CodecError):
    """A well-formed frame whose method this codec does not know."""

    def __init__(self, method: str, text: str | bytes) -> None:
        self.method = method
        super().__init__(f"unknown method {method[:80]!r}", text)


class InvalidParamsError(CodecError):
    """The params of a known method do not match its schema (the message names the path)."""

    def __init__(self, method: str, detail: str, text: str | bytes) -> None:
        self.method = method
        super().__init__(f"invalid params for {method}: {detail}", text)


class FrameTooLargeError(CodecError):
    """A single item does not fit in one frame even on its own."""


class CredentialError(CodecError):
    """A plugin_credential.json that is not JSON or lacks app_guid / access_key."""


# --------------------------------------------------------------------------- encode / decode

_encoder = msgspec.json.Encoder()


class _Header(msgspec.Struct):
    jsonrpc: Any = None
    method: Any = None
    params: msgspec.Raw = msgspec.Raw(b"")
    error: msgspec.Raw = msgspec.Raw(b"")
    id: Any = None


_header_decoder = msgspec.json.Decoder(_Header)
_error_decoder = msgspec.json.Decoder(ErrorObject)

_MESSAGE_TYPES: dict[str, tuple[type[Any], msgspec.json.Decoder[Any]]] = {
    UPDATE: (PluginUpdate, msgspec.json.Decoder(UpdateParams)),
    COMMAND: (PluginCommand, msgspec.json.Decoder(CommandParams)),
    COMMAND_ACK: (PluginCommandAck, msgspec.json.Decoder(CommandAckParams)),
    STATE: (PluginState, msgspec.json.Decoder(StateParams)),
    METRIC: (PluginMetric, msgspec.json.Decoder(MetricParams)),
    EVENT: (PluginEvent, msgspec.json.Decoder(EventParams)),
    ALERT: (PluginAlert, msgspec.json.Decoder(AlertParams)),
    ALARM_UPDATE: (PluginAlarmUpdate, msgspec.json.Decoder(AlarmUpdateParams)),
    CONFIG_UPDATE: (PluginConfigUpdate, msgspec.json.Decoder(ConfigUpdateParams)),
}

KNOWN_METHODS = frozenset(_MESSAGE_TYPES)


def base_method(method: str) -> str:
    """The method without its ``?authorization=...`` suffix (text before the first ``?``)."""
    return method.split("?", 1)[0]


def decode_frame(text: str | bytes) -> InboundFrame:
    """Decode one received frame (signed or not; verify the signature first) into a struct.

    Raises ``MalformedFrameError``, ``UnknownMethodError`` or ``InvalidParamsError``.
    """
    try:
        header = decode_json(_header_decoder, text)
    except JsonRefused as err:
        what = "not JSON" if err.malformed else "not a JSON-RPC object"
        raise MalformedFrameError(f"{what} ({err.reason})", text) from None
    if header.jsonrpc is not None and header.jsonrpc != "2.0":
        raise MalformedFrameError(f"jsonrpc is {header.jsonrpc!r}, expected '2.0'", text)
    if header.method is None:
        if len(header.error) == 0:
            raise MalformedFrameError("neither 'method' nor 'error' present", text)
        try:
            error = decode_json(_error_decoder, header.error, max_depth=None)
        except JsonRefused as err:
            raise MalformedFrameError(f"invalid error object ({err.reason})", text) from None
        frame_id = header.id
        if not isinstance(frame_id, str | int) or isinstance(frame_id, bool):
            frame_id = None
        return AgentErrorFrame(error=error, id=frame_id)
    if not isinstance(header.method, str):
        raise MalformedFrameError("'method' is not a string", text)
    method = base_method(header.method)
    entry = _MESSAGE_TYPES.get(method)
    if entry is None:
        raise UnknownMethodError(method, text)
    message_type, params_decoder = entry
    if len(header.params) == 0:
        raise InvalidParamsError(method, "'params' missing", text)
    try:  # the header only skipped over the params: depth is checked, UTF-8 and numbers not
        params = decode_json(params_decoder, header.params, max_depth=None)
    except JsonRefused as err:
        detail = err.reason.replace("at `$", "at `$.params")
        if err.malformed:
            raise MalformedFrameError(f"not JSON in params ({detail})", text) from None
        raise InvalidParamsError(method, detail, text) from None
    message: InboundFrame = message_type(params=params)
    return message


def encode_message(message: InboundFrame) -> str:
    """Compact JSON text of a message, plain method (sign it with ``signing.sign_frame``)."""
    return _encoder.encode(message).decode("utf-8")


def encoded_size(message: InboundFrame) -> int:
    """Bytes of the unsigned encoded frame."""
    return len(_encoder.encode(message))


def item_size(item: msgspec.Struct) -> int:
    """Bytes ``item`` adds to a message's item array (plus a comma when it is not alone)."""
    return len(_encoder.encode(item))


def signed_size(message: InboundFrame) -> int:
    """Bytes of the frame once signed: ``encoded_size + SIGNATURE_OVERHEAD``."""
    return encoded_size(message) + SIGNATURE_OVERHEAD


def fits_frame(message: InboundFrame, limit: int = MAX_FRAME_BYTES) -> bool:
    """True when the signed frame is at most ``limit`` bytes."""
    return signed_size(message) <= limit


_ItemT = TypeVar("_ItemT", bound=msgspec.Struct)
_MsgT = TypeVar("_MsgT", bound=InboundFrame)


def pack_items(
    items: Sequence[_ItemT],
    build: Callable[[list[_ItemT]], _MsgT],
    limit: int = MAX_FRAME_BYTES,
    max_messages: int | None = None,
) -> list[_MsgT]:
    """Split ``items`` over as few messages as possible, each at most ``limit`` bytes signed.

    ``build(chunk)`` must return a message holding ``chunk`` as its one item array (e.g.
    ``lambda xs: PluginState(params=StateParams(..., states=xs))``); order is kept. The size of
    a chunk is computed exactly (compact JSON: empty frame + items + commas) and re-checked on the
    built message. Raises ``FrameTooLargeError`` when one item alone does not fit.

    ``max_messages``: only the first that many messages (the same ones the whole split
    starts with); the items after them are not even sized, so a caller that can send a
    few frames of a long backlog pays for those few.
    """
    if not items or max_messages == 0:
        return []
    base = signed_size(build([]))
    chunks: list[list[_ItemT]] = []
    current: list[_ItemT] = []
    size = base
    for item in items:
        item_size = len(_encoder.encode(item))
        extra = item_size + (1 if current else 0)
        if current and size + extra > limit:
            chunks.append(current)
            if len(chunks) == max_messages:
                current = []
                break
            current, size, extra = [], base, item_size
        if size + extra > limit:
            raise FrameTooLargeError(
                f"one item needs {base + item_size} bytes signed, over the {limit}-byte limit",
                _encoder.encode(item),
            )
        current.append(item)
        size += extra
    if current:
        chunks.append(current)
    messages = [build(chunk) for chunk in chunks]
    for message in messages:
        if signed_size(message) > limit:  # would mean build() did not nest items as documented
            raise FrameTooLargeError(
                f"built message is {signed_size(message)} bytes signed, over {limit}",
                encode_message(message),
            )
    return messages


def epoch_str(seconds: float) -> str:
    """An Octo ``epoch``/``time`` value: whole epoch seconds as a string."""
    return str(int(seconds))


# --------------------------------------------------------------------------- credentials


class PluginCredential(msgspec.Struct, frozen=True, kw_only=True):
    """``plugin_credential.json``: ``{"app_guid", "access_key", "platform", "architecture"}``.

    ``repr`` hides the access key so that it never reaches a log line.
    """

    app_guid: str
    access_key: str
    platform: str = ""
    architecture: str = ""

    def __repr__(self) -> str:
        return (
            f"PluginCredential(app_guid={self.app_guid!r}, access_key=<redacted>, "
            f"platform={self.platform!r}, architecture={self.architecture!r})"
        )


_credential_decoder = msgspec.json.Decoder(PluginCredential)


def decode_credential(data: str | bytes) -> PluginCredential:
    """Parse a plugin_credential.json body; raises ``CredentialError`` (never echoing the key)."""
    try:
        credential = decode_json(_credential_decoder, data)
    except JsonRefused as err:
        raise CredentialError(f"plugin credential file is unusable: {err.reason}") from None
    if not credential.app_guid or not credential.access_key:
        raise CredentialError("plugin credential file has an empty app_guid or access_key")
    return credential


def encode_credential(credential: PluginCredential) -> bytes:
    """The JSON body of a plugin_credential.json file."""
    return msgspec.json.format(_encoder.encode(credential), indent=2) + b"\n"
