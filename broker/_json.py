"""Decoding JSON totally: for any input a value or one error that says what was refused.

Every codec of peer input (the PlaceOS, Allxon and AlphaX codecs) and the decoder of stored
envelopes go through :func:`decode_json`, so they all keep the same bounds and make the same
choices where JSON (RFC 8259) leaves them to the implementation:

nesting
    At most :data:`MAX_DEPTH` (128) levels of arrays and objects, the frame's own included.
    msgspec recurses per level and, without a bound, stops with a ``RecursionError`` somewhere
    near Python's recursion limit, which depends on how deep the caller's stack already is: a
    value accepted by an adapter could then fail when the router read it back from the
    outbox. A fixed bound well below that limit makes "accepted" mean "readable everywhere".
numbers
    Integers are exact Python ints of up to 4,300 digits (msgspec's limit, the same as
    CPython's default int-str conversion limit, so every integer decoded can also be written
    back); floats are IEEE doubles: beyond +-1.8e308 is refused, below 5e-324 becomes 0.
    Refused as :data:`NUMBER_TOO_BIG`.
strings
    No bound of their own: each is bounded by the frame that carries it, and every caller
    names its frame bound (``max_bytes`` here, or the transport's message limit).
UTF-8
    Input bytes must be UTF-8; invalid sequences, and ``\\u`` escapes of lone surrogates, are
    refused (msgspec). Text given as ``str`` with lone surrogates in it (only possible from
    a lenient decode) is refused as :data:`NOT_UTF8`. A byte order mark is refused too.
NaN, Infinity
    Not JSON: refused as malformed (msgspec reads ``NaN``, ``Infinity`` as invalid characters).
duplicate keys
    The last one wins, as in msgspec, Python's ``json`` and JavaScript's ``JSON.parse``; a
    struct field given twice takes the last value too. A union's tag field (``type``,
    ``kind``) given twice with different values is refused by msgspec.
fields no one reads
    A field the decoder's type ignores (an unknown field, a ``msgspec.Raw`` left undecoded)
    is only skipped: its syntax and depth are checked, its numbers and strings never built,
    so nothing can use them. A ``Raw`` that is decoded later goes through here again.

The same choices, per peer: docs/protocols/*.md, "Decoding limits".

:class:`JsonRefused` tells apart text that is not (acceptable) JSON at all (``malformed``:
syntax, UTF-8, the bounds) from JSON of the wrong shape. msgspec validates while it parses,
so a type error ahead of a syntax error would otherwise be reported as a shape error: on a
shape error the text is parsed once more, untyped, to find out.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Final, TypeVar

import msgspec

__all__ = [
    "MAX_DEPTH",
    "NESTED_TOO_DEEP",
    "NOT_UTF8",
    "NUMBER_TOO_BIG",
    "JsonRefused",
    "decode_json",
    "nested_too_deep",
]

T = TypeVar("T")

#: The most levels of arrays and objects any decoder of peer input accepts.
MAX_DEPTH: Final = 128


def nested_too_deep(limit: int) -> str:
    """The reason given for text nested more than ``limit`` levels deep."""
    return f"nested too deeply (more than {limit} levels of arrays or objects)"


#: Why a decoder refused JSON nested too deeply (more than :data:`MAX_DEPTH` levels).
NESTED_TOO_DEEP: Final = nested_too_deep(MAX_DEPTH)
#: Why a decoder refused a number.
NUMBER_TOO_BIG: Final = (
    "a number too large (an integer of more than 4,300 digits, or beyond +-1.8e308)"
)
#: Why a decoder refused text holding lone surrogates (it cannot be UTF-8).
NOT_UTF8: Final = "not UTF-8 text (it holds a lone surrogate)"

# msgspec's messages for a number it would not build (with " - at `$...`" after a path)
_NUMBER_ERRORS = ("Integer value out of range", "Number out of range")
_ANY: Final = msgspec.json.Decoder()
# for the depth of well-formed JSON: drop escapes, keep only quotes and brackets; quotes
# then alternate, opening and closing strings
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonRefused(ValueError):
    """What :func:`decode_json` would not decode; each codec raises its own error instead.

    ``malformed`` is True when the text is not JSON or exceeds a bound (nesting, number
    size, UTF-8, the caller's size), False for JSON of the wrong shape; ``reason`` is the
    text to show, with msgspec's JSON path where it gives one.
    """

    def __init__(self, reason: str, *, malformed: bool) -> None:
        self.reason = reason
        self.malformed = malformed
        super().__init__(reason)


def decode_json(
    decoder: msgspec.json.Decoder[T],
    data: bytes | str | msgspec.Raw,
    *,
    max_depth: int | None = MAX_DEPTH,
    max_bytes: int | None = None,
) -> T:
    """``decoder.decode(data)``, or :class:`JsonRefused` for anything it would not turn into a
    value: never ``RecursionError``, ``UnicodeEncodeError`` or a msgspec error.

    ``max_depth=None`` skips the nesting check (for a part of a frame already checked whole:
    it can only be shallower); ``max_bytes`` bounds the size of ``data``.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise JsonRefused(
            f"{len(data)} bytes, over the bound of {max_bytes} bytes for this text",
            malformed=True,
        )
    try:
        value = decoder.decode(data)
    except msgspec.ValidationError as err:
        reason = str(err)
        if reason.startswith(_NUMBER_ERRORS):
            raise JsonRefused(_number_reason(reason), malformed=True) from None
        problem = _not_json(data, max_depth)
        if problem is not None:
            raise JsonRefused(problem, malformed=True) from None
        raise JsonRefused(reason, malformed=False) from None
    except msgspec.DecodeError as err:
        raise JsonRefused(str(err), malformed=True) from None
    except RecursionError:
        raise JsonRefused(nested_too_deep(max_depth or MAX_DEPTH), malformed=True) from None
    except UnicodeEncodeError:
        raise JsonRefused(NOT_UTF8, malformed=True) from None
    # more than ``max_depth`` levels take that many brackets open and closed: a short text
    # cannot (most frames; the hot path pays one len())
    if max_depth is not None and len(data) > 2 * max_depth and _deeper_than(data, max_depth):
        raise JsonRefused(nested_too_deep(max_depth), malformed=True)
    return value


def _number_reason(reason: str) -> str:
    for prefix in _NUMBER_ERRORS:
        if reason.startswith(prefix):
            return NUMBER_TOO_BIG + reason[len(prefix) :]
    return reason


def _not_json(data: bytes | str | msgspec.Raw, max_depth: int | None) -> str | None:
    """Why ``data`` is not acceptable JSON whatever its shape, or None when it is."""
    try:
        _ANY.decode(data)
    except msgspec.ValidationError as err:  # untyped, only a number can be refused
        return _number_reason(str(err))
    except msgspec.DecodeError as err:
        return str(err)
    except RecursionError:
        return nested_too_deep(max_depth or MAX_DEPTH)
    except UnicodeEncodeError:
        return NOT_UTF8
    if max_depth is not None and len(data) > 2 * max_depth and _deeper_than(data, max_depth):
        return nested_too_deep(max_depth)
    return None


def _deeper_than(data: bytes | str | msgspec.Raw, limit: int) -> bool:
    """Whether well-formed JSON ``data`` nests more than ``limit`` arrays/objects.

    Cheap when it cannot: fewer ``[`` and ``{`` in all than the limit (two scans in C).
    Otherwise escapes and everything but quotes and brackets are cut out (in C), then the
    strings, and the brackets left outside them are counted.
    """
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= limit:
            return False
        raw = data.encode()
    else:
        raw = data if isinstance(data, bytes) else bytes(data)
        if raw.count(b"[") + raw.count(b"{") <= limit:
            return False
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)
    structure = raw.translate(None, _NOT_STRUCTURE)
    # two quotes side by side enclose no bracket, whichever strings they belong to: drop
    # them (most strings hold no bracket), then keep what is outside the strings
    brackets = b"".join(structure.replace(b'""', b"").split(b'"')[::2])
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit
