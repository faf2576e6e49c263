"""A lean HTTP/1.1 server on trio + h11: the transport under the AlphaX simulator's endpoints.

Why not an ASGI stack: in the end-to-end benchmark the simulator shares a 2-core machine with the
bridge being measured. Under hypercorn + Starlette the simulator process spent ~745 us of CPU per
keep-alive post (decode and store included); on this server ~283 us (medians of 3 runs of 5,000
posts), CPU left to the bridge. A loopback test peer needs no more than this, one trio task per
connection:

- keep-alive (h11 ``start_next_cycle``), pipelined requests answered in order; ``Connection:
  close`` and HTTP/1.0 clients honoured (h11 tracks both); request bodies by Content-Length or
  chunked (h11 frames them), read by the handler through :meth:`HttpRequest.receive`;
  ``Expect: 100-continue`` is answered at once;
- answers carry ``Content-Length`` (none on 204/304) and ``Date``; a HEAD gets the headers only;
- a malformed request (h11 ``RemoteProtocolError``) gets an empty answer with h11's status hint
  (400; 431 for an oversized head, 501 for an unknown transfer coding) and the connection is
  closed; a client that goes away is logged at debug level; a handler that raises gets a 500;
- what hypercorn did by default, and so what the bridge was tested against, is kept: an idle
  connection is closed after 5 s, the 1000th answer on a connection says ``Connection: close``;
- a body the handler left unread is read and dropped (up to 64 KiB, 1 s) so the connection
  can carry the next request; past that the connection is closed after the answer. Whenever
  the server ends a connection after an answer it half-closes first and lingers (up to 1 s)
  until the client closes, so the client reads the answer instead of a reset;
- when ``shutdown`` is set the listener closes, idle connections close at once and a request
  in flight has ``grace_s`` to finish (hypercorn's ``graceful_timeout``).
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import h11
import trio

__all__ = ["Handler", "HttpRequest", "HttpResponse", "listen_tcp", "serve"]

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_IDLE_S = 5.0  # hypercorn's keep_alive_timeout
_MAX_REQUESTS = 1000  # hypercorn's keep_alive_max_requests
_DRAIN_BYTES = 65536
_LINGER_S = 1.0
_BACKLOG = 100  # hypercorn's backlog
_NO_BODY = frozenset({204, 304})


@dataclass(slots=True)
class HttpResponse:
    """A complete answer; ``headers`` has lower-case names (``content-length`` is added)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["HttpRequest"], Awaitable[HttpResponse]]


class _Malformed(Exception):
    """The client broke HTTP/1.1; ``status`` is h11's hint for the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HttpRequest:
    """One request: its head, parsed as the Starlette app saw it, and a reader for its body.

    - ``method`` upper-case; ``route_path`` the percent-decoded path (ASGI ``scope["path"]``);
      ``path`` that path as Starlette's ``request.url.path`` showed it (``?``, ``#`` and ``\\``
      re-escaped); ``query`` the raw query string, everything after the first ``?``;
    - ``headers``: lower-case names, latin-1 values, the first value of a repeated header;
    - ``query_params``: parsed with ``parse_qsl(keep_blank_values=True)``, the last value of a
      repeated key wins (as Starlette's ``QueryParams.get``);
    - ``body_bytes``: for the handler to record the body size once it has read it all.
    """

    __slots__ = (
        "_complete",
        "_conn",
        "_params",
        "body_bytes",
        "headers",
        "method",
        "path",
        "query",
        "received",
        "route_path",
    )

    def __init__(self, conn: _Connection, event: h11.Request) -> None:
        self._conn = conn
        self._complete = False
        self._params: dict[str, str] | None = None
        self.method = event.method.decode("ascii").upper()
        target, _, query = event.target.partition(b"?")
        self.route_path = unquote(target.decode("ascii"))
        self.path = _url_path(self.route_path)
        self.query = query.decode("ascii")
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            if key not in headers:
                headers[key] = value.decode("latin-1")
        self.headers = headers
        self.body_bytes = 0
        self.received = 0

    @property
    def query_params(self) -> dict[str, str]:
        """The query as a dict, the last value of a repeated key winning."""
        if self._params is None:
            self._params = dict(parse_qsl(self.query, keep_blank_values=True))
        return self._params

    async def receive(self) -> bytes:
        """The next piece of the body, ``b""`` once it is complete.

        Raises ``trio.BrokenResourceError`` if the client goes away and ``_Malformed`` if it
        breaks the framing; the server handles both (the handler should let them through).
        """
        while not self._complete:
            event = await self._conn.event()
            if isinstance(event, h11.Data):
                if event.data:
                    self.received += len(event.data)
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
            else:
                raise RuntimeError(f"h11 gave {event!r} inside a request body")
        return b""

    def remaining_over(self, limit: int) -> bool:
        """Whether the declared Content-Length leaves more than ``limit`` bytes unread."""
        declared = self.headers.get("content-length", "")
        return declared.isdigit() and int(declared) - self.received > limit

    async def discard(self, limit: int, timeout_s: float) -> bool:
        """Read and drop the rest of the body; False if it is over ``limit`` bytes or slower
        than ``timeout_s`` (the connection must then be closed)."""
        if self.remaining_over(limit):
            return False
        start = self.received
        with trio.move_on_after(timeout_s):
            while await self.receive():
                if self.received - start > limit:
                    return False
            return True
        return False


def _url_path(route_path: str) -> str:
    """``route_path`` as Starlette's ``URL(scope=...).path`` gives it."""
    path = route_path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    if path.startswith("/") and not any(c in path for c in "\t\r\n"):
        return path  # the common case: what the round trip below returns unchanged
    return urlsplit(SplitResult("http", "host", path, "", "").geturl()).path


@functools.lru_cache(maxsize=2)
def _date_of(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode("ascii")


def _http_date() -> bytes:
    return _date_of(int(time.time()))


class _Connection:
    """One client connection: reads requests, calls the handler, writes the answers."""

    __slots__ = ("h11", "idle_scope", "requests", "server", "stream")

    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self.idle_scope: trio.CancelScope | None = None
        self.requests = 0

    async def event(self) -> h11.Event:
        """The next h11 event, reading from the socket as needed."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as err:
                raise _Malformed(err.error_status_hint, str(err)) from err
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                raise RuntimeError("h11 paused: the previous request was not finished")
            self.h11.receive_data(await self.stream.receive_some(_READ_SIZE))

    async def run(self) -> None:
        """Serve requests until either side closes, the idle timeout, or shutdown."""
        try:
            while (request := await self._next_request()) is not None:
                response = await self._answer(request)
                if not await self._respond(request, response):
                    await self._linger()
                    return
                self.h11.start_next_cycle()
        except _Malformed as err:
            log.debug("malformed HTTP request, answering %d: %s", err.status, err)
            if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                head = [(b"content-length", b"0"), (b"connection", b"close")]
                head.append((b"date", _http_date()))
                try:
                    data = self.h11.send(h11.Response(status_code=err.status, headers=head))
                    data = (data or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
                except h11.LocalProtocolError:
                    return
                await self.stream.send_all(data)
                await self._linger()

    async def _next_request(self) -> HttpRequest | None:
        if self.server.closing:
            return None
        event: h11.Event | None = None
        with trio.move_on_after(_IDLE_S) as scope:
            self.idle_scope = scope
            try:
                event = await self.event()
            finally:
                self.idle_scope = None
        if not isinstance(event, h11.Request):
            return None  # closed by the client, idle too long, or shutting down
        self.requests += 1
        if self.h11.they_are_waiting_for_100_continue:
            data = self.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
            await self.stream.send_all(data or b"")
        return HttpRequest(self, event)

    async def _answer(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self.server.handler(request)
        except (_Malformed, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception("HTTP handler failed on a %s request", request.method)
            headers = {"content-type": "text/plain; charset=utf-8"}
            return HttpResponse(500, b"Internal Server Error", headers)

    async def _respond(self, request: HttpRequest, response: HttpResponse) -> bool:
        """Send the answer; True if the connection can carry another request."""
        conn = self.h11
        unread = conn.their_state is h11.SEND_BODY
        close = (
            self.server.closing
            or self.requests >= _MAX_REQUESTS
            or (unread and request.remaining_over(_DRAIN_BYTES))
        )
        status = response.status
        has_body = status >= 200 and status not in _NO_BODY
        head = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        if has_body:
            head.append((b"content-length", str(len(response.body)).encode("ascii")))
        head.append((b"date", _http_date()))
        if close:
            head.append((b"connection", b"close"))
        data = conn.send(h11.Response(status_code=status, headers=head)) or b""
        if has_body and response.body and request.method != "HEAD":
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        if unread and not await request.discard(_DRAIN_BYTES, _LINGER_S):
            return False
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _linger(self) -> None:
        """Half-close, then drop what the client still sends until it closes too (for up to
        ``_LINGER_S``): closing with unread data makes the kernel send a reset, which can
        destroy the last answer before the client has read it."""
        await self.stream.send_eof()
        with trio.move_on_after(_LINGER_S):
            while await self.stream.receive_some(_READ_SIZE):
                pass


class _Server:
    """The handler, the open connections, and whether shutdown has begun."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.closing = False
        self.connections: set[_Connection] = set()

    async def connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection(self, stream)
        self.connections.add(conn)
        try:
            await conn.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            log.debug("HTTP client went away: %r", err)
        finally:
            self.connections.discard(conn)
            await trio.aclose_forcefully(stream)

    def close_idle(self) -> None:
        """Begin shutdown: connections waiting for a request close now, others after it."""
        self.closing = True
        for conn in self.connections:
            if conn.idle_scope is not None:
                conn.idle_scope.cancel()


async def listen_tcp(host: str, port: int) -> trio.SocketListener:
    """Bind one listening socket as hypercorn did: IPv6 if ``host`` has a ``:``, else IPv4;
    ``SO_REUSEADDR``; ``[...]`` brackets around an IPv6 address are dropped."""
    host = host.replace("[", "").replace("]", "")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def serve(
    handler: Handler, listener: trio.SocketListener, shutdown: trio.Event, *, grace_s: float
) -> None:
    """Serve connections from ``listener`` with ``handler`` until ``shutdown`` is set.

    Then the listener is closed, idle connections close, and requests in flight get
    ``grace_s`` seconds before their connections are cancelled; returns once all are closed.
    """
    server = _Server(handler)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(
                functools.partial(
                    trio.serve_listeners,
                    server.connection,
                    [listener],
                    handler_nursery=connections,
                )
            )
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        await listener.aclose()
        server.close_idle()
        connections.cancel_scope.deadline = trio.current_time() + grace_s
