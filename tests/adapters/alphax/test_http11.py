"""The AlphaX write path's HTTP/1.1 pool against small trio servers on real loopback sockets.

Each server speaks HTTP/1.1 with h11 and answers every request as its test's ``handler``
says: status, headers, body chunks, whether to close afterwards, or to cut the answer short.
It counts connections (accepted, open, peak open, closed) and keeps every request it read.
"""

from __future__ import annotations

import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import pytest
import trio
import trustme

from adapters.alphax._http import error_text
from adapters.alphax._http11 import Http11Error, Http11Pool, Http11Response
from tests.conftest import wait_for

HEADERS = {"Accept-Encoding": "gzip", "User-Agent": "junction-test"}


@dataclass
class Answer:
    """What the server sends back for one request."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=lambda: [b'{"ok":true}'])
    chunked: bool = False
    close: bool = False  # close the connection after answering (without saying so)
    cut_after: int | None = None  # send only this many bytes of the answer, then close


@dataclass
class Seen:
    conn: int
    target: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Seen], Awaitable[Answer]]


async def _ok(seen: Seen) -> Answer:
    return Answer(chunks=[b"echo:" + seen.body])


@dataclass
class Server:
    handler: Handler
    tls: ssl.SSLContext | None = None
    port: int = 0
    accepted: int = 0
    open: int = 0
    peak_open: int = 0
    closed: int = 0
    requests: list[Seen] = field(default_factory=list)

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.accepted += 1
        number = self.accepted
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        try:
            await self._requests(stream, number)
        except trio.BrokenResourceError:
            pass  # the client went away (or failed the TLS handshake)
        finally:
            self.open -= 1
            await trio.aclose_forcefully(stream)
            self.closed += 1

    async def _requests(self, stream: trio.abc.Stream, number: int) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.ConnectionClosed):
                    return
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert request is not None
            headers = {k.decode(): v.decode() for k, v in request.headers}
            seen = Seen(number, request.target.decode(), headers, body)
            self.requests.append(seen)
            answer = await self.handler(seen)
            head = list(answer.headers)
            if answer.chunked:
                head.append(("Transfer-Encoding", "chunked"))
            else:
                head.append(("Content-Length", str(sum(len(c) for c in answer.chunks))))
            data = conn.send(h11.Response(status_code=answer.status, headers=head)) or b""
            for chunk in answer.chunks:
                data += conn.send(h11.Data(data=chunk)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            if answer.cut_after is not None:
                await stream.send_all(data[: answer.cut_after])
                return
            await stream.send_all(data)
            if answer.close or conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()


@asynccontextmanager
async def serving(
    handler: Handler = _ok, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(handler, tls)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def pool_for(
    server: Server,
    *,
    max_connections: int = 4,
    timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Http11Pool]:
    scheme = "https" if ssl_context is not None else "http"
    pool = Http11Pool(
        f"{scheme}://127.0.0.1:{server.port}/base/",
        max_connections=max_connections,
        connect_timeout_s=5.0,
        timeout_s=timeout_s,
        ssl_context=ssl_context,
        default_headers=HEADERS,
    )
    try:
        yield pool
    finally:
        await pool.aclose()


async def test_keep_alive_serves_many_posts_on_one_connection() -> None:
    with trio.fail_after(20):
        async with serving() as server, pool_for(server) as pool:
            for i in range(50):
                body = f'{{"n":{i}}}'.encode()
                r = await pool.post("/post/v2", body, {"Content-Type": "application/json"})
                assert (r.status_code, r.reason, r.content) == (200, "", b"echo:" + body)
                assert r.headers["content-length"] == str(len(r.content))
            assert server.accepted == 1 and pool.connects == 1
            assert len(server.requests) == 50
            seen = server.requests[-1]
            assert seen.target == "/base/post/v2"  # base_url's path kept
            assert seen.headers["host"] == f"127.0.0.1:{server.port}"
            assert seen.headers["accept-encoding"] == "gzip"
            assert seen.headers["content-type"] == "application/json"
            assert seen.headers["content-length"] == str(len(seen.body))


async def test_a_connection_the_server_closed_while_idle_is_retried_on_a_fresh_one() -> None:
    async def answer_then_close(seen: Seen) -> Answer:
        return Answer(chunks=[b"echo:" + seen.body], close=True)  # no "Connection: close"

    with trio.fail_after(20):
        async with serving(answer_then_close) as server, pool_for(server) as pool:
            assert (await pool.post("/p", b"one")).content == b"echo:one"
            await wait_for(lambda: server.closed == 1, what="the server closed the idle one")
            r = await pool.post("/p", b"two")
            assert (r.status_code, r.content) == (200, b"echo:two")
            assert pool.stale_retries == 1 and pool.connects == 2
            # the stale connection carried nothing the server read: each body arrived once
            assert [(s.conn, s.body) for s in server.requests] == [(1, b"one"), (2, b"two")]


async def test_one_stale_connection_drops_the_others_idle_as_long() -> None:
    partners = {b"a": b"b", b"b": b"a", b"d": b"e", b"e": b"d"}

    async def in_pairs(seen: Seen) -> Answer:
        """a and b (then d and e) are answered once both arrived: two connections busy."""
        partner = partners.get(seen.body)
        if partner is not None:
            await wait_for(lambda: any(s.body == partner for s in server.requests))
        return Answer(close=seen.body in (b"a", b"b"))  # a's and b's connections go stale

    async def two(pool: Http11Pool, first: bytes, second: bytes) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.post, "/p", first)
            nursery.start_soon(pool.post, "/p", second)

    with trio.fail_after(20):
        async with serving(in_pairs) as server, pool_for(server) as pool:
            await two(pool, b"a", b"b")  # two idle connections afterwards
            await wait_for(lambda: server.closed == 2, what="both idle connections closed")
            await pool.post("/p", b"c")  # stale, then a fresh one (3)
            assert pool.stale_retries == 1 and pool.connects == 3
            await two(pool, b"d", b"e")  # one takes 3; the other must not try the stale one
            assert pool.stale_retries == 1 and pool.connects == 4
            assert sorted(s.body for s in server.requests) == [b"a", b"b", b"c", b"d", b"e"]


async def test_a_fresh_connection_closed_before_answering_is_an_error_not_retried() -> None:
    async def hang_up(seen: Seen) -> Answer:
        return Answer(cut_after=0)

    with trio.fail_after(20):
        async with serving(hang_up) as server, pool_for(server) as pool:
            with pytest.raises(Http11Error, match="before any answer"):
                await pool.post("/p", b"x")
            assert len(server.requests) == 1 and pool.connects == 1


async def test_server_closing_mid_answer_is_an_error_and_not_resent() -> None:
    async def cut_the_second(seen: Seen) -> Answer:
        if seen.body == b"second":
            return Answer(chunks=[b"x" * 100], cut_after=60)  # headers and part of the body
        return Answer()

    with trio.fail_after(20):
        async with serving(cut_the_second) as server, pool_for(server) as pool:
            await pool.post("/p", b"first")
            with pytest.raises(Http11Error, match="bad HTTP answer") as info:
                await pool.post("/p", b"second")  # on the reused connection: no retry
            assert "/base/p" in str(info.value) and str(server.port) in str(info.value)
            assert [s.body for s in server.requests] == [b"first", b"second"]
            assert pool.stale_retries == 0
            assert (await pool.post("/p", b"third")).status_code == 200  # a new connection
            assert pool.connects == 2


@pytest.mark.parametrize(("chunked", "zipped"), [(True, False), (False, True), (True, True)])
async def test_chunked_and_gzip_bodies(chunked: bool, zipped: bool) -> None:
    text = b'{"code": 503, "error": "' + b"busy " * 500 + b'"}'
    wire = gzip.compress(text) if zipped else text
    parts = [wire[i : i + 700] for i in range(0, len(wire), 700)]

    async def answer(seen: Seen) -> Answer:
        headers = [("Content-Encoding", "gzip")] if zipped else []
        return Answer(503, headers, parts, chunked=chunked)

    with trio.fail_after(20):
        async with serving(answer) as server, pool_for(server) as pool:
            for _ in range(3):  # the connection stays usable after each framing
                r = await pool.post("/p", b"x")
                assert (r.status_code, r.content) == (503, text)
            assert pool.connects == 1
            assert error_text(r, "tok") == "HTTP 503: " + "busy " * 500 + " (code 503)"


async def test_undecodable_gzip_is_an_error() -> None:
    async def answer(seen: Seen) -> Answer:
        return Answer(headers=[("Content-Encoding", "gzip")], chunks=[b"not gzip at all"])

    with trio.fail_after(20):
        async with serving(answer) as server, pool_for(server) as pool:
            with pytest.raises(Http11Error, match="undecodable gzip"):
                await pool.post("/p", b"x")


async def test_connection_close_from_the_server_is_honoured() -> None:
    async def answer(seen: Seen) -> Answer:
        return Answer(headers=[("Connection", "close")])

    with trio.fail_after(20):
        async with serving(answer) as server, pool_for(server) as pool:
            for _ in range(3):
                assert (await pool.post("/p", b"x")).status_code == 200
            # a new connection each time, and never an attempt on a closed one
            assert pool.connects == 3 and pool.stale_retries == 0
            assert [s.conn for s in server.requests] == [1, 2, 3]


async def test_no_answer_in_time_is_an_error() -> None:
    release = trio.Event()

    async def stall(seen: Seen) -> Answer:
        await release.wait()
        return Answer()

    with trio.fail_after(20):
        async with serving(stall) as server, pool_for(server, timeout_s=0.3) as pool:
            with pytest.raises(Http11Error, match=r"no answer within 0\.3 s"):
                await pool.post("/p", b"x")
            release.set()
            await wait_for(lambda: server.closed == 1, what="the timed-out connection closed")
            assert (await pool.post("/p", b"y")).status_code == 200  # not on the dead one
            assert pool.connects == 2


async def test_nothing_listening_is_an_error() -> None:
    async with serving() as server:
        port = server.port
    pool = Http11Pool(
        f"http://127.0.0.1:{port}",
        max_connections=1,
        connect_timeout_s=5,
        timeout_s=5,
        ssl_context=None,
        default_headers={},
    )
    with trio.fail_after(20), pytest.raises(Http11Error, match="cannot connect to"):
        await pool.post("/p", b"x")
    await pool.aclose()
    with pytest.raises(Http11Error, match="closed"):
        await pool.post("/p", b"x")


async def test_max_connections_holds_under_concurrency() -> None:
    release = trio.Event()

    async def hold(seen: Seen) -> Answer:
        await release.wait()
        return Answer(chunks=[seen.body])

    results: list[bytes] = []

    async def post(pool: Http11Pool, i: int) -> None:
        results.append((await pool.post("/p", str(i).encode())).content)

    with trio.fail_after(20):
        async with serving(hold) as server, pool_for(server, max_connections=3) as pool:
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(post, pool, i)
                await wait_for(lambda: len(server.requests) == 3, what="3 requests held")
                assert pool.connects == 3  # the other 9 wait for a connection
                release.set()
            assert sorted(results) == sorted(str(i).encode() for i in range(12))
            assert pool.connects == 3 and server.accepted == 3 and server.peak_open == 3


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


async def test_https_with_a_private_ca(ca: trustme.CA) -> None:
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with trio.fail_after(20):
        async with serving(tls=server_tls(ca)) as server:
            async with pool_for(server, ssl_context=trusting) as pool:
                for i in range(5):
                    r = await pool.post("/p", str(i).encode())
                    assert (r.status_code, r.content) == (200, f"echo:{i}".encode())
                assert pool.connects == 1 and server.accepted == 1
            async with pool_for(server, ssl_context=ssl.create_default_context()) as untrusting:
                with pytest.raises(Http11Error, match=r"TLS handshake .* failed.*certificate"):
                    await untrusting.post("/p", b"x")
            assert len(server.requests) == 5


def test_error_text_reads_both_response_types() -> None:
    import httpx

    body = b'{"code": "401", "error": "token tok-1 is unknown"}'
    ours = Http11Response(401, "Unauthorised", body, {})
    theirs = httpx.Response(401, content=body)
    for response in (ours, theirs):
        assert error_text(response, "tok-1") == "HTTP 401: token *** is unknown (code 401)"
    assert (
        error_text(Http11Response(502, "Bad Gateway", b"", {}), "tok-1") == "HTTP 502: Bad Gateway"
    )
    assert error_text(httpx.Response(502), "tok-1") == "HTTP 502: Bad Gateway"
