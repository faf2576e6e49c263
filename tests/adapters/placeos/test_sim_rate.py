"""``junction sim placeos --rate``: statuses set at a steady rate, each to a new integer.

Driven through ``serve_cli`` over a real loopback WebSocket, as ``bench/soak.py`` drives the
simulator in its own process.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import msgspec
import pytest
import trio
from trio_websocket import open_websocket_url

from adapters.placeos.codec import NotifyFrame, decode_server_frame
from adapters.placeos.sim import serve_cli
from adapters.placeos.sim._rate import parse_rate_status

#: one module whose ``count`` drifts fast (every 10 ms) between 0 and 5 -- unless --rate
#: drives it
MODEL = {
    "systems": [
        {
            "id": "sys-A",
            "modules": [
                {
                    "id": "mod-E",
                    "name": "Env",
                    "status": {"count": 3, "other": 0},
                    "drift": {"count": {"min": 0, "max": 5, "step": 1, "every_s": 0.01}},
                }
            ],
        }
    ]
}
KEY = "rate.key"


async def _start(nursery: trio.Nursery, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    nursery.start_soon(serve_cli, argv)
    out = ""
    while "ws://" not in out:
        await trio.sleep(0.02)
        out += capsys.readouterr().out
    return out.split("listening on ")[1].split()[0]


async def test_rate_sets_each_status_to_the_next_integer_and_stops_its_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.json"
    model.write_text(json.dumps(MODEL))
    argv = ["--port", "0", "--api-key", KEY, "--model", str(model), "--rate", "500"]
    argv += ["--rate-status", "sys-A/Env_1/count", "--rate-status", "sys-A/Env_1/other"]
    argv += ["--rate-start", "1000"]
    seen: dict[int, list[int]] = {1: [], 2: []}
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await _start(nursery, argv, capsys)
            headers = [(b"X-API-Key", KEY.encode())]
            async with open_websocket_url(url, extra_headers=headers, connect_timeout=5) as ws:
                for id_, name in ((1, "count"), (2, "other")):
                    bind = {"id": id_, "cmd": "bind", "sys": "sys-A", "mod": "Env", "name": name}
                    await ws.send_message(json.dumps(bind))
                while min(len(values) for values in seen.values()) < 50:
                    frame = decode_server_frame(await ws.get_message())
                    if isinstance(frame, NotifyFrame):
                        seen[frame.id].append(msgspec.json.decode(frame.value))
            nursery.cancel_scope.cancel()
    values = seen[1] + seen[2]
    # the model's own values (3, 0) and the drift's (0..5) never show: every value is one the
    # rate set, each once; the two statuses take turns, so each goes up by 2 every change
    assert min(values) >= 1000
    assert len(set(values)) == len(values)
    for series in seen.values():
        assert all(b - a == 2 for a, b in itertools.pairwise(series)), series


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "10"],  # no status to drive
        ["--rate-status", "sys-A/Env_1/count"],  # no rate
        ["--rate", "10", "--rate-status", "sys-A/Env/count"],  # no module index
        ["--rate", "10", "--rate-status", "sys-A/count"],
    ],
)
async def test_a_rate_without_its_statuses_or_a_bad_key_is_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert await serve_cli(["--port", "0", *argv]) == 2
    assert "--rate" in capsys.readouterr().err


def test_rate_status_names_a_status_as_the_envelope_subject_does() -> None:
    assert parse_rate_status("sys-boardroom/Environment_1/people_count") == (
        "sys-boardroom",
        "Environment",
        1,
        "people_count",
    )
    assert parse_rate_status("s/My_Mod_2/x") == ("s", "My_Mod", 2, "x")
