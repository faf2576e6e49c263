"""The PlaceOS simulator driven by a raw trio-websocket client over real loopback sockets.

Absence of a frame is proven without timing: the server answers one session's frames in order
through one queue, so when the reply to a later ``ping`` (or request) is the next frame, nothing
was sent for the earlier one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from adapters.placeos.codec import (
    PONG_FRAME,
    DebugFrame,
    ErrorFrame,
    Meta,
    NotifyFrame,
    ServerFrame,
    SuccessFrame,
    decode_server_frame,
    decode_value,
)
from adapters.placeos.sim import (
    EXAMPLE_MODEL,
    HttpExchange,
    ModelError,
    PlaceOSSimulator,
    load_model,
    open_placeos_simulator,
    serve_cli,
)

MODEL: dict[str, Any] = {
    "systems": [
        {
            "id": "sys-A",
            "name": "Room A",
            "modules": [
                {
                    "id": "mod-DISP",
                    "name": "Display",
                    "status": {"power": False, "input": "HDMI1"},
                    "methods": {
                        "power": {"set": {"power": "$0"}, "return": "$0", "log": "power -> $0"},
                        "slow": {"delay_s": 0.5, "return": "slow"},
                        "fast": {"return": "fast"},
                        "fail": {"raise": "device offline"},
                        "reset": {"security": "administrator", "return": True},
                        "clear": {"delete": ["input"]},
                    },
                },
                {"id": "mod-SEC", "name": "_Secret", "status": {"x": 1}},
            ],
        }
    ]
}
POWER = {"sys": "sys-A", "mod": "Display", "name": "power"}


@pytest.fixture
async def sim() -> AsyncIterator[PlaceOSSimulator]:
    async with open_placeos_simulator(MODEL) as simulator:
        yield simulator


@asynccontextmanager
async def connect(
    sim: PlaceOSSimulator, *, key: str | None = None, query: str = "", **headers: str
) -> AsyncIterator[WebSocketConnection]:
    extra = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    if key is None and not query and not headers:
        extra.append((b"X-API-Key", sim.api_key.encode()))
    elif key is not None:
        extra.append((b"X-API-Key", key.encode()))
    async with open_websocket_url(sim.url + query, extra_headers=extra, connect_timeout=5) as ws:
        yield ws


async def send(ws: WebSocketConnection, message: dict[str, Any] | str) -> None:
    await ws.send_message(message if isinstance(message, str) else json.dumps(message))


async def recv(ws: WebSocketConnection) -> ServerFrame:
    return decode_server_frame(await ws.get_message())


async def nothing_pending(ws: WebSocketConnection) -> None:
    """The next frame is the pong to a fresh ping: nothing else was queued before it."""
    await send(ws, "ping")
    assert await recv(ws) == PONG_FRAME


def bind(id_: int, **where: Any) -> dict[str, Any]:
    return {"id": id_, "cmd": "bind", **(where or POWER)}


def exec_(id_: int, name: str, *args: Any, **where: Any) -> dict[str, Any]:
    target = where or {"sys": "sys-A", "mod": "Display"}
    return {"id": id_, "cmd": "exec", **target, "name": name, "args": list(args)}


async def rejection(sim: PlaceOSSimulator, **kwargs: Any) -> ConnectionRejected:
    with pytest.raises(ConnectionRejected) as caught:
        async with connect(sim, **kwargs):
            pass
    return caught.value


# ----------------------------------------------------------------- authentication


async def test_api_key_in_header_or_query_is_accepted(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await nothing_pending(ws)
        async with connect(sim, query=f"?api-key={sim.api_key}&fixed_device=true") as ws:
            await nothing_pending(ws)
    assert [(e.status, e.credential) for e in sim.http_log] == [(101, "header"), (101, "query")]
    assert sim.sessions_opened == 2


async def test_unknown_key_is_401_with_the_servers_body(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        rejected = await rejection(sim, key="nope.nope")
        assert rejected.status_code == 401
        assert rejected.body is not None and json.loads(rejected.body) == {
            "error": "unknown X-API-Key"
        }
        # A bad key does not fall through to a good bearer token.
        sim.add_bearer_token("jwt-good")
        again = await rejection(sim, key="nope.nope", Authorization="Bearer jwt-good")
        assert again.status_code == 401
    assert sim.sessions_opened == 0
    assert all("nope" not in repr(e) for e in sim.http_log)  # credentials never recorded


async def test_no_credential_is_a_bare_401(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        rejected = await rejection(sim, key=None, query="?fixed_device=true")
    assert rejected.status_code == 401 and not rejected.body


async def test_bearer_token_in_header_or_query(sim: PlaceOSSimulator) -> None:
    sim.add_bearer_token("jwt-1", clearance="user")
    with trio.fail_after(10):
        async with connect(sim, Authorization="Bearer jwt-1") as ws:
            await nothing_pending(ws)
        async with connect(sim, query="?bearer_token=jwt-1") as ws:
            await nothing_pending(ws)
        assert (await rejection(sim, Authorization="Bearer jwt-2")).status_code == 401
    assert [e.credential for e in sim.http_log] == ["bearer", "bearer", "bearer"]


async def test_key_without_scope_is_403(sim: PlaceOSSimulator) -> None:
    sim.add_api_key("noscope.key", scoped=False)
    with trio.fail_after(10):
        assert (await rejection(sim, key="noscope.key")).status_code == 403


async def test_reject_auth_forces_a_status_until_cleared(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        sim.reject_auth(401)
        forced = await rejection(sim)
        assert forced.status_code == 401 and forced.body == b'{"error":"unknown X-API-Key"}'
        sim.reject_auth(503)
        assert (await rejection(sim)).status_code == 503
        sim.reject_auth(None)
        async with connect(sim) as ws:
            await nothing_pending(ws)
    assert [e.status for e in sim.http_log] == [401, 503, 101]


async def test_plain_http_authority_426_and_404(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=sim.http_url) as client:
            authority = await client.get("/auth/authority")
            upgrade_needed = await client.get(
                "/api/engine/v2/systems/control", headers={"X-API-Key": sim.api_key}
            )
            unauthenticated = await client.get("/api/engine/v2/systems/control?api-key=bad")
            missing = await client.get("/nothing/here")
            posted = await client.post("/auth/authority")
    assert authority.status_code == 200
    assert authority.json()["version"].startswith("2.")
    assert authority.headers["content-type"] == "application/json"
    assert upgrade_needed.status_code == 426 and upgrade_needed.headers["upgrade"] == "websocket"
    assert unauthenticated.status_code == 401
    assert unauthenticated.json() == {"error": "unknown X-API-Key"}
    assert missing.status_code == 404 and posted.status_code == 405
    assert sim.http_log[1] == HttpExchange(
        "GET", "/api/engine/v2/systems/control", False, 426, "header"
    )


async def test_websocket_on_another_path_is_404(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(
                f"ws://127.0.0.1:{sim.port}/elsewhere", connect_timeout=5
            ):
                pass
    assert caught.value.status_code == 404


# ----------------------------------------------------------------- bind semantics


async def test_bind_answers_success_then_the_current_value(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1))
            success = await recv(ws)
            assert isinstance(success, SuccessFrame) and success.id == 1
            assert success.meta is not None and success.meta.name == "power"
            notify = await recv(ws)
            assert isinstance(notify, NotifyFrame) and notify.id == 1
            assert decode_value(notify.value) is False and notify.meta == success.meta
    assert sim.received[0].id == 1


async def test_value_before_success_option() -> None:
    async with open_placeos_simulator(MODEL, value_before_success=True) as sim:
        with trio.fail_after(10):
            async with connect(sim) as ws:
                await send(ws, bind(1))
                assert isinstance(await recv(ws), NotifyFrame)
                assert isinstance(await recv(ws), SuccessFrame)


async def test_bind_of_a_missing_status_sends_no_value(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1, sys="sys-A", mod="Display", name="volume"))
            assert await recv(ws) == SuccessFrame(id=1, meta=Meta("sys-A", "Display", 1, "volume"))
            await nothing_pending(ws)
            sim.set_status("sys-A", "Display", 1, "volume", 11)
            notify = await recv(ws)
            assert isinstance(notify, NotifyFrame) and decode_value(notify.value) == 11


async def test_notifies_only_on_change(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1))
            await recv(ws), await recv(ws)
            assert sim.set_status("sys-A", "Display", 1, "power", True) is True
            notify = await recv(ws)
            assert isinstance(notify, NotifyFrame) and decode_value(notify.value) is True
            assert sim.set_status("sys-A", "Display", 1, "power", True) is False
            await nothing_pending(ws)
            sim.set_status("sys-A", "Display", 1, "power", {"nested": [1, 2]})
            notify = await recv(ws)
            assert isinstance(notify, NotifyFrame)
            assert decode_value(notify.value) == {"nested": [1, 2]}
            assert sim.status("sys-A", "Display", 1, "power") == {"nested": [1, 2]}


async def test_repeat_bind_is_idempotent_and_keeps_the_first_id(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1))
            await recv(ws), await recv(ws)
            await send(ws, bind(2))
            assert await recv(ws) == SuccessFrame(id=2, meta=Meta("sys-A", "Display", 1, "power"))
            await nothing_pending(ws)  # no second current value
            assert sim.bind_count() == 1 and sim.bind_count(name="power") == 1
            sim.set_status("sys-A", "Display", 1, "power", True)
            notify = await recv(ws)
            assert isinstance(notify, NotifyFrame) and notify.id == 1
            await nothing_pending(ws)  # one notify, not two


async def test_delete_sends_null_and_a_new_bind_gets_no_value(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1, sys="sys-A", mod="Display", name="input"))
            await recv(ws), await recv(ws)
            assert sim.delete_status("sys-A", "Display", 1, "input") is True
            notify = await recv(ws)
            assert isinstance(notify, NotifyFrame) and bytes(notify.value) == b"null"
            assert sim.delete_status("sys-A", "Display", 1, "input") is False
            await nothing_pending(ws)
            async with connect(sim) as other:
                await send(other, bind(7, sys="sys-A", mod="Display", name="input"))
                assert isinstance(await recv(other), SuccessFrame)
                await nothing_pending(other)


async def test_unknown_system_binds_and_values_arrive_when_it_appears(
    sim: PlaceOSSimulator,
) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1, sys="sys-NEW", mod="Sensor", index=2, name="lux"))
            success = await recv(ws)
            assert isinstance(success, SuccessFrame) and success.id == 1
            await nothing_pending(ws)
            sim.set_status("sys-NEW", "Sensor", 2, "lux", 300)
            notify = await recv(ws)
            assert isinstance(notify, NotifyFrame) and notify.id == 1
            assert decode_value(notify.value) == 300
            assert notify.meta is not None and notify.meta.index == 2


async def test_unbind_stops_notifies_and_unknown_unbind_is_success(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1))
            await recv(ws), await recv(ws)
            await send(ws, {"id": 2, "cmd": "unbind", **POWER})
            assert await recv(ws) == SuccessFrame(id=2)  # no meta
            assert sim.bind_count() == 0
            sim.set_status("sys-A", "Display", 1, "power", True)
            await nothing_pending(ws)
            await send(ws, {"id": 3, "cmd": "unbind", "sys": "x", "mod": "y", "name": "z"})
            assert await recv(ws) == SuccessFrame(id=3)


async def test_protected_module_needs_support_clearance(sim: PlaceOSSimulator) -> None:
    sim.add_api_key("user.key", clearance="user")
    target = {"sys": "sys-A", "mod": "_Secret", "name": "x"}
    with trio.fail_after(10):
        async with connect(sim, key="user.key") as ws:
            await send(ws, bind(1, **target))
            denied = await recv(ws)
            assert isinstance(denied, ErrorFrame) and denied.error_code == 2
            assert denied.msg == "attempted to access protected module"
        async with connect(sim) as ws:  # admin
            await send(ws, bind(1, **target))
            assert isinstance(await recv(ws), SuccessFrame)


async def test_a_thousand_bindings_on_one_connection(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            for i in range(1000):
                await send(ws, bind(i + 1, sys="sys-BIG", mod="Sensor", name=f"s{i}"))
            ids = set()
            for _ in range(1000):
                frame = await recv(ws)
                assert isinstance(frame, SuccessFrame)
                ids.add(frame.id)
            assert len(ids) == 1000 and sim.bind_count(sys="sys-BIG") == 1000
            for i in range(1000):
                sim.set_status("sys-BIG", "Sensor", 1, f"s{i}", i)
            seen = {}
            for _ in range(1000):
                frame = await recv(ws)
                assert isinstance(frame, NotifyFrame)
                seen[frame.id] = decode_value(frame.value)
            assert seen == {i + 1: i for i in range(1000)}
            assert sim.sessions[0].dropped_frames == 0


# ----------------------------------------------------------------- exec


async def test_exec_success_sets_status_and_returns_value(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1))
            await recv(ws), await recv(ws)
            await send(ws, exec_(2, "power", True))
            frames = [await recv(ws), await recv(ws)]
            notify = next(f for f in frames if isinstance(f, NotifyFrame))
            success = next(f for f in frames if isinstance(f, SuccessFrame))
            assert notify.id == 1 and decode_value(notify.value) is True
            assert success.id == 2 and success.code == 200
            assert success.meta == Meta("sys-A", "Display", 1, "power")
            assert isinstance(success.value, msgspec.Raw) and decode_value(success.value) is True
            await send(ws, exec_(3, "clear"))
            await send(ws, bind(4, sys="sys-A", mod="Display", name="input"))
            cleared = await recv(ws)
            assert isinstance(cleared, SuccessFrame) and cleared.id == 3
            assert isinstance(cleared.value, msgspec.Raw) and bytes(cleared.value) == b"null"
            assert await recv(ws) == SuccessFrame(id=4, meta=Meta("sys-A", "Display", 1, "input"))
            await nothing_pending(ws)  # "input" was deleted: no value after the bind


@pytest.mark.parametrize(
    ("request_", "error_code", "msg"),
    [
        (exec_(5, "fail"), 3, "module raised: device offline"),
        (exec_(5, "nope"), 1, "could not find function nope"),
        (exec_(5, "power", sys="sys-A", mod="Projector"), 6, "could not find module"),
        (exec_(5, "power", sys="sys-NONE", mod="Display"), 6, "could not find module"),
        (exec_(5, "power"), 3, "module raised: missing argument 0 for power (0 given)"),
    ],
)
async def test_exec_errors_as_the_server_sends_them(
    sim: PlaceOSSimulator, request_: dict[str, Any], error_code: int, msg: str
) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, request_)
            assert await recv(ws) == ErrorFrame(id=5, error_code=error_code, msg=msg, code=500)


async def test_privileged_method_needs_admin(sim: PlaceOSSimulator) -> None:
    sim.add_api_key("support.key", clearance="support")
    with trio.fail_after(10):
        async with connect(sim, key="support.key") as ws:
            await send(ws, exec_(1, "reset"))
            denied = await recv(ws)
            assert isinstance(denied, ErrorFrame) and denied.error_name == "ACCESS_DENIED"
        async with connect(sim) as ws:
            await send(ws, exec_(1, "reset"))
            assert isinstance(await recv(ws), SuccessFrame)


async def test_replies_come_out_of_order(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, exec_(1, "slow"))
            await send(ws, exec_(2, "fast"))
            first, second = await recv(ws), await recv(ws)
    assert isinstance(first, SuccessFrame) and isinstance(second, SuccessFrame)
    assert (first.id, second.id) == (2, 1)
    assert isinstance(second.value, msgspec.Raw) and decode_value(second.value) == "slow"


async def test_scripted_errors_cover_codes_the_server_never_sends(sim: PlaceOSSimulator) -> None:
    sim.script_error(5, "system not found", cmd="bind")
    sim.script_error(7, "unexpected", times=2)
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, exec_(1, "fast"))
            assert await recv(ws) == ErrorFrame(id=1, error_code=7, msg="unexpected", code=500)
            await send(ws, bind(2))
            assert await recv(ws) == ErrorFrame(
                id=2, error_code=5, msg="system not found", code=500
            )
            await send(ws, bind(3))
            assert await recv(ws) == ErrorFrame(id=3, error_code=7, msg="unexpected", code=500)
            await send(ws, bind(4))
            assert isinstance(await recv(ws), SuccessFrame)


# ----------------------------------------------------------------- unparseable frames


async def test_unparseable_frames_get_no_reply(sim: PlaceOSSimulator) -> None:
    bad = [
        "{not json",
        json.dumps({**bind(1), "id": "1"}),
        json.dumps({**bind(1), "cmd": "subscribe"}),
        json.dumps({**bind(1), "extra": True}),
        json.dumps({"id": 1, "cmd": "bind", "sys": "sys-A"}),
    ]
    with trio.fail_after(10):
        async with connect(sim) as ws:
            for text in bad:
                await send(ws, text)
            await ws.send_message(b'{"id":1,"cmd":"bind"}')  # binary: not read by the server
            await send(ws, bind(9))
            assert isinstance(first := await recv(ws), SuccessFrame) and first.id == 9
    assert sim.unparseable_count == 6 and sim.unparseable[0] == "{not json"
    assert [r.id for r in sim.received] == [9]


# ----------------------------------------------------------------- heartbeats


async def test_ping_pong_and_unsolicited_pong() -> None:
    async with open_placeos_simulator(MODEL, pong_interval=0.2) as sim:
        with trio.fail_after(10):
            async with connect(sim) as ws:
                assert await recv(ws) == PONG_FRAME  # unsolicited, nothing sent
                await nothing_pending(ws)
                assert sim.pings_received == 1
                await ws.ping(b"protocol-level")  # returns once the pong frame came back


async def test_stop_answering_pings_and_resume(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            sim.stop_answering_pings()
            await send(ws, "ping")
            await send(ws, bind(1))
            assert isinstance(await recv(ws), SuccessFrame)  # no pong came before it
            assert isinstance(await recv(ws), NotifyFrame)
            sim.resume_pings()
            await nothing_pending(ws)
    assert sim.pings_received == 2


async def test_stopped_pings_also_stop_unsolicited_pongs() -> None:
    async with open_placeos_simulator(MODEL, pong_interval=0.05) as sim:
        with trio.fail_after(10):
            sim.stop_answering_pings()
            async with connect(sim) as ws:
                await trio.sleep(0.3)  # several intervals, no pong queued
                await send(ws, bind(1))
                assert isinstance(await recv(ws), SuccessFrame)


# ----------------------------------------------------------------- faults


async def test_delay_replies(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            sim.delay_replies(0.5)
            await send(ws, {"id": 1, "cmd": "unbind", **POWER})
            await sim.wait_until(lambda: len(sim.received) == 1)
            sim.delay_replies(0)
            await send(ws, {"id": 2, "cmd": "unbind", **POWER})
            assert await recv(ws) == SuccessFrame(id=2)
            assert await recv(ws) == SuccessFrame(id=1)


async def test_drop_connections_abruptly_drops_bindings(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1))
            await recv(ws), await recv(ws)
            assert sim.drop_connections() == 1
            assert sim.bind_count() == 0 and sim.sessions == []
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
            assert (
                caught.value.reason is not None and caught.value.reason.code == 1006
            )  # no close frame: like a network failure
        async with connect(sim) as ws:  # after a reconnect, nothing is bound
            sim.set_status("sys-A", "Display", 1, "power", True)
            await nothing_pending(ws)
            await sim.wait_until(lambda: len(sim.sessions) == 1)
    assert sim.sessions_opened == 2


async def test_drop_connections_with_a_close_code(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await nothing_pending(ws)
            sim.drop_connections(code=1001)
            with pytest.raises(ConnectionClosed) as caught:
                await ws.get_message()
    assert caught.value.reason is not None and caught.value.reason.code == 1001


async def test_client_close_drops_the_sessions_bindings(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, bind(1))
            await recv(ws), await recv(ws)
            assert sim.bind_count() == 1
        await sim.wait_until(lambda: not sim.sessions)
    assert sim.bind_count() == 0


# ----------------------------------------------------------------- debug / ignore


async def test_debug_forwards_module_logs_until_ignore(sim: PlaceOSSimulator) -> None:
    debug = {"id": 4, "cmd": "debug", "sys": "sys-A", "mod": "mod-DISP", "name": "debug"}
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, debug)
            assert await recv(ws) == SuccessFrame(id=4)
            await send(ws, exec_(5, "power", True))
            line = await recv(ws)
            assert isinstance(line, DebugFrame)
            assert (line.id, line.mod, line.level, line.msg) == (
                4,
                "mod-DISP",
                "info",
                "power -> true",
            )
            assert line.meta is not None and line.meta.mod == "mod-DISP"
            assert isinstance(await recv(ws), SuccessFrame)
            assert sim.log("mod-DISP", "by hand", "warn") == 1
            line = await recv(ws)
            assert isinstance(line, DebugFrame) and (line.msg, line.level) == ("by hand", "warn")
            await send(ws, {**debug, "id": 6, "cmd": "ignore"})
            assert await recv(ws) == SuccessFrame(id=6)
            assert sim.log("mod-DISP", "unseen") == 0
            await nothing_pending(ws)


async def test_debug_of_an_unknown_module_id_fails(sim: PlaceOSSimulator) -> None:
    with trio.fail_after(10):
        async with connect(sim) as ws:
            await send(ws, {"id": 4, "cmd": "debug", "sys": "sys-A", "mod": "Display", "name": "d"})
            assert await recv(ws) == ErrorFrame(
                id=4, error_code=7, msg="failed to attach debugger", code=500
            )


# ----------------------------------------------------------------- model, drift, CLI


async def test_drift_moves_values_within_bounds() -> None:
    model = {
        "systems": [
            {
                "id": "sys-D",
                "modules": [
                    {
                        "id": "mod-ENV",
                        "name": "Environment",
                        "drift": {
                            "people": {
                                "min": 0,
                                "max": 3,
                                "step": 1,
                                "every_s": 0.01,
                                "decimals": 0,
                            }
                        },
                    }
                ],
            }
        ]
    }
    async with open_placeos_simulator(model, seed=3) as sim:
        with trio.fail_after(10):
            async with connect(sim) as ws:
                await send(ws, bind(1, sys="sys-D", mod="Environment", name="people"))
                values: list[Any] = []
                while len(set(values)) < 3:
                    frame = await recv(ws)
                    if isinstance(frame, NotifyFrame):
                        values.append(decode_value(frame.value))
    assert all(isinstance(v, int) and 0 <= v <= 3 for v in values)


def test_example_model_loads() -> None:
    model = load_model(EXAMPLE_MODEL)
    assert [s.id for s in model.systems] == ["sys-BOARDROOM", "sys-HUDDLE2"]
    display = model.systems[0].modules[0]
    assert display.methods["power"].set == {"power": "$0"}
    assert display.methods["factory_reset"].raises == "factory reset is disabled on site"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[systems]]\nid = "s"\nbogus = 1\n', "bogus"),
        ('[[systems]]\nid = "s"\n[[systems.modules]]\nid = "m"\nname = "A"\n'
         '[[systems.modules]]\nid = "m"\nname = "B"\n', "repeated"),
        ("[[systems]\n", "line"),
    ],
)  # fmt: skip
def test_bad_model_files_are_named_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "model.toml"
    path.write_text(text)
    with pytest.raises(ModelError, match=needle) as caught:
        load_model(path)
    assert str(path) in str(caught.value)


async def test_serve_cli_prints_its_url_and_serves(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_cli, ["--port", "0", "--api-key", "cli.key", "--seed", "1"])
            out = ""
            while "ws://" not in out:
                await trio.sleep(0.02)
                out += capsys.readouterr().out
            url = out.split("listening on ")[1].split()[0]
            assert "cli.key" not in out  # a key given by the user is not printed
            headers = [(b"X-API-Key", b"cli.key")]
            async with open_websocket_url(url, extra_headers=headers, connect_timeout=5) as ws:
                await ws.send_message(
                    json.dumps(bind(1, sys="sys-BOARDROOM", mod="Display", name="power"))
                )
                assert isinstance(decode_server_frame(await ws.get_message()), SuccessFrame)
            nursery.cancel_scope.cancel()


async def test_serve_cli_bad_model_and_help(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("systems = 3\n")
    assert await serve_cli(["--model", str(bad)]) == 2
    assert await serve_cli(["--help"]) == 0
    assert await serve_cli(["--port", "not-a-number"]) == 2


async def test_serve_cli_port_taken_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        assert await serve_cli(["--port", str(port)]) == 1
    finally:
        await listeners[0].aclose()
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


async def test_main_exits_0_on_ctrl_c() -> None:
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root), "PLACEOS_API_KEY": "env.key"}
    command = [sys.executable, "-m", "adapters.placeos.sim", "--port", "0"]
    proc = await trio.lowlevel.open_process(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(10):
            assert proc.stdout is not None
            out = b""
            while b"Ctrl-C" not in out:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"simulator exited early: {out!r}"
                out += chunk
            assert b"env.key" not in out and b"ws://127.0.0.1:" in out
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
