"""The AlphaX adapter over UDP and TCP (best effort) to the simulator's listeners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from adapters.alphax.sim import open_alphax_simulator
from broker._runtime import Loaded
from tests.adapters.alphax.conftest import TOKEN, alphax_table, route, table
from tests.conftest import wait_for
from tests.support.alphax_plugin import stats
from tests.support.core_plugin import received

T0 = 1_700_000_000.0


def config(transport: str, port: int, source: dict[str, Any], **fields: Any) -> str:
    return (
        table("src", type="channel_source", start_ts=T0, **source)
        + alphax_table(
            "ax",
            transport,
            type="alphax_tracked",
            token=TOKEN,
            host="127.0.0.1",
            port=port,
            **fields,
        )
        + route("w", "src", "ax")
    )


async def test_udp_datagrams_are_split_by_channel_and_counted(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    channels = list(range(1, 33))
    # one v2 uplink of 32 channels is about 1,200 bytes: over a 500-byte datagram limit
    src = {"devices": ["a-device-id"], "channels": channels, "ticks": 8, "value_offset": 0.123456}
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN]) as sim:
            assert sim.udp_port is not None
            cfg = config("udp", sim.udp_port, src, max_datagram_bytes=500)
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: rt.snapshot()["routes"]["w"]["delivered"] == 256)
                await sim.wait_for(lambda: sim.store.count() == 256)
                s = stats("ax")
                assert rt.statuses["ax"].state == "sending"
            assert s["sent_values"] == 256 and s["errors"] == 0
            assert s["sent_docs"] == sim.received()["udp"] >= 3 * 8  # split: 3+ per tick
            assert s["sent_bytes"] <= 500 * s["sent_docs"]
            for channel in channels:
                got = [v for _, v in sim.store.values("a-device-id", channel)]
                assert got == [t + 0.123456 for t in range(8)]
            assert sim.store.rejects() == {}


async def test_tcp_lines_v1_and_v2(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    src = {"devices": ["d1", "d2"], "channels": [1, 2, 9], "ticks": 20}
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN]) as sim:
            assert sim.tcp_port is not None
            cfg = config("tcp", sim.tcp_port, src, uplink="v1")
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: rt.snapshot()["routes"]["w"]["delivered"] == 120)
                # lines are read as they come: wait for the last of them
                await sim.wait_for(lambda: sim.received().get("tcp") == 80)  # 40 v1 + 40 v2
                s = stats("ax")
                assert rt.statuses["ax"].state == "connected"
            assert s["sent_docs"] == 80 and s["sent_values"] == 120 and s["errors"] == 0
            for device in ("d1", "d2"):
                for channel in (1, 2, 9):
                    got = [v for _, v in sim.store.values(device, channel)]
                    assert got == [float(t) for t in range(20)], (device, channel)
            assert received("dlq") == []


async def test_tcp_waits_for_an_unreachable_server_and_keeps_the_data(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    """Nothing listens at first: the writes wait (reconnecting) and go once a server is up."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # the port is now closed: connections are refused
    lines: list[bytes] = []

    async def server(stream: trio.SocketStream) -> None:
        buffer = b""
        while chunk := await stream.receive_some(65536):
            *done, buffer = (buffer + chunk).split(b"\n")
            lines.extend(done)

    src = {"devices": ["d1"], "channels": [1], "ticks": 5}
    cfg = config("tcp", port, src, backoff_initial_s=0.05, backoff_max_s=0.2)
    with trio.fail_after(20):
        async with start_runtime(load_alphax(cfg)) as rt:
            await wait_for(lambda: rt.statuses["ax"].state == "disconnected", what="refused")
            assert "retry in" in rt.statuses["ax"].detail
            assert rt.snapshot()["routes"]["w"]["delivered"] == 0
            async with trio.open_nursery() as nursery:
                new = await trio.open_tcp_listeners(port, host="127.0.0.1")
                nursery.start_soon(trio.serve_listeners, server, new)
                await wait_for(lambda: rt.snapshot()["routes"]["w"]["delivered"] == 5)
                await wait_for(lambda: len(lines) == 5, what="5 lines at the server")
                assert stats("ax")["errors"] >= 1
                assert rt.statuses["ax"].state == "connected"
                nursery.cancel_scope.cancel()
    assert all(b'"networkId":"d1"' in line for line in lines)
