"""The durable outbox: the store itself, and persist routes through a running bridge."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from broker._envelope import Envelope, Metric
from broker._outbox import DeadLetter, Outbox
from broker._runtime import Loaded, Runtime
from tests.conftest import peek, wait_until
from tests.support import core_plugin


def metric(i: int) -> Envelope:
    return Envelope(source="t", subject=f"m{i}", body=Metric(module="m", name="n", value=i))


def ledgers_balanced(rt: Runtime) -> dict[str, Any]:
    routes = rt.snapshot()["routes"]
    for name, r in routes.items():
        assert r["ledger"]["balanced"], (name, r["ledger"])
    return routes


# --- the store --------------------------------------------------------------------------


def test_rows_survive_reopening_in_order_with_their_ids(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    envs = [metric(i) for i in range(10)]
    seqs, refused = box.append("sink", "r", envs)
    assert refused == [] and seqs == sorted(seqs) and len(set(seqs)) == 10
    box.remove(seqs[:3])
    box.close()
    again = Outbox(tmp_path / "o.sqlite3")
    assert again.rows == 7
    assert again.keys() == {("sink", "r"): 7}
    rows = again.load("sink", "r", 0, 100)
    assert [r.envelope.id for r in rows] == [e.id for e in envs[3:]]
    assert [r.envelope.body.value for r in rows] == list(range(3, 10))  # type: ignore[union-attr]


def test_bounds_refuse_what_does_not_fit_and_count_bytes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_rows=4)
    seqs, refused = box.append("sink", "r", [metric(i) for i in range(6)])
    assert len(seqs) == 4 and [e.body.value for e in refused] == [4, 5]  # type: ignore[union-attr]
    assert box.bytes > 0
    box.remove(seqs)
    assert box.rows == 0 and box.bytes == 0
    small = Outbox(tmp_path / "b.sqlite3", max_bytes=300)
    seqs, refused = small.append("sink", "r", [metric(i) for i in range(6)])
    assert 0 < len(seqs) < 6 and len(refused) == 6 - len(seqs)


def test_dead_letters_are_summarised_replayed_and_purged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    seqs, _ = box.append("sink", "r", [metric(1), metric(2)])
    box.bury(
        [
            DeadLetter("r", "sink", "deliver", metric(1), "HTTP 400: bad", 1, seqs[0]),
            DeadLetter("r2", "", "route", metric(3), "ValueError: odd value 3"),
        ]
    )
    assert box.rows == 1  # the buried pending row is gone with it
    summary = {(r, why): n for r, _stage, why, n, _a, _b in box.dead_summary()}
    assert summary == {("r", "HTTP 400: bad"): 1, ("r2", "ValueError: odd value 3"): 1}
    rows = box.dead_rows(reason="odd")
    assert [r.route for r in rows] == ["r2"] and rows[0].envelope.subject == "m3"
    assert box.queue_replay(rows) == 1
    taken = box.take_replays(10)
    assert [(t.route, t.stage, t.envelope.id) for t in taken] == [("r2", "route", rows[0].env_id)]
    assert box.take_replays(10) == []
    assert box.purge(route="r") == 1 and box.dead_count() == 0


# --- persist routes in a running bridge ----------------------------------------------------


PERSIST = """
[adapters.src]
type = "burst"
count = {count}
batch = 50
[adapters.sink]
type = "collector"
gated = {gated}
{sink_extra}
[[routes]]
name = "r"
from = "src"
to = "sink"
overflow = "persist"
queue_size = 100
{route_extra}
"""


def persist_config(
    count: int = 1000, gated: bool = False, sink_extra: str = "", route_extra: str = ""
) -> str:
    return PERSIST.format(
        count=count,
        gated=str(gated).lower(),
        sink_extra=sink_extra,
        route_extra=route_extra,
    )


def test_a_stalled_target_spills_to_disk_and_drains_in_order(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(load_config(persist_config(count=1000, gated=True)))
    wait_until(lambda: rt.snapshot()["routes"]["r"]["ledger"]["received"] == 1000)
    routes = ledgers_balanced(rt)
    assert routes["r"]["ledger"]["pending"] == 1000
    assert routes["r"]["outbox"]["oldest_age_s"] is not None
    assert rt.outbox is not None and rt.outbox.rows == 1000
    # the window in memory stays bounded by queue_size while the rest waits on disk
    assert sum(rt.inlets["sink"].depths().values()) <= 100
    core_plugin.GATES.setdefault("sink", threading.Event()).set()
    wait_until(lambda: len(core_plugin.received("sink")) == 1000)
    values = [e.body.value for e in core_plugin.received("sink")]  # type: ignore[union-attr]
    assert values == [float(i) for i in range(1000)]
    wait_until(lambda: rt.outbox is not None and rt.outbox.rows == 0)
    routes = ledgers_balanced(rt)
    assert routes["r"]["ledger"]["delivered"] == 1000 and routes["r"]["ledger"]["pending"] == 0


def test_what_a_stopped_bridge_held_is_delivered_after_restart_with_its_ids(
    write_config: Callable[[str], str],
) -> None:
    from broker._runtime import load
    from tests.conftest import TEST_PLUGINS

    core_plugin.reset()
    path = write_config(persist_config(count=300, gated=True))
    first = Runtime(load(path, extra_plugins=TEST_PLUGINS))
    first.start()
    try:
        wait_until(lambda: first.snapshot()["routes"]["r"]["ledger"]["received"] == 300)
    finally:
        report = first.stop(grace_s=0.2)
    assert report.left == {} and sum(report.kept.values()) > 0
    assert core_plugin.received("sink") == []
    core_plugin.reset()
    core_plugin.PROGRESS["src"] = 300  # the source already sent everything
    second = Runtime(load(write_config(persist_config(count=300)), extra_plugins=TEST_PLUGINS))
    second.start()
    try:
        wait_until(lambda: len(core_plugin.received("sink")) == 300)
        got = core_plugin.received("sink")
        assert [e.body.value for e in got] == [float(i) for i in range(300)]  # type: ignore[union-attr]
        routes = ledgers_balanced(second)
        assert routes["r"]["recovered"] == 300
        wait_until(lambda: second.outbox is not None and second.outbox.rows == 0)
    finally:
        second.stop(grace_s=1)
    core_plugin.reset()


def test_a_crash_mid_batch_is_retried_and_a_refusal_is_dead_lettered(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    text = persist_config(
        count=200,
        sink_extra="crash_on_batches = [1]\nrefuse_odd = true",
        route_extra="redelivery = { attempts = 3, backoff_initial_s = 0.05 }",
    )
    rt = runtime_of(load_config(text))
    wait_until(lambda: len(core_plugin.received("sink")) == 100)
    wait_until(lambda: rt.snapshot()["routes"]["r"]["ledger"]["pending"] == 0)
    routes = ledgers_balanced(rt)
    assert routes["r"]["retries"] >= 1
    assert routes["r"]["ledger"]["dead_lettered"] == 100
    values = sorted(e.body.value for e in core_plugin.received("sink"))  # type: ignore[union-attr]
    assert values == [float(i) for i in range(0, 200, 2)]
    assert rt.outbox is not None
    summary = peek(rt, Outbox.dead_summary)
    assert [(r, n) for r, _stage, _why, n, _a, _b in summary] == [("r", 100)]
    assert "odd values are refused" in summary[0][2]


def test_retries_run_out_into_the_dead_letter_store(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    text = persist_config(
        count=50,
        sink_extra="crash_on_batches = [1, 2, 3, 4, 5, 6]",
        route_extra="redelivery = { attempts = 2, backoff_initial_s = 0.05 }",
    )
    rt = runtime_of(load_config(text))
    wait_until(lambda: rt.snapshot()["routes"]["r"]["ledger"]["dead_lettered"] > 0)
    wait_until(lambda: rt.snapshot()["routes"]["r"]["ledger"]["pending"] == 0, 15)
    routes = ledgers_balanced(rt)
    assert routes["r"]["ledger"]["received"] == 50
    assert rt.outbox is not None
    assert any("after 2 attempts" in why for _r, _s, why, *_ in peek(rt, Outbox.dead_summary))


def test_stale_envelopes_are_dead_lettered_not_delivered(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    text = persist_config(count=120, gated=True, route_extra="redelivery = { stale_after_s = 0.3 }")
    rt = runtime_of(load_config(text))
    wait_until(lambda: rt.snapshot()["routes"]["r"]["ledger"]["received"] == 120)
    import time

    time.sleep(0.5)
    core_plugin.GATES.setdefault("sink", threading.Event()).set()
    wait_until(lambda: rt.snapshot()["routes"]["r"]["ledger"]["pending"] == 0)
    routes = ledgers_balanced(rt)
    # the batch the gated sink already held was taken before it went stale; the rest is not
    assert routes["r"]["ledger"]["dead_lettered"] >= 20
    assert routes["r"]["ledger"]["delivered"] + routes["r"]["ledger"]["dead_lettered"] == 120
    assert rt.outbox is not None
    assert all("stale" in why for _r, _s, why, *_ in peek(rt, Outbox.dead_summary))


def test_a_full_outbox_refuses_and_counts_by_route(
    write_config: Callable[[str], str], runtime_of: Callable[[Loaded], Runtime], tmp_path: Path
) -> None:
    from broker._runtime import load
    from tests.conftest import TEST_PLUGINS

    text = f'[junction]\nstate_dir = "{tmp_path / "state"}"\n[junction.outbox]\nmax_rows = 150\n'
    path = write_config(text + persist_config(count=400, gated=True))
    rt = runtime_of(load(path, extra_plugins=TEST_PLUGINS))
    wait_until(lambda: rt.snapshot()["routes"]["r"]["ledger"]["received"] == 400)
    routes = ledgers_balanced(rt)
    assert routes["r"]["drop_reasons"] == {"outbox_full": 250}
    assert routes["r"]["ledger"]["pending"] == 150


def test_transform_failures_are_stored_and_replayable(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    text = """
    [adapters.src]
    type = "burst"
    count = 20
    [adapters.sink]
    type = "collector"
    [[routes]]
    name = "r"
    from = "src"
    to = "sink"
    transforms = ["explode_on_odd"]
    """
    rt = runtime_of(load_config(text))
    wait_until(lambda: len(core_plugin.received("sink")) == 10)
    wait_until(lambda: rt.outbox is not None and peek(rt, Outbox.dead_count) == 10)
    assert rt.outbox is not None
    rows = peek(rt, lambda b: b.dead_rows(route="r"))
    assert {r.stage for r in rows} == {"route"} and all("odd value" in r.reason for r in rows)
    ledgers_balanced(rt)
    # replaying runs the route again: still odd, so they come back as dead letters
    peek(rt, lambda b: b.queue_replay(rows))
    wait_until(lambda: rt.snapshot()["routes"]["r"]["dead_lettered"] == 20)
    wait_until(lambda: rt.outbox is not None and peek(rt, Outbox.dead_count) == 10)
    ledgers_balanced(rt)


@pytest.mark.parametrize("policy", ["drop_oldest", "block"])
def test_memory_routes_balance_their_ledger_too(
    policy: str, load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    text = f"""
    [adapters.src]
    type = "burst"
    count = 500
    [adapters.sink]
    type = "collector"
    delay_s = 0.01
    [[routes]]
    name = "r"
    from = "src"
    to = "sink"
    overflow = "{policy}"
    queue_size = 50
    """
    rt = runtime_of(load_config(text))
    in_flight = []
    for _ in range(20):  # sampled while it flows (the sink takes >= 10 batches of 50)
        in_flight.append(ledgers_balanced(rt)["r"]["ledger"]["pending"])
    assert any(n > 0 for n in in_flight), in_flight  # the samples did see it flowing
    wait_until(lambda: rt.snapshot()["routes"]["r"]["ledger"]["pending"] == 0)
    routes = ledgers_balanced(rt)
    assert routes["r"]["ledger"]["received"] == 500


# --- what the review of the first version found -------------------------------------------


ROUTER_TABLE = """
[junction]
state_dir = "{state}"
[adapters.src]
type = "burst"
[adapters.sink]
type = "collector"
[[routes]]
name = "r"
from = "src"
to = "sink"
overflow = "{overflow}"
queue_size = 10
"""


def bare_router(tmp_path: Path, overflow: str) -> tuple[Any, dict[str, Any], Outbox]:
    """A Router driven by direct calls on this thread (no actor), with a real outbox."""
    from broker._inlet import Inlet
    from broker._router import Router

    loaded = table_of(tmp_path, overflow)
    inlets = {"src": Inlet("src"), "sink": Inlet("sink")}
    box = Outbox(tmp_path / "o.sqlite3")
    router = Router(loaded.table, inlets, loaded.config.junction, outbox=box, persist_kinds={})
    return router, inlets, box


def from_src(i: int) -> Envelope:
    return Envelope(source="src", subject=f"m{i}", body=Metric(module="m", name="n", value=i))


def table_of(tmp_path: Path, overflow: str) -> Loaded:
    from broker._runtime import load
    from tests.conftest import TEST_PLUGINS

    path = tmp_path / f"{overflow}.toml"
    path.write_text(ROUTER_TABLE.format(state=tmp_path / "state", overflow=overflow))
    return load(str(path), extra_plugins=TEST_PLUGINS)


def test_a_route_switched_from_persist_to_memory_keeps_its_ledger(tmp_path: Path) -> None:
    from broker._messages import Delivered, Failed, Inbound
    from broker._router import Swap

    router, inlets, box = bare_router(tmp_path, "persist")
    try:
        router.on_receive(Inbound("src", [from_src(0)]))
        route, batch = inlets["sink"].take()
        router.on_receive(Delivered(route, "sink", len(batch), batch))
        memory = table_of(tmp_path, "drop_oldest")
        router.on_receive(Swap(memory.table, memory.config.junction))
        router.on_receive(Inbound("src", [from_src(1), from_src(2)]))
        ledger = router.snapshot()["routes"]["r"]["ledger"]
        assert (ledger["pending"], ledger["balanced"]) == (2, True), ledger
        route, batch = inlets["sink"].take()
        router.on_receive(Failed(route, "sink", batch, "HTTP 400: no", retry=False))
        ledger = router.snapshot()["routes"]["r"]["ledger"]
        assert (ledger["dead_lettered"], ledger["pending"], ledger["balanced"]) == (2, 0, True)
        assert box.dead_count() == 2
    finally:
        box.close()


def test_a_replay_whose_target_left_the_route_goes_back_to_the_dead_letters(
    tmp_path: Path,
) -> None:
    from broker._messages import Tick

    router, _inlets, box = bare_router(tmp_path, "persist")
    try:
        box.bury([DeadLetter("r", "gone", "deliver", metric(7), "HTTP 503")])
        assert box.queue_replay(box.dead_rows()) == 1
        assert box.queue_replay(box.dead_rows()) == 0  # already moved: never twice
        router.on_receive(Tick())
        (row,) = box.dead_rows()
        assert row.target == "gone" and "no longer in the routing table" in row.reason
        ledger = router.snapshot()["routes"]["r"]["ledger"]
        assert (ledger["received"], ledger["dead_lettered"], ledger["balanced"]) == (1, 1, True)
    finally:
        box.close()


@pytest.mark.parametrize(("overflow", "kept"), [("persist", 40), ("drop_oldest", 0)])
def test_what_a_stopping_adapter_never_acknowledged_is_kept_or_dead_lettered(
    overflow: str, kept: int, write_config: Callable[[str], str]
) -> None:
    from broker._runtime import load
    from tests.conftest import TEST_PLUGINS

    core_plugin.reset()
    text = persist_config(count=40, sink_extra="defer_all = true")
    text = text.replace('overflow = "persist"', f'overflow = "{overflow}"')
    rt = Runtime(load(write_config(text), extra_plugins=TEST_PLUGINS))
    rt.start()
    try:
        wait_until(lambda: len(core_plugin.received("sink")) == 40)
        ledger = rt.snapshot()["routes"]["r"]["ledger"]
        assert (ledger["pending"], ledger["delivered"], ledger["balanced"]) == (40, 0, True)
    finally:
        report = rt.stop(grace_s=0.3)
    ledger = report.snapshot["routes"]["r"]["ledger"]
    assert ledger["balanced"], ledger
    assert sum(report.kept.values()) == kept
    assert ledger["dead_lettered"] == 40 - kept  # a memory route: replayable dead letters
    if kept:  # a clean stop is not a failed attempt: the rows wait with attempts 0
        box = Outbox(Path(rt.loaded.config.junction.state_dir) / "outbox.sqlite3")
        try:
            rows = box.load("sink", "r", 0, 100)
            assert len(rows) == 40 and {r.attempts for r in rows} == {0}
        finally:
            box.close()
    core_plugin.reset()


def test_a_broken_outbox_does_not_stop_the_router_or_lose_envelopes(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    text = """
    [adapters.src]
    type = "probe"
    [adapters.sink]
    type = "collector"
    [[routes]]
    name = "r"
    from = "src"
    to = "sink"
    overflow = "persist"
    """
    rt = runtime_of(load_config(text))
    core_plugin.inject("src", [metric(i) for i in range(10)])
    wait_until(lambda: len(core_plugin.received("sink")) == 10)
    assert rt.outbox is not None
    rt.outbox._db.close()  # the file becomes unusable under the running bridge
    core_plugin.inject("src", [metric(i) for i in range(10, 20)])
    wait_until(lambda: len(core_plugin.received("sink")) == 20)  # held in memory, delivered
    assert rt.router is not None and rt.router.is_alive()
    snap = rt.snapshot()
    assert "error" in snap["outbox"]
    ledger = snap["routes"]["r"]["ledger"]
    assert (ledger["delivered"], ledger["balanced"]) == (20, True), ledger


def test_the_dead_letter_store_is_bounded_oldest_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_dead=5)
    try:
        for i in range(8):
            box.bury([DeadLetter("r", "", "route", metric(i), f"bad {i}")])
        kept = [r.envelope.body.value for r in box.dead_rows()]  # type: ignore[union-attr]
        assert kept == [3.0, 4.0, 5.0, 6.0, 7.0] and box.dead_pruned == 3
    finally:
        box.close()


def test_replays_stay_queued_until_handed_back(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    try:
        box.bury([DeadLetter("r", "", "route", metric(i), "x") for i in range(3)])
        box.queue_replay(box.dead_rows())
        first = box.next_replays(2)
        assert len(first) == 2 and box.replay_waiting() == 3  # a crash here loses nothing
        box.replayed([r.seq for r in first])
        assert [r.envelope.subject for r in box.next_replays(10)] == ["m2"]
    finally:
        box.close()


def test_one_staleness_rule_and_its_reasons() -> None:
    from broker._staleness import BEFORE_SENDING, IN_THE_OUTBOX, is_stale, stale_reason

    env = metric(0)
    assert not is_stale(env, 1e12)  # no deadline: never stale
    due = msgspec.structs.replace(env, deadline=100.0)
    assert not is_stale(due, 99.9) and is_stale(due, 100.0) and is_stale(due, 100.1)
    # the texts each stage used before there was one rule
    assert stale_reason(BEFORE_SENDING) == "stale: its deadline passed before it could be sent"
    assert stale_reason(IN_THE_OUTBOX) == "stale: its deadline passed in the outbox"
    assert stale_reason("(sink: down)") == "stale: its deadline passed (sink: down)"


def test_queue_keys_name_the_queues_as_before() -> None:
    from broker._queue_key import QueueKey

    assert QueueKey("r").name == "r" and QueueKey("r", reply=True).name == "r::reply"
    for name in ("r", "r::reply", "a::b", "a::b::reply", "reply", "::reply"):
        assert QueueKey.parse(name).name == name
    assert QueueKey.parse("r::reply") == QueueKey("r", reply=True) != QueueKey("r")
    assert QueueKey.parse("a::b") == QueueKey("a::b")


def test_rows_written_by_the_string_keyed_router_still_load(tmp_path: Path) -> None:
    """Outbox rows name their queue by text ("route", "route::reply"): rows written before
    queues had typed keys are adopted, delivered and counted on the right route."""
    import sqlite3

    from broker._envelope import encode
    from broker._inlet import Inlet
    from broker._messages import Delivered, Tick
    from broker._router import Router

    loaded = table_of(tmp_path, "persist")
    path = tmp_path / "o.sqlite3"
    Outbox(path).close()  # the schema
    request, answer = from_src(0), from_src(1)
    with sqlite3.connect(path) as db:  # rows as the old code wrote them
        db.executemany(
            "INSERT INTO pending (target, route, env_id, created, size, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("sink", queue, env.id, 1.0, len(encode(env)), encode(env))
                for queue, env in (("r", request), ("r::reply", answer))
            ],
        )
    box = Outbox(path)
    inlets = {"src": Inlet("src"), "sink": Inlet("sink")}
    router = Router(loaded.table, inlets, loaded.config.junction, outbox=box, persist_kinds={})
    try:
        snap = router.snapshot()
        assert snap["persist_queues"] == {"sink/r": 1, "sink/r::reply": 1}
        assert snap["routes"]["r"]["recovered"] == 2
        router.on_receive(Tick())  # loads the spilled windows
        taken = dict(t for t in (inlets["sink"].take(), inlets["sink"].take()) if t)
        assert {q: [e.id for e in envs] for q, envs in taken.items()} == {
            "r": [request.id],
            "r::reply": [answer.id],
        }
        for queue, envs in taken.items():
            router.on_receive(Delivered(queue, "sink", len(envs), envs))
        route = router.snapshot()["routes"]["r"]
        assert (route["delivered"], route["replies"]) == (2, 1)  # the reply handed back too
        assert route["ledger"]["pending"] == 0 and route["ledger"]["balanced"], route["ledger"]
        assert box.rows == 0 and box.keys() == {}
    finally:
        box.close()


def test_dead_rows_by_seq_takes_any_number_of_seqs(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    try:
        box.bury(
            [
                DeadLetter("a" if i % 2 else "b", "sink", "deliver", metric(i), f"why {i}")
                for i in range(1200)  # more seqs than one IN (...) query takes
            ]
        )
        seqs = [r.seq for r in box.dead_rows(limit=-1)]
        assert [r.seq for r in box.dead_rows_by_seq(seqs)] == seqs
        odd = box.dead_rows_by_seq(seqs, route="a")
        assert len(odd) == 600 and {r.route for r in odd} == {"a"}
        assert [r.reason for r in box.dead_rows_by_seq(seqs, reason="why 119")] == [
            "why 119",
            *(f"why {n}" for n in range(1190, 1200)),
        ]
    finally:
        box.close()
