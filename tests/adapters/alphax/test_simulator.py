"""The AlphaX simulator over real sockets: HTTP via httpx, UDP/TCP via trio sockets, MQTT via
paho through a real mosquitto broker."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion

from adapters.alphax import codec
from adapters.alphax.sim import TokenSpec, open_alphax_simulator
from tests.support.mosquitto import MosquittoBroker

TOKEN = "tok-4f9a2c"
T0 = 1_700_000_000  # epoch seconds of the pre-filled windows
SEED_HTTP_HEX = "0A10010001000000A00FA00F0000"
REPO = Path(__file__).resolve().parents[3]
Params = dict[str, str | int | float]


class ManualClock:
    """A clock the test moves by hand (drives the simulator's rate limits)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def v1_doc(data: str = "0A10010001000000A00F0000", token: str = TOKEN, ts: int | None = None,
           network_id: str = "dev-1") -> dict[str, Any]:  # fmt: skip
    return {"token": token, "networkId": network_id, "timestamp": ts or T0 * 1000, "data": data}


def v2_doc(values: dict[int, float], token: str = TOKEN, ts: int | None = None,
           network_id: str = "dev-2") -> dict[str, Any]:  # fmt: skip
    data = [{"channelId": ch, "value": v} for ch, v in values.items()]
    return {"token": token, "networkId": network_id, "timestamp": ts or T0 * 1000, "data": data}


def error_of(response: httpx.Response) -> codec.ErrorBody:
    return codec.decode_error_body(response.content)


# -- HTTP posts ----------------------------------------------------------------------------------


async def test_v1_and_v2_posts_land_in_the_store() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN]) as sim, httpx.AsyncClient() as client:
            r1 = await client.post(f"{sim.http_url}/post/v1", json=v1_doc())
            assert r1.status_code == 200, r1.text
            values = {ch: ch * 1.5 for ch in range(1, 33)} | {255: 3.976}
            r2 = await client.post(f"{sim.url}/post/v2", json=v2_doc(values, ts=T0 * 1000 + 250))
            assert r2.status_code == 200, r2.text
            assert json.loads(r2.content)["stored"] == 33
            assert sim.store.values("dev-1", 1) == [(T0, 4.0)]
            assert sim.store.values("dev-1", 255) == [(T0, 4106.0)]
            assert sim.store.values("dev-1", 254) == [(T0, 1.0)]
            assert sim.store.values("dev-2", 32) == [(T0 + 0.25, 48.0)]
            assert sim.store.values("dev-2", 255) == [(T0 + 0.25, 3.976)]
            assert sim.store.count() == 5 + 33
            assert sim.received() == {"http": 2}


async def test_malformed_uplinks_get_400_naming_the_problem() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN]) as sim, httpx.AsyncClient() as client:
            r = await client.post(f"{sim.url}/post/v1", json=v1_doc(SEED_HTTP_HEX))
            assert r.status_code == 400
            assert "not a multiple of 4" in error_of(r).error
            assert error_of(r).code == 400
            r = await client.post(f"{sim.url}/post/v2", json=v2_doc({40: 1.0}))
            assert r.status_code == 400 and "channel 40" in error_of(r).error
            r = await client.post(f"{sim.url}/post/v2", content=b"{nope", headers=_json_headers())
            assert r.status_code == 400
            r = await client.post(f"{sim.url}/post/v2", content=b"{}", headers={})
            assert r.status_code == 400 and "Content-Type" in error_of(r).error
            assert sim.store.count() == 0
            rejects = sim.store.rejects()
            assert rejects["PayloadLengthError"] == 1
            assert rejects["ChannelRangeError"] == 1
            assert rejects["MalformedJsonError"] == 1


def _json_headers(**extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", **extra}


async def test_gzip_request_bodies_and_limits() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN], max_body_bytes=4000) as sim:
            async with httpx.AsyncClient() as client:
                body = json.dumps(v2_doc({1: 1.25, 2: -2.5})).encode()
                r = await client.post(
                    f"{sim.url}/post/v2",
                    content=gzip.compress(body),
                    headers=_json_headers(**{"Content-Encoding": "gzip"}),
                )
                assert r.status_code == 200, r.text
                assert sim.store.values("dev-2", 2) == [(T0, -2.5)]
                assert sim.requests[-1].request_encoding == "gzip"

                big = json.dumps(v1_doc(network_id="x" * 5000)).encode()
                r = await client.post(f"{sim.url}/post/v1", content=big, headers=_json_headers())
                assert r.status_code == 413 and "4000" in error_of(r).error
                bomb = gzip.compress(b" " * 100_000)  # small on the wire, large unpacked
                r = await client.post(
                    f"{sim.url}/post/v1",
                    content=bomb,
                    headers=_json_headers(**{"Content-Encoding": "gzip"}),
                )
                assert r.status_code == 413 and "gunzipped" in error_of(r).error
                r = await client.post(
                    f"{sim.url}/post/v1",
                    content=body,
                    headers=_json_headers(**{"Content-Encoding": "gzip"}),
                )
                assert r.status_code == 400 and "not gzip" in error_of(r).error
            assert sim.store.count() == 2


async def test_gzip_responses_only_over_1024_bytes_and_when_asked() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN]) as sim, httpx.AsyncClient() as client:
            sim.store.add_many("dev-9", 1, [(T0 + i, i * 0.5) for i in range(100)])
            query: Params = {"token": TOKEN, "fcdt": T0, "tcdt": T0 + 99}
            url = f"{sim.url}/conduitv4"
            zipped = await client.get(url, params=query, headers={"Accept-Encoding": "gzip"})
            assert zipped.status_code == 200
            assert zipped.headers["content-encoding"] == "gzip"
            assert int(zipped.headers["content-length"]) < len(zipped.content)
            assert len(codec.decode_v4_records(zipped.content)) == 100
            plain = await client.get(url, params=query, headers={"Accept-Encoding": "identity"})
            assert "content-encoding" not in plain.headers
            assert plain.content == zipped.content
            small = await client.get(url, params={**query, "tcdt": T0}, headers={
                "Accept-Encoding": "gzip"})  # fmt: skip
            refused = await client.get(url, params=query, headers={
                "Accept-Encoding": "gzip;q=0, identity"})  # fmt: skip
            assert "content-encoding" not in refused.headers
            assert len(small.content) < 1024
            assert "content-encoding" not in small.headers


# -- tokens, methods, limits, faults ---------------------------------------------------------------


async def test_tokens_401_and_403_with_string_and_number_codes() -> None:
    tokens = {TOKEN: TokenSpec(), "reader": TokenSpec(write=False), "writer": TokenSpec(read=False)}
    with trio.fail_after(10):
        async with open_alphax_simulator(tokens) as sim, httpx.AsyncClient() as client:
            r1 = await client.post(f"{sim.url}/post/v1", json=v1_doc(token="nobody"))
            r2 = await client.get(f"{sim.url}/conduitv6", params={"token": "nobody"})
            r3 = await client.post(f"{sim.url}/post/v1", json=v1_doc(token="reader"))
            r4 = await client.get(f"{sim.url}/conduitv4", params={"token": "writer"})
            r5 = await client.get(f"{sim.url}/conduitv4")
            assert [r.status_code for r in (r1, r2, r3, r4, r5)] == [401, 401, 403, 403, 401]
            raw_codes = [json.loads(r.content)["code"] for r in (r1, r2)]
            assert {type(c) for c in raw_codes} == {str, int}  # "alternate": clients see both
            assert [error_of(r).code for r in (r1, r2, r3, r4)] == [401, 401, 403, 403]
            assert sim.store.count() == 0
            assert sim.store.rejects() == {"unknown_token": 1, "forbidden": 1}


async def test_method_override_and_405() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN], error_code_style="string") as sim:
            async with httpx.AsyncClient() as client:
                r1 = await client.post(
                    f"{sim.url}/post/v1",
                    json=v1_doc(),
                    headers={"X-HTTP-Method-Override": "DELETE"},
                )
                r2 = await client.put(f"{sim.url}/post/v2", json=v2_doc({1: 1}))
                r3 = await client.get(f"{sim.url}/post/v1")
                r4 = await client.post(f"{sim.url}/conduitv4", params={"token": TOKEN})
                r5 = await client.post(
                    f"{sim.url}/post/v1", json=v1_doc(), headers={"X-HTTP-Method-Override": "GET"}
                )
                r6 = await client.get(f"{sim.url}/elsewhere")
            assert [r.status_code for r in (r1, r2, r3, r4, r5, r6)] == [405] * 4 + [400, 404]
            assert json.loads(r1.content) == {"code": "405", "error": "Method Not Allowed"}
            assert sim.store.count() == 0


async def test_basic_tier_write_burst_gets_429() -> None:
    clock = ManualClock()
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN], tier="basic", clock=clock) as sim:
            async with httpx.AsyncClient() as client:
                url = f"{sim.url}/post/v2"
                for i in range(100):
                    r = await client.post(url, json=v2_doc({1: i}, ts=(T0 + i) * 1000))
                    assert r.status_code == 200, (i, r.text)
                over = await client.post(url, json=v2_doc({1: 100}))
                assert over.status_code == 429
                assert "basic" in error_of(over).error and error_of(over).code == 429
                clock.now += 1.0
                again = await client.post(url, json=v2_doc({1: 101}))
                assert again.status_code == 200
            assert sim.store.count() == 101
            assert sim.store.rejects() == {"rate_limited": 1}


@pytest.mark.parametrize(("tier", "interval"), [("basic", 15.0), ("premium", 5.0)])
async def test_read_rate_limit_per_tier(tier: str, interval: float) -> None:
    clock = ManualClock()
    with trio.fail_after(10):
        async with (
            open_alphax_simulator([TOKEN], tier=tier, clock=clock) as sim,
            httpx.AsyncClient() as client,
        ):
            url, query = f"{sim.url}/conduitv4", {"token": TOKEN}
            assert (await client.get(url, params=query)).status_code == 304
            limited = await client.get(url, params=query)
            assert limited.status_code == 429 and error_of(limited).code == 429
            clock.now += interval - 0.5
            assert (await client.get(url, params=query)).status_code == 429
            clock.now += 0.5
            assert (await client.get(url, params=query)).status_code == 304


async def test_enterprise_is_unlimited() -> None:
    clock = ManualClock()
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN], clock=clock) as sim:
            async with httpx.AsyncClient() as client:
                for _ in range(5):
                    r = await client.get(f"{sim.url}/conduitv4", params={"token": TOKEN})
                    assert r.status_code == 304
                for i in range(120):
                    r = await client.post(f"{sim.url}/post/v2", json=v2_doc({1: i}))
                    assert r.status_code == 200
            assert sim.store.count() == 120


async def test_forced_faults_fire_in_order_and_store_nothing() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN]) as sim, httpx.AsyncClient() as client:
            sim.fail_next(2, 503)
            sim.fail_next(1, 429, endpoints=["conduitv4"])
            post = f"{sim.url}/post/v2"
            statuses = [(await client.post(post, json=v2_doc({1: 1}))).status_code]
            read = await client.get(f"{sim.url}/conduitv4", params={"token": TOKEN})
            statuses.append(read.status_code)
            statuses += [(await client.post(post, json=v2_doc({1: 2}))).status_code]
            statuses += [(await client.post(post, json=v2_doc({1: 3}))).status_code]
            assert statuses == [503, 503, 200, 200]  # the read fault waits for a read
            assert error_of(read).code == 503
            assert sim.faults_pending() == 1
            assert (
                await client.get(f"{sim.url}/conduitv4", params={"token": TOKEN})
            ).status_code == 429
            assert sim.store.values("dev-2", 1) == [(T0, 2.0), (T0, 3.0)]
            with pytest.raises(ValueError, match="unknown endpoints"):
                sim.fail_next(1, 500, endpoints=["post/v3"])


# -- reads ---------------------------------------------------------------------------------------


async def test_reads_cap_at_1000_oldest_first_and_304_past_the_end() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN]) as sim, httpx.AsyncClient() as client:
            sim.store.add_many("dev-a", 1, [(T0 + i, float(i)) for i in range(2500)])
            sim.store.add_many("dev-b", 2, [(T0 + 0.5, -1.0)])
            url = f"{sim.url}/conduitv4"
            seen: list[tuple[int, str, int]] = []
            start = T0
            while True:
                r = await client.get(url, params={"token": TOKEN, "fcdt": start, "tcdt": T0 + 5000})
                if r.status_code == 304:
                    break
                records = codec.decode_v4_records(r.content)
                assert len(records) <= 1000
                seen += [(rec.epoch_s, rec.network_id, rec.channel) for rec in records]
                start = records[-1].epoch_s + 1
            assert len(seen) == 2501
            assert seen == sorted(seen)
            assert seen[:2] == [(T0, "dev-a", 1), (T0, "dev-b", 2)]

            first = await client.get(url, params={"token": TOKEN, "fcdt": T0, "tcdt": T0 + 5000})
            assert len(codec.decode_v4_records(first.content)) == 1000
            one = await client.get(
                f"{sim.url}/conduitv6",
                params={"token": TOKEN, "id": "dev-a", "ch": 1, "fcdt": T0 + 7, "tcdt": T0 + 9},
            )
            assert [(r.val_date, r.value) for r in codec.decode_v6_records(one.content)] == [
                (T0 + 7, 7.0), (T0 + 8, 8.0), (T0 + 9, 9.0)]  # fmt: skip
            none = await client.get(url, params={"token": TOKEN, "id": "dev-z"})
            assert none.status_code == 304 and none.content == b""


async def test_v6_metadata_default_window_and_bad_params() -> None:
    now = float(T0 + 10_000)
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN], wall_clock=lambda: now) as sim:
            sim.store.set_device("dev-m", dev_tag="PAX03", loc_lat=-38.1, loc_lng=145.1)
            sim.store.add_many("dev-m", 3, [(now - 4000, 1.0), (now - 60, 2.5)])
            async with httpx.AsyncClient() as client:
                r = await client.get(f"{sim.url}/conduitv6", params={"token": TOKEN})
                (record,) = codec.decode_v6_records(r.content)
                assert (record.dev_tag, record.loc_lat, record.loc_lng) == ("PAX03", -38.1, 145.1)
                assert (record.val_date, record.dev_chid, record.value) == (now - 60, 3, 2.5)
                bad: list[Params] = [
                    {"fcdt": T0},
                    {"fcdt": T0 + 5, "tcdt": T0},
                    {"fcdt": "yesterday", "tcdt": T0},
                    {"fcdt": T0 * 1000, "tcdt": T0 * 1000 + 1},
                    {"ch": "x"},
                    {"ch": 99},
                ]
                for params in bad:
                    r = await client.get(f"{sim.url}/conduitv4", params={"token": TOKEN, **params})
                    assert r.status_code == 400, params
                    assert error_of(r).error


# -- UDP and TCP ---------------------------------------------------------------------------------


async def test_udp_uplinks_and_malformed_datagrams() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN]) as sim:
            assert sim.udp_port is not None
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.connect(("127.0.0.1", sim.udp_port))
                await sock.send(json.dumps(v1_doc()).encode())
                await sock.send(json.dumps(v2_doc({5: 5.5})).encode())
                await sock.send(b"not json at all")
                await sock.send(json.dumps(v1_doc(SEED_HTTP_HEX)).encode())
                await sock.send(json.dumps(v2_doc({1: 1}, token="stranger")).encode())
                await sim.wait_for(lambda: sum(sim.store.rejects().values()) >= 3)
            assert sim.store.values("dev-2", 5) == [(T0, 5.5)]
            assert sim.store.count() == 6
            assert sim.received() == {"udp": 2}
            assert sim.store.rejects() == {
                "MalformedJsonError": 1, "PayloadLengthError": 1, "unknown_token": 1}  # fmt: skip


async def test_tcp_lines_split_across_writes() -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN]) as sim:
            assert sim.tcp_port is not None
            stream = await trio.open_tcp_stream("127.0.0.1", sim.tcp_port)
            line1 = json.dumps(v1_doc()).encode() + b"\r\n"
            line2 = json.dumps(v2_doc({7: -7.25})).encode() + b"\n"
            async with stream:
                await stream.send_all(line1 + line2[:20])
                await trio.sleep(0.05)
                await stream.send_all(line2[20:] + b"\n{bad json\n")
                await stream.send_all(json.dumps(v2_doc({8: 8})).encode())  # no newline
            await sim.wait_for(lambda: sim.store.rejects().get("unterminated_line") == 1)
            assert sim.store.values("dev-2", 7) == [(T0, -7.25)]
            assert sim.store.values("dev-1", 1) == [(T0, 4.0)]
            assert sim.store.values("dev-2", 8) == []
            assert sim.received() == {"tcp": 2}
            assert sim.store.rejects()["MalformedJsonError"] == 1


# -- MQTT ----------------------------------------------------------------------------------------


def _publisher(broker: MosquittoBroker, username: str = TOKEN) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.username_pw_set(username, "password")
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


async def _publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    info = client.publish(topic, payload, qos=1)
    await trio.to_thread.run_sync(info.wait_for_publish, 5.0)
    assert info.is_published()


async def test_mqtt_all_three_topic_forms_land_in_the_store(mosquitto: MosquittoBroker) -> None:
    with trio.fail_after(10):
        async with open_alphax_simulator([TOKEN], mqtt_url=mosquitto.url) as sim:
            pub = _publisher(mosquitto)
            try:
                await _publish(
                    pub, codec.publish_v4_topic(TOKEN, "m-1"), b"0A10010001000000A00F0000"
                )
                bulk = json.dumps(v2_doc({1: 1.5, 2: 2.5, 255: 3.9}, network_id="m-2")).encode()
                await _publish(pub, codec.bulk_topic(TOKEN, "m-2"), bulk)
                await _publish(pub, codec.channel_topic(TOKEN, "m-3", 4), b"-12.75")
                await _publish(pub, codec.publish_v4_topic(TOKEN, "m-1"), SEED_HTTP_HEX.encode())
                await _publish(pub, codec.channel_topic("stranger", "m-3", 4), b"1")
                await _publish(pub, codec.bulk_topic(TOKEN, "m-other"), bulk)
                await sim.wait_for(lambda: sim.received().get("mqtt") == 3)
                await sim.wait_for(lambda: sum(sim.store.rejects().values()) == 3)
            finally:
                pub.loop_stop()
                pub.disconnect()
            assert [v for _, v in sim.store.values("m-1", 1)] == [4.0]
            assert [v for _, v in sim.store.values("m-1", 255)] == [4106.0]
            assert sim.store.values("m-2", 2) == [(T0, 2.5)]
            assert sim.store.count(network_id="m-2") == 3  # the bulk topic landed exactly once
            (m3,) = sim.store.values("m-3", 4)
            assert m3[1] == -12.75 and abs(m3[0] - time.time()) < 60
            assert sim.store.rejects() == {
                "PayloadLengthError": 1, "unknown_token": 1, "networkId_mismatch": 1}  # fmt: skip


async def test_mqtt_survives_a_broker_restart_on_the_same_port(mosquitto: MosquittoBroker) -> None:
    with trio.fail_after(20):
        async with open_alphax_simulator([TOKEN], mqtt_url=mosquitto.url) as sim:
            assert sim.mqtt is not None and sim.mqtt.connects == 1
            port = mosquitto.port
            await trio.to_thread.run_sync(mosquitto.restart)
            assert mosquitto.port == port and mosquitto.starts == 2
            await sim.wait_for(lambda: sim.mqtt is not None and sim.mqtt.subacks >= 2, 10)
            pub = _publisher(mosquitto)
            try:
                await _publish(pub, codec.channel_topic(TOKEN, "m-9", 1), b"42")
                await sim.wait_for(lambda: sim.store.count() == 1)
            finally:
                pub.loop_stop()
                pub.disconnect()
            assert [v for _, v in sim.store.values("m-9", 1)] == [42.0]


async def test_unreachable_broker_and_unmet_conditions_fail_clearly() -> None:
    from adapters.alphax.sim import MqttConnectError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with trio.fail_after(10):
        with pytest.raises(MqttConnectError, match="no MQTT subscription"):
            async with open_alphax_simulator(
                [TOKEN], mqtt_url=f"mqtt://127.0.0.1:{dead_port}", mqtt_timeout=0.5
            ):
                pytest.fail("the block must not run without a subscription")
        async with open_alphax_simulator([TOKEN]) as sim:
            with pytest.raises(TimeoutError, match="0 values stored"):
                await sim.wait_for(lambda: sim.store.count() > 0, timeout=0.05)


# -- secrets and the command line ------------------------------------------------------------------


async def test_tokens_never_reach_the_log(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="adapters.alphax")
    secret, stranger = "tok-SECRET-1234", "tok-STRANGER-9876"
    with trio.fail_after(10):
        async with open_alphax_simulator([secret], mqtt_url=mosquitto.url) as sim:
            async with httpx.AsyncClient() as client:
                await client.post(f"{sim.url}/post/v1", json=v1_doc(token=secret))
                await client.post(f"{sim.url}/post/v1", json=v1_doc(SEED_HTTP_HEX, token=secret))
                await client.post(f"{sim.url}/post/v2", json=v2_doc({1: 1}, token=stranger))
                await client.get(f"{sim.url}/conduitv4", params={"token": secret})
                await client.get(f"{sim.url}/conduitv4", params={"token": stranger})
            pub = _publisher(mosquitto, username=stranger)
            try:
                await _publish(pub, codec.channel_topic(secret, "d", 1), b"oops")
                await _publish(pub, codec.channel_topic(stranger, "d", 1), b"1")
                await _publish(pub, f"{secret}/d/x/data", b"1")
                await sim.wait_for(lambda: sum(sim.store.rejects().values()) >= 5)
            finally:
                pub.loop_stop()
                pub.disconnect()
            logged = caplog.text + repr(sim.store.reject_log()) + repr(list(sim.requests))
    assert "rejected mqtt input" in caplog.text and "conduitv4?token=***" in caplog.text
    assert secret not in logged and stranger not in logged


def _run_cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ALPHAX_TOKEN": "cli-token-77", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "adapters.alphax.sim", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell job may inherit SIGINT ignored; give the child Python's default Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_cli_serves_and_exits_zero_on_ctrl_c() -> None:
    proc = _run_cli("--tier", "premium", "--tcp-port", "-1")
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("AlphaX simulator: http http://127.0.0.1:"), banner
        assert "tier premium" in banner and "tcp None" in banner
        url = banner.split()[3]
        r = httpx.get(f"{url}/conduitv4", params={"token": "cli-token-77"}, timeout=5)
        assert r.status_code == 304
        assert httpx.get(f"{url}/conduitv4", params={"token": "x"}, timeout=5).status_code == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert "cli-token-77" not in stderr and "cli-token-77" not in banner
    assert "Traceback" not in stderr


def test_cli_reports_a_port_in_use_and_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _run_cli("--http-port", str(taken.getsockname()[1]))
        try:
            _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1
    assert "alphax simulator: OSError" in stderr and "Traceback" not in stderr
