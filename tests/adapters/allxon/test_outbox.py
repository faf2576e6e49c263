"""The outbox (pure): frames under 2 KB signed, states coalesce, metric floods drop the oldest
samples first and keep every name's latest value, losses counted, unsent frames put back."""

from __future__ import annotations

import copy
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.allxon._declared import AlarmView, Declared, Rejected
from adapters.allxon._intake import AlarmNotEnabled, data_item
from adapters.allxon._outbox import (
    _EPOCH_PLACEHOLDER,
    Frame,
    Outbox,
    build_message,
    metric_item,
    metric_value,
    state_item,
)
from adapters.allxon.cards import AlarmCard, MetricCard, Module, StateCard
from adapters.allxon.codec import (
    MAX_FRAME_BYTES,
    AlertItem,
    EventItem,
    MetricItem,
    PluginMetric,
    PluginState,
    StateItem,
    signed_size,
)
from broker._envelope import Alert, Envelope, Metric, State

GUID = "5b45b555-94f3-4a20-b78b-1f3288f9904b"
DECLARED = Declared(
    [
        Module(
            module_name="room",
            states=[
                StateCard(name="power", display_type="string"),
                StateCard(name="table", display_type="table"),
            ],
            metrics=[MetricCard(name="temp", display_type="temperature")],
            alarms=[AlarmCard(name="hot")],
        )
    ]
)


def metric(name: str, value: float, t: str = "1700000000") -> MetricItem:
    return MetricItem(name=name, value=metric_value(value), time=t)


def test_metric_values_are_numeric_strings_with_two_decimals() -> None:
    assert [metric_value(v) for v in (21.0, 21.5, 21.456, -0.001, 1e12)] == [
        "21",
        "21.5",
        "21.46",
        "0",
        "1000000000000",
    ]
    for bad in (float("nan"), float("inf"), 1e13):
        with pytest.raises(Rejected):
            metric_value(bad)


def test_every_frame_fits_2kb_signed_and_carries_as_many_items_as_fit() -> None:
    box = Outbox(GUID)
    for i in range(500):
        box.add("metric", "room", metric(f"metric_{i}", i + 0.25))
    frames = box.take(100, "1700000000")
    assert sum(len(f.entries) for f in frames) == 500 and len(box) == 0
    sizes = [signed_size(f.message) for f in frames]
    assert max(sizes) <= MAX_FRAME_BYTES
    assert min(sizes[:-1]) > MAX_FRAME_BYTES - 60  # full frames, not one per sample
    first = frames[0].message
    assert isinstance(first, PluginMetric) and first.params.metrics[0].name == "metric_0"


def test_states_coalesce_to_the_latest_value_per_name() -> None:
    box = Outbox(GUID)
    for i in range(10):
        box.add("state", "room", StateItem(name="power", value=f"v{i}"))
    box.add("state", "hall", StateItem(name="power", value="on"))
    (room, hall) = box.take(5, "1700000000")
    assert isinstance(room.message, PluginState) and isinstance(hall.message, PluginState)
    assert [s.value for s in room.message.params.states] == ["v9"]
    assert hall.message.params.module_name == "hall"
    assert box.coalesced_states == 9


def test_a_flood_with_too_few_calls_keeps_the_latest_of_every_name() -> None:
    box = Outbox(GUID)
    for i in range(3000):
        box.add("metric", "room", metric(f"m{i % 40}", float(i)))
    (frame,) = box.take(1, "1700000000")  # one call for 3000 samples: coalesce first
    assert box.dropped["metric superseded"] == 3000 - 40
    sent = {e.item.name: e.item.value for e in frame.entries}
    left = {e.item.name: e.item.value for e in box.metrics}
    assert len(sent) + len(left) == 40 and not set(sent) & set(left)
    assert {**sent, **left} == {f"m{k}": str(2960 + k) for k in range(40)}


def reference_take(box: Outbox, room: int) -> list[Frame]:
    """What ``take(room)`` gives for metrics, done the long way: pack every sample, and
    when that needs more frames than ``room``, keep each name's newest and pack again."""
    frames = box._frames("metric", list(box.metrics), "1700000000", 10**9)
    if len(frames) > room:
        newest = {(e.module, e.item.name): e.seq for e in box.metrics}
        kept = [e for e in box.metrics if newest[(e.module, e.item.name)] == e.seq]
        frames = box._frames("metric", kept, "1700000000", 10**9)
    return frames[:room]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["room", "hall"]), st.integers(0, 6)),
        st.tuples(st.just("take"), st.integers(1, 3), st.booleans()),
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_taking_a_few_frames_of_a_backlog_is_taking_the_first_of_all_of_them(
    ops: list[tuple[str, object, object]],
) -> None:
    box = Outbox(GUID, max_metrics=120, limit=400)
    value = 0.0
    for op, a, b in ops:
        if op == "add":
            value += 1
            box.add("metric", str(a), metric(f"m{b}", value))
        else:
            assert isinstance(a, int)
            expected = reference_take(copy.deepcopy(box), a)
            frames = box.take(a, "1700000000")
            assert [[e.seq for e in f.entries] for f in frames] == [
                [e.seq for e in f.entries] for f in expected
            ]
            if b:  # the link dropped: they come back
                box.put_back(frames)
        # the newest sample of each name is tracked exactly
        newest = {(e.module, e.item.name): e for e in box.metrics}
        assert box._newest == newest
        assert list(box.metrics) == sorted(box.metrics, key=lambda e: e.seq)
    assert isinstance(box.metrics, deque)


def test_the_metric_bound_drops_the_oldest_samples_first_and_counts_them() -> None:
    box = Outbox(GUID, max_metrics=100)
    for i in range(1000):  # 1000 distinct names: coalescing cannot help
        box.add("metric", "room", metric(f"n{i}", float(i)))
    assert len(box.metrics) <= 100
    assert box.dropped["metric buffer full"] == 1000 - len(box.metrics)
    assert box.metrics[-1].item.name == "n999"  # the newest survive
    names = [e.item.name for e in box.metrics]
    assert names == sorted(names, key=lambda n: int(n[1:]))


def test_unsent_frames_go_back_in_order_and_a_newer_state_wins() -> None:
    box = Outbox(GUID)
    for i in range(5):
        box.add("metric", "room", metric(f"m{i}", float(i)))
    box.add("state", "room", StateItem(name="power", value="old"))
    frames = box.take(5, "1700000000")
    box.add("metric", "room", metric("late", 9.0))
    box.add("state", "room", StateItem(name="power", value="new"))
    box.put_back(frames)
    assert [e.item.name for e in box.metrics] == ["m0", "m1", "m2", "m3", "m4", "late"]
    assert box.states[("room", "power")].item.value == "new"


def test_events_and_alerts_are_bounded_with_counted_drops() -> None:
    box = Outbox(GUID, max_events=3, max_alerts=2)
    for i in range(5):
        box.add("event", "room", EventItem(name="door", value=str(i)))
        box.add("alert", "room", AlertItem(name="hot", action="trigger", time=str(i)))
    assert [e.item.value for e in box.events] == ["2", "3", "4"]
    assert box.dropped == {"event buffer full": 2, "alert buffer full": 3}


def test_items_follow_the_declaration() -> None:
    ts = 1700000000.5
    item = state_item(State(module="room", name="power", value=True), ts, DECLARED, False)
    assert (item.value, item.time) == ("true", "1700000000")
    table = [{"port": 1, "up": True}]
    assert state_item(State(module="room", name="table", value=table), ts, DECLARED, False).value
    with pytest.raises(Rejected, match="table card"):
        state_item(State(module="room", name="table", value="x"), ts, DECLARED, False)
    with pytest.raises(Rejected, match="not declared"):
        metric_item(Metric(module="room", name="rpm", value=1.0), ts, DECLARED, False)
    assert metric_item(Metric(module="room", name="rpm", value=1.0), ts, DECLARED, True)
    with pytest.raises(Rejected, match="at most 512"):
        state_item(State(module="room", name="power", value="x" * 513), ts, DECLARED, False)


def test_an_item_that_can_never_fit_one_message_is_rejected_with_its_size() -> None:
    box = Outbox(GUID)
    big = Envelope(source="t", body=State(module="room", name="free", value=[{"k": "v" * 300}] * 8))
    with pytest.raises(Rejected, match=r"needs \d+ bytes signed even alone"):
        data_item(big, DECLARED, AlarmView(), box, allow_undeclared=True)


def test_alerts_need_an_enabled_alarm() -> None:
    alarms = AlarmView()
    env = Envelope(source="t", body=Alert(module="room", alarm="hot", action="trigger"))
    with pytest.raises(AlarmNotEnabled):
        data_item(env, DECLARED, alarms, Outbox(GUID), allow_undeclared=False)
    alarms.enabled.add(("room", "hot"))
    kind, module, item = data_item(env, DECLARED, alarms, Outbox(GUID), allow_undeclared=False)
    assert (kind, module, item.name) == ("alert", "room", "hot")
    ghost = Envelope(source="t", body=Alert(module="room", alarm="ghost", action="resolve"))
    with pytest.raises(Rejected, match="not declared"):
        data_item(ghost, DECLARED, alarms, Outbox(GUID), allow_undeclared=True)


@pytest.mark.parametrize(
    "kind, item",
    [
        ("metric", MetricItem(name="temp", value="21.5", time="1700000000")),
        ("state", StateItem(name="table", value=[{"k": "ä" * 40}], time="1700000000")),
        ("event", EventItem(name="door", value='open "front"', time="1700000000")),
        ("alert", AlertItem(name="hot", action="trigger", message="over 30", time="1700000000")),
    ],
)
def test_the_size_of_one_item_alone_is_that_of_its_one_item_message(
    kind: str, item: object
) -> None:
    box = Outbox(GUID)
    for module in ("room", "other-module"):  # the second call per (kind, module) is the cached one
        for _ in range(2):
            expected = signed_size(build_message(kind, GUID, module, _EPOCH_PLACEHOLDER, [item]))
            assert box.signed_size_alone(kind, module, item) == expected
