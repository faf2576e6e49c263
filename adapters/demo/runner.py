"""``junction demo``: the three peer simulators, the demo table, and a live view of both.

The simulators run in ONE background thread with its own trio loop (:class:`PeersThread`);
the bridge runs as it always does (pykka actors, the adapters on their shared trio loop) and
reaches them over real loopback sockets, exactly as it would reach a site:

- PlaceOS serves the rooms of ``routes/demo_building.toml`` with drift on (temperatures,
  humidity and people counts wander); the huddle room's display driver raises.
- The Allxon agent uses the committed development credential; it plays the Portal too:
  after every announce it sends the alarm settings (``building/too_hot`` enabled) and the
  threshold config, and, every ``command_every_s``, a ``display_power`` command, alternating
  one that works (boardroom) with one whose driver fails (huddle room); every
  ``threshold_every_s`` it changes the threshold.
- Every ``heat_every_s`` (the first time 5 s in) the boardroom's air conditioning "fails":
  its temperature jumps over the threshold, so the too-hot alarm triggers, and drifts back
  (the alarm resolves once it is under the threshold by the hysteresis).
- AlphaX Conduit over HTTP (Enterprise tier, a fresh token), so no MQTT broker is needed.

The bridge serves its web console on loopback (``[junction.http] listen`` when the table
sets it, else a free port of 127.0.0.1) and the demo prints ``console: URL`` first; the
console shows the latest values too (:class:`adapters.demo.latest.LatestValues`).

``open_demo_peers`` is the same thing as an async context manager for tests, which run the
simulators in their own trio loop and drive them directly. The addresses reach the table
through the ``JUNCTION_DEMO_*`` environment variables it names (:data:`ENV`).

The tables and their companion files ship in the ``routes`` package (:data:`ROUTES_DIR`).
``adapters.demo.plugin`` imports this module only when ``junction demo`` runs.
"""

from __future__ import annotations

import importlib.resources
import itertools
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
from trio_websocket import ConnectionClosed

from adapters.allxon.codec import (
    AlarmModuleSettings,
    AlarmSetting,
    ConfigModuleSettings,
    ConfigSetting,
    NamedValue,
)
from adapters.allxon.sim import (
    AllxonSimulator,
    NoPluginConnectedError,
    load_credential,
    open_allxon_simulator,
)
from adapters.alphax.sim import AlphaXSimulator, open_alphax_simulator
from adapters.demo.latest import LatestValues
from adapters.demo.view import extra_view
from adapters.placeos.sim import PlaceOSSimulator, load_model, open_placeos_simulator
from broker import Loaded, Runtime, load, render_status

log = logging.getLogger(__name__)
T = TypeVar("T")


def _routes_dir() -> Path:
    """The ``routes`` package's directory: the checkout's (editable install) or the wheel's."""
    root = importlib.resources.files("routes")
    if not isinstance(root, Path):  # e.g. imported from a zip: the demo needs real files
        raise RuntimeError(f"the bundled routing tables are not on the file system: {root}")
    return root


ROUTES_DIR = _routes_dir()
MODEL_FILE = "demo_building.toml"
CREDENTIAL_FILE = "demo_plugin_credential.json"

#: The environment variables the demo table reads (name -> what it holds).
ENV = {
    "JUNCTION_DEMO_PLACEOS_URL": "PlaceOS simulator WebSocket URL",
    "JUNCTION_DEMO_PLACEOS_KEY": "its X-API-Key",
    "JUNCTION_DEMO_ALLXON_URL": "Allxon agent simulator wss:// URL",
    "JUNCTION_DEMO_ALLXON_CREDENTIALS": "the plugin_credential.json both sides use",
    "JUNCTION_DEMO_ALPHAX_URL": "AlphaX simulator HTTP base URL",
    "JUNCTION_DEMO_ALPHAX_TOKEN": "its token",
}

PORTAL_MODULE = "building"
ALARM = "too_hot"
CONFIG_CARD = "thresholds"
THRESHOLD_PARAM = "too_hot_above"
#: Thresholds the Portal cycles through (degrees C), starting with the first.
THRESHOLDS = (25.0, 23.5, 24.5)
#: The status the heat-spike scenario pushes over the threshold.
HOT_ROOM = ("sys-boardroom", "Environment", 1, "temperature")
#: The commands the Portal alternates: (module, command, params, what should happen).
COMMANDS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("sys-boardroom", "display_power", {"power": True}, "ok"),
    ("sys-huddle2", "display_power", {"power": True}, "fails: driver offline"),
    ("sys-boardroom", "display_power", {"power": False}, "ok"),
)


def default_config() -> Path:
    """``routes/demo.toml`` in the working directory (a checkout), else the bundled one."""
    here = Path.cwd() / "routes" / "demo.toml"
    return here if here.exists() else ROUTES_DIR / "demo.toml"


def demo_file(config_path: str | os.PathLike[str], name: str) -> Path:
    """A demo companion file (model, credential): beside the table, else the bundled one."""
    beside = Path(config_path).resolve().parent / name
    return beside if beside.exists() else ROUTES_DIR / name


# --------------------------------------------------------------------------- the peers


@dataclass
class SentCommand:
    """A command the simulated Portal sent, for the live view."""

    command_id: str
    label: str


@dataclass
class DemoPeers:
    """The three running simulators and the simulated Portal's state (trio-thread only)."""

    placeos: PlaceOSSimulator
    allxon: AllxonSimulator
    alphax: AlphaXSimulator
    env: dict[str, str]
    threshold: float = THRESHOLDS[0]
    sent: deque[SentCommand] = field(default_factory=lambda: deque(maxlen=20))
    announces_seen: int = 0
    _next_command: itertools.cycle[int] = field(
        default_factory=lambda: itertools.cycle(range(len(COMMANDS)))
    )

    async def send_settings(self) -> None:
        """What the Portal sends after an announce: the alarm enabled and the threshold."""
        await self.allxon.send_alarm_update(
            [
                AlarmModuleSettings(
                    module_name=PORTAL_MODULE, alarms=[AlarmSetting(name=ALARM, enabled=True)]
                )
            ]
        )
        await self.set_threshold(self.threshold)

    async def set_threshold(self, value: float) -> None:
        """Send a Portal config update setting the too-hot threshold (degrees C)."""
        self.threshold = value
        param = NamedValue(name=THRESHOLD_PARAM, value=f"{value:g}")
        await self.allxon.send_config_update(
            [
                ConfigModuleSettings(
                    module_name=PORTAL_MODULE,
                    configs=[ConfigSetting(name=CONFIG_CARD, params=[param])],
                )
            ]
        )
        log.info("portal: too-hot threshold set to %g C", value)

    async def send_command(
        self, module: str, command: str, params: dict[str, Any], label: str = ""
    ) -> str:
        """Send a Portal command; returns its commandId (its acks land in ``allxon.commands``)."""
        command_id = await self.allxon.send_command(module, command, params)
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        self.sent.append(SentCommand(command_id, label or f"{module} {command} {shown}"))
        return command_id

    async def send_next_command(self) -> str:
        """The next of :data:`COMMANDS` (an ok one and a failing one alternate)."""
        module, command, params, expect = COMMANDS[next(self._next_command)]
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        return await self.send_command(
            module, command, params, f"{module} {command} {shown} ({expect})"
        )

    def command_lines(self, limit: int = 5) -> list[str]:
        """The last commands with their acks, newest last (call on the trio thread)."""
        lines = []
        for sent in list(self.sent)[-limit:]:
            record = self.allxon.commands.get(sent.command_id)
            states = " -> ".join(record.states) if record and record.states else "sent"
            detail = ""
            if record and record.acks and record.acks[-1].command_acks:
                result = record.acks[-1].command_acks[0].result
                detail = str(result.get("response", "")) if result else ""
            lines.append(f"  {sent.label:<52} {states:<20} {detail[:50]}")
        return lines

    def heat_spike(self) -> None:
        """The boardroom's air conditioning fails: its temperature jumps over the threshold."""
        value = round(self.threshold + 1.2, 1)
        self.placeos.set_status(*HOT_ROOM, value)
        log.info("scenario: the boardroom's air conditioning failed (%.1f C)", value)

    async def portal(
        self, command_every_s: float, threshold_every_s: float, heat_every_s: float = 0.0
    ) -> None:
        """Play the Portal: settings after each announce, commands and threshold changes
        (and the heat spike scenario, when its period is > 0)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._settings_after_announces)
            if heat_every_s > 0:

                async def heat() -> None:
                    self.heat_spike()

                nursery.start_soon(self._every, heat_every_s, heat, min(5.0, heat_every_s))
            if command_every_s > 0:
                nursery.start_soon(
                    self._every, command_every_s, self.send_next_command, min(3.0, command_every_s)
                )
            if threshold_every_s > 0:
                cycle = itertools.cycle(THRESHOLDS[1:] + THRESHOLDS[:1])

                async def next_threshold() -> None:
                    await self.set_threshold(next(cycle))

                nursery.start_soon(self._every, threshold_every_s, next_threshold)

    async def _settings_after_announces(self) -> None:
        while True:
            await self.allxon.wait_for(self._new_announce, timeout=math.inf)
            self.announces_seen = self.allxon.store.update_count
            try:
                await self.send_settings()
            except (NoPluginConnectedError, ConnectionClosed) as err:
                log.info("portal: settings not sent (%s); sent after the next announce", err)

    def _new_announce(self, sim: AllxonSimulator) -> bool:
        return sim.store.update_count > self.announces_seen

    async def _every(
        self, seconds: float, action: Callable[[], Any], first: float | None = None
    ) -> None:
        await trio.sleep(seconds if first is None else first)
        while True:
            try:
                await action()
            except (NoPluginConnectedError, ConnectionClosed) as err:
                log.info("portal: skipped (%s)", err)
            await trio.sleep(seconds)


@asynccontextmanager
async def open_demo_peers(
    config_path: str | os.PathLike[str] = ROUTES_DIR / "demo.toml",
    *,
    drift: bool = True,
    seed: int | None = None,
    command_every_s: float = 0.0,
    threshold_every_s: float = 0.0,
    heat_every_s: float = 0.0,
    model: Any = None,
) -> AsyncIterator[DemoPeers]:
    """Serve the three simulators on free loopback ports for the duration of the block.

    ``model`` replaces the building model (a dict or path); the Portal sends settings after
    every announce, and commands / threshold changes only when their periods are > 0.
    """
    credential_path = demo_file(config_path, CREDENTIAL_FILE)
    credential = load_credential(credential_path)
    building = load_model(model if model is not None else demo_file(config_path, MODEL_FILE))
    placeos_key = f"demo-{secrets.token_hex(12)}"
    alphax_token = f"demo-{secrets.token_hex(12)}"
    async with (
        open_placeos_simulator(building, api_key=placeos_key, drift=drift, seed=seed) as placeos,
        open_allxon_simulator(
            credential=credential, budget=7200, send_initial_updates=False
        ) as allxon,
        open_alphax_simulator(
            [alphax_token], tier="enterprise", udp_port=None, tcp_port=None
        ) as alphax,
    ):
        env = {
            "JUNCTION_DEMO_PLACEOS_URL": placeos.url,
            "JUNCTION_DEMO_PLACEOS_KEY": placeos_key,
            "JUNCTION_DEMO_ALLXON_URL": allxon.url,
            "JUNCTION_DEMO_ALLXON_CREDENTIALS": str(credential_path),
            "JUNCTION_DEMO_ALPHAX_URL": alphax.url,
            "JUNCTION_DEMO_ALPHAX_TOKEN": alphax_token,
        }
        peers = DemoPeers(placeos, allxon, alphax, env)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peers.portal, command_every_s, threshold_every_s, heat_every_s)
            try:
                yield peers
            finally:
                nursery.cancel_scope.cancel()


class PeersThread:
    """:func:`open_demo_peers` in a background thread running one trio loop."""

    def __init__(self, config_path: str, **options: Any) -> None:
        self.config_path = config_path
        self.options = options
        self.peers: DemoPeers | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="demo-simulators", daemon=True)

    def start(self, timeout: float = 30.0) -> DemoPeers:
        """Start serving; returns once all three accept connections (raises what failed)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the demo simulators did not start within {timeout:g} s")
        if self._error is not None or self.peers is None:
            raise RuntimeError(f"the demo simulators failed to start: {self._error!r}")
        return self.peers

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as err:  # reported by start() or stop(); the thread just ends
            self._error = err
            log.error("demo simulators stopped with an error: %r", err)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with open_demo_peers(self.config_path, **self.options) as peers:
            self.peers = peers
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the simulators' trio thread (their state is not thread-safe)."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the simulators and wait for the thread."""
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the demo simulators did not stop within %g s", timeout)


# --------------------------------------------------------------------------- running it


def load_demo(path: str, env: dict[str, str]) -> Loaded:
    """Set the simulators' addresses in the environment and load the table."""
    os.environ.update(env)
    return load(path)


def serve_console(loaded: Loaded, values: LatestValues | None = None) -> str:
    """Have the bridge serve its web console on loopback; its URL.

    ``[junction.http] listen`` as the table says, else (or for port 0) a free port of
    127.0.0.1 chosen here, so the URL can be printed before the bridge starts. The
    console also shows the latest value of each subject (``values``, registered here as
    an observer; a new one when None).
    """
    http = loaded.config.junction.http
    host, _, port = (http.listen or "127.0.0.1:0").rpartition(":")
    if port == "0":
        port = str(_free_port(host.strip("[]")))
        http.listen = f"{host}:{port}"
    if values is None:
        values = LatestValues()
    loaded.plugins.pm.register(values, name="demo-values")
    loaded.console_extra = values.snapshot
    return f"http://{host}:{port}/"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def run_demo(
    path: str,
    duration: float = 0.0,
    live: bool = False,
    command_every_s: float = 8.0,
    threshold_every_s: float = 30.0,
    heat_every_s: float = 45.0,
) -> int:
    """Run the demo: simulators, then the bridge; stop the bridge, then the simulators.

    With ``duration`` it runs that long without a live view and returns 0 only when every
    route delivered at least once; otherwise until Ctrl-C / SIGTERM.
    """
    from broker.cli import EXIT_FAIL, EXIT_OK, run_until_stopped

    sims = PeersThread(
        path,
        command_every_s=command_every_s,
        threshold_every_s=threshold_every_s,
        heat_every_s=heat_every_s,
    )
    peers = sims.start()
    try:
        loaded = load_demo(path, peers.env)
        values = LatestValues()  # the console's and the live view's
        url = serve_console(loaded, values)
        print(f"console: {url}", flush=True)
        view = extra_view(values, sims)
        if not duration:  # the URL on the live view's last line, which always shows
            return run_until_stopped(
                loaded, status_every=1.0, live=live, extra=view, footer=f"console: {url}"
            )
        snap = _run_for(loaded, duration)
        final = view()  # while the simulators still run: it reads their command records
    finally:
        sims.stop()
    print(render_status(snap))
    print()
    print(final)
    idle = [n for n, c in snap.get("routes", {}).items() if c["delivered"] == 0]
    if idle:
        print(f"\ndemo FAILED: these routes delivered nothing: {', '.join(idle)}")
        return EXIT_FAIL
    print("\ndemo OK: every route delivered")
    return EXIT_OK


def _run_for(loaded: Loaded, duration: float) -> dict[str, Any]:
    """Run the bridge for ``duration`` seconds (or until a signal); the final snapshot."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    runtime = Runtime(loaded)
    try:
        runtime.start()
        stop.wait(duration)
    finally:
        snapshot = runtime.stop().snapshot
        for s, handler in old.items():
            signal.signal(s, handler)
    sys.stdout.flush()
    return snapshot
