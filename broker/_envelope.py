"""The envelope vocabulary: what adapters, the router and plugins exchange.

An :class:`Envelope` is the one message shape that crosses the broker.  It carries
routing metadata (who sent it, what it is about, whom to answer) around a *body*,
and the body is one of a closed set of protocol-neutral message types, a tagged
union whose tag is the body's ``kind``.  Every peer's traffic maps onto these:

PlaceOS (building control)
    ``status_change``   a bound status variable changed (``value`` is the JSON it was,
                        ``None`` when the status was deleted)
    ``bind``            ask the PlaceOS adapter to bind (or unbind) a status variable
    ``debug``           ask the PlaceOS adapter to start (or stop) receiving a module's
                        log lines, which then arrive as ``log`` envelopes
    ``exec_request``    call a driver method; answered by an ``exec_result``
    ``exec_result``     the answer: ``ok`` with ``value`` and ``code``, or an error

Allxon Octo (device management)
    ``command_request`` a Portal command arrived; answered by a ``command_result``
    ``command_result``  the outcome that becomes the command's ACKED / ERRORED ack
    ``property``        a property value to (re-)announce
    ``state``           a state value (the Portal keeps only the latest)
    ``metric``          a numeric sample
    ``event``           an event occurrence
    ``alert``           trigger or resolve an alarm
    ``alarm_update``    the Portal changed which alarms are enabled and their params
    ``config_update``   the Portal changed configuration values

AlphaX Conduit (IoT data)
    ``channel_write``   write a value to a device channel
    ``channel_reading`` a value read back from the historian

Any adapter
    ``log``             a log / debug line (PlaceOS debug output, adapter notices)

Request/reply: the asker sets ``correlation_id`` and ``reply_to`` (its adapter name);
whoever answers copies the ``correlation_id`` into the reply and the router returns
it to ``reply_to``.  ``deadline`` (epoch seconds) bounds how long an answer or a
delivery is worth waiting for.

Envelopes are frozen: a transform returns a new one (``msgspec.structs.replace``).
Bodies are frozen too; they tolerate unknown fields when decoded so that envelopes
written by a newer Junction still load.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, ClassVar, Literal

import msgspec

from broker._json import MAX_DEPTH, JsonRefused, decode_json


class Body(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of every body type; the subclass's tag is its ``kind``."""

    kind_name: ClassVar[str] = ""


# --- PlaceOS -----------------------------------------------------------------


class StatusChange(Body, tag="status_change", kw_only=True, frozen=True):
    """A PlaceOS status variable changed; ``value`` is the JSON value, ``None`` if deleted."""

    system: str
    module: str
    index: int = 1
    name: str
    value: Any = None


class Bind(Body, tag="bind", kw_only=True, frozen=True):
    """Ask the PlaceOS adapter to bind (``bind=True``) or unbind a status variable."""

    system: str
    module: str
    index: int = 1
    name: str
    bind: bool = True


class Debug(Body, tag="debug", kw_only=True, frozen=True):
    """Start (``enable=True``: PlaceOS ``debug``) or stop (``ignore``) a module's log lines.

    ``module`` is the module *id* (``mod-ABC``), as PlaceOS's debug command wants.
    """

    system: str
    module: str
    index: int = 1
    enable: bool = True


class ExecRequest(Body, tag="exec_request", kw_only=True, frozen=True):
    """Call ``method`` with positional ``args`` on a PlaceOS module."""

    system: str
    module: str
    index: int = 1
    method: str
    args: list[Any] = []


class ExecResult(Body, tag="exec_result", kw_only=True, frozen=True):
    """The answer to an exec: ``ok`` with ``value``/``code``, or ``error`` and its name.

    ``error`` is a short machine name (``request_failed``, ``timeout``, ...) and
    ``message`` the peer's human text.
    """

    ok: bool
    value: Any = None
    code: int | None = None
    error: str | None = None
    error_code: int | None = None
    message: str = ""


# --- Allxon ------------------------------------------------------------------


class CommandRequest(Body, tag="command_request", kw_only=True, frozen=True):
    """A Portal command for a declared command card, with its parameters by name."""

    module: str
    command: str
    command_id: str = ""
    params: dict[str, Any] = {}


class CommandResult(Body, tag="command_result", kw_only=True, frozen=True):
    """The outcome of a command: ``ok`` -> ACKED with ``result``, else ERRORED with ``message``."""

    ok: bool
    result: dict[str, Any] = {}
    message: str = ""
    states: dict[str, Any] = {}


class Property(Body, tag="property", kw_only=True, frozen=True):
    """A property card value; changing it makes the Allxon adapter re-announce."""

    module: str
    name: str
    value: Any


class State(Body, tag="state", kw_only=True, frozen=True):
    """A state card value; only the latest per name matters."""

    module: str
    name: str
    value: Any
    time: float | None = None


class Metric(Body, tag="metric", kw_only=True, frozen=True):
    """A numeric sample for a metric card (temperatures in Kelvin, as Allxon wants)."""

    module: str
    name: str
    value: float
    time: float | None = None


class Event(Body, tag="event", kw_only=True, frozen=True):
    """An event card occurrence."""

    module: str
    name: str
    value: str = ""
    time: float | None = None


class Alert(Body, tag="alert", kw_only=True, frozen=True):
    """Trigger or resolve an alarm card."""

    module: str
    alarm: str
    action: Literal["trigger", "resolve"]
    message: str = ""
    time: float | None = None


class AlarmSetting(msgspec.Struct, frozen=True, kw_only=True):
    """One alarm as the Portal configured it."""

    name: str
    enabled: bool
    params: dict[str, Any] = {}


class AlarmUpdate(Body, tag="alarm_update", kw_only=True, frozen=True):
    """The Portal's alarm settings for one module (an empty list: all disabled)."""

    module: str
    alarms: list[AlarmSetting] = []


class ConfigSetting(msgspec.Struct, frozen=True, kw_only=True):
    """One config card's values as the Portal set them."""

    name: str
    params: dict[str, Any] = {}


class ConfigUpdate(Body, tag="config_update", kw_only=True, frozen=True):
    """The Portal's config values for one module."""

    module: str
    configs: list[ConfigSetting] = []


# --- AlphaX ------------------------------------------------------------------


class ChannelWrite(Body, tag="channel_write", kw_only=True, frozen=True):
    """Write ``value`` to channel 1..32 of device ``network_id`` (``timestamp`` epoch seconds)."""

    network_id: str
    channel: int
    value: float
    timestamp: float | None = None


class ChannelReading(Body, tag="channel_reading", kw_only=True, frozen=True):
    """A value read back from AlphaX (``timestamp`` epoch seconds)."""

    network_id: str
    channel: int
    value: float
    timestamp: float
    raw: float | None = None


# --- any adapter -------------------------------------------------------------


class LogLine(Body, tag="log", kw_only=True, frozen=True):
    """A log or debug line worth routing (PlaceOS debug output, adapter notices)."""

    level: str = "info"
    message: str
    fields: dict[str, Any] = {}


BodyType = (
    StatusChange
    | Bind
    | Debug
    | ExecRequest
    | ExecResult
    | CommandRequest
    | CommandResult
    | Property
    | State
    | Metric
    | Event
    | Alert
    | AlarmUpdate
    | ConfigUpdate
    | ChannelWrite
    | ChannelReading
    | LogLine
)

BODY_TYPES: dict[str, type[Body]] = {}
for _cls in BodyType.__args__:
    _tag = _cls.__struct_config__.tag
    assert isinstance(_tag, str)
    _cls.kind_name = _tag
    BODY_TYPES[_tag] = _cls

KINDS: frozenset[str] = frozenset(BODY_TYPES)

_counter = itertools.count(1)
_prefix = f"{os.getpid():x}-{time.time_ns() & 0xFFFFFF:06x}-"


def new_id() -> str:
    """A process-unique, cheap, sortable-per-process envelope id."""
    return f"{_prefix}{next(_counter)}"


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One message crossing the broker.

    ``kind`` is the body's tag (read-only, derived, so they can never disagree).
    ``subject`` is a free-form address inside the source, such as
    ``sys-1/Display_1/power`` for PlaceOS or ``module/metric`` for Allxon.
    """

    id: str = msgspec.field(default_factory=new_id)
    ts: float = msgspec.field(default_factory=time.time)
    source: str
    subject: str = ""
    body: BodyType
    correlation_id: str | None = None
    reply_to: str | None = None
    deadline: float | None = None
    headers: dict[str, str] = {}

    @property
    def kind(self) -> str:
        """The body's tag, e.g. ``status_change``."""
        return self.body.kind_name


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    """JSON bytes of an envelope (the body carries its ``kind``)."""
    return _encoder.encode(envelope)


#: The most levels of arrays and objects a stored envelope may nest: peer input is bounded
#: by ``MAX_DEPTH`` (128); the envelope adds its own levels and a transform may wrap values.
STORED_MAX_DEPTH = 2 * MAX_DEPTH


def decode(data: bytes | str) -> Envelope:
    """Parse JSON into an envelope; total: for any input an envelope or a msgspec error.

    ``msgspec.ValidationError`` (with a path) for JSON that is not an envelope,
    ``msgspec.DecodeError`` for text that is not JSON or exceeds a bound of
    :func:`broker.decode_json` (nested more than ``STORED_MAX_DEPTH`` levels, a number too
    large, not UTF-8). A float field written as NaN or infinite was stored as ``null``
    (msgspec's encoder) and is refused here ("Expected `float`, got `null`").
    """
    try:
        return decode_json(_decoder, data, max_depth=STORED_MAX_DEPTH)
    except JsonRefused as err:
        error = msgspec.DecodeError if err.malformed else msgspec.ValidationError
        raise error(err.reason) from None


def to_builtins(envelope: Envelope) -> dict[str, Any]:
    """The envelope as plain dicts/lists, as templates and transforms read it."""
    out: dict[str, Any] = msgspec.to_builtins(envelope)
    out["kind"] = envelope.kind
    return out
