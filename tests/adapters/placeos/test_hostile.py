"""The PlaceOS adapter survives whatever the server sends (issue 17, item 1).

A frame the codec refuses -- a value of 5,000 digits, invalid UTF-8 in a binary frame, a
lone surrogate, nesting past the bound -- is dropped and counted; the connection stays,
later values keep flowing, and one log line covers the burst. A value that does not decode
used to raise out of the adapter (msgspec's error from ``decode_value``): it restarted,
bound again, got the value again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import trio

from adapters.placeos.sim import open_placeos_simulator
from broker._runtime import Loaded
from tests.adapters.placeos.test_adapter import (
    KEY,
    MODEL,
    config,
    exec_request,
    replies,
    values_of,
)
from tests.conftest import wait_for
from tests.support.core_plugin import inject

META = '"meta":{"sys":"sys-1","mod":"Environment","index":1,"name":"temperature"}'


def notify(value: str) -> str:
    return f'{{"id":1,"type":"notify","value":{value},{META}}}'


HOSTILE: list[str | bytes] = [
    notify("1" + "0" * 5000),  # over the 4,300-digit bound
    notify("-1e400"),  # beyond a double
    notify('"\\ud800"'),  # an escaped lone surrogate
    notify("[" * 129 + "]" * 129),  # over 128 levels with the frame's own
    notify("[" * 100_000 + "]" * 100_000),  # far past Python's recursion limit
    notify("NaN"),
    notify('"x"').encode().replace(b'"x"', b'"\xff\xfe"'),  # binary frame, invalid UTF-8
]


async def test_hostile_frames_are_dropped_counted_and_logged_once(
    load_config: Callable[[str], Loaded], start_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url))) as rt:
                await wait_for(lambda: values_of("temperature") == [21.5], what="bound")
                session = sim.sessions[0]
                for frame in HOSTILE:
                    session.push(frame)
                session.push(notify("22.5"))  # a good frame right behind them
                await wait_for(lambda: values_of("temperature")[-1] == 22.5, what="still read")
                sim.set_status("sys-1", "Environment", 1, "temperature", 30.0)
                await wait_for(lambda: values_of("temperature")[-1] == 30.0, what="still bound")
                status = rt.statuses["placeos"]
                assert status.restarts == 0 and status.state == "connected"
                assert len(sim.sessions) == 1  # the same connection throughout
                assert f"{len(HOSTILE)} malformed frames" in status.detail
    assert values_of("temperature") == [21.5, 22.5, 30.0]
    lines = [r.getMessage() for r in caplog.records if "malformed frame" in r.getMessage()]
    assert len(lines) == 1, lines  # one line for the burst
    assert "4,300 digits" in lines[0] and len(lines[0]) < 600


def _model_with_a_method_that_never_answers() -> dict[str, Any]:
    model = copy.deepcopy(MODEL)
    display = model["systems"][0]["modules"][1]
    display["methods"]["hang"] = {"delay_s": 60, "return": "never"}
    return model


async def test_an_exec_reply_whose_value_does_not_decode_is_answered_as_such(
    load_config: Callable[[str], Loaded], start_runtime: Any
) -> None:
    with trio.fail_after(30):
        async with open_placeos_simulator(
            _model_with_a_method_that_never_answers(), api_key=KEY, drift=False
        ) as sim:
            async with start_runtime(load_config(config(sim.url))) as rt:
                await wait_for(lambda: values_of("temperature") == [21.5], what="bound")
                session = sim.sessions[0]
                inject("probe", [exec_request("c1", "hang")])

                def sent() -> list[Any]:
                    return [r for r in session.received if r.__class__.__name__ == "ExecRequest"]

                await wait_for(lambda: len(sent()) == 1, what="the exec sent")
                session.push(f'{{"id":{sent()[0].id},"type":"success","value":1{"0" * 5000}}}')
                await wait_for(lambda: "c1" in replies(), what="an answer to c1")
                answer = replies()["c1"]
                assert not answer.ok and answer.error == "malformed_reply"
                assert "4,300 digits" in (answer.message or "")
                assert rt.statuses["placeos"].restarts == 0
                assert "1 malformed frames" in rt.statuses["placeos"].detail
