"""A lean keep-alive HTTP/1.1 client for AlphaX posts: trio streams + h11, nothing more.

Why not httpx here: at ~1,000 posts/s the bridge spent most of a core in httpx/httpcore,
largely in the connection pool, which asks every pooled connection ``has_expired()`` (a
``poll`` syscall each) on every request, plus the client's per-request layers. AlphaX v2 takes
one device and one timestamp per post, so a busy PlaceOS stream is ~1 post per change and the
per-post cost is what matters. This pool does only what the write path needs:

- one origin (``base_url``), POST only, bodies already encoded by the caller;
- idle connections in a LIFO list: a request takes the most recently used one, no scan; at
  most ``max_connections`` open, a request waits for one when all are busy;
- a *reused* connection that fails before any response byte arrived (EOF or reset: the server
  closed it while idle) is retried once on a fresh connection. Nothing was received, so the
  server did not act on the request and sending it again does not store anything twice.
  Connections idle at least as long as that one are dropped as well (they are as stale).
  Any other network error, protocol error or timeout raises :class:`Http11Error`;
- ``Connection: close`` and HTTP/1.0 answers are honoured (h11 tracks it); bodies are read by
  Content-Length, chunked or until EOF (h11 frames them); a gzip body is decompressed;
- ``connect_timeout_s`` bounds connecting (TCP and TLS handshake), ``timeout_s`` the whole
  call (waiting for a connection, connecting, sending, the full answer).

Reads (the poller's GETs) stay on httpx: they are rare and need its query handling.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from adapters.alphax._codec_base import MAX_RESPONSE_BYTES

__all__ = ["Http11Error", "Http11Pool", "Http11Response"]

_READ_SIZE = 65536
_GZIP = frozenset({"gzip", "x-gzip"})


class Http11Error(Exception):
    """A post that got no usable answer (network, protocol, timeout, undecodable body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Http11Response:
    """A complete answer; ``headers`` has lower-case names (repeats joined with ``, ``) and
    ``content`` is the body after gzip decoding."""

    status_code: int
    reason: str
    content: bytes
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    @property
    def reason_phrase(self) -> str:
        """``reason`` under httpx's name, so code reading either response type works."""
        return self.reason


class _Stale(Exception):
    """A reused connection broke before any response byte: the request may be sent again."""


class _Conn:
    """One open connection and its h11 state machine."""

    __slots__ = ("h11", "idle_since", "reused", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.reused = False
        self.idle_since = 0.0


class Http11Pool:
    """Keep-alive HTTP/1.1 connections to one origin, for POSTs (see the module docstring).

    Bound to the trio run that first uses it; ``aclose`` closes every connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None,
        default_headers: Mapping[str, str],
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if connect_timeout_s <= 0 or timeout_s <= 0:
            raise ValueError(
                f"timeouts must be > 0, got connect_timeout_s={connect_timeout_s!r}, "
                f"timeout_s={timeout_s!r}"
            )
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._ssl_context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl_context = ssl_context or ssl.create_default_context()
        self._prefix = parts.path.rstrip("/")
        host_header = parts.netloc.rpartition("@")[2]
        self._headers: list[tuple[bytes, bytes]] = [(b"Host", host_header.encode("ascii"))]
        self._headers += [
            (k.encode("ascii"), v.encode("latin-1")) for k, v in default_headers.items()
        ]
        self._idle: list[_Conn] = []
        self._slots = trio.Semaphore(max_connections)
        self._closed = False
        #: Counters: connections opened, and requests re-sent after a stale connection.
        self.connects = 0
        self.stale_retries = 0

    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Http11Response:
        """POST ``body`` to ``base_url + path``; the complete answer, whatever its status.

        Raises :class:`Http11Error` for anything that is not a complete HTTP answer.
        """
        if self._closed:
            raise Http11Error(f"POST {path} to {self.where}: the connection pool is closed")
        request = list(self._headers)
        if headers:
            request += _encode(headers)
        request.append((b"Content-Length", str(len(body)).encode("ascii")))
        target = self._prefix + path
        deadline = trio.current_time() + self.timeout_s
        with trio.move_on_at(deadline):
            async with self._slots:
                response: Http11Response | None = None
                if self._idle:
                    conn = self._idle.pop()
                    try:
                        response = await self._exchange(conn, target, request, body)
                    except _Stale:
                        self.stale_retries += 1
                        await self._drop_idle_since(conn.idle_since)
                if response is None:
                    conn = await self._connect(deadline)
                    response = await self._exchange(conn, target, request, body)
            return _decoded(response, f"POST {target} to {self.where}")
        raise Http11Error(f"POST {target} to {self.where}: no answer within {self.timeout_s} s")

    async def aclose(self) -> None:
        """Close the idle connections now, busy ones when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)

    async def _connect(self, deadline: float) -> _Conn:
        """A new connection (TLS when https) within the connect timeout."""
        connect_deadline = trio.current_time() + self.connect_timeout_s
        with trio.move_on_at(min(deadline, connect_deadline)):
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as err:
                raise Http11Error(f"cannot connect to {self.where}: {err}") from err
            if self._ssl_context is not None:
                tls = trio.SSLStream(
                    stream, self._ssl_context, server_hostname=self.host, https_compatible=True
                )
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as err:
                    await trio.aclose_forcefully(stream)
                    raise Http11Error(
                        f"TLS handshake with {self.where} failed: {err.__cause__ or err}"
                    ) from err
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                stream = tls
            self.connects += 1
            return _Conn(stream)
        if connect_deadline <= deadline:
            raise Http11Error(
                f"connecting to {self.where} timed out after {self.connect_timeout_s} s"
            )
        raise Http11Error(f"connecting to {self.where}: no answer within {self.timeout_s} s")

    async def _exchange(
        self, conn: _Conn, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Http11Response:
        """One request/response on ``conn``; keeps it idle if it may be reused, else closes it."""
        try:
            response = await self._roundtrip(conn, target, headers, body)
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        state = conn.h11
        if not self._closed and state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
            conn.reused = True
            conn.idle_since = trio.current_time()
            self._idle.append(conn)
        else:
            await trio.aclose_forcefully(conn.stream)
        return response

    async def _roundtrip(
        self, conn: _Conn, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Http11Response:
        state = conn.h11
        what = f"POST {target} to {self.where}"
        try:
            parts = [state.send(h11.Request(method="POST", target=target, headers=headers))]
            if body:
                parts.append(state.send(h11.Data(data=body)))
            parts.append(state.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as err:
            raise ValueError(f"{what}: cannot send this request: {err}") from err
        data = b"".join(part for part in parts if part)
        send_error: BaseException | None = None
        try:
            await conn.stream.send_all(data)
        except trio.BrokenResourceError as err:
            # The server may have answered and closed (an early 413): read what it sent.
            send_error = err.__cause__ or err
        except trio.ClosedResourceError as err:
            raise Http11Error(f"{what}: the connection pool was closed") from err
        received = False
        head: h11.Response | None = None
        chunks: list[bytes] = []
        try:
            while True:
                event = state.next_event()
                if event is h11.NEED_DATA:
                    try:
                        raw = await conn.stream.receive_some(_READ_SIZE)
                    except trio.BrokenResourceError as err:
                        raise self._broken(conn, what, received, err.__cause__ or err) from err
                    except trio.ClosedResourceError as err:
                        raise Http11Error(f"{what}: the connection pool was closed") from err
                    if not raw and not received:
                        raise self._broken(conn, what, received, send_error)
                    received = True
                    state.receive_data(bytes(raw))
                    continue
                match event:
                    case h11.Response():
                        head = event
                    case h11.Data():
                        chunks.append(bytes(event.data))
                    case h11.EndOfMessage():
                        break
                    case h11.ConnectionClosed():
                        raise Http11Error(f"{what}: the server closed the connection")
                    case _:  # InformationalResponse (1xx): skipped; the final answer follows
                        pass
        except h11.RemoteProtocolError as err:
            raise Http11Error(f"{what}: bad HTTP answer: {err}") from err
        if head is None:  # pragma: no cover - h11 yields Response before EndOfMessage
            raise Http11Error(f"{what}: answer without a status line")
        names: dict[str, str] = {}
        for name, value in head.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            names[key] = f"{names[key]}, {text}" if key in names else text
        return Http11Response(
            status_code=head.status_code,
            reason=head.reason.decode("latin-1"),
            content=b"".join(chunks),
            headers=names,
        )

    def _broken(
        self, conn: _Conn, what: str, received: bool, cause: BaseException | None
    ) -> Exception:
        """The exception for a connection that broke: stale (retry) or :class:`Http11Error`."""
        if conn.reused and not received:
            return _Stale(what)
        detail = f"{type(cause).__name__}: {cause}" if cause else "connection closed"
        if received:
            return Http11Error(f"{what}: connection broke mid-answer ({detail})")
        return Http11Error(f"{what}: connection broke before any answer ({detail})")

    async def _drop_idle_since(self, since: float) -> None:
        """Close idle connections that have been idle at least since ``since`` (as stale)."""
        stale = [c for c in self._idle if c.idle_since <= since]
        if stale:
            self._idle = [c for c in self._idle if c.idle_since > since]
            for conn in stale:
                await trio.aclose_forcefully(conn.stream)


def _encode(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Header pairs as h11 takes them (names ASCII, values Latin-1 as HTTP/1.1 allows)."""
    return [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers.items()]


def _decoded(response: Http11Response, what: str) -> Http11Response:
    """``response`` with a gzip body decompressed (other encodings are left as they are)."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in _GZIP or not response.content:
        return response
    try:  # bounded: a small gzip body can inflate to gigabytes
        inflater = zlib.decompressobj(wbits=31)
        content = inflater.decompress(response.content, MAX_RESPONSE_BYTES + 1)
    except zlib.error as err:
        raise Http11Error(f"{what}: undecodable gzip body: {err}") from err
    if len(content) > MAX_RESPONSE_BYTES:
        raise Http11Error(f"{what}: gzip body over {MAX_RESPONSE_BYTES:,} bytes decompressed")
    return Http11Response(response.status_code, response.reason, content, response.headers)
