"""The AlphaX adapter writing over HTTP to the simulator, over real loopback sockets.

The simulator runs in the test's trio loop; the bridge (router, adapters) runs in its own
threads. A ``channel_source`` emits writes; ``dlq`` collects what was dead-lettered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from adapters.alphax.sim import TokenSpec, open_alphax_simulator
from broker._runtime import Loaded
from tests.adapters.alphax.conftest import TOKEN, alphax_table, route, table
from tests.conftest import wait_for
from tests.support.alphax_plugin import stats
from tests.support.core_plugin import received

T0 = 1_700_000_000.0


def source(name: str = "src", **fields: Any) -> str:
    """A channel_source table; its ticks are 1 ms apart from ``start_ts`` (default T0)."""
    fields.setdefault("start_ts", T0)
    return table(name, type="channel_source", **fields)


def alphax(url: str, name: str = "ax", type: str = "alphax", **fields: Any) -> str:
    fields.setdefault("tier", "enterprise")
    fields.setdefault("backoff_initial_s", 0.05)
    fields.setdefault("backoff_max_s", 0.2)
    return alphax_table(name, type=type, token=TOKEN, base_url=url, read_url=url, **fields)


def routes_of(rt: Any) -> dict[str, Any]:
    return dict(rt.snapshot()["routes"])


def expected(
    devices: list[str], channels: list[int], ticks: int
) -> dict[tuple[str, int], list[tuple[float, float]]]:
    return {
        (d, c): [(round(T0 + t * 0.001, 3), float(t)) for t in range(ticks)]
        for d in devices
        for c in channels
    }


def store_of(
    sim: Any, devices: list[str], channels: list[int]
) -> dict[tuple[str, int], list[tuple[float, float]]]:
    return {(d, c): sim.store.values(d, c) for d in devices for c in channels}


async def test_v2_posts_land_in_the_store(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    devices, channels = ["dev-1", "dev-2", "dev-3"], [1, 2, 7, 255]
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN]) as sim:
            cfg = (
                source(devices=devices, channels=channels, ticks=25)
                + alphax(sim.url)
                + route("w", "src", "ax")
            )
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: routes_of(rt)["w"]["delivered"] == 300, what="300 sent")
                assert routes_of(rt)["w"]["dead_lettered"] == 0 and received("dlq") == []
                assert rt.statuses["ax"].state == "connected"
            assert store_of(sim, devices, channels) == expected(devices, channels, 25)
            assert sim.store.count() == 300  # nothing twice
            posts = [r for r in sim.requests if r.endpoint == "post/v2"]
            # one post per device and timestamp (a few more where a source batch split a tick)
            assert 75 <= len(posts) <= 80 and all(r.status == 200 for r in posts)


async def test_v1_posts_carry_channels_1_to_n_and_the_rest_go_as_v2(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN]) as sim:
            cfg = (
                source(devices=["dev-1"], channels=[1, 2, 3, 5], ticks=10, batch=40)
                + alphax(sim.url, uplink="v1")
                + route("w", "src", "ax")
            )
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: routes_of(rt)["w"]["delivered"] == 40, what="40 sent")
            want = expected(["dev-1"], [1, 2, 3, 5], 10)
            assert store_of(sim, ["dev-1"], [1, 2, 3, 5]) == want
            # v1 always writes the four device fields (padded with 0000 when not written)
            assert [v for _, v in sim.store.values("dev-1", 255)] == [0.0] * 10
            v1 = [r for r in sim.requests if r.endpoint == "post/v1"]
            v2 = [r for r in sim.requests if r.endpoint == "post/v2"]
            assert len(v1) == 10 and len(v2) == 10
            assert all(r.status == 200 for r in v1 + v2)


async def test_gzip_both_ways(load_alphax: Callable[[str], Loaded], start_runtime: Any) -> None:
    """Big posts go gzipped; the poller asks for and decodes gzipped read responses."""
    channels = list(range(1, 33))
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN]) as sim:
            # the poller starts reading at its own "now", which on a loaded machine can be a
            # second or more after this line: stamp the writes safely after it
            cfg = (
                source(
                    devices=["dev-g"],
                    channels=channels,
                    ticks=5,
                    batch=32,
                    start_ts=time.time() + 3,
                )
                + alphax(
                    sim.url,
                    type="alphax_tracked",
                    gzip_over_bytes=600,
                    poll={
                        "interval_s": 0.2,
                        "settle_s": 0,
                        "start_lookback_s": 0,
                    },
                )
                + table("sink", type="collector")
                + route("w", "src", "ax")
                + route("r", "ax", "sink", kind="channel_reading")
            )
            async with start_runtime(load_alphax(cfg)):
                await wait_for(lambda: sim.store.count() == 160, what="160 values stored")
                await wait_for(
                    lambda: len(received("sink")) == 160, timeout=15, what="160 values read back"
                )
                posts = [r for r in sim.requests if r.endpoint == "post/v2"]
                assert posts and all(r.request_encoding == "gzip" for r in posts)
                reads = [r for r in sim.requests if r.endpoint == "conduitv6" and r.status == 200]
                assert any(r.response_encoding == "gzip" for r in reads)
                assert stats("ax")["gzipped"] == len(posts)
            got = sorted((e.body.channel, e.body.value) for e in received("sink"))  # type: ignore[union-attr]
            assert got == sorted((c, float(t)) for c in channels for t in range(5))


async def test_basic_tier_burst_is_paced_without_429(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    """250 posts (one per device and timestamp) at Basic's 100 writes/s: paced, never 429."""
    with trio.fail_after(30):
        async with open_alphax_simulator([TOKEN], tier="basic") as sim:
            cfg = (
                source(devices=["d1", "d2"], channels=[1], ticks=125, step_s=1.0)
                + alphax(sim.url, type="alphax_tracked", tier="basic", concurrency=4)
                + route("w", "src", "ax")
            )
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(
                    lambda: routes_of(rt)["w"]["delivered"] == 250, timeout=20, what="250 sent"
                )
                assert stats("ax")["paced_waits"] > 0
            statuses = [r.status for r in sim.requests if r.endpoint == "post/v2"]
            assert len(statuses) == 250 and set(statuses) == {200}
            assert sim.store.rejects().get("rate_limited", 0) == 0
            assert sim.store.count() == 250


async def test_429_and_5xx_are_retried_without_loss(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN]) as sim:
            sim.fail_next(3, 429)
            sim.fail_next(2, 503)
            sim.fail_next(1, 500, error="database is on fire")
            cfg = (
                source(devices=["dev-1"], channels=[1, 2], ticks=20, batch=10)
                + alphax(sim.url, type="alphax_tracked", concurrency=1)
                + route("w", "src", "ax")
            )
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: routes_of(rt)["w"]["delivered"] == 40, what="40 sent")
                assert stats("ax")["retries"] == 6
                assert rt.statuses["ax"].state == "connected"
                assert routes_of(rt)["w"]["dead_lettered"] == 0 and received("dlq") == []
            assert sim.faults_pending() == 0
            assert store_of(sim, ["dev-1"], [1, 2]) == expected(["dev-1"], [1, 2], 20)
            codes = [r.status for r in sim.requests]
            assert codes[:6] == [429, 429, 429, 503, 503, 500]


@pytest.mark.parametrize(
    ("case", "status"),
    [("unknown-token", 401), ("read-only-token", 403)],
)
async def test_a_refused_token_holds_the_values_until_it_is_accepted(
    case: str,
    status: int,
    load_alphax: Callable[[str], Loaded],
    start_runtime: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 401/403 is the site's token, not the data: nothing is dead-lettered (it used to be,
    every envelope at full rate), the adapter says ``auth-failed``, posts back off, and once
    the token is accepted every value lands once (issue 17, item 8)."""
    tokens: dict[str, TokenSpec] = {"someone-else": TokenSpec()}
    if case == "read-only-token":
        tokens = {TOKEN: TokenSpec(write=False)}
    with trio.fail_after(30):
        async with open_alphax_simulator(tokens) as sim:
            cfg = (
                source(devices=["dev-1"], channels=[1, 2], ticks=3)
                + alphax(sim.url, auth_backoff_s=0.3)
                + route("w", "src", "ax")
            )
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(
                    lambda: sum(r.status == status for r in sim.requests) >= 6,
                    what="posts refused again and again",
                )
                assert rt.statuses["ax"].state == "auth-failed"
                assert "values held" in rt.statuses["ax"].detail
                assert received("dlq") == [] and routes_of(rt)["w"]["dead_lettered"] == 0
                assert sim.store.count() == 0
                refused = len(sim.requests)
                sim.tokens[TOKEN] = TokenSpec()  # the operator fixed the token
                await wait_for(lambda: routes_of(rt)["w"]["delivered"] == 6, what="6 sent")
                assert rt.statuses["ax"].state == "connected"
                assert received("dlq") == [] and routes_of(rt)["w"]["dead_lettered"] == 0
            assert store_of(sim, ["dev-1"], [1, 2]) == expected(["dev-1"], [1, 2], 3)
            assert sim.store.count() == 6  # each value once
            # backed off, not hammered: a handful of refusals while the test waited
            assert refused < 60
    lines = [r.getMessage() for r in caplog.records if "the token was refused" in r.getMessage()]
    assert lines and TOKEN not in " ".join(lines)
    assert "check [adapters.ax] token" in lines[0]


async def test_a_body_over_the_limit_is_dead_lettered_with_status_and_body(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_alphax_simulator({TOKEN: TokenSpec()}, max_body_bytes=100) as sim:
            cfg = (
                source(devices=["dev-1"], channels=[1, 2], ticks=3)
                + alphax(sim.url)
                + route("w", "src", "ax")
            )
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: len(received("dlq")) == 6, what="6 dead letters")
                assert routes_of(rt)["w"]["dead_lettered"] == 6
                assert rt.statuses["ax"].state != "auth-failed"
            assert len(sim.requests) == 3  # one post per timestamp, none retried
            for env in received("dlq"):
                reason = env.headers["x-dead-letter-reason"]
                assert "HTTP 413" in reason and "byte limit" in reason
                assert "(code 413)" in reason  # the code parsed, string or number
                assert TOKEN not in reason
            assert sim.store.count() == 0


async def test_unencodable_writes_are_dead_lettered_the_rest_sent(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN]) as sim:
            cfg = (
                source(devices=["dev-1"], channels=[1, 40], ticks=4)
                + alphax(sim.url)
                + route("w", "src", "ax")
            )
            async with start_runtime(load_alphax(cfg)):
                await wait_for(lambda: len(received("dlq")) == 4, what="4 dead letters")
                await wait_for(lambda: sim.store.count() == 4, what="channel 1 stored")
            reasons = {e.headers["x-dead-letter-reason"] for e in received("dlq")}
            assert len(reasons) == 1 and "channel 40 is outside 1..32" in reasons.pop()
            assert [v for _, v in sim.store.values("dev-1", 1)] == [0.0, 1.0, 2.0, 3.0]
