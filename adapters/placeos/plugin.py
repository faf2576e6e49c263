"""Registers the ``placeos`` adapter type."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.placeos.actor import PlaceOSAdapter
from adapters.placeos.config import PlaceOSConfig
from broker.hookspecs import AdapterType, hookimpl


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType(
            "placeos",
            PlaceOSConfig,
            PlaceOSAdapter,
            "PlaceOS real-time WebSocket: bind status variables, exec driver methods",
        ),
    ]
