"""A WebSocket client that hands the caller every message one read brought, in one list.

Why not trio-websocket here: its reader task passes each message through a memory
channel to ``get_message()``, a scheduler round per message. Under a flood of PlaceOS
notifications that machinery was 43 % of the adapter thread's samples (trio's scheduler
and channel) against 15 % for the adapter's own work, and the issue asks for the hot path
batched at every boundary, frames read included. Here the caller's task reads up to
64 KiB, wsproto (the protocol engine trio-websocket itself is built on: handshake,
framing, masking, UTF-8 and close codes) turns it into events, and every complete message
goes back in one list.

What it keeps from trio-websocket's behaviour, since the adapter relies on it:

- a connect timeout covering TCP, TLS and the upgrade;
- a refused upgrade raises :class:`WsRejected` with the status and up to 64 KiB of body;
- a message over ``max_message_size`` closes the connection with 1009;
- the server's pings are answered;
- a close frame is answered;
- :meth:`WsClient.aclose` sends a close frame and waits up to ``disconnect_timeout`` for
  the server's.

Writes are serialised by a FIFO lock: a heartbeat waits behind at most one frame.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

READ_SIZE = 64 * 1024
#: The most of a refusal's body kept for the error message.
REJECT_BODY_MAX = 64 * 1024


class WsError(Exception):
    """Base of this module's errors."""


class WsHandshakeError(WsError):
    """The upgrade did not complete (bad answer, connection lost during it)."""


class WsRejected(WsHandshakeError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(f"upgrade refused with HTTP {status_code}")


class WsClosed(WsError):
    """The connection is closed: ``code`` and ``reason`` of the close frame, None without one;
    ``by_us`` when Junction sent that close frame (a message over the limit, a bad frame, a
    polite close), not the server."""

    def __init__(self, code: int | None, reason: str = "", *, by_us: bool = False) -> None:
        self.code = code
        self.reason = reason
        self.by_us = by_us
        text = "no close frame" if code is None else f"code {code}"
        super().__init__(f"{text}: {reason}" if reason else text)


Message = str | bytes


class WsClient:
    """An open WebSocket connection (client side) on a trio stream."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: WSConnection,
        max_message_size: int,
        disconnect_timeout: float,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._max = max_message_size
        self._disconnect_timeout = disconnect_timeout
        self._send_lock = trio.StrictFIFOLock()
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        self._size = 0
        self._closed: WsClosed | None = None
        #: wsproto may hold frames that came in the same read as the 101
        self._unread = True

    @property
    def closed(self) -> WsClosed | None:
        """Why the connection closed, or None while it is open."""
        return self._closed

    async def send_message(self, message: Message) -> None:
        """Send one text (str) or binary (bytes) message; raises WsClosed once closed."""
        if self._closed is not None:
            raise self._closed
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(message)
        await self._send(self._conn.send(event))

    async def receive_messages(self) -> list[Message]:
        """Every complete message the next read(s) brought, in order: at least one.

        Raises WsClosed when the server closes (after answering its close frame), when
        the connection drops, or after closing with 1009 for a message over the limit;
        complete messages that came before any of these are returned first.
        """
        out: list[Message] = []
        if self._unread:  # what came in the same read as the server's 101
            self._unread = False
            await self._handle_events(out)
        while not out:
            if self._closed is not None:
                raise self._closed
            try:
                data = await self._stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
                raise self._lost(f"connection lost: {err.__cause__ or err}") from err
            if not data:
                raise self._lost("the server closed the TCP connection without a close frame")
            self._conn.receive_data(bytes(data))
            await self._handle_events(out)
        return out

    async def _handle_events(self, out: list[Message]) -> None:
        """Move the complete messages wsproto parsed to ``out``; answer pings and closes.

        Ends the connection on a close frame, a bad frame or a message over the limit;
        ``self._closed`` says why, and the next receive raises it.
        """
        for event in self._conn.events():
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                self._size += len(event.data)
                if self._size > self._max:
                    await self._too_big()
                    return
                if event.message_finished:
                    out.append(self._text[0] if len(self._text) == 1 else "".join(self._text))
                    self._text.clear()
                    self._size = 0
            elif isinstance(event, BytesMessage):
                self._bytes.append(bytes(event.data))
                self._size += len(event.data)
                if self._size > self._max:
                    await self._too_big()
                    return
                if event.message_finished:
                    out.append(b"".join(self._bytes))
                    self._bytes.clear()
                    self._size = 0
            elif isinstance(event, Ping):
                await self._send(self._conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._conn.state is not ConnectionState.REMOTE_CLOSING:
                    # wsproto found a bad frame (1002, 1007...): we close, with its code
                    await self._fail(event.code, event.reason or "protocol error")
                    return
                self._closed = WsClosed(event.code, event.reason or "")
                with suppress(WsError):
                    await self._send(self._conn.send(event.response()))
                await trio.aclose_forcefully(self._stream)
                return

    async def _too_big(self) -> None:
        await self._fail(CloseReason.MESSAGE_TOO_BIG, f"a message over {self._max} bytes")

    async def _fail(self, code: int, reason: str) -> None:
        """Close with ``code`` (best effort); a receive or send raises ``self._closed`` now."""
        self._closed = WsClosed(int(code), reason, by_us=True)
        if self._conn.state is ConnectionState.OPEN:
            with suppress(WsError, LocalProtocolError):
                await self._send(self._conn.send(CloseConnection(code=int(code), reason=reason)))
        await trio.aclose_forcefully(self._stream)

    def _lost(self, reason: str) -> WsClosed:
        self._closed = WsClosed(None, reason)
        return self._closed

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
                raise self._closed or self._lost(
                    f"connection lost while sending: {err.__cause__ or err}"
                ) from err

    async def aclose(self) -> None:
        """Close politely: a close frame (1000), the server's answer for a while, then TCP."""
        if self._closed is None and self._conn.state is ConnectionState.OPEN:
            self._closed = WsClosed(1000, "closed by the client", by_us=True)
            with (
                trio.move_on_after(self._disconnect_timeout),
                suppress(WsError, RemoteProtocolError, trio.BrokenResourceError),
            ):
                await self._send(self._conn.send(CloseConnection(code=1000)))
                await self._await_close_frame()
        await trio.aclose_forcefully(self._stream)

    async def _await_close_frame(self) -> None:
        conn = self._conn
        while conn.state is not ConnectionState.CLOSED:
            data = await self._stream.receive_some(READ_SIZE)
            if not data:
                return
            conn.receive_data(bytes(data))
            for _ in conn.events():
                pass


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    connect_timeout: float,
    disconnect_timeout: float,
    max_message_size: int,
) -> AsyncIterator[WsClient]:
    """Connect to ``ws://`` or ``wss://`` ``url``; yield the open client, close it on exit.

    Raises OSError (cannot connect), trio.TooSlowError (no upgrade within
    ``connect_timeout``), WsRejected or WsHandshakeError.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    with trio.fail_after(connect_timeout):
        client = await _connect(
            host,
            port,
            target,
            secure,
            ssl_context,
            extra_headers,
            max_message_size,
            disconnect_timeout,
        )
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()


async def _connect(
    host: str,
    port: int,
    target: str,
    secure: bool,
    ssl_context: ssl.SSLContext | None,
    extra_headers: Sequence[tuple[bytes, bytes]],
    max_message_size: int,
    disconnect_timeout: float,
) -> WsClient:
    stream: trio.abc.Stream
    if secure:
        context = ssl_context or ssl.create_default_context()
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=context, https_compatible=True
        )
    else:
        stream = await trio.open_tcp_stream(host, port)
    try:
        conn = WSConnection(ConnectionType.CLIENT)
        default_port = 443 if secure else 80
        host_header = host if port == default_port else f"{host}:{port}"
        request = Request(host=host_header, target=target, extra_headers=list(extra_headers))
        try:  # over TLS, the TLS handshake happens here: a bad certificate fails now
            await stream.send_all(conn.send(request))
        except trio.BrokenResourceError as err:
            cause = err.__cause__ or err
            raise WsHandshakeError(f"connection failed before the upgrade: {cause}") from err
        rejected: RejectConnection | None = None
        body = bytearray()
        while True:
            try:
                data = await stream.receive_some(READ_SIZE)
            except trio.BrokenResourceError as err:
                cause = err.__cause__ or err
                raise WsHandshakeError(f"connection lost during the upgrade: {cause}") from err
            if not data:
                if rejected is not None:
                    raise WsRejected(rejected.status_code, bytes(body))
                raise WsHandshakeError("the server closed the connection during the upgrade")
            try:
                conn.receive_data(bytes(data))
                for event in conn.events():
                    if isinstance(event, AcceptConnection):
                        return WsClient(stream, conn, max_message_size, disconnect_timeout)
                    if isinstance(event, RejectConnection):
                        rejected = event
                        if not event.has_body:
                            raise WsRejected(event.status_code, b"")
                    elif isinstance(event, RejectData):
                        if len(body) < REJECT_BODY_MAX:
                            body += event.data[: REJECT_BODY_MAX - len(body)]
                        if event.body_finished and rejected is not None:
                            raise WsRejected(rejected.status_code, bytes(body))
            except RemoteProtocolError as err:
                raise WsHandshakeError(f"bad answer to the upgrade: {err}") from err
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
