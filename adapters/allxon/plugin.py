"""Registers the ``allxon`` adapter type."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.allxon.actor import PERSIST_KINDS, AllxonAdapter
from adapters.allxon.config import AllxonConfig
from broker.hookspecs import AdapterType, hookimpl


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType(
            "allxon",
            AllxonConfig,
            AllxonAdapter,
            "Allxon Octo plugin: signed cards, states, metrics, alerts and Portal commands",
            persist_kinds=PERSIST_KINDS,
        ),
    ]
