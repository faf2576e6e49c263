"""Registers the ``alphax`` adapter type."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.alphax.actor import AlphaXAdapter
from adapters.alphax.config import AlphaXConfig
from broker.hookspecs import AdapterType, hookimpl


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType(
            "alphax",
            AlphaXConfig,
            AlphaXAdapter,
            "AlphaX Conduit: write channels over HTTP/MQTT/UDP/TCP, poll them back",
            persist_kinds=frozenset({"channel_write"}),
        ),
    ]
