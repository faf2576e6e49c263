"""The PlaceOS adapter: bindings become status changes, exec requests become driver calls.

Inbound (to the router):
    ``status_change``  one per ``notify`` (value kept as the JSON it is, ``None`` allowed),
                       subject ``<sys>/<mod>_<index>/<name>``; emitted in batches: what
                       one socket read brought (up to ``emit_batch``), so a lone change goes
                       on at once and a burst goes as one batch
    ``exec_result``    the answer to an ``exec_request``, carrying its correlation id:
                       ``ok`` + ``value`` + ``code``, or ``error`` (the PlaceOS error name
                       in lower case, e.g. ``request_failed``), ``error_code``, ``message``;
                       ``timeout`` when no reply came by the deadline (the server says
                       nothing about a frame it cannot parse), ``connection_lost`` when the
                       connection died first (the command may or may not have run),
                       ``malformed_reply`` when the success carried a value that does not
                       decode (the call ran)
    ``log``            debug lines of the modules listed under ``debug``

Outbound (from routes): ``exec_request``, ``bind`` (bind or unbind at run time) and
``debug`` (attach to or detach from a module's log lines at run time).

A frame that does not decode (not JSON, a value beyond the codec's bounds: see
``codec``) is dropped and counted (``malformed``, in the status detail); the connection
stays, and one log line per 10 s says how many.

Bindings are a desired set (the config's plus run-time ``bind`` requests).  On every
connection each is bound once, with a fresh id; a repeat bind is never sent twice on
one connection.  Execs that were sent on a connection that dies are failed, never
re-sent (a driver call is not idempotent); execs that arrive while disconnected wait
for the next connection until their deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections import deque
from dataclasses import dataclass
from logging import ERROR
from typing import Any
from urllib.parse import urlsplit

import msgspec
import trio

from adapters.placeos import codec
from adapters.placeos.config import PlaceOSConfig
from adapters.placeos.connection import (
    AuthRejected,
    PlaceOSConnectionError,
    Session,
    open_session,
)
from broker import (
    Adapter,
    Backoff,
    Bind,
    Debug,
    Envelope,
    ExecRequest,
    ExecResult,
    LogGate,
    LogLine,
    Retry,
    StatusChange,
    reconnect_forever,
    redact,
    truncate,
)

BindKey = tuple[str, str, int, str]
DebugKey = tuple[str, str, int]
STABLE_AFTER_S = 30.0
#: At most one log line about malformed frames this often (each is counted).
_MALFORMED_LOG_S = 10.0


@dataclass
class _Exec:
    envelope: Envelope
    body: ExecRequest
    deadline: float  # trio.current_time() clock


class PlaceOSAdapter(Adapter):
    """PlaceOS real-time WebSocket client (see the module docstring)."""

    config: PlaceOSConfig
    max_batch = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config  # its api_key / bearer_token: registered for redaction by the loader
        self.where = urlsplit(cfg.url).netloc
        self.desired: dict[BindKey, None] = dict.fromkeys(
            (b.sys, b.mod, b.index, b.name) for b in cfg.bindings
        )
        self.debugging: dict[DebugKey, None] = dict.fromkeys(
            (d.sys, d.mod, d.index) for d in cfg.debug
        )
        self._ids = itertools.count(1)
        self._session: Session | None = None
        self._bound: set[BindKey] = set()
        self._bind_ids: dict[int, BindKey] = {}
        self._pending: dict[int, _Exec] = {}
        self._waiting: list[_Exec] = []
        self._late: deque[int] = deque(maxlen=1000)
        self._out: list[Envelope] = []
        self.connections = 0
        self.quiet = False
        self.ignored_while_stopping = 0
        self.malformed = 0
        self._gate = LogGate(every_s=_MALFORMED_LOG_S)
        self.late_replies = 0
        self.bind_errors = 0

    # --- the connection loop ------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deadlines)
            await self._connect_forever()

    async def _connect_forever(self) -> None:
        cfg = self.config

        def classify(error: Exception, delay: float) -> Retry:
            if isinstance(error, AuthRejected):  # a wrong key stays wrong: ask rarely, loudly
                return Retry(cfg.auth_backoff_s * random.uniform(0.8, 1.0), "auth-failed", ERROR)
            return Retry(delay)

        await reconnect_forever(
            self._serve_one_connection,
            status=self.status,
            where=self.where,
            log=self.log,
            backoff=Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, STABLE_AFTER_S),
            transient=PlaceOSConnectionError,
            classify=classify,
            on_lost=lambda error: self._connection_lost(str(error) if error else "closed"),
        )

    async def _serve_one_connection(self) -> None:
        async with open_session(self.config) as session:
            self.connections += 1
            if self.connections > 1:
                self.status.reconnects += 1
            self._session = session
            self.log.info("connected to %s (%d bindings to restore)", self.where, len(self.desired))
            self._set_connected()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.pinger)
                nursery.start_soon(session.watchdog)
                nursery.start_soon(self._restore, session)
                await self._read(session)

    def _set_connected(self) -> None:
        self.status.set(
            "connected",
            f"{self.where}: {len(self._bound)} bound, {len(self._pending)} execs in flight, "
            f"{self.malformed} malformed frames",
        )

    async def _restore(self, session: Session) -> None:
        """After (re)connecting: bind everything desired, attach debuggers, send waiting execs."""
        for key in list(self.desired):
            if key not in self._bound:
                await self._send_bind(session, key)
        for target in list(self.debugging):
            await self._send_debug(session, target, enable=True)
        waiting, self._waiting = self._waiting, []
        now = trio.current_time()
        for item in waiting:
            if item.deadline > now:
                await self._send_exec(session, item)
            else:
                self._timed_out(item)
        self._set_connected()

    def _connection_lost(self, reason: str) -> None:
        self._session = None
        self._bound.clear()
        self._bind_ids.clear()
        lost = list(self._pending.values())
        self._pending.clear()
        for item in lost:
            self._answer(
                item,
                ExecResult(
                    ok=False,
                    error="connection_lost",
                    message=f"the connection to PlaceOS was lost before the reply ({reason}); "
                    "the call may or may not have run",
                ),
            )
        if lost:
            self.log.warning("%d exec(s) in flight failed: connection lost (%s)", len(lost), reason)

    # --- reading --------------------------------------------------------------------

    async def _read(self, session: Session) -> None:
        backlog = self.ctx.backlog
        while True:
            messages = await session.receive()
            await backlog.wait_room()  # the router is far behind: stop reading, TCP pushes back
            for message in messages:
                self._dispatch(message)
            self._flush()  # what this read brought: one batch for the router

    def _dispatch(self, message: str | bytes) -> None:
        try:  # decoding the frame, and its value when one is used: MalformedFrameError
            frame = codec.decode_server_frame(message)
            match frame:
                case codec.NotifyFrame():
                    self._notify(frame)
                case codec.SuccessFrame():
                    self._success(frame)
                case codec.ErrorFrame():
                    self._error(frame)
                case codec.DebugFrame():
                    self._debug(frame)
                case _:  # the PING / PONG heartbeat frames: nothing to do here
                    pass
        except codec.MalformedFrameError as err:
            self._malformed(err)

    def _malformed(self, err: codec.MalformedFrameError) -> None:
        """A frame that does not decode is dropped and counted (the status detail shows the
        count); one line per ``_MALFORMED_LOG_S`` says so, with how many were not logged."""
        self.malformed += 1
        if self._session is not None:
            self._set_connected()
        allowed, held = self._gate.allow("malformed")
        if allowed:
            self.log.warning(
                "malformed frame from %s ignored (%d so far%s): %s",
                self.where,
                self.malformed,
                f", {held} not logged" if held else "",
                truncate(redact(str(err)), 300),
            )

    def _notify(self, frame: codec.NotifyFrame) -> None:
        if self.quiet:
            self.ignored_while_stopping += 1
            return
        meta = frame.meta
        if meta is not None:
            key: BindKey | None = (meta.sys, meta.mod, meta.index, meta.name)
        else:
            key = self._bind_ids.get(frame.id)
        if key is None:
            self.log.debug("notify for unknown binding id %d ignored", frame.id)
            return
        sys_id, mod, index, name = key
        self._out.append(
            Envelope(
                source=self.name,
                subject=f"{sys_id}/{mod}_{index}/{name}",
                body=StatusChange(
                    system=sys_id,
                    module=mod,
                    index=index,
                    name=name,
                    value=codec.decode_value(frame.value),
                ),
            )
        )
        if len(self._out) >= self.config.emit_batch:
            self._flush()

    def _flush(self) -> None:
        batch, self._out = self._out, []
        if batch:
            self.emit(batch)

    def _success(self, frame: codec.SuccessFrame) -> None:
        item = self._pending.pop(frame.id, None)
        if item is not None:
            try:
                value = None if frame.value is msgspec.UNSET else codec.decode_value(frame.value)
            except codec.MalformedFrameError as err:  # the call ran; its value is unreadable
                self._answer(
                    item,
                    ExecResult(
                        ok=False, error="malformed_reply", message=err.reason, code=frame.code
                    ),
                )
                raise
            self._answer(item, ExecResult(ok=True, value=value, code=frame.code))
        elif frame.id in self._late:
            self.late_replies += 1
            self.log.info("reply to exec id %d came after its deadline; ignored", frame.id)

    def _error(self, frame: codec.ErrorFrame) -> None:
        item = self._pending.pop(frame.id, None)
        if item is not None:
            self._answer(
                item,
                ExecResult(
                    ok=False,
                    error=frame.error_name.lower(),
                    error_code=frame.error_code,
                    message=frame.msg,
                    code=frame.code,
                ),
            )
            return
        key = self._bind_ids.get(frame.id)
        if key is not None:
            self.bind_errors += 1
            self._bound.discard(key)
            self.log.warning(
                "bind %s failed: %s (%s); it is retried on the next connection",
                "/".join(map(str, key)),
                frame.error_name,
                frame.msg,
            )
        else:
            self.log.warning("error for request %d: %s (%s)", frame.id, frame.error_name, frame.msg)

    def _debug(self, frame: codec.DebugFrame) -> None:
        sys_id = frame.meta.sys if frame.meta is not None else ""
        self._out.append(
            Envelope(
                source=self.name,
                subject=f"{sys_id}/{frame.mod}/debug",
                body=LogLine(
                    level=frame.level,
                    message=frame.msg,
                    fields={"module_id": frame.mod, "system": sys_id},
                ),
            )
        )

    def quiesce(self) -> bool:
        """Shutdown: stop emitting status changes, keep the connection for queued execs."""
        self.quiet = True
        return True

    async def aclose(self) -> None:
        unanswered = len(self._pending) + len(self._waiting)
        if unanswered:
            self.log.warning(
                "stopping with %d exec(s) unanswered (%d sent, %d never sent)",
                unanswered,
                len(self._pending),
                len(self._waiting),
            )
        if self.ignored_while_stopping:
            self.log.info(
                "%d status changes arrived while stopping and were not routed "
                "(a new bind reads the current values)",
                self.ignored_while_stopping,
            )

    # --- exec deadlines -------------------------------------------------------------

    async def _deadlines(self) -> None:
        while True:
            await trio.sleep(0.05)
            now = trio.current_time()
            for exec_id, item in list(self._pending.items()):
                if item.deadline <= now:
                    del self._pending[exec_id]
                    self._late.append(exec_id)
                    self._timed_out(item)
            if self._waiting:
                expired = [w for w in self._waiting if w.deadline <= now]
                if expired:
                    self._waiting = [w for w in self._waiting if w.deadline > now]
                    for item in expired:
                        self._timed_out(item)

    def _timed_out(self, item: _Exec) -> None:
        self._answer(
            item,
            ExecResult(
                ok=False,
                error="timeout",
                message="no reply from PlaceOS by the deadline (the server does not answer a "
                "request it cannot parse, nor one whose driver hangs)",
            ),
        )

    def _answer(self, item: _Exec, result: ExecResult) -> None:
        req = item.envelope
        body = item.body
        self._out.append(
            Envelope(
                source=self.name,
                subject=f"{body.system}/{body.module}_{body.index}/{body.method}",
                correlation_id=req.correlation_id or req.id,
                body=result,
            )
        )
        self._flush()

    # --- outbound -------------------------------------------------------------------

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        for env in batch:
            match env.body:
                case ExecRequest() as body:
                    await self._exec(env, body)
                case Bind() as body:
                    await self._bind_request(body)
                case Debug() as body:
                    await self._debug_request(body)
                case _:
                    self.fail(
                        route,
                        [env],
                        "the placeos adapter sends exec_request, bind and debug envelopes, "
                        f"not {env.kind}",
                    )

    async def _debug_request(self, body: Debug) -> None:
        target: DebugKey = (body.system, body.module, body.index)
        if body.enable:
            self.debugging.setdefault(target, None)
        else:
            self.debugging.pop(target, None)
        if self._session is not None:
            await self._send_debug(self._session, target, enable=body.enable)

    async def _send_debug(self, session: Session, target: DebugKey, *, enable: bool) -> None:
        sys_id, mod, index = target
        cls = codec.DebugRequest if enable else codec.IgnoreRequest
        request = cls(id=next(self._ids), sys=sys_id, mod=mod, index=index, name="debug")
        with contextlib.suppress(PlaceOSConnectionError):  # restored on the next connection
            await session.send(codec.encode_request(request))

    async def _exec(self, env: Envelope, body: ExecRequest) -> None:
        # exec_timeout_s bounds every call; an envelope's own deadline may only shorten it
        remaining = self.config.exec_timeout_s
        if env.deadline is not None:
            remaining = min(remaining, env.deadline - time.time())
        item = _Exec(env, body, trio.current_time() + remaining)
        session = self._session
        if session is None:
            self._waiting.append(item)
            return
        await self._send_exec(session, item)

    async def _send_exec(self, session: Session, item: _Exec) -> None:
        body = item.body
        exec_id = next(self._ids)
        self._pending[exec_id] = item
        frame = codec.encode_request(
            codec.ExecRequest(
                id=exec_id,
                sys=body.system,
                mod=body.module,
                index=body.index,
                name=body.method,
                args=list(body.args),
            )
        )
        # If the connection is going down, _connection_lost fails it as connection_lost.
        with contextlib.suppress(PlaceOSConnectionError):
            await session.send(frame)

    async def _bind_request(self, body: Bind) -> None:
        key: BindKey = (body.system, body.module, body.index, body.name)
        session = self._session
        if body.bind:
            self.desired.setdefault(key, None)
            if session is not None and key not in self._bound:
                await self._send_bind(session, key)
            return
        self.desired.pop(key, None)
        if session is not None and key in self._bound:
            self._bound.discard(key)
            sys_id, mod, index, name = key
            unbind = codec.UnbindRequest(
                id=next(self._ids), sys=sys_id, mod=mod, index=index, name=name
            )
            with contextlib.suppress(PlaceOSConnectionError):  # gone with the connection anyway
                await session.send(codec.encode_request(unbind))

    async def _send_bind(self, session: Session, key: BindKey) -> None:
        bind_id = next(self._ids)
        self._bound.add(key)  # before the await: a concurrent restore must not send it again
        self._bind_ids[bind_id] = key
        sys_id, mod, index, name = key
        bind = codec.BindRequest(id=bind_id, sys=sys_id, mod=mod, index=index, name=name)
        with contextlib.suppress(PlaceOSConnectionError):  # re-bound on the next connection
            await session.send(codec.encode_request(bind))
