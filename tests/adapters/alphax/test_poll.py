"""The AlphaX poller reading the simulator back over HTTP: each record once, across restarts."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from adapters.alphax.sim import open_alphax_simulator
from broker._envelope import ChannelReading
from broker._runtime import Loaded
from tests.adapters.alphax.conftest import TOKEN, alphax_table, route, table
from tests.conftest import wait_for
from tests.support.core_plugin import received


def config(url: str, **poll: Any) -> str:
    poll = {"interval_s": 0.1, "settle_s": 0, "start_lookback_s": 3600, **poll}
    return (
        alphax_table(
            "ax",
            type="alphax",
            token=TOKEN,
            tier="enterprise",
            base_url=url,
            read_url=url,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            poll=poll,
        )
        + table("sink", type="collector")
        + route("r", "ax", "sink", kind="channel_reading")
    )


def readings() -> list[ChannelReading]:
    return [e.body for e in received("sink") if isinstance(e.body, ChannelReading)]


def read_back() -> Counter[tuple[str, int, float, float]]:
    return Counter((r.network_id, r.channel, r.timestamp, r.value) for r in readings())


def in_store(sim: Any) -> Counter[tuple[str, int, float, float]]:
    rows = sim.store.query(TOKEN, start=0, end=1e11)
    return Counter((v.network_id, v.channel, float(int(v.timestamp)), v.value) for v in rows)


def seed(sim: Any, start: float, per_channel: int, channels: range, device: str = "dev-1") -> None:
    """``per_channel`` values per channel, ten per second: pages end mid-second."""
    for ch in channels:
        sim.store.add_many(device, ch, [(start + i / 10, float(i)) for i in range(per_channel)])


def conduit_calls(sim: Any) -> list[Any]:
    return [r for r in sim.requests if r.endpoint and r.endpoint.startswith("conduit")]


async def test_a_window_of_2500_records_is_read_exactly_once(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(30):
        async with open_alphax_simulator([TOKEN]) as sim:
            seed(sim, time.time() - 600, 500, range(1, 6))
            async with start_runtime(load_alphax(config(sim.url))):
                await wait_for(lambda: len(readings()) >= 2500, what="2500 readings")
                calls = len(conduit_calls(sim))
                await wait_for(lambda: len(conduit_calls(sim)) >= calls + 3, what="more polls")
                assert read_back() == in_store(sim) and len(readings()) == 2500
                assert any(r.status == 304 for r in conduit_calls(sim))  # "nothing new"
                # new values (the same value twice in one second counts twice); stamped just
                # ahead of now, as values older than the mark are not read (see _walker)
                now = time.time()
                sim.store.add_many("dev-1", 3, [(now + 0.5, 41.5), (now + 0.5, 41.5)])
                sim.store.add_many("dev-2", 255, [(now + 0.2, 3300.0)])
                await wait_for(lambda: len(readings()) == 2503, what="3 new readings")
                await wait_for(lambda: len(conduit_calls(sim)) >= calls + 6, what="more polls")
                assert read_back() == in_store(sim) and len(readings()) == 2503
            first = conduit_calls(sim)[0]
            assert first.path.startswith("/conduitv6?token=***&fcdt=")  # redacted in the log
            env = next(e for e in received("sink") if e.body.channel == 255)  # type: ignore[union-attr]
            assert env.subject == "dev-2/255" and env.source == "ax"


async def test_the_mark_survives_a_restart(
    load_alphax: Callable[[str], Loaded], start_runtime: Any, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        async with open_alphax_simulator([TOKEN]) as sim:
            seed(sim, time.time() - 300, 400, range(1, 4))  # 1200: over one page
            async with start_runtime(load_alphax(config(sim.url))):
                await wait_for(lambda: len(readings()) == 1200, what="1200 readings")
            marks = json.loads((tmp_path / "state" / "alphax-ax.poll.json").read_text())
            assert marks["version"] == 1 and list(marks["streams"]) == ["v6|*|*"]
            seed(sim, time.time() + 0.2, 5, range(7, 8))  # written while the bridge was down
            async with start_runtime(load_alphax(config(sim.url))):  # a new runtime
                await wait_for(lambda: len(readings()) >= 1205, what="the 5 new readings")
                calls = len(conduit_calls(sim))
                await wait_for(lambda: len(conduit_calls(sim)) >= calls + 3, what="more polls")
            assert read_back() == in_store(sim) and len(readings()) == 1205


async def test_v4_with_device_and_channel_filters(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(30):
        async with open_alphax_simulator([TOKEN]) as sim:
            start = time.time() - 100
            seed(sim, start, 20, range(1, 4), device="d1")
            seed(sim, start, 20, range(1, 4), device="d2")
            cfg = config(sim.url, api="v4", devices=["d1"], channels=[2])
            async with start_runtime(load_alphax(cfg)):
                await wait_for(lambda: len(readings()) == 20, what="20 readings of d1/2")
                calls = len(conduit_calls(sim))
                await wait_for(lambda: len(conduit_calls(sim)) >= calls + 2, what="more polls")
            assert {(r.network_id, r.channel) for r in readings()} == {("d1", 2)}
            assert sorted(r.value for r in readings()) == [float(i) for i in range(20)]
            assert all(r.raw is None for r in readings())  # v4 has no raw value
            assert all(
                "id=d1" in c.path and "ch=2" in c.path and c.endpoint == "conduitv4"
                for c in conduit_calls(sim)
            )


async def test_several_channels_are_filtered_client_side(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(30):
        async with open_alphax_simulator([TOKEN]) as sim:
            seed(sim, time.time() - 100, 10, range(1, 5))
            async with start_runtime(load_alphax(config(sim.url, channels=[1, 3]))):
                await wait_for(lambda: len(readings()) == 20, what="20 readings")
                calls = len(conduit_calls(sim))
                await wait_for(lambda: len(conduit_calls(sim)) >= calls + 2, what="more polls")
            assert Counter(r.channel for r in readings()) == {1: 10, 3: 10}
            assert all("ch=" not in c.path for c in conduit_calls(sim))


async def test_read_auth_failure_is_reported_and_retried_slowly(
    load_alphax: Callable[[str], Loaded], start_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with open_alphax_simulator(["another-token"]) as sim:
            cfg = config(sim.url).replace(
                "backoff_max_s = 0.2", "backoff_max_s = 0.2\nauth_backoff_s = 0.5"
            )
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: rt.statuses["ax"].state == "auth-failed")
                assert "HTTP 401" in rt.statuses["ax"].detail
                await trio.sleep(1.2)
                calls = conduit_calls(sim)
                assert 2 <= len(calls) <= 4 and all(c.status == 401 for c in calls)
                assert rt.statuses["ax"].restarts == 0
    assert "unknown token" in caplog.text and TOKEN not in caplog.text
