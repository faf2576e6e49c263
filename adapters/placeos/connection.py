"""One PlaceOS real-time WebSocket connection: open, heartbeat, liveness, frames in and out.

:func:`open_session` connects with the API key (``X-API-Key``) or a bearer token,
TLS verification on (a CA file for a private CA), and a connect timeout of a few
seconds (trio-websocket's default is 60 s, and an untrusted certificate shows no
error, it just hangs).  A session then runs three tasks beside the caller's reader:

- the **pinger** sends the text ``ping`` at once and every ``ping_interval_s``.  It
  writes straight to the socket, never through a queue, so it never waits behind data
  (trio-websocket serialises writes with a FIFO lock: at most one frame ahead of it);
- the **watchdog** declares the connection dead (:class:`ConnectionDead`) when no
  frame at all, ``pong`` or data, arrived for ``dead_after_s``;
- what the caller adds (the binder, the exec sweeper) in the session's nursery.

Errors are translated at this boundary::

    PlaceOSConnectionError
    ├── AuthRejected      401/403 at the handshake (retry slowly, say why)
    ├── HandshakeFailed   any other refusal or failure before the upgrade
    └── ConnectionDead    no frame for too long, or the peer closed
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
import trio_websocket

from adapters.placeos.config import PlaceOSConfig

PING = "ping"


class PlaceOSConnectionError(Exception):
    """The connection could not be made or was lost."""


class AuthRejected(PlaceOSConnectionError):
    """The server refused the credentials (HTTP 401) or their scope (403)."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        meaning = "unknown or invalid credentials" if status == 401 else "credentials lack scope"
        super().__init__(f"HTTP {status} at the handshake ({meaning}): {body[:200]}")


class HandshakeFailed(PlaceOSConnectionError):
    """The upgrade failed for a reason other than authentication."""


class ConnectionDead(PlaceOSConnectionError):
    """The connection stopped carrying frames (heartbeat timeout) or was closed."""


def ssl_context_for(config: PlaceOSConfig) -> ssl.SSLContext | None:
    """A verifying TLS context for ``wss://`` (with the configured CA file), None for ``ws://``."""
    if urlsplit(config.url).scheme != "wss":
        return None
    return ssl.create_default_context(cafile=config.ca_file)


def auth_headers(config: PlaceOSConfig) -> list[tuple[bytes, bytes]]:
    """The credential header the server checks before the upgrade."""
    if config.api_key:
        return [(b"X-API-Key", config.api_key.encode())]
    return [(b"Authorization", b"Bearer " + config.bearer_token.encode())]


class Session:
    """An open connection: send frames, read frames, know when it was last alive."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, config: PlaceOSConfig) -> None:
        self.ws = ws
        self.config = config
        self.last_frame_at = time.monotonic()
        self.opened_at = self.last_frame_at
        self.pongs = 0

    async def send(self, text: str) -> None:
        """Send one text frame; a closed connection raises ConnectionDead."""
        try:
            await self.ws.send_message(text)
        except trio_websocket.ConnectionClosed as err:
            raise ConnectionDead(f"closed while sending ({_reason(err)})") from err

    async def receive(self) -> str | bytes:
        """The next frame; a closed connection raises ConnectionDead."""
        try:
            message = await self.ws.get_message()
        except trio_websocket.ConnectionClosed as err:
            raise ConnectionDead(f"closed by the server ({_reason(err)})") from err
        self.last_frame_at = time.monotonic()
        return message

    async def pinger(self) -> None:
        """``ping`` on connect and every ``ping_interval_s``, straight to the socket."""
        while True:
            await self.send(PING)
            await trio.sleep(self.config.ping_interval_s)

    async def watchdog(self) -> None:
        """Raise ConnectionDead once nothing arrived for ``dead_after_s``."""
        limit = self.config.dead_after_s
        while True:
            quiet = time.monotonic() - self.last_frame_at
            if quiet >= limit:
                raise ConnectionDead(f"no frame (not even a pong) for {quiet:.0f} s")
            await trio.sleep(min(1.0, limit - quiet + 0.01))


@asynccontextmanager
async def open_session(config: PlaceOSConfig) -> AsyncIterator[Session]:
    """Connect, yield a Session, close on exit; failures become PlaceOSConnectionError."""
    opened = False
    try:
        async with trio_websocket.open_websocket_url(
            config.url,
            ssl_context=ssl_context_for(config),
            extra_headers=auth_headers(config),
            connect_timeout=config.connect_timeout_s,
            disconnect_timeout=config.disconnect_timeout_s,
            max_message_size=config.max_message_bytes,
            receive_buffer_size=64 * 1024,
        ) as ws:
            opened = True
            yield Session(ws, config)
    except trio_websocket.ConnectionRejected as err:
        body = (err.body or b"").decode(errors="replace")
        if err.status_code in (401, 403):
            raise AuthRejected(err.status_code, body) from err
        raise HandshakeFailed(f"HTTP {err.status_code} at the handshake: {body[:200]}") from err
    except trio_websocket.HandshakeError as err:
        raise HandshakeFailed(f"handshake failed: {err!r}") from err
    except trio.TooSlowError as err:
        raise HandshakeFailed(f"no answer within {config.connect_timeout_s} s") from err
    except OSError as err:
        if opened:
            raise ConnectionDead(f"socket error: {err.strerror or err}") from err
        raise HandshakeFailed(f"cannot connect: {err.strerror or err}") from err


def _reason(err: trio_websocket.ConnectionClosed) -> str:
    reason = err.reason
    if reason is None:
        return "no close frame"
    return f"code {reason.code}{': ' + reason.reason if reason.reason else ''}"
