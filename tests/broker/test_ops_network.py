"""An operations endpoint fit for a network (issue 17, item 6), and ``run`` binding it
before any adapter connects (item 4).

Real sockets on 127.0.0.1 throughout: half-sent and idle connections are raw sockets,
requests plain ``urllib`` / ``http.client``. The servers get short timeouts so the tests
are quick; nothing here asserts how fast anything is, only what happened.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import cli
from broker._errors import ConfigError
from broker._ops_http import OpsServer
from broker._runtime import Loaded, Runtime
from tests.support import core_plugin

TOKEN = "ops-token-0123456789"


def snapshot() -> dict[str, Any]:
    return {"uptime_s": 1.0, "adapters": {}, "routes": {}}


@pytest.fixture
def serve() -> Iterator[Callable[..., OpsServer]]:
    """OpsServers on 127.0.0.1:0 (keyword options passed on); all stopped afterwards."""
    servers: list[OpsServer] = []

    def start(snap: Callable[[], dict[str, Any]] = snapshot, **options: Any) -> OpsServer:
        server = OpsServer(snap, "127.0.0.1:0", 60.0, **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    """GET ``url``: (status, headers, body), error statuses included."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def connect(server: OpsServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed); a socket
    timeout (10 s: the server held the connection) fails the test."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


# --------------------------------------------------------------------------- timeouts


def test_a_half_sent_request_is_answered_408_and_closed(
    serve: Callable[..., OpsServer],
) -> None:
    server = serve(request_timeout_s=0.3)
    with connect(server) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert get(f"{server.url}/healthz")[0] == 200  # and it goes on serving


def test_a_connection_that_sends_nothing_is_closed(serve: Callable[..., OpsServer]) -> None:
    server = serve(request_timeout_s=0.3)
    with connect(server) as sock:
        assert read_until_closed(sock) == b""


def test_keep_alive_serves_several_requests_then_closes_an_idle_connection(
    serve: Callable[..., OpsServer],
) -> None:
    server = serve(idle_timeout_s=0.3)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok\n")
        assert conn.sock is not None
        sock = conn.sock  # the same connection all along; now left idle
        assert read_until_closed(sock) == b""
    finally:
        conn.close()


@pytest.mark.parametrize("end", [b"\r\n\r\n", b""], ids=["complete", "still-coming"])
def test_a_head_over_the_limit_is_431_and_closed(
    end: bytes, serve: Callable[..., OpsServer]
) -> None:
    server = serve(max_head_bytes=4096)
    with connect(server) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 8192 + end)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")


def test_head_is_answered_without_a_body_and_post_is_405(serve: Callable[..., OpsServer]) -> None:
    server = serve()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("HEAD", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Length") == "3"
        assert response.read() == b""
        conn.request("POST", "/status", body=b"{}")
        response = conn.getresponse()
        assert response.status == 405 and response.getheader("Allow") == "GET, HEAD"
    finally:
        conn.close()


def test_a_snapshot_that_does_not_come_is_503_and_healthz_still_answers(
    serve: Callable[..., OpsServer],
) -> None:
    release = threading.Event()

    def stuck() -> dict[str, Any]:
        release.wait(30)
        return snapshot()

    server = serve(stuck, answer_timeout_s=0.3)
    try:
        status, headers, body = get(f"{server.url}/status")
        assert status == 503 and "no snapshot within 0.3 s" in body
        assert headers["Retry-After"] == "1"
        assert get(f"{server.url}/healthz")[0] == 200
    finally:
        release.set()


# --------------------------------------------------------------------------- the bound


def test_idle_connections_past_the_bound_neither_lock_out_a_request_nor_take_threads(
    serve: Callable[..., OpsServer],
) -> None:
    server = serve(max_connections=8)
    assert get(f"{server.url}/healthz")[0] == 200
    threads = threading.active_count()
    idle = [connect(server) for _ in range(100)]
    half = [connect(server) for _ in range(100)]
    try:
        for sock in half:
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        assert get(f"{server.url}/healthz")[0] == 200
        assert threading.active_count() <= threads  # no thread per connection
        # the bound holds: the oldest of them were closed to make room
        assert read_until_closed(idle[0]) == b""
    finally:
        for sock in idle + half:
            sock.close()
    assert get(f"{server.url}/healthz")[0] == 200


def test_when_every_connection_is_being_answered_one_more_gets_503(
    serve: Callable[..., OpsServer],
) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow() -> dict[str, Any]:
        entered.release()
        release.wait(30)
        return snapshot()

    server = serve(slow, max_connections=2)
    answers: list[int] = []
    clients = [
        threading.Thread(target=lambda: answers.append(get(f"{server.url}/status")[0]))
        for _ in range(2)
    ]
    try:
        for client in clients:
            client.start()
        for _ in clients:
            assert entered.acquire(timeout=10), "both requests are being answered"
        with connect(server) as sock:
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
    finally:
        release.set()
        for client in clients:
            client.join(10)
    assert answers == [200, 200]


# --------------------------------------------------------------------------- the token


def test_with_a_token_every_path_but_healthz_needs_it(serve: Callable[..., OpsServer]) -> None:
    server = serve(token=TOKEN)
    for path in ("/status", "/metrics", "/readyz", "/nope"):
        status, headers, body = get(f"{server.url}{path}")
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in body and TOKEN not in body
        assert get(f"{server.url}{path}", token="wrong-token-0123456789")[0] == 401
        assert get(f"{server.url}{path}", token=TOKEN[:-1])[0] == 401
    assert get(f"{server.url}/healthz")[0] == 200
    assert get(f"{server.url}/status", token=TOKEN)[0] == 200
    assert get(f"{server.url}/nope", token=TOKEN)[0] == 404


def test_without_a_token_nothing_is_asked(serve: Callable[..., OpsServer]) -> None:
    server = serve()
    assert get(f"{server.url}/status")[0] == 200


# --------------------------------------------------------------------------- check


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "192.0.2.7:9464", "myhost:1"])
def test_check_refuses_a_public_listen_without_a_token(
    listen: str, write_config: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(f'[junction.http]\nlisten = "{listen}"\n')
    assert cli.main(["check", cfg]) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "junction.http.listen" in line)
    assert line.strip().startswith(f"{cfg}: junction.http.listen: other machines can reach")
    assert f"(got {listen!r})" in line
    assert "token" in line and "allow_public_without_token = true" in line
    assert "Traceback" not in err


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "localhost:9464", "[::1]:9464"])
def test_check_accepts_a_loopback_listen_without_a_token(
    listen: str, write_config: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(f'[junction.http]\nlisten = "{listen}"\n')
    assert cli.main(["check", cfg]) == 0, capsys.readouterr().err


def test_check_accepts_a_public_listen_with_the_opt_in_or_a_token(
    write_config: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opt_in = write_config(
        '[junction.http]\nlisten = "0.0.0.0:9464"\nallow_public_without_token = true\n'
    )
    assert cli.main(["check", opt_in]) == 0, capsys.readouterr().err
    monkeypatch.setenv("JUNCTION_TEST_OPS_TOKEN", TOKEN)
    token = write_config(
        '[junction.http]\nlisten = "0.0.0.0:9464"\ntoken = "${JUNCTION_TEST_OPS_TOKEN}"\n',
        name="token.toml",
    )
    assert cli.main(["check", token]) == 0, capsys.readouterr().err
    assert TOKEN not in capsys.readouterr().out


def test_check_refuses_a_short_token_and_a_bad_listen(
    write_config: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config('[junction.http]\nlisten = "9464"\ntoken = "short"\n')
    assert cli.main(["check", cfg]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: junction.http.token: a secret of 5 characters is too short" in err
    assert f"{cfg}: junction.http.listen: not host:port (got '9464')" in err


def test_run_refuses_a_public_listen_without_a_token(
    write_config: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config('[junction.http]\nlisten = "0.0.0.0:0"\n')
    assert cli.main(["run", cfg, "--duration", "0.1"]) == 2
    assert "junction.http.listen: other machines can reach" in capsys.readouterr().err


# --------------------------------------------------------------------------- status


def status_config(tmp_path: Path, port: int, token_line: str) -> str:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        f'[junction]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[junction.http]\nlisten = "127.0.0.1:{port}"\n{token_line}\n'
    )
    return str(cfg)


def test_status_sends_the_configs_token(
    serve: Callable[..., OpsServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(token=TOKEN)
    monkeypatch.setenv("JUNCTION_TEST_OPS_TOKEN", TOKEN)
    cfg = status_config(tmp_path, server.port, 'token = "${JUNCTION_TEST_OPS_TOKEN}"')
    assert cli.main(["status", cfg, "--json"]) == 0, capsys.readouterr().err
    assert '"uptime_s": 1.0' in capsys.readouterr().out
    assert cli.main(["status", cfg, "--json", "--url", server.url]) == 0
    capsys.readouterr()

    wrong = status_config(tmp_path, server.port, 'token = "not-the-token-0123"')
    assert cli.main(["status", wrong]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"the bridge at {server.url} answered 401: ")
    assert "token differs" in err

    none = status_config(tmp_path, server.port, "")
    assert cli.main(["status", none]) == 1
    assert "set [junction.http] token" in capsys.readouterr().err


def test_status_names_the_token_variable_this_shell_lacks_and_dlq_does_not_need_it(
    serve: Callable[..., OpsServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JUNCTION_TEST_OPS_TOKEN", raising=False)
    server = serve(token=TOKEN)
    cfg = status_config(tmp_path, server.port, 'token = "${JUNCTION_TEST_OPS_TOKEN}"')
    assert cli.main(["status", cfg]) == 2
    err = capsys.readouterr().err
    assert "junction.http.token: environment variable JUNCTION_TEST_OPS_TOKEN is not set" in err
    assert cli.main(["dlq", "list", cfg]) == 1  # no outbox yet; the token is not its business
    assert "no outbox at" in capsys.readouterr().err


# --------------------------------------------------------------------------- run


def test_a_taken_port_stops_start_up_before_any_adapter_is_built(
    load_config: Callable[[str], Loaded],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        loaded = load_config(
            f"""
[junction.http]
listen = "127.0.0.1:{port}"
[adapters.sink]
type = "collector"
[adapters.src]
type = "burst"
count = 5
[[routes]]
name = "r"
from = "src"
to = "sink"
"""
        )
        core_plugin.reset()
        rt = Runtime(loaded)
        try:
            with pytest.raises(ConfigError) as err:
                rt.start()
        finally:
            rt.stop(grace_s=0)
    assert "[junction.http] listen: cannot listen on it: " in str(err.value)
    assert core_plugin.BUILT["sink"] == 0 and not rt.adapters
    assert core_plugin.received("sink") == []


def test_run_on_a_taken_port_exits_2_and_its_peer_never_sees_a_connection(
    write_config: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken, socket.socket() as peer:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        peer.bind(("127.0.0.1", 0))
        peer.listen()
        cfg = write_config(
            f"""
[junction.http]
listen = "127.0.0.1:{taken.getsockname()[1]}"
[adapters.pos]
type = "placeos"
url = "ws://127.0.0.1:{peer.getsockname()[1]}/api/engine/v2/systems/control"
api_key = "placeos-key-0123456789"
"""
        )
        assert cli.main(["run", cfg]) == 2
        err = capsys.readouterr().err
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.accept()  # the adapter never connected
    problems = [line for line in err.splitlines() if "junction.http" in line]
    assert len(problems) == 1 and "cannot listen on it" in problems[0]
    assert "Traceback" not in err


def test_a_reload_that_changes_the_token_says_so_without_showing_it(
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
    write_config: Callable[..., str],
    tmp_path: Path,
) -> None:
    text = f"""
[junction.http]
listen = "127.0.0.1:0"
token = "first-token-0123456"
[adapters.out]
type = "file"
path = "{tmp_path / "out.jsonl"}"
"""
    rt = runtime_of(load_config(text))
    write_config(text.replace("first-token-0123456", "second-token-0123456"))
    report = rt.reload()
    shown = str(report)
    assert "http.token" in shown and "needs a restart" in shown
    assert "first-token" not in shown and "second-token" not in shown
