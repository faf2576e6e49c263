"""``_wsclient`` over real loopback sockets, against trio-websocket's server and a raw one.

trio-websocket's server plays a well-behaved PlaceOS; where it cannot do what a test needs
(fragments, pings on demand, a close frame never answered, a dropped TCP connection) a
raw TCP server speaks wsproto itself and records every event the client sent.

Servers wait for the client's ``READY`` message before sending anything, so a test does not
depend on how the kernel coalesced the server's writes; frames that come in the same read as
the ``101`` answer have a test of their own
(``test_frames_in_the_same_read_as_the_101_are_not_stuck``).
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trustme
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from adapters.placeos._wsclient import (
    WsClient,
    WsClosed,
    WsHandshakeError,
    WsRejected,
    open_websocket,
)
from adapters.placeos.connection import who_closed

Handler = Callable[[WebSocketRequest], Awaitable[None]]
READY = "ready"


# ----------------------------------------------------------------- servers and client


@asynccontextmanager
async def ws_server(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[WebSocketServer]:
    """A trio-websocket server on 127.0.0.1; a handler's exception fails the test."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=ssl_context)
        )
        yield server
        nursery.cancel_scope.cancel()


def url_of(server: WebSocketServer, path: str = "/", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port}{path}"


@asynccontextmanager
async def raw_server(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[str]:
    """A plain TCP server on 127.0.0.1; yields its ``ws://`` URL."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
        nursery.cancel_scope.cancel()


class RawPeer:
    """The server side of one connection, spoken with wsproto; keeps every event seen."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = WSConnection(ConnectionType.SERVER)
        self.pending: deque[Event] = deque()
        self.seen: list[Event] = []

    async def next_event(self) -> Event:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the client closed the TCP connection")
            self.conn.receive_data(data)
            self.pending.extend(self.conn.events())
        event = self.pending.popleft()
        self.seen.append(event)
        return event

    async def accept(self, *, wait_ready: bool = True) -> Request:
        request = await self.next_event()
        assert isinstance(request, Request)
        await self.send(AcceptConnection())
        if wait_ready:
            assert await self.next_event() == TextMessage(data=READY)
        return request

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(event) for event in events))


def connect(url: str, **options: Any) -> Any:
    kwargs: dict[str, Any] = {
        "ssl_context": None,
        "extra_headers": (),
        "connect_timeout": 5.0,
        "disconnect_timeout": 2.0,
        "max_message_size": 1 << 20,
    }
    kwargs.update(options)
    return open_websocket(url, **kwargs)


async def accept_ready(request: WebSocketRequest) -> WebSocketConnection:
    """Server side: accept, then wait for the client's READY."""
    ws = await request.accept()
    assert await ws.get_message() == READY
    return ws


@asynccontextmanager
async def ready(url: str, **options: Any) -> AsyncIterator[WsClient]:
    """Client side: connect and say READY."""
    async with connect(url, **options) as client:
        await client.send_message(READY)
        yield client


async def drain(ws: WebSocketConnection) -> tuple[list[str | bytes], int | None]:
    """Server side: every message until the connection closes, and the close code."""
    messages: list[str | bytes] = []
    while True:
        try:
            messages.append(await ws.get_message())
        except ConnectionClosed as err:
            return messages, err.reason.code if err.reason else None


async def receive_n(client: WsClient, n: int) -> list[list[str | bytes]]:
    """The batches ``receive_messages`` returned until ``n`` messages arrived."""
    batches: list[list[str | bytes]] = []
    while sum(map(len, batches)) < n:
        batches.append(await client.receive_messages())
    return batches


async def closed_by(provoke: Callable[[RawPeer], Awaitable[None]]) -> tuple[WsClosed, Event]:
    """A raw server does ``provoke`` after READY; the client's next receive must fail.

    Returns the client's WsClosed and the first event it sent back (its close frame).
    """
    answers: list[Event] = []
    done = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        await peer.accept()
        await provoke(peer)
        try:
            answers.append(await peer.next_event())
        finally:
            done.set()

    with trio.fail_after(5):
        async with raw_server(handler) as url:
            async with ready(url) as client:
                with pytest.raises(WsClosed) as caught:
                    await client.receive_messages()
            await done.wait()
    return caught.value, answers[0]


# ----------------------------------------------------------------- handshake


async def test_extra_headers_path_and_query_reach_the_server() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: WebSocketRequest) -> None:
        seen["headers"] = request.headers
        seen["path"] = request.path
        ws = await accept_ready(request)
        await ws.send_message("hi")
        await drain(ws)

    with trio.fail_after(5):
        async with ws_server(handler) as server:
            url = url_of(server, "/api/engine/v2/systems/control?fixed_device=true&x=1")
            headers = [(b"X-API-Key", b"k1"), (b"Authorization", b"Bearer t")]
            async with ready(url, extra_headers=headers) as client:
                assert await client.receive_messages() == ["hi"]
    assert seen["path"] == "/api/engine/v2/systems/control?fixed_device=true&x=1"
    headers = dict(seen["headers"])
    assert headers[b"x-api-key"] == b"k1"
    assert headers[b"authorization"] == b"Bearer t"


async def test_host_header_carries_a_non_default_port() -> None:
    requests: list[Request] = []

    async def handler(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        requests.append(await peer.accept())
        await peer.send(TextMessage(data="ok"))
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with raw_server(handler) as url, ready(url, disconnect_timeout=0.1) as client:
            assert await client.receive_messages() == ["ok"]
    assert requests[0].host == url.removeprefix("ws://").rstrip("/")
    assert requests[0].target == "/"


async def test_url_without_a_path_asks_for_the_root() -> None:
    seen: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append(request.path)
        await drain(await request.accept())

    with trio.fail_after(5):
        async with ws_server(handler) as server:
            async with connect(f"ws://127.0.0.1:{server.port}"):
                pass
    assert seen == ["/"]


async def test_rejection_gives_status_and_body() -> None:
    async def handler(request: WebSocketRequest) -> None:
        if request.path == "/401":
            await request.reject(401, body=b"bad key")
        else:
            await request.reject(403)

    with trio.fail_after(5):
        async with ws_server(handler) as server:
            with pytest.raises(WsRejected) as caught:
                async with connect(url_of(server, "/401")):
                    pytest.fail("the upgrade was refused")
            assert (caught.value.status_code, caught.value.body) == (401, b"bad key")
            assert isinstance(caught.value, WsHandshakeError)

            with pytest.raises(WsRejected) as caught:
                async with connect(url_of(server, "/403")):
                    pytest.fail("the upgrade was refused")
            assert (caught.value.status_code, caught.value.body) == (403, b"")


async def test_rejection_body_is_capped_at_64_kib() -> None:
    body = bytes(range(256)) * 400  # 102400 bytes

    async def handler(request: WebSocketRequest) -> None:
        await request.reject(500, body=body)

    with trio.fail_after(5):
        async with ws_server(handler) as server:
            with pytest.raises(WsRejected) as caught:
                async with connect(url_of(server)):
                    pass
    assert caught.value.status_code == 500
    assert caught.value.body == body[: 64 * 1024]


async def test_garbage_answer_or_hang_up_during_upgrade_is_a_handshake_error() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await trio.sleep_forever()

    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.aclose()

    with trio.fail_after(5):
        for handler in (garbage, hang_up):
            async with raw_server(handler) as url:
                with pytest.raises(WsHandshakeError) as caught:
                    async with connect(url):
                        pass
                assert not isinstance(caught.value, WsRejected)


async def test_connect_timeout_covers_the_upgrade() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with raw_server(silent) as url:
            start = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                async with connect(url, connect_timeout=0.3):
                    pass
            elapsed = trio.current_time() - start
    assert 0.29 <= elapsed < 1.5


async def test_nothing_listening_is_an_os_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(5):
        with pytest.raises(OSError):
            async with connect(f"ws://127.0.0.1:{port}/"):
                pass


# ----------------------------------------------------------------- messages


async def test_messages_that_piled_up_come_back_batched_in_order() -> None:
    sent = trio.Event()
    expected = [f"msg-{i}" for i in range(500)]

    async def handler(request: WebSocketRequest) -> None:
        ws = await accept_ready(request)
        for message in expected:
            await ws.send_message(message)
        sent.set()
        await drain(ws)

    with trio.fail_after(5):
        async with ws_server(handler) as server, ready(url_of(server)) as client:
            await sent.wait()
            await trio.sleep(0.2)  # everything is in the socket before the first read
            batches = await receive_n(client, 500)
    assert [m for batch in batches for m in batch] == expected
    assert max(map(len, batches)) > 1
    assert len(batches) < 50


async def test_binary_is_bytes_and_text_is_str_both_ways() -> None:
    got: list[list[str | bytes]] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await accept_ready(request)
        await ws.send_message(b"\x00\x01\xffbin")
        await ws.send_message("text é")
        await ws.send_message(b"")
        got.append((await drain(ws))[0])

    with trio.fail_after(5):
        async with ws_server(handler) as server:
            async with ready(url_of(server)) as client:
                batches = await receive_n(client, 3)
                await client.send_message(b"\x02up")
                await client.send_message("up é")
            messages = [m for batch in batches for m in batch]
            assert messages == [b"\x00\x01\xffbin", "text é", b""]
            assert [type(m) for m in messages] == [bytes, str, bytes]
            while not got:
                await trio.sleep(0.01)
    assert got == [[b"\x02up", "up é"]]
    assert [type(m) for m in got[0]] == [bytes, str]


async def test_fragmented_message_is_one_message_and_a_ping_between_is_answered() -> None:
    peers: list[RawPeer] = []
    done = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        peers.append(peer)
        await peer.accept()
        await peer.send(TextMessage(data="hel", message_finished=False), Ping(payload=b"p-1"))
        # The rest is sent only once the pong came: the client answers pings while a
        # message is still incomplete, or this test times out.
        pong = await peer.next_event()
        assert pong == Pong(payload=b"p-1")
        await peer.send(TextMessage(data="lo", message_finished=True), TextMessage(data="next"))
        close = await peer.next_event()
        assert isinstance(close, CloseConnection)
        await peer.send(close.response())
        done.set()

    with trio.fail_after(5):
        async with raw_server(handler) as url:
            async with ready(url) as client:
                batches = await receive_n(client, 2)
            await done.wait()
    assert [m for batch in batches for m in batch] == ["hello", "next"]
    assert [type(e) for e in peers[0].seen] == [Request, TextMessage, Pong, CloseConnection]
    assert peers[0].seen[-1].code == 1000


async def test_a_frame_split_across_reads_mid_character() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        await peer.accept()
        wire = peer.conn.send(TextMessage(data="a€b"))  # € is 3 bytes in UTF-8
        cut = wire.index("€".encode()) + 1
        await stream.send_all(wire[:cut])
        await trio.sleep(0.05)
        await stream.send_all(wire[cut:])
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with raw_server(handler) as url:
            async with ready(url, disconnect_timeout=0.1) as client:
                assert await client.receive_messages() == ["a€b"]


async def test_invalid_utf8_closes_with_1007() -> None:
    async def provoke(peer: RawPeer) -> None:
        await peer.stream.send_all(b"\x81\x02\xff\xfe")  # FIN + text, 2 bytes, not UTF-8

    closed, answer = await closed_by(provoke)
    assert closed.code == 1007
    assert isinstance(answer, CloseConnection) and answer.code == 1007


async def test_frames_in_the_same_read_as_the_101_are_not_stuck() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        request = await peer.next_event()
        assert isinstance(request, Request)
        # One write: the 101 and a first message, as a server may send right after accepting.
        await peer.send(AcceptConnection(), TextMessage(data="welcome"))
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with raw_server(handler) as url:
            async with connect(url, disconnect_timeout=0.1) as client:
                with trio.move_on_after(1):
                    assert await client.receive_messages() == ["welcome"]
                    return
    pytest.fail("'welcome' was never returned: receive_messages waited for another read")


async def test_message_over_the_limit_closes_with_1009() -> None:
    server_saw: list[int | None] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await accept_ready(request)
        await ws.send_message("x" * 5000)
        server_saw.append((await drain(ws))[1])
        done.set()

    with trio.fail_after(5):
        async with ws_server(handler) as server:
            with pytest.raises(WsClosed) as caught:
                async with ready(url_of(server), max_message_size=1000) as client:
                    await client.receive_messages()
            await done.wait()
    assert caught.value.code == 1009
    assert caught.value.by_us  # Junction closed it, not the server
    assert who_closed(caught.value) == "closed by Junction"
    assert server_saw == [1009]


async def test_limit_counts_the_fragments_of_one_message() -> None:
    seen: list[Event] = []
    done = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        await peer.accept()
        await peer.send(TextMessage(data="y" * 1000))  # exactly the limit: accepted
        assert await peer.next_event() == TextMessage(data="got it")
        parts = [TextMessage(data="z" * 400, message_finished=False) for _ in range(2)]
        await peer.send(*parts, TextMessage(data="z" * 400, message_finished=True))
        try:
            seen.append(await peer.next_event())
        finally:
            done.set()

    with trio.fail_after(5):
        async with raw_server(handler) as url:
            async with ready(url, max_message_size=1000) as client:
                assert await client.receive_messages() == ["y" * 1000]
                await client.send_message("got it")
                with pytest.raises(WsClosed) as caught:
                    await client.receive_messages()
            await done.wait()
    assert caught.value.code == 1009
    assert isinstance(seen[0], CloseConnection) and seen[0].code == 1009


async def test_a_complete_message_before_an_oversize_one_is_still_delivered() -> None:
    sent = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await accept_ready(request)
        await ws.send_message("fits")
        await ws.send_message("x" * 5000)
        sent.set()
        await drain(ws)

    with trio.fail_after(5):
        async with ws_server(handler) as server:
            async with ready(url_of(server), max_message_size=1000) as client:
                await sent.wait()
                await trio.sleep(0.1)  # both messages come in one read
                received: list[str | bytes] = []
                with pytest.raises(WsClosed) as caught:
                    while True:
                        received += await client.receive_messages()
    assert caught.value.code == 1009
    assert received == ["fits"]


# ----------------------------------------------------------------- closing


async def test_server_close_code_and_reason_then_sends_fail() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await accept_ready(request)
        await ws.send_message("last")
        await ws.aclose(4000, "bye")

    with trio.fail_after(5):
        async with ws_server(handler) as server, ready(url_of(server)) as client:
            received: list[str | bytes] = []
            with pytest.raises(WsClosed) as caught:
                while True:
                    received += await client.receive_messages()
            assert received == ["last"]
            assert (caught.value.code, caught.value.reason) == (4000, "bye")
            assert client.closed is caught.value
            with pytest.raises(WsClosed) as again:
                await client.send_message("too late")
            assert again.value.code == 4000
            with pytest.raises(WsClosed):
                await client.receive_messages()


async def test_server_close_frame_is_answered_with_its_code() -> None:
    async def provoke(peer: RawPeer) -> None:
        await peer.send(CloseConnection(code=4001, reason="going"))

    closed, answer = await closed_by(provoke)
    assert (closed.code, closed.reason) == (4001, "going")
    assert isinstance(answer, CloseConnection) and answer.code == 4001


async def test_leaving_the_block_closes_with_1000() -> None:
    server_saw: list[tuple[list[str | bytes], int | None]] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        server_saw.append(await drain(ws))
        done.set()

    with trio.fail_after(5):
        async with ws_server(handler) as server:
            async with connect(url_of(server)) as client:
                await client.send_message("bye soon")
            assert client.closed is not None and client.closed.code == 1000
            await done.wait()
    assert server_saw == [(["bye soon"], 1000)]


async def test_close_waits_for_the_answer_only_disconnect_timeout() -> None:
    seen: list[Event] = []

    async def handler(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        await peer.accept(wait_ready=False)
        seen.append(await peer.next_event())
        await trio.sleep_forever()  # never answers the close frame

    with trio.fail_after(5):
        async with raw_server(handler) as url:
            async with connect(url, disconnect_timeout=0.3):
                start = trio.current_time()
            elapsed = trio.current_time() - start
    assert 0.29 <= elapsed < 1.5
    assert isinstance(seen[0], CloseConnection) and seen[0].code == 1000


async def test_dropped_tcp_connection_is_closed_without_a_code() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        peer = RawPeer(stream)
        await peer.accept()
        await peer.send(TextMessage(data="one"))
        await stream.aclose()

    with trio.fail_after(5):
        async with raw_server(handler) as url, ready(url) as client:
            received: list[str | bytes] = []
            with pytest.raises(WsClosed) as caught:
                while True:
                    received += await client.receive_messages()
            assert received == ["one"]
            assert caught.value.code is None
            with pytest.raises(WsClosed):
                await client.send_message("x")


# ----------------------------------------------------------------- sending


async def test_concurrent_senders_all_arrive_each_in_order() -> None:
    got: list[list[str | bytes]] = []
    done = trio.Event()
    pad = "." * 2000  # 800 kB in all: the socket fills and send_all really waits

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        got.append([await ws.get_message() for _ in range(400)])
        done.set()
        await drain(ws)

    async def sender(client: WsClient, name: str) -> None:
        for i in range(200):
            await client.send_message(f"{name}-{i}-{pad}")

    with trio.fail_after(8):
        async with ws_server(handler) as server:
            async with connect(url_of(server)) as client:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender, client, "a")
                    nursery.start_soon(sender, client, "b")
                await done.wait()
    messages = [str(m).removesuffix("-" + pad) for m in got[0]]
    assert len(messages) == 400
    assert [m for m in messages if m.startswith("a-")] == [f"a-{i}" for i in range(200)]
    assert [m for m in messages if m.startswith("b-")] == [f"b-{i}" for i in range(200)]


# ----------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_wss_round_trip_with_a_private_ca(ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            await ws.send_message(f"echo:{message}")

    with trio.fail_after(5):
        async with ws_server(handler, ssl_context=server_ctx) as server:
            url = url_of(server, "/secure?q=1", scheme="wss")
            async with connect(url, ssl_context=trusting) as client:
                await client.send_message("ping")
                assert await client.receive_messages() == ["echo:ping"]
                await client.send_message("x" * 100_000)
                batches = await receive_n(client, 1)
                assert batches == [["echo:" + "x" * 100_000]]


async def test_untrusted_certificate_is_a_handshake_error(ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

    async def handler(request: WebSocketRequest) -> None:
        await drain(await request.accept())

    with trio.fail_after(5):
        async with ws_server(handler, ssl_context=server_ctx) as server:
            with pytest.raises(WsHandshakeError, match="CERTIFICATE_VERIFY_FAILED"):
                async with connect(
                    url_of(server, scheme="wss"), ssl_context=ssl.create_default_context()
                ):
                    pytest.fail("an untrusted certificate was accepted")
