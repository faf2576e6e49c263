"""Pacing to the tier's limits, on trio's autojump clock (no sockets, no real waiting)."""

from __future__ import annotations

import random

import trio

from adapters.alphax._pacing import ReadPacer, WritePacer
from broker._backoff import backoff_delay


def max_in_window(times: list[float], window: float) -> int:
    return max(sum(1 for u in times if t - window < u <= t) for t in times)


async def test_write_pacer_keeps_any_second_under_the_limit(autojump_clock: trio.abc.Clock) -> None:
    pacer = WritePacer(5, margin_s=0.05)
    arrivals: list[float] = []
    rng = random.Random(7)

    async def request() -> None:
        await pacer.acquire()
        try:
            await trio.sleep(rng.uniform(0.001, 0.2))  # the request travels ...
            arrivals.append(trio.current_time())  # ... arrives somewhere on the way ...
            await trio.sleep(rng.uniform(0.001, 0.2))  # ... and its answer comes back
        finally:
            pacer.release()

    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(request)
    assert len(arrivals) == 40
    assert max_in_window(sorted(arrivals), 1.0) <= 5
    assert pacer.waits > 0
    assert trio.current_time() >= 7.0  # 40 requests at 5 per second


async def test_unlimited_pacer_never_waits(autojump_clock: trio.abc.Clock) -> None:
    pacer = WritePacer(None)
    for _ in range(1000):
        await pacer.acquire()
        pacer.release()
    assert trio.current_time() == 0 and pacer.waits == 0


async def test_read_pacer_spaces_calls_and_backs_off(autojump_clock: trio.abc.Clock) -> None:
    pacer = ReadPacer(15.0, margin_s=0.1)
    calls = []
    for _ in range(3):
        await pacer.wait()
        calls.append(trio.current_time())
        await trio.sleep(0.3)  # the call takes a while; spacing counts from its end
        pacer.done()
    assert calls[1] - calls[0] >= 15.3 and calls[2] - calls[1] >= 15.3
    pacer.push_back(60)
    before = trio.current_time()
    await pacer.wait()
    assert trio.current_time() - before >= 60


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(n, 0.5, 30.0) for n in range(1, 20)]
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert delays[0] <= 0.5 and max(delays[-5:]) > 15
