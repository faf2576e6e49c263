"""The shared loop: adapters run on it unless they ask for a thread; one task's error stays its own."""

from __future__ import annotations

import threading
from collections.abc import Callable

import trio

from broker._envelope import Envelope, Metric
from broker._loop import SharedLoop
from broker._runtime import Loaded, Runtime
from tests.conftest import wait_until
from tests.support import core_plugin
from tests.support.core_plugin import received

TWO_SINKS = """
[adapters.src]
type = "probe"
[adapters.shared]
type = "collector"
[adapters.apart]
type = "collector"
own_thread = true
{apart}
[[routes]]
name = "r"
from = "src"
to = ["shared", "apart"]
"""


def _metrics(n: int) -> list[Envelope]:
    return [Envelope(source="src", body=Metric(module="m", name="n", value=i)) for i in range(n)]


def test_adapters_share_the_loop_unless_they_ask_for_a_thread(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    runtime_of(load_config(TWO_SINKS.format(apart="")))
    core_plugin.inject("src", _metrics(5))
    wait_until(lambda: len(received("shared")) == len(received("apart")) == 5)
    assert core_plugin.THREADS == {"shared": "junction-loop", "apart": "adapter-apart"}


def test_an_adapter_that_blocks_on_its_own_thread_does_not_stall_the_loop(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime]
) -> None:
    runtime_of(load_config(TWO_SINKS.format(apart="block_s = 3.0")))
    core_plugin.inject("src", _metrics(5))
    wait_until(lambda: len(received("shared")) == 5, timeout=2.5, what="the first five")
    # the other sink now sleeps 3 s in its first batch: the shared loop must not wait for it
    core_plugin.inject("src", _metrics(5))
    wait_until(lambda: len(received("shared")) == 10, timeout=1.5, what="the next five")
    assert received("apart") == []
    wait_until(lambda: len(received("apart")) == 10, timeout=10, what="the blocking sink")


def test_a_task_that_raises_does_not_end_the_loop() -> None:
    loop = SharedLoop("test-loop")
    loop.start()
    ran = threading.Event()

    async def broken() -> None:
        raise RuntimeError("a bug in one adapter")

    async def healthy() -> None:
        await trio.sleep(0.01)
        ran.set()

    try:
        loop.spawn(broken, "broken")
        loop.spawn(healthy, "healthy")
        assert ran.wait(5)
        assert loop._thread is not None and loop._thread.is_alive()
    finally:
        loop.close()
    assert not loop._thread.is_alive()
