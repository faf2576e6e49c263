"""Pure: ``channel_write`` envelopes -> AlphaX uplink documents and MQTT messages.

No I/O. Every envelope ends up in exactly one document/message or in the failures, with a
reason (the codec's error text) -- never dropped silently.

Grouping: the writes of one device at one timestamp (epoch milliseconds; the envelope's
``timestamp``, else its ``ts``) go into one uplink, in arrival order. A channel written twice
for the same device and time starts a second uplink, so no value is lost and the later value
is sent after the earlier one.

v1 (hex) carries channels 1..N by position, plus the four 16-bit device fields (252..255,
sent as 0 when not written: the vendor docs say to pad unknown fields with ``0000``). So a v1
uplink takes the longest run 1..k of written channels whose ``value * 1000`` fits a signed
32-bit integer, and device fields that are integers in range. The rest of the group (a channel
after a gap, a value too big for v1) goes into a v2 uplink of the same device and time when
``gaps == "v2"``, or fails with a reason naming the channel when ``gaps == "fail"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from adapters.alphax import codec
from adapters.alphax.codec import CodecError
from broker import ChannelWrite, Envelope

Failure = tuple[Envelope, str]
Gaps = Literal["v2", "fail"]

_INT32 = 2**31 - 1
_DEVICE_RANGES = {
    codec.VOLTAGE_CHANNEL: (0, 2**16 - 1),
    codec.RSSI_CHANNEL: (-(2**15), 2**15 - 1),
    codec.MESSAGE_ID_CHANNEL: (0, 2**16 - 1),
    codec.ERROR_CODE_CHANNEL: (0, 2**16 - 1),
}


@dataclass(frozen=True)
class Point:
    """One checked channel write."""

    envelope: Envelope
    channel: int
    value: float


@dataclass
class Group:
    """Writes of one device at one timestamp, each channel at most once."""

    network_id: str
    ts_ms: int
    points: list[Point] = field(default_factory=list)
    channels: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Doc:
    """One uplink JSON document (an HTTP post body, a datagram, a TCP line)."""

    form: Literal["v1", "v2"]
    body: bytes
    points: tuple[Point, ...]
    network_id: str
    ts_ms: int

    @property
    def envelopes(self) -> tuple[Envelope, ...]:
        """The envelopes this document carries."""
        return tuple(p.envelope for p in self.points)


@dataclass(frozen=True)
class Message:
    """One MQTT publish: topic (holds the token: log it only through ``redact_topic``)."""

    topic: str
    payload: bytes
    envelopes: tuple[Envelope, ...]


def _timestamp_ms(env: Envelope, body: ChannelWrite) -> int:
    seconds = body.timestamp if body.timestamp is not None else env.ts
    if not math.isfinite(seconds):
        raise codec.TimestampError(f"timestamp {seconds!r} is not a finite number", "timestamp")
    return codec.check_timestamp_ms(round(seconds * 1000), where="timestamp")


def encode_docs(
    batch: Sequence[Envelope], token: str, form: Literal["v1", "v2"], gaps: Gaps
) -> tuple[list[Doc], list[Failure]]:
    """``batch`` as uplink documents (see :func:`group_writes`, :func:`build_docs`)."""
    groups, failures = group_writes(batch)
    docs, more = build_docs(groups, token, form, gaps)
    return docs, failures + more


def group_writes(batch: Sequence[Envelope]) -> tuple[list[Group], list[Failure]]:
    """Check each write and group by (device, timestamp); unusable envelopes are failures."""
    groups: list[Group] = []
    open_groups: dict[tuple[str, int], Group] = {}
    failures: list[Failure] = []
    for env in batch:
        body = env.body
        if not isinstance(body, ChannelWrite):
            failures.append((env, f"AlphaX takes channel_write envelopes, not {env.kind}"))
            continue
        try:
            if not body.network_id:
                raise codec.JsonShapeError("network_id is empty", "network_id")
            codec.check_channel(body.channel)
            value = codec.round_value(body.value, where=f"channel {body.channel} value")
            ts_ms = _timestamp_ms(env, body)
        except CodecError as err:
            failures.append((env, f"cannot encode: {err}"))
            continue
        key = (body.network_id, ts_ms)
        group = open_groups.get(key)
        if group is None or body.channel in group.channels:
            group = Group(body.network_id, ts_ms)
            open_groups[key] = group
            groups.append(group)
        group.points.append(Point(env, body.channel, value))
        group.channels.add(body.channel)
    return groups, failures


def _fits_v1(point: Point) -> bool:
    if point.channel in _DEVICE_RANGES:
        low, high = _DEVICE_RANGES[point.channel]
        return point.value.is_integer() and low <= point.value <= high
    return abs(round(point.value * 1000)) <= _INT32


def split_v1(points: Sequence[Point]) -> tuple[list[Point], list[Point]]:
    """(points a v1 payload can carry, the rest): see the module docstring."""
    by_channel = {p.channel: p for p in points}
    carried: list[Point] = []
    for channel in range(1, codec.MAX_CHANNELS + 1):
        point = by_channel.get(channel)
        if point is None or not _fits_v1(point):
            break
        carried.append(point)
    carried += [p for p in points if p.channel in _DEVICE_RANGES and _fits_v1(p)]
    taken = {p.channel for p in carried}
    return carried, [p for p in points if p.channel not in taken]


def v1_hex(points: Sequence[Point]) -> str:
    """The v1 hex payload for points chosen by :func:`split_v1`."""
    payload = codec.v1_payload_from_channels({p.channel: p.value for p in points})
    return codec.encode_v1_hex(payload)


def v2_doc(token: str, network_id: str, ts_ms: int, points: Sequence[Point]) -> Doc:
    """A v2 uplink of ``points`` (one device, one time)."""
    values = tuple(codec.ChannelValue(p.channel, p.value) for p in points)
    body = codec.encode_v2_body(codec.V2Uplink(token, network_id, ts_ms, values))
    return Doc("v2", body, tuple(points), network_id, ts_ms)


def v1_doc(token: str, network_id: str, ts_ms: int, points: Sequence[Point]) -> Doc:
    """A v1 uplink of points chosen by :func:`split_v1`."""
    payload = codec.v1_payload_from_channels({p.channel: p.value for p in points})
    body = codec.encode_v1_body(codec.V1Uplink(token, network_id, ts_ms, payload))
    return Doc("v1", body, tuple(points), network_id, ts_ms)


def _gap_failures(rest: Sequence[Point]) -> list[Failure]:
    return [
        (
            p.envelope,
            f"channel {p.channel} cannot go in a v1 uplink (v1 carries channels 1..N without "
            'gaps, int32 milli-units, integer device fields); set v1_gaps = "v2" to send it '
            "as v2",
        )
        for p in rest
    ]


def build_docs(
    groups: Sequence[Group], token: str, uplink: Literal["v1", "v2"], gaps: Gaps
) -> tuple[list[Doc], list[Failure]]:
    """One document per group (two with v1 when some channels need v2)."""
    docs: list[Doc] = []
    failures: list[Failure] = []
    for group in groups:
        try:
            if uplink == "v2":
                docs.append(v2_doc(token, group.network_id, group.ts_ms, group.points))
                continue
            carried, rest = split_v1(group.points)
            if carried:
                docs.append(v1_doc(token, group.network_id, group.ts_ms, carried))
            if rest and gaps == "v2":
                docs.append(v2_doc(token, group.network_id, group.ts_ms, rest))
            elif rest:
                failures += _gap_failures(rest)
        except CodecError as err:  # not expected after group_writes' checks; never silent
            failures += [(p.envelope, f"cannot encode: {err}") for p in group.points]
    return docs, failures


def split_for_datagrams(
    docs: Sequence[Doc], token: str, max_bytes: int
) -> tuple[list[Doc], list[Failure]]:
    """Docs of at most ``max_bytes``: an oversize one is re-sent as v2 docs split by channel."""
    out: list[Doc] = []
    failures: list[Failure] = []
    for doc in docs:
        if len(doc.body) <= max_bytes:
            out.append(doc)
            continue
        try:
            _halve(list(doc.points), doc, token, max_bytes, out, failures)
        except CodecError as err:  # not expected: the points encoded once already
            failures += [(p.envelope, f"cannot encode: {err}") for p in doc.points]
    return out, failures


def _halve(
    points: list[Point],
    doc: Doc,
    token: str,
    max_bytes: int,
    out: list[Doc],
    failures: list[Failure],
) -> None:
    part = v2_doc(token, doc.network_id, doc.ts_ms, points)
    if len(part.body) <= max_bytes:
        out.append(part)
    elif len(points) == 1:
        failures.append(
            (
                points[0].envelope,
                f"one channel alone makes a {len(part.body)}-byte uplink, over "
                f"max_datagram_bytes = {max_bytes} (network id too long?)",
            )
        )
    else:
        middle = len(points) // 2
        _halve(points[:middle], doc, token, max_bytes, out, failures)
        _halve(points[middle:], doc, token, max_bytes, out, failures)


def build_messages(
    groups: Sequence[Group], token: str, form: Literal["v4", "bulk", "channel"], gaps: Gaps
) -> tuple[list[Message], list[Failure]]:
    """MQTT messages for the topic form (``v4`` leftovers go to the bulk topic, or fail)."""
    messages: list[Message] = []
    failures: list[Failure] = []
    for group in groups:
        nid = group.network_id
        try:
            if form == "channel":
                for p in group.points:
                    topic = codec.channel_topic(token, nid, p.channel)
                    messages.append(
                        Message(topic, codec.encode_channel_value(p.value), (p.envelope,))
                    )
                continue
            rest = group.points
            if form == "v4":
                carried, rest = split_v1(group.points)
                if carried:
                    payload = v1_hex(carried).encode("ascii")
                    envs = tuple(p.envelope for p in carried)
                    messages.append(Message(codec.publish_v4_topic(token, nid), payload, envs))
                if rest and gaps == "fail":
                    failures += _gap_failures(rest)
                    continue
            if rest:
                doc = v2_doc(token, nid, group.ts_ms, rest)
                messages.append(Message(codec.bulk_topic(token, nid), doc.body, doc.envelopes))
        except CodecError as err:
            done = {id(e) for m in messages for e in m.envelopes}
            failures += [
                (p.envelope, f"cannot publish: {err}")
                for p in group.points
                if id(p.envelope) not in done
            ]
    return messages, failures
