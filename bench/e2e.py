"""End to end: PlaceOS notifications fanned out to AlphaX (MQTT QoS 1 and HTTP) and Allxon.

    .venv/bin/python bench/e2e.py [--statuses 100] [--flood-s 4] [--flood-rate 20000]
                                  [--rate 1000] [--rate-s 5] [--repeat 3]

Four processes besides the bridge: the PlaceOS simulator (the producer), one process with
the AlphaX simulator (HTTP server and MQTT subscriber) and the Allxon agent simulator (TLS
WebSocket), and a mosquitto this bench starts on a free loopback port. The bridge runs in
this process, with three routes from the same PlaceOS ``status_change``:

- ``to-mqtt``: a mapping to ``channel_write`` (device ``dev-mqtt``, channel from the status,
  value = the simulator's set-time) -> AlphaX over MQTT QoS 1, topic form ``bulk``;
- ``to-http``: the same mapping (device ``dev-http``) -> AlphaX over HTTP v2, 8 posts in
  flight;
- ``to-allxon``: a mapping to a ``metric`` -> the Allxon adapter (paced by its call budget,
  500 an hour: it keeps the latest value per metric, so it is not a throughput leg).

The simulator sets ``--statuses`` bound variables round robin, each value
``{"t": <epoch s when set>, "n": <seq>, "c": <channel 1..32>}``; the AlphaX routes carry ``t`` as
the written value so the timed adapter (``alphax_e2e``, the real adapter) can tell, when the
peer acknowledged a write (PUBACK from mosquitto; HTTP 200 from the simulator, which stores
before answering), how long ago the simulator set it.

- flood: the simulator offers ``--flood-rate`` changes per second for ``--flood-s`` seconds
  (it queues at most 100,000 frames for a slow reader and drops the rest: ``sim_dropped``
  counts them, and they are not expected anywhere).
  ``msgs_per_s`` is notifications per second acknowledged on the MQTT leg in the steady part
  (1 s in to the end); the HTTP leg (``http_per_s``) shares the router, and both routes
  block rather than drop, so the slower leg paces the whole bridge. Every change must reach
  both legs' peers: the AlphaX simulator's store (one value per channel and millisecond) is
  checked per device after each run against the distinct (channel, ms) acknowledged;
- fixed rate: ``--rate`` changes per second for ``--rate-s`` seconds; ``p50_ms`` / ``p99_ms``
  on the PlaceOS -> AlphaX MQTT path, from the simulator setting a value to its PUBACK;
- ``bridge_cpu_us_per_msg`` / ``peers_cpu_us_per_msg``: CPU time per offered change at the
  fixed rate, in this process (the bridge) and in the simulators and mosquitto together,
  which share the two cores with it (so a busy peer shows up in the bridge's latency);
- ``peak_rss_mb``: this process's peak resident set (the bridge; the simulators and
  mosquitto are other processes), from ``getrusage``.

All of them share the machine's two cores, so the rates are floors for the bridge alone.
Last line: a JSON object with ``msgs_per_s``, ``p50_ms``, ``p99_ms``, ``peak_rss_mb`` (medians
of ``--repeat`` runs; peak RSS is the process's, over all runs) and the per-leg figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
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
from tests.support.mosquitto import MosquittoBroker, find_mosquitto

PLACEOS_KEY = "bench.key"
ALPHAX_TOKEN = "bench-token-0001"
MODULE = "bench"


def placeos_process(conn: Connection, statuses: int) -> None:
    """Serve the PlaceOS simulator; obey ("rate", hz, seconds) and ("stop",)."""
    from adapters.placeos.sim import open_placeos_simulator

    status = {f"s{i}": {"t": 0, "n": -1, "c": i % 32 + 1} for i in range(statuses)}
    model = {
        "systems": [{"id": "sys-B", "modules": [{"id": "mod-S", "name": "Sensors", "index": 1}]}]
    }
    model["systems"][0]["modules"][0]["status"] = status  # type: ignore[index]

    async def main() -> None:
        async with open_placeos_simulator(
            model, api_key=PLACEOS_KEY, drift=False, pong_interval=None
        ) as sim:
            conn.send(sim.url)
            n = dropped_before = 0
            while True:
                cmd = await trio.to_thread.run_sync(conn.recv)
                if cmd[0] == "stop":
                    return
                _, hz, seconds = cmd
                total, sent, changed = int(hz * seconds), 0, 0
                start = trio.current_time()
                while sent < total:
                    due = min(total, int((trio.current_time() - start) * hz) + 1)
                    while sent < due:  # what the schedule says is due by now, never a burst
                        n += 1
                        sent += 1
                        i = n % statuses
                        value = {"t": time.time(), "n": n, "c": i % 32 + 1}
                        changed += sim.set_status("sys-B", "Sensors", 1, f"s{i}", value)
                    await trio.sleep_until(start + sent / hz)
                elapsed = trio.current_time() - start  # above seconds when it could not keep up
                # frames the simulator could not queue for a slow reader (bounded per session)
                dropped = sum(session.dropped_frames for session in sim.sessions)
                conn.send((changed, dropped - dropped_before, elapsed))
                dropped_before = dropped

    trio.run(main)


def sinks_process(conn: Connection, mqtt_url: str) -> None:
    """Serve the AlphaX and Allxon simulators; answer ("count",), ("allxon",), ("stop",)."""
    import logging

    from adapters.allxon.sim import open_allxon_simulator
    from adapters.alphax.sim import open_alphax_simulator

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        async with (
            open_alphax_simulator(
                [ALPHAX_TOKEN], mqtt_url=mqtt_url, udp_port=None, tcp_port=None
            ) as ax,
            open_allxon_simulator(budget=500) as ox,
        ):
            cred = ox.credential
            conn.send((ax.url, ox.url, ox.ca_pem, cred.app_guid, cred.access_key))
            while True:
                cmd = await trio.to_thread.run_sync(conn.recv)
                if cmd[0] == "stop":
                    return
                if cmd[0] == "count":
                    conn.send(
                        {
                            "mqtt": ax.store.count(network_id="dev-mqtt"),
                            "http": ax.store.count(network_id="dev-http"),
                        }
                    )
                elif cmd[0] == "allxon":
                    record = ox.modules.get(MODULE)
                    conn.send(
                        {
                            "calls": ox.store.calls,
                            "samples": len(record.metrics) if record else 0,
                            "rejected": {r.value: n for r, n in ox.store.rejected.items()},
                        }
                    )

    trio.run(main)


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process ``pid``
    (Linux ``/proc``; NaN where it cannot be read)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(conn: Connection, *cmd: Any) -> Any:
    conn.send(cmd)
    return conn.recv()


def config_text(
    peers: dict[str, Any], statuses: int, tmp: Path, mqtt_url: str, legs: list[str]
) -> str:
    bindings = ",\n  ".join(
        f'{{ sys = "sys-B", mod = "Sensors", name = "s{i}" }}' for i in range(statuses)
    )
    to_channel = (
        'kind = "channel_write", network_id = "{device}", channel = "{{body.value.c}}", '
        'value = "{{body.value.t}}"'
    )
    text = f"""
[junction]
state_dir = "{tmp / "state"}"
queue_size = 100000
log_level = "warning"

[adapters.placeos]
type = "placeos"
url = "{peers["placeos"]}"
api_key = "{PLACEOS_KEY}"
bindings = [
  {bindings}
]

[adapters.ax_mqtt]
type = "alphax_e2e"
token = "{ALPHAX_TOKEN}"
tier = "enterprise"
read_url = "{peers["alphax"]}"
[adapters.ax_mqtt.write]
transport = "mqtt"
url = "{mqtt_url}"
topic_form = "bulk"
max_inflight = 200
max_queued = 2000

[adapters.ax_http]
type = "alphax_e2e"
token = "{ALPHAX_TOKEN}"
tier = "enterprise"
read_url = "{peers["alphax"]}"
write = {{ transport = "http", base_url = "{peers["alphax"]}", concurrency = 8 }}

[adapters.allxon]
type = "allxon"
url = "{peers["allxon"]}"
credentials = "{tmp / "cred.json"}"
ca_file = "{tmp / "ca.pem"}"
app_name = "junction-bench"
undeclared = "send"
[[adapters.allxon.modules]]
moduleName = "{MODULE}"

[[routes]]
name = "to-mqtt"
from = "placeos"
kind = "status_change"
to = "ax_mqtt"
overflow = "block"
map = {{ {to_channel.format(device="dev-mqtt")} }}

[[routes]]
name = "to-http"
from = "placeos"
kind = "status_change"
to = "ax_http"
overflow = "block"
map = {{ {to_channel.format(device="dev-http")} }}

[[routes]]
name = "to-allxon"
from = "placeos"
kind = "status_change"
to = "allxon"
map = {{ kind = "metric", module = "{MODULE}", name = "{{body.name}}", value = "{{body.value.n}}" }}
"""
    head, *routes = text.split("[[routes]]")
    kept = [r for r in routes if any(f'name = "to-{leg}"' in r for leg in legs)]
    return "[[routes]]".join([head, *kept])


def wait_acked(names: tuple[str, ...], target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_timing.acked_count(n) >= target for n in names):
            return
        time.sleep(0.01)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, int(len(sorted_values) * q) - 1)]


def one_run(
    args: argparse.Namespace,
    pconn: Connection,
    sconn: Connection,
    peers: dict[str, Any],
    tmp: Path,
    peer_pids: list[int],
) -> dict[str, Any]:
    legs = tuple(f"ax_{leg}" for leg in args.legs if leg != "allxon")
    cfg = tmp / "e2e.toml"
    cfg.write_text(config_text(peers, args.statuses, tmp, peers["mqtt"], args.legs))
    before = ask(sconn, "count")
    rt = Runtime(load(str(cfg), extra_plugins=("bench._timing",)))
    _timing.reset()
    rt.start()
    try:
        wait_acked(legs, args.statuses, 30)  # every binding's initial value
        initial = {n: _timing.acked_count(n) for n in ("ax_mqtt", "ax_http")}
        pconn.send(("rate", args.flood_rate, args.flood_s))
        time.sleep(1.0)
        m0, h0 = _timing.acked_count("ax_mqtt"), _timing.acked_count("ax_http")
        t0 = time.perf_counter()
        time.sleep(args.flood_s - 1.0)
        m1, h1 = _timing.acked_count("ax_mqtt"), _timing.acked_count("ax_http")
        t1 = time.perf_counter()
        flood_sent, sim_dropped, flood_elapsed = pconn.recv()
        flood_sent -= sim_dropped  # never sent: the bridge cannot be asked for them
        wait_acked(legs, initial["ax_mqtt"] + flood_sent, 120)
        after_flood = {n: _timing.acked_count(n) for n in ("ax_mqtt", "ax_http")}
        keys = {n: _timing.store_keys(n) for n in ("ax_mqtt", "ax_http")}
        _timing.reset()
        cpu0 = [cpu_s(), *(cpu_s(pid) for pid in peer_pids)]
        pconn.send(("rate", args.rate, args.rate_s))
        rate_sent, rate_dropped, _ = pconn.recv()
        cpu1 = [cpu_s(), *(cpu_s(pid) for pid in peer_pids)]
        rate_sent -= rate_dropped
        sim_dropped += rate_dropped
        wait_acked(legs, rate_sent, 60)
        _, lat = _timing.acked("ax_mqtt")
        _, http_lat = _timing.acked("ax_http")
        keys = {n: keys[n] + _timing.store_keys(n) for n in keys}
        snap = rt.snapshot()
    finally:
        rt.stop(grace_s=5)
    # every acknowledged write must be in the simulator's store (MQTT: give it a moment); the
    # store keeps one value per (channel, timestamp ms), so two changes of a channel within one
    # millisecond are one stored value: the check counts distinct keys acknowledged
    expect = {"mqtt": keys["ax_mqtt"], "http": keys["ax_http"]}
    deadline = time.monotonic() + 20
    stored = ask(sconn, "count")
    while time.monotonic() < deadline and any(stored[k] - before[k] < expect[k] for k in expect):
        time.sleep(0.1)
        stored = ask(sconn, "count")
    lat.sort()
    http_lat.sort()
    routes = snap["routes"]
    return {
        "msgs_per_s": (m1 - m0) / (t1 - t0),
        "http_per_s": (h1 - h0) / (t1 - t0),
        # what the simulator managed to offer: below --flood-rate when it could not keep up
        "sim_offered_per_s": flood_sent / flood_elapsed,
        "flood_sent": flood_sent,
        "sim_dropped": sim_dropped,
        "flood_acked_mqtt": after_flood["ax_mqtt"] - initial["ax_mqtt"],
        "flood_acked_http": after_flood["ax_http"] - initial["ax_http"],
        "stored_mqtt": stored["mqtt"] - before["mqtt"],
        "stored_http": stored["http"] - before["http"],
        "expected": expect["mqtt"],
        "expected_http": expect["http"],
        "p50_ms": 1000 * percentile(lat, 0.5),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "http_p50_ms": 1000 * percentile(http_lat, 0.5),
        "http_p99_ms": 1000 * percentile(http_lat, 0.99),
        # at the fixed rate: CPU per offered message, in the bridge and in the peers
        # (simulators and mosquitto, which share the two cores with it)
        "bridge_cpu_us": 1e6 * (cpu1[0] - cpu0[0]) / max(1, rate_sent),
        "peers_cpu_us": 1e6 * (sum(cpu1[1:]) - sum(cpu0[1:])) / max(1, rate_sent),
        "dead_lettered": sum(routes[r]["dead_lettered"] for r in routes),
        "dropped": sum(routes[r]["dropped"] for r in routes),
        "allxon_delivered": routes.get("to-allxon", {}).get("delivered", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--statuses", type=int, default=100)
    ap.add_argument("--flood-s", type=float, default=4.0)
    # 20,000/s x 4 s stays under the simulator's per-session queue of 100,000 frames
    ap.add_argument("--flood-rate", type=float, default=20000.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--rate-s", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--legs",
        default="mqtt,http,allxon",
        help="which routes to run (comma separated; the MQTT leg is always measured)",
    )
    ap.add_argument(
        "--broker-nodelay",
        action="store_true",
        help="run mosquitto with set_tcp_nodelay true (default: its default, Nagle on)",
    )
    args = ap.parse_args()
    args.legs = sorted(set(args.legs.split(",")) | {"mqtt"})
    logs.setup("warning")
    sys.setswitchinterval(0.001)
    binary = find_mosquitto()
    if binary is None:
        sys.exit("mosquitto is not installed (apt-get install mosquitto): MQTT cannot be measured")
    from adapters.allxon.codec import PluginCredential, encode_credential

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        extra = ["set_tcp_nodelay true"] if args.broker_nodelay else []
        broker = MosquittoBroker(binary, tmp / "mosquitto", extra_config=extra)
        broker.start()
        pconn, pchild = multiprocessing.Pipe()
        sconn, schild = multiprocessing.Pipe()
        procs = [
            multiprocessing.Process(
                target=placeos_process, args=(pchild, args.statuses), daemon=True
            ),
            multiprocessing.Process(target=sinks_process, args=(schild, broker.url), daemon=True),
        ]
        for proc in procs:
            proc.start()
        try:
            placeos_url = pconn.recv()
            alphax_url, allxon_url, ca_pem, guid, key = sconn.recv()
            (tmp / "cred.json").write_bytes(
                encode_credential(PluginCredential(app_guid=guid, access_key=key))
            )
            (tmp / "ca.pem").write_bytes(ca_pem)
            peers = {
                "placeos": placeos_url,
                "alphax": alphax_url,
                "allxon": allxon_url,
                "mqtt": broker.url,
            }
            for _ in range(args.repeat):
                pids = [p.pid for p in procs if p.pid] + ([broker.pid] if broker.pid else [])
                runs.append(one_run(args, pconn, sconn, peers, tmp, pids))
            allxon = ask(sconn, "allxon")
        finally:
            pconn.send(("stop",))
            sconn.send(("stop",))
            for proc in procs:
                proc.join(10)
            broker.stop()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{'run':<4} {'offered':>8} {'mqtt/s':>8} {'http/s':>8} {'acked m/h':>13} "
        f"{'stored m/h':>13} {'p50 ms':>7} {'p99 ms':>7} {'http p99':>8} "
        f"{'dead_lettered':>13} {'dropped':>7}"
    )
    for i, r in enumerate(runs, 1):
        print(
            f"{i:<4} {r['flood_sent']:>8} {r['msgs_per_s']:>8,.0f} {r['http_per_s']:>8,.0f} "
            f"{r['flood_acked_mqtt']:>6}/{r['flood_acked_http']:<6} "
            f"{r['stored_mqtt']:>6}/{r['stored_http']:<6} {r['p50_ms']:>7.2f} "
            f"{r['p99_ms']:>7.2f} {r['http_p99_ms']:>8.2f} "
            f"{r['dead_lettered']:>13} {r['dropped']:>7}"
        )
    print(
        f"allxon: {allxon['calls']} calls accepted by the agent simulator "
        f"(budget 500/h), {allxon['samples']} metric samples, rejected {allxon['rejected']}"
    )
    lost = sum(
        max(0, r["expected"] - r["stored_mqtt"]) + max(0, r["expected_http"] - r["stored_http"])
        for r in runs
    )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(
        json.dumps(
            {
                "msgs_per_s": round(med("msgs_per_s")),
                "p50_ms": round(med("p50_ms"), 2),
                "p99_ms": round(med("p99_ms"), 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "http_per_s": round(med("http_per_s")),
                "http_p50_ms": round(med("http_p50_ms"), 2),
                "http_p99_ms": round(med("http_p99_ms"), 2),
                "bridge_cpu_us_per_msg": round(med("bridge_cpu_us")),
                "peers_cpu_us_per_msg": round(med("peers_cpu_us")),
                "offered_flood_rate": args.flood_rate,
                "sim_offered_per_s": round(med("sim_offered_per_s")),
                "offered_rate": args.rate,
                "not_stored": lost,
                "sim_dropped": sum(r["sim_dropped"] for r in runs),
                "broker_nodelay": args.broker_nodelay,
                "legs": ",".join(args.legs),
                "dead_lettered": sum(r["dead_lettered"] for r in runs),
                "dropped": sum(r["dropped"] for r in runs),
                "repeat": args.repeat,
            }
        )
    )


if __name__ == "__main__":
    main()
