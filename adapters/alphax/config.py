"""Configuration of the AlphaX Conduit adapter (``type = "alphax"``).

Writing over HTTP (the default), paced to the subscription tier::

    [adapters.alphax]
    type = "alphax"
    token = "${ALPHAX_TOKEN}"            # or "${file:/etc/junction/alphax-token}"
    tier = "basic"                       # basic | premium | enterprise: paces writes and reads
    transport = "http"                   # http | mqtt | udp | tcp
    uplink = "v2"                        # v2 (JSON channel list) or v1 (hex, channels 1..N)
    # base_url = "https://conduit.alphax.cloud"   read_url = "https://app.alphax.cloud"
    # gzip_over_bytes = 1024   concurrency = 4
    # ca_file = "/etc/junction/alphax-ca.pem"   # private CA for https, mqtts and tcp+tls

HTTP outcomes: 2xx stored; 429, 408, 5xx and network errors retried with back-off, the data
kept (``max_attempts`` = 0: until it works); other 4xx (400, 401, 403, 404, 405, 413)
dead-lettered at once with the status and the server's error body.

Writing over MQTT (QoS 1; username = token, password from the environment or a file)::

    transport = "mqtt"
    mqtt_url = "mqtts://mqtt.alphax.cloud:8883"  # default: mqtt://...:1883, mqtts://...:8883 on
                                                # the Enterprise tier
    password = "${ALPHAX_PASSWORD}"
    topic_form = "bulk"                  # bulk ({id}/0/data, v2 JSON, keeps timestamps) |
                                         # v4 ({id}/publish/v4, v1 hex) | channel ({id}/{ch}/data)
    max_inflight = 100                   # un-acknowledged messages on the wire
    max_queued = 1000                    # messages handed to the client and not yet acknowledged
    ack_timeout_s = 30                   # PUBACK wait, counted while connected; then dead-letter

A delivery returns once every PUBACK of its batch arrived. While the broker is unreachable (or
refuses the credentials: status ``auth-failed``) deliveries wait, the data kept, and the
route's queue and overflow policy apply upstream.

Writing over UDP or TCP (**best effort**: AlphaX acknowledges nothing on these; UDP datagrams
can be lost without anyone knowing, and a TCP line written just before a connection breaks may
be lost or, after the resend, stored twice; the adapter counts what it sent)::

    transport = "udp"                    # or "tcp" (tls = true for port 9812)
    host = "conduit.alphax.cloud"
    port = 9012
    max_datagram_bytes = 1200            # a bigger uplink is split by channel

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

from typing import Literal
from urllib.parse import urlsplit

import msgspec

from adapters.alphax.codec import DEVICE_CHANNELS, MAX_CHANNELS
from broker.config import AdapterConfig

Tier = Literal["basic", "premium", "enterprise"]

#: Write requests per second each tier allows (None: unlimited).
TIER_WRITES_PER_S: dict[str, float | None] = {"basic": 100, "premium": 100, "enterprise": None}
#: Seconds between read calls each tier allows (None: unlimited).
TIER_READ_INTERVAL_S: dict[str, float | None] = {"basic": 15.0, "premium": 5.0, "enterprise": None}
#: Poll interval on a tier without a read limit.
UNLIMITED_POLL_INTERVAL_S = 2.0


class PollConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The ``[adapters.<name>.poll]`` table: what to read back and how often.

    One *stream* per listed device (or one for all devices when ``devices`` is empty); each
    keeps its own high-water mark, persisted in the state directory. A single configured
    channel is asked for with ``ch=``; several are filtered here.
    """

    devices: list[str] = []
    channels: list[int] = []
    api: Literal["v6", "v4"] = "v6"
    interval_s: float | None = None
    start_lookback_s: float = 3600.0
    #: The window ends this many seconds before now, so values still on their way are not
    #: passed over (values that arrive older than the mark are not read: see _walker).
    settle_s: float = 2.0
    #: The service's cap on records per call; a full page means "there is more".
    records_per_call: int = 1000

    def __post_init__(self) -> None:
        for channel in self.channels:
            if not (1 <= channel <= MAX_CHANNELS or channel in DEVICE_CHANNELS):
                raise ValueError(f"poll channel {channel} is outside 1..32 and 252..255")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("poll channels lists a channel twice")
        if len(set(self.devices)) != len(self.devices) or any(not d for d in self.devices):
            raise ValueError("poll devices must be distinct, non-empty network ids")
        if self.interval_s is not None and self.interval_s <= 0:
            raise ValueError(f"poll interval_s must be > 0, got {self.interval_s}")
        if self.start_lookback_s < 0 or self.settle_s < 0:
            raise ValueError("poll start_lookback_s and settle_s must be >= 0")
        if self.records_per_call < 1:
            raise ValueError("poll records_per_call must be >= 1")


class AlphaXConfig(AdapterConfig, kw_only=True):
    """Config of the AlphaX Conduit adapter (see the module docstring for an example)."""

    token: str
    tier: Tier = "basic"
    transport: Literal["http", "mqtt", "udp", "tcp"] = "http"
    uplink: Literal["v1", "v2"] = "v2"
    #: v1 carries channels 1..N without holes; what to do with the channels it cannot carry:
    #: "v2" sends them in a v2 uplink of the same device and time, "fail" dead-letters them.
    v1_gaps: Literal["v2", "fail"] = "v2"
    # -- HTTP ----------------------------------------------------------------------------
    base_url: str = "https://conduit.alphax.cloud"
    read_url: str = "https://app.alphax.cloud"
    gzip_over_bytes: int = 1024
    ca_file: str | None = None
    connect_timeout_s: float = 5.0
    timeout_s: float = 10.0
    concurrency: int = 4
    writes_per_s: float | None = None
    pace_margin_s: float = 0.05
    #: Attempts per uplink for 429 / 5xx / network errors; 0 = until it succeeds (the data is
    #: kept and deliveries wait, so the route's queue and overflow policy apply upstream).
    max_attempts: int = 0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    auth_backoff_s: float = 60.0
    # -- MQTT ----------------------------------------------------------------------------
    mqtt_url: str = ""
    password: str = ""
    topic_form: Literal["v4", "bulk", "channel"] = "bulk"
    max_inflight: int = 100
    max_queued: int = 1000
    ack_timeout_s: float = 30.0
    keepalive_s: int = 30
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    # -- UDP / TCP -----------------------------------------------------------------------
    host: str = "conduit.alphax.cloud"
    port: int = 9012
    tls: bool = False
    max_datagram_bytes: int = 1200
    # -- reading ---------------------------------------------------------------------------
    poll: PollConfig | None = None

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError('token is empty; write token = "${ALPHAX_TOKEN}"')
        for bad in ("/", "+", "#"):
            if bad in self.token:
                raise ValueError(f"token contains {bad!r}, which cannot go in an MQTT topic")
        for key in ("base_url", "read_url"):
            parts = urlsplit(getattr(self, key))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{key} must be an http(s) URL, got {getattr(self, key)!r}")
        if self.transport == "mqtt":
            parts = urlsplit(self.mqtt_url_or_default)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError(
                    f"mqtt_url must be mqtt://host[:1883] or mqtts://host[:8883], "
                    f"got {self.mqtt_url!r}"
                )
        positive = (
            "connect_timeout_s",
            "timeout_s",
            "backoff_initial_s",
            "backoff_max_s",
            "auth_backoff_s",
            "ack_timeout_s",
        )
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        if self.concurrency < 1 or self.max_inflight < 1 or self.keepalive_s < 1:
            raise ValueError("concurrency, max_inflight and keepalive_s must be >= 1")
        if self.max_queued < self.max_inflight:
            raise ValueError(
                f"max_queued ({self.max_queued}) counts in-flight messages too: it must be "
                f">= max_inflight ({self.max_inflight})"
            )
        if not 1 <= self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("need 1 <= reconnect_min_s <= reconnect_max_s")
        if self.max_attempts < 0 or self.gzip_over_bytes < 0 or self.pace_margin_s < 0:
            raise ValueError("max_attempts, gzip_over_bytes and pace_margin_s must be >= 0")
        if self.writes_per_s is not None and self.writes_per_s < 0:
            raise ValueError("writes_per_s must be >= 0 (0 = not paced)")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP/UDP port")
        if self.max_datagram_bytes < 200:
            raise ValueError("max_datagram_bytes below 200 cannot hold one uplink")
        if self.tls and self.transport != "tcp":
            raise ValueError("tls applies to transport = 'tcp' only (https/mqtts set their own)")

    @property
    def mqtt_url_or_default(self) -> str:
        """``mqtt_url``, or AlphaX's broker on the tier's port (8883 with TLS on Enterprise)."""
        if self.mqtt_url:
            return self.mqtt_url
        if self.tier == "enterprise":
            return "mqtts://mqtt.alphax.cloud:8883"
        return "mqtt://mqtt.alphax.cloud:1883"

    @property
    def write_limit_per_s(self) -> float | None:
        """Write requests per second to pace to (None: unpaced)."""
        if self.writes_per_s is not None:
            return self.writes_per_s or None
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
