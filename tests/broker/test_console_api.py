"""The web console's API (broker/_console.py) over real loopback sockets, with httpx.

A generator -> collector bridge runs with the operations endpoint on 127.0.0.1:0; its one
route passes through ``flaky`` (tests/support/console_plugin.py), which raises while told
to, so the tests make dead letters, list, replay and purge them. The generator's subject
is hostile markup: the API hands it back as data (the browser test checks the page shows
it as text). The ASGI bridge's own limits (413, 408, a failing app) are tested on an
OpsServer over a plain snapshot.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker._ledger import VOCABULARY
from broker._ops_http import OpsServer
from broker._runtime import Loaded, Runtime, load
from tests.conftest import TEST_PLUGINS, wait_until
from tests.support import console_plugin, core_plugin

HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
TOKEN = "console-token-0123456789abcdef"
ENVELOPE = {
    "source": "gen",
    "subject": "room/t",
    "body": {"kind": "metric", "module": "room", "name": "t", "value": 21.5},
}


def config(state: Path, http: str = "") -> str:
    return f"""
[junction]
state_dir = "{state}"
shutdown_grace_s = 1.0

[junction.http]
listen = "127.0.0.1:0"
{http}

[adapters.gen]
type = "generator"
kind = "metric"
subject = '{HOSTILE}'
body = {{ module = "room", name = "t", value = 21.0 }}
rate = 50

[adapters.sink]
type = "collector"

[[routes]]
name = "gen-to-sink"
from = "gen"
to = ["sink"]
transforms = ["flaky"]
"""


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Callable[..., Runtime]]:
    """Start the test bridge (extra ``[junction.http]`` lines as asked); stopped after."""
    started: list[Runtime] = []
    core_plugin.reset()
    console_plugin.BROKEN.clear()

    def start(http: str = "", broken: bool = False) -> Runtime:
        path = tmp_path / f"bridge{len(started)}.toml"
        path.write_text(config(tmp_path / f"state{len(started)}", http), encoding="utf-8")
        if broken:
            console_plugin.BROKEN.set()
        loaded: Loaded = load(
            str(path), extra_plugins=(*TEST_PLUGINS, "tests.support.console_plugin")
        )
        rt = Runtime(loaded)
        started.append(rt)
        rt.start()
        return rt

    yield start
    for rt in started:
        rt.stop(grace_s=1)
    console_plugin.BROKEN.clear()
    core_plugin.reset()


def client(rt: Runtime, token: str = "") -> httpx.Client:
    assert rt.ops is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=rt.ops.url, headers=headers, timeout=10)


def dead_count(http: httpx.Client) -> int:
    total: int = http.get("/api/dead-letters").json()["total"]
    return total


def with_dead_letters(bridge: Callable[..., Runtime], n: int = 3) -> Runtime:
    """A bridge whose route dead-letters until ``n`` are stored, then passes again."""
    rt = bridge(broken=True)
    with client(rt) as http:
        wait_until(lambda: dead_count(http) >= n, what=f"{n} dead letters")
    console_plugin.BROKEN.clear()
    return rt


# --------------------------------------------------------------------------- the page


def test_the_page_and_its_files_are_served_with_a_strict_policy(
    bridge: Callable[..., Runtime],
) -> None:
    with client(bridge()) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "console/console.js" in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        script = http.get("/console/console.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert http.get("/console/console.css").status_code == 200
        assert http.get("/console/nope.js").status_code == 404
        assert http.head("/").content == b""
        # the endpoint's own paths are still its own
        assert http.get("/healthz").text == "ok\n"
        assert http.get("/status").json()["routes"]["gen-to-sink"]


def test_snapshot_is_the_status_snapshot_with_vocabulary_and_graph(
    bridge: Callable[..., Runtime],
) -> None:
    with client(bridge()) as http:
        snap = http.get("/api/snapshot").json()
        assert set(snap["adapters"]) == {"gen", "sink"}
        assert "ledger" in snap["routes"]["gen-to-sink"]
        assert snap["vocabulary"] == VOCABULARY
        assert snap["graph"] == {
            "adapters": ["gen", "sink"],
            "routes": [{"name": "gen-to-sink", "from": ["gen"], "to": ["sink"]}],
        }
        assert abs(snap["time"] - time.time()) < 5


def test_the_event_stream_sends_a_snapshot_every_second(bridge: Callable[..., Runtime]) -> None:
    rt = bridge()
    snapshots: list[dict[str, Any]] = []
    began = time.monotonic()
    with client(rt) as http, http.stream("GET", "/api/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in events.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "snapshot":
                snapshots.append(json.loads(line.removeprefix("data: ")))
                if len(snapshots) == 2:
                    break
    assert time.monotonic() - began >= 0.9  # a second apart
    assert all("vocabulary" in s and "graph" in s for s in snapshots)
    assert snapshots[1]["time"] > snapshots[0]["time"]


def test_event_streams_are_bounded_and_a_closed_one_frees_its_place(
    bridge: Callable[..., Runtime],
) -> None:
    from broker._console import MAX_STREAMS

    rt = bridge()
    assert rt.ops is not None
    open_streams = []
    try:
        for _ in range(MAX_STREAMS):
            sock = socket.create_connection(("127.0.0.1", rt.ops.port), timeout=10)
            sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            open_streams.append(sock)
        with client(rt) as http:
            refused = http.get("/api/events")
            assert refused.status_code == 503 and "close one" in refused.json()["error"]
            open_streams.pop().close()

            def place_again() -> bool:
                with http.stream("GET", "/api/events") as events:
                    return events.status_code == 200

            wait_until(place_again, what="a closed stream's place back")
    finally:
        for sock in open_streams:
            sock.close()


# --------------------------------------------------------------------------- dead letters


def test_dead_letters_are_listed_newest_first_with_their_reason_and_the_subject_as_data(
    bridge: Callable[..., Runtime],
) -> None:
    with client(with_dead_letters(bridge)) as http:
        answer = http.get("/api/dead-letters", params={"limit": 2}).json()
        assert answer["total"] >= 3 and answer["limit"] == 2
        rows = answer["dead_letters"]
        assert len(rows) == 2 and rows[0]["seq"] > rows[1]["seq"]
        row = rows[0]
        assert row["route"] == "gen-to-sink" and row["stage"] == "route"
        assert row["subject"] == HOSTILE  # data, exactly as it came; the page escapes it
        assert "flaky refused" in row["reason"] and row["kind"] == "metric"
        assert json.loads(row["preview"])["module"] == "room"
        assert set(row) >= {"target", "failed_at", "attempts", "env_id"}
        assert http.get("/api/dead-letters", params={"route": "nope"}).json()["dead_letters"] == []
        by_reason = http.get("/api/dead-letters", params={"reason": "FLAKY"}).json()
        assert by_reason["dead_letters"]
        for bad in ("0", "x", "501"):
            refused = http.get("/api/dead-letters", params={"limit": bad})
            assert refused.status_code == 400 and "limit" in refused.json()["error"]


def test_a_replayed_dead_letter_is_delivered_by_the_running_router(
    bridge: Callable[..., Runtime],
) -> None:
    with client(with_dead_letters(bridge)) as http:
        row = http.get("/api/dead-letters").json()["dead_letters"][0]
        answer = http.post("/api/dead-letters/replay", json={"seqs": [row["seq"]]})
        assert answer.status_code == 200
        assert answer.json() == {"queued": 1, "missing": [], "warnings": []}
        wait_until(
            lambda: any(e.id == row["env_id"] for e in core_plugin.received("sink")),
            what="the replayed envelope at its target",
        )
        ledger = http.get("/api/snapshot").json()["routes"]["gen-to-sink"]["ledger"]
        assert ledger["replayed"] == 1
        seqs = [d["seq"] for d in http.get("/api/dead-letters").json()["dead_letters"]]
        assert row["seq"] not in seqs
        again = http.post("/api/dead-letters/replay", json={"seqs": [row["seq"]]})
        assert again.status_code == 400
        assert again.json()["error"].startswith(f"no dead letter with seq {row['seq']}")


def test_purge_deletes_the_chosen_dead_letters_and_says_which_were_gone(
    bridge: Callable[..., Runtime],
) -> None:
    with client(with_dead_letters(bridge)) as http:
        rows = http.get("/api/dead-letters").json()["dead_letters"]
        chosen = [rows[0]["seq"], rows[1]["seq"]]
        answer = http.post("/api/dead-letters/purge", json={"seqs": [*chosen, 999999]})
        assert answer.json() == {"purged": 2, "missing": [999999]}
        left = [d["seq"] for d in http.get("/api/dead-letters").json()["dead_letters"]]
        assert not set(chosen) & set(left)


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (b'{"seqs": [1]}', {"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
        (b'{"seqs": [1]}', {}, 415, "Content-Type: application/json"),
        (b"seqs=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "JSON"),
        (b"{not json", {"Content-Type": "application/json"}, 400, "the body is not JSON"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "a JSON object"),
        (b"{}", {"Content-Type": "application/json"}, 400, '{"seqs": [12, 13]}'),
        (b'{"seqs": "7"}', {"Content-Type": "application/json"}, 400, '{"seqs": [12, 13]}'),
        (b'{"seqs": [0]}', {"Content-Type": "application/json"}, 400, "positive whole"),
        (b'{"seqs": [true]}', {"Content-Type": "application/json"}, 400, "positive whole"),
        (b'{"seqs": [999999]}', {"Content-Type": "application/json"}, 400, "no dead letter"),
    ],
)
def test_actions_refuse_what_is_not_a_json_list_of_known_seqs(
    bridge: Callable[..., Runtime], body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    with client(bridge()) as http:
        for action in ("replay", "purge"):
            answer = http.post(f"/api/dead-letters/{action}", content=body, headers=headers)
            assert answer.status_code == status, answer.text
            assert says in answer.json()["error"]
            assert "Traceback" not in answer.text


# --------------------------------------------------------------------------- explain, config


def test_explain_runs_an_envelope_through_the_loaded_table(bridge: Callable[..., Runtime]) -> None:
    with client(bridge()) as http:
        answer = http.post("/api/explain", json={"envelope": ENVELOPE})
        assert answer.status_code == 200
        result = answer.json()
        assert result["matched"] == 1
        (verdict,) = result["routes"]
        assert verdict["route"] == "gen-to-sink" and verdict["matched"]
        assert [s["step"] for s in verdict["steps"]] == ["flaky", "deliver"]
        assert "route gen-to-sink: MATCH" in result["text"]
        other = http.post("/api/explain", json={"envelope": {**ENVELOPE, "source": "x"}}).json()
        assert other["matched"] == 0
        assert "source 'x' is not in from = ['gen']" in other["routes"][0]["why"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"envelope": {"source": "gen"}}, "not an envelope: Object missing required field"),
        ({"envelope": {**ENVELOPE, "body": {"kind": "nope"}}}, "not an envelope: "),
        ({"envelope": "{not json"}, "not an envelope: "),
        ({"envelope": 5}, 'send {"envelope": {...}}'),
        ({"something": ENVELOPE}, 'send {"envelope": {...}}'),
    ],
)
def test_an_envelope_that_does_not_parse_is_a_clear_400(
    bridge: Callable[..., Runtime], body: dict[str, Any], says: str
) -> None:
    with client(bridge()) as http:
        answer = http.post("/api/explain", json=body)
        assert answer.status_code == 400
        assert answer.json()["error"].startswith(says)
        assert answer.json()["example"]["source"] == "gen"
        assert "Traceback" not in answer.text


def test_config_is_the_file_as_written_with_secrets_redacted(
    bridge: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSOLE_TEST_TOKEN", TOKEN)
    rt = bridge(f'token = "${{CONSOLE_TEST_TOKEN}}"\n# written out by mistake: {TOKEN}')
    with client(rt, TOKEN) as http:
        answer = http.get("/api/config").json()
        assert answer["path"] == rt.loaded.config.path
        assert 'token = "${CONSOLE_TEST_TOKEN}"' in answer["text"]  # a reference, kept
        assert "# written out by mistake: ***" in answer["text"]
        assert TOKEN not in json.dumps(answer)


# --------------------------------------------------------------------------- the token


def test_with_a_token_the_api_needs_it_and_the_page_does_not(
    bridge: Callable[..., Runtime],
) -> None:
    rt = bridge(f'token = "{TOKEN}"')
    with client(rt) as anonymous, client(rt, TOKEN) as known:
        assert anonymous.get("/").status_code == 200
        assert anonymous.get("/console/console.js").status_code == 200
        for method, path in (
            ("GET", "/api/snapshot"),
            ("GET", "/api/events"),
            ("GET", "/api/dead-letters"),
            ("GET", "/api/config"),
            ("POST", "/api/dead-letters/replay"),
            ("POST", "/api/dead-letters/purge"),
            ("POST", "/api/explain"),
        ):
            answer = anonymous.request(method, path, json={"seqs": [1]})
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in answer.text
        wrong = client(rt, TOKEN[:-1])
        assert wrong.post("/api/dead-letters/purge", json={"seqs": [1]}).status_code == 401
        wrong.close()
        assert known.get("/api/snapshot").status_code == 200
        assert known.post("/api/dead-letters/purge", json={"seqs": [1]}).status_code == 400


def test_unknown_api_paths_and_methods_answer_json(bridge: Callable[..., Runtime]) -> None:
    with client(bridge()) as http:
        missing = http.get("/api/nope")
        assert missing.status_code == 404 and "the console is at /" in missing.json()["error"]
        wrong = http.get("/api/explain")
        assert wrong.status_code == 405 and wrong.json()["error"]
        assert http.post("/status", content=b"{}").status_code == 405  # the front's, as before


# --------------------------------------------------------------------------- the ASGI bridge


@pytest.fixture
def front() -> Iterator[Callable[..., OpsServer]]:
    servers: list[OpsServer] = []

    def start(app: Any, **options: Any) -> OpsServer:
        server = OpsServer(lambda: {}, "127.0.0.1:0", 60.0, console=app, **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that answers with the body it was sent."""
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": message["body"]})


def test_the_bridge_reads_the_body_keeps_the_connection_and_bounds_the_size(
    front: Callable[..., OpsServer],
) -> None:
    server = front(echo)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        first = http.post("/api/x", content=b"hello")
        assert (first.status_code, first.content) == (200, b"hello")
        assert first.headers["transfer-encoding"] == "chunked"  # no length given: chunked
        assert http.post("/api/x", content=b"again").content == b"again"  # same connection
        big = http.post("/api/x", content=b"x" * ((1 << 20) + 1))
        assert big.status_code == 413


def test_a_client_waiting_for_100_continue_is_told_to_send_its_body(
    front: Callable[..., OpsServer],
) -> None:
    server = front(echo)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nhello\r\n" in answer


def test_a_body_that_does_not_come_in_time_is_408(front: Callable[..., OpsServer]) -> None:
    server = front(echo, request_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_failing_console_is_a_500_without_a_traceback(front: Callable[..., OpsServer]) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("console bug")

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    for app, says in ((broken, "the console failed"), (silent, "the console sent no answer")):
        server = front(app)
        answer = httpx.get(f"{server.url}/", timeout=10)
        assert answer.status_code == 500 and says in answer.text
        assert "Traceback" not in answer.text and "console bug" not in answer.text
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


# --------------------------------------------------------------------------- junction demo


@pytest.mark.slow
def test_junction_demo_prints_its_console_first_and_serves_it_with_latest_values(
    tmp_path: Path,
) -> None:
    root = Path(__file__).resolve().parents[2]
    demo = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "demo", "--duration", "60"],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root), JUNCTION_DEMO_STATE_DIR=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline().strip()
        assert re.fullmatch(r"console: http://127\.0\.0\.1:\d+/", first), first
        url = first.removeprefix("console: ")

        def latest() -> list[Any]:
            try:
                values: list[Any] = httpx.get(f"{url}api/snapshot", timeout=5).json()["latest"]
            except httpx.TransportError:
                return []
            return values

        wait_until(
            lambda: {v["adapter"] for v in latest()} == {"placeos", "allxon", "alphax"},
            timeout=30,
            what="latest values from all three peers",
        )
        assert httpx.get(url, timeout=5).status_code == 200
    finally:
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=30)
    assert demo.returncode is not None and "Traceback" not in err
