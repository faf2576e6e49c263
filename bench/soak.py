"""Soak: the demo flow at a steady rate for minutes while every peer is killed and restarted.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 1000] [--restart-every 60]
                                   [--down-s 2] [--sample-s 10] [--workdir DIR]

Every part is a process of its own, on loopback ports this bench picks:

- the bridge: ``junction run`` on ``routes/demo.toml`` (the demo's table, its addresses from
  the ``JUNCTION_DEMO_*`` variables, a state directory of its own) plus an operations
  endpoint (``[junction.http]``, read for the ledger) and one MQTT leg the demo lacks: an
  ``alphax_mqtt`` adapter (QoS 1 to mosquitto) with route ``people-to-alphax-mqtt``, the
  demo's ``people-to-alphax`` with device 4108 instead of 4107;
- the peers: ``junction sim placeos`` serving ``routes/demo_building.toml`` with ``--rate``
  setting the three rooms' ``people_count`` in turn, ``--rate`` changes a second, each to a
  new integer (an id: ``people-to-allxon``, ``people-to-alphax`` and the MQTT leg carry it);
  ``junction sim allxon`` with the demo credential, budget 7200/h and a Portal command every
  8 s (``display-command``: a PlaceOS exec and its reply); the AlphaX simulator over HTTP,
  journaling what it stores (``bench/_soak_peers.py``); and mosquitto (persistence on,
  saved every second, so a restarted broker still has the sink's subscription).
- the MQTT leg's sink (AlphaX's ingest behind the broker) runs in this process, which is
  never killed.

Once every ``--restart-every`` seconds each peer is SIGKILLed, left down ``--down-s``
seconds and started again on the same port (PlaceOS a quarter into each period, Allxon at
half, AlphaX at three quarters), and mosquitto once, an eighth of a period past the middle.
A new PlaceOS process continues the ids where the killed one could have got to.

Every ``--sample-s`` seconds the bridge's resident set (``VmRSS``), open descriptors
(``/proc/PID/fd``), threads and ledger totals are sampled (a line on stderr each). At the
end the sources stop (Allxon, then, once the commands in flight are answered, PlaceOS), the
bridge drains (every route's ``pending`` 0 and nothing new arriving), and then:

- ``unaccounted``: over every route, ``received - (delivered + pending + dead_lettered +
  dropped + filtered)`` from the bridge's own ledger (``broker/_ledger.py``'s words);
- end to end on the two AlphaX legs, where every envelope carries its own id: ``lost_*`` =
  envelopes the route counts delivered less the distinct ids at that sink (acknowledged but
  not there), ``duplicated_*`` = ids stored more than once (a redelivery after an
  acknowledgement the kill took with it), ``only_http`` / ``only_mqtt`` = ids one leg's sink
  has and the other's lacks (the bridge received them, so one leg did not bring them);
- ``dead_lettered`` may be above 0 without anything wrong: ``junction sim allxon`` sends the
  agent's empty alarm settings and no Portal enables ``building/too_hot`` (the demo's own
  Portal does), so when a room's drifting temperature crosses the threshold the Allxon
  adapter dead-letters that route's alert, with the reason;
- ``rss_growth_pct``: from the sample at the end of minute 1 (or half-way, for a soak under
  two minutes) to the last sample; ``fds_start`` is that sample's count, ``fds_end`` the last;
- ``offered_pct``: the ids end to end as a share of ``--rate`` over the soak; under 50% the
  figures describe no soak at that rate, and the soak exits 1 after its JSON line.

The bridge, the simulators and mosquitto share the machine's cores. Last line on stdout:
one JSON object with these figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._soak_peers import (
    KillableBroker,
    MqttSink,
    Peer,
    PeerError,
    Records,
    proc_sample,
    read_journal,
)
from bench._soak_plan import (
    HTTP_DEVICE,
    MAX_ID,
    MQTT_DEVICE,
    PEOPLE,
    extra_config,
    ledger_totals,
    schedule,
)
from tests.support.mosquitto import distinct_free_ports, find_mosquitto

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ROOT / "routes"
#: the ops endpoint is on loopback: never through an http_proxy of the environment
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
#: The least share of ``--rate`` (ids end to end) a soak must carry for its figures to count.
MIN_OFFERED_PCT = 50


class Soak:
    """The processes of one soak, the restarts, the samples (module docstring)."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        junction = Path(sys.executable).with_name("junction")
        self.junction = str(junction) if junction.exists() else shutil.which("junction") or ""
        if not self.junction:
            raise SystemExit("the junction command is not installed (make install)")
        binary = find_mosquitto()
        if binary is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        # the peers bind their ports only when started: chosen together, no two are the same
        placeos_port, allxon_port, alphax_port, broker_port, self.ops_port = distinct_free_ports(5)
        self.broker = KillableBroker(
            binary,
            work / "mosquitto",
            port=broker_port,
            persistence=True,
            extra_config=["autosave_interval 1"],
        )
        self.placeos_key = f"soak-{secrets.token_hex(8)}"
        self.token = f"soak-{secrets.token_hex(8)}"
        self.journal = work / "alphax-journal.txt"
        self.next_id = 1  # the first id the next PlaceOS process sets
        self.peers = {
            "placeos": Peer("placeos", placeos_port, self._placeos_argv, work / "placeos.log"),
            "allxon": Peer("allxon", allxon_port, self._allxon_argv, work / "allxon.log"),
            "alphax": Peer("alphax", alphax_port, self._alphax_argv, work / "alphax.log"),
        }
        self.bridge: subprocess.Popen[bytes] | None = None
        self.sink: MqttSink | None = None
        self.samples: list[dict[str, float]] = []
        self.restarts_done = 0
        self.restart_errors: list[str] = []
        self._stop = threading.Event()

    # --- the processes ----------------------------------------------------------------------

    def _placeos_argv(self) -> list[str]:
        argv = [self.junction, "sim", "placeos", "--port", str(self.peers["placeos"].port)]
        argv += ["--model", str(ROUTES / "demo_building.toml"), "--api-key", self.placeos_key]
        argv += ["--log-level", "WARNING", "--rate", str(self.args.rate)]
        for key in PEOPLE:
            argv += ["--rate-status", key]
        return [*argv, "--rate-start", str(self.next_id)]

    def _allxon_argv(self) -> list[str]:
        argv = [self.junction, "sim", "allxon", "--port", str(self.peers["allxon"].port)]
        argv += ["--credentials", str(ROUTES / "demo_plugin_credential.json")]
        return [*argv, "--budget", "7200", "--render-every", "0", "--command-every", "8"]

    def _alphax_argv(self) -> list[str]:
        port = str(self.peers["alphax"].port)
        script = str(ROOT / "bench" / "_soak_peers.py")
        argv = [sys.executable, script, "alphax", "--port", port, "--token", self.token]
        return [*argv, "--journal", str(self.journal)]

    def start(self) -> None:
        self.broker.start()
        self.sink = MqttSink(self.broker.host, self.broker.port, self.token)
        self.sink.start()
        for peer in self.peers.values():
            peer.start()
        config = self.work / "soak.toml"
        demo = (ROUTES / "demo.toml").read_text()
        config.write_text(demo + extra_config(self.broker.url, self.ops_port))
        env = {
            **os.environ,
            "JUNCTION_DEMO_STATE_DIR": str(self.work / "state"),
            "JUNCTION_DEMO_PLACEOS_URL": f"ws://127.0.0.1:{self.peers['placeos'].port}"
            "/api/engine/v2/systems/control",
            "JUNCTION_DEMO_PLACEOS_KEY": self.placeos_key,
            "JUNCTION_DEMO_ALLXON_URL": f"wss://127.0.0.1:{self.peers['allxon'].port}",
            "JUNCTION_DEMO_ALLXON_CREDENTIALS": str(ROUTES / "demo_plugin_credential.json"),
            "JUNCTION_DEMO_ALPHAX_URL": f"http://127.0.0.1:{self.peers['alphax'].port}",
            "JUNCTION_DEMO_ALPHAX_TOKEN": self.token,
        }
        with (self.work / "bridge.log").open("ab") as log:
            self.bridge = subprocess.Popen(
                [self.junction, "run", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while self.status() is None:
            if self.bridge.poll() is not None or time.monotonic() > deadline:
                raise PeerError(f"the bridge did not come up:\n{self.bridge_tail()}")
            time.sleep(0.2)

    def status(self) -> dict[str, Any] | None:
        """The bridge's /status snapshot, or None when it cannot be read now."""
        try:
            url = f"http://127.0.0.1:{self.ops_port}/status"
            with NO_PROXY.open(url, timeout=5) as response:
                snap: dict[str, Any] = json.load(response)
                return snap
        except (OSError, ValueError):
            return None

    def log_errors(self) -> int:
        """ERROR lines and tracebacks in the bridge's log."""
        text = (self.work / "bridge.log").read_text(errors="replace")
        return sum(" ERROR " in line or line.startswith("Traceback") for line in text.splitlines())

    def bridge_tail(self, lines: int = 20) -> str:
        text = (self.work / "bridge.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def restart(self, name: str) -> None:
        """SIGKILL one peer, leave it down ``--down-s``, start it again on the same port."""
        if name == "mosquitto":
            self.broker.kill()
            time.sleep(self.args.down_s)
            self.broker.start()
            return
        peer = self.peers[name]
        peer.kill()
        if name == "placeos":  # the ids the killed process could have reached, and then some
            ran = time.monotonic() - peer.started_at
            self.next_id += 2 * len(PEOPLE) + math.ceil(ran * self.args.rate) + 1
        time.sleep(self.args.down_s)
        peer.start()

    def restarter(self, t0: float, events: list[tuple[float, str]]) -> None:
        """Run the restarts on schedule (a thread of its own, so samples keep their time)."""
        for at, name in events:
            if self._stop.wait(max(0.0, t0 + at - time.monotonic())):
                return
            began = time.monotonic()
            try:
                self.restart(name)
            except (PeerError, OSError, RuntimeError) as err:
                self.restart_errors.append(f"{name} at {at:.0f} s: {err}")
                print(f"soak: restart of {name} failed: {err}", file=sys.stderr)
                continue
            self.restarts_done += 1
            done = time.monotonic()
            print(
                f"[{done - t0:6.1f} s] {name} killed at {began - t0:.1f} s, "
                f"back after {done - began:.1f} s",
                file=sys.stderr,
            )

    # --- running ----------------------------------------------------------------------------

    def sample(self, t: float, planned: int) -> None:
        assert self.bridge is not None
        row: dict[str, float] = {"t": t, **proc_sample(self.bridge.pid)}
        snap = self.status()
        totals = ledger_totals(snap) if snap is not None else {}
        row.update(totals)
        self.samples.append(row)
        ledger = (
            f"in {totals['received']:>9,}  delivered {totals['delivered']:>9,}  "
            f"pending {totals['pending']:>6,}  dead {totals['dead_lettered']}"
            if totals
            else "status unreadable"
        )
        print(
            f"[{t:6.1f} s] rss {row['rss_mb']:6.1f} MB (anon {row['anon_mb']:5.1f})  "
            f"fds {row['fds']:>3.0f}  "
            f"threads {row['threads']:>2.0f}  {ledger}  restarts {self.restarts_done}/{planned}",
            file=sys.stderr,
        )

    def run(self) -> dict[str, Any]:
        duration = self.args.minutes * 60
        events = schedule(duration, self.args.restart_every)
        t0 = time.monotonic()
        restarter = threading.Thread(target=self.restarter, args=(t0, events), daemon=True)
        restarter.start()
        n = 1
        while True:
            at = min(n * self.args.sample_s, duration)
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            assert self.bridge is not None
            if self.bridge.poll() is not None:
                raise PeerError(
                    f"the bridge exited ({self.bridge.returncode}):\n{self.bridge_tail()}"
                )
            self.sample(at, len(events))
            if at >= duration:
                break
            n += 1
        restarter.join()  # the last restart is within the duration: it has begun or is done
        return self.finish(events)

    def wait_drained(self, routes: list[str] | None, timeout: float) -> dict[str, Any] | None:
        """Wait until ``routes`` (None: all) have nothing pending and no new input for 2 s."""
        deadline = time.monotonic() + timeout
        last: tuple[int, int] | None = None
        steady_since = time.monotonic()
        snap = self.status()
        while time.monotonic() < deadline:
            snap = self.status()
            if snap is not None:
                chosen = [r for n, r in snap["routes"].items() if routes is None or n in routes]
                now = (
                    sum(r["ledger"]["pending"] for r in chosen),
                    sum(r["ledger"]["received"] for r in chosen),
                )
                if now != last:
                    last, steady_since = now, time.monotonic()
                elif now[0] == 0 and time.monotonic() - steady_since >= 2.0:
                    return snap
            time.sleep(0.25)
        return None

    def finish(self, events: list[tuple[float, str]]) -> dict[str, Any]:
        self.peers["allxon"].stop()  # no more Portal commands; answers to those in flight
        self.wait_drained(["display-command"], 30)
        self.peers["placeos"].stop()  # no more status changes
        drained = self.wait_drained(None, self.args.drain_s)
        snap = drained or self.status()
        if snap is None:
            raise PeerError(f"the bridge's /status cannot be read:\n{self.bridge_tail()}")
        assert self.bridge is not None and self.sink is not None
        (self.work / "final-status.json").write_text(json.dumps(snap, indent=1))
        self.bridge.send_signal(signal.SIGTERM)
        try:
            bridge_exit = self.bridge.wait(60)
        except subprocess.TimeoutExpired:
            self.bridge.kill()
            bridge_exit = self.bridge.wait(10)
        self.peers["alphax"].stop()
        self.sink.stop()
        self.broker.stop()
        return self.report(snap, events, drained is not None, bridge_exit)

    def stop_all(self) -> None:
        """Whatever still runs, stopped (after a failure)."""
        self._stop.set()
        if self.bridge is not None and self.bridge.poll() is None:
            self.bridge.kill()
            self.bridge.wait(10)
        for peer in self.peers.values():
            peer.kill()
        if self.sink is not None:
            self.sink.stop()
        self.broker.stop()

    # --- the figures --------------------------------------------------------------------------

    def report(
        self,
        snap: dict[str, Any],
        events: list[tuple[float, str]],
        drained: bool,
        bridge_exit: int,
    ) -> dict[str, Any]:
        assert self.sink is not None
        duration = self.args.minutes * 60
        base_t = min(60.0, duration / 2)
        base = next(s for s in self.samples if s["t"] >= base_t)
        end = self.samples[-1]
        after = [s for s in self.samples if s["t"] >= base_t]
        totals = ledger_totals(snap)
        routes = snap["routes"]
        legs: dict[str, Any] = {}
        stored: dict[str, Records] = {"http": read_journal(self.journal), "mqtt": self.sink.records}
        devices = {"http": HTTP_DEVICE, "mqtt": MQTT_DEVICE}
        route_of = {"http": "people-to-alphax", "mqtt": "people-to-alphax-mqtt"}
        ids: dict[str, Counter[tuple[int, float]]] = {}
        for leg in ("http", "mqtt"):
            ids[leg] = stored[leg].get(devices[leg], Counter())
            delivered = routes[route_of[leg]]["ledger"]["delivered"]
            legs[f"lost_{leg}"] = max(0, delivered - len(ids[leg]))
            legs[f"duplicated_{leg}"] = sum(ids[leg].values()) - len(ids[leg])
            legs[f"stored_{leg}"] = len(ids[leg])
            legs[f"delivered_{leg}"] = delivered
        return {
            "minutes": self.args.minutes,
            "rate": self.args.rate,
            "rss_growth_pct": round(100 * (end["rss_mb"] - base["rss_mb"]) / base["rss_mb"], 2),
            "rss_start_mb": round(base["rss_mb"], 1),
            "rss_end_mb": round(end["rss_mb"], 1),
            "rss_max_mb": round(max(s["rss_mb"] for s in after), 1),
            "anon_start_mb": round(base["anon_mb"], 1),
            "anon_end_mb": round(end["anon_mb"], 1),
            "file_start_mb": round(base["file_mb"], 1),
            "file_end_mb": round(end["file_mb"], 1),
            "fds_start": int(base["fds"]),
            "fds_end": int(end["fds"]),
            "fds_min": int(min(s["fds"] for s in after)),
            "fds_max": int(max(s["fds"] for s in after)),
            "threads_start": int(base["threads"]),
            "threads_end": int(end["threads"]),
            "restarts_done": self.restarts_done,
            "restarts_planned": len(events),
            "restart_errors": len(self.restart_errors),
            "unaccounted": totals["unaccounted"],
            "lost": legs["lost_http"] + legs["lost_mqtt"],
            **legs,
            "only_http": len(ids["http"].keys() - ids["mqtt"].keys()),
            "only_mqtt": len(ids["mqtt"].keys() - ids["http"].keys()),
            "received": totals["received"],
            "delivered": totals["delivered"],
            "pending": totals["pending"],
            "dead_lettered": totals["dead_lettered"],
            "dropped": totals["dropped"],
            "filtered": totals["filtered"],
            "unrouted": sum(snap["unrouted"].values()),
            "drained": drained,
            # ids the bridge got from PlaceOS (on either leg): what the source managed to offer
            "ids_seen": len(ids["http"].keys() | ids["mqtt"].keys()),
            # ... as a share of --rate over the soak (peers down for a while each minute)
            "offered_pct": round(
                100 * len(ids["http"].keys() | ids["mqtt"].keys()) / (self.args.rate * duration),
                1,
            ),
            # CPU of the bridge from the minute-1 sample to the last (one core = 100)
            "bridge_cpu_pct": round(
                100 * (end["cpu_s"] - base["cpu_s"]) / max(1e-9, end["t"] - base["t"]), 1
            ),
            "bridge_errors": self.log_errors(),
            "bridge_exit": bridge_exit,
            "samples": len(self.samples),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="people-count changes a second")
    ap.add_argument("--restart-every", type=float, default=60.0, metavar="S")
    ap.add_argument("--down-s", type=float, default=2.0, help="how long a killed peer stays down")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--drain-s", type=float, default=120.0, help="how long the end may take")
    ap.add_argument("--workdir", type=Path, help="keep the logs, journal and state here")
    args = ap.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.sample_s <= 0 or args.restart_every <= 0:
        ap.error("--minutes, --rate, --sample-s and --restart-every must be above 0")
    if args.rate * args.minutes * 60 > MAX_ID:
        ap.error(f"--rate x --minutes x 60 must stay under {MAX_ID:,} (the ids AlphaX can carry)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="junction-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, work)
    try:
        soak.start()
        result = soak.run()
    except PeerError as err:
        soak.stop_all()
        sys.exit(f"soak failed: {err}\n(logs in {work})")
    except BaseException:
        soak.stop_all()
        raise
    for line in soak.restart_errors:
        print(f"restart failed: {line}", file=sys.stderr)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs, journal and state in {work}", file=sys.stderr)
    print(json.dumps(result))
    if result["offered_pct"] < MIN_OFFERED_PCT:
        sys.exit(
            f"soak failed: the flow reached only {result['offered_pct']}% of --rate "
            f"(at least {MIN_OFFERED_PCT}% wanted): these figures are not a soak at that rate "
            f"(a peer that never came up? the logs are kept in {work} with --workdir)"
        )


if __name__ == "__main__":
    main()
