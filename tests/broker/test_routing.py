"""Matching (every predicate form), the index, mapping and transform chains: pure code."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broker._envelope import ChannelWrite, Envelope, Metric, State, StatusChange
from broker._errors import TransformError
from broker._explain import explain, render
from broker._mapping import MappingError
from broker._routing import run_route
from broker._runtime import Loaded

ADAPTERS = """
[adapters.src]
type = "burst"
[adapters.other]
type = "burst"
[adapters.sink]
type = "collector"
"""


def table(load_config: Callable[[str], Loaded], routes: str) -> Loaded:
    return load_config(ADAPTERS + routes)


def metric(
    value: object, name: str = "t", source: str = "src", subject: str = "room-1/t"
) -> Envelope:
    return Envelope(
        source=source, subject=subject, body=Metric(module="room-1", name=name, value=value)
    )  # type: ignore[arg-type]


def names(loaded: Loaded, env: Envelope) -> list[str]:
    return [r.name for r in loaded.table.match(env)]


def test_source_and_kind_select(load_config: Callable[[str], Loaded]) -> None:
    loaded = table(
        load_config,
        """
[[routes]]
name = "metrics"
from = "src"
kind = "metric"
to = "sink"
[[routes]]
name = "any-kind"
from = ["src", "other"]
to = "sink"
""",
    )
    assert names(loaded, metric(1.0)) == ["metrics", "any-kind"]
    assert names(loaded, metric(1.0, source="other")) == ["any-kind"]
    state = Envelope(source="src", body=State(module="m", name="n", value=1))
    assert names(loaded, state) == ["any-kind"]
    assert names(loaded, metric(1.0, source="stranger")) == []


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ('"body.name" = "t"', 1.0, True),
        ('"body.name" = "u"', 1.0, False),
        ('subject = "room-*/t"', 1.0, True),
        ('subject = "hall-?/t"', 1.0, False),
        ('"body.value" = { gt = 20 }', 20.5, True),
        ('"body.value" = { gt = 20 }', 20, False),
        ('"body.value" = { ge = 20 }', 20, True),
        ('"body.value" = { lt = 0 }', -1, True),
        ('"body.value" = { le = 0 }', 0.5, False),
        ('"body.value" = { gt = 10, lt = 30 }', 25, True),
        ('"body.value" = { gt = 10, lt = 30 }', 35, False),
        ('"body.value" = { ne = 3 }', 3, False),
        ('"body.value" = { in = [1, 2, 3] }', 2, True),
        ('"body.value" = { in = [1, 2, 3] }', 4, False),
        ('"body.name" = { glob = "[tu]" }', 1, True),
        ('"body.time" = { exists = true }', 1, True),
        ('"headers.x" = { exists = false }', 1, True),
        ('"headers.x" = { exists = true }', 1, False),
        ('"body.value" = 1', 1.0, True),
    ],
)
def test_predicate_forms(
    load_config: Callable[[str], Loaded], rule: str, value: object, expected: bool
) -> None:
    loaded = table(
        load_config, f'[[routes]]\nname = "r"\nfrom = "src"\nto = "sink"\nmatch = {{ {rule} }}\n'
    )
    assert (names(loaded, metric(value)) == ["r"]) is expected


def test_comparisons_never_match_non_numbers_and_true_is_not_one(
    load_config: Callable[[str], Loaded],
) -> None:
    loaded = table(
        load_config,
        """
[[routes]]
name = "hot"
from = "src"
to = "sink"
match = { "body.value" = { gt = 0 } }
[[routes]]
name = "one"
from = "src"
to = "sink"
match = { "body.value" = 1 }
""",
    )
    text = Envelope(source="src", body=StatusChange(system="s", module="m", name="n", value="25"))
    flag = Envelope(source="src", body=StatusChange(system="s", module="m", name="n", value=True))
    assert names(loaded, text) == []
    assert names(loaded, flag) == []


def test_thousand_routes_indexed_by_equality(load_config: Callable[[str], Loaded]) -> None:
    routes = "".join(
        f'[[routes]]\nname = "r{i}"\nfrom = "src"\nkind = "metric"\nto = "sink"\n'
        f'match = {{ "body.name" = "sensor-{i}" }}\n'
        for i in range(1000)
    )
    routes += '[[routes]]\nname = "all-hot"\nfrom = "src"\nto = "sink"\nmatch = { "body.value" = { gt = 50 } }\n'
    loaded = table(load_config, routes)
    assert names(loaded, metric(1.0, name="sensor-737")) == ["r737"]
    assert names(loaded, metric(60.0, name="sensor-3")) == ["r3", "all-hot"]
    assert names(loaded, metric(60.0, name="nobody")) == ["all-hot"]
    bucket = loaded.table._buckets[("src", "metric")]
    assert bucket.key_path == "body.name" and len(bucket.by_value) == 1000


def test_mapping_templates_scaling_and_types(load_config: Callable[[str], Loaded]) -> None:
    loaded = table(
        load_config,
        """
[[routes]]
name = "r"
from = "src"
kind = "metric"
to = "sink"
map = { kind = "channel_write", subject = "{body.module}/{body.name:>3}", network_id = "4106", channel = 2, value = { from = "body.value", scale = 10, offset = 1, round = 1 }, timestamp = "{ts}" }
""",
    )
    env = metric(2.345)
    (out,) = run_route(loaded.table.routes[0], env)
    assert out.body == ChannelWrite(network_id="4106", channel=2, value=24.5, timestamp=env.ts)
    assert out.subject == "room-1/  t"
    assert out.id == env.id and out.source == "src"


def test_mapping_same_kind_overrides_fields(load_config: Callable[[str], Loaded]) -> None:
    loaded = table(
        load_config,
        '[[routes]]\nname = "r"\nfrom = "src"\nkind = "metric"\nto = "sink"\n'
        'map = { name = "{body.name}_k", value = { from = "body.value", offset = 273.15 } }\n',
    )
    (out,) = run_route(loaded.table.routes[0], metric(20.0))
    assert out.body == Metric(module="room-1", name="t_k", value=293.15)


def test_mapping_errors_name_the_field(load_config: Callable[[str], Loaded]) -> None:
    loaded = table(
        load_config,
        '[[routes]]\nname = "r"\nfrom = "src"\nto = "sink"\n'
        'map = { kind = "channel_write", network_id = "1", channel = "{body.name}", value = 1 }\n',
    )
    with pytest.raises(MappingError, match=r"channel_write.*channel"):
        run_route(loaded.table.routes[0], metric(1.0))
    loaded = table(
        load_config,
        '[[routes]]\nname = "r"\nfrom = "src"\nto = "sink"\n'
        'map = { kind = "event", module = "m", name = "{headers.who}" }\n',
    )
    with pytest.raises(MappingError, match=r"headers\.who is not present"):
        run_route(loaded.table.routes[0], metric(1.0))


def test_transform_chain_filters_and_raises(load_config: Callable[[str], Loaded]) -> None:
    loaded = table(
        load_config,
        '[[routes]]\nname = "r"\nfrom = "src"\nto = "sink"\n'
        'transforms = ["explode_on_odd", "celsius_to_kelvin", '
        '{ name = "on_change", options = { min_delta = 0.5 } }]\n',
    )
    route = loaded.table.routes[0]
    (out,) = run_route(route, metric(20.0))
    assert out.body.value == 293.15  # type: ignore[union-attr]
    assert run_route(route, metric(20.0)) == []  # unchanged: filtered
    assert len(run_route(route, metric(22.0))) == 1
    with pytest.raises(TransformError) as info:
        run_route(route, metric(3.0))
    assert info.value.route == "r" and info.value.transform == "explode_on_odd"
    assert "odd value 3.0" in str(info.value)


def test_explain_shows_each_step(load_config: Callable[[str], Loaded]) -> None:
    loaded = table(
        load_config,
        """
[[routes]]
name = "hot"
from = "src"
to = "sink"
match = { "body.value" = { gt = 25 } }
map = { kind = "alert", module = "room-1", alarm = "overheat", action = "trigger", message = "{body.value} C" }
[[routes]]
name = "cold"
from = "src"
to = "sink"
match = { "body.value" = { lt = 5 } }
""",
    )
    verdicts = explain(loaded.table, metric(30.0))
    assert [v.matched for v in verdicts] == [True, False]
    text = render(verdicts)
    assert "1 of 2 routes match" in text
    assert '"alarm":"overheat"' in text and '"message":"30.0 C"' in text
    assert "FAIL body.value {'lt': 5}" in text


def test_match_any_is_an_or_of_tables(load_config: Callable[[str], Loaded]) -> None:
    loaded = table(
        load_config,
        """
[[routes]]
name = "r"
from = ["src", "other"]
to = "sink"
match = { subject = "room-*" }
match_any = [{ "body.name" = "t" }, { "body.value" = { gt = 100 } }]
""",
    )
    assert names(loaded, metric(1.0)) == ["r"]
    assert names(loaded, metric(1.0, name="u")) == []
    assert names(loaded, metric(101.0, name="u")) == ["r"]
    assert names(loaded, metric(101.0, name="u", subject="hall/u")) == []


def test_mapping_lists_compile_each_item(load_config: Callable[[str], Loaded]) -> None:
    loaded = table(
        load_config,
        '[[routes]]\nname = "r"\nfrom = "src"\nto = "sink"\n'
        'map = { kind = "exec_request", system = "sys-1", module = "Display", '
        'method = "level", args = ["{body.value}", "{body.name}!", 3] }\n',
    )
    (out,) = run_route(loaded.table.routes[0], metric(7.5))
    assert out.body.args == [7.5, "t!", 3]  # type: ignore[union-attr]


def test_overflow_is_an_enum_decoded_from_the_toml_values(
    load_config: Callable[[str], Loaded],
) -> None:
    from typing import get_args

    from broker._config import OverflowPolicy
    from broker._overflow import Overflow
    from broker._routing import resolve_policies

    # what a route may write is every policy but auto (auto is leaving it out)
    assert set(get_args(OverflowPolicy)) == {p.value for p in Overflow} - {"auto"}
    loaded = table(
        load_config,
        '[[routes]]\nname = "a"\nfrom = "src"\nto = "sink"\noverflow = "drop_newest"\n'
        '[[routes]]\nname = "b"\nfrom = "src"\nto = "sink"\n',
    )
    a, b = loaded.table.routes
    assert a.overflow is Overflow.DROP_NEWEST and b.overflow is Overflow.AUTO
    policies = resolve_policies(loaded.table, {"sink": frozenset({"metric"})}, durable=False)
    assert policies == {("a", "sink"): Overflow.DROP_NEWEST, ("b", "sink"): Overflow.BLOCK}
    assert all(type(p) is Overflow for p in policies.values())
    # a str enum: still equal to its text where text is used (the inlets)
    assert Overflow.DROP_NEWEST == "drop_newest" and f"{Overflow.PERSIST}" == "persist"
