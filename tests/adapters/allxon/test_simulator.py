"""The Allxon agent simulator over real TLS loopback, driven by a raw trio-websocket client
that signs its frames with our signing module (and verifies the simulator's)."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from adapters.allxon.codec import (
    AgentError,
    AgentErrorFrame,
    AlarmModuleSettings,
    AlarmSetting,
    AlertItem,
    AlertParams,
    CardParam,
    CommandAckItem,
    CommandAckParams,
    CommandCard,
    EventCard,
    EventItem,
    EventParams,
    InboundFrame,
    MetricCard,
    MetricItem,
    MetricParams,
    Module,
    OctoMessage,
    PluginAlarmUpdate,
    PluginAlert,
    PluginCommand,
    PluginCommandAck,
    PluginConfigUpdate,
    PluginCredential,
    PluginEvent,
    PluginMetric,
    PluginState,
    PluginUpdate,
    StateCard,
    StateItem,
    StateParams,
    UpdateParams,
    decode_frame,
    encode_message,
)
from adapters.allxon.signing import sign_frame, verify_frame
from adapters.allxon.sim import (
    AllxonSimulator,
    NoPluginConnectedError,
    load_credential,
    main,
    open_allxon_simulator,
    serve_cli,
    write_dev_credential,
)
from adapters.allxon.sim._store import Rejection

MODULE = "room-1"


def update_message(guid: str, module: str = MODULE) -> PluginUpdate:
    return PluginUpdate(
        params=UpdateParams(
            app_guid=guid,
            app_name="junction",
            epoch="1664185099",
            sdk="3.4.2",
            version="1.0.0",
            modules=[
                Module(
                    module_name=module,
                    states=[StateCard(name="power", display_type="string")],
                    metrics=[MetricCard(name="temp", display_type="temperature")],
                    events=[EventCard(name="door")],
                    alarms=[],
                    commands=[
                        CommandCard(
                            name="say_hello",
                            params=[CardParam(name="person", display_type="string")],
                        )
                    ],
                )
            ],
        )
    )


def state_message(guid: str, value: str, module: str = MODULE) -> PluginState:
    return PluginState(
        params=StateParams(
            app_guid=guid,
            module_name=module,
            epoch="1664185100",
            states=[StateItem(name="power", value=value, time="1664185100")],
        )
    )


class RawPlugin:
    """A bare plugin: signs with our signing module in a worker thread, reads raw frames."""

    def __init__(self, ws: WebSocketConnection, credential: PluginCredential) -> None:
        self.ws = ws
        self.credential = credential

    async def send(self, message: OctoMessage, key: str | None = None) -> None:
        text = encode_message(message)
        signed = await trio.to_thread.run_sync(sign_frame, text, key or self.credential.access_key)
        await self.ws.send_message(signed)

    async def receive(self) -> tuple[str, InboundFrame]:
        raw = await self.ws.get_message()
        assert isinstance(raw, str)
        return raw, decode_frame(raw)

    async def receive_verified(self) -> InboundFrame:
        """A frame from the simulator whose signature we check as a plugin must."""
        raw, frame = await self.receive()
        verified = await trio.to_thread.run_sync(verify_frame, raw, self.credential.access_key)
        assert not isinstance(frame, AgentErrorFrame), frame
        assert verified.method == frame.method
        return frame

    async def expect_error(self, kind: AgentError) -> str:
        _, frame = await self.receive()
        assert isinstance(frame, AgentErrorFrame), frame
        assert frame.kind is kind, frame
        assert isinstance(frame.error.code, str)  # the agent writes codes as strings
        return frame.error.message

    async def declare(self) -> None:
        """Send the update and consume the two initial (signed) settings updates."""
        await self.send(update_message(self.credential.app_guid))
        assert isinstance(await self.receive_verified(), PluginAlarmUpdate)
        assert isinstance(await self.receive_verified(), PluginConfigUpdate)


@asynccontextmanager
async def connect(sim: AllxonSimulator) -> AsyncIterator[RawPlugin]:
    async with open_websocket_url(
        sim.url, ssl_context=sim.client_ssl_context(), connect_timeout=5, disconnect_timeout=2
    ) as ws:
        yield RawPlugin(ws, sim.credential)


async def test_update_first_then_initial_signed_settings_updates() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            assert sim.url == f"wss://127.0.0.1:{sim.port}" and sim.port > 0
            await plugin.send(update_message(sim.credential.app_guid))
            alarms = await plugin.receive_verified()
            configs = await plugin.receive_verified()
            assert isinstance(alarms, PluginAlarmUpdate) and alarms.params.module_settings() == []
            assert isinstance(configs, PluginConfigUpdate)
            assert configs.params.module_settings() == []
            assert sim.store.update is not None
            assert sim.modules[MODULE].declaration is not None
            assert sim.store.calls == 1
            assert sim.store.sent_by_method["v2/notifyPluginAlarmUpdate"] == 1


async def test_anything_before_the_update_is_refused_and_not_recorded() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            guid = sim.credential.app_guid
            await plugin.send(state_message(guid, "on"))
            message = await plugin.expect_error(AgentError.INVALID_REQUEST)
            assert "before v2/notifyPluginUpdate" in message
            assert sim.store.rejected[Rejection.UPDATE_FIRST] == 1
            assert sim.state(MODULE, "power") is None and sim.store.calls == 0
            # The connection stays open: the update is accepted afterwards.
            await plugin.declare()
            await plugin.send(state_message(guid, "on"))
            await sim.wait_for(lambda s: s.state(MODULE, "power") == "on", timeout=5)


async def test_bad_missing_or_tampered_signature_gets_32600() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            update = update_message(sim.credential.app_guid)
            await plugin.send(update, key="f" * 32)  # wrong key
            assert "mismatch" in await plugin.expect_error(AgentError.INVALID_REQUEST)
            await plugin.ws.send_message(encode_message(update))  # unsigned
            assert "unsigned" in await plugin.expect_error(AgentError.INVALID_REQUEST)
            signed = sign_frame(encode_message(update), sim.credential.access_key)
            await plugin.ws.send_message(signed.replace('"1.0.0"', '"1.0.1"'))  # one byte
            await plugin.expect_error(AgentError.INVALID_REQUEST)
            assert sim.store.rejected[Rejection.SIGNATURE] == 3
            assert sim.store.update is None and sim.store.calls == 0


async def test_malformed_and_wrong_direction_frames() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            await plugin.ws.send_message("{not json")
            await plugin.expect_error(AgentError.PARSE_ERROR)
            await plugin.ws.send_message(b"\x00binary")
            await plugin.expect_error(AgentError.PARSE_ERROR)
            # A plugin may not send agent -> plugin methods.
            await plugin.ws.send_message(
                '{"jsonrpc":"2.0","method":"v2/notifyPluginCommand","params":{"appGUID":"g",'
                '"epoch":"1","commandId":"c","moduleName":"m"}}'
            )
            assert "may not send" in await plugin.expect_error(AgentError.INVALID_REQUEST)
            assert sim.store.rejected[Rejection.PARSE] == 1
            assert sim.store.rejected[Rejection.BINARY] == 1
            assert sim.store.rejected[Rejection.WRONG_DIRECTION] == 1


async def test_invalid_declaration_and_wrong_app_guid_are_refused() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            await plugin.send(update_message("someone-else"))
            assert "unknown appGUID" in await plugin.expect_error(AgentError.INVALID_REQUEST)
            await plugin.send(update_message(sim.credential.app_guid, module="9-bad-name"))
            message = await plugin.expect_error(AgentError.INVALID_REQUEST)
            assert "modules[0].moduleName" in message
            assert sim.store.rejected[Rejection.APP_GUID] == 1
            assert sim.store.rejected[Rejection.DECLARATION] == 1
            assert sim.store.update is None


async def test_oversize_frame_gets_an_error_and_is_not_recorded() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            await plugin.declare()
            await plugin.send(state_message(sim.credential.app_guid, "x" * 3000))
            message = await plugin.expect_error(AgentError.INVALID_REQUEST)
            assert "limit 2048" in message
            assert sim.store.rejected[Rejection.OVERSIZE] == 1
            assert sim.store.largest_frame > 3000
            assert sim.state(MODULE, "power") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_rolling_budget() -> None:
    clock = FakeClock()
    with trio.fail_after(10):
        async with (
            open_allxon_simulator(budget=2, budget_window=60, clock=clock) as sim,
            connect(sim) as plugin,
        ):
            guid = sim.credential.app_guid
            await plugin.declare()  # call 1
            await plugin.send(state_message(guid, "a"))  # call 2
            await plugin.send(state_message(guid, "b"))  # over budget
            assert "budget of 2" in await plugin.expect_error(AgentError.INVALID_REQUEST)
            assert sim.state(MODULE, "power") == "a"
            assert sim.store.rejected[Rejection.BUDGET] == 1
            clock.now += 61  # the window rolls on
            await plugin.send(state_message(guid, "c"))
            await sim.wait_for(lambda s: s.state(MODULE, "power") == "c", timeout=5)
            assert sim.store.calls == 3


async def test_commands_acks_and_recording() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            guid = sim.credential.app_guid
            await plugin.declare()
            command_id = await sim.send_command(MODULE, "say_hello", {"person": "Buzz"})
            frame = await plugin.receive_verified()  # the plugin verifies our signature
            assert isinstance(frame, PluginCommand)
            assert frame.params.command_id == command_id and len(command_id) == 40
            assert frame.params.module_name == MODULE
            assert frame.params.commands[0].name == "say_hello"
            assert frame.params.commands[0].params[0].value == "Buzz"
            for state, value in (("ACCEPTED", None), ("ACKED", "greeted")):
                await plugin.send(
                    PluginCommandAck(
                        params=CommandAckParams(
                            app_guid=guid,
                            epoch="1",
                            command_id=command_id,
                            module_name=MODULE,
                            command_state=state,
                            command_acks=[
                                CommandAckItem(name="say_hello", result={"response": "Hi Buzz"})
                            ],
                            states=[StateItem(name="power", value=value)] if value else [],
                        )
                    )
                )
            await plugin.send(state_message(guid, "on"))
            await plugin.send(
                PluginMetric(
                    params=MetricParams(
                        app_guid=guid,
                        module_name=MODULE,
                        epoch="1",
                        metrics=[
                            MetricItem(name="temp", value="293.15", time="1"),
                            MetricItem(name="temp", value="294.15", time="2"),
                        ],
                    )
                )
            )
            await plugin.send(
                PluginEvent(
                    params=EventParams(
                        app_guid=guid,
                        module_name=MODULE,
                        epoch="1",
                        events=[EventItem(name="door", value="open")],
                    )
                )
            )
            await plugin.send(
                PluginAlert(
                    params=AlertParams(
                        app_guid=guid,
                        module_name=MODULE,
                        epoch="1",
                        alarms=[AlertItem(name="hot", action="trigger", time="3", message="!")],
                    )
                )
            )
            await sim.wait_for(lambda s: len(s.modules[MODULE].alerts) == 1, timeout=5)
            record = sim.commands[command_id]
            assert record.states == ["ACCEPTED", "ACKED"]
            assert record.complete and record.sequence_ok and record.final_state == "ACKED"
            assert record.acks[1].command_acks[0].result == {"response": "Hi Buzz"}
            module = sim.modules[MODULE]
            assert sim.state(MODULE, "power") == "on"  # latest wins over the ack's "greeted"
            assert module.state_updates == 2
            assert [m.value for m in module.metrics] == ["293.15", "294.15"]
            assert [e.value for e in module.events] == ["open"]
            assert module.alerts[0].item.name == "hot"
            assert module.alerts[0].enabled is False  # the initial alarm update disabled all
            assert sim.store.calls == 7
            table = sim.render()
            for needle in ("module room-1", "power", "on", "294.15 (2 samples)", "ACCEPTED->ACKED"):
                assert needle in table, table


async def test_alarm_update_enables_alarms_for_alerts() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            await plugin.declare()
            await sim.send_alarm_update(
                [
                    AlarmModuleSettings(
                        module_name=MODULE, alarms=[AlarmSetting(name="hot", enabled=True)]
                    )
                ]
            )
            frame = await plugin.receive_verified()
            assert isinstance(frame, PluginAlarmUpdate)
            assert frame.params.module_settings()[0].alarms[0].enabled is True
            assert sim.store.alarms_enabled == {(MODULE, "hot"): True}


async def test_offline_answers_32000_and_requires_a_new_update() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim, connect(sim) as plugin:
            guid = sim.credential.app_guid
            await plugin.declare()
            sim.set_offline(True)
            await plugin.send(state_message(guid, "x"))
            assert "offline" in await plugin.expect_error(AgentError.DEVICE_OFFLINE)
            sim.set_offline(False)
            await plugin.send(state_message(guid, "y"))
            await plugin.expect_error(AgentError.INVALID_REQUEST)  # update first, again
            await plugin.declare()
            await plugin.send(state_message(guid, "z"))
            await sim.wait_for(lambda s: s.state(MODULE, "power") == "z", timeout=5)
            assert sim.store.rejected[Rejection.OFFLINE] == 1
            assert sim.store.update_count == 2


async def test_drop_connections_and_reconnect() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim:
            async with connect(sim) as plugin:
                await plugin.declare()
                assert await sim.drop_connections(code=1001) == 1
                with pytest.raises(ConnectionClosed) as info:
                    await plugin.ws.get_message()
                assert info.value.reason is not None and info.value.reason.code == 1001
            await sim.wait_for(lambda s: s.connection_count == 0, timeout=5)
            with pytest.raises(NoPluginConnectedError):
                await sim.send_command(MODULE, "say_hello")
            async with connect(sim) as plugin:  # a new connection must declare again
                await plugin.send(state_message(sim.credential.app_guid, "on"))
                await plugin.expect_error(AgentError.INVALID_REQUEST)
            assert sim.store.connections_total == 2


async def test_refusing_connections() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim:
            sim.set_accepting(False)
            with pytest.raises(ConnectionRejected) as info:
                async with connect(sim):
                    pass
            assert info.value.status_code == 503


async def test_wait_for_times_out_with_the_rendered_state() -> None:
    with trio.fail_after(10):
        async with open_allxon_simulator() as sim:
            with pytest.raises(trio.TooSlowError, match="no plugin has declared itself"):
                await sim.wait_for(lambda s: s.modules["nope"].states, timeout=0.2)


async def test_cli_serves_and_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cred_path = tmp_path / "plugin_credential.json"
    ca_path = tmp_path / "ca.pem"
    argv = ["--port", "0", "--write-credentials", str(cred_path), "--ca-out", str(ca_path)]
    argv += ["--render-every", "0.1", "--command-every", "0.3"]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_cli, argv)
            out = ""
            while "wss://" not in out:
                await trio.sleep(0.02)
                out += capsys.readouterr().out
            match = re.search(r"wss://127\.0\.0\.1:\d+", out)
            assert match is not None, out
            url = match.group()
            credential = load_credential(cred_path)
            assert oct(cred_path.stat().st_mode & 0o777) == "0o600"
            assert credential.app_guid in out and credential.access_key not in out
            context = ssl.create_default_context(cafile=str(ca_path))
            async with open_websocket_url(url, ssl_context=context, connect_timeout=5) as ws:
                plugin = RawPlugin(ws, credential)
                await plugin.declare()
                frame = await plugin.receive_verified()  # the scheduled sample command
                assert isinstance(frame, PluginCommand)
                assert frame.params.commands[0].name == "say_hello"
                assert frame.params.commands[0].params[0].value == "sample"
                out = ""
                while "module room-1" not in out:
                    await trio.sleep(0.05)
                    out += capsys.readouterr().out
            nursery.cancel_scope.cancel()


def test_cli_without_credentials_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0"]) == 2
    assert "--credentials" in capsys.readouterr().err


def test_write_dev_credential_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    first = write_dev_credential(path)
    assert len(first.access_key) == 32
    with pytest.raises(FileExistsError):
        write_dev_credential(path)
    assert load_credential(path) == first


def test_ctrl_c_exits_zero(tmp_path: Path) -> None:
    code = (
        "import sys; from adapters.allxon.sim import main; "
        f"sys.exit(main(['--port', '0', '--write-credentials', {str(tmp_path / 'c.json')!r}, "
        "'--render-every', '0']))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "wss://127.0.0.1:" in line, line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
