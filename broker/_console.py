"""The web console: a page at ``/`` of the operations endpoint, and the API it reads.

::

    GET  /                          the page (broker/console/index.html)
    GET  /console/<file>            its script and style sheet (package data, no build step)
    GET  /api/snapshot              /status's snapshot + "vocabulary" + "graph" (+ the demo's)
    GET  /api/events                text/event-stream: "event: snapshot" with it every second
    GET  /api/dead-letters          ?limit=&route=&reason= : the newest dead letters
    POST /api/dead-letters/replay   {"seqs": [...]} -> {"queued": n}
    POST /api/dead-letters/purge    {"seqs": [...]} -> {"purged": n}
    POST /api/explain               {"envelope": {...}} -> what ``junction explain`` says
    GET  /api/config                the configuration file as written, secrets redacted

It is a Starlette app (routing, static files, streaming responses and request parsing,
done better than by hand) served by the operations endpoint's own front,
:mod:`broker._ops_http`, through :mod:`broker._asgi_bridge`, on the front's loop
(``ops-http``, a thread of its own: a page never stalls the adapters). Not by hypercorn
or another ASGI server: the front's hardening -- head and idle timeouts, the connection
bound that displaces idle connections, 431, the bearer token -- is written for this
endpoint and tested (tests/broker/test_ops_http.py, test_ops_network.py); a second server
would need all of it again, or a second port. The front checks the token: with
``[junction.http] token`` set, every ``/api/`` request needs ``Authorization: Bearer``;
the page and its files hold no data and are served without it.

Every POST takes JSON only (``Content-Type: application/json``, else 415), so a plain
cross-site form cannot trigger an action; answers are JSON (``{"error": ...}`` with a
4xx/5xx status when refused), secrets redacted as in the logs. Blocking work (snapshots,
the outbox, explain) runs in worker threads (:mod:`broker._console_work`); one snapshot
serves every page that asks within :data:`FRESH_S`, so many open pages cost what one does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from broker import _console_work as work
from broker._ledger import VOCABULARY
from broker._logs import redact
from broker._messages import describe

if TYPE_CHECKING:
    from broker._runtime import Loaded

log = logging.getLogger("broker.console")

#: The page's files: package data (pyproject.toml), shipped in the wheel.
STATIC = Path(__file__).with_name("console")
#: Seconds between two snapshots of the event stream.
EVENT_EVERY_S = 1.0
#: A snapshot younger than this is handed to the next page that asks.
FRESH_S = 0.5
#: Event streams served at once (each holds a connection of the endpoint's bound).
MAX_STREAMS = 8
#: Snapshots between two keep-alive comments on the event stream.
KEEP_ALIVE_EVERY = 15
DEAD_LIMIT, DEAD_LIMIT_MAX = 50, 500
#: What the browser may do with the page: its own files only, no inline script.
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


@dataclass
class ConsoleSource:
    """What the console reads from the running bridge, without reaching into the router.

    ``snapshot`` is ``Runtime.snapshot`` (blocking: it asks the router); ``loaded`` says
    the configuration in effect (a reload replaces it); ``extra`` adds keys to the
    console's snapshot (the demo: ``"latest"`` values).
    """

    snapshot: Callable[[], dict[str, Any]]
    loaded: Callable[[], Loaded]
    extra: Callable[[], dict[str, Any]] | None = None


def console_app(source: ConsoleSource, answer_timeout_s: float = 10.0) -> Callable[..., Any]:
    """The console's ASGI app over ``source``; a request waits at most ``answer_timeout_s``
    for its worker thread (then 503)."""
    return _Console(source, answer_timeout_s).asgi


class _Console:
    def __init__(self, source: ConsoleSource, answer_timeout_s: float) -> None:
        self.source = source
        self.timeout = answer_timeout_s
        self.streams = 0
        self._snap: tuple[float, bytes] | None = None
        # made on the serving loop, at first use
        self._snap_lock: trio.Lock | None = None
        self._workers: trio.CapacityLimiter | None = None
        self._config: tuple[Loaded, dict[str, Any]] | None = None
        try:  # as it is now: the configuration in effect (a file edited later is not)
            self._config = (source.loaded(), work.config_text(source.loaded()))
        except work.Refused as err:
            log.warning("web console: %s", err.message)
        if not (STATIC / "index.html").is_file():
            log.warning("web console: %s is missing; / answers 404", STATIC / "index.html")
        api = [
            Route("/snapshot", self.snapshot),
            Route("/events", self.events),
            Route("/dead-letters", self.dead_letters),
            Route("/dead-letters/replay", self.replay, methods=["POST"]),
            Route("/dead-letters/purge", self.purge, methods=["POST"]),
            Route("/explain", self.explain, methods=["POST"]),
            Route("/config", self.config),
        ]
        self.app = Starlette(
            routes=[
                Route("/", self.index),
                Mount("/console", StaticFiles(directory=STATIC, check_dir=False)),
                Mount("/api", routes=api),
            ],
            exception_handlers={HTTPException: self.http_error},
        )

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with the security headers on every answer."""

        async def send_secured(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {bytes(k).lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_secured)

    # --- plumbing -----------------------------------------------------------------------

    async def _run(self, fn: Callable[[], Any], limiter: trio.CapacityLimiter | None = None) -> Any:
        """``fn()`` in a worker thread, within the answer timeout; raises Refused (503) past it."""
        if self._workers is None:
            self._workers = trio.CapacityLimiter(2)
        with trio.move_on_after(self.timeout):
            return await trio.to_thread.run_sync(
                fn, limiter=limiter or self._workers, abandon_on_cancel=True
            )
        raise work.Refused(503, f"no answer within {self.timeout:g} s; try again")

    async def _snapshot(self) -> bytes:
        """The console's snapshot as JSON, fresh or taken within :data:`FRESH_S`."""
        if self._snap_lock is None:
            self._snap_lock = trio.Lock()
        async with self._snap_lock:
            now = trio.current_time()
            if self._snap is not None and now - self._snap[0] < FRESH_S:
                return self._snap[1]
            try:
                body: bytes = await self._run(self._take)
            except work.Refused:
                raise
            except Exception as err:  # a failing snapshot must not stop the console
                log.exception("web console: the snapshot failed")
                raise work.Refused(500, redact(f"snapshot failed: {describe(err)}")) from None
            self._snap = (trio.current_time(), body)
            return body

    def _take(self) -> bytes:
        """In a worker thread: the runtime's snapshot with what the page needs beside it."""
        snap = dict(self.source.snapshot())
        loaded = self.source.loaded()
        snap["vocabulary"] = VOCABULARY
        snap["graph"] = {
            "adapters": list(loaded.config.adapters),
            "routes": [
                {"name": r.name, "from": list(r.sources), "to": list(r.targets)}
                for r in loaded.table.routes
            ],
        }
        snap["time"] = time.time()
        if self.source.extra is not None:
            try:
                snap.update(self.source.extra())
            except Exception:  # the embedding program's part; the rest still shows
                log.exception("web console: the extra snapshot part failed")
        return _encode(snap)

    # --- endpoints --------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        if not (STATIC / "index.html").is_file():
            return _error(404, "the console's page is not installed")
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def snapshot(self, request: Request) -> Response:
        try:
            return _json_bytes(await self._snapshot())
        except work.Refused as err:
            return _error(err.status, err.message)

    async def events(self, request: Request) -> Response:
        if self.streams >= MAX_STREAMS:
            return _error(503, f"{MAX_STREAMS} live pages are open already; close one")
        return _EventStream(self, self._event_parts(), media_type="text/event-stream")

    async def _event_parts(self) -> Any:
        yield b"retry: 2000\n: junction console events\n\n"
        tick = 0
        while True:
            try:
                body = await self._snapshot()
                yield b"event: snapshot\ndata: " + body + b"\n\n"
            except work.Refused as err:
                yield b"event: problem\ndata: " + _encode({"error": err.message}) + b"\n\n"
            tick += 1
            if tick % KEEP_ALIVE_EVERY == 0:
                yield b": keep-alive\n\n"
            await trio.sleep(EVENT_EVERY_S)

    async def dead_letters(self, request: Request) -> Response:
        params = request.query_params
        text = params.get("limit") or str(DEAD_LIMIT)
        if not text.isdigit() or not 1 <= int(text) <= DEAD_LIMIT_MAX:
            return _error(400, f"limit is a whole number 1..{DEAD_LIMIT_MAX} (got {text!r})")
        route, reason = params.get("route") or None, params.get("reason") or None
        path = self.source.loaded().config.junction.outbox_path()
        return await self._answer(partial(work.dead_letters, path, route, reason, int(text)))

    async def replay(self, request: Request) -> Response:
        return await self._action(request, "replay")

    async def purge(self, request: Request) -> Response:
        return await self._action(request, "purge")

    async def _action(self, request: Request, verb: str) -> Response:
        try:
            seqs = work.parse_seqs((await _json_object(request)).get("seqs"))
        except work.Refused as err:
            return _error(err.status, err.message)
        loaded = self.source.loaded()
        path = loaded.config.junction.outbox_path()
        if verb == "replay":
            routes = frozenset(r.name for r in loaded.table.routes)
            fn = partial(work.replay, path, seqs, routes)
        else:
            fn = partial(work.purge, path, seqs)
        answer = await self._answer(fn)
        if answer.status_code == 200:
            log.info("web console: %s of dead letters %s", verb, seqs[:20])
        return answer

    async def explain(self, request: Request) -> Response:
        try:
            value = await _json_object(request)
        except work.Refused as err:
            return _error(err.status, err.message)
        if "envelope" not in value:
            return _error(400, 'send {"envelope": {...}}', example=work.EXAMPLE)
        return await self._answer(partial(work.explain, self.source.loaded(), value["envelope"]))

    async def config(self, request: Request) -> Response:
        loaded = self.source.loaded()
        if self._config is None or self._config[0] is not loaded:  # reloaded since
            answer = await self._answer(partial(work.config_text, loaded))
            if answer.status_code == 200:
                self._config = (loaded, json.loads(bytes(answer.body)))
            return answer
        return _json_bytes(_encode(self._config[1]))

    async def _answer(self, fn: Callable[[], dict[str, Any]]) -> Response:
        """``fn()``'s value as JSON; Refused and failures as ``{"error": ...}``."""
        try:
            return _json_bytes(_encode(await self._run(fn)))
        except work.Refused as err:
            return _error(err.status, err.message, **err.extra)
        except Exception as err:  # a bug: logged with its traceback, told in one line
            log.exception("web console: request failed")
            return _error(500, f"the console failed: {describe(err)}")

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error(404, f"no such page {request.url.path!r}; the console is at /")
        return _error(exc.status_code, exc.detail, headers=dict(exc.headers or {}))


class _EventStream(StreamingResponse):
    """A streaming response counted in the console's open streams while it runs."""

    def __init__(self, console: _Console, content: Any, media_type: str) -> None:
        super().__init__(content, media_type=media_type, headers={"x-accel-buffering": "no"})
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.console.streams += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.console.streams -= 1


async def _json_object(request: Request) -> dict[str, Any]:
    """A POST's body: a JSON object sent as ``application/json``; Refused otherwise."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise work.Refused(415, "send the body as JSON, with Content-Type: application/json")
    raw = await request.body()
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise work.Refused(400, f"the body is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise work.Refused(400, "the body must be a JSON object")
    return value


def _encode(value: Any) -> bytes:
    """JSON on one line (an event's data line), NaN as null, secrets redacted."""
    return redact(msgspec.json.encode(value, enc_hook=str).decode()).encode()


def _json_bytes(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    answer = _json_bytes(_encode({"error": message, **extra}), status)
    for name, value in (headers or {}).items():
        answer.headers[name] = value
    return answer
