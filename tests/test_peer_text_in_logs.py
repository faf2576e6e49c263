"""Peer text cannot forge log lines or drive a terminal (issue 17, item 2).

One test per path that carries a peer's words into a log line, each against the peer's
simulator over a real socket: the PlaceOS server's non-JSON frame and its error reply's
``msg``, the Allxon agent's non-JSON frame and its error's ``message``. Every captured
record is put through both formatters the bridge uses; no formatted line may hold a raw
control character, and the peer's text must be there, escaped. (The operations endpoint's
request line has its own test beside the endpoint's.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio

from adapters.allxon.sim import open_allxon_simulator
from adapters.placeos.sim import open_placeos_simulator
from broker import _logs as logs
from broker._runtime import Loaded
from tests.adapters.allxon.test_adapter import connected, setup  # noqa: F401 (fixture)
from tests.adapters.placeos.test_adapter import KEY, MODEL, config, values_of
from tests.conftest import wait_for

#: What a hostile peer would like an operator to read: a forged record on a line of its
#: own, a terminal title change, colour, a NUL and a bell.
FORGED = "\n12:00:00.000 ERROR   junction  all secrets printed below\x1b]0;owned\x07\x1b[31m\x00"
ESCAPED = (
    "\\n12:00:00.000 ERROR   junction  all secrets printed below\\x1b]0;owned\\x07\\x1b[31m\\x00"
)


def formatted(caplog: pytest.LogCaptureFixture, marker: str) -> list[str]:
    """Each record mentioning ``marker``, as the human and the JSON formatter write it."""
    human, machine = logs.HumanFormatter(), logs.JsonFormatter()
    out = []
    for record in caplog.records:
        if marker in record.getMessage():
            out.append(human.format(record))
            out.append(json.loads(machine.format(record))["msg"])
    return out


def assert_escaped(lines: list[str]) -> None:
    assert lines, "the peer's text was not logged at all"
    for line in lines:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line), repr(line)
        assert ESCAPED in line


async def test_placeos_non_json_frame(
    load_config: Callable[[str], Loaded], start_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            async with start_runtime(load_config(config(sim.url))):
                await wait_for(lambda: values_of("temperature") == [21.5], what="bound")
                sim.sessions[0].push("not json" + FORGED)
                await wait_for(lambda: bool(formatted(caplog, "malformed frame")), what="logged")
    assert_escaped(formatted(caplog, "malformed frame"))


async def test_placeos_error_reply_message(
    load_config: Callable[[str], Loaded], start_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            sim.script_error(4, "no such status" + FORGED, cmd="bind")
            async with start_runtime(load_config(config(sim.url))):
                await wait_for(lambda: bool(formatted(caplog, "failed: ")), what="bind refusal")
    assert_escaped(formatted(caplog, "failed: "))


async def test_allxon_non_json_frame_and_error_message(
    setup: Any,  # noqa: F811 (the fixture imported above)
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30):
        async with open_allxon_simulator() as sim, setup(sim) as rt:
            await connected(rt, sim)
            await sim.send_raw("not json" + FORGED)
            await wait_for(lambda: bool(formatted(caplog, "ignored a frame")), what="logged")
            await sim.send_raw(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "error": {"code": -32600, "message": "epoch too far off" + FORGED},
                        "id": None,
                    }
                )
            )
            await wait_for(lambda: bool(formatted(caplog, "epoch too far off")), what="logged")
    assert_escaped(formatted(caplog, "ignored a frame"))
    assert_escaped(formatted(caplog, "epoch too far off"))
