"""Configuration of the NATS JetStream adapter (``type = "nats"``): a sink, a source, or both.

::

    [adapters.bus]
    type = "nats"
    servers = ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"]   # tls://... for TLS
    ca_file = "/etc/junction/nats-ca.pem"   # a private CA (implies TLS; verification on)
    # one way to log in, or none:
    token = "${NATS_TOKEN}"
    # user = "junction"   password = "${NATS_PASSWORD}"
    # nkey_seed = "${file:/etc/junction/junction.nk}"     # the seed itself (SU...)
    # creds = "${file:/etc/junction/junction.creds}"      # a .creds file's content

    [[adapters.bus.streams]]             # created at start, or checked and updated
    name = "JUNCTION"
    subjects = ["junction.>"]
    retention = "workqueue"              # limits | workqueue | interest
    # storage = "file"  replicas = 1  duplicate_window_s = 120  max_age_s = 0
    # max_bytes = -1  max_msgs = -1  max_msg_size = -1
    # compression = "s2"                 # nats-server 2.10+
    # allow_msg_ttl = true               # nats-server 2.11+

    [adapters.bus.publish]               # the sink: routes to this adapter publish
    subject = "junction.{kind}.{subject}"
    # msg_id = "{id}"   ack_timeout_s = 5   max_pending = 1000   msg_ttl_s = 0 (2.11+)

    [adapters.bus.consume]               # the source: envelopes from a durable pull consumer
    stream = "JUNCTION"
    durable = "junction"
    # filter_subjects = ["junction.>"]   ack_wait_s = 30   max_ack_pending = 1000
    # max_deliver = -1   batch = 100

Every key is checked by ``junction check`` without the network; what only the server can
say (its version, JetStream enabled, a stream that exists with another retention) is
refused when the adapter connects, in one line naming the key (see :mod:`adapters.nats.codec`,
``FEATURES``).  Secrets (``token``, ``password``, ``nkey_seed``, ``creds``) are ``Secret``
fields: redacted from every log line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from adapters.nats.codec import check_subject_filter, compile_subject_template
from broker import AdapterConfig, AtLeastOne, NonNegative, Positive, Secret

#: URL schemes nats-py connects with.
SCHEMES = ("nats", "tls")


class StreamSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One ``[[adapters.<name>.streams]]`` table: a stream to create or check at start."""

    name: str
    subjects: list[str]
    retention: Literal["limits", "workqueue", "interest"] = "limits"
    storage: Literal["file", "memory"] = "file"
    replicas: AtLeastOne = 1
    #: Publishes with the same ``Nats-Msg-Id`` within this window are stored once.
    duplicate_window_s: Positive = 120.0
    #: 0: kept until the other limits (or, work queue, until acknowledged).
    max_age_s: NonNegative = 0.0
    max_bytes: int = -1
    max_msgs: int = -1
    max_msg_size: int = -1
    discard: Literal["old", "new"] = "old"
    compression: Literal["none", "s2"] = "none"
    allow_msg_ttl: bool = False

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " .*>\t\r\n/\\"):
            raise ValueError(
                f"streams: name {self.name!r} must be non-empty, without spaces, '.', '*', '>'"
            )
        if not self.subjects:
            raise ValueError(f"stream {self.name}: subjects is empty")
        for subject in self.subjects:
            problem = check_subject_filter(subject)
            if problem:
                raise ValueError(f"stream {self.name}: subjects: {problem}")
        if self.replicas > 5:
            raise ValueError(f"stream {self.name}: replicas must be 1..5 (got {self.replicas})")


class PublishSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``[adapters.<name>.publish]``: what the sink does with the envelopes routed to it."""

    #: ``{kind}``, ``{subject}``, ``{source}``, ``{route}``, ``{id}``: each value becomes one
    #: subject token ('.', '*', '>', spaces and control characters replaced by '_').
    subject: str = "junction.{kind}.{subject}"
    #: The ``Nats-Msg-Id`` (the dedup key): the envelope's id. Two routes that deliver the
    #: same envelope into one stream need ``"{id}.{route}"``, else the second is a duplicate.
    msg_id: str = "{id}"
    #: A PubAck not back after this long: publish again with the same ``Nats-Msg-Id``.
    ack_timeout_s: Positive = 5.0
    #: Publishes awaiting their PubAck; past it deliveries wait (the route's queue fills).
    max_pending: AtLeastOne = 1000
    #: Per-message TTL (the ``Nats-TTL`` header; nats-server 2.11+, ``allow_msg_ttl``): 0 off.
    msg_ttl_s: NonNegative = 0.0
    #: Publish only into this stream (the ``Nats-Expected-Stream`` header): empty: any.
    stream: str = ""

    def __post_init__(self) -> None:
        compile_subject_template(self.subject, "publish.subject")
        compile_subject_template(self.msg_id, "publish.msg_id", subject=False)


class ConsumeSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``[adapters.<name>.consume]``: the durable pull consumer the source reads."""

    stream: str
    durable: str = "junction"
    #: Empty: the whole stream. More than one needs nats-server 2.10+.
    filter_subjects: list[str] = []
    #: Unacknowledged this long, a message is delivered again (to any consumer instance).
    ack_wait_s: Positive = 30.0
    #: Messages delivered and not acknowledged, over all instances of the consumer.
    max_ack_pending: AtLeastOne = 1000
    #: Deliveries of one message before the server gives up on it; -1: no limit.
    max_deliver: int = -1
    #: Messages asked for per fetch (one crossing into Junction per fetch).
    batch: AtLeastOne = 100
    #: How long one fetch waits for messages.
    fetch_timeout_s: Positive = 1.0
    deliver_policy: Literal["all", "new"] = "all"

    def __post_init__(self) -> None:
        if not self.durable or any(c in self.durable for c in " .*>\t\r\n"):
            raise ValueError(
                f"consume.durable {self.durable!r} must be non-empty, without spaces, '.', '*', '>'"
            )
        for subject in self.filter_subjects:
            problem = check_subject_filter(subject)
            if problem:
                raise ValueError(f"consume.filter_subjects: {problem}")
        if self.max_deliver == 0 or self.max_deliver < -1:
            raise ValueError(f"consume.max_deliver must be -1 or >= 1 (got {self.max_deliver})")
        if self.batch > self.max_ack_pending:
            raise ValueError(
                f"consume.batch ({self.batch}) must be <= max_ack_pending ({self.max_ack_pending})"
            )


class NatsConfig(AdapterConfig, kw_only=True):
    """Config of the NATS adapter (see the module docstring)."""

    servers: list[str]
    ca_file: str | None = None
    token: Secret = ""
    user: str = ""
    password: Secret = ""
    nkey_seed: Secret = ""
    creds: Secret = ""
    connect_timeout_s: Positive = 5.0
    #: Seconds between reconnect attempts to one server (nats-py cycles through the list).
    reconnect_wait_s: Positive = 1.0
    #: The JetStream API's timeout (stream and consumer calls, fetch requests).
    api_timeout_s: Positive = 5.0
    streams: list[StreamSpec] = []
    publish: PublishSpec | None = None
    consume: ConsumeSpec | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("servers is empty; e.g. servers = ['nats://127.0.0.1:4222']")
        for i, url in enumerate(self.servers):
            parts = urlsplit(url)
            if "@" in parts.netloc:  # before any text that would echo the URL
                raise ValueError(
                    f"servers[{i}]: credentials in the URL (user:password@) are refused, as "
                    "logs would show them; set user and password (or token) instead"
                )
            if parts.scheme not in SCHEMES or not parts.hostname:
                raise ValueError(f"servers: {url!r} is not nats://host[:port] or tls://host[:port]")
            try:
                parts.port  # noqa: B018 -- raises ValueError for a bad port
            except ValueError:
                raise ValueError(f"servers: {url!r} has a bad port") from None
        logins = [k for k in ("token", "nkey_seed", "creds") if getattr(self, k)]
        if self.user or self.password:
            logins.append("user/password")
            if not (self.user and self.password):
                raise ValueError("user and password go together: set both or neither")
        if len(logins) > 1:
            raise ValueError(f"set one way to log in, not {' and '.join(logins)}")
        if self.nkey_seed and not self.nkey_seed.startswith("SU"):
            raise ValueError("nkey_seed must be a user seed (it starts with 'SU')")
        if self.creds and "-----BEGIN NATS USER JWT-----" not in self.creds:
            raise ValueError('creds is not a .creds file\'s content (use "${file:/path}")')
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file {self.ca_file!r} is not a file (a PEM bundle of the CA)")
        if self.publish is None and self.consume is None:
            raise ValueError("set [publish] (a sink), [consume] (a source), or both")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"streams: a stream is declared twice ({sorted(names)})")
        if self.publish is not None and self.publish.msg_ttl_s and self.streams:
            ttl_ok = [s.name for s in self.streams if s.allow_msg_ttl]
            if not ttl_ok:
                raise ValueError(
                    "publish.msg_ttl_s needs a stream with allow_msg_ttl = true "
                    "(the server refuses the Nats-TTL header otherwise)"
                )

    @property
    def tls(self) -> bool:
        """TLS is on for a ``tls://`` server or when ``ca_file`` is set."""
        return self.ca_file is not None or any(u.startswith("tls://") for u in self.servers)

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        """Where a token or password goes: every server, unless TLS is on."""
        if (self.token or self.password) and not self.tls:  # a seed only signs a nonce
            for i, url in enumerate(self.servers):
                yield f"servers[{i}]", url
