"""Configuration of the AlphaX Conduit adapter (``type = "alphax"``).

Writing over HTTP (the default, also when ``[adapters.<name>.write]`` is left out), paced to the
subscription tier::

    [adapters.alphax]
    type = "alphax"
    token = "${ALPHAX_TOKEN}"            # or "${file:/etc/junction/alphax-token}"
    tier = "basic"                       # basic | premium | enterprise: paces writes and reads
    uplink = "v2"                        # v2 (JSON channel list) or v1 (hex, channels 1..N)
    # read_url = "https://app.alphax.cloud"
    # ca_file = "/etc/junction/alphax-ca.pem"   # private CA for https, mqtts and tcp+tls

    [adapters.alphax.write]
    transport = "http"                   # http | mqtt | udp | tcp: the keys below depend on it
    # base_url = "https://conduit.alphax.cloud"
    # gzip_over_bytes = 1024   concurrency = 4   writes_per_s = 100 (default: the tier's)

HTTP outcomes: 2xx stored; 429, 408, 5xx and network errors retried with back-off, the data
kept (``max_attempts`` = 0: until it works); 401/403 (the token refused) held and retried
with a back-off growing to ``auth_backoff_s``, status ``auth-failed``, until the token is
accepted; other 4xx (400, 404, 405, 413) dead-lettered at once with the status and the
server's error body.

Writing over MQTT (QoS 1; username = token, password from the environment or a file)::

    [adapters.alphax.write]
    transport = "mqtt"
    url = "mqtts://mqtt.alphax.cloud:8883"   # default: mqtt://...:1883, mqtts://...:8883 on
                                             # the Enterprise tier
    password = "${ALPHAX_PASSWORD}"
    topic_form = "bulk"                  # bulk ({id}/0/data, v2 JSON, keeps timestamps) |
                                         # v4 ({id}/publish/v4, v1 hex) | channel ({id}/{ch}/data)
    max_inflight = 1000                  # un-acknowledged messages (at most 65535, the MQTT
                                         # message ids): publishing waits for PUBACKs above
                                         # it (also the most sent again, DUP, after a
                                         # reconnect)
    ack_timeout_s = 30                   # PUBACK wait, counted while connected; then dead-letter

A delivery returns once every PUBACK of its batch arrived. While the broker is unreachable (or
refuses the credentials: status ``auth-failed``) deliveries wait, the data kept, and the
route's queue and overflow policy apply upstream.

Writing over UDP or TCP (**best effort**: AlphaX acknowledges nothing on these; UDP datagrams
can be lost without anyone knowing, and a TCP line written just before a connection breaks may
be lost or, after the resend, stored twice; the adapter counts what it sent)::

    [adapters.alphax.write]
    transport = "udp"                    # or "tcp" (tls = true for port 9812)
    host = "conduit.alphax.cloud"
    port = 9012
    max_datagram_bytes = 1200            # udp: a bigger uplink is split by channel

These keys used to sit in ``[adapters.<name>]`` itself (``transport``, ``mqtt_url``, ``host``...,
all of them whatever the transport): a file that still has them is refused, each moved key
named with its new place (``mqtt_url`` is now ``url``).

Keys of ``[adapters.<name>]`` that every transport shares: ``connect_timeout_s`` and
``timeout_s`` (HTTP posts and reads, MQTT and TCP connects), ``max_attempts``,
``backoff_initial_s`` and ``backoff_max_s`` (HTTP and TCP writes, reads), ``auth_backoff_s``
(the longest wait between tries of writes and reads refused with 401/403).

Reading back (HTTP, whatever the write transport), as ``channel_reading`` envelopes::

    [adapters.alphax.poll]
    devices = ["4106", "4107"]           # empty: all devices of the token, in one stream
    channels = [1, 2]                    # empty: every channel
    api = "v6"                           # v6 | v4
    # interval_s = 15                    # default: the tier's read limit (Enterprise: 2 s)
    # start_lookback_s = 3600            # how far back the very first poll starts

Tier limits (docs/protocols/alphax.md, "Rate limits"): Basic and Premium 100 writes/s,
Enterprise unlimited; reads Basic 1 call / 15 s, Premium 1 / 5 s, Enterprise unlimited. One
HTTP post is one write, however many channels it carries -- the rule the simulator applies;
``writes_per_s`` overrides the tier's figure if the real service counts differently.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec

from adapters.alphax.codec import DEVICE_CHANNELS, MAX_CHANNELS
from broker import AdapterConfig, AtLeastOne, NonNegative, NonNegativeInt, Port, Positive, Secret

Tier = Literal["basic", "premium", "enterprise"]

#: Write requests per second each tier allows (None: unlimited).
TIER_WRITES_PER_S: dict[str, float | None] = {"basic": 100, "premium": 100, "enterprise": None}
#: Seconds between read calls each tier allows (None: unlimited).
TIER_READ_INTERVAL_S: dict[str, float | None] = {"basic": 15.0, "premium": 5.0, "enterprise": None}
#: Poll interval on a tier without a read limit.
UNLIMITED_POLL_INTERVAL_S = 2.0
#: The smallest datagram that holds one uplink of one channel.
MIN_DATAGRAM_BYTES = 200


class PollConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The ``[adapters.<name>.poll]`` table: what to read back and how often.

    One *stream* per listed device (or one for all devices when ``devices`` is empty); each
    keeps its own high-water mark, persisted in the state directory. A single configured
    channel is asked for with ``ch=``; several are filtered here.
    """

    devices: list[str] = []
    channels: list[int] = []
    api: Literal["v6", "v4"] = "v6"
    interval_s: Positive | None = None
    start_lookback_s: NonNegative = 3600.0
    #: The window ends this many seconds before now, so values still on their way are not
    #: passed over (values that arrive older than the mark are not read: see _walker).
    settle_s: NonNegative = 2.0
    #: The service's cap on records per call; a full page means "there is more".
    records_per_call: AtLeastOne = 1000

    def __post_init__(self) -> None:
        for channel in self.channels:
            if not (1 <= channel <= MAX_CHANNELS or channel in DEVICE_CHANNELS):
                raise ValueError(f"poll channel {channel} is outside 1..32 and 252..255")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("poll channels lists a channel twice")
        if len(set(self.devices)) != len(self.devices) or any(not d for d in self.devices):
            raise ValueError("poll devices must be distinct, non-empty network ids")


# -- the write transports: one table, ``transport`` picks the variant -------------------------


class _Write(
    msgspec.Struct, tag_field="transport", forbid_unknown_fields=True, kw_only=True, frozen=True
):
    @property
    def transport(self) -> str:
        """The variant's ``transport`` tag."""
        return str(self.__struct_config__.tag)


class HttpWrite(_Write, tag="http", frozen=True):
    """``transport = "http"``: v1/v2 posts, ``concurrency`` at a time, paced to the tier."""

    base_url: str = "https://conduit.alphax.cloud"
    #: Bodies above this size are gzipped.
    gzip_over_bytes: NonNegativeInt = 1024
    concurrency: AtLeastOne = 4
    #: Posts per second (default: the tier's figure; 0 = not paced).
    writes_per_s: NonNegative | None = None
    pace_margin_s: NonNegative = 0.05

    def __post_init__(self) -> None:
        _check_http_url("base_url", self.base_url)


class MqttWrite(_Write, tag="mqtt", frozen=True):
    """``transport = "mqtt"``: QoS 1 publishes, username = token."""

    #: ``mqtt://host[:1883]`` or ``mqtts://host[:8883]``; empty: AlphaX's broker for the tier.
    url: str = ""
    password: Secret = ""
    topic_form: Literal["v4", "bulk", "channel"] = "bulk"
    #: The writer's window (see adapters/alphax/_mqtt.py). 1000, not 100: on the Node-RED
    #: comparison's flood, 57-58 instead of 65-71 us of bridge CPU per message (2 alternated
    #: pairs), the writer waiting for room ten times less often.
    max_inflight: AtLeastOne = 1000
    #: No longer used: it capped paho's own queue, and the writer now keeps its messages
    #: itself, bounded by ``max_inflight``. Accepted (and checked as before) so that the
    #: configurations that set it still load.
    max_queued: AtLeastOne = 2000
    ack_timeout_s: Positive = 30.0
    keepalive_s: AtLeastOne = 30
    reconnect_min_s: AtLeastOne = 1
    reconnect_max_s: AtLeastOne = 30

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError(
                    f"url must be mqtt://host[:1883] or mqtts://host[:8883], got {self.url!r}"
                )
        if self.max_inflight > 65535:
            raise ValueError(
                f"max_inflight must be at most 65535 (MQTT message ids), got {self.max_inflight}"
            )
        if self.max_queued > 65535:
            raise ValueError(
                f"max_queued must be at most 65535 (MQTT message ids), got {self.max_queued}"
            )
        if self.max_queued < self.max_inflight:
            raise ValueError(
                f"max_queued ({self.max_queued}) counts in-flight messages too: it must be "
                f">= max_inflight ({self.max_inflight})"
            )
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("need reconnect_min_s <= reconnect_max_s")

    def url_for(self, tier: str) -> str:
        """``url``, or AlphaX's broker on the tier's port (8883 with TLS on Enterprise)."""
        if self.url:
            return self.url
        if tier == "enterprise":
            return "mqtts://mqtt.alphax.cloud:8883"
        return "mqtt://mqtt.alphax.cloud:1883"


class UdpWrite(_Write, tag="udp", frozen=True):
    """``transport = "udp"``: one JSON uplink per datagram, best effort."""

    host: str = "conduit.alphax.cloud"
    port: Port = 9012
    #: A bigger uplink is split by channel (200 is the least that holds one uplink).
    max_datagram_bytes: Annotated[int, msgspec.Meta(ge=MIN_DATAGRAM_BYTES)] = 1200


class TcpWrite(_Write, tag="tcp", frozen=True):
    """``transport = "tcp"``: one JSON uplink per line on a kept-open connection."""

    host: str = "conduit.alphax.cloud"
    port: Port = 9012
    #: TLS (AlphaX listens for it on port 9812); ``ca_file`` applies.
    tls: bool = False


WriteConfig = HttpWrite | MqttWrite | UdpWrite | TcpWrite


def _moved(new: str, *transports: str) -> str:
    tags = " or ".join(f'"{t}"' for t in transports)
    where = f"with transport = {tags} " if tags else ""
    return f"moved: write it as {new} in [{{table}}.write] {where}(see adapters/alphax/config.py)"


class AlphaXConfig(AdapterConfig, kw_only=True):
    """Config of the AlphaX Conduit adapter (see the module docstring for an example)."""

    moved_keys: ClassVar[dict[str, str]] = {
        "transport": _moved('transport = "http" | "mqtt" | "udp" | "tcp"'),
        "base_url": _moved("base_url", "http"),
        "gzip_over_bytes": _moved("gzip_over_bytes", "http"),
        "concurrency": _moved("concurrency", "http"),
        "writes_per_s": _moved("writes_per_s", "http"),
        "pace_margin_s": _moved("pace_margin_s", "http"),
        "mqtt_url": _moved("url", "mqtt"),
        **{
            key: _moved(key, "mqtt")
            for key in (
                "password",
                "topic_form",
                "max_inflight",
                "max_queued",
                "ack_timeout_s",
                "keepalive_s",
                "reconnect_min_s",
                "reconnect_max_s",
            )
        },
        "host": _moved("host", "udp", "tcp"),
        "port": _moved("port", "udp", "tcp"),
        "max_datagram_bytes": _moved("max_datagram_bytes", "udp"),
        "tls": _moved("tls", "tcp"),
    }

    token: Secret
    tier: Tier = "basic"
    uplink: Literal["v1", "v2"] = "v2"
    #: v1 carries channels 1..N without holes; what to do with the channels it cannot carry:
    #: "v2" sends them in a v2 uplink of the same device and time, "fail" dead-letters them.
    v1_gaps: Literal["v2", "fail"] = "v2"
    read_url: str = "https://app.alphax.cloud"
    ca_file: str | None = None
    connect_timeout_s: Positive = 5.0
    timeout_s: Positive = 10.0
    #: Attempts per uplink for 429 / 5xx / network errors; 0 = until it succeeds (the data is
    #: kept and deliveries wait, so the route's queue and overflow policy apply upstream).
    max_attempts: NonNegativeInt = 0
    backoff_initial_s: Positive = 0.5
    backoff_max_s: Positive = 30.0
    auth_backoff_s: Positive = 60.0
    write: WriteConfig = msgspec.field(default_factory=HttpWrite)
    poll: PollConfig | None = None

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        """Where the token goes: the HTTP writes, the MQTT login, the reads."""
        if isinstance(self.write, HttpWrite):
            yield "write.base_url", self.write.base_url
        elif isinstance(self.write, MqttWrite) and self.write.url:
            yield "write.url", self.write.url
        if self.poll is not None:
            yield "read_url", self.read_url

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError('token is empty; write token = "${ALPHAX_TOKEN}"')
        for bad in ("/", "+", "#"):
            if bad in self.token:
                raise ValueError(f"token contains {bad!r}, which cannot go in an MQTT topic")
        _check_http_url("read_url", self.read_url)
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file {self.ca_file!r} is not a file (a PEM bundle of the CA)")

    @property
    def write_limit_per_s(self) -> float | None:
        """HTTP write requests per second to pace to (None: unpaced)."""
        match self.write:
            case HttpWrite(writes_per_s=float() | int() as limit):
                return limit or None
            case _:
                return TIER_WRITES_PER_S[self.tier]

    @property
    def read_interval_s(self) -> float:
        """Minimum seconds between two read calls (0 on a tier without a read limit)."""
        return TIER_READ_INTERVAL_S[self.tier] or 0.0

    @property
    def poll_interval_s(self) -> float:
        """Seconds between polls: the configured interval, else the tier's read limit."""
        if self.poll is not None and self.poll.interval_s is not None:
            return max(self.poll.interval_s, self.read_interval_s)
        return TIER_READ_INTERVAL_S[self.tier] or UNLIMITED_POLL_INTERVAL_S


def _check_http_url(key: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key} must be an http(s) URL, got {url!r}")
