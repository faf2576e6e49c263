"""One HTTP/1.1 request, read by the operations endpoint's h11 front, answered by an ASGI app.

The front (:mod:`broker._ops_http`) reads the request head with its own timeouts and
bounds, then hands the request here when its path belongs to the web console
(:mod:`broker._console`, a Starlette app). This module is the smallest ASGI server that
needs: it reads the body (bounded by ``max_body``, 413 past it, whole within
``timeout_s``, else 408), builds the ``http`` scope from the h11 request, and maps the
app's messages back onto h11:

- ``receive()`` yields the body once (``more_body`` false), then waits until the client
  closes its side or the answer is complete and says ``http.disconnect``, which is how a
  streaming response (server-sent events) learns that its reader went away;
- ``send()`` turns ``http.response.start`` into an h11 ``Response`` (sent with the first
  body part, so a small answer is one write), each ``http.response.body`` into ``Data``
  and the last one (``more_body`` false) into ``EndOfMessage``. With no ``Content-Length``
  h11 frames the answer chunked, so a stream reaches the browser part by part. A part the
  client does not take within ``timeout_s``, or a client that is gone, raises
  :class:`ClientGone` (an ``OSError``, as ASGI servers do) into the app.

A failing app is logged; before its answer started the client gets a 500 without a
traceback, after it the connection is closed. :func:`exchange` returns True when the
connection may carry the next request (the caller then starts h11's next cycle).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import h11
import trio

from broker._messages import describe

log = logging.getLogger("broker.ops_http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The largest request body taken (the console's JSON actions are far smaller).
MAX_BODY_BYTES = 1 << 20
RECEIVE_BYTES = 16 * 1024
TEXT = "text/plain; charset=utf-8"
#: Headers every console answer carries unless the app set them.
DEFAULT_HEADERS = ((b"cache-control", b"no-store"), (b"server", b"junction-ops"))


class ClientGone(OSError):
    """The client closed the connection, or did not read an answer in time."""


async def exchange(
    app: ASGIApp,
    http: h11.Connection,
    stream: trio.SocketStream,
    request: h11.Request,
    *,
    timeout_s: float,
    max_body: int = MAX_BODY_BYTES,
) -> bool:
    """Answer ``request`` (its head read by ``http``) with ``app``; True to keep the
    connection for another request."""
    body = await _read_body(http, stream, request, timeout_s, max_body)
    if body is None:
        return False
    turn = _Turn(http, stream, request, timeout_s)
    try:
        await app(_scope(request, stream), turn.receiver(body), turn.send)
    except Exception as err:
        if _client_gone(err):
            log.debug("operations endpoint: console client went away: %s", describe(err))
            return False
        log.exception("operations endpoint: the console failed answering %s", _target(request))
        if not turn.started:
            with trio.move_on_after(1):
                await turn.plain(500, "the console failed; the bridge's log says why\n")
        return False
    finally:
        turn.finished.set()
    if not turn.started:  # an app that never answered: a bug, but not the client's problem
        log.error("operations endpoint: the console sent no answer to %s", _target(request))
        with trio.move_on_after(1):
            await turn.plain(500, "the console sent no answer\n")
        return False
    return http.our_state is h11.DONE and http.their_state is h11.DONE


async def _read_body(
    http: h11.Connection,
    stream: trio.SocketStream,
    request: h11.Request,
    timeout_s: float,
    max_body: int,
) -> bytes | None:
    """The whole request body, or None when it was refused (answered) or never came."""
    turn = _Turn(http, stream, request, timeout_s)
    length = dict(request.headers).get(b"content-length", b"0")
    if length.isdigit() and int(length) > max_body:
        with trio.move_on_after(1):
            await turn.plain(413, f"request body over {max_body} bytes\n")
        return None
    body = bytearray()
    with trio.move_on_after(timeout_s):
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as err:
                with trio.move_on_after(1):
                    await turn.plain(400, f"bad request body: {err}\n")
                return None
            if event is h11.NEED_DATA:
                if http.they_are_waiting_for_100_continue:  # curl's Expect: 100-continue
                    go_on = h11.InformationalResponse(status_code=100, headers=[])
                    await stream.send_all(http.send(go_on) or b"")
                http.receive_data(await stream.receive_some(RECEIVE_BYTES))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    with trio.move_on_after(1):
                        await turn.plain(413, f"request body over {max_body} bytes\n")
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                return None  # the client closed before its body ended
    log.debug("operations endpoint: no complete request body in time; closed")
    with trio.move_on_after(1):
        await turn.plain(408, "no complete request body in time\n")
    return None


class _Turn:
    """One request's ``receive`` and ``send``, on one h11 connection."""

    def __init__(
        self, http: h11.Connection, stream: trio.SocketStream, request: h11.Request, timeout: float
    ) -> None:
        self.http = http
        self.stream = stream
        self.head_only = request.method == b"HEAD"
        self.timeout = timeout
        self.started = False
        self.ended = False
        #: Set when the answer is complete or abandoned: a waiting ``receive`` returns.
        self.finished = trio.Event()
        self._head: h11.Response | None = None

    def receiver(self, body: bytes) -> Receive:
        parts = [body]

        async def receive() -> Message:
            if parts:
                return {"type": "http.request", "body": parts.pop(), "more_body": False}
            await self._wait_disconnect()
            return {"type": "http.disconnect"}

        return receive

    async def _wait_disconnect(self) -> None:
        """Until the client closes its side (what it sends meanwhile waits in h11 for the
        next request) or the answer is complete."""
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                try:
                    while data := await self.stream.receive_some(RECEIVE_BYTES):
                        self.http.receive_data(data)
                    self.http.receive_data(b"")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await self.finished.wait()
            nursery.cancel_scope.cancel()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
            names = {k for k, _ in headers}
            headers += [(k, v) for k, v in DEFAULT_HEADERS if k not in names]
            status = int(message["status"])
            self._head = h11.Response(
                status_code=status, headers=headers, reason=reason_phrase(status)
            )
        elif kind == "http.response.body":
            if not self.started or self.ended:
                raise RuntimeError("http.response.body outside an answer")
            data = b""
            if self._head is not None:
                data += self._h11(self._head)
                self._head = None
            part = bytes(message.get("body", b""))
            if part and not self.head_only:
                data += self._h11(h11.Data(data=part))
            if not message.get("more_body", False):
                self.ended = True
                data += self._h11(h11.EndOfMessage())
            if data:
                await self._write(data)
            if self.ended:
                self.finished.set()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _h11(self, event: h11.Event) -> bytes:
        try:
            return self.http.send(event) or b""
        except h11.LocalProtocolError as err:  # e.g. more body than its Content-Length
            raise RuntimeError(f"the console's answer breaks HTTP/1.1: {err}") from err

    async def _write(self, data: bytes) -> None:
        try:
            with trio.move_on_after(self.timeout) as writing:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            self.finished.set()
            raise ClientGone(f"the client went away: {err}") from err
        if writing.cancelled_caught:
            self.finished.set()
            raise ClientGone(f"the client did not read its answer within {self.timeout:g} s")

    async def plain(self, status: int, text: str) -> None:
        """A short text answer that closes the connection (a refused or failed request)."""
        if self.started:
            return
        body = text.encode()
        head = [
            ("Content-Type", TEXT),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        await self.send({"type": "http.response.start", "status": status, "headers": _raw(head)})
        try:
            await self.send({"type": "http.response.body", "body": body})
        except (ClientGone, RuntimeError) as err:
            log.debug("operations endpoint: could not answer %d: %s", status, describe(err))


def _scope(request: h11.Request, stream: trio.SocketStream) -> Scope:
    target = request.target
    parts = urlsplit(target.decode("latin-1"))
    raw_path = parts.path.encode("latin-1") or b"/"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii").upper(),
        "scheme": "http",
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": parts.query.encode("latin-1"),
        "root_path": "",
        "headers": [(bytes(k).lower(), bytes(v)) for k, v in request.headers],
        "client": _address(stream, peer=True),
        "server": _address(stream, peer=False),
        "state": {},
    }


def _address(stream: trio.SocketStream, peer: bool) -> tuple[str, int] | None:
    try:
        address = stream.socket.getpeername() if peer else stream.socket.getsockname()
    except OSError:
        return None
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def reason_phrase(status: int) -> str:
    """The status line's reason (``Not Found``), or "" for a code HTTP does not name."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _target(request: h11.Request) -> str:
    return f"{request.method.decode('ascii', 'replace')} {request.target.decode('latin-1')}"


def _client_gone(err: BaseException) -> bool:
    """True for ClientGone, alone or as the only kind inside exception groups."""
    if isinstance(err, BaseExceptionGroup):
        return all(_client_gone(e) for e in err.exceptions)
    return isinstance(err, ClientGone)
