"""The HTTP edge of the PlaceOS simulator: request heads, authentication, plain answers.

trio-websocket (through wsproto) answers any request that is not a WebSocket upgrade with a bare
``400`` and cannot serve a plain ``GET``. The real server does serve one — the official client
fetches ``GET /auth/authority`` first, and a non-upgrade request to the control path gets a
``426`` — so the simulator reads each connection's request head itself: plain requests are
answered here, upgrade requests are handed to ``trio_websocket.wrap_server_stream`` with the
head replayed in front of the stream (``PrefixedStream``), and trio-websocket does the rest
(handshake, ``request.reject(401, body=...)``, frames, protocol pings).

``Credentials`` decides a request's fate before any upgrade, in the server's order
(PlaceOS/rest-api ``utilities/current_user.cr``): the ``X-API-Key`` header, else ``?api-key=``
(an unknown key is ``401 {"error": "unknown X-API-Key"}``, never a fall-through); else
``Authorization: Bearer`` / ``?bearer_token=`` (missing or unknown: a bare ``401``); a known
credential without the websocket scope is a bare ``403``.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qs, urlsplit

import trio

from adapters.placeos.sim._model import Clearance

__all__ = [
    "Credentials",
    "Grant",
    "HeadError",
    "HttpExchange",
    "HttpHead",
    "PrefixedStream",
    "Verdict",
    "plain_response",
    "read_head",
]

MAX_HEAD_BYTES: Final = 16 * 1024
UNKNOWN_KEY_BODY: Final = b'{"error":"unknown X-API-Key"}'
_END: Final = b"\r\n\r\n"


class HeadError(Exception):
    """A request head that cannot be read; ``status`` is the HTTP answer it deserves."""

    def __init__(self, status: int, why: str) -> None:
        self.status = status
        super().__init__(f"{status}: {why}")


@dataclass(frozen=True)
class HttpHead:
    """The parts of a request head the simulator needs (header names lower-cased)."""

    method: str
    target: str
    headers: dict[str, str]
    raw: bytes

    @property
    def path(self) -> str:
        """The target without its query string."""
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string parameters."""
        return parse_qs(urlsplit(self.target).query)

    @property
    def is_upgrade(self) -> bool:
        """True for a WebSocket upgrade request (``Connection: upgrade`` + ``Upgrade``)."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        return "upgrade" in tokens and self.headers.get("upgrade", "").lower() == "websocket"


async def read_head(stream: trio.abc.ReceiveStream) -> tuple[HttpHead, bytes] | None:
    """Read one request head; returns it and any bytes read past it, None on a silent EOF."""
    buffer = bytearray()
    while (end := buffer.find(_END)) < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HeadError(431, "request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            if buffer:
                raise HeadError(400, "connection closed inside the request head")
            return None
        buffer += chunk
    raw = bytes(buffer[: end + len(_END)])
    lines = raw[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HeadError(400, f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise HeadError(400, f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return HttpHead(parts[0], parts[1], headers, raw), bytes(buffer[end + len(_END) :])


def plain_response(status: int, body: bytes = b"", extra: tuple[str, ...] = ()) -> bytes:
    """A complete ``HTTP/1.1`` response that closes the connection (JSON when there is a body)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", *extra]
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class PrefixedStream(trio.abc.Stream):
    """A stream that first yields ``prefix`` (bytes already read), then the wrapped stream."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


@dataclass(frozen=True)
class Grant:
    """What a credential allows: its clearance, and whether it has the websocket scope."""

    clearance: Clearance = "admin"
    scoped: bool = True


@dataclass(frozen=True)
class HttpExchange:
    """One HTTP request the simulator answered (credentials are never recorded)."""

    method: str
    path: str
    upgrade: bool
    status: int
    credential: str | None  # where it came from: "header", "query", "bearer" or None


@dataclass(frozen=True)
class Verdict:
    """The outcome of authentication: ``grant`` when accepted, else an HTTP status + body."""

    status: int
    credential: str | None
    grant: Grant | None = None
    body: bytes = b""


class Credentials:
    """The API keys and bearer tokens the simulated server accepts, and a forced answer."""

    def __init__(self, api_key: str) -> None:
        self.api_keys: dict[str, Grant] = {api_key: Grant()}
        self.bearer_tokens: dict[str, Grant] = {}
        self.forced_status: int | None = None

    def check(self, head: HttpHead) -> Verdict:
        """Authenticate a request head the way the server does (see the module docstring)."""
        if self.forced_status is not None:
            body = UNKNOWN_KEY_BODY if self.forced_status == 401 else b""
            return Verdict(self.forced_status, None, body=body)
        query = head.query
        key = head.headers.get("x-api-key")
        source = "header"
        if key is None and "api-key" in query:
            key, source = query["api-key"][0], "query"
        if key is not None:
            grant = self.api_keys.get(key)
            if grant is None:
                return Verdict(401, source, body=UNKNOWN_KEY_BODY)
        else:
            auth = head.headers.get("authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            token = token or query.get("bearer_token", [None])[0]
            if token is None:
                return Verdict(401, None)
            source = "bearer"
            grant = self.bearer_tokens.get(token)
            if grant is None:
                return Verdict(401, source)
        if not grant.scoped:
            return Verdict(403, source)
        return Verdict(101, source, grant)
