"""The operations endpoint's server: ``/metrics``, ``/healthz``, ``/readyz``, ``/status``,
and the front of the web console (``/``, ``/console/``, ``/api/``).

HTTP/1.1 with h11 on a trio loop of its own thread (``ops-http``, a
:class:`~broker._loop.SharedLoop`): a slow snapshot never stalls the adapters' loop, and
busy adapters never stall a scrape. Every connection is a task on that loop, never a
thread; the snapshots (``Runtime.snapshot`` asks the router and may wait up to 5 s) run in
at most ``SNAPSHOT_THREADS`` worker threads, and a request waits at most
``answer_timeout_s`` for one (then 503). Every request that needs numbers takes one fresh
snapshot and answers from it alone, so a scrape is self-consistent; a snapshot that raises
is answered with 500 and logged, and the server keeps serving.

Fit for a network (issue 17, item 6):

- **Timeouts.** A request head must be complete ``request_timeout_s`` after the connection
  opened (408, then closed); between keep-alive requests a connection may be idle
  ``idle_timeout_s``, and the next head then has ``request_timeout_s`` from its first
  byte. A head over ``max_head_bytes`` is 431 and closed. A response the client does not
  read within ``request_timeout_s`` is abandoned and the connection closed.
- **A bound on connections.** At most ``max_connections`` are served at once. One more
  displaces the connection that has waited longest for a request head (an idle or
  half-sent one), so idle connections cannot lock a scrape out; when every connection is
  busy being answered, the new one gets a 503 at once and is closed (past ``REFUSING``
  such refusals at once, closed without a word). The listen backlog is ``BACKLOG``.
- **A bearer token.** With ``token`` set, every path but ``/healthz`` needs
  ``Authorization: Bearer <token>`` (401 with ``WWW-Authenticate: Bearer`` otherwise,
  compared in constant time). ``junction check`` refuses a public ``listen`` without one
  (:func:`broker._ops_listen.public_problem`). The console's page and files (``/``,
  ``/console/...``) hold no data and are served without it; its ``/api/`` needs it.

The web console is a Starlette app (:mod:`broker._console`) behind this front: a request
for one of its paths, once its head passed the checks above, is handed to it through
:mod:`broker._asgi_bridge`, on this same loop, within the same connection bound.

:meth:`OpsServer.bind` and :meth:`OpsServer.serve` are apart so that ``run`` binds first
(a taken port is a one-line error before any adapter connects, issue 17, item 4) and
serves once the runtime is built. What the answers say lives in :mod:`broker._ops_metrics`;
``junction status``'s client in :mod:`broker._ops_client`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import trio
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from broker._asgi_bridge import ASGIApp, exchange, reason_phrase
from broker._logs import redact
from broker._loop import SharedLoop
from broker._messages import describe
from broker._ops_listen import LISTEN_KEY as LISTEN_KEY
from broker._ops_listen import listen_error, parse_listen
from broker._ops_metrics import Snapshot, SnapshotCollector, readiness

log = logging.getLogger("broker.ops_http")

ENDPOINTS = ("/metrics", "/healthz", "/readyz", "/status")
#: The paths answered from a snapshot (in a worker thread); the others are answered inline.
SNAPSHOT_PATHS = frozenset({"/metrics", "/readyz", "/status"})
#: The web console's files (``/`` is its page) and its API, answered by ``console``.
CONSOLE_PREFIX = "/console/"
API_PREFIX = "/api/"
#: Pending connections the kernel holds for the accept loop (the stdlib server's was 5).
BACKLOG = 128
#: Connections being refused (503) at once, past the bound; more are closed at once.
REFUSING = 16
#: Worker threads taking snapshots at once; a request past them waits (``answer_timeout_s``).
SNAPSHOT_THREADS = 2
RECEIVE_BYTES = 16 * 1024
TEXT = "text/plain; charset=utf-8"


@dataclass(eq=False)
class _Connection:
    """One served connection: its cancel scope, and whether it waits for a request head."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    waiting: bool = True


class OpsServer:
    """The HTTP operations endpoint of one runtime.

    ``listen`` is ``host:port`` (``[::1]:9464`` for IPv6; port 0 picks a free port, read
    it from :attr:`port` once bound). ``origin`` names the config file in errors; the rest
    are the ``[junction.http]`` settings of the same names. ``console`` is the web
    console's ASGI app (:func:`broker._console.console_app`), served at ``/``,
    ``/console/`` and ``/api/``; without it those paths are 404.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        listen: str,
        ready_max_pending_age_s: float,
        *,
        origin: str = "",
        token: str = "",
        max_connections: int = 64,
        request_timeout_s: float = 10.0,
        idle_timeout_s: float = 15.0,
        max_head_bytes: int = 16 * 1024,
        answer_timeout_s: float = 10.0,
        console: ASGIApp | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.console = console
        self.listen = listen
        self.ready_max_pending_age_s = ready_max_pending_age_s
        self.origin = origin
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_head_bytes = max_head_bytes
        self.answer_timeout_s = answer_timeout_s
        self._expected = f"Bearer {token}".encode() if token else b""
        self.host, self._port = parse_listen(listen, origin)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot))
        self._sock: socket.socket | None = None
        self._bound_port = 0
        self._loop: SharedLoop | None = None
        #: The connections being served, oldest first (a dict keeps insertion order).
        self._connections: dict[_Connection, None] = {}
        self._refusing = 0
        self._refusal_logged = -1e9

    # --- on the caller's thread ----------------------------------------------------

    def bind(self) -> None:
        """Bind and listen (nothing is answered before :meth:`serve`; the kernel holds the
        connections meanwhile); raises ConfigError naming the listen value."""
        if self._sock is not None:
            return
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as err:
            raise self._bind_error(err) from err
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError as err:
            sock.close()
            raise self._bind_error(err) from err
        self._sock = sock
        self._bound_port = int(sock.getsockname()[1])

    def serve(self) -> None:
        """Answer requests on the bound socket, on a loop of its own thread."""
        if self._loop is not None:
            raise RuntimeError("the operations endpoint is already started")
        if self._sock is None:
            raise RuntimeError("the operations endpoint is not bound")
        self._loop = SharedLoop("ops-http")
        self._loop.start()
        self._loop.spawn(self._serve, "ops-http-accept")

    def start(self) -> None:
        """:meth:`bind`, then :meth:`serve`; raises ConfigError naming the listen value."""
        if self._loop is not None:
            raise RuntimeError("the operations endpoint is already started")
        self.bind()
        self.serve()

    def stop(self) -> None:
        """Stop serving and close the socket; a no-op when not bound (or stopped)."""
        loop, sock = self._loop, self._sock
        self._loop = self._sock = None
        if loop is not None:
            loop.close(timeout=5)
        if sock is not None:
            sock.close()

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0)."""
        if self._sock is None:
            raise RuntimeError("the operations endpoint is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind_error(self, err: OSError) -> Exception:
        reason = err.strerror or str(err)
        return listen_error(
            self.listen,
            f"cannot listen on it: {reason}",
            self.origin,
            "is the port taken, or the host not an address of this machine? (port 0: any)",
        )

    # Answers, one per endpoint: (status, content type, body). Snapshot paths are called
    # in a worker thread.

    def answer(self, path: str, accept: str) -> tuple[int, str, bytes]:
        """The response to ``GET path``; a snapshot that raises propagates to the caller."""
        if path == "/healthz":
            return 200, TEXT, b"ok\n"
        if path == "/metrics":
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(self.registry)
        if path == "/readyz":
            ready, reasons = readiness(self.snapshot(), self.ready_max_pending_age_s)
            body = _json({"ready": ready, "reasons": reasons})
            return (200 if ready else 503), "application/json", body
        if path == "/status":
            return 200, "application/json", _json(self.snapshot())
        known = ("/", *ENDPOINTS) if self.console is not None else ENDPOINTS
        text = f"no such endpoint {path!r}; try {' '.join(known)}\n"
        return 404, TEXT, text.encode()

    # --- on the ops-http loop --------------------------------------------------------

    async def _serve(self) -> None:
        assert self._sock is not None
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        limiter = trio.CapacityLimiter(SNAPSHOT_THREADS)
        async with listener, trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as err:  # out of file descriptors: let some close first
                    log.warning("operations endpoint: cannot accept: %s", err)
                    await trio.sleep(0.1)
                    continue
                if self._make_room():
                    conn = _Connection()
                    self._connections[conn] = None
                    nursery.start_soon(self._connection, stream, conn, limiter)
                elif self._refusing < REFUSING:
                    self._refusing += 1
                    nursery.start_soon(self._refuse, stream)
                else:
                    await trio.aclose_forcefully(stream)

    def _make_room(self) -> bool:
        """True when one more connection may be served, after displacing the one that has
        waited longest for a request head if the bound is reached."""
        if len(self._connections) < self.max_connections:
            return True
        oldest = next((c for c in self._connections if c.waiting), None)
        if oldest is None:
            return False
        del self._connections[oldest]
        oldest.scope.cancel()
        log.debug("operations endpoint: full; closed the connection idle the longest")
        return True

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """503, then read what the client sent until it closes (so closing does not reset
        the connection under the answer), for one second at most."""
        now = trio.current_time()
        if now - self._refusal_logged >= 10:
            self._refusal_logged = now
            log.warning(
                "operations endpoint: all %d connections busy; refusing more with 503",
                self.max_connections,
            )
        try:
            with trio.move_on_after(1):
                await _send_raw(stream, 503, "too many connections; try again\n", retry=True)
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_BYTES):
                    pass
        except Exception as err:  # whatever it was, this connection is being closed anyway
            log.debug("operations endpoint: refusing a connection: %s", describe(err))
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _connection(
        self, stream: trio.SocketStream, conn: _Connection, limiter: trio.CapacityLimiter
    ) -> None:
        try:
            with conn.scope:
                await self._converse(stream, conn, limiter)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            log.debug("operations endpoint: client went away: %s", err)
        except Exception:  # one connection's failure must not end the server
            log.exception("operations endpoint: a connection failed")
        finally:
            self._connections.pop(conn, None)
            await trio.aclose_forcefully(stream)

    async def _converse(
        self, stream: trio.SocketStream, conn: _Connection, limiter: trio.CapacityLimiter
    ) -> None:
        """Requests and answers on one connection until it closes, errs or times out."""
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)
        first = True
        while True:
            conn.waiting = True
            request = await self._read_head(http, stream, first)
            conn.waiting = False
            if request is None:
                return
            first = False
            if self.console is not None and self._for_console(request):
                if not await exchange(
                    self.console, http, stream, request, timeout_s=self.request_timeout_s
                ):
                    return
                http.start_next_cycle()
                continue
            close = not self._read_rest(http)
            status, ctype, body, extra = await self._respond(request, limiter)
            headers = [
                ("Content-Type", ctype),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("Server", "junction-ops"),
                *extra,
            ]
            if close:  # the request's body is not read: the next one could not be found
                headers.append(("Connection", "close"))
            data = http.send(
                h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
            )
            if request.method != b"HEAD":
                data = (data or b"") + (http.send(h11.Data(data=body)) or b"")
            data = (data or b"") + (http.send(h11.EndOfMessage()) or b"")
            with trio.move_on_after(self.request_timeout_s) as sending:
                await stream.send_all(data)
            if sending.cancelled_caught:
                log.debug("operations endpoint: client did not read its answer; closed")
                return
            if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                return  # Connection: close (theirs or ours), HTTP/1.0
            http.start_next_cycle()

    async def _read_head(
        self, http: h11.Connection, stream: trio.SocketStream, first: bool
    ) -> h11.Request | None:
        """The next request's head, or None: closed, a bad or too big head (answered), or
        not complete in time (408 when some of it came)."""
        begun = first  # a new connection's first head is timed from the accept
        heard = False
        with trio.move_on_after(self.request_timeout_s if first else self.idle_timeout_s) as wait:
            while True:
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError as err:
                    status = err.error_status_hint
                    text = "request head too big" if status == 431 else f"bad request: {err}"
                    with trio.move_on_after(1):
                        await _send_raw(stream, status, text + "\n")
                    return None
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if data and not begun:  # the next head has its own time from its first byte
                        wait.deadline = trio.current_time() + self.request_timeout_s
                    begun = begun or bool(data)
                    heard = heard or bool(data)
                    http.receive_data(data)
                    continue
                if not isinstance(event, h11.Request):
                    return None  # the client closed
                if _head_size(event) > self.max_head_bytes:  # h11 bounds only incomplete ones
                    with trio.move_on_after(1):
                        await _send_raw(stream, 431, "request head too big\n")
                    return None
                return event
        if heard:
            log.debug("operations endpoint: no complete request head in time; closed")
            with trio.move_on_after(1):
                await _send_raw(stream, 408, "no complete request head in time\n")
        return None

    def _read_rest(self, http: h11.Connection) -> bool:
        """Read the request's body as far as it already came; True when it ended."""
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.EndOfMessage):
                return True
            if not isinstance(event, h11.Data):
                return False  # NEED_DATA: a body still coming, which nothing here reads

    def _for_console(self, request: h11.Request) -> bool:
        """True when the console answers ``request``: its page and files (no token needed:
        they hold no data), and its ``/api/`` with the token when one is set (the others
        are answered by :meth:`_respond`, a 401 included)."""
        path = _path(request)
        if path == "/" or path.startswith(CONSOLE_PREFIX):
            return True
        return path.startswith(API_PREFIX) and self._authorized(request)

    def _authorized(self, request: h11.Request) -> bool:
        if not self._expected:
            return True
        given = dict(request.headers).get(b"authorization", b"")
        return hmac.compare_digest(given, self._expected)

    async def _respond(
        self, request: h11.Request, limiter: trio.CapacityLimiter
    ) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        """(status, content type, body, extra headers) for one request."""
        path = _path(request)
        headers = {name: value for name, value in request.headers}
        if self._expected and path != "/healthz" and not self._authorized(request):
            text = f"{path} needs Authorization: Bearer <[junction.http] token>\n"
            return 401, TEXT, text.encode(), [("WWW-Authenticate", 'Bearer realm="junction"')]
        if request.method not in (b"GET", b"HEAD"):
            return 405, TEXT, b"only GET and HEAD\n", [("Allow", "GET, HEAD")]
        accept = headers.get(b"accept", b"").decode("latin-1")
        if path not in SNAPSHOT_PATHS:
            return (*self.answer(path, accept), [])
        try:
            with trio.move_on_after(self.answer_timeout_s):
                answered = await trio.to_thread.run_sync(
                    self.answer, path, accept, limiter=limiter, abandon_on_cancel=True
                )
                return (*answered, [])
        except Exception as err:  # a failing snapshot must not stop the endpoint
            log.exception("operations endpoint: GET %s failed", path)
            return 500, TEXT, redact(f"snapshot failed: {describe(err)}\n").encode(), []
        log.warning(
            "operations endpoint: GET %s: no snapshot within %g s", path, self.answer_timeout_s
        )
        text = f"no snapshot within {self.answer_timeout_s:g} s; try again\n"
        return 503, TEXT, text.encode(), [("Retry-After", "1")]


async def _send_raw(stream: trio.SocketStream, status: int, text: str, retry: bool = False) -> None:
    """An error answer outside h11's cycle (a head that never came or broke it), then the
    connection is closed: ``Connection: close``."""
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {reason_phrase(status)}\r\nContent-Type: {TEXT}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        + ("Retry-After: 1\r\n" if retry else "")
        + "\r\n"
    )
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(head.encode() + body)


def _path(request: h11.Request) -> str:
    """The request's path, without a trailing slash (``/`` stays)."""
    return urlsplit(request.target.decode("latin-1")).path.rstrip("/") or "/"


def _head_size(request: h11.Request) -> int:
    """The bytes of a request head as sent (to within its whitespace)."""
    line = len(request.method) + len(request.target) + len(request.http_version) + 9
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


def _json(value: Any) -> bytes:
    """JSON for a response; secrets in adapter details are redacted like in the logs."""
    return redact(json.dumps(value, default=str, indent=1)).encode()
