"""Registers the utility adapters and built-in transforms through the plugin hooks."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.utility import transforms
from adapters.utility.file import FileAdapter, FileConfig
from adapters.utility.generator import GeneratorAdapter, GeneratorConfig
from broker.hookspecs import AdapterType, Transform, hookimpl


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType(
            "generator",
            GeneratorConfig,
            GeneratorAdapter,
            "emits envelopes of one kind at a rate (demos, benchmarks)",
        ),
        AdapterType("file", FileConfig, FileAdapter, "JSON Lines sink and source ('-' = stdio)"),
    ]


@hookimpl
def junction_transforms() -> Sequence[Transform]:
    return transforms.ALL
