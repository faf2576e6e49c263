"""The durable outbox: persist-route throughput, backfill after an outage, added latency.

    .venv/bin/python bench/outbox.py [--flood-s 5] [--batch 256] [--backfill 100000]
                                     [--rate 1000] [--rate-s 5] [--repeat 3]

Everything runs in this process, as the bridge does: a real :class:`~broker._runtime.Runtime`
per phase (fresh state directory, so a fresh outbox file), with one route ``r`` from a bench
source (``outbox_source``: ``channel_write`` envelopes) to a bench sink (``outbox_sink``: its
``deliver()`` counts the batch and returns, i.e. acknowledges at once). The route is either
``overflow = "persist"`` (commit to the outbox, window of ``queue_size`` = 1000 in memory,
rows deleted when ``deliver()`` returns) or ``overflow = "block"`` (memory only, no loss).
Source, router, sink and SQLite share the machine's two cores and the GIL.

Per run:

- flood (``persist_per_s``, ``memory_per_s``): the source publishes ``--batch`` envelopes at a
  time as fast as the router's back-pressure lets it, for ``--flood-s`` seconds; the figure is
  envelopes acknowledged by the sink per second in the steady part (1 s in to the end). On the
  persist route the source may outrun the sink: the surplus spills to disk and is loaded back,
  so this covers commit, spill, reload and delete. ``offered/s`` is what the source published.
- backfill (``backfill_per_s``): the sink is gated (``deliver()`` does not return: a peer that
  is down); the source publishes ``--backfill`` envelopes, all committed to the outbox
  (``commit_per_s``: that many / the time from the first publish until the outbox holds them
  all -- the write path alone). Then the gate opens; ``backfill_per_s`` is that many / the
  time from opening the gate until the sink has acknowledged the last one (reload from disk,
  deliver, delete).
- latency (``p50_ms_*``, ``p99_ms_*``): the source offers ``--rate`` envelopes per second, one
  per publish (``--rate-batch``), for ``--rate-s`` seconds, first through a memory route, then
  through a persist route (two runtimes, one after the other); each envelope's age from its
  creation (``ts``, set just before it is published) to the sink's ``deliver()`` being called
  with it. The first 0.5 s of each is warm-up and not counted. The persist route's figure
  includes the commit before the envelope enters the window.

Sampled every 10 ms in every phase: the outbox's rows and payload bytes (``Outbox.rows`` /
``.bytes``), the size of its file plus WAL on disk, and this process's resident set
(``peak_rss_mb`` is ``getrusage``'s peak over the whole run). After each phase the route's
ledger must balance and the sink must have acknowledged everything the source published
(``lost`` counts shortfalls; 0 expected).

Last line: a JSON object with ``persist_per_s``, ``memory_per_s``, ``persist_vs_memory``,
``backfill_per_s``, ``commit_per_s``, ``p50_ms_persist``, ``p99_ms_persist``,
``p50_ms_memory``, ``p99_ms_memory``, ``p99_added_ms``, ``peak_outbox_rows``,
``peak_outbox_bytes``, ``peak_outbox_file_bytes``, ``peak_rss_mb`` (medians of ``--repeat``
runs; peaks over all runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _outbox_plugin as plug
from broker import _logs as logs
from broker._runtime import Runtime, load

PLUGIN = "bench._outbox_plugin"
WARMUP_S = 0.5


class Monitor:
    """Samples outbox rows/bytes, the outbox file's size and the RSS until stopped."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.rows = 0
        self.bytes = 0
        self.file_bytes = 0
        self.rss = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        """Take one sample now (the bench calls it too, at a phase's known peak)."""
        with self._lock:
            box = self.rt.outbox
            if box is not None:
                self.rows = max(self.rows, box.rows)
                self.bytes = max(self.bytes, box.bytes)
                size = 0
                for suffix in ("", "-wal"):
                    with contextlib.suppress(OSError):
                        size += os.path.getsize(f"{box.path}{suffix}")
                self.file_bytes = max(self.file_bytes, size)
            self.rss = max(self.rss, _rss_bytes())

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(0.01):
                return


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def config_text(state: Path, policy: str, source: dict[str, Any], sink: dict[str, Any]) -> str:
    def fields(d: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items())

    return f"""
[junction]
state_dir = "{state}"
log_level = "warning"
[adapters.src]
type = "outbox_source"
{fields(source)}
[adapters.sink]
type = "outbox_sink"
{fields(sink)}
[[routes]]
name = "r"
from = "src"
to = "sink"
overflow = "{policy}"
"""


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/outbox.py: timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


class Phase:
    """One runtime with a fresh state directory; checks the ledger when it ends."""

    counter = 0

    def __init__(
        self, tmp: Path, policy: str, source: dict[str, Any], sink: dict[str, Any]
    ) -> None:
        Phase.counter += 1
        state = tmp / f"state-{Phase.counter}"
        path = tmp / f"phase-{Phase.counter}.toml"
        path.write_text(config_text(state, policy, source, sink))
        plug.reset()
        self.rt = Runtime(load(str(path), extra_plugins=(PLUGIN,)))
        self.monitor = Monitor(self.rt)
        self.lost = 0

    def __enter__(self) -> Phase:
        self.rt.start()
        self.monitor.__enter__()
        return self

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until the source finished and the sink acknowledged all it published."""
        wait_for(
            lambda: plug.finished("src") and plug.delivered("sink") >= plug.emitted("src"),
            timeout,
            "the sink to acknowledge everything the source published",
        )

    def __exit__(self, *exc: object) -> None:
        self.monitor.__exit__()
        report = self.rt.stop(grace_s=5)
        ledger = report.snapshot["routes"]["r"]["ledger"]
        shortfall = plug.emitted("src") - plug.delivered("sink")
        self.lost = max(0, shortfall) + (0 if ledger["balanced"] else 1)
        if shortfall or not ledger["balanced"]:
            print(f"warning: ledger {ledger}, emitted-acknowledged {shortfall}", file=sys.stderr)


def flood(tmp: Path, policy: str, seconds: float, batch: int) -> dict[str, Any]:
    source = {"batch": batch, "duration_s": seconds}
    with Phase(tmp, policy, source, {}) as ph:
        time.sleep(1.0)
        d0, e0, t0 = plug.delivered("sink"), plug.emitted("src"), time.perf_counter()
        time.sleep(seconds - 1.0)
        d1, e1, t1 = plug.delivered("sink"), plug.emitted("src"), time.perf_counter()
        ph.settle()
    return {
        "rate": (d1 - d0) / (t1 - t0),
        "offered": (e1 - e0) / (t1 - t0),
        "envelopes": plug.emitted("src"),
        "lost": ph.lost,
        "rows": ph.monitor.rows,
        "bytes": ph.monitor.bytes,
        "file_bytes": ph.monitor.file_bytes,
        "rss": ph.monitor.rss,
    }


def backfill(tmp: Path, n: int, batch: int) -> dict[str, Any]:
    source = {"batch": batch, "count": n}
    with Phase(tmp, "persist", source, {"gated": True}) as ph:
        box = ph.rt.outbox
        assert box is not None
        wait_for(lambda: plug.emitted("src") > 0, 30, "the source to start")
        t0 = time.perf_counter()
        wait_for(lambda: box.rows >= n, 300, f"{n} rows in the outbox")
        t1 = time.perf_counter()
        ph.monitor.sample()
        plug.open_gate("sink")
        wait_for(lambda: plug.delivered("sink") >= n, 300, f"{n} envelopes acknowledged")
        t2 = time.perf_counter()
        wait_for(lambda: box.rows == 0, 60, "the outbox to empty")
        ph.settle()
    return {
        "commit": n / (t1 - t0),
        "backfill": n / (t2 - t1),
        "lost": ph.lost,
        "rows": ph.monitor.rows,
        "bytes": ph.monitor.bytes,
        "file_bytes": ph.monitor.file_bytes,
        "rss": ph.monitor.rss,
    }


def latency(tmp: Path, policy: str, rate: float, seconds: float, batch: int) -> dict[str, Any]:
    source = {"batch": batch, "rate": rate, "count": int(rate * seconds)}
    with Phase(tmp, policy, source, {"timed": True}) as ph:
        ph.settle(seconds + 60)
    lat = sorted(plug.latencies("sink")[int(rate * WARMUP_S) :])
    return {
        "p50": 1000 * lat[len(lat) // 2],
        "p99": 1000 * lat[max(0, int(len(lat) * 0.99) - 1)],
        "max": 1000 * lat[-1],
        "count": len(lat),
        "lost": ph.lost,
        "rows": ph.monitor.rows,
        "bytes": ph.monitor.bytes,
        "file_bytes": ph.monitor.file_bytes,
        "rss": ph.monitor.rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flood-s", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=256, help="envelopes per publish (flood)")
    ap.add_argument("--backfill", type=int, default=100_000, help="envelopes held by the outage")
    ap.add_argument("--rate", type=float, default=1000.0, help="envelopes/s (latency)")
    ap.add_argument("--rate-s", type=float, default=5.0)
    ap.add_argument("--rate-batch", type=int, default=1, help="envelopes per publish (latency)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logs.setup("warning")
    sys.setswitchinterval(0.001)
    runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for _ in range(args.repeat):
            runs.append(
                {
                    "flood memory": flood(tmp, "block", args.flood_s, args.batch),
                    "flood persist": flood(tmp, "persist", args.flood_s, args.batch),
                    "backfill": backfill(tmp, args.backfill, args.batch),
                    "latency memory": latency(
                        tmp, "block", args.rate, args.rate_s, args.rate_batch
                    ),
                    "latency persist": latency(
                        tmp, "persist", args.rate, args.rate_s, args.rate_batch
                    ),
                }
            )
    print(
        f"{'phase':<16} {'run':>3} {'acked/s':>9} {'offered/s':>9} {'commit/s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'rows':>7} {'MB':>6} {'file MB':>7} "
        f"{'rss MB':>6} {'lost':>4}"
    )
    dash = "-"
    for phase in runs[0]:
        for i, run in enumerate(runs, 1):
            r = run[phase]
            acked = r.get("rate", r.get("backfill"))
            cols = [
                f"{acked:>9,.0f}" if acked is not None else f"{dash:>9}",
                f"{r['offered']:>9,.0f}" if "offered" in r else f"{dash:>9}",
                f"{r['commit']:>9,.0f}" if "commit" in r else f"{dash:>9}",
            ]
            cols += [f"{r[k]:>7.2f}" if k in r else f"{dash:>7}" for k in ("p50", "p99", "max")]
            print(
                f"{phase:<16} {i:>3} {' '.join(cols)} {r['rows']:>7} {r['bytes'] / 1e6:>6.1f} "
                f"{r['file_bytes'] / 1e6:>7.1f} {r['rss'] / 1e6:>6.0f} {r['lost']:>4}"
            )

    def med(phase: str, key: str) -> float:
        return float(statistics.median(run[phase][key] for run in runs))

    def peak(key: str) -> int:
        return int(max(r[key] for run in runs for r in run.values()))

    persist, memory = med("flood persist", "rate"), med("flood memory", "rate")
    p99_persist, p99_memory = med("latency persist", "p99"), med("latency memory", "p99")
    out = {
        "persist_per_s": round(persist),
        "memory_per_s": round(memory),
        "persist_vs_memory": round(persist / memory, 3),
        "backfill_per_s": round(med("backfill", "backfill")),
        "commit_per_s": round(med("backfill", "commit")),
        "p50_ms_persist": round(med("latency persist", "p50"), 2),
        "p99_ms_persist": round(p99_persist, 2),
        "p50_ms_memory": round(med("latency memory", "p50"), 2),
        "p99_ms_memory": round(p99_memory, 2),
        "p99_added_ms": round(p99_persist - p99_memory, 2),
        "peak_outbox_rows": peak("rows"),
        "peak_outbox_bytes": peak("bytes"),
        "peak_outbox_file_bytes": peak("file_bytes"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "lost": sum(r["lost"] for run in runs for r in run.values()),
        "batch": args.batch,
        "backfill_envelopes": args.backfill,
        "latency_rate_per_s": args.rate,
        "latency_batch": args.rate_batch,
        "repeat": args.repeat,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
