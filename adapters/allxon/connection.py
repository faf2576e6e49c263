"""The link to the local Allxon agent: TLS, the WebSocket, and signatures off the event loop.

- ``ssl_context_for(config)``: the agent's certificate is self-signed, so verification is
  skipped **only** when the agent is on a loopback address and no ``ca_file`` is given (what
  every official sample does for this link); with a ``ca_file`` it is verified against that
  CA, and any other host is verified against the system CAs. TLS 1.2 at least.
- ``open_link(config, ssl_context)``: connect with a connect timeout of a few seconds
  (trio-websocket's default is 60 s, and an untrusted certificate does not fail, it hangs).
- ``Crypto``: signs outbound and verifies inbound frames in a worker thread
  (``trio.to_thread.run_sync``), one at a time (a capacity limiter of 1: the Argon2 costs are
  meant to be expensive, about 0.6 ms of CPU here, and running them in parallel only makes
  them compete), and accounts the CPU they cost with ``time.thread_time``: the hash runs
  on that worker thread (``signing._argon2id``; only its fallback, argon2-cffi's own
  one-thread-per-lane path, would be undercounted).

Errors are translated at this boundary::

    AllxonConnectionError
    ├── HandshakeFailed   could not connect, TLS failed, the agent refused the upgrade
    └── ConnectionLost    the open connection closed or broke
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
import trio_websocket

from adapters.allxon.config import AllxonConfig
from adapters.allxon.signing import SignatureError, VerifiedFrame, sign_frame, verify_frame

__all__ = [
    "AgentLink",
    "AllxonConnectionError",
    "ConnectionLost",
    "Crypto",
    "HandshakeFailed",
    "open_link",
    "ssl_context_for",
]

# Frames the agent sends are small (the limit is 2 KB); anything far larger is not the agent.
RECEIVE_LIMIT = 64 * 1024


class AllxonConnectionError(Exception):
    """The link to the agent could not be made or was lost."""


class HandshakeFailed(AllxonConnectionError):
    """Connecting, the TLS handshake or the WebSocket upgrade failed."""


class ConnectionLost(AllxonConnectionError):
    """The open connection was closed (by either side) or broke."""


def ssl_context_for(config: AllxonConfig) -> ssl.SSLContext | None:
    """The client TLS context for ``config.url`` (None for ``ws://``); see the docstring."""
    if urlsplit(config.url).scheme != "wss":
        return None
    if config.ca_file:
        context = ssl.create_default_context(cafile=config.ca_file)
    elif config.agent_is_loopback():
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class AgentLink:
    """An open connection to the agent: send and receive text frames, with counters."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.frames_sent = 0
        self.frames_received = 0

    async def send(self, text: str) -> None:
        """Send one text frame; a closed connection raises ConnectionLost."""
        try:
            await self.ws.send_message(text)
        except trio_websocket.ConnectionClosed as err:
            raise ConnectionLost(f"closed while sending ({_reason(err)})") from err
        self.frames_sent += 1

    async def receive(self) -> str | bytes:
        """The next frame; a closed connection raises ConnectionLost."""
        try:
            message = await self.ws.get_message()
        except trio_websocket.ConnectionClosed as err:
            raise ConnectionLost(f"closed by the agent ({_reason(err)})") from err
        self.frames_received += 1
        return message


@asynccontextmanager
async def open_link(
    config: AllxonConfig, ssl_context: ssl.SSLContext | None
) -> AsyncIterator[AgentLink]:
    """Connect to the agent, yield an AgentLink, close on exit.

    Failures become ``HandshakeFailed`` (before the upgrade) or ``ConnectionLost`` (after).
    """
    opened = False
    try:
        async with trio_websocket.open_websocket_url(
            config.url,
            ssl_context=ssl_context,
            connect_timeout=config.connect_timeout_s,
            disconnect_timeout=config.disconnect_timeout_s,
            max_message_size=RECEIVE_LIMIT,
        ) as ws:
            opened = True
            yield AgentLink(ws)
    except trio_websocket.ConnectionRejected as err:
        body = (err.body or b"").decode(errors="replace")
        raise HandshakeFailed(
            f"the agent refused the upgrade: HTTP {err.status_code} {body[:200]}"
        ) from err
    except (trio_websocket.ConnectionTimeout, trio.TooSlowError) as err:
        # trio-websocket shows a failed TLS verification as a timeout: find out which it was
        tls = await _tls_problem(config, ssl_context)
        what = f"TLS failed: {tls}" if tls else f"no answer within {config.connect_timeout_s} s"
        raise HandshakeFailed(what) from err
    except trio_websocket.HandshakeError as err:
        raise HandshakeFailed(f"handshake failed: {err!r}") from err
    except ssl.SSLError as err:
        raise HandshakeFailed(f"TLS failed: {err.reason or err}") from err
    except trio.BrokenResourceError as err:
        if opened:
            raise ConnectionLost(f"the connection broke: {err}") from err
        raise HandshakeFailed(f"the connection broke during the handshake: {err}") from err
    except OSError as err:
        if opened:
            raise ConnectionLost(f"socket error: {err.strerror or err}") from err
        raise HandshakeFailed(f"cannot connect to {config.url}: {err.strerror or err}") from err


async def _tls_problem(config: AllxonConfig, ssl_context: ssl.SSLContext | None) -> str:
    """Why a TLS handshake with the agent fails (``""`` when it succeeds or is not TLS)."""
    parts = urlsplit(config.url)
    if ssl_context is None or parts.hostname is None:
        return ""
    try:
        with trio.fail_after(config.connect_timeout_s):
            stream = await trio.open_ssl_over_tcp_stream(
                parts.hostname, parts.port or 443, ssl_context=ssl_context
            )
            try:
                await stream.do_handshake()
            finally:
                await trio.aclose_forcefully(stream)
    except trio.BrokenResourceError as err:
        cause = err.__cause__
        if isinstance(cause, ssl.SSLError):
            return f"{cause.reason or cause}: {getattr(cause, 'verify_message', '') or cause}"
        return f"the connection broke during the TLS handshake ({cause or err})"
    except (OSError, trio.TooSlowError):
        return ""
    return ""


def _reason(err: trio_websocket.ConnectionClosed) -> str:
    reason = err.reason
    if reason is None:
        return "no close frame"
    return f"code {reason.code}{': ' + reason.reason if reason.reason else ''}"


class Crypto:
    """Signs and verifies frames in a worker thread, one at a time, counting the CPU spent."""

    def __init__(self, access_key: str) -> None:
        self._key = access_key
        self._limiter = trio.CapacityLimiter(1)
        self.sign_calls = 0
        self.sign_cpu_s = 0.0
        self.sign_wall_s = 0.0
        self.verify_calls = 0
        self.verify_cpu_s = 0.0

    def __repr__(self) -> str:  # the key never reaches a log line
        return f"Crypto(sign_calls={self.sign_calls}, verify_calls={self.verify_calls})"

    async def sign(self, text: str) -> str:
        """``text`` with its signature in the method (``signing.sign_frame``), off the loop."""
        signed, cpu, wall = await trio.to_thread.run_sync(
            _timed_sign, text, self._key, limiter=self._limiter
        )
        self.sign_calls += 1
        self.sign_cpu_s += cpu
        self.sign_wall_s += wall
        return signed

    async def verify(self, raw: str) -> VerifiedFrame:
        """Verify a received frame on its raw text, off the loop; raises SignatureError."""
        verified, error, cpu = await trio.to_thread.run_sync(
            _timed_verify, raw, self._key, limiter=self._limiter
        )
        self.verify_calls += 1
        self.verify_cpu_s += cpu
        if error is not None:
            raise error
        assert verified is not None
        return verified


def _timed_sign(text: str, key: str) -> tuple[str, float, float]:
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    signed = sign_frame(text, key)
    return signed, time.thread_time() - cpu0, time.perf_counter() - wall0


def _timed_verify(raw: str, key: str) -> tuple[VerifiedFrame | None, SignatureError | None, float]:
    cpu0 = time.thread_time()
    try:
        return verify_frame(raw, key), None, time.thread_time() - cpu0
    except SignatureError as err:
        return None, err, time.thread_time() - cpu0
