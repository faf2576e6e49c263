"""Router throughput with 1, 100 and 1000 routes, against the raw pykka ``tell`` rate.

    .venv/bin/python bench/core.py [--envelopes N] [--batch B] [--repeat K]

Each route table has exactly one route that matches (an equality predicate plus a
mapping with unit scaling); the others differ by their ``body.name`` equality, as a
site with a route per sensor would.  Envelopes are built before the clock starts;
the clock stops when a consumer thread has taken every output from the target
inlet, so the figure covers tell -> match -> map -> inlet -> consumer.

The raw ``tell`` rate is measured in the same run: one thread tells an actor that
only counts, N messages, until the actor has seen them all.

Prints a human table, then a JSON object as its last line with ``rate_1``,
``rate_100``, ``rate_1000``, ``raw_tell_rate`` and ``ratio_to_raw_tell``
(= rate_1000 / raw_tell_rate); medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker import _plugins as plugins_mod
from broker._config import AdapterConfig, Config, JunctionSettings, RouteSpec
from broker._envelope import Envelope, Metric
from broker._inlet import Inlet
from broker._loop import SharedLoop
from broker._messages import Backlog, Inbound, Snapshot
from broker._router import Router
from broker._routing import compile_table


class Counter(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if message == "count?":
            return self.count
        self.count += 1
        return None


def raw_tell_rate(n: int) -> float:
    actor = Counter.start()
    msg = object()
    began = time.perf_counter()
    for _ in range(n):
        actor.tell(msg)
    assert actor.ask("count?") == n
    elapsed = time.perf_counter() - began
    actor.stop()
    return n / elapsed


def table_with(routes: int) -> Any:
    specs = [
        RouteSpec(
            name="hot",
            sources="sensors",
            to="sink",
            kind="metric",
            match={"body.name": "hot"},
            overflow="block",
            queue_size=16384,
            map={
                "kind": "channel_write",
                "network_id": "4106",
                "channel": 1,
                "value": {"from": "body.value", "scale": 1.0, "offset": 273.15, "round": 2},
            },
        )
    ]
    specs += [
        RouteSpec(
            name=f"r{i}",
            sources="sensors",
            to="sink",
            kind="metric",
            match={"body.name": f"sensor-{i}"},
        )
        for i in range(routes - 1)
    ]
    cfg = Config(
        path="bench",
        junction=JunctionSettings(),
        routes=specs,
        adapters={"sensors": AdapterConfig(type="x"), "sink": AdapterConfig(type="x")},
    )
    return compile_table(cfg, plugins_mod.load().transforms)


def router_rate(routes: int, n: int, batch: int) -> float:
    table = table_with(routes)
    sink = Inlet("sink")
    backlog = Backlog()
    loop = SharedLoop()
    loop.start()
    router = Router.start(
        table,
        {"sink": sink, "sensors": Inlet("sensors")},
        JunctionSettings(),
        None,
        backlog,
        loop=loop,
    )
    envelopes = [
        Envelope(
            source="sensors",
            subject="room/hot",
            body=Metric(module="room", name="hot", value=20.0 + i % 10),
        )
        for i in range(n)
    ]
    batches = [envelopes[i : i + batch] for i in range(0, n, batch)]
    taken = 0
    done = threading.Event()

    def consume() -> None:
        nonlocal taken
        while taken < n:
            item = sink.take(4096)
            if item is None:
                time.sleep(0.0002)
                continue
            taken += len(item[1])
            sink.done(item[0], len(item[1]))
        done.set()

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    began = time.perf_counter()
    for b in batches:
        backlog.add(len(b))
        router.tell(Inbound("sensors", b))
    done.wait(120)
    elapsed = time.perf_counter() - began
    snap = router.ask(Snapshot())
    router.stop()
    loop.close()
    c = snap["routes"]["hot"]
    assert c["matched"] == n and c["queued"] == n and taken == n, (c, taken)
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envelopes", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256, help="envelopes per Inbound message")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.envelopes
    sys.setswitchinterval(0.001)
    results: dict[str, list[float]] = {
        "raw_tell_rate": [],
        "rate_1": [],
        "rate_100": [],
        "rate_1000": [],
        "rate_1_unbatched": [],
    }
    for _ in range(args.repeat):
        results["raw_tell_rate"].append(raw_tell_rate(n))
        for routes in (1, 100, 1000):
            results[f"rate_{routes}"].append(router_rate(routes, n, args.batch))
        results["rate_1_unbatched"].append(router_rate(1, n // 4, 1))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'measure':<20} {'median/s':>12}   runs")
    for k, v in results.items():
        print(f"{k:<20} {med[k]:>12,.0f}   {', '.join(f'{x:,.0f}' for x in v)}")
    out = {
        "rate_1": round(med["rate_1"]),
        "rate_100": round(med["rate_100"]),
        "rate_1000": round(med["rate_1000"]),
        "raw_tell_rate": round(med["raw_tell_rate"]),
        "ratio_to_raw_tell": round(med["rate_1000"] / med["raw_tell_rate"], 3),
        "rate_1000_vs_1": round(med["rate_1000"] / med["rate_1"], 3),
        "rate_1_unbatched": round(med["rate_1_unbatched"]),
        "batch": args.batch,
        "envelopes": n,
        "repeat": args.repeat,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
