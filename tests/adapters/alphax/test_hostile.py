"""The AlphaX poller survives whatever the read API answers (issue 17, item 1).

A 200 whose body the codec refuses (nested past the bound, a number too large, invalid
UTF-8, NaN, text that is not JSON) is counted as malformed and retried after a back-off;
the poller keeps reading, the readings behind it arrive, and one log line covers a burst.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from adapters.alphax.sim import open_alphax_simulator
from broker._runtime import Loaded
from tests.adapters.alphax.conftest import TOKEN, alphax_table, route, table
from tests.adapters.alphax.test_poll import readings, seed
from tests.conftest import wait_for
from tests.support import alphax_plugin

RECORD = '{"val_date":1700000000,"dev_netid":"dev-1","dev_chid":1,"val_raw":VALUE}'

HOSTILE = [
    b"[" * 100_000 + b"]" * 100_000,
    ("[" + "[" * 130 + RECORD.replace("VALUE", "1") + "]" * 131).encode(),
    ("[" + RECORD.replace("VALUE", "1" + "0" * 5000) + "]").encode(),
    ("[" + RECORD.replace("VALUE", "NaN") + "]").encode(),
    ("[" + RECORD.replace("VALUE", "1").replace("dev-1", "SPOT") + "]")
    .encode()
    .replace(b"SPOT", b"\xff\xfe"),
    b'[{"val_date":"x" this is not json',  # a wrong type first, then the syntax error
]


def config(url: str) -> str:
    poll = {"interval_s": 0.1, "settle_s": 0, "start_lookback_s": 3600}
    return (
        alphax_table(
            "ax",
            type="alphax_tracked",
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


async def test_malformed_read_responses_are_counted_and_reading_goes_on(
    load_alphax: Callable[[str], Loaded], start_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(40):
        async with open_alphax_simulator([TOKEN]) as sim:
            seed(sim, time.time() - 100, 20, range(1, 3))
            for body in HOSTILE:
                sim.fail_next(1, 200, endpoints=["conduitv6"], body=body)
            async with start_runtime(load_alphax(config(sim.url))) as rt:
                await wait_for(lambda: len(readings()) == 40, what="the readings after them")
                poll = alphax_plugin.stats("ax")["poll"]
                assert poll["malformed"] == len(HOSTILE) and sim.faults_pending() == 0
                assert rt.statuses["ax"].restarts == 0
    assert sorted(r.value for r in readings()) == sorted([float(i) for i in range(20)] * 2)
    lines = [r.getMessage() for r in caplog.records if "malformed responses" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "more than 128 levels" in lines[0] and TOKEN not in caplog.text


async def test_a_gzip_bomb_read_response_is_given_up_on_not_held() -> None:
    """A small gzip body inflating past MAX_RESPONSE_BYTES is refused while it streams, so a
    hostile read server cannot make the poller hold gigabytes (review of issue 17)."""
    import gzip

    import httpx

    from adapters.alphax._codec_base import MAX_RESPONSE_BYTES
    from adapters.alphax._http import ResponseTooLarge, get_records
    from adapters.alphax.config import AlphaXConfig

    bomb = gzip.compress(b"[" + b" " * (MAX_RESPONSE_BYTES * 2) + b"]", compresslevel=9)

    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)  # the request head
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(bomb)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(head.encode() + bomb)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, serve, listeners)
            cfg = AlphaXConfig(
                type="alphax", token="alphax-token-1", read_url=f"http://127.0.0.1:{port}"
            )
            async with httpx.AsyncClient() as client:
                with pytest.raises(ResponseTooLarge, match="over 16,777,216 bytes"):
                    await get_records(client, cfg, "v6", {"limit": 1})
            nursery.cancel_scope.cancel()
