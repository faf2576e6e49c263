"""Every benchmark still runs against the code as it is, on tiny settings.

Not a timed test: no figure is compared with a target (speed lives in bench/, measured on
purpose).  What is checked is that each bench finishes, prints its JSON line, moved data
through the bridge, and lost nothing -- so a change to the runtime or an adapter cannot
leave a bench broken until the next time someone measures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: bench script and arguments -> keys that must be above zero, keys that must be zero
BENCHES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "core": (["--envelopes", "5000", "--repeat", "1"], ["rate_1", "rate_1000"], []),
    "alphax": (
        ["--flood-s", "2", "--rate-s", "1", "--repeat", "1"],
        ["http_writes_per_s", "mqtt_writes_per_s"],
        [],
    ),
    "allxon": (["--updates", "200", "--repeat", "1"], ["calls"], ["dropped"]),
    "placeos": (["--flood-s", "2", "--rate-s", "1", "--repeat", "1"], ["msgs_per_s"], []),
    "outbox": (
        ["--flood-s", "2", "--rate-s", "1", "--repeat", "1"],
        ["persist_per_s", "memory_per_s"],
        [],
    ),
    "e2e": (
        ["--flood-s", "2", "--rate-s", "2", "--repeat", "1"],
        ["msgs_per_s", "http_per_s"],
        ["not_stored", "dead_lettered", "dropped"],
    ),
}


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            loaded: dict[str, Any] = json.loads(line)
            return loaded
    raise AssertionError(f"no JSON line in:\n{text[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHES))
def test_the_bench_runs_and_moves_data(name: str) -> None:
    args, above_zero, zero = BENCHES[name]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = _last_json(done.stdout)
    for key in above_zero:
        assert result[key] > 0, (key, result)
    for key in zero:
        assert result[key] == 0, (key, result)


#: the soak's figures (bench/soak.py) its JSON line must carry
SOAK_FIELDS = ("minutes", "rss_growth_pct", "fds_start", "fds_end", "restarts_done", "unaccounted")


@pytest.mark.slow
def test_the_soak_restarts_every_peer_and_accounts_for_every_envelope() -> None:
    # 12 s at 300 changes a second; every peer killed twice (each 6 s), mosquitto once
    args = ["--minutes", "0.2", "--rate", "300", "--restart-every", "6", "--down-s", "0.5"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), *args, "--sample-s", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = _last_json(done.stdout)
    assert all(key in result for key in SOAK_FIELDS), result
    assert result["minutes"] == 0.2
    assert result["restarts_done"] == result["restarts_planned"] == 7, result
    assert result["fds_start"] > 0 and result["fds_end"] > 0, result
    # the ledger balances once drained, and the HTTP leg's sink (which acknowledges only what
    # it stored) holds every envelope the route counted delivered, and every id the MQTT
    # leg's sink got; MQTT through a SIGKILLed broker is not held to that
    assert result["drained"] and result["pending"] == 0, result
    assert result["unaccounted"] == 0, result
    assert result["delivered_http"] > 0 and result["lost_http"] == 0, result
    assert result["only_mqtt"] == 0, result
    assert result["offered_pct"] >= 50, result  # the flow really ran at about --rate


def test_the_node_red_comparison_config_passes_check(tmp_path: Path) -> None:
    # ../shared/peers/node-red/run.sh runs the bridge on this file: a config rule that
    # refuses it (a one-letter token, say) would stop the comparison at its first run
    junction = Path(sys.executable).with_name("junction")
    done = subprocess.run(
        [str(junction), "check", str(ROOT / "bench" / "nodered_flow.toml")],
        env={"PATH": "/usr/bin:/bin", "JX_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nodered_flow.toml: OK" in done.stdout
