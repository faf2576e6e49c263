"""The AlphaX adapter publishing over MQTT (QoS 1) through a real mosquitto to the simulator.

The simulator subscribes to the broker on AlphaX's behalf and stores what arrives; a value in
its store went bridge -> mosquitto -> simulator over loopback sockets.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from adapters.alphax.simulator import open_alphax_simulator
from broker.runtime import Loaded
from tests.adapters.alphax.conftest import TOKEN, route, table
from tests.conftest import wait_for
from tests.support.alphax_plugin import stats
from tests.support.core_plugin import received
from tests.support.mosquitto import MosquittoBroker, run_mosquitto

T0 = 1_700_000_000.0


def config(broker_url: str, source: dict[str, Any], **fields: Any) -> str:
    fields.setdefault("tier", "enterprise")
    return (
        table("src", type="channel_source", start_ts=T0, **source)
        + table(
            "ax",
            type="alphax_tracked",
            token=TOKEN,
            transport="mqtt",
            mqtt_url=broker_url,
            password="not-checked-by-mosquitto",
            **fields,
        )
        + route("w", "src", "ax")
    )


def values(sim: Any, device: str, channel: int) -> list[float]:
    return [v for _, v in sim.store.values(device, channel)]


@pytest.mark.parametrize("form", ["bulk", "channel", "v4"])
async def test_each_topic_form_lands_in_the_store(
    form: str,
    mosquitto: MosquittoBroker,
    load_alphax: Callable[[str], Loaded],
    start_runtime: Any,
) -> None:
    devices, channels, ticks = ["dev-a", "dev-b"], [1, 2, 3], 30
    src = {"devices": devices, "channels": channels, "ticks": ticks}
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN], mqtt_url=mosquitto.url) as sim:
            async with start_runtime(
                load_alphax(config(mosquitto.url, src, topic_form=form))
            ) as rt:
                await wait_for(lambda: rt.snapshot()["routes"]["w"]["delivered"] == 180)
                s = stats("ax")
                assert s["acked"] == s["published"] and s["outstanding"] == 0
                assert rt.statuses["ax"].state == "connected"
            # delivered means PUBACKed by mosquitto; the simulator stores right after
            await sim.wait_for(lambda: sim.store.count(token=TOKEN) >= 180)
            for d in devices:
                for c in channels:
                    assert values(sim, d, c) == [float(t) for t in range(ticks)], (d, c)
            per_message = {"bulk": 3, "channel": 1, "v4": 3}[form]
            assert sim.received()["mqtt"] == 180 // per_message
            if form == "bulk":  # the v2 body keeps each write's own timestamp
                assert [t for t, _ in sim.store.values("dev-a", 1)][:2] == [T0, T0 + 0.001]
            if form == "v4":  # the v1 payload always carries the device fields
                assert values(sim, "dev-a", 255) == [0.0] * ticks
            assert sim.store.rejects() == {}


async def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    # persistence: the broker keeps the simulator's queued messages across its restart, so
    # whatever the bridge got a PUBACK for reaches the store
    with run_mosquitto(tmp_path / "mq", persistence=True) as broker:
        src = {"devices": ["dev-r"], "channels": [1, 2], "ticks": 300, "rate": 100.0}
        with trio.fail_after(40):
            async with open_alphax_simulator([TOKEN], mqtt_url=broker.url) as sim:
                cfg = config(broker.url, src, topic_form="channel", ack_timeout_s=20.0)
                async with start_runtime(load_alphax(cfg)) as rt:
                    await wait_for(lambda: sim.store.count() >= 100, what="the stream flowing")
                    await trio.to_thread.run_sync(broker.restart, 0.3)
                    await wait_for(
                        lambda: rt.snapshot()["routes"]["w"]["delivered"] == 600,
                        timeout=25,
                        what="all 600 acknowledged",
                    )
                    s = stats("ax")
                    assert s["connects"] >= 2 and rt.statuses["ax"].reconnects >= 1
                    assert s["ack_timeouts"] == 0 and s["outstanding"] == 0
                    assert rt.snapshot()["routes"]["w"]["failed"] == 0
                await sim.wait_for(lambda: sim.store.count() >= 600, timeout=10)
                duplicates = 0
                for channel in (1, 2):
                    got = Counter(values(sim, "dev-r", channel))
                    assert set(got) == {float(t) for t in range(300)}, f"channel {channel}"
                    duplicates += sum(got.values()) - 300
                # QoS 1 is at least once, on both hops: the bridge re-sends what had no PUBACK
                # when the broker went down (``resent``), and the broker re-delivers to the
                # simulator what it had not seen acknowledged (at most mosquitto's in-flight
                # window of 20 towards one subscriber)
                assert duplicates <= s["resent"] + 20


async def test_inflight_and_queue_limits_are_counted_and_logged(
    mosquitto: MosquittoBroker,
    load_alphax: Callable[[str], Loaded],
    start_runtime: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    src = {"devices": ["dev-q"], "channels": [1, 2, 3, 4], "ticks": 50, "batch": 200}
    cfg = config(mosquitto.url, src, topic_form="channel", max_inflight=5, max_queued=10)
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN], mqtt_url=mosquitto.url) as sim:
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: rt.snapshot()["routes"]["w"]["delivered"] == 200)
                s = stats("ax")
            await sim.wait_for(lambda: sim.store.count() == 200)
    assert s["queue_full"] > 0 and s["inflight_full"] > 0
    assert "max_queued = 10 un-acknowledged messages reached" in caplog.text
    assert "in-flight window of 5 full" in caplog.text


async def _silent_broker(listeners: list[trio.SocketListener], connects: list[int]) -> None:
    """Accepts MQTT connections, answers CONNECT with CONNACK, then never acknowledges."""

    async def handle(stream: trio.SocketStream) -> None:
        first = await stream.receive_some(4096)
        if first and first[0] >> 4 == 1:  # CONNECT
            connects.append(1)
            await stream.send_all(b"\x20\x02\x00\x00")  # CONNACK, accepted
        while await stream.receive_some(65536):
            pass  # PUBLISH packets fall on the floor: no PUBACK

    await trio.serve_listeners(handle, listeners)


async def test_missing_pubacks_are_dead_lettered_after_the_timeout(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            connects: list[int] = []
            nursery.start_soon(_silent_broker, listeners, connects)
            src = {"devices": ["dev-s"], "channels": [1, 2], "ticks": 3}
            cfg = config(f"mqtt://127.0.0.1:{port}", src, ack_timeout_s=0.5)
            async with start_runtime(load_alphax(cfg)) as rt:
                # 3 bulk messages (one per timestamp) of 2 channels each
                await wait_for(lambda: len(received("dlq")) == 6, what="6 dead letters")
                assert rt.snapshot()["routes"]["w"]["failed"] == 6
                s = stats("ax")
                assert s["ack_timeouts"] == 3 and s["outstanding"] == 3  # paho still holds them
            reason = received("dlq")[0].headers["x-dead-letter-reason"]
            assert "no PUBACK" in reason and "0.5 s" in reason and TOKEN not in reason
            assert connects
            nursery.cancel_scope.cancel()


async def test_mqtts_with_a_private_ca(
    tmp_path: Path, load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    """mqtts:// to a mosquitto TLS listener whose certificate a private CA signed."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls = [f"certfile {tmp_path / 'cert.pem'}", f"keyfile {tmp_path / 'key.pem'}"]
    with run_mosquitto(tmp_path / "mq", extra_config=tls) as broker:
        url = f"mqtts://127.0.0.1:{broker.port}"
        src = {"devices": ["dev-t"], "channels": [1, 2], "ticks": 10}
        cfg = config(url, src, ca_file=str(tmp_path / "ca.pem"))
        with trio.fail_after(20):
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: rt.snapshot()["routes"]["w"]["delivered"] == 20)
                s = stats("ax")
                assert s["acked"] == 10 and s["connects"] == 1  # PUBACKs came over TLS
                assert rt.statuses["ax"].detail == f"mqtt 127.0.0.1:{broker.port}"
