"""HTTP side of the AlphaX simulator: the endpoints, served by the lean trio + h11 server of
``_h11`` (the simulator shares a 2-core machine with the bridge in the end-to-end benchmark,
where hypercorn + Starlette cost ~460 us more CPU per request; see ``_h11``).

Endpoints: ``POST /post/v1``, ``POST /post/v2`` (token in the JSON body), ``GET /conduitv4``
and ``GET /conduitv6`` (``token``, optional ``id``, ``ch``, ``fcdt``+``tcdt``). Every error is
a JSON ``{"code", "error"}`` body, the code a number or a string as the simulator is set.

Choices:

- Reads return a JSON array. The window is ``fcdt <= t <= tcdt`` (both ends inclusive; default
  the last hour). When more than ``read_limit`` (1000) values match, the OLDEST 1000 of the
  window are returned, sorted by time, so a client must move its window forward itself; an
  empty window answers 304 with no body (HTTP forbids a body on 304).
- v4/v6 timestamps are whole epoch seconds (truncated), as the real service shows them.
- Request bodies: ``Content-Type`` must be JSON; ``Content-Encoding`` gzip or identity; over
  ``max_body_bytes`` (before or after gunzip) -> 413.
- ``X-HTTP-Method-Override`` (PUT or DELETE) is honoured on POST; no endpoint supports PUT or
  DELETE, so it yields 405 -- which shows the override was read.
- Routing is what the Starlette app it replaces did: a path not starting with ``/`` gets a
  plain-text 404 and a method outside ``_METHODS`` a plain-text 405 with ``Allow`` (neither
  logged nor kept); every other request goes through :meth:`_Handler.dispatch`, so a HEAD is
  answered 405 like any method an endpoint does not support.
- There is no transport access log (it would print ``?token=...``). Requests are logged here,
  redacted, and kept in ``sim.requests``.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from http import HTTPStatus
from typing import Any, cast

import msgspec
import trio

from adapters.alphax.codec import (
    CodecError,
    V4Record,
    V6Record,
    check_channel,
    decode_v1_body,
    decode_v2_body,
    encode_error_body,
    encode_v4_records,
    encode_v6_records,
    redact,
)
from adapters.alphax.sim._core import AlphaXSimulator, RequestLog
from adapters.alphax.sim._h11 import HttpRequest, HttpResponse, listen_tcp, serve
from adapters.alphax.sim._store import StoredValue

log = logging.getLogger(__name__)

_PATHS = {"/post/v1": "post/v1", "/post/v2": "post/v2", "/conduitv4": "conduitv4"}
_PATHS["/conduitv6"] = "conduitv6"
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
_ROUTE = re.compile("^/(?P<path>.*)$")  # Starlette's regex for the route "/{path:path}"
_PLAIN = {"content-type": "text/plain; charset=utf-8"}
_REASONS = {401: "Unauthorised", 404: "Resource not Found", 413: "Request too large"}
_GZIP_OVER = 1024
_ENCODER = msgspec.json.Encoder()


class _HttpError(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _reason(status: int) -> str:
    if status in _REASONS:
        return _REASONS[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _accepts_gzip(header: str) -> bool:
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip()
            if not q.startswith("q="):
                return True
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
    return False


class _Handler:
    """Answers every path; one instance per simulator."""

    def __init__(self, sim: AlphaXSimulator) -> None:
        self.sim = sim

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        """Route as the Starlette app did (see the module docstring), then :meth:`dispatch`."""
        if not _ROUTE.match(request.route_path):
            return HttpResponse(404, b"Not Found", dict(_PLAIN))
        if request.method not in _METHODS:
            allow = {"allow": ", ".join(_METHODS)}
            return HttpResponse(405, b"Method Not Allowed", _PLAIN | allow)
        return await self.dispatch(request)

    async def dispatch(self, request: HttpRequest) -> HttpResponse:
        endpoint = _PATHS.get(request.path.rstrip("/") or "/")
        request_encoding = request.headers.get("content-encoding", "")
        body: bytes | None
        try:
            if endpoint is None:
                raise _HttpError(404, f"no resource at {request.path}")
            method = self._method(request)
            fault = self.sim.take_fault(endpoint)
            if fault is not None and fault.body is None:
                raise _HttpError(fault.status, fault.error)
            if fault is not None:
                status, body = fault.status, fault.body
            elif endpoint.startswith("post/"):
                status, body = await self._post(request, endpoint, method)
            else:
                status, body = self._read(request, endpoint, method)
        except _HttpError as err:
            status = err.status
            body = encode_error_body(status, err.error, code_as_string=self.sim.code_as_string())
        response = self._respond(request, status, body)
        query = request.query.partition("#")[0]  # Starlette's url.query stopped at a "#"
        path = redact(request.path + ("?" + query if query else ""))
        self.sim.requests.append(
            RequestLog(
                request.method,
                path,
                endpoint,
                status,
                request_encoding,
                response.headers.get("content-encoding", ""),
                request.body_bytes,
            )
        )
        level = logging.DEBUG if status < 400 else logging.INFO
        log.log(level, "%s %s -> %d", request.method, path, status)
        return response

    @staticmethod
    def _method(request: HttpRequest) -> str:
        override = request.headers.get("x-http-method-override")
        if override is None:
            return request.method
        if request.method != "POST":
            raise _HttpError(400, "X-HTTP-Method-Override is only honoured on POST")
        override = override.strip().upper()
        if override not in ("PUT", "DELETE"):
            raise _HttpError(400, f"X-HTTP-Method-Override must be PUT or DELETE, not {override}")
        return override

    def _respond(self, request: HttpRequest, status: int, body: bytes | None) -> HttpResponse:
        if status == 304 or body is None:
            return HttpResponse(status)
        headers = {"content-type": "application/json"}
        if len(body) > _GZIP_OVER and _accepts_gzip(request.headers.get("accept-encoding", "")):
            body = gzip.compress(body, compresslevel=5)
            headers["content-encoding"] = "gzip"
            headers["vary"] = "Accept-Encoding"
        return HttpResponse(status, body, headers)

    async def _body(self, request: HttpRequest) -> bytes:
        limit = self.sim.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _HttpError(413, f"body of {declared} bytes is over the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.receive():
            size += len(chunk)
            if size > limit:
                raise _HttpError(413, f"body is over the {limit}-byte limit")
            chunks.append(chunk)
        raw = b"".join(chunks)
        request.body_bytes = len(raw)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return raw
        if encoding != "gzip":
            raise _HttpError(400, f"unsupported Content-Encoding {encoding!r} (gzip only)")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(raw, limit + 1)
        except zlib.error as err:
            raise _HttpError(400, f"Content-Encoding gzip but the body is not gzip: {err}") from err
        if len(plain) > limit:
            raise _HttpError(413, f"gunzipped body is over the {limit}-byte limit")
        if not inflater.eof or inflater.unused_data:
            raise _HttpError(400, "gzip body is truncated or has trailing data")
        return plain

    async def _post(self, request: HttpRequest, endpoint: str, method: str) -> tuple[int, bytes]:
        if method != "POST":
            raise _HttpError(405, "Method Not Allowed")
        content_type = request.headers.get("content-type", "")
        if "application/json" not in content_type.lower():
            raise _HttpError(400, f"Content-Type must be application/json, got {content_type!r}")
        raw = await self._body(request)
        decode = decode_v1_body if endpoint == "post/v1" else decode_v2_body
        try:
            uplink = decode(raw)
        except CodecError as err:
            self.sim.reject("http", type(err).__name__, str(err))
            raise _HttpError(400, f"malformed {endpoint[-2:]} uplink: {err}") from err
        denied = self.sim.authorize(uplink.token, "write")
        if denied is not None:
            reason = "unknown_token" if denied == 401 else "forbidden"
            self.sim.reject("http", reason, f"{endpoint} refused", uplink.token)
            raise _HttpError(denied, "unknown token" if denied == 401 else "token may not write")
        tier = self.sim.tier_of(uplink.token)
        if not self.sim.limiter.try_write(uplink.token, tier):
            self.sim.reject("http", "rate_limited", f"{endpoint} over the {tier} write limit")
            limit = self.sim.tiers[tier].writes_per_s
            raise _HttpError(429, f"Too Many Requests: {tier} tier allows {limit} writes/s")
        stored = self.sim.store_uplink(uplink, "http")
        code: Any = "200" if self.sim.code_as_string() else 200
        return 200, _ENCODER.encode({"code": code, "error": "OK", "stored": stored})

    def _read(self, request: HttpRequest, endpoint: str, method: str) -> tuple[int, bytes | None]:
        if method != "GET":
            raise _HttpError(405, "Method Not Allowed")
        query = request.query_params
        token = query.get("token", "")
        if not token:
            raise _HttpError(401, "token is required")
        denied = self.sim.authorize(token, "read")
        if denied is not None:
            raise _HttpError(denied, "unknown token" if denied == 401 else "token may not read")
        network_id = query.get("id") or None
        channel = _int_param(query.get("ch"), "ch")
        if channel is not None:
            try:
                check_channel(channel, where="ch")
            except CodecError as err:
                raise _HttpError(400, str(err)) from err
        fcdt, tcdt = query.get("fcdt"), query.get("tcdt")
        if (fcdt is None) != (tcdt is None):
            raise _HttpError(400, "fcdt and tcdt go together: give both or neither")
        if fcdt is None or tcdt is None:
            end = self.sim.wall_clock()
            start = end - 3600
        else:
            start, end = _seconds(fcdt, "fcdt"), _seconds(tcdt, "tcdt")
            if start > end:
                raise _HttpError(400, f"fcdt {fcdt} is after tcdt {tcdt}")
        tier = self.sim.tier_of(token)
        if not self.sim.limiter.try_read(token, tier):
            interval = self.sim.tiers[tier].read_interval_s
            raise _HttpError(429, f"Too Many Requests: {tier} tier allows 1 read per {interval} s")
        found = self.sim.store.query(
            token,
            start=start,
            end=end,
            network_id=network_id,
            channel=channel,
            limit=self.sim.read_limit,
        )
        if not found:
            return 304, None
        if endpoint == "conduitv4":
            return 200, encode_v4_records(_v4(v) for v in found)
        devices: dict[str, dict[str, object]] = {}
        return 200, encode_v6_records(_v6(v, devices, self.sim) for v in found)


def _int_param(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise _HttpError(400, f"{name} must be an integer, got {raw!r}")
    return int(raw)


def _seconds(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _HttpError(400, f"{name} must be epoch seconds, got {raw!r}") from None
    if not 0 <= value < 1e11:
        raise _HttpError(400, f"{name} {raw!r} is not epoch seconds (milliseconds given?)")
    return value


def _v4(v: StoredValue) -> V4Record:
    return V4Record(v.channel, v.network_id, v.value, str(int(v.timestamp)))


_V6_DEFAULTS: dict[str, object] = {
    "val_type": "Number",
    "val_description": "Simulated value",
    "val_cal": 0.0,
    "val_offset": 0.0,
    "dev_site": "Simulator",
    "dev_type": "device",
    "dev_label": "Active",
    "dev_powersource": "Battery",
    "dev_network": "Simulated",
    "dev_category": "Device",
    "dev_supplier": "Junction",
    "dev_model": None,
    "dev_manufacturer": "Junction",
    "loc_lat": None,
    "loc_lng": None,
}


def _v6(v: StoredValue, devices: dict[str, dict[str, object]], sim: AlphaXSimulator) -> V6Record:
    meta = devices.get(v.network_id)
    if meta is None:
        meta = {**_V6_DEFAULTS, "dev_tag": v.network_id, **sim.store.device(v.network_id)}
        devices[v.network_id] = meta
    fields = {k: meta[k] for k in _V6_FIELDS if k in meta}
    return V6Record(
        val_date=int(v.timestamp),
        dev_netid=v.network_id,
        dev_chid=v.channel,
        val_raw=v.value,
        val_calibrated=v.value,
        **cast(dict[str, Any], fields),
    )


_V6_FIELDS = frozenset(V6Record.__struct_fields__) - {
    "val_date",
    "dev_netid",
    "dev_chid",
    "val_raw",
    "val_calibrated",
}


async def serve_http(
    sim: AlphaXSimulator,
    host: str,
    port: int,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulator's endpoints until ``shutdown`` is set; reports the bound port via
    ``task_status`` (read from the bound socket, so port 0 works).

    After ``shutdown`` idle connections close at once and a request in flight has 1 s to finish
    (as hypercorn's ``graceful_timeout`` was set).
    """
    listener = await listen_tcp(host, port)
    async with listener:
        bound = int(listener.socket.getsockname()[1])
        log.info("AlphaX simulator HTTP on http://%s:%d", host, bound)
        task_status.started(bound)
        await serve(_Handler(sim), listener, shutdown, grace_s=1.0)
