"""Allxon: a flood of metric updates -> router -> Allxon adapter -> agent simulator.

    .venv/bin/python bench/allxon.py [--updates 10000] [--names 100] [--repeat 3]

A source in the bridge emits ``--updates`` metric envelopes over ``--names`` names as fast as
the router takes them (value = sequence number, so the last value of each name is known).
They are routed to the Allxon adapter, which signs every frame (Argon2id) and sends it over
TLS to the agent simulator running in a separate process. The adapter runs with its
defaults: 500 calls per rolling hour (the agent's own window of 3600 s, not shortened),
a bucket of 30 data calls, a flush every 2 s. One deviation, said here and in the output:
``undeclared = "send"``, because the agent's 2 KB message limit cannot announce 100 metric
cards (each takes ~40 bytes), so the metrics are sent without cards.

A run ends when the adapter's buffer is empty and the simulator has every frame the adapter
sent. Reported (medians of ``--repeat`` runs):

- ``calls``: calls the simulator accepted (announce + data; agent -> plugin frames excluded);
- ``budget``: the calls allowed per rolling hour;
- ``largest_frame_bytes``: the largest frame the simulator received (limit 2048);
- ``latest_share``: share of the names whose latest value reached the simulator;
- ``sign_cpu_s``: CPU seconds of the signing worker thread while it signed frames, summed
  (the hash runs on that thread, see ``adapters/allxon/signing.py``).
  ``sign_cpu_isolated_s`` is the same number of signatures timed alone in this process
  beforehand, for comparison.

Also: ``dropped`` (samples coalesced away, by the adapter's count) and ``seconds`` (from the
first update to the last frame received). Last line: a JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from adapters.allxon.actor import AllxonAdapter
from adapters.allxon.config import AllxonConfig
from broker._adapter import Adapter
from broker._config import AdapterConfig
from broker._envelope import Envelope, Metric
from broker.hookspecs import AdapterType, hookimpl

MODULE = "bench"
INSTANCES: dict[str, AllxonAdapter] = {}
PROGRESS: dict[str, float] = {}


# ----------------------------------------------------------------------------- bench plugin


class BenchAllxon(AllxonAdapter):
    """The real adapter, kept where the bench can read its counters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        INSTANCES[self.name] = self


class FloodConfig(AdapterConfig, kw_only=True):
    updates: int = 10_000
    names: int = 100
    batch: int = 500


class Flood(Adapter):
    """Emits ``updates`` metrics over ``names`` names, value = sequence number."""

    accepts_envelopes = False
    config: FloodConfig

    async def run(self) -> None:
        cfg = self.config
        PROGRESS["started"] = time.perf_counter()
        for start in range(0, cfg.updates, cfg.batch):
            batch = [
                Envelope(
                    source=self.name,
                    body=Metric(module=MODULE, name=f"m{i % cfg.names}", value=float(i)),
                )
                for i in range(start, min(cfg.updates, start + cfg.batch))
            ]
            await self.publish(batch)
        PROGRESS["emitted"] = time.perf_counter()
        self.status.set("finished", f"{cfg.updates} updates")


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType("bench_allxon", AllxonConfig, BenchAllxon, "allxon, counters kept"),
        AdapterType("flood", FloodConfig, Flood, "metric flood"),
    ]


# ----------------------------------------------------------------------------- simulator


def simulator_process(conn: Connection, budget: int) -> None:
    """Serve the simulator; answer ("report",) with its figures, stop on ("stop",)."""
    import logging

    from adapters.allxon.sim import open_allxon_simulator

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        async with open_allxon_simulator(budget=budget) as sim:
            cred = sim.credential
            conn.send((sim.url, sim.ca_pem, cred.app_guid, cred.access_key))
            while True:
                cmd = await trio.to_thread.run_sync(conn.recv)
                if cmd[0] == "stop":
                    return
                record = sim.modules.get(MODULE)
                latest = {m.name: m.value for m in record.metrics} if record else {}
                conn.send(
                    {
                        "calls": sim.store.calls,
                        "frames": sim.store.frames_received,
                        "largest": sim.store.largest_frame,
                        "metric_calls": sim.store.calls_by_method["v2/notifyPluginMetric"],
                        "samples": len(record.metrics) if record else 0,
                        "rejected": {r.value: n for r, n in sim.store.rejected.items()},
                        "latest": latest,
                        "received_at": time.perf_counter(),
                    }
                )

    trio.run(main)


# ----------------------------------------------------------------------------- a run


def config_text(url: str, cred: Path, ca: Path, state: Path, args: argparse.Namespace) -> str:
    return f"""
[junction]
state_dir = "{state}"
[adapters.allxon]
type = "bench_allxon"
url = "{url}"
credentials = "{cred}"
ca_file = "{ca}"
app_name = "junction-bench"
undeclared = "send"
[[adapters.allxon.modules]]
moduleName = "{MODULE}"
[adapters.flood]
type = "flood"
updates = {args.updates}
names = {args.names}
[[routes]]
name = "metrics"
from = "flood"
kind = "metric"
to = "allxon"
queue_size = {args.updates}
"""


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    from adapters.allxon.codec import PluginCredential, encode_credential
    from bench import allxon as plugin  # the module the runtime registers (not __main__)
    from broker._runtime import Runtime, load

    plugin.INSTANCES.clear()
    plugin.PROGRESS.clear()
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=simulator_process, args=(child, 500), daemon=True)
    proc.start()
    url, ca_pem, guid, key = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        cred = Path(tmp) / "plugin_credential.json"
        cred.write_bytes(encode_credential(PluginCredential(app_guid=guid, access_key=key)))
        ca = Path(tmp) / "ca.pem"
        ca.write_bytes(ca_pem)
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(config_text(url, cred, ca, Path(tmp) / "state", args))
        rt = Runtime(load(str(cfg), extra_plugins=("bench.allxon",)))
        rt.start()
        try:
            report = wait_done(rt, parent, plugin, args)
        finally:
            parent.send(("stop",))
            rt.stop(grace_s=2)
            proc.join(10)
    return report


def wait_done(rt: Any, parent: Connection, plugin: Any, args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        adapter = plugin.INSTANCES.get("allxon")
        routes = rt.snapshot()["routes"]["metrics"]
        if adapter is None or routes["delivered"] + routes["dropped"] < args.updates:
            continue
        if adapter.unsent_items():
            continue
        parent.send(("report",))
        sim = parent.recv()
        if sim["frames"] < adapter.stats.frames_sent:
            continue
        last = {
            f"m{k}": max(i for i in range(args.updates) if i % args.names == k)
            for k in range(min(args.names, args.updates))
        }
        reached = sum(1 for name, v in last.items() if sim["latest"].get(name) == str(v))
        return {
            "calls": sim["calls"],
            "metric_calls": sim["metric_calls"],
            "adapter_frames": adapter.stats.frames_sent,
            "largest_frame_bytes": sim["largest"],
            "latest_share": reached / len(last),
            "sign_cpu_s": adapter.crypto.sign_cpu_s,
            "sign_calls": adapter.crypto.sign_calls,
            "samples_received": sim["samples"],
            "dropped": sum(adapter.outbox.dropped.values()),
            "route_dropped": routes["dropped"],
            "rejected": sim["rejected"],
            "seconds": sim["received_at"] - plugin.PROGRESS["started"],
        }
    raise SystemExit(f"the run did not finish within {args.timeout} s")


def isolated_sign_cpu(calls: int) -> float:
    """CPU seconds of ``calls`` signatures of a ~2 KB frame, one at a time, nothing else."""
    from adapters.allxon.signing import sign_frame

    text = json.dumps({"jsonrpc": "2.0", "method": "v2/notifyPluginMetric", "x": "v" * 1900})
    sign_frame(text, "k" * 32)
    began = time.process_time()
    for _ in range(calls):
        sign_frame(text, "k" * 32)
    return time.process_time() - began


def main() -> None:
    from broker import _logs as logs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args()
    logs.setup("error")
    runs = [one_run(args) for _ in range(args.repeat)]
    print(
        f"{'run':<4} {'calls':>6} {'metric':>7} {'largest B':>10} {'latest':>7} "
        f"{'sign CPU s':>11} {'signs':>6} {'dropped':>8} {'at sim':>7} {'seconds':>8}"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"{i:<4} {r['calls']:>6} {r['metric_calls']:>7} {r['largest_frame_bytes']:>10} "
            f"{r['latest_share']:>7.2f} {r['sign_cpu_s']:>11.3f} {r['sign_calls']:>6} "
            f"{r['dropped']:>8} {r['samples_received']:>7} {r['seconds']:>8.2f}"
        )
    rejected = [r["rejected"] for r in runs if r["rejected"]]
    print(
        f"simulator rejections: {rejected or 'none'}; route drops: "
        f"{[r['route_dropped'] for r in runs]}"
    )
    print("note: undeclared = 'send' (100 metric cards cannot fit the 2 KB announce)")
    med = {
        k: statistics.median(r[k] for r in runs)
        for k in (
            "calls",
            "largest_frame_bytes",
            "latest_share",
            "sign_cpu_s",
            "dropped",
            "seconds",
            "sign_calls",
        )
    }
    isolated = isolated_sign_cpu(int(med["sign_calls"]))
    print(
        json.dumps(
            {
                "calls": int(med["calls"]),
                "budget": 500,
                "largest_frame_bytes": int(med["largest_frame_bytes"]),
                "latest_share": round(med["latest_share"], 3),
                "sign_cpu_s": round(med["sign_cpu_s"], 3),
                "sign_cpu_isolated_s": round(isolated, 3),
                "dropped": int(med["dropped"]),
                "seconds": round(med["seconds"], 2),
                "updates": args.updates,
                "names": args.names,
                "repeat": args.repeat,
            }
        )
    )


if __name__ == "__main__":
    main()
