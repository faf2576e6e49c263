"""The Allxon adapter against the agent simulator, over real TLS loopback WebSockets.

The simulator runs in the test's trio loop; the bridge (router, adapters and their own trio
loops) runs in threads beside it. A ``probe`` injects states, metrics, alerts and properties;
a ``responder`` answers commands; a ``collector`` records alarm and config updates. Each test
keeps its frame count small: every frame costs a signature on each side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from adapters.allxon.codec import (
    AlarmModuleSettings,
    AlarmSetting,
    CommandInvocation,
    CommandParams,
    ConfigModuleSettings,
    ConfigSetting,
    NamedValue,
    PluginCommand,
    PluginCredential,
    encode_credential,
    encode_message,
    epoch_str,
)
from adapters.allxon.signing import sign_frame
from adapters.allxon.sim import AllxonSimulator, open_allxon_simulator
from adapters.allxon.sim._store import Rejection
from broker._envelope import (
    AlarmUpdate,
    Alert,
    ConfigUpdate,
    Envelope,
    Event,
    Metric,
    Property,
    State,
)
from broker._outbox import Outbox
from broker._runtime import Loaded, Runtime, load
from tests.conftest import TEST_PLUGINS, peek, wait_for
from tests.support import allxon_plugin
from tests.support.allxon_plugin import adapter
from tests.support.core_plugin import inject, received

MODULE = "room"
STATE = "v2/notifyPluginState"
METRIC = "v2/notifyPluginMetric"
UPDATE = "v2/notifyPluginUpdate"

CARDS = """
[[adapters.allxon.modules]]
moduleName = "room"
properties = [{ name = "site", displayType = "string", value = "HQ" }]
states = [{ name = "power", displayType = "string" }, { name = "mode", displayType = "string" }]
metrics = [{ name = "temp", displayType = "temperature" }]
events = [{ name = "door" }]
alarms = [{ name = "hot" }, { name = "cold" }]
configs = [{ name = "schedule", params = [{ name = "start", displayType = "string" }] }]
[[adapters.allxon.modules.commands]]
name = "reboot"
params = [{ name = "delay", displayType = "string", required = true },
          { name = "mode", displayType = "list", displayValues = ["soft", "hard"], defaultValue = "soft" }]
[[adapters.allxon.modules.commands]]
name = "slow"
[[adapters.allxon.modules.commands]]
name = "unrouted"
"""


SETTINGS: dict[str, Any] = {
    "app_name": "junction-test",
    "flush_interval_s": 0.1,
    "announce_grace_s": 0.5,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.3,
    "offline_retry_s": 0.5,
    "command_timeout_s": 5,
}


def toml_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


@pytest.fixture
def setup(
    tmp_path: Path, write_config: Callable[..., str], start_runtime: Any
) -> Callable[..., Any]:
    """``async with setup(sim, key=value...) as rt``: write the credential file and the config
    (allxon with ``SETTINGS`` updated by the keywords, probe, responder, collector and the
    routes between them) and start the bridge. ``ca=False`` leaves ``ca_file`` out;
    ``credential`` gives the bridge another credential than the simulator's."""
    allxon_plugin.reset()

    @asynccontextmanager
    async def run(
        sim: AllxonSimulator,
        *,
        ca: bool = True,
        routes: str | None = None,
        credential: PluginCredential | None = None,
        **settings: Any,
    ) -> AsyncIterator[Runtime]:
        cred = tmp_path / "plugin_credential.json"
        cred.write_bytes(encode_credential(credential or sim.credential))
        ca_path = tmp_path / "agent-ca.pem"
        ca_path.write_bytes(sim.ca_pem)
        values = {**SETTINGS, "url": sim.url, "credentials": str(cred)}
        if ca:
            values["ca_file"] = str(ca_path)
        values.update(settings)
        lines = "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items())
        text = f"""
[junction]
state_dir = "{tmp_path / "state"}"
restart_backoff_s = 0.05
[adapters.allxon]
type = "allxon_recorded"
{lines}
{CARDS}
[adapters.probe]
type = "probe"
[adapters.responder]
type = "responder"
silent_for = ["slow"]
states = {{ mode = "rebooting" }}
[adapters.sink]
type = "collector"
{routes if routes is not None else DEFAULT_ROUTES}
"""
        loaded: Loaded = load(
            write_config(text), extra_plugins=(*TEST_PLUGINS, "tests.support.allxon_plugin")
        )
        async with start_runtime(loaded) as rt:
            yield rt

    return run


DEFAULT_ROUTES = """
[[routes]]
name = "commands"
from = "allxon"
kind = "command_request"
match = { "body.command" = { in = ["reboot", "slow"] } }
to = "responder"
expects_reply = true
[[routes]]
name = "data"
from = "probe"
to = "allxon"
[[routes]]
name = "settings"
from = "allxon"
kind = ["alarm_update", "config_update"]
to = "sink"
"""


def data(*bodies: Any) -> list[Envelope]:
    return [Envelope(source="probe", body=b) for b in bodies]


async def connected(rt: Runtime, sim: AllxonSimulator, updates: int = 1) -> None:
    await wait_for(
        lambda: rt.statuses["allxon"].state == "connected" and sim.store.update_count >= updates,
        what=f"the adapter connected with {updates} announce(s)",
    )


async def final_ack(sim: AllxonSimulator, command_id: str) -> Any:
    await sim.wait_for(lambda s: s.commands[command_id].complete, timeout=10)
    return sim.commands[command_id]


# ------------------------------------------------------------------------- connecting


async def test_announces_first_on_connect_and_again_after_the_agent_drops_it(
    setup: Any,
) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            assert sim.store.calls_by_method[UPDATE] == 1
            declared = sim.modules[MODULE].declaration
            assert declared is not None and [c.name for c in declared.commands] == [
                "reboot",
                "slow",
                "unrouted",
            ]
            inject("probe", data(State(module=MODULE, name="power", value="on")))
            await sim.wait_for(lambda s: s.state(MODULE, "power") == "on", timeout=10)
            # the agent goes away; data produced meanwhile waits for the next connection
            sim.set_accepting(False)
            assert await sim.drop_connections() == 1
            await wait_for(lambda: rt.statuses["allxon"].state == "disconnected", what="drop")
            inject("probe", data(State(module=MODULE, name="power", value="off")))
            await trio.sleep(0.3)  # a few flush intervals with no link
            assert sim.state(MODULE, "power") == "on"
            sim.set_accepting(True)
            await sim.wait_for(lambda s: s.state(MODULE, "power") == "off", timeout=10)
            assert sim.store.update_count == 2 and sim.store.connections_total == 2
            assert rt.statuses["allxon"].reconnects == 1
            # the simulator refuses anything before the announce: nothing was refused
            assert sim.store.rejected == {}
            assert sim.store.calls_by_method[STATE] == 2


async def test_loopback_agent_without_ca_file_is_reached_without_verification(
    setup: Any,
) -> None:
    with trio.fail_after(20):
        async with open_allxon_simulator() as sim, setup(sim, ca=False) as rt:
            await connected(rt, sim)
            assert adapter("allxon").config.ca_file is None


async def test_a_ca_file_is_enforced_and_another_ca_is_refused(setup: Any, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(trustme.CA().cert_pem.bytes())
    with trio.fail_after(20):
        async with (
            open_allxon_simulator() as sim,
            setup(sim, ca_file=str(other), connect_timeout_s=1) as rt,
        ):
            await wait_for(
                lambda: (
                    rt.statuses["allxon"].state == "disconnected"
                    and "CERTIFICATE_VERIFY_FAILED" in rt.statuses["allxon"].detail
                ),
                what="a TLS verification failure",
            )
            assert sim.store.connections_total == 0 and sim.store.update_count == 0
            assert "CERTIFICATE_VERIFY_FAILED" in rt.statuses["allxon"].detail


# ------------------------------------------------------------------------- commands


async def test_command_is_accepted_routed_and_acked_with_its_result(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            command_id = await sim.send_command(MODULE, "reboot", {"delay": "5"})
            record = await final_ack(sim, command_id)
            assert record.states == ["ACCEPTED", "ACKED"]
            ack = record.acks[1]
            assert ack.module_name == MODULE and ack.command_source == "remote"
            assert ack.command_acks[0].name == "reboot"
            # the declared default filled the optional param; the responder echoes params
            assert ack.command_acks[0].result == {
                "response": "reboot done",
                "delay": "5",
                "mode": "soft",
            }
            # states carried by the result reach the Portal with the ack
            assert sim.state(MODULE, "mode") == "rebooting"
            (request,) = allxon_plugin.requests("responder")
            assert request.body.params == {"delay": "5", "mode": "soft"}  # type: ignore[union-attr]
            assert request.subject == "room/reboot" and request.deadline is not None
            # the result went through the outbox (command results persist) and was
            # acknowledged when its ack frame was sent
            await wait_for(
                lambda: rt.snapshot()["routes"]["commands"]["replies"] == 1,
                what="the reply acknowledged",
            )
            ledger = rt.snapshot()["routes"]["commands"]["ledger"]
            assert ledger["balanced"] and ledger["pending"] == 0, ledger
            assert "allxon/commands::reply" in rt.snapshot()["persist_queues"]
            assert rt.outbox is not None and rt.outbox.rows == 0


async def test_command_mapped_to_an_exec_is_acked_from_the_exec_result(setup: Any) -> None:
    routes = """
[adapters.echo]
type = "echo"
[[routes]]
name = "commands"
from = "allxon"
kind = "command_request"
to = "echo"
expects_reply = true
map = { kind = "exec_request", system = "sys-1", module = "Display", method = "reboot", args = [7] }
"""
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim, routes=routes) as rt:
            await connected(rt, sim)
            command_id = await sim.send_command(MODULE, "reboot", {"delay": "1"})
            record = await final_ack(sim, command_id)
            assert record.states == ["ACCEPTED", "ACKED"]
            assert record.acks[1].command_acks[0].result == {"response": "[7]"}


async def test_commands_rejected_unknown_missing_param_bad_choice_or_unrouted(
    setup: Any,
) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            cases = {
                "format_disk": ({}, "not declared"),
                "reboot": ({"mode": "hard"}, "missing required parameter(s) of 'reboot': delay"),
                "unrouted": ({}, "no route takes command room/unrouted"),
            }
            ids = {}
            for name, (params, _) in cases.items():
                ids[name] = await sim.send_command(MODULE, name, params)
            bad_choice = await sim.send_command(MODULE, "reboot", {"delay": "1", "mode": "warm"})
            await sim.wait_for(lambda s: all(s.commands[i].states for i in ids.values()), 10)
            for name, (_, reason) in cases.items():
                record = sim.commands[ids[name]]
                assert record.states == ["REJECTED"], name
                assert reason in record.acks[0].command_acks[0].result["response"], name
            await sim.wait_for(lambda s: s.commands[bad_choice].states, timeout=10)
            assert sim.commands[bad_choice].states == ["REJECTED"]
            assert allxon_plugin.requests("responder") == []  # none was routed
            assert adapter("allxon").stats.commands["rejected"] == 4


async def test_command_without_a_reply_is_errored_on_timeout(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim, command_timeout_s=1) as rt:
            await connected(rt, sim)
            command_id = await sim.send_command(MODULE, "slow")
            record = await final_ack(sim, command_id)
            assert record.states == ["ACCEPTED", "ERRORED"]
            assert "no reply" in record.acks[1].command_acks[0].result["response"]
            assert len(allxon_plugin.requests("responder")) == 1  # it was routed, then timed out


# ------------------------------------------------------------------------- outbound data


async def test_states_coalesce_to_the_latest_value_per_name(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim, flush_interval_s=0.5) as rt:
            await connected(rt, sim)
            values = [State(module=MODULE, name="power", value=f"v{i}") for i in range(50)]
            inject("probe", data(*values, State(module=MODULE, name="mode", value="eco")))
            await sim.wait_for(lambda s: s.state(MODULE, "power") == "v49", timeout=10)
            assert sim.state(MODULE, "mode") == "eco"
            assert sim.store.calls_by_method[STATE] == 1  # one frame ...
            assert sim.modules[MODULE].state_updates == 2  # ... with one value per name
            assert adapter("allxon").outbox.coalesced_states == 49


async def test_metric_flood_stays_within_budget_and_2kb_and_counts_what_it_dropped(
    setup: Any,
) -> None:
    # One data token: the first flush sends one (full) frame, everything after waits and
    # coalesces. 10 calls an hour with 3 kept for the announce and acks.
    extra = {
        "budget_per_hour": 10,
        "bucket_size": 1,
        "reserve_calls": 3,
        "undeclared": "send",
        "max_buffered_metrics": 200,
    }
    with trio.fail_after(40):
        async with open_allxon_simulator(budget=10) as sim, setup(sim, **extra) as rt:
            await connected(rt, sim)
            names, total = 60, 3000

            def delivered() -> int:
                return int(rt.snapshot()["routes"]["data"]["delivered"])

            for start in range(0, total, 500):
                batch = [
                    Metric(module=MODULE, name=f"m{i % names}", value=i + 0.25)
                    for i in range(start, start + 500)
                ]
                inject("probe", data(*batch))
                # the route's queue holds 1000: feed it as the adapter takes
                goal = start + 500
                await wait_for(lambda: delivered() == goal, what="delivery")  # noqa: B023
            await sim.wait_for(lambda s: s.store.calls_by_method[METRIC] == 1, timeout=10)
            await trio.sleep(1.0)  # ten more flushes: the bucket is empty, nothing more goes
            allxon = adapter("allxon")
            reached = len(sim.modules[MODULE].metrics)
            dropped = allxon.outbox.dropped["metric superseded"]
            dropped += allxon.outbox.dropped["metric buffer full"]
            buffered = len(allxon.outbox.metrics)
            assert sim.store.calls_by_method[METRIC] == 1 and sim.store.calls == 2
            assert reached + dropped + buffered == total  # nothing lost without a count
            assert 0 < buffered <= 200 and dropped >= total - 200 - reached
            assert sim.store.largest_frame <= 2048 and allxon.stats.largest_frame <= 2048
            assert allxon.stats.largest_frame > 1500  # frames are filled, not one per sample
            assert sim.store.rejected == {}  # neither the 2 KB limit nor the budget was hit
            assert allxon.budget.used() == sim.budget.used() == 2
            allxon._refresh_status()  # what /metrics exports: the data calls left, 5 of 7
            assert allxon.status.gauges["allxon_budget_remaining_ratio"] == pytest.approx(5 / 7)
            counters = allxon.counters()
            assert counters["dropped"]["metric superseded"] > 0 and counters["sign_calls"] == 2
            # the reserve still lets a command through while data waits for tokens
            command_id = await sim.send_command(MODULE, "reboot", {"delay": "0"})
            assert (await final_ack(sim, command_id)).states == ["ACCEPTED", "ACKED"]
            assert sim.store.calls == 4 <= 10
            assert sim.store.calls_by_method[METRIC] == 1
            text = f"{sum(allxon.outbox.dropped.values())} dropped"
            await wait_for(lambda: text in rt.statuses["allxon"].detail, what="the status detail")


async def test_alerts_are_sent_only_for_alarms_the_portal_enabled(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            hot = Alert(module=MODULE, alarm="hot", action="trigger", message="31 C")
            cold = Alert(module=MODULE, alarm="cold", action="trigger", message="12 C")
            inject("probe", data(hot))
            allxon = adapter("allxon")
            await wait_for(lambda: allxon.outbox.dropped["alarm not enabled"] == 1, what="drop")
            await sim.send_alarm_update(
                [
                    AlarmModuleSettings(
                        module_name=MODULE,
                        alarms=[
                            AlarmSetting(
                                name="hot",
                                enabled=True,
                                params=[NamedValue(name="limit", value="303")],
                            ),
                            AlarmSetting(name="cold", enabled=False),
                            AlarmSetting(name="ghost", enabled=True),
                        ],
                    )
                ]
            )
            await wait_for(
                lambda: any(
                    isinstance(e.body, AlarmUpdate) and e.body.alarms for e in received("sink")
                ),
                what="the alarm update at the sink",
            )
            inject("probe", data(hot, cold))
            await sim.wait_for(lambda s: len(s.modules[MODULE].alerts) == 1, timeout=10)
            (alert,) = sim.modules[MODULE].alerts
            assert alert.enabled and alert.item.name == "hot" and alert.item.message == "31 C"
            assert allxon.outbox.dropped["alarm not enabled"] == 2
            update = next(
                e.body
                for e in received("sink")
                if isinstance(e.body, AlarmUpdate) and e.body.alarms
            )
            assert isinstance(update, AlarmUpdate)
            assert [(a.name, a.enabled, a.params) for a in update.alarms] == [
                ("hot", True, {"limit": "303"}),
                ("cold", False, {}),
            ]  # the undeclared "ghost" is ignored
            assert allxon.stats.ignored_settings == 1
            # the alerts of disabled alarms are dead letters of the route, not "delivered";
            # the sent one left the outbox when its frame went out
            await wait_for(
                lambda: rt.snapshot()["routes"]["data"]["ledger"]["pending"] == 0,
                what="the data route settled",
            )
            ledger = rt.snapshot()["routes"]["data"]["ledger"]
            assert ledger["balanced"], ledger
            assert (ledger["delivered"], ledger["dead_lettered"]) == (1, 2)
            assert rt.outbox is not None and rt.outbox.rows == 0
            reasons = {why for _r, _s, why, *_ in peek(rt, Outbox.dead_summary)}
            assert reasons == {
                f"allxon: alarm room/{name} is not enabled in the Portal"
                for name in ("hot", "cold")
            }


async def test_an_alert_before_the_portals_alarm_settings_is_held_not_lost(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator(send_initial_updates=False) as sim, setup(sim) as rt:
            await connected(rt, sim)
            allxon = adapter("allxon")
            inject(
                "probe", data(Alert(module=MODULE, alarm="hot", action="trigger", message="31 C"))
            )
            await wait_for(lambda: len(allxon.held_alerts) == 1, what="the alert held")
            assert allxon.outbox.dropped["alarm not enabled"] == 0
            # held, so not acknowledged: still pending, and in the outbox (alerts persist)
            ledger = rt.snapshot()["routes"]["data"]["ledger"]
            assert (ledger["pending"], ledger["delivered"], ledger["balanced"]) == (1, 0, True)
            assert rt.outbox is not None and rt.outbox.rows == 1
            await sim.send_alarm_update(
                [
                    AlarmModuleSettings(
                        module_name=MODULE, alarms=[AlarmSetting(name="hot", enabled=True)]
                    )
                ]
            )
            await sim.wait_for(lambda s: len(s.modules[MODULE].alerts) == 1, timeout=10)
            (alert,) = sim.modules[MODULE].alerts
            assert alert.item.name == "hot" and alert.item.message == "31 C"
            assert allxon.held_alerts == [] and allxon.outbox.dropped["alarm not enabled"] == 0
            await wait_for(
                lambda: rt.snapshot()["routes"]["data"]["ledger"]["delivered"] == 1,
                what="the alert acknowledged once its frame was sent",
            )
            assert rt.outbox.rows == 0


async def test_config_update_reaches_a_route(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            await sim.send_config_update(
                [
                    ConfigModuleSettings(
                        module_name=MODULE,
                        configs=[
                            ConfigSetting(
                                name="schedule", params=[NamedValue(name="start", value="08:00")]
                            )
                        ],
                    ),
                    ConfigModuleSettings(module_name="ghost", configs=[]),
                ]
            )
            await wait_for(
                lambda: any(
                    isinstance(e.body, ConfigUpdate) and e.body.configs for e in received("sink")
                ),
                what="the config update at the sink",
            )
            (env,) = [
                e for e in received("sink") if isinstance(e.body, ConfigUpdate) and e.body.configs
            ]
            assert env.source == "allxon" and env.subject == "room/configs"
            assert isinstance(env.body, ConfigUpdate)
            assert env.body.module == MODULE
            assert [(c.name, c.params) for c in env.body.configs] == [
                ("schedule", {"start": "08:00"})
            ]


async def test_property_change_is_announced_again(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            inject("probe", data(Property(module=MODULE, name="site", value="HQ")))  # unchanged
            inject("probe", data(Property(module=MODULE, name="site", value="Lab")))
            await sim.wait_for(lambda s: s.store.update_count == 2, timeout=10)
            declared = sim.modules[MODULE].declaration
            assert declared is not None and declared.properties[0].value == "Lab"
            await trio.sleep(0.3)
            assert sim.store.update_count == 2  # the unchanged value announced nothing


async def test_envelopes_that_can_never_be_sent_are_dead_lettered(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            inject(
                "probe",
                data(
                    State(module=MODULE, name="nope", value="x"),
                    Event(module=MODULE, name="door", value="x" * 600),
                    Metric(module="other", name="temp", value=1.0),
                    Event(module=MODULE, name="door", value="opened"),
                ),
            )
            await wait_for(
                lambda: rt.snapshot()["routes"]["data"]["dead_lettered"] == 3, what="3 failed"
            )
            await sim.wait_for(lambda s: len(s.modules[MODULE].events) == 1, timeout=10)
            assert sim.modules[MODULE].events[0].value == "opened"


# ------------------------------------------------------------------------- faults


async def test_a_frame_failing_verification_is_dropped_and_counted(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            command = PluginCommand(
                params=CommandParams(
                    app_guid=sim.credential.app_guid,
                    epoch=epoch_str(1700000000),
                    command_id="tampered-1",
                    module_name=MODULE,
                    commands=[
                        CommandInvocation(
                            name="reboot", params=[NamedValue(name="delay", value="1")]
                        )
                    ],
                )
            )
            signed = await trio.to_thread.run_sync(
                sign_frame, encode_message(command), sim.credential.access_key
            )
            await sim.send_raw(signed.replace('"delay","value":"1"', '"delay","value":"9"'))
            await sim.send_raw(encode_message(command))  # unsigned
            allxon = adapter("allxon")
            await wait_for(lambda: allxon.stats.bad_signatures == 2, what="two bad frames")
            assert "tampered-1" not in sim.commands  # never acked, never routed
            assert allxon_plugin.requests("responder") == []
            # an error frame in the docs' typo form is read by its meaning, and logged only
            await sim.send_raw(
                '{"jsonrpc":"2.0","error":{"code":"-326000","message":"epoch too far off"},'
                '"id":null}'
            )
            await wait_for(lambda: allxon.stats.agent_errors["invalid_request"] == 1, what="-32600")
            assert rt.statuses["allxon"].state == "connected"
            # the link is fine: a proper command still works
            command_id = await sim.send_command(MODULE, "reboot", {"delay": "2"})
            assert (await final_ack(sim, command_id)).states == ["ACCEPTED", "ACKED"]
            await wait_for(  # the detail is refreshed every flush interval
                lambda: "2 bad frames" in rt.statuses["allxon"].detail, what="the status detail"
            )


async def test_hostile_frames_are_dropped_counted_and_logged_once(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17, item 1: whatever the agent sends, the frame is dropped and counted, the
    connection stays, later frames flow, and one line covers the burst. A signed command
    whose argument nests past the 128-level bound is refused before anything acts on it."""

    def command(command_id: str, value: Any) -> str:
        return encode_message(
            PluginCommand(
                params=CommandParams(
                    app_guid=sim.credential.app_guid,
                    epoch=epoch_str(1700000000),
                    command_id=command_id,
                    module_name=MODULE,
                    commands=[
                        CommandInvocation(name="reboot", params=[NamedValue(name="d", value=value)])
                    ],
                )
            )
        )

    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            deep: Any = "x"
            for _ in range(140):
                deep = [deep]
            signed_deep = await trio.to_thread.run_sync(
                sign_frame, command("deep-1", deep), sim.credential.access_key
            )
            plain = command("plain-1", "SPOT")
            hostile: list[str | bytes] = [
                signed_deep,
                plain.replace('"SPOT"', "[" * 30_000 + "]" * 30_000),  # under the 64 KiB limit
                plain.replace('"SPOT"', "1" + "0" * 5000),
                plain.replace('"SPOT"', "NaN"),
                plain.replace('"SPOT"', '"\\ud800"'),
                plain.encode().replace(b"SPOT", b"\xff\xfe"),  # binary, invalid UTF-8
                '{"jsonrpc":2 not json',
            ]
            for frame in hostile:
                await sim.send_raw(frame)
            allxon = adapter("allxon")
            await wait_for(lambda: allxon.stats.malformed == len(hostile), what="all counted")
            command_id = await sim.send_command(MODULE, "reboot", {"delay": "2"})
            assert (await final_ack(sim, command_id)).states == ["ACCEPTED", "ACKED"]
            assert "deep-1" not in sim.commands and allxon.stats.bad_signatures == 0
            assert sim.store.connections_total == 1 and rt.statuses["allxon"].restarts == 0
    lines = [r.getMessage() for r in caplog.records if "ignored a frame" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "more than 128 levels" in lines[0]


async def test_device_offline_keeps_data_and_announces_again_later(setup: Any) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            sim.set_offline(True)
            inject("probe", data(State(module=MODULE, name="power", value="standby")))
            await wait_for(lambda: rt.statuses["allxon"].state == "offline", what="offline")
            assert sim.state(MODULE, "power") is None
            assert sim.store.rejected[Rejection.OFFLINE] >= 1
            sim.set_offline(False)
            await sim.wait_for(lambda s: s.state(MODULE, "power") == "standby", timeout=10)
            await connected(rt, sim, updates=2)
            allxon = adapter("allxon")
            assert allxon.stats.agent_errors["device_offline"] >= 1
            assert allxon.stats.requeued >= 1
            assert sim.store.connections_total == 1  # the same connection, re-announced


async def test_a_wrong_access_key_shows_as_a_refused_announce(setup: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim:
            wrong = PluginCredential(app_guid=sim.credential.app_guid, access_key="e" * 32)
            async with setup(sim, credential=wrong) as rt:  # the agent keeps the right one
                await wait_for(
                    lambda: rt.statuses["allxon"].state == "announce-refused",
                    what="the refused announce",
                )
                inject("probe", data(State(module=MODULE, name="power", value="on")))
                await sim.wait_for(lambda s: s.store.rejected[Rejection.SIGNATURE] >= 2, 10)
                assert sim.store.calls == 0 and sim.state(MODULE, "power") is None
                sent = adapter("allxon").stats.frames_by_method
                assert set(sent) == {UPDATE} and sent[UPDATE] >= 2  # only announces, retried
