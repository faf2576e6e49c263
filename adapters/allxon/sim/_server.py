"""The simulated Allxon agent itself (private; use ``adapters.allxon.sim.open_allxon_simulator``).

See ``adapters.allxon.sim`` for the behaviour: check order of a received frame, the
decisions the protocol leaves open (docs/protocols/allxon.md, "What the simulator decides"),
and what is recorded. This module holds the server
side: one task per plugin connection, verification and signing in worker threads, the
recorded state in ``_store.SimStore``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio
import trustme
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from adapters.allxon.cards import validate_update
from adapters.allxon.codec import (
    MAX_FRAME_BYTES,
    AgentError,
    AgentErrorFrame,
    AlarmModuleSettings,
    AlarmUpdateParams,
    CodecError,
    CommandInvocation,
    CommandParams,
    ConfigModuleSettings,
    ConfigUpdateParams,
    MalformedFrameError,
    NamedValue,
    OctoMessage,
    PluginAlarmUpdate,
    PluginCommand,
    PluginConfigUpdate,
    PluginCredential,
    PluginUpdate,
    Value,
    decode_frame,
    encode_message,
    epoch_str,
    error_frame,
)
from adapters.allxon.signing import SignatureError, sign_frame, verify_frame
from adapters.allxon.sim._store import (
    CallBudget,
    CommandRecord,
    ModuleRecord,
    Rejection,
    SimStore,
)

__all__ = ["RECEIVE_LIMIT", "AllxonSimulator", "NoPluginConnectedError", "dev_credential"]

logger = logging.getLogger(__name__)

# Frames up to this size get an error frame; beyond it trio-websocket closes with 1009.
RECEIVE_LIMIT = 64 * 1024
_AGENT_METHODS = (PluginCommand, PluginAlarmUpdate, PluginConfigUpdate)


class NoPluginConnectedError(RuntimeError):
    """The simulator was asked to send to a plugin, but no connection has declared itself."""


class _Rejected(Exception):
    def __init__(self, reason: Rejection, kind: AgentError, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.kind = kind
        self.message = message


@dataclass(slots=True)
class _Connection:
    ident: int
    ws: WebSocketConnection
    remote: str
    updated: bool = False
    updated_at: float = 0.0


# --------------------------------------------------------------------------- simulator


class AllxonSimulator:
    """The simulated agent. Build it with ``open_allxon_simulator``; read ``store`` (or the
    shortcuts ``modules``, ``commands``, ``state()``), script faults, send commands."""

    def __init__(
        self,
        credential: PluginCredential,
        *,
        budget: int = 500,
        budget_window: float = 3600.0,
        clock: Callable[[], float] | None = None,
        max_frame: int = MAX_FRAME_BYTES,
        send_initial_updates: bool = True,
        check_app_guid: bool = True,
        history: int = 10_000,
    ) -> None:
        self.credential = credential
        self.max_frame = max_frame
        self.send_initial_updates = send_initial_updates
        self.check_app_guid = check_app_guid
        self.store = SimStore(history)
        self.budget = CallBudget(budget, budget_window, clock or trio.current_time)
        self.offline = False
        self.accepting = True
        self.host = "127.0.0.1"
        self.port = 0
        self._ca = trustme.CA()
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1")
        self._connections: dict[int, _Connection] = {}
        self._ids = itertools.count(1)
        self._changed = trio.Event()

    # ---- addresses and TLS

    @property
    def url(self) -> str:
        """``wss://127.0.0.1:<port>``."""
        return f"wss://{self.host}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        """The PEM of the CA that signed the server certificate (trust it to connect)."""
        return self._ca.cert_pem.bytes()

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this simulator's certificate (and verifies it)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._ca.configure_trust(context)
        return context

    def _server_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._cert.configure_cert(context)
        return context

    # ---- inspection

    @property
    def modules(self) -> dict[str, ModuleRecord]:
        """Records per module name (see ``_store.ModuleRecord``)."""
        return self.store.modules

    @property
    def commands(self) -> dict[str, CommandRecord]:
        """Command records by commandId, with their ack sequence."""
        return self.store.commands

    @property
    def connection_count(self) -> int:
        """Open plugin connections."""
        return len(self._connections)

    def state(self, module: str, name: str) -> Value | None:
        """The latest value of a state, or None if never received."""
        record = self.store.modules.get(module)
        item = record.states.get(name) if record else None
        return item.value if item else None

    def render(self) -> str:
        """The plugin's cards and latest values as a text table."""
        header = [
            f"Allxon agent simulator {self.url}  connections={self.connection_count}  "
            f"budget {self.budget.used()}/{self.budget.limit} per {self.budget.window:g}s"
            + ("  OFFLINE" if self.offline else "")
        ]
        return self.store.render(header)

    async def wait_for(self, predicate: Callable[[AllxonSimulator], Any], timeout: float) -> None:
        """Wait until ``predicate(sim)`` is truthy. A ``LookupError`` inside the predicate
        (module or card not recorded yet) counts as "not yet". Raises ``trio.TooSlowError``
        with the rendered state after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while True:
                changed = self._changed
                try:
                    if predicate(self):
                        return
                except LookupError:
                    pass
                await changed.wait()
        raise trio.TooSlowError(f"condition not met within {timeout}s; simulator:\n{self.render()}")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ---- faults

    def set_offline(self, offline: bool) -> None:
        """Simulate the device losing its cloud: every frame gets -32000 while offline."""
        self.offline = offline
        logger.info("simulated device %s", "offline" if offline else "online")

    def set_accepting(self, accepting: bool) -> None:
        """When False, new WebSocket handshakes are rejected with HTTP 503."""
        self.accepting = accepting

    async def drop_connections(self, code: int = 1001, reason: str = "simulated drop") -> int:
        """Close every plugin connection (close frame ``code``); returns how many."""
        connections = list(self._connections.values())
        for connection in connections:
            with trio.move_on_after(2):
                await connection.ws.aclose(code, reason)
        logger.info("dropped %d connection(s) with code %d", len(connections), code)
        return len(connections)

    # ---- sending

    def _target(self) -> _Connection:
        ready = [c for c in self._connections.values() if c.updated]
        if not ready:
            raise NoPluginConnectedError("no connected plugin has sent v2/notifyPluginUpdate")
        return max(ready, key=lambda c: c.updated_at)

    async def _send_signed(self, connection: _Connection, message: OctoMessage) -> None:
        text = encode_message(message)
        signed = await trio.to_thread.run_sync(sign_frame, text, self.credential.access_key)
        await connection.ws.send_message(signed)
        self.store.note_sent(message)
        self._notify()

    async def send_command(
        self,
        module: str,
        name: str,
        params: Mapping[str, Any] | Sequence[NamedValue] | None = None,
        command_id: str | None = None,
    ) -> str:
        """Send a signed ``v2/notifyPluginCommand`` to the plugin; returns its commandId."""
        command_id = command_id or secrets.token_hex(20)
        if isinstance(params, Mapping):
            args = [NamedValue(name=k, value=v) for k, v in params.items()]
        else:
            args = list(params or [])
        command = CommandParams(
            app_guid=self.credential.app_guid,
            epoch=epoch_str(time.time()),
            command_id=command_id,
            module_name=module,
            commands=[CommandInvocation(name=name, params=args)],
        )
        connection = self._target()
        self.store.note_command(command)
        await self._send_signed(connection, PluginCommand(params=command))
        logger.info("sent command %s %s/%s", command_id, module, name)
        return command_id

    async def send_alarm_update(
        self, modules: Sequence[AlarmModuleSettings] | None = None, *, version: str = "1"
    ) -> None:
        """Send a signed ``v2/notifyPluginAlarmUpdate`` (``None``/``[]`` = all disabled)."""
        params = AlarmUpdateParams(
            app_guid=self.credential.app_guid,
            epoch=epoch_str(time.time()),
            version=version,
            modules=list(modules or []),
        )
        connection = self._target()
        self.store.note_alarm_update(params)
        await self._send_signed(connection, PluginAlarmUpdate(params=params))

    async def send_config_update(
        self, modules: Sequence[ConfigModuleSettings] | None = None, *, version: str = "1"
    ) -> None:
        """Send a signed ``v2/notifyPluginConfigUpdate``."""
        params = ConfigUpdateParams(
            app_guid=self.credential.app_guid,
            epoch=epoch_str(time.time()),
            version=version,
            modules=list(modules or []),
        )
        await self._send_signed(self._target(), PluginConfigUpdate(params=params))

    async def send_raw(self, text: str | bytes) -> None:
        """Send ``text`` as is (unsigned, tampered...; bytes as a binary frame) to the
        plugin, for fault tests."""
        await self._target().ws.send_message(text)

    async def send_error(self, kind: AgentError, message: str) -> None:
        """Send an unsolicited error frame to the plugin."""
        await self._target().ws.send_message(encode_message(error_frame(kind, message)))

    # ---- serving

    async def _handle(self, request: WebSocketRequest) -> None:
        if not self.accepting:
            await request.reject(503, body=b"simulated agent is not accepting connections")
            return
        ws = await request.accept()
        remote = f"{ws.remote}"
        connection = _Connection(next(self._ids), ws, remote)
        self._connections[connection.ident] = connection
        self.store.connections_total += 1
        logger.info("plugin connection %d from %s", connection.ident, remote)
        self._notify()
        try:
            while True:
                try:
                    frame = await ws.get_message()
                except ConnectionClosed as closed:
                    logger.info("plugin connection %d closed: %s", connection.ident, closed.reason)
                    return
                await self._on_frame(connection, frame)
        finally:
            del self._connections[connection.ident]
            self._notify()

    async def _on_frame(self, connection: _Connection, frame: str | bytes) -> None:
        try:
            message = await self._accept(connection, frame)
        except _Rejected as rejected:
            self.store.note_rejection(rejected.reason, rejected.message)
            logger.warning(
                "connection %d: rejected frame (%s): %s",
                connection.ident,
                rejected.reason.value,
                rejected.message,
            )
            self._notify()
            reply: AgentErrorFrame = error_frame(rejected.kind, rejected.message)
            with suppress(ConnectionClosed):
                await connection.ws.send_message(encode_message(reply))
            return
        self.store.record(message)
        self._notify()
        if isinstance(message, PluginUpdate):
            connection.updated = True
            connection.updated_at = trio.current_time()
            if self.send_initial_updates:
                await self._send_initial_updates(connection)

    async def _send_initial_updates(self, connection: _Connection) -> None:
        """What the real agent sends after an update: alarm and config updates, here empty.

        The real agent's carry the Portal's settings, or nothing (a reset: all alarms off).
        """
        alarms = AlarmUpdateParams(
            app_guid=self.credential.app_guid, epoch=epoch_str(time.time()), version="1", modules=[]
        )
        configs = ConfigUpdateParams(
            app_guid=self.credential.app_guid, epoch=epoch_str(time.time()), version="1", modules=[]
        )
        try:
            self.store.note_alarm_update(alarms)
            await self._send_signed(connection, PluginAlarmUpdate(params=alarms))
            await self._send_signed(connection, PluginConfigUpdate(params=configs))
        except ConnectionClosed:
            logger.info("connection %d closed before the initial updates", connection.ident)

    async def _accept(self, connection: _Connection, frame: str | bytes) -> OctoMessage:
        invalid = AgentError.INVALID_REQUEST
        if isinstance(frame, bytes):
            self.store.note_frame(len(frame))
            raise _Rejected(Rejection.BINARY, AgentError.PARSE_ERROR, "binary frames unsupported")
        size = len(frame.encode("utf-8"))
        self.store.note_frame(size)
        if size > self.max_frame:
            raise _Rejected(
                Rejection.OVERSIZE, invalid, f"message is {size} bytes, limit {self.max_frame}"
            )
        if self.offline:
            connection.updated = False
            raise _Rejected(Rejection.OFFLINE, AgentError.DEVICE_OFFLINE, "device is offline")
        try:
            decoded = decode_frame(frame)
        except MalformedFrameError as err:
            raise _Rejected(Rejection.PARSE, AgentError.PARSE_ERROR, str(err)) from None
        except CodecError as err:
            raise _Rejected(Rejection.INVALID, invalid, str(err)) from None
        if isinstance(decoded, (AgentErrorFrame, *_AGENT_METHODS)):
            what = "an error frame" if isinstance(decoded, AgentErrorFrame) else decoded.method
            raise _Rejected(Rejection.WRONG_DIRECTION, invalid, f"plugins may not send {what}")
        try:
            await trio.to_thread.run_sync(verify_frame, frame, self.credential.access_key)
        except SignatureError as err:
            raise _Rejected(Rejection.SIGNATURE, invalid, f"signature {err}") from None
        if not connection.updated and not isinstance(decoded, PluginUpdate):
            raise _Rejected(
                Rejection.UPDATE_FIRST,
                invalid,
                f"{decoded.method} before v2/notifyPluginUpdate on this connection",
            )
        if self.check_app_guid and decoded.params.app_guid != self.credential.app_guid:
            raise _Rejected(
                Rejection.APP_GUID, invalid, f"unknown appGUID {decoded.params.app_guid!r}"
            )
        if isinstance(decoded, PluginUpdate):
            problems = validate_update(decoded.params)
            if problems:
                listed = "; ".join(str(p) for p in problems[:3])
                more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
                raise _Rejected(Rejection.DECLARATION, invalid, f"invalid cards: {listed}{more}")
        if not self.budget.take():
            raise _Rejected(
                Rejection.BUDGET,
                invalid,
                f"call budget of {self.budget.limit} per {self.budget.window:g}s exhausted",
            )
        return decoded


def dev_credential() -> PluginCredential:
    """A random development credential (uuid4 app GUID, 32-character access key)."""
    return PluginCredential(app_guid=str(uuid.uuid4()), access_key=secrets.token_hex(16))
