"""The operations endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` over HTTP.

Served by the stdlib :class:`http.server.ThreadingHTTPServer` on a daemon thread, so it
needs no event loop of its own and shares nothing with the adapters' trio loops. Every
request that needs numbers takes one fresh snapshot (``Runtime.snapshot``) and answers
from it alone, so a scrape is self-consistent. A snapshot that raises is answered with
500 and logged; the server keeps serving.

``/metrics`` is built by a :class:`SnapshotCollector` on a private
:class:`~prometheus_client.CollectorRegistry` (never the global one: several runtimes
may live in one process, as in the tests). ``/readyz`` is 200 only while every required
adapter is connected and no route's oldest pending envelope is older than
``[junction.http] ready_max_pending_age_s``.

The client half (:func:`base_url`, :func:`fetch_status`) serves ``junction status``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from broker._errors import ConfigError, ConfigProblem, JunctionError
from broker._logs import redact
from broker._messages import describe

log = logging.getLogger("broker.ops_http")

#: Adapter states that count as connected: "running" (a pure in-process adapter),
#: "finished" (a one-shot source that did its job), "ready" (a request/response peer
#: with nothing to send yet), "sending" (a best-effort datagram transport).
CONNECTED_STATES = frozenset({"connected", "running", "finished", "ready", "sending"})
LISTEN_KEY = "[junction.http] listen"
ENDPOINTS = ("/metrics", "/healthz", "/readyz", "/status")

Snapshot = Callable[[], dict[str, Any]]


class EndpointError(JunctionError):
    """``junction status`` could not get a snapshot from a running bridge."""


# --------------------------------------------------------------------------- server


class OpsServer:
    """The HTTP operations endpoint of one runtime.

    ``listen`` is ``host:port`` (``[::1]:9464`` for IPv6; port 0 picks a free port, read
    it from :attr:`port` once started). ``origin`` names the config file in errors.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        listen: str,
        ready_max_pending_age_s: float,
        *,
        origin: str = "",
    ) -> None:
        self.snapshot = snapshot
        self.listen = listen
        self.ready_max_pending_age_s = ready_max_pending_age_s
        self.origin = origin
        self.host, self._port = parse_listen(listen, origin)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve on a daemon thread; raises ConfigError naming the listen value."""
        if self._server is not None:
            raise RuntimeError("the operations endpoint is already started")
        server_cls = _Server6 if ":" in self.host else _Server
        try:
            server = server_cls((self.host, self._port), _Handler)
        except OSError as err:
            reason = err.strerror or str(err)
            raise listen_error(
                self.listen,
                f"cannot listen on it: {reason}",
                self.origin,
                "is the port taken, or the host not an address of this machine? (port 0: any)",
            ) from err
        server.ops = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="ops-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; a no-op when not started (or stopped)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0)."""
        if self._server is None:
            raise RuntimeError("the operations endpoint is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the running endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # Answers, one per endpoint: (status, content type, body). Called per request thread.

    def answer(self, path: str, accept: str) -> tuple[int, str, bytes]:
        """The response to ``GET path``; a snapshot that raises propagates to the handler."""
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/metrics":
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(self.registry)
        if path == "/readyz":
            ready, reasons = readiness(self.snapshot(), self.ready_max_pending_age_s)
            body = _json({"ready": ready, "reasons": reasons})
            return (200 if ready else 503), "application/json", body
        if path == "/status":
            return 200, "application/json", _json(self.snapshot())
        text = f"no such endpoint {path!r}; try {' '.join(ENDPOINTS)}\n"
        return 404, "text/plain; charset=utf-8", text.encode()


class _Server(ThreadingHTTPServer):
    """The stdlib threading server, holding the OpsServer its handlers answer for."""

    daemon_threads = True
    ops: OpsServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "junction-ops"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            status, content_type, body = self.server.ops.answer(path, self.headers["Accept"] or "")
        except Exception as err:  # a failing snapshot must not stop the endpoint
            log.exception("operations endpoint: GET %s failed", path)
            status, content_type = 500, "text/plain; charset=utf-8"
            body = redact(f"snapshot failed: {describe(err)}\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("operations endpoint: client went away during GET %s", path)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("operations endpoint: %s %s", self.address_string(), format % args)


def _json(value: Any) -> bytes:
    """JSON for a response; secrets in adapter details are redacted like in the logs."""
    return redact(json.dumps(value, default=str, indent=1)).encode()


# --------------------------------------------------------------------------- listen


def parse_listen(listen: str, origin: str = "") -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> (host, port); raises ConfigError naming the key."""
    text = listen.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise listen_error(
            listen, "not host:port", origin, 'e.g. "127.0.0.1:9464" (port 0: any free port)'
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise listen_error(listen, "an IPv6 host needs brackets", origin, 'e.g. "[::1]:9464"')
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise listen_error(listen, "the port must be a number 0..65535", origin)
    return host, port


def listen_error(listen: str, message: str, origin: str = "", hint: str = "") -> ConfigError:
    """A ConfigError about ``[junction.http] listen`` (in ``origin`` when known)."""
    file, path = (origin, LISTEN_KEY) if origin else (LISTEN_KEY, "")
    return ConfigError([ConfigProblem(file, path, message, listen, True, hint)])


# --------------------------------------------------------------------------- readiness


def readiness(snapshot: Mapping[str, Any], max_pending_age_s: float) -> tuple[bool, list[str]]:
    """Whether the bridge is ready, and why not: required adapters down, old backlog."""
    reasons: list[str] = []
    if snapshot.get("router_error"):  # no counters: delivery cannot be vouched for
        reasons.append(str(snapshot["router_error"]))
    for name, a in (snapshot.get("adapters") or {}).items():
        if not a.get("required", False):
            continue
        state = str(a.get("state", "unknown"))
        if state not in CONNECTED_STATES:
            why = a.get("detail") or a.get("last_error") or ""
            reasons.append(f"adapter {name} is {state}" + (f": {why}" if why else ""))
    for name, r in (snapshot.get("routes") or {}).items():
        age = (r.get("outbox") or {}).get("oldest_age_s")
        if age is not None and age > max_pending_age_s:
            reasons.append(f"route {name}: oldest pending {age:.1f} s > {max_pending_age_s:g} s")
    return not reasons, reasons


# --------------------------------------------------------------------------- metrics


class SnapshotCollector(Collector):
    """Prometheus families built from one snapshot per scrape."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


def families(snap: Mapping[str, Any]) -> list[Metric]:
    """Every metric family of one snapshot; missing keys count as zero (or are left out)."""
    connected = GaugeMetricFamily(
        "junction_adapter_connected",
        "1 while the adapter is connected (state connected or running), else 0",
        labels=["adapter"],
    )
    reconnects = CounterMetricFamily(
        "junction_adapter_reconnects", "Reconnects to the adapter's peer", labels=["adapter"]
    )
    restarts = CounterMetricFamily(
        "junction_adapter_restarts",
        "Restarts of the adapter's instance after a crash",
        labels=["adapter"],
    )
    for name, a in (snap.get("adapters") or {}).items():
        connected.add_metric([name], 1.0 if a.get("state") in CONNECTED_STATES else 0.0)
        reconnects.add_metric([name], _num(a, "reconnects"))
        restarts.add_metric([name], _num(a, "restarts"))

    route = ["route"]
    received = CounterMetricFamily(
        "junction_route_received", "Envelopes the route took in", labels=route
    )
    delivered = CounterMetricFamily(
        "junction_route_delivered", "Envelopes the route's targets sent on", labels=route
    )
    dead = CounterMetricFamily(
        "junction_route_dead_lettered", "Envelopes of the route dead-lettered", labels=route
    )
    dropped = CounterMetricFamily(
        "junction_route_dropped",
        "Envelopes of the route lost, by reason (overflow, ...); filtered ones are apart",
        labels=["route", "reason"],
    )
    filtered = CounterMetricFamily(
        "junction_route_filtered",
        "Envelopes a transform of the route chose to drop (a decision, not a loss)",
        labels=route,
    )
    pending = GaugeMetricFamily(
        "junction_route_pending", "Envelopes of the route not yet delivered", labels=route
    )
    balanced = GaugeMetricFamily(
        "junction_route_ledger_balanced",
        "1 while received = delivered + dead-lettered + dropped + pending on the route",
        labels=route,
    )
    oldest = GaugeMetricFamily(
        "junction_route_oldest_pending_age_seconds",
        "Age of the route's oldest envelope in the outbox (0: none pending)",
        labels=route,
    )
    latency = HistogramMetricFamily(
        "junction_route_delivery_latency_seconds",
        "Time from an envelope's arrival to its delivery, per route",
        labels=route,
    )
    for name, r in (snap.get("routes") or {}).items():
        ledger = r.get("ledger") or {}
        # Until a runtime reports a ledger, the route's own counters stand in for it.
        received.add_metric([name], _num(ledger, "received", _num(r, "matched")))
        delivered.add_metric([name], _num(ledger, "delivered", _num(r, "delivered")))
        dead.add_metric([name], _num(ledger, "dead_lettered"))
        for reason, n in sorted((r.get("dropped") or {}).items()):
            if reason != "filtered":
                dropped.add_metric([name, str(reason)], float(n))
        filtered.add_metric([name], _num(r, "filtered"))
        pending.add_metric([name], _num(ledger, "pending"))
        if "balanced" in ledger:
            balanced.add_metric([name], 1.0 if ledger["balanced"] else 0.0)
        oldest.add_metric([name], _num(r.get("outbox") or {}, "oldest_age_s"))
        buckets = _buckets(r.get("latency") or {})
        if buckets:
            latency.add_metric([name], buckets, _num(r["latency"], "sum"))

    outbox = snap.get("outbox") or {}
    rows = GaugeMetricFamily("junction_outbox_rows", "Envelopes held in the durable outbox")
    rows.add_metric([], _num(outbox, "rows"))
    size = GaugeMetricFamily("junction_outbox_bytes", "Bytes held in the durable outbox")
    size.add_metric([], _num(outbox, "bytes"))
    age = GaugeMetricFamily(
        "junction_outbox_oldest_age_seconds",
        "Age of the oldest envelope in the outbox (0: empty)",
    )
    age.add_metric([], _num(outbox, "oldest_age_s"))
    return [
        *(connected, reconnects, restarts),
        *(received, delivered, dead, dropped, filtered, pending, balanced, oldest, latency),
        *(rows, size, age),
    ]


def _num(d: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    """``d[key]`` as a float; missing, None or not a number: ``default``."""
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _buckets(h: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs ending in +Inf from per-bucket counts; [] if unusable."""
    bounds, counts = h.get("le") or [], h.get("counts") or []
    if not bounds or len(counts) != len(bounds) + 1:
        return []
    out: list[tuple[str, float]] = []
    total = 0.0
    for bound, n in zip([*bounds, float("inf")], counts, strict=True):
        total += float(n)
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    return out


# --------------------------------------------------------------------------- client


def base_url(listen: str, origin: str = "") -> str:
    """The URL ``junction status`` asks for a ``listen`` value (any-address -> loopback)."""
    host, port = parse_listen(listen, origin)
    if port == 0:
        raise listen_error(
            listen,
            "port 0 means any free port, so the bound port cannot be known from the config",
            origin,
            "pass --url http://HOST:PORT (the bridge logs it at start)",
        )
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``url``/status and decode it; raises EndpointError saying what went wrong."""
    base = url.rstrip("/")
    target = base if base.endswith("/status") else f"{base}/status"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace").strip()
        raise EndpointError(f"the bridge at {url} answered {err.code}: {text}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise EndpointError(f"no bridge answering at {url}: {reason}") from err
    try:
        snap = json.loads(raw)
    except ValueError as err:
        raise EndpointError(f"{target} did not answer with JSON: {err}") from err
    if not isinstance(snap, dict):
        raise EndpointError(f"{target} answered {type(snap).__name__}, not a snapshot object")
    return snap
