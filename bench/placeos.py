"""PlaceOS notify -> router -> file sink: sustained rate, and added latency at a fixed rate.

    .venv/bin/python bench/placeos.py [--statuses 100] [--flood-s 5] [--rate 1000] [--rate-s 5]

The PlaceOS simulator runs in a separate process.  It changes bound status variables
(each value ``{"t": <epoch s when set>, "n": <seq>}``), the bridge in this process
binds them over a real loopback WebSocket, routes every notify to a JSON Lines file
sink, and the sink records when each reached the file.

- flood: the simulator offers ``--flood-rate`` changes per second for ``--flood-s``
  seconds; ``msgs_per_s`` is what the file sink wrote per second in the steady part
  of that window (from 1 s in to the end).  The simulator shares the 2 cores, so this
  is a floor for the bridge alone; every change offered must reach the file;
- fixed rate: ``--rate`` changes per second for ``--rate-s`` seconds; ``p50_ms`` /
  ``p99_ms`` are from the simulator setting a value to the sink having written it
  (simulator send, WebSocket, decode, router, queue, file write and flush).

Last line: a JSON object with ``msgs_per_s``, ``p50_ms``, ``p99_ms`` (medians of
``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench import _timing
from broker import _logs as logs
from broker._runtime import Runtime, load

KEY = "bench.key"


def simulator_process(conn: Connection, statuses: int) -> None:
    """Serve the simulator; obey ("rate", hz, seconds) and ("stop",)."""
    from adapters.placeos.sim import open_placeos_simulator

    model = {
        "systems": [
            {
                "id": "sys-B",
                "modules": [
                    {
                        "id": "mod-S",
                        "name": "Sensors",
                        "index": 1,
                        "status": {f"s{i}": {"t": 0, "n": -1} for i in range(statuses)},
                    }
                ],
            }
        ]
    }

    async def main() -> None:
        async with open_placeos_simulator(
            model, api_key=KEY, drift=False, pong_interval=None
        ) as sim:
            conn.send(sim.url)
            n = 0
            while True:
                cmd = await trio.to_thread.run_sync(conn.recv)
                if cmd[0] == "stop":
                    return
                _, hz, seconds = cmd
                began = time.perf_counter()
                total = int(hz * seconds)
                sent = 0
                changed = 0
                start = trio.current_time()
                while sent < total:
                    # as many as the schedule says are due by now (paced, never a burst)
                    due = min(total, int((trio.current_time() - start) * hz) + 1)
                    while sent < due:
                        n += 1
                        sent += 1
                        changed += sim.set_status(
                            "sys-B", "Sensors", 1, f"s{n % statuses}", {"t": time.time(), "n": n}
                        )
                    await trio.sleep_until(start + sent / hz)
                conn.send((changed, time.perf_counter() - began))

    trio.run(main)


def config_text(url: str, statuses: int, out: Path, state: Path) -> str:
    bindings = ",\n".join(
        f'{{ sys = "sys-B", mod = "Sensors", name = "s{i}" }}' for i in range(statuses)
    )
    return f"""
[junction]
state_dir = "{state}"
queue_size = 100000
[adapters.placeos]
type = "placeos"
url = "{url}"
api_key = "{KEY}"
bindings = [{bindings}]
[adapters.sink]
type = "timed_file"
path = "{out}"
append = false
[[routes]]
name = "notify-to-file"
from = "placeos"
kind = "status_change"
to = "sink"
overflow = "block"
"""


def wait_written(target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _timing.WRITTEN[0] < target and time.monotonic() < deadline:
        time.sleep(0.01)


def one_run(args: argparse.Namespace) -> dict[str, float]:
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(
        target=simulator_process, args=(child, args.statuses), daemon=True
    )
    proc.start()
    url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(
            config_text(url, args.statuses, Path(tmp) / "out.jsonl", Path(tmp) / "state")
        )
        rt = Runtime(load(str(cfg), extra_plugins=("bench._timing",)))
        _timing.reset()
        rt.start()
        try:
            wait_written(args.statuses, 30)  # the initial value of every binding
            _timing.reset()
            parent.send(("rate", args.flood_rate, args.flood_s))
            # steady state only: what the sink wrote between 1 s in and the end of the flood
            time.sleep(1.0)
            w0, t0 = _timing.WRITTEN[0], time.perf_counter()
            time.sleep(args.flood_s - 1.0)
            w1, t1 = _timing.WRITTEN[0], time.perf_counter()
            sent, _ = parent.recv()
            wait_written(sent, 120)
            flood_written = _timing.WRITTEN[0]
            flood_rate = (w1 - w0) / (t1 - t0)
            _timing.reset()
            parent.send(("rate", args.rate, args.rate_s))
            sent_rate, _ = parent.recv()
            wait_written(sent_rate, 60)
            lat = sorted(_timing.LATENCIES)
            written_rate = _timing.WRITTEN[0]
        finally:
            parent.send(("stop",))
            rt.stop(grace_s=5)
            proc.join(10)
    return {
        "msgs_per_s": flood_rate,
        "flood_sent": sent,
        "flood_written": flood_written,
        "rate_sent": sent_rate,
        "rate_written": written_rate,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--statuses", type=int, default=100)
    ap.add_argument("--flood-s", type=float, default=5.0)
    ap.add_argument(
        "--flood-rate",
        type=float,
        default=30000.0,
        help="what the simulator offers during the flood (changes per second)",
    )
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--rate-s", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logs.setup("warning")
    sys.setswitchinterval(0.001)
    runs = [one_run(args) for _ in range(args.repeat)]
    print(
        f"{'run':<5} {'flood sent':>11} {'written':>9} {'msgs/s':>9} {'rate sent':>10} "
        f"{'written':>8} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"{i:<5} {r['flood_sent']:>11} {r['flood_written']:>9} {r['msgs_per_s']:>9,.0f} "
            f"{r['rate_sent']:>10} {r['rate_written']:>8} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}"
        )
    med: dict[str, Any] = {
        k: statistics.median(r[k] for r in runs) for k in ("msgs_per_s", "p50_ms", "p99_ms")
    }
    print(
        json.dumps(
            {
                "msgs_per_s": round(med["msgs_per_s"]),
                "p50_ms": round(med["p50_ms"], 2),
                "p99_ms": round(med["p99_ms"], 2),
                "offered_rate": args.rate,
                "statuses": args.statuses,
                "repeat": args.repeat,
            }
        )
    )


if __name__ == "__main__":
    main()
