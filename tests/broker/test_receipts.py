"""A source hears when the router is done with a batch it emitted (``emit(on_settled=)``).

Real runtimes with the test plugin's probe (a source the test drives) and collectors; the
callback must come only once every copy of the batch is delivered, kept in a persist
outbox, dead-lettered or dropped -- never while a copy is still only in memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from broker._envelope import Envelope, Metric
from broker._receipts import Receipts
from broker._runtime import Loaded, Runtime, load
from tests.conftest import TEST_PLUGINS, wait_until
from tests.support import core_plugin
from tests.support.core_plugin import received


def metrics(start: int, n: int) -> list[Envelope]:
    return [
        Envelope(source="src", subject=f"m{i}", body=Metric(module="m", name="n", value=float(i)))
        for i in range(start, start + n)
    ]


def receipts_of(rt: Runtime) -> Receipts:
    router = rt.router._actor_weakref()  # type: ignore[union-attr]
    assert router is not None
    receipts: Receipts = router.receipts
    return receipts


def break_outbox(rt: Runtime) -> None:
    """Make every write to the outbox fail from now on (as a full or failing disk does)."""
    assert rt.outbox is not None
    rt.outbox._db.execute("PRAGMA query_only = ON")  # idle: nothing is routed yet


class Receipt:
    def __init__(self) -> None:
        self.calls = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()


def test_fan_out_settles_only_when_every_memory_copy_is_delivered(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    runtime_of(
        load_config("""
[adapters.src]
type = "probe"
[adapters.fast]
type = "collector"
[adapters.slow]
type = "collector"
gated = true
[[routes]]
name = "to-fast"
from = "src"
to = "fast"
overflow = "drop_oldest"
[[routes]]
name = "to-slow"
from = "src"
to = "slow"
overflow = "block"
""")
    )
    receipt = Receipt()
    core_plugin.inject("src", metrics(0, 20), receipt)
    wait_until(lambda: len(received("fast")) == 20, what="the fast copies")
    time.sleep(0.3)
    assert receipt.calls == 0, "settled while the slow target still held its copies"
    core_plugin.GATES.setdefault("slow", threading.Event()).set()
    assert receipt.event.wait(5), "never settled after the slow target delivered"
    assert len(received("slow")) == 20
    time.sleep(0.1)
    assert receipt.calls == 1


def test_outbox_dead_letters_drops_and_no_route_all_settle(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "probe"
[adapters.held]
type = "collector"
gated = true
[adapters.picky]
type = "collector"
refuse_odd = true
[[routes]]
name = "kept"
from = "src"
to = "held"
overflow = "persist"
match = { subject = "m1*" }
[[routes]]
name = "refused"
from = "src"
to = "picky"
match = { subject = "m2*" }
overflow = "drop_oldest"
""")
    )
    # m10..m19: kept in the outbox while 'held' never delivers: settled at once
    kept = Receipt()
    core_plugin.inject("src", metrics(10, 10), kept)
    assert kept.event.wait(5), "an envelope committed to the outbox is settled"
    # m20..m29: the odd ones dead-lettered, the even ones delivered
    refused = Receipt()
    core_plugin.inject("src", metrics(20, 10), refused)
    assert refused.event.wait(5)
    routes = rt.snapshot()["routes"]
    assert routes["refused"]["dead_lettered"] == 5 and routes["refused"]["delivered"] == 5
    # m3..m4: no route takes them
    nowhere = Receipt()
    core_plugin.inject("src", metrics(3, 2), nowhere)
    assert nowhere.event.wait(5)
    assert len(receipts_of(rt)) == 0


def test_a_full_drop_newest_queue_settles_what_it_dropped(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "probe"
[adapters.shut]
type = "collector"
gated = true
max_batch = 1
[[routes]]
name = "small"
from = "src"
to = "shut"
overflow = "drop_newest"
queue_size = 5
""")
    )
    first = Receipt()
    core_plugin.inject("src", metrics(0, 1), first)
    wait_until(lambda: len(receipts_of(rt)) == 1)
    # the collector took it (max_batch 1) and waits at its gate
    wait_until(lambda: sum(rt.inlets["shut"].depths().values()) == 0, what="the first taken")
    core_plugin.inject("src", metrics(1, 5), first)  # the queue is full now
    wait_until(lambda: len(receipts_of(rt)) == 6, what="6 copies tracked")
    dropped = Receipt()
    core_plugin.inject("src", metrics(6, 20), dropped)
    assert dropped.event.wait(5), "a batch dropped whole by its route is settled"
    assert first.calls == 0
    core_plugin.GATES.setdefault("shut", threading.Event()).set()
    assert first.event.wait(5)


def test_a_batch_whose_routing_raised_is_never_settled(
    write_config: Callable[[str], str], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    path = write_config("""
[adapters.src]
type = "probe"
[adapters.out]
type = "collector"
[[routes]]
name = "r"
from = "src"
to = "out"
""")
    rt = runtime_of(load(path, extra_plugins=(*TEST_PLUGINS, "tests.support.raising_observer")))
    receipt = Receipt()
    core_plugin.inject("src", metrics(0, 3), receipt)
    assert rt.router is not None
    wait_until(lambda: not rt.router.is_alive(), what="the router ended by the observer")  # type: ignore[union-attr]
    assert receipt.calls == 0, "a batch that was never routed was reported settled"
    rt.stop(grace_s=2)  # the fixture stops only runtimes whose router is alive


def test_a_full_outbox_does_not_settle_what_it_refused(
    write_config: Callable[[str], str], runtime_of: Callable[[Loaded], Runtime], tmp_path: Path
) -> None:
    path = write_config(f"""
[junction]
state_dir = "{tmp_path / "state"}"
[junction.outbox]
max_rows = 5
[adapters.src]
type = "probe"
[adapters.held]
type = "collector"
gated = true
[[routes]]
name = "r"
from = "src"
to = "held"
overflow = "persist"
""")
    rt = runtime_of(load(path, extra_plugins=TEST_PLUGINS))
    receipt = Receipt()
    core_plugin.inject("src", metrics(0, 20), receipt)
    wait_until(lambda: rt.snapshot()["routes"]["r"]["drop_reasons"].get("outbox_full") == 15)
    kept = Receipt()
    core_plugin.inject("src", metrics(20, 1), kept)  # refused too, and handled after
    wait_until(lambda: rt.snapshot()["routes"]["r"]["drop_reasons"].get("outbox_full") == 16)
    core_plugin.GATES.setdefault("held", threading.Event()).set()
    wait_until(lambda: len(received("held")) == 5, what="the 5 the outbox kept")
    wait_until(lambda: rt.outbox is not None and rt.outbox.rows == 0)
    assert receipt.calls == 0 and kept.calls == 0, "acked what the outbox refused"
    settled = Receipt()
    core_plugin.inject("src", metrics(30, 2), settled)
    assert settled.event.wait(5), "a batch the outbox took is settled"


def test_a_failed_outbox_write_does_not_settle_what_memory_dropped(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "probe"
[adapters.held]
type = "collector"
gated = true
[[routes]]
name = "r"
from = "src"
to = "held"
overflow = "persist"
queue_size = 5
""")
    )
    break_outbox(rt)
    receipt = Receipt()
    core_plugin.inject("src", metrics(0, 400), receipt)
    wait_until(lambda: rt.snapshot()["routes"]["r"]["drop_reasons"].get("outbox_error", 0) > 0)
    core_plugin.GATES.setdefault("held", threading.Event()).set()
    wait_until(lambda: len(received("held")) == 5, what="the 5 held in memory")
    wait_until(lambda: len(receipts_of(rt)) == 0, what="the memory copies settled")
    assert receipt.calls == 0, "acked what a failed outbox write dropped"


def test_dead_letters_that_could_not_be_stored_are_not_settled(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config("""
[adapters.src]
type = "probe"
[adapters.picky]
type = "collector"
refuse_odd = true
[[routes]]
name = "refused"
from = "src"
to = "picky"
overflow = "drop_oldest"
""")
    )
    break_outbox(rt)
    receipt = Receipt()
    core_plugin.inject("src", metrics(0, 10), receipt)
    wait_until(
        lambda: rt.snapshot()["routes"]["refused"]["dead_lettered"] == 5, what="5 dead letters"
    )
    wait_until(lambda: len(receipts_of(rt)) == 0, what="the memory copies settled")
    time.sleep(0.2)
    assert receipt.calls == 0, "acked dead letters the outbox could not store"
