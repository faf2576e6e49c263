"""One PlaceOS real-time WebSocket connection: open, heartbeat, liveness, frames in and out.

:func:`open_session` connects with the API key (``X-API-Key``) or a bearer token,
TLS verification on (a CA file for a private CA), and a connect timeout of a few
seconds covering TCP, TLS and the upgrade.  The WebSocket is ``_wsclient``'s, which
hands the reader every message one socket read brought, in one list (see there why
not trio-websocket's one message per scheduler round).  A session then runs three tasks
beside the caller's reader:

- the **pinger** sends the text ``ping`` at once and every ``ping_interval_s``.  It
  writes straight to the socket, never through a queue, so it never waits behind data
  (writes are serialised by a FIFO lock: at most one frame ahead of it);
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

from adapters.placeos._wsclient import (
    Message,
    WsClient,
    WsClosed,
    WsHandshakeError,
    WsRejected,
    open_websocket,
)
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


def who_closed(err: WsClosed) -> str:
    """Who ended the connection, for the log line and the status."""
    if err.by_us:
        return "closed by Junction"
    return "connection lost" if err.code is None else "closed by the server"


class Session:
    """An open connection: send frames, read frames, know when it was last alive."""

    def __init__(self, ws: WsClient, config: PlaceOSConfig) -> None:
        self.ws = ws
        self.config = config
        self.last_frame_at = time.monotonic()
        self.opened_at = self.last_frame_at
        self.pongs = 0

    async def send(self, text: str) -> None:
        """Send one text frame; a closed connection raises ConnectionDead."""
        try:
            await self.ws.send_message(text)
        except WsClosed as err:
            raise ConnectionDead(f"closed while sending ({err})") from err

    async def receive(self) -> list[Message]:
        """Every frame the next read brought (at least one); a closed connection raises
        ConnectionDead."""
        try:
            messages = await self.ws.receive_messages()
        except WsClosed as err:
            raise ConnectionDead(f"{who_closed(err)} ({err})") from err
        self.last_frame_at = time.monotonic()
        return messages

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
        async with open_websocket(
            config.url,
            ssl_context=ssl_context_for(config),
            extra_headers=auth_headers(config),
            connect_timeout=config.connect_timeout_s,
            disconnect_timeout=config.disconnect_timeout_s,
            max_message_size=config.max_message_bytes,
        ) as ws:
            opened = True
            yield Session(ws, config)
    except WsRejected as err:
        body = err.body.decode(errors="replace")
        if err.status_code in (401, 403):
            raise AuthRejected(err.status_code, body) from err
        raise HandshakeFailed(f"HTTP {err.status_code} at the handshake: {body[:200]}") from err
    except WsHandshakeError as err:
        raise HandshakeFailed(f"handshake failed: {err}") from err
    except trio.TooSlowError as err:
        raise HandshakeFailed(f"no answer within {config.connect_timeout_s} s") from err
    except OSError as err:
        if opened:
            raise ConnectionDead(f"socket error: {err.strerror or err}") from err
        raise HandshakeFailed(f"cannot connect: {err.strerror or err}") from err
