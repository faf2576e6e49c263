"""AlphaX Conduit wire codec: pure bytes/str <-> typed structs, no I/O.

What it covers (see ``docs/protocols/alphax.md``, "Uplink v1 (hex)" to "MQTT"):

- v1 uplink ``data`` hex string, little-endian: four 16-bit device fields (voltage mV -> channel
  255 unsigned, RSSI -> 254 signed, message id -> 253 unsigned, error code -> 252 unsigned), then
  one signed 32-bit ``round(value * 1000)`` per channel 1, 2, ... N (N <= 32, contiguous).
- v1 and v2 uplink JSON bodies, v4 / v6 read records, error bodies, MQTT topics and the
  single-channel MQTT payload (a plain number), and :func:`redact` for every log line.

Choices made here (the vendor docs are silent or ambiguous; docs/protocols/alphax.md, "Choices"):

- Precision (v1): values are rounded to the nearest thousandth, as the service itself divides by
  1000; pass ``strict_precision=True`` to get :class:`PrecisionLossError` instead. A value whose
  ``round(value * 1000)`` does not fit in int32 is always a :class:`ValueRangeError`.
- "16 digit maximum" (v2 values and MQTT channel payloads): a value must be finite, below 1e16
  in magnitude and have at most 16 significant digits in its shortest decimal form. Encoders
  round to 16 significant digits first (so ``0.1 + 0.2`` goes out as ``0.3``); decoders reject.
- A v2 body must have at least one value and no channel twice.
- Read responses may be a JSON array of records or one bare record (the vendor docs show only
  bare records and never say how several come back; reading an array is our choice).
- Decoding is total (``broker.decode_json`` states the bounds): for any bytes a value or a
  :class:`CodecError`. Not JSON, nested more than 128 levels, a number beyond 4,300 digits or
  +-1.8e308, invalid UTF-8, ``NaN`` / ``Infinity``, a read response or error body over
  16 MiB (``MAX_RESPONSE_BYTES``): :class:`MalformedJsonError`, even where msgspec met a
  wrong type before the syntax error; JSON of the wrong shape: :class:`JsonShapeError`. A
  key given twice: the last one wins. Numbers written as strings (v4 ``timestamp``, an error
  ``code``, a topic's channel level) are 1..19 ASCII digits. docs/protocols/alphax.md,
  "Decoding limits".

Exception tree (all carry ``.where``: the field, byte offset or topic level at fault)::

    ValueError
     +-- CodecError
          +-- HexFormatError        odd length, non-hex character
          +-- PayloadLengthError    under 8 bytes, channel part not a multiple of 4 bytes
          +-- TooManyChannelsError  more than 32 data channels
          +-- ChannelRangeError     channel not in 1..32 (or 252..255 where device fields fit)
          |    +-- ChannelGapError  v1 channels must run 1..N without holes
          +-- DuplicateChannelError the same channel twice in one v2 body
          +-- ValueRangeError       does not fit (int32 after *1000, 16-bit field, >= 1e16, NaN)
          +-- PrecisionLossError    more than 3 decimals with strict_precision=True
          +-- ValueDigitsError      more than 16 significant digits
          +-- TimestampError        not a 13-digit epoch-milliseconds integer
          +-- MalformedJsonError    not JSON at all, or beyond a decoding bound
          +-- JsonShapeError        JSON of the wrong shape or types
          +-- TopicError            an MQTT topic that is none of the three forms

The exception tree and value checks live in :mod:`adapters.alphax._codec_base`, the read
records, error bodies, MQTT topics and :func:`redact` in :mod:`adapters.alphax._codec_records`;
everything is re-exported here, so callers import from this module only.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

import msgspec

from adapters.alphax._codec_base import (
    DEVICE_CHANNELS,
    ERROR_CODE_CHANNEL,
    MAX_CHANNELS,
    MESSAGE_ID_CHANNEL,
    RSSI_CHANNEL,
    VOLTAGE_CHANNEL,
    ChannelGapError,
    ChannelRangeError,
    CodecError,
    DuplicateChannelError,
    HexFormatError,
    JsonShapeError,
    MalformedJsonError,
    PayloadLengthError,
    PrecisionLossError,
    TimestampError,
    TooManyChannelsError,
    TopicError,
    ValueDigitsError,
    ValueRangeError,
    check_channel,
    check_timestamp_ms,
    check_value,
    round_value,
    significant_digits,
)
from adapters.alphax._codec_records import (
    SUBSCRIPTION_FILTERS,
    ErrorBody,
    Topic,
    TopicKind,
    V4Record,
    V6Record,
    bulk_topic,
    channel_topic,
    decode_channel_value,
    decode_error_body,
    decode_v4_records,
    decode_v6_records,
    encode_channel_value,
    encode_error_body,
    encode_v4_records,
    encode_v6_records,
    format_topic,
    parse_topic,
    publish_v4_topic,
    redact,
    redact_topic,
)
from broker import JsonRefused, decode_json

_DEVICE_PART = 8  # bytes
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_HEX = frozenset("0123456789abcdefABCDEF")

# ---------------------------------------------------------------------------------------------
# Structs


class V1Payload(msgspec.Struct, frozen=True):
    """The decoded v1 hex payload. ``channels[0]`` is channel 1; values in engineering units."""

    voltage_mv: int = 0
    rssi: int = 0
    message_id: int = 0
    error_code: int = 0
    channels: tuple[float, ...] = ()

    def as_channels(self) -> dict[int, float]:
        """All values keyed by AlphaX channel id (252..255 for the device fields)."""
        out: dict[int, float] = {
            VOLTAGE_CHANNEL: float(self.voltage_mv),
            RSSI_CHANNEL: float(self.rssi),
            MESSAGE_ID_CHANNEL: float(self.message_id),
            ERROR_CODE_CHANNEL: float(self.error_code),
        }
        for index, value in enumerate(self.channels, start=1):
            out[index] = value
        return out


class ChannelValue(msgspec.Struct, frozen=True):
    """One v2 ``{channelId, value}`` entry (also the wire struct)."""

    channel: int = msgspec.field(name="channelId")
    value: float


class V1Uplink(msgspec.Struct, frozen=True):
    """A v1 uplink body with its hex payload decoded."""

    token: str
    network_id: str
    timestamp_ms: int
    payload: V1Payload


class V2Uplink(msgspec.Struct, frozen=True):
    """A v2 uplink body: many channels of one device at one timestamp."""

    token: str
    network_id: str
    timestamp_ms: int
    values: tuple[ChannelValue, ...]


class _UplinkWire(msgspec.Struct, frozen=True):
    token: str
    network_id: str = msgspec.field(name="networkId")
    timestamp: int
    data: str | tuple[ChannelValue, ...]


_UPLINK_DECODER = msgspec.json.Decoder(_UplinkWire)
_ENCODER = msgspec.json.Encoder()


# ---------------------------------------------------------------------------------------------
# v1 hex payload


def _hex_to_bytes(data: str) -> bytes:
    if not isinstance(data, str):
        raise JsonShapeError(f"v1 data must be a hex string, got {type(data).__name__}", "data")
    for offset, char in enumerate(data):
        if char not in _HEX:
            raise HexFormatError(f"non-hex character {char!r} at offset {offset}", "data")
    if len(data) % 2:
        raise HexFormatError(
            f"hex string has odd length {len(data)}: every byte needs two hex digits", "data"
        )
    return bytes.fromhex(data)


def decode_v1_hex(data: str) -> V1Payload:
    """Decode a v1 ``data`` hex string (upper or lower case) into a :class:`V1Payload`."""
    raw = _hex_to_bytes(data)
    if len(raw) < _DEVICE_PART:
        raise PayloadLengthError(
            f"v1 payload is {len(raw)} bytes; the 8 device bytes are mandatory "
            "(pad unknown fields with 0000)",
            "data",
        )
    channel_part = len(raw) - _DEVICE_PART
    if channel_part % 4:
        raise PayloadLengthError(
            f"v1 channel part is {channel_part} bytes (bytes 9..{len(raw)}), "
            "not a multiple of 4: each channel is a 4-byte little-endian int32",
            "data",
        )
    count = channel_part // 4
    if count > MAX_CHANNELS:
        raise TooManyChannelsError(
            f"v1 payload carries {count} channels; AlphaX allows at most 32", "data"
        )
    voltage, rssi, message_id, error_code = struct.unpack_from("<HhHH", raw, 0)
    ints = struct.unpack_from(f"<{count}i", raw, _DEVICE_PART)
    return V1Payload(voltage, rssi, message_id, error_code, tuple(v / 1000 for v in ints))


def _scale(value: float, channel: int, strict: bool) -> int:
    where = f"channel {channel}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JsonShapeError(f"value must be a number, got {type(value).__name__}", where)
    if not math.isfinite(value):
        raise ValueRangeError(f"value {value!r} is not finite", where)
    scaled = value * 1000
    milli = round(scaled)
    if not _INT32_MIN <= milli <= _INT32_MAX:
        raise ValueRangeError(
            f"value {value!r} * 1000 does not fit a signed 32-bit integer "
            f"(range {_INT32_MIN / 1000}..{_INT32_MAX / 1000})",
            where,
        )
    if strict and abs(scaled - milli) > 1e-6:
        raise PrecisionLossError(f"value {value!r} has more than 3 decimals", where)
    return milli


def _device_field(value: int, name: str, channel: int, signed: bool) -> int:
    low, high = (-(2**15), 2**15 - 1) if signed else (0, 2**16 - 1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise JsonShapeError(f"{name} must be an integer, got {type(value).__name__}", name)
    if not low <= value <= high:
        kind = "signed" if signed else "unsigned"
        raise ValueRangeError(
            f"{name} {value} does not fit {kind} 16 bits ({low}..{high}) of channel {channel}",
            name,
        )
    return value


def encode_v1_hex(payload: V1Payload, *, strict_precision: bool = False) -> str:
    """Encode a :class:`V1Payload` as the upper-case v1 hex string."""
    if len(payload.channels) > MAX_CHANNELS:
        raise TooManyChannelsError(
            f"{len(payload.channels)} channels given; AlphaX allows at most 32", "channels"
        )
    head = struct.pack(
        "<HhHH",
        _device_field(payload.voltage_mv, "voltage_mv", VOLTAGE_CHANNEL, signed=False),
        _device_field(payload.rssi, "rssi", RSSI_CHANNEL, signed=True),
        _device_field(payload.message_id, "message_id", MESSAGE_ID_CHANNEL, signed=False),
        _device_field(payload.error_code, "error_code", ERROR_CODE_CHANNEL, signed=False),
    )
    ints = [_scale(v, i, strict_precision) for i, v in enumerate(payload.channels, start=1)]
    return (head + struct.pack(f"<{len(ints)}i", *ints)).hex().upper()


def v1_payload_from_channels(values: Mapping[int, float]) -> V1Payload:
    """Build a :class:`V1Payload` from ``{channel: value}`` (252..255 fill the device fields).

    Data channels must run 1..N without holes, because v1 has no channel ids on the wire.
    """
    device: dict[int, int] = {}
    data: dict[int, float] = {}
    for channel, value in values.items():
        check_channel(channel)
        if channel in DEVICE_CHANNELS:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise JsonShapeError(
                    f"device field must be an integer, got {value!r}", str(channel)
                )
            device[channel] = value
        else:
            data[channel] = value
    for expected in range(1, len(data) + 1):
        if expected not in data:
            raise ChannelGapError(
                f"channel {max(data)} given without channel {expected}: v1 fills channels "
                "1..N contiguously (use v2 for sparse channels)",
                f"channel {expected}",
            )
    return V1Payload(
        voltage_mv=device.get(VOLTAGE_CHANNEL, 0),
        rssi=device.get(RSSI_CHANNEL, 0),
        message_id=device.get(MESSAGE_ID_CHANNEL, 0),
        error_code=device.get(ERROR_CODE_CHANNEL, 0),
        channels=tuple(data[i] for i in range(1, len(data) + 1)),
    )


# ---------------------------------------------------------------------------------------------
# v1 / v2 JSON bodies


def _decode_wire(raw: bytes | str) -> _UplinkWire:
    try:
        wire = decode_json(_UPLINK_DECODER, raw)
    except JsonRefused as err:  # msgspec may see a wrong type before a syntax error
        if err.malformed:
            raise MalformedJsonError(f"uplink body is not JSON: {err.reason}") from None
        raise JsonShapeError(f"uplink body: {err.reason}") from None
    if not wire.network_id:
        raise JsonShapeError("networkId is empty", "$.networkId")
    if not wire.token:
        raise JsonShapeError("token is empty", "$.token")
    check_timestamp_ms(wire.timestamp, where="$.timestamp")
    return wire


def _v2_values(values: Sequence[ChannelValue], *, encoding: bool) -> tuple[ChannelValue, ...]:
    if not values:
        raise JsonShapeError("v2 data is empty: at least one {channelId, value}", "$.data")
    seen: set[int] = set()
    out: list[ChannelValue] = []
    for index, item in enumerate(values):
        where = f"$.data[{index}]"
        check_channel(item.channel, where=f"{where}.channelId")
        if item.channel in seen:
            raise DuplicateChannelError(f"channel {item.channel} appears twice", where)
        seen.add(item.channel)
        check = round_value if encoding else check_value
        value = check(item.value, where=f"{where}.value")
        out.append(item if value == item.value else ChannelValue(item.channel, value))
    return tuple(out)


def _v1_from_wire(wire: _UplinkWire) -> V1Uplink:
    if not isinstance(wire.data, str):
        raise JsonShapeError(
            "v1 data must be a hex string, got an array (that is the v2 format)", "$.data"
        )
    try:
        payload = decode_v1_hex(wire.data)
    except CodecError as err:
        raise type(err)(err.what, "$.data") from err
    return V1Uplink(wire.token, wire.network_id, wire.timestamp, payload)


def _v2_from_wire(wire: _UplinkWire) -> V2Uplink:
    if isinstance(wire.data, str):
        raise JsonShapeError(
            "v2 data must be an array of {channelId, value}, got a string (the v1 format)",
            "$.data",
        )
    values = _v2_values(wire.data, encoding=False)
    return V2Uplink(wire.token, wire.network_id, wire.timestamp, values)


def decode_v1_body(raw: bytes | str) -> V1Uplink:
    """Decode and validate a v1 uplink JSON body (``data`` a hex string)."""
    return _v1_from_wire(_decode_wire(raw))


def decode_v2_body(raw: bytes | str) -> V2Uplink:
    """Decode and validate a v2 uplink JSON body (``data`` an array of channel values)."""
    return _v2_from_wire(_decode_wire(raw))


def decode_uplink_body(raw: bytes | str) -> V1Uplink | V2Uplink:
    """Decode either body format, told apart by the type of ``data`` (string -> v1)."""
    wire = _decode_wire(raw)
    match wire.data:
        case str():
            return _v1_from_wire(wire)
        case _:
            return _v2_from_wire(wire)


def encode_v1_body(uplink: V1Uplink, *, strict_precision: bool = False) -> bytes:
    """Encode a v1 body; the payload goes through :func:`encode_v1_hex`."""
    check_timestamp_ms(uplink.timestamp_ms)
    data = encode_v1_hex(uplink.payload, strict_precision=strict_precision)
    return _ENCODER.encode(_UplinkWire(uplink.token, uplink.network_id, uplink.timestamp_ms, data))


def encode_v2_body(uplink: V2Uplink) -> bytes:
    """Encode a v2 body; values are rounded to 16 significant digits, then checked."""
    check_timestamp_ms(uplink.timestamp_ms)
    values = _v2_values(uplink.values, encoding=True)
    wire = _UplinkWire(uplink.token, uplink.network_id, uplink.timestamp_ms, values)
    return _ENCODER.encode(wire)


def encode_uplink_body(uplink: V1Uplink | V2Uplink) -> bytes:
    """Encode either body format."""
    match uplink:
        case V1Uplink():
            return encode_v1_body(uplink)
        case V2Uplink():
            return encode_v2_body(uplink)


__all__ = [
    "DEVICE_CHANNELS",
    "ERROR_CODE_CHANNEL",
    "MAX_CHANNELS",
    "MESSAGE_ID_CHANNEL",
    "RSSI_CHANNEL",
    "SUBSCRIPTION_FILTERS",
    "VOLTAGE_CHANNEL",
    "ChannelGapError",
    "ChannelRangeError",
    "ChannelValue",
    "CodecError",
    "DuplicateChannelError",
    "ErrorBody",
    "HexFormatError",
    "JsonShapeError",
    "MalformedJsonError",
    "PayloadLengthError",
    "PrecisionLossError",
    "TimestampError",
    "TooManyChannelsError",
    "Topic",
    "TopicError",
    "TopicKind",
    "V1Payload",
    "V1Uplink",
    "V2Uplink",
    "V4Record",
    "V6Record",
    "ValueDigitsError",
    "ValueRangeError",
    "bulk_topic",
    "channel_topic",
    "check_channel",
    "check_timestamp_ms",
    "check_value",
    "decode_channel_value",
    "decode_error_body",
    "decode_uplink_body",
    "decode_v1_body",
    "decode_v1_hex",
    "decode_v2_body",
    "decode_v4_records",
    "decode_v6_records",
    "encode_channel_value",
    "encode_error_body",
    "encode_uplink_body",
    "encode_v1_body",
    "encode_v1_hex",
    "encode_v2_body",
    "encode_v4_records",
    "encode_v6_records",
    "format_topic",
    "parse_topic",
    "publish_v4_topic",
    "redact",
    "redact_topic",
    "round_value",
    "significant_digits",
    "v1_payload_from_channels",
]
