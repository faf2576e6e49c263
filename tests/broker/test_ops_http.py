"""The operations endpoint (/metrics /healthz /readyz /status) and ``junction status``.

Unit level: an OpsServer on a real loopback socket over a fixed snapshot (a plain
dict: pure input). Runtime level: a generator -> file bridge with the endpoint on,
scraped while it runs, and ``junction status`` run in-process against it.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import cli
from broker._errors import ConfigError
from broker._ops_http import OpsServer
from broker._ops_metrics import budget_left, readiness
from broker._runtime import Loaded, Runtime
from tests.conftest import wait_until

LE = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def adapter(name: str, state: str, required: bool = True, detail: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "type": "t",
        "state": state,
        "detail": detail,
        "since": 0.0,
        "restarts": 2,
        "reconnects": 5,
        "last_error": "",
        "sent": 3,
        "received": 4,
        "required": required,
    }


def snapshot() -> dict[str, Any]:
    """A ready bridge: required adapters connected, nothing old pending."""
    return {
        "uptime_s": 12.0,
        "adapters": {
            "alphax": adapter("alphax", "connected"),
            "gen": adapter("gen", "running"),
            "allxon": adapter("allxon", "connected", required=False),
        },
        "routes": {
            "w": {
                "matched": 10,
                "queued": 0,
                "delivered": 7,
                "dead_lettered": 1,
                "drop_reasons": {"overflow": 2},
                "filtered": 1,
                "dropped": 2,
                "replies": 0,
                "reply_timeouts": 0,
                "ledger": {  # 11 = 7 + 0 + 1 + 2 + 1 (broker._ledger's words)
                    "received": 11,
                    "delivered": 7,
                    "pending": 0,
                    "dead_lettered": 1,
                    "dropped": 2,
                    "filtered": 1,
                    "balanced": True,
                    "matched": 10,
                },
                "outbox": {"pending": 3, "oldest_age_s": 5.0},
                "latency": {
                    "le": LE,
                    "counts": [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1],
                    "sum": 41.5,
                    "count": 7,
                },
            }
        },
        "outbox": {
            "rows": 3,
            "bytes": 2048,
            "oldest_age_s": 5.0,
            "dead_letters": 1,
            "path": "state/outbox.sqlite3",
        },
        "unrouted": {},
        "dead_letters": 1,
        "pending_replies": 0,
        "queues": {},
    }


def get(url: str) -> tuple[int, str, str]:
    """GET ``url``: (status, content type, body), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def serve() -> Iterator[Callable[..., OpsServer]]:
    """Start OpsServers on 127.0.0.1:0 over a snapshot function; all stopped afterwards."""
    servers: list[OpsServer] = []

    def start(snap: Callable[[], dict[str, Any]], max_age: float = 60.0) -> OpsServer:
        server = OpsServer(snap, "127.0.0.1:0", max_age)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --------------------------------------------------------------------------- /metrics


def test_metrics_carry_the_snapshot_values(serve: Callable[..., OpsServer]) -> None:
    snap = snapshot()
    snap["adapters"]["alphax"]["state"] = "retrying"
    server = serve(lambda: snap)
    status, ctype, body = get(f"{server.url}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    got = samples(body)
    assert got[("junction_adapter_connected", (("adapter", "alphax"),))] == 0
    assert got[("junction_adapter_connected", (("adapter", "gen"),))] == 1
    assert got[("junction_adapter_connected", (("adapter", "allxon"),))] == 1
    assert got[("junction_adapter_reconnects_total", (("adapter", "alphax"),))] == 5
    assert got[("junction_adapter_restarts_total", (("adapter", "alphax"),))] == 2
    w = (("route", "w"),)
    assert got[("junction_route_received_total", w)] == 11
    assert got[("junction_route_matched_total", w)] == 10
    for word in ("replies", "recovered", "replayed"):  # why received differs from matched
        assert got[(f"junction_route_{word}_total", w)] == 0
    assert got[("junction_route_delivered_total", w)] == 7
    assert got[("junction_route_dead_lettered_total", w)] == 1
    assert got[("junction_route_dropped_total", (("reason", "overflow"), ("route", "w")))] == 2
    assert ("junction_route_dropped_total", (("reason", "filtered"), ("route", "w"))) not in got
    assert got[("junction_route_filtered_total", w)] == 1
    assert got[("junction_route_pending", w)] == 0
    assert got[("junction_route_ledger_balanced", w)] == 1
    assert got[("junction_route_oldest_pending_age_seconds", w)] == 5.0
    assert got[("junction_outbox_rows", ())] == 3
    assert got[("junction_outbox_bytes", ())] == 2048
    assert got[("junction_outbox_oldest_age_seconds", ())] == 5.0
    h = "junction_route_delivery_latency_seconds"
    assert got[(f"{h}_bucket", (("le", "0.001"), ("route", "w")))] == 1
    assert got[(f"{h}_bucket", (("le", "0.0025"), ("route", "w")))] == 3  # cumulative
    assert got[(f"{h}_bucket", (("le", "10.0"), ("route", "w")))] == 3
    assert got[(f"{h}_bucket", (("le", "30.0"), ("route", "w")))] == 6
    assert got[(f"{h}_bucket", (("le", "+Inf"), ("route", "w")))] == 7
    assert got[(f"{h}_count", w)] == 7
    assert got[(f"{h}_sum", w)] == 41.5


def test_metrics_take_a_fresh_snapshot_per_scrape(serve: Callable[..., OpsServer]) -> None:
    snap = snapshot()
    calls: list[int] = []

    def take() -> dict[str, Any]:
        calls.append(1)
        snap["routes"]["w"]["ledger"]["delivered"] = 7 * len(calls)
        return snap

    server = serve(take)
    key = ("junction_route_delivered_total", (("route", "w"),))
    assert samples(get(f"{server.url}/metrics")[2])[key] == 7
    assert samples(get(f"{server.url}/metrics")[2])[key] == 14
    assert len(calls) == 2


def test_metrics_tolerate_a_snapshot_without_ledger_outbox_or_latency(
    serve: Callable[..., OpsServer],
) -> None:
    snap = snapshot()
    for key in ("ledger", "outbox", "latency"):
        del snap["routes"]["w"][key]
    del snap["outbox"]
    for a in snap["adapters"].values():
        del a["required"]
    server = serve(lambda: snap)
    status, _, body = get(f"{server.url}/metrics")
    assert status == 200
    got = samples(body)
    w = (("route", "w"),)
    # the route's own counters stand in for the ledger; the rest reads as zero
    assert got[("junction_route_received_total", w)] == 10
    assert got[("junction_route_delivered_total", w)] == 7
    assert got[("junction_route_dead_lettered_total", w)] == 0
    assert got[("junction_route_oldest_pending_age_seconds", w)] == 0
    assert got[("junction_outbox_rows", ())] == 0
    assert not [k for k in got if k[0].startswith("junction_route_delivery_latency")]
    assert not [k for k in got if k[0] == "junction_route_ledger_balanced"]


def test_allxon_budget_left_is_read_from_the_adapters_status_gauges(
    serve: Callable[..., OpsServer],
) -> None:
    snap = snapshot()
    snap["adapters"]["allxon"]["gauges"] = {"allxon_budget_remaining_ratio": 0.08}
    snap["adapters"]["spare"] = adapter(
        "spare", "retrying", detail="[::1]:55688: connection refused; retry in 2.0 s"
    )
    snap["adapters"]["full"] = adapter("full", "connected")
    snap["adapters"]["full"]["gauges"] = {"allxon_budget_remaining_ratio": -0.1}
    server = serve(lambda: snap)
    got = samples(get(f"{server.url}/metrics")[2])
    ratio = "junction_allxon_budget_remaining_ratio"
    assert got[(ratio, (("adapter", "allxon"),))] == pytest.approx(0.08)
    assert got[(ratio, (("adapter", "full"),))] == 0.0  # never below zero
    # not linked (no numbers in its detail), or not an Allxon adapter: no sample
    assert {k[1] for k in got if k[0] == ratio} == {
        (("adapter", "allxon"),),
        (("adapter", "full"),),
    }
    assert budget_left({"gauges": {"allxon_budget_remaining_ratio": "half"}}) is None
    assert budget_left({}) is None


# --------------------------------------------------------------------------- /readyz /healthz


def test_readyz_is_200_when_required_adapters_are_up_and_nothing_is_old(
    serve: Callable[..., OpsServer],
) -> None:
    server = serve(snapshot)
    status, ctype, body = get(f"{server.url}/readyz")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {"ready": True, "reasons": []}


def test_readyz_is_503_naming_a_required_adapter_that_is_not_connected(
    serve: Callable[..., OpsServer],
) -> None:
    snap = snapshot()
    snap["adapters"]["alphax"] = adapter("alphax", "retrying", detail="connect refused")
    server = serve(lambda: snap)
    status, _, body = get(f"{server.url}/readyz")
    assert status == 503
    assert json.loads(body) == {
        "ready": False,
        "reasons": ["adapter alphax is retrying: connect refused"],
    }


def test_readyz_ignores_an_optional_adapter_that_is_down(
    serve: Callable[..., OpsServer],
) -> None:
    snap = snapshot()
    snap["adapters"]["allxon"] = adapter("allxon", "crashed", required=False, detail="boom")
    server = serve(lambda: snap)
    status, _, body = get(f"{server.url}/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


def test_readyz_is_503_when_a_route_has_an_envelope_older_than_the_limit(
    serve: Callable[..., OpsServer],
) -> None:
    snap = snapshot()
    snap["routes"]["w"]["outbox"]["oldest_age_s"] = 75.0
    server = serve(lambda: snap, max_age=60.0)
    status, _, body = get(f"{server.url}/readyz")
    assert status == 503
    assert json.loads(body)["reasons"] == ["route w: oldest pending 75.0 s > 60 s"]
    # the same age under a looser limit is fine
    assert readiness(snap, 90.0) == (True, [])


def test_healthz_answers_ok_and_unknown_paths_404(serve: Callable[..., OpsServer]) -> None:
    server = serve(snapshot)
    assert get(f"{server.url}/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    status, _, body = get(f"{server.url}/nope")
    assert status == 404 and "/metrics" in body


def test_a_raising_snapshot_is_a_500_and_the_next_request_is_served(
    serve: Callable[..., OpsServer],
) -> None:
    broken = [True]

    def take() -> dict[str, Any]:
        if broken[0]:
            raise RuntimeError("router did not answer")
        return snapshot()

    server = serve(take)
    for path in ("/metrics", "/readyz", "/status"):
        status, _, body = get(f"{server.url}{path}")
        assert status == 500, path
        assert "RuntimeError: router did not answer" in body
    assert get(f"{server.url}/healthz")[0] == 200
    broken[0] = False
    status, _, body = get(f"{server.url}/status")
    assert status == 200 and json.loads(body) == snapshot()


# --------------------------------------------------------------------------- listen


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("", "not host:port"),
        ("9464", "not host:port"),
        (":9464", "not host:port"),
        ("127.0.0.1:http", "the port must be a number 0..65535"),
        ("127.0.0.1:70000", "the port must be a number 0..65535"),
        ("::1:9464", "an IPv6 host needs brackets"),
    ],
)
def test_bad_listen_values_are_config_errors_naming_key_and_value(
    listen: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        OpsServer(snapshot, listen, 60.0, origin="site.toml")
    assert str(err.value).startswith(
        f"site.toml: [junction.http] listen: {message} (got {listen!r})"
    )


def test_a_taken_port_is_a_config_error_naming_key_and_value() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        server = OpsServer(snapshot, listen, 60.0)
        with pytest.raises(ConfigError) as err:
            server.start()
    text = str(err.value)
    assert text.startswith("[junction.http] listen: cannot listen on it: ")
    assert f"(got {listen!r})" in text
    server.stop()  # never started: a no-op


def test_ipv6_loopback_and_stop_closes_the_port(serve: Callable[..., OpsServer]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    server = OpsServer(snapshot, "[::1]:0", 60.0)
    try:
        server.start()
    except ConfigError:
        pytest.skip("::1 is not configured on this machine")
    url = server.url
    assert url.startswith("http://[::1]:") and get(f"{url}/healthz")[0] == 200
    server.stop()
    with pytest.raises(urllib.error.URLError):
        get(f"{url}/healthz")


# --------------------------------------------------------------------------- junction status


def test_status_reads_listen_from_the_config_and_prints_ledger_and_outbox(
    serve: Callable[..., OpsServer],
    write_config: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(snapshot)
    cfg = write_config(f'[junction.http]\nlisten = "127.0.0.1:{server.port}"\n')
    monkeypatch.setenv("COLUMNS", "160")  # the table's width: the terminal's, here fixed
    assert cli.main(["status", cfg]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("ROUTE "))
    assert header.split() == [
        *("ROUTE", "RECEIVED", "DELIVERED", "PENDING", "DEAD_LETTERED", "DROPPED", "FILTERED"),
        *("BALANCED", "OLDEST", "NOTES"),
    ]  # the ledger's words, as /metrics names them
    row = next(line for line in out.splitlines() if line.startswith("w "))
    assert row.split()[:9] == ["w", "11", "7", "0", "1", "2", "1", "yes", "5s"]
    assert row.endswith("matched 10, overflow 2")  # why received differs, and the drops
    assert "outbox: 3 rows, 2 KiB, oldest 5s, dead letters 1  (state/outbox.sqlite3)" in out

    assert cli.main(["status", cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == snapshot()


def test_status_without_an_endpoint_in_the_config_exits_2_naming_the_key(
    write_config: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config('[adapters.out]\ntype = "file"\npath = "-"\n')
    assert cli.main(["status", cfg]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: [junction.http] listen is not set" in err


def test_status_with_port_0_in_the_config_asks_for_url(
    write_config: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config('[junction.http]\nlisten = "127.0.0.1:0"\n')
    assert cli.main(["status", cfg]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: [junction.http] listen: port 0 means any free port" in err
    assert "--url" in err


def test_status_with_nothing_answering_exits_1(
    write_config: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = write_config(f'[junction.http]\nlisten = "127.0.0.1:{port}"\n')
    assert cli.main(["status", cfg]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"no bridge answering at http://127.0.0.1:{port}: ")


# --------------------------------------------------------------------------- runtime


def test_runtime_serves_growing_metrics_and_junction_status_reads_them(
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
    write_config: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = f"""
[junction.http]
listen = "127.0.0.1:0"
[adapters.gen]
type = "generator"
kind = "metric"
body = {{ module = "m", name = "n", value = 1.0 }}
rate = 50
[adapters.out]
type = "file"
path = "{tmp_path / "out.jsonl"}"
[[routes]]
name = "gen-to-file"
from = "gen"
to = "out"
"""
    rt = runtime_of(load_config(text))
    assert rt.ops is not None and rt.ops.port > 0
    url = rt.ops.url
    key = ("junction_route_delivered_total", (("route", "gen-to-file"),))

    def delivered() -> float:
        status, _, body = get(f"{url}/metrics")
        assert status == 200
        return samples(body).get(key, 0.0)

    wait_until(lambda: delivered() > 0, what="a delivery in /metrics")
    first = delivered()
    wait_until(lambda: delivered() > first, what="delivered_total to grow")
    connected = samples(get(f"{url}/metrics")[2])
    assert connected[("junction_adapter_connected", (("adapter", "gen"),))] == 1
    assert get(f"{url}/healthz")[0] == 200
    status, _, body = get(f"{url}/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True, "reasons": []})

    cfg = write_config(text, name="status.toml")
    assert cli.main(["status", cfg, "--url", url]) == 0
    out = capsys.readouterr().out
    assert "ADAPTER" in out and "ROUTE" in out
    assert any(line.startswith("gen-to-file ") for line in out.splitlines())


def test_a_router_that_does_not_answer_is_not_ready() -> None:
    snap = {"adapters": {}, "routes": {}, "router_error": "the router did not answer within 5 s"}
    assert readiness(snap, 60.0) == (False, ["the router did not answer within 5 s"])


def test_a_finished_one_shot_source_and_an_idle_http_peer_are_ready() -> None:
    adapters = {
        "feed": {"state": "finished", "required": True},
        "alphax": {"state": "ready", "required": True},
        "placeos": {"state": "connecting", "required": True, "detail": "refused"},
    }
    snap = {"adapters": adapters, "routes": {}}
    assert readiness(snap, 60.0) == (False, ["adapter placeos is connecting: refused"])
