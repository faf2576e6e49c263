"""The running core: router, adapters, supervision, overflow, request/reply, shutdown.

These start real actors and trio loops (no mocks); sources and sinks are the test
plugin's adapters, registered through the real hooks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from broker._envelope import Envelope, Metric
from broker._runtime import Loaded, Runtime
from tests.conftest import wait_until
from tests.support import core_plugin
from tests.support.core_plugin import received


def routes_of(rt: Runtime) -> dict[str, Any]:
    return rt.snapshot()["routes"]


def test_envelopes_flow_through_mapping_to_target(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "burst"
count = 300
[adapters.sink]
type = "collector"
[[routes]]
name = "to-channels"
from = "src"
kind = "metric"
to = "sink"
map = { kind = "channel_write", network_id = "4106", channel = 1, value = "{body.value}" }
""")
    )
    wait_until(lambda: len(received("sink")) == 300, what="300 envelopes at the sink")
    got = received("sink")
    assert [e.body.value for e in got] == [float(i) for i in range(300)]  # type: ignore[union-attr]
    assert {e.kind for e in got} == {"channel_write"}
    wait_until(lambda: routes_of(rt)["to-channels"]["delivered"] == 300)
    c = routes_of(rt)["to-channels"]
    assert c["matched"] == 300 and c["dead_lettered"] == 0 and c["dropped"] == 0


def test_raising_transform_is_dead_lettered_and_router_keeps_going(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[junction]
dead_letter = "dlq"
[adapters.src]
type = "burst"
count = 20
[adapters.sink]
type = "collector"
[adapters.dlq]
type = "collector"
[[routes]]
name = "fragile"
from = "src"
to = "sink"
transforms = ["explode_on_odd"]
[[routes]]
name = "sturdy"
from = "src"
to = "dlq"
match = { "body.value" = { ge = 100 } }
""")
    )
    wait_until(lambda: len(received("sink")) == 10 and len(received("dlq")) == 10)
    assert all(e.body.value % 2 == 0 for e in received("sink"))  # type: ignore[union-attr]
    dead = received("dlq")
    assert all(e.headers["x-dead-letter-route"] == "fragile" for e in dead)
    assert all("odd value" in e.headers["x-dead-letter-reason"] for e in dead)
    c = routes_of(rt)["fragile"]
    assert c["matched"] == 20 and c["dead_lettered"] == 10
    assert rt.router is not None and rt.router.is_alive()
    observed = core_plugin.OBSERVED["dropped"]
    assert len(observed) == 10 and all("dead_letter" in str(o[2]) for o in observed)


def _overflow_config(policy: str, block_timeout: float = 5.0, own_thread: bool = False) -> str:
    return f"""
[junction]
block_timeout_s = {block_timeout}
[adapters.src]
type = "burst"
count = 100
batch = 100
[adapters.sink]
type = "collector"
gated = true
own_thread = {str(own_thread).lower()}
[[routes]]
name = "r"
from = "src"
to = "sink"
overflow = "{policy}"
queue_size = 10
"""


def _open_gate(name: str) -> None:
    core_plugin.GATES.setdefault(name, threading.Event()).set()


def _ledger_balances(rt: Runtime, total: int) -> dict[str, Any]:
    def balanced() -> bool:
        c = routes_of(rt)["r"]
        return c["delivered"] + c["dropped"] == total

    wait_until(balanced, what="delivered + dropped == offered")
    return dict(routes_of(rt)["r"])


def test_overflow_drop_newest_counts_and_keeps_the_first(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(load_config(_overflow_config("drop_newest")))
    wait_until(lambda: routes_of(rt)["r"]["dropped"] > 0, what="drops")
    _open_gate("sink")
    c = _ledger_balances(rt, 100)
    assert set(c["drop_reasons"]) == {"queue_full"}
    values = [e.body.value for e in received("sink")]  # type: ignore[union-attr]
    assert values == sorted(values) and values[0] == 0.0 and 99.0 not in values
    assert len(values) == c["delivered"] <= 20  # 10 queued + at most one batch in flight


def test_overflow_drop_oldest_keeps_the_latest(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(load_config(_overflow_config("drop_oldest")))
    wait_until(lambda: routes_of(rt)["r"]["dropped"] > 0, what="drops")
    _open_gate("sink")
    c = _ledger_balances(rt, 100)
    assert set(c["drop_reasons"]) == {"queue_full"}
    values = [e.body.value for e in received("sink")]  # type: ignore[union-attr]
    assert values[-10:] == [float(i) for i in range(90, 100)]


@pytest.mark.parametrize("own_thread", [False, True], ids=["shared-loop", "own-thread"])
def test_overflow_block_waits_and_loses_nothing(
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
    own_thread: bool,
) -> None:
    # the router waits for room on the shared loop: the target's takes (on that loop or
    # on a thread of its own) must wake it
    rt = runtime_of(load_config(_overflow_config("block", own_thread=own_thread)))
    time.sleep(0.3)
    assert len(received("sink")) == 0
    _open_gate("sink")
    c = _ledger_balances(rt, 100)
    assert c["dropped"] == 0
    assert [e.body.value for e in received("sink")] == [float(i) for i in range(100)]  # type: ignore[union-attr]


def test_overflow_block_gives_up_after_its_timeout(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(load_config(_overflow_config("block", block_timeout=0.02)))
    wait_until(lambda: routes_of(rt)["r"]["dropped"] > 0, what="block timeouts")
    _open_gate("sink")
    c = _ledger_balances(rt, 100)
    assert set(c["drop_reasons"]) == {"block_timeout"}


def test_crashing_target_is_restarted_and_its_batch_dead_lettered(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[junction]
restart_backoff_s = 0.05
[adapters.src]
type = "burst"
count = 200
batch = 20
[adapters.sink]
type = "collector"
crash_on_batches = [1]
max_batch = 20
[[routes]]
name = "r"
from = "src"
to = "sink"
""")
    )
    wait_until(lambda: rt.statuses["sink"].restarts == 1, what="one restart")

    def settled() -> bool:
        c = routes_of(rt)["r"]
        return c["delivered"] + c["dead_lettered"] == 200

    wait_until(settled, what="every envelope delivered or dead-lettered")
    c = routes_of(rt)["r"]
    assert c["dead_lettered"] == 20  # the batch in hand when it crashed, dead-lettered
    assert len(received("sink")) == c["delivered"] == 180  # the rest, after the restart
    assert "told to crash" in rt.statuses["sink"].last_error


def test_crashing_source_is_restarted_and_resumes(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[junction]
restart_backoff_s = 0.05
[adapters.src]
type = "burst"
count = 100
batch = 10
crash_after = 50
[adapters.sink]
type = "collector"
[[routes]]
name = "r"
from = "src"
to = "sink"
""")
    )
    wait_until(lambda: len(received("sink")) == 100, what="all 100 after the restart")
    assert rt.statuses["src"].restarts == 1
    assert sorted(e.body.value for e in received("sink")) == [float(i) for i in range(100)]  # type: ignore[union-attr]


def test_graceful_stop_delivers_everything_queued(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "burst"
count = 3000
batch = 500
[adapters.sink]
type = "collector"
delay_s = 0.02
[[routes]]
name = "r"
from = "src"
to = "sink"
queue_size = 5000
overflow = "block"
""")
    )
    wait_until(lambda: routes_of(rt)["r"]["matched"] == 3000, what="all routed")
    assert len(received("sink")) < 3000  # the slow sink still has a queue to drain
    report = rt.stop(grace_s=30)
    assert report.left == {}
    assert len(received("sink")) == 3000
    assert report.snapshot["routes"]["r"]["delivered"] == 3000


def test_stop_reports_what_the_grace_period_could_not_drain(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "burst"
count = 50
[adapters.sink]
type = "collector"
gated = true
[[routes]]
name = "r"
from = "src"
to = "sink"
""")
    )
    wait_until(lambda: routes_of(rt)["r"]["queued"] == 50, what="all queued")
    report = rt.stop(grace_s=0.2)
    assert sum(report.left.values()) == 50 and list(report.left) == ["sink/r"]


def test_request_reply_and_timeout_through_the_router(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.asker]
type = "burst"
count = 5
requests = true
[adapters.placeos]
type = "echo"
silent_for = [3]
[[routes]]
name = "exec"
from = "asker"
kind = "exec_request"
to = "placeos"
expects_reply = true
reply_timeout_s = 0.5
reply_map = { kind = "command_result", ok = "{body.ok}", message = "exec code {body.code}" }
""")
    )
    wait_until(lambda: len(received("asker")) == 5, what="5 answers (4 replies + 1 timeout)")
    answers = {e.correlation_id: e.body for e in received("asker")}
    assert set(answers) == {f"req-{i}" for i in range(5)}
    assert answers["req-0"].ok is True  # type: ignore[union-attr]
    assert answers["req-0"].message == "exec code 200"  # type: ignore[union-attr]
    c = routes_of(rt)["exec"]
    assert c["reply_timeouts"] == 1 and c["replies"] == 5
    assert answers["req-3"].ok is False  # type: ignore[union-attr]


def test_envelopes_no_route_takes_are_counted_not_lost_silently(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "burst"
count = 30
[adapters.sink]
type = "collector"
[[routes]]
name = "only-big"
from = "src"
to = "sink"
match = { "body.value" = { ge = 20 } }
""")
    )
    wait_until(lambda: rt.snapshot()["unrouted"].get("src/metric") == 20, what="20 unrouted")
    wait_until(lambda: len(received("sink")) == 10, what="10 routed")


def test_envelopes_a_target_refuses_are_failed_not_delivered(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "burst"
count = 40
batch = 7
[adapters.sink]
type = "collector"
refuse_odd = true
[[routes]]
name = "r"
from = "src"
to = "sink"
""")
    )
    wait_until(lambda: routes_of(rt)["r"]["delivered"] + routes_of(rt)["r"]["dead_lettered"] == 40)
    c = routes_of(rt)["r"]
    assert (c["delivered"], c["dead_lettered"]) == (20, 20)
    assert len(received("sink")) == 20


def _trickle(gather_s: float, load_config: Callable[[str], Loaded], runtime_of: Any) -> list[int]:
    """Ten envelopes 20 ms apart into a collector with ``gather_s``: the batch sizes it got."""
    runtime_of(
        load_config(f"""
[adapters.src]
type = "probe"
[adapters.sink]
type = "collector"
gather_s = {gather_s}
[[routes]]
name = "r"
from = "src"
to = "sink"
""")
    )
    for i in range(10):
        core_plugin.inject(
            "src", [Envelope(source="src", body=Metric(module="m", name="n", value=i))]
        )
        time.sleep(0.02)
    wait_until(lambda: len(received("sink")) == 10, what="10 envelopes at the sink")
    assert [e.body.value for e in received("sink")] == [float(i) for i in range(10)]  # type: ignore[union-attr]
    return list(core_plugin.BATCH_SIZES["sink"])


def test_a_gathering_sink_takes_a_trickle_in_one_batch(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    # the 200 ms the ten take fit well inside a 2 s gathering window
    assert _trickle(2.0, load_config, runtime_of) == [10]


def test_a_sink_that_does_not_gather_takes_each_as_it_comes(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    sizes = _trickle(0.0, load_config, runtime_of)
    assert sum(sizes) == 10 and len(sizes) >= 2, sizes  # 20 ms gaps: not one batch
