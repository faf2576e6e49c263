"""The AlphaX adapter publishing over MQTT (QoS 1) through a real mosquitto to the simulator.

The simulator subscribes to the broker on AlphaX's behalf and stores what arrives; a value in
its store went bridge -> mosquitto -> simulator over loopback sockets.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from adapters.alphax import codec
from adapters.alphax._mqtt import Acks, MqttWriter, _Pending
from adapters.alphax._uplinks import Message
from adapters.alphax.config import AlphaXConfig, MqttWrite
from adapters.alphax.sim import open_alphax_simulator
from broker._adapter import AdapterStatus
from broker._runtime import Loaded
from tests.adapters.alphax.conftest import TOKEN, alphax_table, route, table
from tests.conftest import wait_for
from tests.support.alphax_plugin import stats
from tests.support.core_plugin import received
from tests.support.mosquitto import MosquittoBroker, run_mosquitto

T0 = 1_700_000_000.0


def config(broker_url: str, source: dict[str, Any], **fields: Any) -> str:
    fields.setdefault("tier", "enterprise")
    fields.setdefault("password", "not-checked-by-mosquitto")
    return (
        table("src", type="channel_source", start_ts=T0, **source)
        + alphax_table(
            "ax",
            "mqtt",
            type="alphax_tracked",
            token=TOKEN,
            url=broker_url,
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
                    assert rt.snapshot()["routes"]["w"]["dead_lettered"] == 0
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


async def test_the_writer_keeps_the_inflight_window_itself(
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
    # the window is the writer's: never more than 5 messages await their PUBACK
    assert s["inflight_full"] > 0
    assert s["max_outstanding"] == 5
    assert "in-flight window of 5 full: waiting for PUBACKs" in caplog.text


def _packet_kinds(buf: bytes) -> tuple[list[int], bytes]:
    """The types of the complete MQTT packets at the start of ``buf``, and the rest."""
    packets, rest = _packets(buf)
    return [kind for kind, _ in packets], rest


CONNECT, PUBLISH = 1, 3


async def _silent_broker(listeners: list[trio.SocketListener], seen: Counter[int]) -> None:
    """Answers CONNECT with CONNACK, then never acknowledges; counts packets by type."""

    async def handle(stream: trio.SocketStream) -> None:
        rest = b""
        while data := await stream.receive_some(65536):
            kinds, rest = _packet_kinds(rest + data)
            for kind in kinds:
                seen[kind] += 1
                if kind == CONNECT:
                    await stream.send_all(b"\x20\x02\x00\x00")  # CONNACK, accepted

    await trio.serve_listeners(handle, listeners)


@asynccontextmanager
async def open_silent_broker() -> AsyncIterator[tuple[str, Counter[int]]]:
    """A ``_silent_broker`` on a free loopback port: its URL and its packet counts."""
    seen: Counter[int] = Counter()
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(_silent_broker, listeners, seen)
        yield f"mqtt://127.0.0.1:{port}", seen
        nursery.cancel_scope.cancel()


async def test_missing_pubacks_are_dead_lettered_after_the_timeout(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_silent_broker() as (url, seen):
            src = {"devices": ["dev-s"], "channels": [1, 2], "ticks": 3}
            cfg = config(url, src, ack_timeout_s=0.5)
            async with start_runtime(load_alphax(cfg)) as rt:
                # 3 bulk messages (one per timestamp) of 2 channels each
                await wait_for(lambda: len(received("dlq")) == 6, what="6 dead letters")
                assert rt.snapshot()["routes"]["w"]["dead_lettered"] == 6
                s = stats("ax")
                assert s["ack_timeouts"] == 3 and s["outstanding"] == 0  # given up for good
            reason = received("dlq")[0].headers["x-dead-letter-reason"]
            assert "no PUBACK" in reason and "0.5 s" in reason and TOKEN not in reason
            assert seen[CONNECT]


async def test_a_given_up_message_is_not_sent_again_after_a_reconnect(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    """paho kept a given-up message and re-sent it (DUP) after every reconnect: a broker that
    drops the connection on it got it in a loop (issue 17, item 10)."""
    per_connection: list[Counter[int]] = []
    streams: list[trio.SocketStream] = []

    async def handle(stream: trio.SocketStream) -> None:
        seen: Counter[int] = Counter()
        per_connection.append(seen)
        streams.append(stream)
        rest = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(65536):
                kinds, rest = _packet_kinds(rest + data)
                for kind in kinds:
                    seen[kind] += 1
                    if kind == CONNECT:
                        await stream.send_all(b"\x20\x02\x00\x00")  # CONNACK, accepted

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            url = f"mqtt://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            src = {"devices": ["dev-g"], "channels": [1], "ticks": 3}
            cfg = config(url, src, ack_timeout_s=0.5, reconnect_min_s=1, reconnect_max_s=1)
            async with start_runtime(load_alphax(cfg)):
                await wait_for(lambda: len(received("dlq")) == 3, what="3 given up")
                assert per_connection[0][PUBLISH] == 3
                for stream in list(streams):
                    await stream.aclose()  # the broker drops the connection
                await wait_for(lambda: len(per_connection) >= 2, what="a reconnect")
                await wait_for(lambda: per_connection[1][CONNECT] == 1, what="reconnected")
                await trio.sleep(1.0)  # paho re-sends what it holds right after CONNACK
                assert per_connection[1][PUBLISH] == 0
                assert stats("ax")["outstanding"] == 0  # nothing held for them any more
            nursery.cancel_scope.cancel()


async def test_the_next_batch_is_published_while_the_last_one_waits_for_pubacks(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    # six writes 50 ms apart, so each reaches the adapter as its own delivery; the broker
    # acknowledges none of them. A delivery that waited for its PUBACKs would publish the
    # second write only once the first was given up on (a dead letter)
    with trio.fail_after(20):
        async with open_silent_broker() as (url, seen):
            src = {"devices": ["dev-p"], "channels": [1], "ticks": 6, "rate": 20.0}
            cfg = config(url, src, ack_timeout_s=3.0)
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(lambda: seen[PUBLISH] == 6, what="6 PUBLISH packets")
                assert received("dlq") == []  # none given up on yet: all six went out at once
                # paho writes inside publish(); the adapter records the message just after,
                # on its own thread: the broker may have counted the sixth a moment before
                await wait_for(lambda: stats("ax")["outstanding"] == 6, what="6 outstanding")
                assert rt.snapshot()["routes"]["w"]["delivered"] == 0
                await wait_for(lambda: len(received("dlq")) == 6, what="6 dead letters")


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


# --- broken peers: no CONNACK, a half-open link, refused credentials, closing mid-connect ---


class _Gate:
    """A TCP relay on 127.0.0.1 (port 0) in front of a broker, playing a broken network.

    ``mode`` decides what a new connection gets: ``"silent"`` accepts and reads but never
    answers (a broker that never sends CONNACK), ``"relay"`` pipes both ways to the broker on
    port ``target``. ``freeze()`` makes the connections relayed so far stop reading and
    forwarding while their sockets stay open: a half-open link that only MQTT keepalive can
    detect. ``accepted`` counts TCP connections, i.e. the client's connect attempts; ``open``
    those the client has not closed yet (a relayed one also ends when the broker closes it).
    """

    def __init__(self, target: int, mode: str = "silent") -> None:
        self.target = target
        self.mode = mode
        self.accepted = 0
        self.open = 0  # client connections not yet closed
        self.port = 0
        self._frozen_upto = 0  # connections numbered up to this one are frozen

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self._frozen_upto = self.accepted

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self.open += 1
        try:
            await self._relay(stream, self.accepted)
        finally:
            self.open -= 1

    async def _relay(self, stream: trio.SocketStream, number: int) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            async with stream:
                if self.mode == "silent":
                    while await stream.receive_some(65536):
                        pass  # CONNECT (and whatever follows) falls on the floor
                    return
                async with await trio.open_tcp_stream("127.0.0.1", self.target) as upstream:
                    async with trio.open_nursery() as nursery:
                        for src, dst in ((stream, upstream), (upstream, stream)):
                            nursery.start_soon(self._pump, src, dst, number, nursery.cancel_scope)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, number: int, done: trio.CancelScope
    ) -> None:
        try:
            while number > self._frozen_upto:
                data = await src.receive_some(65536)
                if not data or number <= self._frozen_upto:
                    break
                await dst.send_all(data)
            while number <= self._frozen_upto:
                await trio.sleep_forever()  # frozen: neither read nor write, socket kept open
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            done.cancel()


@contextlib.asynccontextmanager
async def open_gate(target: int, mode: str = "silent") -> Any:
    async with trio.open_nursery() as nursery:
        gate = _Gate(target, mode)
        await nursery.start(gate.serve)
        yield gate
        nursery.cancel_scope.cancel()


def _busy_threads(before: set[threading.Thread]) -> list[str]:
    """Threads doing something, except those in ``before``: an idle trio worker (kept in
    trio's cache, named ``Trio thread N`` between jobs, maybe reused later) does not count."""
    return sorted(
        t.name
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread ")
    )


def _busy_now() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.name.startswith("Trio thread ")}


async def test_a_broker_that_never_sends_connack_is_retried_then_delivered(
    mosquitto: MosquittoBroker, load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    # the gate accepts TCP and swallows CONNECT; once it relays, the same client reaches
    # mosquitto and the writes published meanwhile arrive
    src = {"devices": ["dev-c"], "channels": [1, 2], "ticks": 5}
    with trio.fail_after(40):
        async with open_gate(mosquitto.port) as gate:
            cfg = config(gate.url, src, topic_form="channel", keepalive_s=1, reconnect_max_s=2)
            async with open_alphax_simulator([TOKEN], mqtt_url=mosquitto.url) as sim:
                async with start_runtime(load_alphax(cfg)) as rt:
                    status = rt.statuses["ax"]
                    await wait_for(
                        lambda: gate.accepted >= 2 and "CONNACK" in status.detail,
                        timeout=15,
                        what="a retry, and a status naming the missing CONNACK",
                    )
                    assert status.state != "connected", status
                    assert rt.snapshot()["routes"]["w"]["delivered"] == 0
                    assert stats("ax")["connects"] == 0
                    gate.mode = "relay"
                    await wait_for(
                        lambda: rt.snapshot()["routes"]["w"]["delivered"] == 10,
                        timeout=15,
                        what="all 10 delivered once the broker answers",
                    )
                    s = stats("ax")
                    assert s["connects"] == 1 and s["outstanding"] == 0
                    assert rt.snapshot()["routes"]["w"]["dead_lettered"] == 0
                    assert status.state == "connected"
                await sim.wait_for(lambda: sim.store.count() >= 10)
                for channel in (1, 2):
                    assert values(sim, "dev-c", channel) == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_a_half_open_link_is_detected_by_keepalive_and_nothing_is_lost(
    mosquitto: MosquittoBroker, load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    # mid-stream the link goes silent both ways with the sockets open (no FIN, no RST): only
    # keepalive (1 s) can tell. The writer must reconnect and re-send what had no PUBACK.
    src = {"devices": ["dev-h"], "channels": [1, 2], "ticks": 300, "rate": 100.0}
    with trio.fail_after(60):
        async with open_gate(mosquitto.port, mode="relay") as gate:
            cfg = config(gate.url, src, topic_form="channel", keepalive_s=1, ack_timeout_s=20.0)
            async with open_alphax_simulator([TOKEN], mqtt_url=mosquitto.url) as sim:
                async with start_runtime(load_alphax(cfg)) as rt:
                    await wait_for(lambda: sim.store.count() >= 100, what="the stream flowing")
                    gate.freeze()
                    frozen_at = rt.snapshot()["routes"]["w"]["delivered"]
                    await wait_for(
                        lambda: gate.accepted >= 2, timeout=20, what="a reconnect after keepalive"
                    )
                    await wait_for(
                        lambda: rt.snapshot()["routes"]["w"]["delivered"] == 600,
                        timeout=30,
                        what="all 600 acknowledged",
                    )
                    s = stats("ax")
                    assert frozen_at < 600, "the link froze after the stream ended"
                    assert s["connects"] >= 2 and rt.statuses["ax"].reconnects >= 1
                    assert s["resent"] > 0  # what the frozen link swallowed went out again
                    assert s["ack_timeouts"] == 0 and s["outstanding"] == 0
                    assert rt.snapshot()["routes"]["w"]["dead_lettered"] == 0
                await sim.wait_for(lambda: sim.store.count() >= 600, timeout=10)
                for channel in (1, 2):
                    got = Counter(values(sim, "dev-h", channel))
                    assert set(got) == {float(t) for t in range(300)}, f"channel {channel}"


def _password_file(path: Path, user: str, password: str) -> Path:
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd not found (Debian package `mosquitto`)")
    subprocess.run([passwd, "-b", "-c", str(path), user, password], check=True, timeout=30)
    path.chmod(0o600)
    return path


async def test_refused_credentials_back_off_and_recover_when_accepted(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    load_alphax: Callable[[str], Loaded],
    start_runtime: Any,
) -> None:
    # a broker that checks passwords refuses ours (CONNACK "not authorized"): status
    # auth-failed with the reason, attempts backed off (no hot loop), data kept; once the
    # gate leads to a broker that takes us, the kept writes are delivered
    pw = _password_file(tmp_path / "passwd", TOKEN, "the-right-one")
    strict = ["allow_anonymous false", f"password_file {pw}"]
    src = {"devices": ["dev-p"], "channels": [1], "ticks": 4}
    with run_mosquitto(tmp_path / "strict", extra_config=strict) as checking, trio.fail_after(40):
        async with open_gate(checking.port, mode="relay") as gate:
            cfg = config(gate.url, src, topic_form="channel", password="a-wrong-one")
            async with start_runtime(load_alphax(cfg)) as rt:
                status = rt.statuses["ax"]
                await wait_for(lambda: status.state == "auth-failed", what="auth-failed")
                first = gate.accepted
                await trio.sleep(2.5)
                attempts = gate.accepted - first
                # reconnect_min_s = 1 doubling: about 2 in 2.5 s; a hot loop makes hundreds
                assert 1 <= attempts <= 4, f"{attempts} connect attempts in 2.5 s"
                assert status.state == "auth-failed", status
                assert "not authorized" in status.detail.lower(), status.detail
                assert "a-wrong-one" not in status.detail
                assert rt.snapshot()["routes"]["w"]["delivered"] == 0
                assert rt.snapshot()["routes"]["w"]["dead_lettered"] == 0
                assert stats("ax")["connects"] == 0
                gate.target = mosquitto.port  # an anonymous broker: the next attempt succeeds
                await wait_for(
                    lambda: rt.snapshot()["routes"]["w"]["delivered"] == 4,
                    timeout=15,
                    what="the kept writes delivered",
                )
                assert status.state == "connected"
                assert received("dlq") == []


def _bare_writer(url: str, **fields: Any) -> tuple[MqttWriter, AdapterStatus]:
    mqtt = MqttWrite(url=url, **fields)
    cfg = AlphaXConfig(type="alphax", token=TOKEN, write=mqtt)
    status = AdapterStatus(name="ax", type="alphax")
    return MqttWriter(cfg, mqtt, "ax", status, logging.getLogger("test.alphax.mqtt")), status


@pytest.mark.parametrize("sending", [False, True])
async def test_aclose_while_connecting_to_a_silent_broker(sending: bool) -> None:
    # CONNECT is written and never answered; aclose must not wait for the CONNACK deadline
    # (keepalive 30 s), raise, or leave a thread working on the client
    before = _busy_now()
    with trio.fail_after(20):
        async with open_gate(0, mode="silent") as gate:
            writer, status = _bare_writer(gate.url)
            async with trio.open_nursery() as nursery:
                if sending:  # a delivery waiting for the connection, cancelled first
                    message = Message(codec.channel_topic(TOKEN, "dev-x", 1), b"1", ())
                    nursery.start_soon(writer.publish, [message])
                writer.start()
                await wait_for(lambda: gate.accepted >= 1, what="the connect attempt")
                await trio.sleep(0.2)  # CONNECT on its way, CONNACK awaited
                assert status.state != "connected"
                nursery.cancel_scope.cancel()
            with trio.fail_after(5):
                await writer.aclose()
            await wait_for(lambda: gate.open == 0, timeout=5, what="the client's socket closed")
    await wait_for(lambda: not _busy_threads(before), timeout=5, what="no busy thread left")


async def test_aclose_while_the_tcp_connect_hangs() -> None:
    # a listener whose accept queue is full drops our SYN: the TCP connect itself hangs (until
    # paho's connect timeout, 5 s). aclose must still return, raise nothing, and leave no
    # thread working on the client.
    before = _busy_now()
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # takes the only place in the accept queue
        with trio.fail_after(20):
            writer, status = _bare_writer(f"mqtt://127.0.0.1:{port}")
            writer.start()
            await wait_for(lambda: bool(_busy_threads(before)), what="a thread connecting")
            await trio.sleep(0.2)
            assert status.state != "connected"
            await writer.aclose()
    await wait_for(lambda: not _busy_threads(before), timeout=5, what="no busy thread left")


async def test_a_dead_connection_driver_fails_the_waiting_publish_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver task dying (a bug of ours or paho's) must surface: the delivery waiting for
    the link raises, so the adapter crashes and its actor builds a new one with a new client,
    rather than every publish waiting forever (issue 17, item 10: the driver-death path)."""
    with trio.fail_after(20):
        async with open_silent_broker() as (url, _seen):
            writer, status = _bare_writer(url)

            async def broken_connect() -> bool:
                raise RuntimeError("injected: paho state no one expected")

            monkeypatch.setattr(writer, "_connect_once", broken_connect)  # fault injection
            message = Message(codec.channel_topic(TOKEN, "dev-x", 1), b"1", ())
            with pytest.raises(RuntimeError, match="the MQTT connection driver failed"):
                await writer.publish([message])
            assert status.state == "crashed"
            assert "the connection driver failed" in status.detail
            await writer.aclose()  # and closing after it is quiet


def _packets(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole MQTT packets in ``buf`` as (type, body), and the bytes left over."""
    found: list[tuple[int, bytes]] = []
    while True:
        size, shift, i = 0, 0, 1
        while i < len(buf):
            size |= (buf[i] & 0x7F) << shift
            if not buf[i] & 0x80:
                break
            shift, i = shift + 7, i + 1
        else:
            return found, buf
        end = i + 1 + size
        if len(buf) < end:
            return found, buf
        found.append((buf[0] >> 4, buf[i + 1 : end]))
        buf = buf[end:]


async def test_a_connection_reset_under_publishing_loses_nothing(
    load_alphax: Callable[[str], Loaded], start_runtime: Any
) -> None:
    """The CONN_LOST path: the broker resets the connection (RST) at the first PUBLISH, so
    the publishes behind it meet a dead socket (paho's ``MQTT_ERR_CONN_LOST``, or its reader
    noticing first). The messages stay with the client and go out again after the reconnect:
    all delivered, none dead-lettered (issue 17, item 10)."""
    import struct

    connections: list[Counter[int]] = []
    acked: set[bytes] = set()

    async def handle(stream: trio.SocketStream) -> None:
        seen: Counter[int] = Counter()
        connections.append(seen)
        first = len(connections) == 1
        rest = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(65536):
                packets, rest = _packets(rest + data)
                for kind, body in packets:
                    seen[kind] += 1
                    if kind == CONNECT:
                        await stream.send_all(b"\x20\x02\x00\x00")
                    elif kind == PUBLISH and first:  # reset, do not close politely
                        stream.socket.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        await stream.aclose()
                        return
                    elif kind == PUBLISH:
                        (topic_len,) = struct.unpack(">H", body[:2])
                        mid = body[2 + topic_len : 4 + topic_len]
                        acked.add(body[4 + topic_len :])
                        await stream.send_all(b"\x40\x02" + mid)  # PUBACK
                    elif kind == 12:  # PINGREQ
                        await stream.send_all(b"\xd0\x00")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            url = f"mqtt://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            src = {"devices": ["dev-l"], "channels": [1], "ticks": 20}
            cfg = config(url, src, topic_form="channel", reconnect_min_s=1, reconnect_max_s=1)
            async with start_runtime(load_alphax(cfg)) as rt:
                await wait_for(
                    lambda: rt.snapshot()["routes"]["w"]["delivered"] == 20,
                    timeout=20,
                    what="all 20 acknowledged after the reset",
                )
                assert len(connections) >= 2 and connections[0][PUBLISH] >= 1
                assert received("dlq") == [] and rt.snapshot()["routes"]["w"]["dead_lettered"] == 0
                assert stats("ax")["outstanding"] == 0
            assert len(acked) == 20  # every value reached the broker that acknowledged
            nursery.cancel_scope.cancel()


def test_message_ids_wrap_and_skip_those_still_awaiting_their_puback() -> None:
    writer, _status = _bare_writer("mqtt://127.0.0.1:1")
    held = Message(codec.channel_topic(TOKEN, "dev-m", 1), b"1", ())
    batch = Acks(remaining=3)
    for mid in (65535, 1, 2):
        writer._pending[mid] = _Pending(held, b"t", batch)
    writer._last_mid = 65533
    assert writer._next_mid() == 65534
    assert writer._next_mid() == 3  # 65535, 1 and 2 are still out
    del writer._pending[1]
    writer._last_mid = 65535
    assert writer._next_mid() == 1


async def test_a_driver_that_dies_with_nothing_to_publish_still_crashes_the_adapter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No delivery waits, yet the adapter must hear of a dead driver (``watch``): otherwise
    the next batch would be the first to find out."""
    writer, status = _bare_writer("mqtt://127.0.0.1:1")

    async def broken_connect() -> bool:
        raise RuntimeError("injected: paho state no one expected")

    monkeypatch.setattr(writer, "_connect_once", broken_connect)  # fault injection
    with trio.fail_after(10):
        writer.start()
        with pytest.raises(RuntimeError, match="the MQTT connection driver failed"):
            await writer.watch()
    assert status.state == "crashed"
    await writer.aclose()


async def test_a_publish_cancelled_while_waiting_for_room_frees_its_window_slots() -> None:
    """The first message was written, the second waited for room when the delivery was
    cancelled: the written one is still given up on at its ack timeout, so the window
    does not stay full for good."""
    with trio.fail_after(20):
        async with open_silent_broker() as (url, seen):
            writer, _status = _bare_writer(url, max_inflight=1, ack_timeout_s=0.5)
            one = Message(codec.channel_topic(TOKEN, "dev-c", 1), b"1", ())
            two = Message(codec.channel_topic(TOKEN, "dev-c", 2), b"2", ())
            with trio.move_on_after(0.3):
                await writer.publish([one, two])
            assert seen[PUBLISH] == 1 and writer.outstanding() == 1
            await wait_for(lambda: writer.outstanding() == 0, what="the written one given up")
            assert writer.stats()["ack_timeouts"] == 1
            acks, refused = await writer.publish([two])  # the window has room again
            assert refused == [] and not acks.settled
            await wait_for(lambda: seen[PUBLISH] == 2, what="the next publish on the wire")
            await writer.aclose()


async def test_publishing_nothing_waits_for_nothing() -> None:
    """A batch whose every envelope was unencodable publishes no message: nothing is left
    to time out (which logged '0 MQTT messages: ... given up')."""
    writer, _status = _bare_writer("mqtt://127.0.0.1:1")
    acks, refused = await writer.publish([])
    assert acks.settled and refused == [] and not writer._open
    settled: list[object] = []
    writer.when_settled(acks, settled.append)
    assert settled == [[]]


def test_a_late_puback_for_a_given_up_message_settles_no_later_one() -> None:
    writer, _status = _bare_writer("mqtt://127.0.0.1:1")
    held = Message(codec.channel_topic(TOKEN, "dev-m", 1), b"1", ())
    old = Acks(remaining=2)
    writer._pending = {7: _Pending(held, b"t", old), 8: _Pending(held, b"t", old)}
    writer._open[old] = None
    writer._last_mid = 6
    writer._give_up(old)
    assert old.settled and writer.outstanding() == 0
    writer._last_mid = 6  # as if the ids had wrapped round to them again
    new = Acks(remaining=1)
    mid = writer._next_mid()
    assert mid == 9  # 7 and 8 may still be acknowledged on this connection
    writer._pending[mid] = _Pending(held, b"t", new)
    writer._on_puback(7)  # the broker's late answer to the given-up message
    assert writer.stray_acks == 1 and not new.settled
    writer._connected()  # a new connection: no PUBACK of the old one can come now
    writer._last_mid = 6
    assert writer._next_mid() == 7
