"""Registers the ``nats`` adapter type."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.nats.actor import NatsAdapter
from adapters.nats.config import NatsConfig
from broker.hookspecs import AdapterType, hookimpl


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType(
            "nats",
            NatsConfig,
            NatsAdapter,
            "NATS JetStream: publish envelopes (PubAck = delivered), consume a durable pull "
            "consumer (acked once settled)",
        ),
    ]
