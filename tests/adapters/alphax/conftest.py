"""Fixtures for the AlphaX adapter tests: a real mosquitto broker, config text and loading."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.alphax.config import HttpWrite, MqttWrite, TcpWrite, UdpWrite
from broker._runtime import Loaded, load
from tests.support import alphax_plugin
from tests.support.mosquitto import MosquittoBroker, run_mosquitto

PLUGINS = ("tests.support.core_plugin", "tests.support.alphax_plugin")
TOKEN = "tok-9f3ab1c77e"  # what the adapter under test uses; the tests grep logs for it


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A mosquitto broker on a free loopback port (skips if the binary is missing)."""
    with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def load_alphax(tmp_path: Path) -> Iterator[Callable[[str], Loaded]]:
    """Load a config (a ``[junction]`` table with a temp state dir and a ``dlq`` dead-letter
    collector is prepended) with the core and AlphaX test plugins registered."""
    alphax_plugin.reset()
    count = [0]

    def load_text(text: str) -> Loaded:
        count[0] += 1
        path = tmp_path / f"junction-{count[0]}.toml"
        head = (
            f'[junction]\nstate_dir = "{tmp_path / "state"}"\nrestart_backoff_s = 0.05\n'
            'dead_letter = "dlq"\n[adapters.dlq]\ntype = "collector"\n'
        )
        path.write_text(head + text, encoding="utf-8")
        return load(str(path), extra_plugins=PLUGINS)

    yield load_text
    alphax_plugin.reset()


def toml_value(value: Any) -> str:
    """A Python value as a TOML value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def table(name: str, **fields: Any) -> str:
    """``[adapters.<name>]`` with ``fields``."""
    lines = [f"[adapters.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


#: Keys of the ``[adapters.<name>.write]`` table, by transport (the rest stay in the adapter's),
#: read from the config structs themselves.
WRITE_KEYS = {
    cls.__struct_config__.tag: {f.encode_name for f in msgspec.structs.fields(cls)}
    for cls in (HttpWrite, MqttWrite, UdpWrite, TcpWrite)
}


def alphax_table(name: str, transport: str = "http", **fields: Any) -> str:
    """``[adapters.<name>]`` of an AlphaX adapter: the ``transport``'s keys among ``fields``
    go into its ``write`` table, the others stay at the top."""
    keys = WRITE_KEYS[transport]
    write = {"transport": transport} | {k: v for k, v in fields.items() if k in keys}
    return table(name, **{k: v for k, v in fields.items() if k not in keys}, write=write)


def route(name: str, source: str, target: str | list[str], **fields: Any) -> str:
    """A ``[[routes]]`` entry (``overflow = "block"`` unless given: tests must not drop)."""
    fields.setdefault("overflow", "block")
    lines = [
        "[[routes]]",
        f"name = {toml_value(name)}",
        f"from = {toml_value(source)}",
        f"to = {toml_value(target)}",
    ] + [f"{k} = {toml_value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"
