"""What the operations endpoint says: readiness (``/readyz``) and the Prometheus families
(``/metrics``), each computed from one snapshot (``Runtime.snapshot``) alone.

Pure functions of a snapshot dict, so they are tested without a server. The families are
collected by a :class:`SnapshotCollector` on a private
:class:`~prometheus_client.CollectorRegistry` (never the global one: several runtimes
may live in one process, as in the tests). ``/readyz`` is 200 only while every required
adapter is connected and no route's oldest pending envelope is older than
``[junction.http] ready_max_pending_age_s``.

The Allxon call budget comes from the adapter's status gauges (``AdapterStatus.gauges``:
``allxon_budget_remaining_ratio``, set while it is linked to its agent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker._ledger import VOCABULARY

#: Adapter states that count as connected: "running" (a pure in-process adapter),
#: "finished" (a one-shot source that did its job), "ready" (a request/response peer
#: with nothing to send yet), "sending" (a best-effort datagram transport).
CONNECTED_STATES = frozenset({"connected", "running", "finished", "ready", "sending"})

Snapshot = Callable[[], dict[str, Any]]


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
    budget = GaugeMetricFamily(
        "junction_allxon_budget_remaining_ratio",
        "Share of the Allxon agent's rolling call budget data may still use (0: data waits; "
        "the reserve for the announce and command acks is not counted); only while linked",
        labels=["adapter"],
    )
    for name, a in (snap.get("adapters") or {}).items():
        connected.add_metric([name], 1.0 if a.get("state") in CONNECTED_STATES else 0.0)
        reconnects.add_metric([name], _num(a, "reconnects"))
        restarts.add_metric([name], _num(a, "restarts"))
        left = budget_left(a)
        if left is not None:
            budget.add_metric([name], left)

    route = ["route"]
    words = VOCABULARY  # the ledger's words, one meaning each (broker._ledger)
    received = CounterMetricFamily("junction_route_received", words["received"], labels=route)
    delivered = CounterMetricFamily("junction_route_delivered", words["delivered"], labels=route)
    dead = CounterMetricFamily("junction_route_dead_lettered", words["dead_lettered"], labels=route)
    dropped = CounterMetricFamily(
        "junction_route_dropped", words["dropped"], labels=["route", "reason"]
    )
    filtered = CounterMetricFamily("junction_route_filtered", words["filtered"], labels=route)
    matched = CounterMetricFamily("junction_route_matched", words["matched"], labels=route)
    # why received differs from matched (broker._ledger)
    replies = CounterMetricFamily("junction_route_replies", words["replies"], labels=route)
    recovered = CounterMetricFamily("junction_route_recovered", words["recovered"], labels=route)
    replayed = CounterMetricFamily("junction_route_replayed", words["replayed"], labels=route)
    pending = GaugeMetricFamily("junction_route_pending", words["pending"], labels=route)
    balanced = GaugeMetricFamily(
        "junction_route_ledger_balanced", f"1 while {words['balanced']}", labels=route
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
        reasons = r.get("drop_reasons")
        for reason, n in sorted(reasons.items() if isinstance(reasons, Mapping) else ()):
            dropped.add_metric([name, str(reason)], float(n))
        filtered.add_metric([name], _num(ledger, "filtered", _num(r, "filtered")))
        matched.add_metric([name], _num(r, "matched"))
        for family, word in (
            (replies, "replies"),
            (recovered, "recovered"),
            (replayed, "replayed"),
        ):
            family.add_metric([name], _num(ledger, word, _num(r, word)))
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
        *(connected, reconnects, restarts, budget),
        *(received, delivered, dead, dropped, filtered, matched, replies, recovered, replayed),
        *(pending, balanced),
        *(oldest, latency),
        *(rows, size, age),
    ]


def budget_left(adapter: Mapping[str, Any]) -> float | None:
    """The share of its call budget an Allxon adapter has left (0..1), from its status
    gauges; None for any other adapter, or an Allxon one not linked to its agent."""
    value = (adapter.get("gauges") or {}).get("allxon_budget_remaining_ratio")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return min(1.0, max(0.0, float(value)))


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
