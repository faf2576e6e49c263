"""AlphaX read records (v4, v6), error bodies, MQTT topics and token redaction. Pure.

Public names are re-exported by :mod:`adapters.alphax.codec`; import them from there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal, TypeVar
from urllib.parse import quote

import msgspec

from adapters.alphax._codec_base import (
    MAX_RESPONSE_BYTES,
    JsonShapeError,
    MalformedJsonError,
    TopicError,
    check_channel,
    check_value,
    is_digit_string,
    round_value,
)
from broker import JsonRefused, decode_json

# ---------------------------------------------------------------------------------------------
# Read records


class V4Record(msgspec.Struct, frozen=True):
    """A ``/conduitv4`` record. ``timestamp`` is epoch seconds as a string on the wire."""

    channel: int
    network_id: str = msgspec.field(name="networkID")
    value: float
    timestamp: str | int

    def __post_init__(self) -> None:
        if isinstance(self.timestamp, str) and not is_digit_string(self.timestamp):
            raise ValueError(f"timestamp {self.timestamp!r} is not epoch seconds")

    @property
    def epoch_s(self) -> int:
        """The timestamp as integer epoch seconds."""
        return int(self.timestamp)


class V6Record(msgspec.Struct, frozen=True):
    """A ``/conduitv6`` record (docs/protocols/alphax.md, "Reading"; null and absent: the same)."""

    val_date: int
    dev_netid: str
    dev_chid: int
    val_raw: float | None = None
    val_calibrated: float | None = None
    val_type: str | None = None
    val_description: str | None = None
    val_cal: float | None = None
    val_offset: float | None = None
    dev_tag: str | None = None
    dev_site: str | None = None
    dev_type: str | None = None
    dev_label: str | None = None
    dev_powersource: str | None = None
    dev_network: str | None = None
    dev_category: str | None = None
    dev_supplier: str | None = None
    dev_model: str | None = None
    dev_manufacturer: str | None = None
    loc_lat: float | None = None
    loc_lng: float | None = None

    @property
    def value(self) -> float | None:
        """The calibrated value when present, else the raw one."""
        return self.val_calibrated if self.val_calibrated is not None else self.val_raw


_V4_DECODER = msgspec.json.Decoder(list[V4Record] | V4Record)
_V6_DECODER = msgspec.json.Decoder(list[V6Record] | V6Record)
_ENCODER = msgspec.json.Encoder()


_R = TypeVar("_R")


def _decode_records(decoder: msgspec.json.Decoder[list[_R] | _R], raw: bytes | str) -> list[_R]:
    try:
        decoded = decode_json(decoder, raw, max_bytes=MAX_RESPONSE_BYTES)
    except JsonRefused as err:
        if err.malformed:
            raise MalformedJsonError(f"read response is not JSON: {err.reason}") from None
        raise JsonShapeError(f"read response: {err.reason}") from None
    return decoded if isinstance(decoded, list) else [decoded]


def decode_v4_records(raw: bytes | str) -> list[V4Record]:
    """Decode a ``/conduitv4`` response: a JSON array of records, or one bare record."""
    return _decode_records(_V4_DECODER, raw)


def decode_v6_records(raw: bytes | str) -> list[V6Record]:
    """Decode a ``/conduitv6`` response: a JSON array of records, or one bare record."""
    return _decode_records(_V6_DECODER, raw)


def encode_v4_records(records: Iterable[V4Record]) -> bytes:
    """Encode v4 records as a JSON array."""
    return _ENCODER.encode(list(records))


def encode_v6_records(records: Iterable[V6Record]) -> bytes:
    """Encode v6 records as a JSON array (absent fields as ``null``, as the vendor docs show)."""
    return _ENCODER.encode(list(records))


# ---------------------------------------------------------------------------------------------
# Error / status bodies


class ErrorBody(msgspec.Struct, frozen=True):
    """``{"code": ..., "error": ...}``; ``code`` normalised to an int."""

    code: int
    error: str


class _ErrorWire(msgspec.Struct, frozen=True):
    code: int | str
    error: str = ""


_ERROR_DECODER = msgspec.json.Decoder(_ErrorWire)


def decode_error_body(raw: bytes | str) -> ErrorBody:
    """Decode an error/status body whose ``code`` is a number or a string of digits."""
    try:
        wire = decode_json(_ERROR_DECODER, raw, max_bytes=MAX_RESPONSE_BYTES)
    except JsonRefused as err:
        if err.malformed:
            raise MalformedJsonError(f"error body is not JSON: {err.reason}") from None
        raise JsonShapeError(f"error body: {err.reason}") from None
    code = wire.code
    if isinstance(code, str):
        if not is_digit_string(code.strip()):
            raise JsonShapeError(f"error code {code!r} is not a number", "$.code")
        code = int(code)
    return ErrorBody(code, wire.error)


def encode_error_body(code: int, error: str, *, code_as_string: bool = False) -> bytes:
    """Encode ``{"code", "error"}`` with the code as a number or (as AlphaX may) a string."""
    return _ENCODER.encode({"code": str(code) if code_as_string else code, "error": error})


# ---------------------------------------------------------------------------------------------
# MQTT topics and payloads

TopicKind = Literal["publish_v4", "bulk", "channel"]

#: What a consumer of all three topic forms subscribes to. ``+/+/+/data`` also matches
#: ``{token}/{id}/0/data``; subscribe to ``+/+/0/data`` as well only if duplicates are handled.
SUBSCRIPTION_FILTERS = ("+/+/publish/v4", "+/+/0/data", "+/+/+/data")


class Topic(msgspec.Struct, frozen=True):
    """A parsed AlphaX topic. ``channel`` is set only for ``kind == "channel"``."""

    kind: TopicKind
    token: str
    network_id: str
    channel: int | None = None


def _level(value: str, name: str) -> str:
    if not value:
        raise TopicError(f"{name} is empty", name)
    for bad in ("/", "+", "#", "\x00"):
        if bad in value:
            raise TopicError(f"{name} contains {bad!r}, not allowed in one topic level", name)
    return value


def publish_v4_topic(token: str, network_id: str) -> str:
    """``{token}/{networkId}/publish/v4`` (payload: the v1 hex string)."""
    return f"{_level(token, 'token')}/{_level(network_id, 'networkId')}/publish/v4"


def bulk_topic(token: str, network_id: str) -> str:
    """``{token}/{networkId}/0/data`` (payload: a v2 JSON body)."""
    return f"{_level(token, 'token')}/{_level(network_id, 'networkId')}/0/data"


def channel_topic(token: str, network_id: str, channel: int) -> str:
    """``{token}/{networkId}/{channel}/data`` (payload: the plain number)."""
    check_channel(channel, where="topic channel")
    return f"{_level(token, 'token')}/{_level(network_id, 'networkId')}/{channel}/data"


def format_topic(topic: Topic) -> str:
    """The topic string for a :class:`Topic`."""
    if topic.kind == "publish_v4":
        return publish_v4_topic(topic.token, topic.network_id)
    if topic.kind == "bulk":
        return bulk_topic(topic.token, topic.network_id)
    if topic.channel is None:
        raise TopicError("a channel topic needs a channel", "channel")
    return channel_topic(topic.token, topic.network_id, topic.channel)


def parse_topic(topic: str) -> Topic:
    """Parse one of the three AlphaX topic forms; anything else is a :class:`TopicError`.

    Error messages name the level at fault but never repeat the topic (it holds the token).
    """
    levels = topic.split("/")
    if len(levels) != 4:
        raise TopicError(f"topic has {len(levels)} levels, expected 4", "topic")
    token, network_id, third, fourth = levels
    _level(token, "token")
    _level(network_id, "networkId")
    if third == "publish" and fourth == "v4":
        return Topic("publish_v4", token, network_id)
    if fourth != "data":
        raise TopicError(
            "topic is neither {token}/{id}/publish/v4 nor {token}/{id}/{channel}/data", "level 4"
        )
    if not is_digit_string(third):
        raise TopicError(f"channel level {third[:24]!r} is not a number", "level 3")
    channel = int(third)
    if channel == 0:
        return Topic("bulk", token, network_id)
    check_channel(channel, where="topic level 3")
    return Topic("channel", token, network_id, channel)


_CHANNEL_DECODER = msgspec.json.Decoder(float)


def decode_channel_value(payload: bytes | str) -> float:
    """Decode a single-channel MQTT payload: one plain JSON number (16 digits at most)."""
    try:
        value = decode_json(_CHANNEL_DECODER, payload)
    except JsonRefused as err:
        if err.malformed:
            what = f"channel payload is not a number: {err.reason}"
            raise MalformedJsonError(what, "payload") from None
        what = f"channel payload is not a plain number: {err.reason}"
        raise JsonShapeError(what, "payload") from None
    return check_value(value, where="payload")


def encode_channel_value(value: float) -> bytes:
    """Encode a single-channel payload, rounded to 16 significant digits."""
    return _ENCODER.encode(round_value(value, where="payload"))


# ---------------------------------------------------------------------------------------------
# Redaction

REDACTED = "***"
_QUERY_TOKEN = re.compile(r"(?i)(\btoken=)[^&\s#\"']+")
_JSON_TOKEN = re.compile(r'(?i)("token"\s*:\s*")[^"]*(")')


def redact(text: str | bytes, token: str | None = None) -> str:
    """Return ``text`` with ``token`` (raw and URL-encoded) replaced by ``***``.

    Also masks any ``token=...`` query parameter and any JSON ``"token": "..."`` field, so an
    unknown or mistyped token does not leak either. Bytes are decoded leniently first.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if token:
        text = text.replace(token, REDACTED)
        encoded = quote(token, safe="")
        if encoded != token:
            text = text.replace(encoded, REDACTED)
    text = _QUERY_TOKEN.sub(rf"\1{REDACTED}", text)
    return _JSON_TOKEN.sub(rf"\1{REDACTED}\2", text)


def redact_topic(topic: str) -> str:
    """``topic`` with its first level (the token, in every AlphaX form) replaced by ``***``."""
    _, sep, rest = topic.partition("/")
    return f"{REDACTED}{sep}{rest}"
