"""The ``placeos`` config: credentials, URL and bounds reported with their TOML paths."""

from __future__ import annotations

import pytest

from adapters.placeos.config import PlaceOSConfig
from broker._config import loads
from broker._errors import ConfigError, ConfigProblem

TYPES = {"placeos": PlaceOSConfig}


def text(body: str = "") -> str:
    return (
        '[adapters.pos]\ntype = "placeos"\nurl = "wss://placeos.example.com/control"\n'
        f'api_key = "key-1234"\n{body}\n'
    )


def problems_of(source: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        loads(source, "junction.toml", TYPES)
    return info.value.problems


def test_defaults_load() -> None:
    cfg = loads(text(), "junction.toml", TYPES).adapters["pos"]
    assert isinstance(cfg, PlaceOSConfig) and cfg.ping_interval_s == 15.0


POSITIVE = (
    "connect_timeout_s",
    "disconnect_timeout_s",
    "ping_interval_s",
    "exec_timeout_s",
    "backoff_initial_s",
    "backoff_max_s",
    "auth_backoff_s",
)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        *[(key, value, "must be > 0") for key in POSITIVE for value in ("0", "-2")],
        ("dead_after_s", "0", "must be > 0"),
        ("max_message_bytes", "0", "must be >= 1"),
        ("emit_batch", "0", "must be >= 1"),
    ],
)
def test_each_bound_names_file_key_and_value(key: str, value: str, words: str) -> None:
    (problem,) = problems_of(text(f"{key} = {value}"))
    assert str(problem) == f"junction.toml: adapters.pos.{key}: {words} (got {value})"


@pytest.mark.parametrize("table", ["bindings", "debug"])
def test_a_module_index_starts_at_one(table: str) -> None:
    extra = ', name = "power"' if table == "bindings" else ""
    body = f'{table} = [{{ sys = "s", mod = "m", index = 0{extra} }}]'
    (problem,) = problems_of(text(body))
    assert str(problem) == f"junction.toml: adapters.pos.{table}[0].index: must be >= 1 (got 0)"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("ping_interval_s = 30\ndead_after_s = 30", "must be longer than ping_interval_s"),
        ('bearer_token = "tok-1234"', "only one of api_key and bearer_token"),
    ],
)
def test_cross_checks_stay(body: str, words: str) -> None:
    (problem,) = problems_of(text(body))
    assert words in str(problem)
