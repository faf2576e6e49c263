"""The PlaceOS simulator's server: connections, sessions, request dispatch and test knobs.

The public face is ``adapters.placeos.sim`` (``open_placeos_simulator``, the CLI); its
docstring says what the simulated server does and where that comes from. Here: each TCP
connection's request head is read by ``_http`` (which also authenticates and answers plain
HTTP); an upgrade goes through trio-websocket; each accepted WebSocket becomes a ``SimSession``
whose requests drive the pure ``_model.World``. Outgoing frames are queued per session and
written by one writer task per session.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from adapters.placeos.codec import (
    PING,
    PONG,
    BindRequest,
    DebugRequest,
    ExecRequest,
    IgnoreRequest,
    Request,
    RequestParseError,
    UnbindRequest,
    encode_error,
    parse_request,
)
from adapters.placeos.sim import _http
from adapters.placeos.sim._http import Grant, HttpExchange, Verdict
from adapters.placeos.sim._model import (
    Clearance,
    DriftSpec,
    LogLevel,
    SimModel,
    SimModule,
    World,
)

__all__ = [
    "AUTHORITY_PATH",
    "CONTROL_PATH",
    "DEV_API_KEY",
    "Grant",
    "HttpExchange",
    "PlaceOSSimulator",
    "SimSession",
]

log = logging.getLogger(__name__)

CONTROL_PATH: Final = "/api/engine/v2/systems/control"
AUTHORITY_PATH: Final = "/auth/authority"
DEV_API_KEY: Final = "sim-dev.placeos-simulator-key"
HEAD_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0
HISTORY: Final = 100_000


@dataclass(frozen=True)
class _Fault:
    error_code: int
    msg: str
    cmd: str | None
    code: int | None


class SimSession:
    """One accepted WebSocket: what it sent and its queue of outgoing frames (a ``Sink``).

    Frames are queued without blocking and written by one writer task, so ``set_status`` on
    thousands of bindings costs one deque append per notify, not a task each.
    """

    def __init__(self, number: int, ws: WebSocketConnection, grant: Grant, max_outbox: int) -> None:
        self.number = number
        self.ws = ws
        self.grant = grant
        self.received: deque[Request] = deque(maxlen=HISTORY)
        self.unparseable: deque[str] = deque(maxlen=HISTORY)
        self.sent_frames = 0
        self.dropped_frames = 0
        self.closed = False
        self.close_code: int | None = 1000
        self.cancel_scope = trio.CancelScope()
        self._max_outbox = max_outbox
        self._outbox: deque[str | bytes] = deque()
        self._wake = trio.Event()

    def __repr__(self) -> str:
        return f"<SimSession #{self.number} {self.ws.remote}>"

    def push(self, frame: str | bytes) -> None:
        """Queue one text frame, or a binary one for bytes (dropped and counted when the
        session is closed or full)."""
        if self.closed:
            return
        if len(self._outbox) >= self._max_outbox:
            if not self.dropped_frames:
                log.error("%r: outbox full (%d frames), dropping frames", self, self._max_outbox)
            self.dropped_frames += 1
            return
        self._outbox.append(frame)
        self._wake.set()

    async def write_loop(self) -> None:
        """Send queued frames in order until the connection closes."""
        outbox, ws = self._outbox, self.ws
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while outbox:
                    await ws.send_message(outbox.popleft())
                    self.sent_frames += 1
        except ConnectionClosed:
            self.cancel_scope.cancel()


class PlaceOSSimulator:
    """The server: HTTP edge, auth, sessions, the world, and the knobs tests turn.

    Build it with ``open_placeos_simulator``; ``port`` / ``url`` are valid once it is serving.
    """

    def __init__(
        self,
        model: SimModel,
        *,
        api_key: str = DEV_API_KEY,
        pong_interval: float | None = 80.0,
        value_before_success: bool = False,
        authority_version: str = "2.0.0",
        max_outbox: int = 100_000,
    ) -> None:
        self.model = model
        self.api_key = api_key
        self.pong_interval = pong_interval
        self.value_before_success = value_before_success
        self.authority_version = authority_version
        self.host = "127.0.0.1"
        self.port = 0
        # What arrived, oldest first (the last HISTORY entries, so a long CLI run stays small).
        self.received: deque[Request] = deque(maxlen=HISTORY)
        self.unparseable: deque[str] = deque(maxlen=HISTORY)
        self.http_log: deque[HttpExchange] = deque(maxlen=HISTORY)
        self.unparseable_count = 0  # frames it could not parse (and did not answer), all time
        self.sessions_opened = 0
        self.pings_received = 0
        self._world = World(model)
        self.credentials = _http.Credentials(api_key)
        self._sessions: list[SimSession] = []
        self._faults: deque[_Fault] = deque()
        self._answer_pings = True
        self._reply_delay = 0.0
        self._max_outbox = max_outbox
        self._lot = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------------ public face

    @property
    def url(self) -> str:
        """The WebSocket URL of the control endpoint."""
        return f"ws://{self.host}:{self.port}{CONTROL_PATH}"

    @property
    def http_url(self) -> str:
        """The HTTP base URL (``/auth/authority`` lives here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def sessions(self) -> list[SimSession]:
        """The sessions open now, oldest first."""
        return list(self._sessions)

    def add_api_key(self, key: str, *, clearance: Clearance = "admin", scoped: bool = True) -> None:
        """Accept ``key`` as an X-API-Key (``scoped=False``: authenticated but 403)."""
        self.credentials.api_keys[key] = Grant(clearance, scoped)

    def add_bearer_token(
        self, token: str, *, clearance: Clearance = "admin", scoped: bool = True
    ) -> None:
        """Accept ``token`` as a bearer token (the simulator does not check JWTs)."""
        self.credentials.bearer_tokens[token] = Grant(clearance, scoped)

    def reject_auth(self, status: int | None) -> None:
        """Answer every new handshake with ``status`` (401 with the key body); None: normal."""
        self.credentials.forced_status = status

    def set_status(self, sys: str, mod: str, index: int, name: str, value: Any) -> bool:
        """Set a status; bound sessions are notified only if its JSON changed. True if so."""
        return self._world.set_status(sys, mod, index, name, value)

    def delete_status(self, sys: str, mod: str, index: int, name: str) -> bool:
        """Delete a status; bound sessions get a ``null`` notify. True if it existed."""
        return self._world.delete_status(sys, mod, index, name)

    def status(self, sys: str, mod: str, index: int, name: str) -> Any:
        """The current value of a status (None when it does not exist)."""
        raw = self._world.status_json(sys, mod, index, name)
        return None if raw is None else msgspec.json.decode(raw)

    def log(self, module_id: str, msg: str, level: LogLevel = "info") -> int:
        """A log line of a module, sent to debugging sessions; returns how many got it."""
        return self._world.log(module_id, msg, level)

    def bind_count(
        self,
        sys: str | None = None,
        mod: str | None = None,
        index: int | None = None,
        name: str | None = None,
    ) -> int:
        """Live bindings over all sessions matching every filter given."""
        return self._world.bind_count(sys, mod, index, name)

    def drop_connections(self, code: int | None = None) -> int:
        """Close every session now: abruptly (TCP close, no close frame) or with ``code``.

        Bindings go at once, as on the server. Returns how many sessions were dropped.
        """
        sessions = list(self._sessions)
        for session in sessions:
            session.close_code = code
            self._end(session)
        log.info("dropping %d session(s) (%s)", len(sessions), code or "abrupt")
        return len(sessions)

    def stop_answering_pings(self) -> None:
        """Answer no text ``ping`` and send no unsolicited ``pong`` until ``resume_pings``."""
        self._answer_pings = False

    def resume_pings(self) -> None:
        """Undo ``stop_answering_pings``."""
        self._answer_pings = True

    def delay_replies(self, seconds: float) -> None:
        """Handle each request received from now on ``seconds`` late (0: at once)."""
        self._reply_delay = max(0.0, seconds)

    def script_error(
        self,
        error_code: int,
        msg: str,
        *,
        cmd: str | None = None,
        code: int | None = 500,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests (of ``cmd``, or any) with this error instead."""
        self._faults.extend([_Fault(error_code, msg, cmd, code)] * times)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked at every session/request change."""
        while not predicate():
            await self._lot.park()

    # ------------------------------------------------------------------ HTTP edge

    async def handle_tcp(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection: a plain HTTP answer or a whole WebSocket session."""
        try:
            head = None
            with trio.move_on_after(HEAD_TIMEOUT_S):
                try:
                    head = await _http.read_head(stream)
                except _http.HeadError as err:
                    log.warning("bad HTTP request head: %s", err)
                    await stream.send_all(_http.plain_response(err.status))
            if head is not None:
                request, rest = head
                if request.is_upgrade:
                    await self._serve_upgrade(stream, request, rest)
                else:
                    await stream.send_all(self._plain(request))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            log.debug("connection lost: %r", err)
        except Exception:
            log.exception("simulator connection handler failed")
        finally:
            await trio.aclose_forcefully(stream)

    def _plain(self, request: _http.HttpHead) -> bytes:
        verdict = Verdict(404, None)
        extra: tuple[str, ...] = ()
        if request.method != "GET":
            verdict = Verdict(405, None)
        elif request.path == AUTHORITY_PATH:
            verdict = Verdict(200, None, body=self._authority())
        elif request.path == CONTROL_PATH:
            verdict = self.credentials.check(request)
            if verdict.grant is not None:  # authenticated, but not an upgrade
                verdict, extra = Verdict(426, verdict.credential), ("Upgrade: websocket",)
        self._record(
            HttpExchange(request.method, request.path, False, verdict.status, verdict.credential)
        )
        return _http.plain_response(verdict.status, verdict.body, extra)

    def _authority(self) -> bytes:
        return msgspec.json.encode(
            {
                "id": "authority-sim",
                "name": "PlaceOS simulator",
                "description": "Junction PlaceOS simulator",
                "domain": self.http_url,
                "login_url": "/login?continue={{url}}",
                "logout_url": "/auth/logout",
                "version": self.authority_version,
                "production": False,
                "config": {},
            }
        )

    async def _serve_upgrade(
        self, stream: trio.SocketStream, request: _http.HttpHead, rest: bytes
    ) -> None:
        replay = _http.PrefixedStream(stream, request.raw + rest)
        async with trio.open_nursery() as nursery:  # holds trio-websocket's reader task
            ws_request = None
            with trio.move_on_after(HEAD_TIMEOUT_S):  # wsproto may refuse the head itself
                ws_request = await wrap_server_stream(nursery, replay, receive_buffer_size=65536)
            if ws_request is not None:
                verdict = Verdict(404, None)
                if request.path == CONTROL_PATH:
                    verdict = self.credentials.check(request)
                self._record(
                    HttpExchange("GET", request.path, True, verdict.status, verdict.credential)
                )
                if verdict.grant is None:
                    log.info("handshake from %s rejected: %d", ws_request.remote, verdict.status)
                    headers = [(b"Content-Type", b"application/json")] if verdict.body else []
                    body = verdict.body or None
                    await ws_request.reject(verdict.status, extra_headers=headers, body=body)
                else:
                    await self._run_session(await ws_request.accept(), verdict.grant)
            nursery.cancel_scope.cancel()

    def _record(self, exchange: HttpExchange) -> None:
        self.http_log.append(exchange)
        self._lot.unpark_all()

    # ------------------------------------------------------------------ sessions

    async def _run_session(self, ws: WebSocketConnection, grant: Grant) -> None:
        self.sessions_opened += 1
        session = SimSession(self.sessions_opened, ws, grant, self._max_outbox)
        self._sessions.append(session)
        self._lot.unpark_all()
        log.info("%r opened (clearance %s)", session, grant.clearance)
        try:
            with session.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(session.write_loop)
                    if self.pong_interval:
                        nursery.start_soon(self._pong_loop, session, self.pong_interval)
                    await self._read_loop(session, nursery)
                    nursery.cancel_scope.cancel()
        finally:
            self._end(session)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                if session.close_code is not None:
                    await ws.aclose(session.close_code)
            log.info("%r closed: %s", session, ws.closed)

    def _end(self, session: SimSession) -> None:
        """Forget a session at once (bindings too) and cancel its tasks."""
        if session in self._sessions:
            session.closed = True
            dropped = self._world.drop_sink(session)
            self._sessions.remove(session)
            log.debug("%r: dropped %d binding(s)", session, dropped)
            self._lot.unpark_all()
        session.cancel_scope.cancel()

    async def _read_loop(self, session: SimSession, nursery: trio.Nursery) -> None:
        ws = session.ws
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            if message == PING:
                self.pings_received += 1
                if self._answer_pings:
                    session.push(PONG)
                continue
            try:
                if isinstance(message, bytes):
                    raise RequestParseError("binary frame (the server reads text only)", message)
                req = parse_request(message)
            except RequestParseError as err:
                log.warning("%r: no reply to an unparseable frame (id %s): %s", session,
                            err.request_id, err)  # fmt: skip
                session.unparseable.append(err.excerpt)
                self.unparseable.append(err.excerpt)
                self.unparseable_count += 1
                self._lot.unpark_all()
                continue
            log.debug("%r: received %r", session, req)
            session.received.append(req)
            self.received.append(req)
            self._lot.unpark_all()
            if self._reply_delay > 0 or isinstance(req, ExecRequest):
                nursery.start_soon(self._handle_later, session, req, self._reply_delay)
            else:
                self._handle(session, req)

    def _handle(self, session: SimSession, req: Request) -> None:
        if self._scripted(session, req):
            return
        world, clearance = self._world, session.grant.clearance
        if isinstance(req, BindRequest):
            world.bind(session, req, clearance, self.value_before_success)
        elif isinstance(req, UnbindRequest):
            world.unbind(session, req)
        elif isinstance(req, DebugRequest):
            world.debug(session, req)
        elif isinstance(req, IgnoreRequest):
            world.ignore(session, req)
        self._lot.unpark_all()

    async def _handle_later(self, session: SimSession, req: Request, delay: float) -> None:
        if delay > 0:
            await trio.sleep(delay)
        if not isinstance(req, ExecRequest):
            self._handle(session, req)
            return
        if self._scripted(session, req):
            return
        plan = self._world.plan_exec(session, req, session.grant.clearance)
        if plan is not None:
            if plan.method.delay_s > 0:
                await trio.sleep(plan.method.delay_s)
            self._world.finish_exec(session, req, plan)
        self._lot.unpark_all()

    def _scripted(self, session: SimSession, req: Request) -> bool:
        cmd = type(req).__struct_config__.tag
        for fault in self._faults:
            if fault.cmd is None or fault.cmd == cmd:
                self._faults.remove(fault)
                session.push(encode_error(req.id, fault.error_code, fault.msg, fault.code))
                return True
        return False

    async def _pong_loop(self, session: SimSession, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if self._answer_pings:
                session.push(PONG)

    # ------------------------------------------------------------------ drift

    def start_drift(self, nursery: trio.Nursery, seed: int | None = None) -> int:
        """Start the model's random walks in ``nursery``; returns how many statuses drift."""
        rng = random.Random(seed)
        count = 0
        for module in self._world.modules():
            for name, spec in module.drift.items():
                nursery.start_soon(self._drift, module, name, spec, rng)
                count += 1
        return count

    async def _drift(
        self, module: SimModule, name: str, spec: DriftSpec, rng: random.Random
    ) -> None:
        """Move a status by a random step within bounds every ``spec.every_s`` seconds."""
        while True:
            raw = module.status.get(name)
            current = None if raw is None else msgspec.json.decode(raw)
            if isinstance(current, bool) or not isinstance(current, int | float):
                current = (spec.min + spec.max) / 2  # missing or not a number: start midway
            else:
                await trio.sleep(spec.every_s)
                current += rng.uniform(-spec.step, spec.step)
            value = min(spec.max, max(spec.min, current))
            rounded = round(value, spec.decimals) if spec.decimals > 0 else round(value)
            self._world.store(module, name, msgspec.json.encode(rounded))
