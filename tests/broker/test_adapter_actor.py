"""The runtime's shape: every thread a bridge runs carries data, restarts wait on the loop,
a stop is answered once the instance has closed, and a source waits for room in the
router's mailbox on an event.

Real actors and trio loops throughout; the adapters are the test plugin's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pykka
import trio

from broker._adapter_actor import AdapterActor
from broker._messages import Backlog
from broker._runtime import Loaded, Runtime
from tests.conftest import wait_until
from tests.support import core_plugin
from tests.support.core_plugin import received

#: The threads a running bridge may add, each with the data it carries (see the runtime's
#: module docstring); ``adapter-own`` is this config's own_thread adapter.
ALLOWED = {
    "junction-loop",  # the router and every adapter without own_thread
    "adapter-own",  # the own_thread adapter
    "outbox-checkpoint",  # the outbox's WAL checkpoints
}


def src_to_sink(src: str, sink: str, *, junction: str = "", route: str = "") -> str:
    """A burst source feeding one collector through route ``r``; each argument holds the
    extra TOML lines of its table (``junction``: of ``[junction]``)."""
    head = f"[junction]\n{junction}\n" if junction else ""
    return (
        f'{head}[adapters.src]\ntype = "burst"\n{src}\n'
        f'[adapters.sink]\ntype = "collector"\n{sink}\n'
        f'[[routes]]\nname = "r"\nfrom = "src"\nto = "sink"\n{route}\n'
    )


def _new_threads(before: set[int]) -> set[str]:
    return {t.name for t in threading.enumerate() if t.ident not in before}


def test_a_running_bridge_has_no_thread_without_data_even_while_a_restart_waits(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    before = {t.ident for t in threading.enumerate() if t.ident is not None}
    rt = runtime_of(
        load_config("""
[junction]
restart_backoff_s = 30.0
restart_backoff_max_s = 30.0
[adapters.src]
type = "burst"
count = 50
[adapters.sink]
type = "collector"
[adapters.own]
type = "collector"
own_thread = true
[adapters.crashy]
type = "collector"
crash_on_batches = [1]
[[routes]]
name = "r"
from = "src"
to = ["sink", "own", "crashy"]
""")
    )
    wait_until(lambda: len(received("sink")) == 50 and len(received("own")) == 50)
    wait_until(lambda: rt.statuses["crashy"].state == "restarting", what="a pending restart")
    threads = _new_threads(before)
    assert threads <= ALLOWED, f"threads without data: {sorted(threads - ALLOWED)}"
    assert {"junction-loop", "adapter-own"} <= threads
    assert core_plugin.THREADS == {
        "sink": "junction-loop",
        "crashy": "junction-loop",
        "own": "adapter-own",
    }
    # every adapter is a pykka actor in the registry, none with a thread of its own
    names = {
        ref.proxy().name.get(timeout=5) for ref in pykka.ActorRegistry.get_by_class(AdapterActor)
    }
    assert names >= {"src", "sink", "own", "crashy"}


def test_stop_is_answered_once_the_instance_has_closed(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(load_config(src_to_sink("count = 10", "close_s = 0.3")))
    wait_until(lambda: len(received("sink")) == 10)
    ref = rt.adapters["sink"]
    rt.stop_adapter("sink")
    assert core_plugin.CLOSED == ["sink"]  # its aclose (0.3 s) ended before stop returned
    assert not ref.is_alive()
    assert rt.statuses["sink"].state == "stopped"


def test_a_restarted_instance_takes_what_was_queued_for_the_one_that_crashed(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config(
            src_to_sink(
                "count = 100\nbatch = 10",
                "crash_on_batches = [2]\nmax_batch = 10\nclose_s = 0.05",
                junction="restart_backoff_s = 0.05",
            )
        )
    )
    wait_until(lambda: rt.statuses["sink"].restarts == 1, what="one restart")
    wait_until(lambda: len(received("sink")) == 90, what="the 90 not in the crashed batch")
    assert core_plugin.CLOSED[:1] == ["sink"]  # the crashed instance was closed
    actor = rt.adapters["sink"]
    assert actor.proxy().generation.get(timeout=5) == 2


async def test_a_source_waits_for_room_in_the_routers_mailbox_on_an_event() -> None:
    backlog = Backlog(high_water=10)
    backlog.add(25)
    resumed: list[float] = []

    async def source() -> None:
        await backlog.wait_room()
        resumed.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(source)
        await trio.sleep(0.05)
        assert resumed == []  # over its mark: the source waits
        await trio.to_thread.run_sync(backlog.sub, 10)  # the router, on another thread
        await trio.sleep(0.05)
        assert resumed == []  # 15 is still over 10
        await trio.to_thread.run_sync(backlog.sub, 5)
        with trio.fail_after(5):
            while not resumed:
                await trio.sleep(0.005)
    await backlog.wait_room()  # at the mark: returns at once


def test_a_batch_cancelled_inside_a_nursery_goes_back_to_its_queue_not_to_the_dead_letters(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config(
            src_to_sink(
                "count = 20", "gated = true\nin_nursery = true", route='overflow = "drop_newest"'
            )
        )
    )
    wait_until(lambda: rt.inlets["sink"].route_pending("r") == 20, what="20 taken or queued")
    rt.stop_adapter("sink")  # cancels the deliver waiting at its gate, inside a nursery
    c = rt.snapshot()["routes"]["r"]
    assert c["dead_lettered"] == 0 and c["retries"] == 0  # a stop is not a failure
    assert rt.inlets["sink"].depth("r") == 20  # every one back in the queue, in order


def test_a_constructor_that_refuses_on_restart_is_retried_with_the_back_off(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config(
            src_to_sink(
                "count = 60\nbatch = 10",
                "crash_on_batches = [1]\nmax_batch = 10\nrefuse_restarts = 2",
                junction="restart_backoff_s = 0.05\nrestart_backoff_max_s = 0.2",
            )
        )
    )
    wait_until(lambda: len(received("sink")) == 50, what="the 50 after the crashed batch")
    assert core_plugin.BUILT["sink"] == 4  # the first, two refusals, the one that ran
    assert rt.statuses["sink"].restarts == 3
    assert "refuses to be built" in rt.statuses["sink"].last_error
    assert rt.statuses["sink"].state == "running"


def test_an_adapter_stopped_while_its_restart_waits_says_stopped(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(
        load_config(
            src_to_sink("count = 10", "crash_on_batches = [1]", junction="restart_backoff_s = 30.0")
        )
    )
    wait_until(lambda: rt.statuses["sink"].state == "restarting", what="a pending restart")
    rt.stop_adapter("sink")
    assert rt.statuses["sink"].state == "stopped"


def test_shutdown_ends_the_routers_tick_before_it_empties_the_inlets(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    rt = runtime_of(load_config(src_to_sink("count = 5", "")))
    wait_until(lambda: len(received("sink")) == 5)
    ticking_when_adapters_stopped: list[bool] = []
    stop_adapter = rt.stop_adapter

    def watched(name: str) -> None:
        ticking_when_adapters_stopped.append(not rt._tick_ended.is_set())
        stop_adapter(name)

    rt.stop_adapter = watched  # type: ignore[method-assign]
    rt.stop(grace_s=1)
    assert ticking_when_adapters_stopped == [False, False]
