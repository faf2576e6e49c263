"""End to end: routes/demo.toml, the real runtime, all three simulators over real sockets.

The simulators run in the test's trio loop (``adapters.demo.runner.open_demo_peers``, drift off so
values move only when a test moves them); the bridge is the one ``junction demo`` runs,
loaded from the committed table with the ``JUNCTION_DEMO_*`` addresses in the environment,
the example plugin found through its entry point.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from adapters.demo.runner import DemoPeers, open_demo_peers
from broker._runtime import Runtime, load
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "routes" / "demo.toml"
BOARDROOM_TEMP = ("sys-boardroom", "Environment", 1, "temperature")
TRAINING_TEMP = ("sys-training", "Environment", 1, "temperature")
BINDINGS = 10  # in routes/demo.toml


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, start_runtime: Any) -> Callable[..., Any]:
    """``async with demo() as (peers, rt)``: the simulators and the bridge, both ready: the
    PlaceOS bindings made, the plugin announced and the Portal's settings applied."""

    @asynccontextmanager
    async def run(**options: Any) -> AsyncIterator[tuple[DemoPeers, Runtime]]:
        async with open_demo_peers(DEMO, drift=False, **options) as peers:
            for name, value in peers.env.items():
                monkeypatch.setenv(name, value)
            monkeypatch.setenv("JUNCTION_DEMO_STATE_DIR", str(tmp_path / "state"))
            async with start_runtime(load(str(DEMO))) as rt:
                await wait_for(
                    lambda: peers.placeos.bind_count() == BINDINGS, 15, "the PlaceOS bindings"
                )
                await wait_for(lambda: alarm_enabled(peers), 15, "the Portal's alarm settings")
                await wait_for(
                    lambda: rt.statuses["allxon"].state == "connected", 15, "allxon connected"
                )
                # the alert route has seen the Portal's threshold and the three temperatures
                await wait_for(
                    lambda: routes(rt)["too-hot-alert"]["matched"] >= 4, 15, "the first values"
                )
                yield peers, rt

    return run


def alarm_enabled(peers: DemoPeers) -> bool:
    return peers.allxon.store.alarms_enabled.get(("building", "too_hot"), False)


def routes(rt: Runtime) -> dict[str, Any]:
    result: dict[str, Any] = rt.snapshot()["routes"]
    return result


def alerts(peers: DemoPeers) -> list[tuple[str, str]]:
    record = peers.allxon.modules.get("building")
    return [(a.item.action, a.item.message) for a in record.alerts] if record else []


def metrics(peers: DemoPeers, module: str) -> list[float]:
    record = peers.allxon.modules.get(module)
    return [float(m.value) for m in record.metrics] if record else []


async def command(peers: DemoPeers, module: str, power: bool) -> Any:
    """Send a display_power command and wait for its second ack; the command record."""
    cid = await peers.send_command(module, "display_power", {"power": power})
    await peers.allxon.wait_for(lambda s: s.commands[cid].complete, timeout=20)
    return peers.allxon.commands[cid]


async def test_every_demo_route_delivers_and_commands_come_back_as_acks(demo: Any) -> None:
    with trio.fail_after(50):
        async with demo() as (peers, rt):
            ok = await command(peers, "sys-boardroom", True)
            assert ok.states == ["ACCEPTED", "ACKED"]
            assert ok.acks[-1].command_acks[0].result == {"response": "true"}  # exec's value
            assert peers.placeos.status("sys-boardroom", "Display", 1, "power") is True

            failed = await command(peers, "sys-huddle2", True)
            assert failed.states == ["ACCEPTED", "ERRORED"]
            response = failed.acks[-1].command_acks[0].result["response"]
            assert "module raised: display offline: no signal on HDMI1" in response

            peers.placeos.set_status(*BOARDROOM_TEMP, 26.5)  # over the default 25 C
            await wait_for(
                lambda: all(c["delivered"] > 0 for c in routes(rt).values()),
                20,
                "every route to deliver",
            )
            counters = routes(rt)
            assert set(counters) == {
                "temp-to-alphax",
                "temp-to-allxon",
                "people-to-allxon",
                "people-to-alphax",
                "display-to-allxon",
                "bookings-to-allxon",
                "too-hot-alert",
                "display-command",
                "alphax-readback",
            }
            assert counters["display-command"]["replies"] == 2
            assert all(c["dead_lettered"] == 0 for c in counters.values()), counters
            # what the peers hold: channel writes, Kelvin metrics, states, the read-back
            await peers.alphax.wait_for(
                lambda: 26.5 in [v for _, v in peers.alphax.store.values("4106", 1)], 10
            )
            assert [v for _, v in peers.alphax.store.values("4107", 1)] == [6.0]
            await wait_for(lambda: 299.65 in metrics(peers, "sys-boardroom"), 10, "26.5 C in K")
            await wait_for(lambda: 299.65 in metrics(peers, "building"), 10, "the read-back")
            assert peers.allxon.state("sys-boardroom", "people") == "6"
            assert peers.allxon.state("sys-boardroom", "display") == "true"
            bookings = peers.allxon.state("sys-boardroom", "bookings")
            assert isinstance(bookings, list) and bookings[0]["title"] == "Board meeting"


async def test_the_alert_follows_the_threshold_the_portal_configures(demo: Any) -> None:
    with trio.fail_after(50):
        async with demo() as (peers, rt):

            def judged() -> int:
                count: int = routes(rt)["too-hot-alert"]["matched"]
                return count

            async def passes_through(action: Callable[[], Any]) -> None:
                """Do ``action`` and wait until the alert route has judged its envelope."""
                before = judged()
                result = action()
                if inspect.isawaitable(result):
                    await result
                await wait_for(lambda: judged() > before, 10, "the alert route to judge it")

            await passes_through(lambda: peers.set_threshold(30.0))
            # 28 C is over the table's 25 C but under the Portal's 30 C: no alert
            await passes_through(lambda: peers.placeos.set_status(*BOARDROOM_TEMP, 28.0))
            await passes_through(lambda: peers.set_threshold(26.0))
            peers.placeos.set_status(*BOARDROOM_TEMP, 27.0)
            await wait_for(lambda: len(alerts(peers)) == 1, 10, "the trigger")
            await passes_through(lambda: peers.placeos.set_status(*BOARDROOM_TEMP, 25.8))
            peers.placeos.set_status(*BOARDROOM_TEMP, 25.0)  # under 26 - 0.5 hysteresis
            await wait_for(lambda: len(alerts(peers)) == 2, 10, "the resolve")
            subject = "sys-boardroom/Environment_1/temperature"
            assert alerts(peers) == [
                ("trigger", f"{subject} at 27.0 C (limit 26 C)"),
                ("resolve", f"{subject} at 25.0 C (limit 26 C)"),
            ]
            assert all(a.enabled for a in peers.allxon.modules["building"].alerts)


async def test_peers_dropped_mid_run_come_back_and_routes_resume(demo: Any) -> None:
    with trio.fail_after(50):
        async with demo() as (peers, rt):
            # PlaceOS drops every session: the adapter reconnects and binds everything again
            assert peers.placeos.drop_connections() == 1
            await wait_for(lambda: rt.statuses["placeos"].reconnects >= 1, 15, "reconnect")
            await wait_for(lambda: peers.placeos.bind_count() == BINDINGS, 15, "the re-binds")
            peers.placeos.set_status(*BOARDROOM_TEMP, 24.4)
            await peers.alphax.wait_for(
                lambda: 24.4 in [v for _, v in peers.alphax.store.values("4106", 1)], 15
            )
            # the Allxon agent drops the plugin: it re-announces, the Portal re-sends settings
            announces = peers.allxon.store.update_count
            assert await peers.allxon.drop_connections() == 1
            await peers.allxon.wait_for(lambda s: s.store.update_count > announces, timeout=15)
            await wait_for(lambda: peers.announces_seen > announces, 15, "the settings again")
            await wait_for(lambda: rt.statuses["allxon"].reconnects >= 1, 15, "reconnect")
            ok = await command(peers, "sys-boardroom", False)
            assert ok.states == ["ACCEPTED", "ACKED"]
            peers.placeos.set_status(*TRAINING_TEMP, 22.7)
            await wait_for(lambda: 295.85 in metrics(peers, "sys-training"), 15, "the metric")
            # AlphaX refuses two writes (503): they are retried, nothing is lost
            peers.alphax.fail_next(2, 503, endpoints=["post/v2"])
            peers.placeos.set_status(*TRAINING_TEMP, 23.3)
            await peers.alphax.wait_for(
                lambda: 23.3 in [v for _, v in peers.alphax.store.values("4106", 3)], 15
            )
            assert peers.alphax.faults_pending() == 0
            assert all(c["dead_lettered"] == 0 for c in routes(rt).values())


def test_junction_demo_duration_exits_0_when_every_route_delivered(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "broker.cli", "demo", "--duration", "9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT), JUNCTION_DEMO_STATE_DIR=str(tmp_path)),
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "demo OK: every route delivered" in out.stdout
    assert "ACCEPTED -> ACKED" in out.stdout  # the first Portal command, in the summary
    assert "Traceback" not in out.stderr
