"""AlphaX: channel writes per second from the router to the simulator, over HTTP and MQTT QoS 1.

    .venv/bin/python bench/alphax.py [--flood-s 5] [--rate 1000] [--rate-s 4] [--repeat 3]
                                     [--broker-nodelay]

The AlphaX simulator runs in a separate process (HTTP server, and an MQTT subscriber on a
mosquitto this bench starts on a free loopback port, with its default config -- Nagle on --
unless ``--broker-nodelay``). The bridge runs here: a
``channel_source`` emits ``channel_write`` envelopes for 10 devices x 32 channels per tick, the
router hands them to the AlphaX adapter (``alphax_timed``: the real adapter, timed), which
writes them on the Enterprise tier (no pacing):

- ``http``: batched, one v2 post per device and timestamp (32 channels), 8 posts in flight;
- ``mqtt``: QoS 1, topic form ``bulk`` (one v2 message per device and timestamp);
- ``mqtt-channel`` (table only): QoS 1, one message per channel write.

Per transport and run:

- flood: the source emits flat out for ``--flood-s`` seconds; ``writes/s`` is what the adapter
  got acknowledged per second in the steady part (from 1 s in to the end). The simulator,
  mosquitto and the bridge share the machine's cores, so this is a floor for the bridge alone.
  After the run the simulator's store must hold every acknowledged value (checked);
- latency: ``--rate`` writes per second (ticks of 1 device x 10 channels) for ``--rate-s``
  seconds; p50/p99 from the envelope's creation at the source (``ts``) to its delivery
  returning: HTTP 200 received (the simulator stores before answering) or, over MQTT, the
  PUBACK of its message from mosquitto -- so router, queue, encoding and the peer's answer.

Last line: a JSON object with ``http_writes_per_s``, ``mqtt_writes_per_s`` (bulk), ``p50_ms``
and ``p99_ms`` (the worse of HTTP and MQTT bulk), plus the per-transport figures; medians of
``--repeat`` runs.
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

from broker import _logs as logs
from broker._runtime import Runtime, load
from tests.support import alphax_plugin
from tests.support.alphax_plugin import TIMING
from tests.support.mosquitto import MosquittoBroker, find_mosquitto

TOKEN = "bench-token-0001"
DEVICES = [f"dev-{i}" for i in range(10)]
TRANSPORTS = ("http", "mqtt", "mqtt-channel")


def simulator_process(conn: Connection, mqtt_url: str) -> None:
    """Serve the simulator; answer ("count",) with the store's size, ("clear",), ("stop",)."""
    from adapters.alphax.sim import open_alphax_simulator

    async def main() -> None:
        async with open_alphax_simulator(
            [TOKEN], mqtt_url=mqtt_url, udp_port=None, tcp_port=None
        ) as sim:
            conn.send(sim.url)
            while True:
                cmd = await trio.to_thread.run_sync(conn.recv)
                if cmd[0] == "stop":
                    return
                if cmd[0] == "count":
                    conn.send(sim.store.count())
                elif cmd[0] == "clear":
                    sim.store.clear()
                    conn.send(True)

    trio.run(main)


def ask(conn: Connection, *cmd: str) -> Any:
    conn.send(cmd)
    return conn.recv()


def config_text(
    transport: str, sim_url: str, mqtt_url: str, state: Path, source: dict[str, Any]
) -> str:
    if transport == "http":
        write = f'transport = "http"\nbase_url = "{sim_url}"\nconcurrency = 8'
    else:
        form = "channel" if transport == "mqtt-channel" else "bulk"
        write = (
            f'transport = "mqtt"\nurl = "{mqtt_url}"\ntopic_form = "{form}"\n'
            "max_inflight = 200\nmax_queued = 2000"
        )
    fields = "\n".join(f"{k} = {json.dumps(v)}" for k, v in source.items())
    return f"""
[junction]
state_dir = "{state}"
queue_size = 20000
log_level = "warning"
[adapters.src]
type = "channel_source"
start_ts = {time.time()}
{fields}
[adapters.ax]
type = "alphax_timed"
token = "{TOKEN}"
tier = "enterprise"
read_url = "{sim_url}"
[adapters.ax.write]
{write}
[[routes]]
name = "w"
from = "src"
to = "ax"
overflow = "block"
"""


def run_phase(cfg_path: Path, text: str, seconds: float, steady_from: float) -> dict[str, Any]:
    """Run one runtime for ``seconds``; returns the acknowledged rate in the steady part."""
    cfg_path.write_text(text)
    alphax_plugin.reset()
    TIMING.reset()
    rt = Runtime(load(str(cfg_path), extra_plugins=("tests.support.alphax_plugin",)))
    rt.start()
    try:
        time.sleep(steady_from)
        d0, t0 = TIMING.delivered, time.perf_counter()
        time.sleep(seconds - steady_from)
        d1, t1 = TIMING.delivered, time.perf_counter()
        deadline = time.monotonic() + 20  # let what the source emitted be acknowledged
        while TIMING.delivered < alphax_plugin.emitted("src") and time.monotonic() < deadline:
            time.sleep(0.02)
        dead_lettered = rt.snapshot()["routes"]["w"]["dead_lettered"]
    finally:
        rt.stop(grace_s=5)
    with TIMING.lock:
        lat = sorted(TIMING.latencies)
        delivered = TIMING.delivered
    return {
        "rate": (d1 - d0) / (t1 - t0),
        "delivered": delivered,
        "emitted": alphax_plugin.emitted("src"),
        "dead_lettered": dead_lettered,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1000 * lat[max(0, int(len(lat) * 0.99) - 1)] if lat else float("nan"),
    }


def one_run(
    args: argparse.Namespace,
    transport: str,
    conn: Connection,
    broker_url: str,
    sim_url: str,
    tmp: Path,
) -> dict[str, Any]:
    ask(conn, "clear")
    flood_source = {
        "devices": DEVICES,
        "channels": list(range(1, 33)),
        "ticks": 10**7,
        "batch": 512,
        "duration_s": args.flood_s,
    }
    text = config_text(transport, sim_url, broker_url, tmp / "state", flood_source)
    flood = run_phase(tmp / "flood.toml", text, args.flood_s, 1.0)
    # every acknowledged value must be in the simulator's store (MQTT: give it a moment)
    deadline = time.monotonic() + 20
    stored = ask(conn, "count")
    while stored < flood["delivered"] and time.monotonic() < deadline:
        time.sleep(0.1)
        stored = ask(conn, "count")
    ticks_per_s = args.rate / 10
    rate_source = {
        "devices": ["dev-lat"],
        "channels": list(range(1, 11)),
        "ticks": int(ticks_per_s * args.rate_s),
        "rate": ticks_per_s,
    }
    text = config_text(transport, sim_url, broker_url, tmp / "state", rate_source)
    fixed = run_phase(tmp / "rate.toml", text, args.rate_s, 0.0)
    return {
        "writes_per_s": flood["rate"],
        "flood_delivered": flood["delivered"],
        "flood_emitted": flood["emitted"],
        "stored": stored,
        "dead_lettered": flood["dead_lettered"] + fixed["dead_lettered"],
        "p50_ms": fixed["p50_ms"],
        "p99_ms": fixed["p99_ms"],
        "rate_delivered": fixed["delivered"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flood-s", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="writes/s in the latency phase")
    ap.add_argument("--rate-s", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--broker-nodelay",
        action="store_true",
        help="run mosquitto with set_tcp_nodelay true (default: its default, Nagle on)",
    )
    args = ap.parse_args()
    logs.setup("warning")
    sys.setswitchinterval(0.001)
    binary = find_mosquitto()
    if binary is None:
        sys.exit("mosquitto is not installed (apt-get install mosquitto): MQTT cannot be measured")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        extra = ["set_tcp_nodelay true"] if args.broker_nodelay else []
        broker = MosquittoBroker(binary, tmp / "mosquitto", extra_config=extra)
        broker.start()
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.Process(
            target=simulator_process, args=(child, broker.url), daemon=True
        )
        proc.start()
        try:
            sim_url = parent.recv()
            results: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
            for _ in range(args.repeat):
                for transport in TRANSPORTS:
                    r = one_run(args, transport, parent, broker.url, sim_url, tmp)
                    results[transport].append(r)
        finally:
            parent.send(("stop",))
            proc.join(10)
            broker.stop()
    print(
        f"{'transport':<13} {'run':>3} {'writes/s':>9} {'acked':>9} {'stored':>9} "
        f"{'dead_lettered':>13} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for transport, runs in results.items():
        for i, r in enumerate(runs, 1):
            print(
                f"{transport:<13} {i:>3} {r['writes_per_s']:>9,.0f} {r['flood_delivered']:>9} "
                f"{r['stored']:>9} {r['dead_lettered']:>13} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}"
            )
    med = {
        t: {k: statistics.median(r[k] for r in runs) for k in ("writes_per_s", "p50_ms", "p99_ms")}
        for t, runs in results.items()
    }
    lost = sum(
        max(0, r["flood_delivered"] - r["stored"]) for runs in results.values() for r in runs
    )
    print(
        json.dumps(
            {
                "http_writes_per_s": round(med["http"]["writes_per_s"]),
                "mqtt_writes_per_s": round(med["mqtt"]["writes_per_s"]),
                "p50_ms": round(max(med["http"]["p50_ms"], med["mqtt"]["p50_ms"]), 2),
                "p99_ms": round(max(med["http"]["p99_ms"], med["mqtt"]["p99_ms"]), 2),
                "http_p50_ms": round(med["http"]["p50_ms"], 2),
                "http_p99_ms": round(med["http"]["p99_ms"], 2),
                "mqtt_p50_ms": round(med["mqtt"]["p50_ms"], 2),
                "mqtt_p99_ms": round(med["mqtt"]["p99_ms"], 2),
                "mqtt_channel_writes_per_s": round(med["mqtt-channel"]["writes_per_s"]),
                "latency_rate_writes_per_s": args.rate,
                "acked_not_stored": lost,
                "broker_nodelay": args.broker_nodelay,
                "repeat": args.repeat,
            }
        )
    )


if __name__ == "__main__":
    main()
