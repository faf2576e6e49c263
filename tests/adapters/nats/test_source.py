"""The NATS source against a real nats-server: acked only once settled, redelivered after a
SIGKILL, through a server restart, end to end into the NATS sink; old servers refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from broker._envelope import Envelope, Metric, decode, encode
from broker._runtime import Loaded, Runtime
from tests.adapters.nats.conftest import add_stream, publish_raw, stream_count, stream_messages
from tests.conftest import wait_until
from tests.support import core_plugin
from tests.support.core_plugin import received
from tests.support.mosquitto import free_port
from tests.support.nats_server import NatsServer, find_old_nats_server, run_nats


def envelopes(start: int, n: int) -> list[Envelope]:
    return [
        Envelope(source="far", subject=f"m{i}", body=Metric(module="m", name="t", value=float(i)))
        for i in range(start, start + n)
    ]


def put(url: str, envs: list[Envelope], subject: str = "in.metric") -> None:
    publish_raw(url, [(subject, encode(e), {"Nats-Msg-Id": e.id}) for e in envs])


def consumer_state(url: str, stream: str = "IN", durable: str = "junction") -> dict[str, int]:
    async def read() -> dict[str, int]:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().consumer_info(stream, durable)
            return {"ack_pending": info.num_ack_pending, "pending": info.num_pending}
        finally:
            await nc.close()

    return asyncio.run(read())


SOURCE = """
[adapters.bus]
type = "nats"
servers = ["{url}"]
[[adapters.bus.streams]]
name = "IN"
subjects = ["in.>"]
retention = "workqueue"
[adapters.bus.consume]
stream = "IN"
ack_wait_s = {ack_wait}
batch = 20
fetch_timeout_s = 0.5
"""


def source_config(url: str, ack_wait: float = 30.0) -> str:
    return SOURCE.format(url=url, ack_wait=ack_wait)


def test_a_batch_is_acked_only_once_its_route_settled_it(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    url = nats_server.url
    runtime_of(
        load_config(
            source_config(url)
            + """
[adapters.sink]
type = "collector"
gated = true
[[routes]]
name = "in"
from = "bus"
to = "sink"
overflow = "block"
"""
        )
    )
    wait_until(lambda: _has_consumer(url), what="the durable consumer")
    put(url, envelopes(0, 30))
    wait_until(lambda: consumer_state(url)["ack_pending"] == 30, what="30 fetched, unacked")
    time.sleep(0.5)
    assert consumer_state(url)["ack_pending"] == 30  # the sink holds them: no ack yet
    assert stream_count(url, "IN") == 30
    core_plugin.GATES.setdefault("sink", threading.Event()).set()
    wait_until(lambda: len(received("sink")) == 30)
    wait_until(lambda: stream_count(url, "IN") == 0, what="acked: the work queue is empty")
    assert sorted(e.body.value for e in received("sink")) == [float(i) for i in range(30)]  # type: ignore[union-attr]


def _has_consumer(url: str) -> bool:
    try:
        consumer_state(url)
    except nats.js.errors.NotFoundError:
        return False
    return True


def test_source_to_route_to_sink_end_to_end(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    url = nats_server.url
    add_stream(url, name="OUT", subjects=["out.>"])
    rt = runtime_of(
        load_config(
            source_config(url)
            + f"""
[adapters.out]
type = "nats"
servers = ["{url}"]
[adapters.out.publish]
subject = "out.{{kind}}.{{subject}}"
[[routes]]
name = "relay"
from = "bus"
to = "out"
overflow = "persist"
map = {{ subject = "relayed-{{subject}}" }}
"""
        )
    )
    wait_until(lambda: _has_consumer(url), what="the durable consumer")
    sent = envelopes(0, 200)
    put(url, sent)
    wait_until(lambda: rt.snapshot()["routes"]["relay"]["delivered"] == 200, timeout=20)
    out = stream_messages(url, "OUT")
    assert len(out) == 200
    got = [decode(m.data) for m in out]
    assert {e.id for e in got} == {e.id for e in sent}  # the ids travel (dedup keys)
    assert {m.subject for m in out[:2]} == {"out.metric.relayed-m0", "out.metric.relayed-m1"}
    wait_until(lambda: stream_count(url, "IN") == 0, what="every input acked")


def test_a_server_restart_loses_nothing_acknowledged(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    url = nats_server.url
    rt = runtime_of(
        load_config(
            source_config(url)
            + '[adapters.sink]\ntype = "collector"\n'
            + '[[routes]]\nname = "in"\nfrom = "bus"\nto = "sink"\noverflow = "block"\n'
        )
    )
    wait_until(lambda: _has_consumer(url))
    put(url, envelopes(0, 50))
    wait_until(lambda: len(received("sink")) == 50)
    nats_server.restart()
    put(url, envelopes(50, 50))
    wait_until(lambda: len({e.id for e in received("sink")}) == 100, timeout=20, what="all 100")
    wait_until(lambda: stream_count(url, "IN") == 0, timeout=10, what="all acked")
    assert rt.statuses["bus"].reconnects >= 1


def test_a_sigkilled_instance_s_unacked_envelopes_reach_another_consumer(
    nats_server: NatsServer,
    tmp_path: Path,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    url = nats_server.url
    dead = f"nats://127.0.0.1:{free_port()}"  # nobody listens: the first bridge's sink is down
    first = tmp_path / "first.toml"
    first.write_text(
        f'[junction]\nstate_dir = "{tmp_path / "state1"}"\n'
        + source_config(url, ack_wait=2.0)
        + f"""
[adapters.down]
type = "nats"
servers = ["{dead}"]
[adapters.down.publish]
[[routes]]
name = "held"
from = "bus"
to = "down"
overflow = "block"
"""
    )
    log = (tmp_path / "first.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "run", str(first)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        cwd=os.getcwd(),
    )
    try:
        wait_until(lambda: _has_consumer(url), timeout=20, what="the first bridge's consumer")
        put(url, envelopes(0, 40))
        wait_until(lambda: consumer_state(url)["ack_pending"] == 40, timeout=10)
        time.sleep(0.3)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert stream_count(url, "IN") == 40  # nothing was acked
    killed_at = time.monotonic()
    runtime_of(
        load_config(
            source_config(url, ack_wait=2.0)
            + '[adapters.sink]\ntype = "collector"\n'
            + '[[routes]]\nname = "in"\nfrom = "bus"\nto = "sink"\n'
        )
    )
    wait_until(lambda: len({e.id for e in received("sink")}) == 40, timeout=15, what="all 40")
    assert time.monotonic() - killed_at >= 1.0  # they came back after AckWait, not before
    wait_until(lambda: stream_count(url, "IN") == 0)


def test_a_feature_the_server_lacks_is_refused_in_one_line(
    tmp_path: Path,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    old = find_old_nats_server(before=(2, 11, 0))
    if old is None:
        pytest.skip("no nats-server older than 2.11 here (Debian's nats-server package is 2.9)")
    with run_nats(tmp_path / "old", binary=old) as server:
        rt = runtime_of(
            load_config(
                f"""
[adapters.src]
type = "probe"
[adapters.bus]
type = "nats"
servers = ["{server.url}"]
[[adapters.bus.streams]]
name = "TTL"
subjects = ["junction.>"]
allow_msg_ttl = true
[adapters.bus.publish]
[[routes]]
name = "r"
from = "src"
to = "bus"
"""
            )
        )
        wait_until(lambda: rt.statuses["bus"].last_error != "", timeout=10)
        error = rt.statuses["bus"].last_error
        assert "\n" not in error
        assert (
            "streams[].allow_msg_ttl: per-message TTL needs nats-server 2.11+, the server is 2.9"
            in error
        ), error
        assert _streams(server.url) == []  # refused before anything was created


def _streams(url: str) -> list[Any]:
    async def names() -> list[Any]:
        nc = await nats.connect(url)
        try:
            return [s.config.name for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    return asyncio.run(names())


#: long enough that a loaded machine still marks in progress (every third of it) in time
ACK_WAIT = 2.5


def test_envelopes_held_past_ack_wait_are_kept_in_progress_not_redelivered(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    url = nats_server.url
    runtime_of(
        load_config(
            source_config(url, ack_wait=ACK_WAIT)
            + '[adapters.sink]\ntype = "collector"\ngated = true\n'
            + '[[routes]]\nname = "in"\nfrom = "bus"\nto = "sink"\noverflow = "block"\n'
        )
    )
    wait_until(lambda: _has_consumer(url))
    put(url, envelopes(0, 10))
    wait_until(lambda: consumer_state(url)["ack_pending"] == 10)
    time.sleep(3 * ACK_WAIT)  # three AckWaits: without +WPI the server would redeliver them
    core_plugin.GATES.setdefault("sink", threading.Event()).set()
    wait_until(lambda: stream_count(url, "IN") == 0)
    assert len(received("sink")) == 10  # each once: no redelivery reached the route


def test_junction_check_validates_a_nats_config_without_the_network(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    dead = f"nats://127.0.0.1:{free_port()}"
    path.write_text(
        f'[junction]\nstate_dir = "{tmp_path / "state"}"\n'
        + source_config(dead)
        + '[adapters.bus.publish]\nsubject = "junction.{kind}"\n'
        + '[[routes]]\nname = "loop"\nfrom = "bus"\nto = "bus"\nkind = "metric"\n'
    )
    ok = subprocess.run(
        [sys.executable, "-m", "broker.cli", "check", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    path.write_text(path.read_text().replace("ack_wait_s = 30.0", "ack_wait_s = -1"))
    bad = subprocess.run(
        [sys.executable, "-m", "broker.cli", "check", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "adapters.bus.consume.ack_wait_s: must be > 0 (got -1)" in bad.stderr, bad.stderr


def test_messages_that_are_not_envelopes_are_terminated_and_logged_a_few_times(
    nats_server: NatsServer,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = nats_server.url
    runtime_of(
        load_config(
            source_config(url)
            + """
[adapters.sink]
type = "collector"
[[routes]]
name = "in"
from = "bus"
to = "sink"
"""
        )
    )
    wait_until(lambda: _has_consumer(url), what="the durable consumer")
    hostile = [b"not json", b"[" * 5000, b'{"id": 1}', b"\xff\xfe"] * 25
    publish_raw(url, [("in.x", data, {}) for data in hostile])
    put(url, envelopes(0, 3))
    wait_until(lambda: len(received("sink")) == 3, what="the real envelopes behind them")
    wait_until(lambda: stream_count(url, "IN") == 0, what="every message settled or terminated")
    lines = [r for r in caplog.records if "is not a Junction envelope" in r.getMessage()]
    assert 1 <= len(lines) <= 6, len(lines)  # 100 of them: rate-limited, not one line each
    assert "message 1 on in.x" in lines[0].getMessage()
