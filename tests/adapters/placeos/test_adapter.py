"""The PlaceOS adapter against the PlaceOS simulator, over real loopback WebSockets.

The simulator runs in the test's trio loop; the bridge (router, adapters, their own trio
loops) runs in threads beside it.  A ``probe`` adapter injects exec/bind requests and
records the replies; a ``collector`` records status changes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio

from adapters.placeos.sim import open_placeos_simulator
from broker._envelope import Bind, Envelope, ExecRequest, ExecResult, StatusChange
from broker._runtime import Loaded
from tests.conftest import wait_for
from tests.support.core_plugin import inject, received

KEY = "test-key.s3cr3t-value"

MODEL: dict[str, Any] = {
    "systems": [
        {
            "id": "sys-1",
            "name": "Room 1",
            "modules": [
                {
                    "id": "mod-ENV",
                    "name": "Environment",
                    "index": 1,
                    "status": {"temperature": 21.5, "humidity": 40, "occupied": None},
                },
                {
                    "id": "mod-DISP",
                    "name": "Display",
                    "index": 1,
                    "status": {"power": False},
                    "methods": {
                        "power": {"set": {"power": "$0"}, "return": "$0"},
                        "slow": {"delay_s": 0.6, "return": "slow"},
                        "fast": {"return": "fast"},
                        "broken": {"raise": "lamp failure"},
                    },
                },
            ],
        }
    ],
}


def config(url: str, extra: str = "", bindings: str | None = None) -> str:
    if bindings is None:
        bindings = (
            'bindings = [{ sys = "sys-1", mod = "Environment", name = "temperature" },\n'
            '            { sys = "sys-1", mod = "Environment", name = "occupied" },\n'
            '            { sys = "sys-1", mod = "Display", name = "power" }]'
        )
    return f"""
[junction]
restart_backoff_s = 0.05
[adapters.placeos]
type = "placeos"
url = "{url}"
api_key = "{KEY}"
backoff_initial_s = 0.05
backoff_max_s = 0.2
exec_timeout_s = 2.0
{bindings}
{extra}
[adapters.sink]
type = "collector"
[adapters.probe]
type = "probe"
[[routes]]
name = "statuses"
from = "placeos"
kind = "status_change"
to = "sink"
[[routes]]
name = "exec"
from = "probe"
kind = ["exec_request", "bind"]
to = "placeos"
expects_reply = true
reply_timeout_s = 10
"""


def statuses() -> list[StatusChange]:
    return [e.body for e in received("sink") if isinstance(e.body, StatusChange)]


def values_of(name: str) -> list[Any]:
    return [s.value for s in statuses() if s.name == name]


def replies() -> dict[str | None, ExecResult]:
    return {e.correlation_id: e.body for e in received("probe") if isinstance(e.body, ExecResult)}


def exec_request(cid: str, method: str, *args: Any, module: str = "Display") -> Envelope:
    return Envelope(
        source="probe",
        correlation_id=cid,
        body=ExecRequest(system="sys-1", module=module, method=method, args=list(args)),
    )


def binds(session: Any) -> Counter[tuple[str, str, int, str]]:
    """How many times each key was bound on one simulator session."""
    return Counter(
        (r.sys, r.mod, r.index, r.name)
        for r in session.received
        if r.__class__.__name__ == "BindRequest"
    )


async def test_bind_values_changes_and_null(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url))) as rt:
                # current values of statuses that exist arrive after the bind; `occupied` is null
                await wait_for(lambda: len(statuses()) == 3, what="3 initial values")
                assert values_of("temperature") == [21.5]
                assert values_of("power") == [False]
                assert values_of("occupied") == [None]
                sim.set_status("sys-1", "Environment", 1, "temperature", 22.0)
                sim.set_status(
                    "sys-1", "Environment", 1, "temperature", 22.0
                )  # no change: no notify
                sim.set_status("sys-1", "Environment", 1, "humidity", 55)  # not bound
                sim.set_status("sys-1", "Environment", 1, "temperature", {"c": 23, "ok": [1, None]})
                await wait_for(lambda: len(values_of("temperature")) == 3, what="two changes")
                assert values_of("temperature") == [21.5, 22.0, {"c": 23, "ok": [1, None]}]
                sim.delete_status("sys-1", "Environment", 1, "temperature")
                await wait_for(lambda: len(values_of("temperature")) == 4, what="the deletion")
                assert values_of("temperature")[-1] is None
                assert "humidity" not in {s.name for s in statuses()}
                env = next(e for e in received("sink") if e.body.name == "power")  # type: ignore[union-attr]
                assert env.subject == "sys-1/Display_1/power" and env.source == "placeos"
                assert rt.statuses["placeos"].state == "connected"


async def test_exec_round_trip_errors_and_out_of_order(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url))) as rt:
                await wait_for(lambda: rt.statuses["placeos"].state == "connected")
                inject(
                    "probe",
                    [
                        exec_request("slow", "slow"),
                        exec_request("fast", "fast"),
                        exec_request("on", "power", True),
                        exec_request("broken", "broken"),
                        exec_request("nomethod", "no_such_method"),
                        exec_request("nomodule", "x", module="Nope"),
                    ],
                )
                await wait_for(lambda: len(replies()) == 6, what="6 replies")
                r = replies()
                assert r["fast"] == ExecResult(ok=True, value="fast", code=200)
                assert r["slow"] == ExecResult(ok=True, value="slow", code=200)
                assert r["on"].ok and r["on"].value is True
                assert (r["broken"].ok, r["broken"].error, r["broken"].error_code) == (
                    False,
                    "request_failed",
                    3,
                )
                assert "lamp failure" in r["broken"].message
                assert (r["nomethod"].error, r["nomethod"].error_code) == ("bad_request", 1)
                assert (r["nomodule"].error, r["nomodule"].error_code) == ("module_not_found", 6)
                # the slow call was answered after the fast one, and both reached the right asker
                order = [e.correlation_id for e in received("probe")]
                assert order.index("fast") < order.index("slow")
                # the exec changed a status: the bound value follows
                await wait_for(lambda: values_of("power") == [False, True], what="power -> true")


@pytest.mark.parametrize("code", range(8))
async def test_every_error_code_has_a_name(
    code: int, load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url, bindings=""))) as rt:
                await wait_for(lambda: rt.statuses["placeos"].state == "connected")
                sim.script_error(code, f"scripted {code}", cmd="exec")
                inject("probe", [exec_request("x", "fast")])
                await wait_for(lambda: "x" in replies(), what="the error reply")
    result = replies()["x"]
    names = [
        "parse_error",
        "bad_request",
        "access_denied",
        "request_failed",
        "unknown_command",
        "system_not_found",
        "module_not_found",
        "unexpected_failure",
    ]
    assert (result.ok, result.error, result.error_code) == (False, names[code], code)
    assert result.message == f"scripted {code}"


async def test_silent_server_gives_a_timeout(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            cfg = config(sim.url, bindings="").replace(
                "exec_timeout_s = 2.0", "exec_timeout_s = 0.3"
            )
            async with start_runtime(load_config(cfg)) as rt:
                await wait_for(lambda: rt.statuses["placeos"].state == "connected")
                sim.delay_replies(3.0)
                inject("probe", [exec_request("t", "fast")])
                await wait_for(lambda: "t" in replies(), what="a timeout result")
                assert replies()["t"].error == "timeout"
                assert rt.statuses["placeos"].state == "connected"  # silence is not a dead link
                sim.delay_replies(0)


async def test_reconnect_restores_every_binding_once(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(30):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url))) as rt:
                await wait_for(lambda: len(statuses()) == 3, what="initial values")
                # a run-time bind, and a repeat of a configured one (must not be sent twice)
                inject(
                    "probe",
                    [
                        Envelope(
                            source="probe",
                            body=Bind(system="sys-1", module="Environment", name="humidity"),
                        ),
                        Envelope(
                            source="probe",
                            body=Bind(system="sys-1", module="Display", name="power"),
                        ),
                    ],
                )
                await wait_for(lambda: values_of("humidity") == [40], what="humidity bound")
                (first,) = sim.sessions
                sim.delay_replies(1.0)
                inject("probe", [exec_request("inflight", "fast")])
                await trio.sleep(0.2)
                assert sim.drop_connections() == 1
                await wait_for(lambda: "inflight" in replies(), what="in-flight exec failed")
                assert replies()["inflight"].error == "connection_lost"
                sim.delay_replies(0)
                await wait_for(
                    lambda: (
                        sim.sessions_opened == 2
                        and len(sim.sessions) == 1
                        and rt.statuses["placeos"].state == "connected"
                    ),
                    what="reconnected",
                )
                (second,) = sim.sessions
                await wait_for(lambda: sum(binds(second).values()) == 4, what="4 binds restored")
                assert set(binds(first)) == set(binds(second)) and len(binds(first)) == 4
                assert all(n == 1 for n in [*binds(first).values(), *binds(second).values()])
                sim.set_status("sys-1", "Environment", 1, "humidity", 41)
                await wait_for(lambda: values_of("humidity")[-1] == 41, what="values flow again")
                assert rt.statuses["placeos"].reconnects == 1


async def test_heartbeat_timeout_reconnects(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(30):
        async with open_placeos_simulator(
            MODEL, api_key=KEY, drift=False, pong_interval=None
        ) as sim:
            cfg = config(sim.url, "ping_interval_s = 0.2\ndead_after_s = 0.8", bindings="")
            async with start_runtime(load_config(cfg)) as rt:
                await wait_for(lambda: rt.statuses["placeos"].state == "connected")
                await trio.sleep(1.2)  # pongs keep a quiet connection alive
                assert sim.sessions_opened == 1
                sim.stop_answering_pings()
                await wait_for(lambda: sim.sessions_opened >= 2, what="a new connection")
                assert rt.statuses["placeos"].reconnects >= 1
                sim.resume_pings()


async def test_401_is_reported_clearly_without_the_key(
    load_config: Callable[[str], Loaded], start_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(20):
        async with open_placeos_simulator(MODEL, api_key="another.key", drift=False) as sim:
            async with start_runtime(load_config(config(sim.url))) as rt:
                await wait_for(
                    lambda: rt.statuses["placeos"].state == "auth-failed", what="auth-failed"
                )
                detail = rt.statuses["placeos"].detail
                assert "HTTP 401" in detail and "unknown X-API-Key" in detail
                assert "retry in" in detail
                await trio.sleep(0.5)
                assert len(sim.http_log) == 1  # a long back-off, not a tight loop
    text = caplog.text
    assert "HTTP 401" in text
    assert KEY not in text


async def test_thousand_bindings_on_one_connection(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    model = {
        "systems": [
            {
                "id": "sys-big",
                "modules": [
                    {
                        "id": "mod-S",
                        "name": "Sensors",
                        "index": 1,
                        "status": {f"s{i}": i for i in range(1000)},
                    }
                ],
            }
        ]
    }
    bindings = (
        "bindings = ["
        + ",\n".join(f'{{ sys = "sys-big", mod = "Sensors", name = "s{i}" }}' for i in range(1000))
        + "]"
    )
    with trio.fail_after(40):
        async with open_placeos_simulator(model, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url, bindings=bindings))):
                await wait_for(lambda: len(statuses()) == 1000, timeout=30, what="1000 values")
                assert sorted(s.value for s in statuses()) == list(range(1000))
                assert sim.sessions_opened == 1 and sim.bind_count() == 1000
                for i in range(0, 1000, 7):
                    sim.set_status("sys-big", "Sensors", 1, f"s{i}", -i)
                await wait_for(
                    lambda: len(statuses()) == 1000 + 142, what="142 changes (s0 = -0 is no change)"
                )


async def test_malformed_frames_are_counted_not_fatal(
    load_config: Callable[[str], Loaded], start_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url))) as rt:
                await wait_for(lambda: len(statuses()) == 3)
                session = sim.sessions[0]
                session.push('{"type": "notify", "id": "x"')
                session.push('{"type": "surprise", "id": 1}')
                session.push("x" * 5000 + KEY)
                sim.set_status("sys-1", "Environment", 1, "temperature", 30.0)
                await wait_for(lambda: values_of("temperature")[-1] == 30.0, what="still reading")
                adapter_status = rt.statuses["placeos"]
                assert adapter_status.state == "connected" and adapter_status.restarts == 0
                assert "3 malformed frames" in adapter_status.detail
    malformed = [r for r in caplog.records if "malformed frame" in r.getMessage()]
    assert len(malformed) == 1  # one line per 10 s for a burst (each frame is counted)
    assert all(len(r.getMessage()) < 400 for r in malformed)  # truncated
    assert KEY not in caplog.text


async def test_unbind_at_run_time_stops_the_values(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(20):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url))):
                await wait_for(lambda: len(statuses()) == 3)
                assert sim.bind_count(name="temperature") == 1
                inject(
                    "probe",
                    [
                        Envelope(
                            source="probe",
                            body=Bind(
                                system="sys-1", module="Environment", name="temperature", bind=False
                            ),
                        )
                    ],
                )
                await wait_for(lambda: sim.bind_count(name="temperature") == 0, what="unbound")
                sim.set_status("sys-1", "Environment", 1, "temperature", 99.0)
                sim.set_status("sys-1", "Display", 1, "power", True)
                await wait_for(lambda: values_of("power")[-1] is True, what="power still bound")
                assert 99.0 not in values_of("temperature")


async def test_debug_lines_become_log_envelopes(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    from broker._envelope import Debug, LogLine

    extra = '\n[[routes]]\nname = "logs"\nfrom = "placeos"\nkind = "log"\nto = "sink"\n'
    cfg = (
        config("URL", bindings="").replace(
            'kind = ["exec_request", "bind"]', 'kind = ["exec_request", "bind", "debug"]'
        )
        + extra
    )

    def lines() -> list[LogLine]:
        return [e.body for e in received("sink") if isinstance(e.body, LogLine)]

    with trio.fail_after(20):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(cfg.replace("URL", sim.url))) as rt:
                await wait_for(lambda: rt.statuses["placeos"].state == "connected")

                def asked(cmd: str) -> bool:
                    return any(r.__class__.__name__ == cmd for r in sim.received)

                inject(
                    "probe",
                    [Envelope(source="probe", body=Debug(system="sys-1", module="mod-DISP"))],
                )
                await wait_for(lambda: asked("DebugRequest"), what="the debug request")
                await trio.sleep(0.05)  # let the server attach the debugger
                assert sim.log("mod-DISP", "lamp hours 1200", "warning") == 1
                await wait_for(lambda: len(lines()) == 1, what="the log line")
                line = lines()[0]
                assert (line.level, line.message, line.fields["module_id"]) == (
                    "warning",
                    "lamp hours 1200",
                    "mod-DISP",
                )
                inject(
                    "probe",
                    [
                        Envelope(
                            source="probe",
                            body=Debug(system="sys-1", module="mod-DISP", enable=False),
                        )
                    ],
                )
                await wait_for(lambda: asked("IgnoreRequest"), what="the ignore request")
                await trio.sleep(0.05)
                assert sim.log("mod-DISP", "after ignore") == 0  # no session is debugging it now
