"""The NATS sink against a real nats-server: PubAck = delivered, dedup, refusals, outages."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import nats.js.api
import pytest

from broker._envelope import Envelope, Metric, decode
from broker._runtime import Loaded, Runtime
from tests.adapters.nats.conftest import add_stream, stream_count, stream_messages
from tests.conftest import wait_until
from tests.support import core_plugin
from tests.support.nats_server import NatsServer


def metrics(start: int, n: int, subject: str = "room.1 temp") -> list[Envelope]:
    return [
        Envelope(source="src", subject=subject, body=Metric(module="m", name="t", value=float(i)))
        for i in range(start, start + n)
    ]


def sink_config(url: str, extra: str = "", route: str = "") -> str:
    return f"""
[adapters.src]
type = "probe"
[adapters.bus]
type = "nats"
servers = ["{url}"]
[[adapters.bus.streams]]
name = "JUNCTION"
subjects = ["junction.>"]
[adapters.bus.publish]
ack_timeout_s = 1.0
{extra}
[[routes]]
name = "to-bus"
from = "src"
to = "bus"
overflow = "block"
{route}
"""


def routes(rt: Runtime) -> dict[str, dict[str, object]]:
    return rt.snapshot()["routes"]  # type: ignore[no-any-return]


def test_published_envelopes_count_delivered_at_their_puback(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    rt = runtime_of(load_config(sink_config(nats_server.url)))
    sent = metrics(0, 50)
    core_plugin.inject("src", sent)
    wait_until(lambda: routes(rt)["to-bus"]["delivered"] == 50, what="50 PubAcks")
    stored = stream_messages(nats_server.url, "JUNCTION")
    assert len(stored) == 50
    # the subject template: each value one token ('.' and ' ' replaced)
    assert {m.subject for m in stored} == {"junction.metric.room_1_temp"}
    got = [decode(m.data) for m in stored]
    assert [e.body.value for e in got] == [float(i) for i in range(50)]  # type: ignore[union-attr]
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [e.id for e in got]
    assert routes(rt)["to-bus"]["dead_lettered"] == 0


def test_the_same_id_twice_is_stored_once_and_both_count_delivered(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    rt = runtime_of(load_config(sink_config(nats_server.url)))
    batch = metrics(0, 10)
    core_plugin.inject("src", batch)
    wait_until(lambda: routes(rt)["to-bus"]["delivered"] == 10)
    core_plugin.inject("src", batch)  # the same ids again: a republish
    wait_until(lambda: routes(rt)["to-bus"]["delivered"] == 20, what="duplicates acked")
    assert stream_count(nats_server.url, "JUNCTION") == 10


def test_data_the_stream_refuses_is_failed_with_the_reason_the_rest_delivered(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    config = sink_config(nats_server.url).replace(
        'subjects = ["junction.>"]', 'subjects = ["junction.>"]\nmax_msg_size = 400'
    )
    rt = runtime_of(load_config(config))
    small = metrics(0, 3)
    big = [msgspec.structs.replace(e, subject="x" * 500) for e in metrics(3, 2)]
    core_plugin.inject("src", small + big)
    wait_until(
        lambda: (
            routes(rt)["to-bus"]["delivered"] == 3 and routes(rt)["to-bus"]["dead_lettered"] == 2
        ),
        timeout=15,
        what="3 stored, 2 refused",
    )
    assert stream_count(nats_server.url, "JUNCTION") == 3


def test_a_stream_name_mismatch_is_failed_not_retried_forever(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the subject is bound to JUNCTION, the sink expects OTHER: JetStream answers 10060
    rt = runtime_of(load_config(sink_config(nats_server.url, extra='stream = "OTHER"')))
    core_plugin.inject("src", metrics(0, 3))
    wait_until(lambda: routes(rt)["to-bus"]["dead_lettered"] == 3, timeout=15, what="3 refused")
    assert routes(rt)["to-bus"]["delivered"] == 0
    assert "(10060)" in caplog.text
    assert stream_count(nats_server.url, "JUNCTION") == 0


def test_a_subject_no_stream_binds_is_held_and_logged_once_per_interval(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = sink_config(nats_server.url).replace('["junction.>"]', '["elsewhere.>"]')
    rt = runtime_of(load_config(config))
    core_plugin.inject("src", metrics(0, 20))

    def warned() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "junction.adapter.bus" and "no PubAck" in r.getMessage()
        ]

    wait_until(lambda: bool(warned()), timeout=10, what="the trouble logged")
    time.sleep(2.5)  # a second round of republishes (ack_timeout_s 1): held back
    assert len(warned()) == 1, warned()
    assert routes(rt)["to-bus"]["dead_lettered"] == 0 and routes(rt)["to-bus"]["delivered"] == 0


def test_a_config_the_server_cannot_serve_is_one_line_without_a_traceback(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_stream(
        nats_server.url,
        name="JUNCTION",
        subjects=["junction.>"],
        retention=nats.js.api.RetentionPolicy.WORK_QUEUE,
    )
    rt = runtime_of(load_config(sink_config(nats_server.url)))
    wait_until(lambda: "retention" in rt.statuses["bus"].last_error, what="refused")
    crashes = [r for r in caplog.records if "adapter bus crashed:" in r.getMessage()]
    assert crashes and "exists with retention 'workqueue'" in crashes[0].getMessage()
    assert all(r.exc_info is None for r in crashes), "a traceback for a refused config"


def test_an_envelope_over_max_payload_fails_at_once(
    tmp_path: object,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    from pathlib import Path

    from tests.support.nats_server import run_nats

    conf = Path(str(tmp_path)) / "small.conf"
    conf.write_text("max_payload: 1024\n")
    with run_nats(Path(str(tmp_path)) / "small", extra_args=["-c", str(conf)]) as server:
        rt = runtime_of(load_config(sink_config(server.url)))
        big = [msgspec.structs.replace(e, subject="y" * 2000) for e in metrics(0, 1)]
        core_plugin.inject("src", metrics(10, 1) + big)
        wait_until(lambda: routes(rt)["to-bus"]["dead_lettered"] == 1, what="the big one failed")
        wait_until(lambda: routes(rt)["to-bus"]["delivered"] == 1)


def test_a_server_outage_holds_the_data_and_nothing_acknowledged_is_lost(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    rt = runtime_of(load_config(sink_config(nats_server.url)))
    core_plugin.inject("src", metrics(0, 20))
    wait_until(lambda: routes(rt)["to-bus"]["delivered"] == 20)
    nats_server.kill()
    core_plugin.inject("src", metrics(20, 30))  # published into the outage
    wait_until(lambda: rt.statuses["bus"].state != "connected", timeout=10)
    assert routes(rt)["to-bus"]["dead_lettered"] == 0
    nats_server.start()  # same port, same store
    wait_until(lambda: routes(rt)["to-bus"]["delivered"] == 50, timeout=20, what="all 50")
    values = sorted(decode(m.data).body.value for m in stream_messages(nats_server.url, "JUNCTION"))  # type: ignore[union-attr]
    assert values == [float(i) for i in range(50)]
    assert routes(rt)["to-bus"]["dead_lettered"] == 0


def test_a_puback_after_the_router_is_gone_does_not_end_the_shared_loop(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = runtime_of(load_config(sink_config(nats_server.url)))
    wait_until(lambda: rt.statuses["bus"].state == "connected", what="connected")
    nats_server.stop()
    core_plugin.inject("src", metrics(0, 5))
    wait_until(lambda: routes(rt)["to-bus"]["queued"] == 5, what="handed to the sink")
    assert rt.router is not None and rt.loop is not None
    rt.router.stop()  # the router is gone; the PubAcks come after
    nats_server.start()
    wait_until(lambda: stream_count(nats_server.url, "JUNCTION") == 5, timeout=15)
    loop_thread = rt.loop.thread
    wait_until(lambda: "NATS callback" in caplog.text or not loop_thread.is_alive())  # type: ignore[union-attr]
    assert loop_thread is not None and loop_thread.is_alive(), "the shared trio loop ended"
    assert "NATS callback _settle failed" in caplog.text
    rt.stop(grace_s=2)  # the fixture stops only runtimes whose router is alive
    assert not loop_thread.is_alive()
