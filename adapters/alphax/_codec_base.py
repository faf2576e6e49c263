"""Shared pieces of the AlphaX codec: the exception tree, limits and value checks.

Pure; see :mod:`adapters.alphax.codec` for the public face and the documented choices.
"""

from __future__ import annotations

import math

MAX_CHANNELS = 32
DEVICE_CHANNELS = (255, 254, 253, 252)  # voltage, RSSI, message id, error code (wire order)
VOLTAGE_CHANNEL, RSSI_CHANNEL, MESSAGE_ID_CHANNEL, ERROR_CODE_CHANNEL = DEVICE_CHANNELS
_MAX_DIGITS = 16
_TS_MIN, _TS_MAX = 10**12, 10**13 - 1  # 13-digit epoch milliseconds
#: The largest read response or error body decoded (docs/protocols/alphax.md, "Decoding
#: limits"): 1,000 v6 records with every field come to under 1 MiB.
MAX_RESPONSE_BYTES = 16 << 20
#: Digits a number written as a string (v4 timestamp, error code) may have: int64 fits.
MAX_DIGIT_STRING = 19


def is_digit_string(text: str) -> bool:
    """True for 1..19 ASCII digits (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return 0 < len(text) <= MAX_DIGIT_STRING and text.isascii() and text.isdigit()


class CodecError(ValueError):
    """Base of every codec error; ``where`` names the field, offset or topic level at fault."""

    def __init__(self, what: str, where: str = "") -> None:
        self.what = what
        self.where = where
        super().__init__(f"{what} (at {where})" if where else what)


class HexFormatError(CodecError):
    """The v1 ``data`` string is not an even-length run of hex digits."""


class PayloadLengthError(CodecError):
    """The v1 payload has the wrong number of bytes."""


class TooManyChannelsError(CodecError):
    """More than 32 data channels."""


class ChannelRangeError(CodecError):
    """A channel id outside 1..32 (or 252..255 where device fields are allowed)."""


class ChannelGapError(ChannelRangeError):
    """v1 fills channels 1..N in order, so a missing channel in between cannot be encoded."""


class DuplicateChannelError(CodecError):
    """The same channel appears twice in one body."""


class ValueRangeError(CodecError):
    """A value that does not fit its wire field (or is NaN / infinite)."""


class PrecisionLossError(CodecError):
    """More than 3 decimals would be lost by v1's ``value * 1000`` (strict mode only)."""


class ValueDigitsError(CodecError):
    """A value with more than 16 significant digits."""


class TimestampError(CodecError):
    """A timestamp that is not 13-digit epoch milliseconds."""


class MalformedJsonError(CodecError):
    """The bytes are not JSON, or exceed a decoding bound (``broker.decode_json``: nesting,
    number size, UTF-8; the response size)."""


class JsonShapeError(CodecError):
    """Valid JSON with missing fields or wrong types."""


class TopicError(CodecError):
    """An MQTT topic that is not one of the AlphaX forms."""


# ---------------------------------------------------------------------------------------------
# Checks shared by the formats


def check_channel(channel: int, *, where: str = "channel", device_fields: bool = True) -> int:
    """Return ``channel`` if it is 1..32 (or 252..255 when ``device_fields``), else raise."""
    if 1 <= channel <= MAX_CHANNELS or (device_fields and channel in DEVICE_CHANNELS):
        return channel
    allowed = "1..32 or 252..255" if device_fields else "1..32"
    raise ChannelRangeError(f"channel {channel} is outside {allowed}", where)


def check_timestamp_ms(timestamp_ms: int, *, where: str = "timestamp") -> int:
    """Return ``timestamp_ms`` if it is a 13-digit epoch-milliseconds integer, else raise."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int):
        raise TimestampError(f"timestamp must be an integer, got {type(timestamp_ms).__name__}")
    if not _TS_MIN <= timestamp_ms <= _TS_MAX:
        raise TimestampError(
            f"timestamp {timestamp_ms} is not 13-digit epoch milliseconds "
            "(seconds given by mistake?)",
            where,
        )
    return timestamp_ms


def significant_digits(value: float) -> int:
    """Significant digits of the shortest decimal form of ``value`` (``repr``)."""
    mantissa = repr(abs(float(value))).split("e")[0].replace(".", "")
    return max(1, len(mantissa.strip("0")))


def check_value(value: float, *, where: str = "value") -> float:
    """Return ``value`` if finite, below 1e16 and of at most 16 significant digits, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JsonShapeError(f"value must be a number, got {type(value).__name__}", where)
    if not math.isfinite(value):
        raise ValueRangeError(f"value {value!r} is not finite", where)
    if abs(value) >= 1e16:
        raise ValueRangeError(f"value {value!r} has more than 16 digits before the point", where)
    digits = significant_digits(value)
    if digits > _MAX_DIGITS:
        raise ValueDigitsError(f"value {value!r} has {digits} significant digits (max 16)", where)
    return float(value)


def round_value(value: float, *, where: str = "value") -> float:
    """Round to 16 significant digits (the encoders' rule), then :func:`check_value`."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        value = float(format(value, ".16g"))
        # parsed back from 16 digits, its shortest form (repr) has at most 16: only the
        # magnitude is left to check (the hot path: every channel write comes through here)
        if abs(value) < 1e16:
            return value
    return check_value(value, where=where)
