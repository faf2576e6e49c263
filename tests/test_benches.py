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
        ["not_stored", "failed", "dropped"],
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
