"""The command line as a user meets it: exit codes, messages, signals, log formats."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def junction(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def test_check_demo_table_passes() -> None:
    out = junction("check", "routes/demo.toml")
    assert out.returncode == 0, out.stderr
    assert "routes/demo.toml: OK" in out.stdout
    assert "temp-to-historian: room_temp [metric] -> historian" in out.stdout


def test_check_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[adapters.a]\ntype = "generatr"\n[[routes]]\nname = "r"\nfrom = "a"\nto = "b"\n'
    )
    out = junction("check", str(bad))
    assert out.returncode == 2
    assert "configuration errors:" in out.stderr
    assert (
        f"{bad}: adapters.a.type: unknown adapter type (got 'generatr'); did you mean 'generator'?"
        in out.stderr
    )
    assert "Traceback" not in out.stderr


def test_explain_shows_matches_and_outputs() -> None:
    env = json.dumps(
        {
            "source": "room_temp",
            "subject": "room-1/temperature",
            "body": {"kind": "metric", "module": "room-1", "name": "temperature", "value": 26.0},
        }
    )
    out = junction("explain", "routes/demo.toml", env)
    assert out.returncode == 0, out.stderr
    assert "3 of 4 routes match" in out.stdout
    assert '"message":"room-1 is at 26.0 C"' in out.stdout
    assert '"value":299.15' in out.stdout


def test_explain_rejects_a_non_envelope_with_an_example() -> None:
    out = junction("explain", "routes/demo.toml", '{"source": "x"}')
    assert out.returncode == 2
    assert "not an envelope" in out.stderr and "example:" in out.stderr


def test_sigterm_drains_and_exits_0_with_nothing_lost(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    sink = tmp_path / "out.jsonl"
    cfg.write_text(f"""
[junction]
state_dir = "{tmp_path / "state"}"
shutdown_grace_s = 20
[adapters.gen]
type = "generator"
kind = "metric"
body = {{ module = "m", name = "n", value = 1.0 }}
sequence_field = ""
rate = 0
count = 200000
[adapters.out]
type = "file"
path = "{sink}"
[[routes]]
name = "r"
from = "gen"
to = "out"
overflow = "block"
queue_size = 100000
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "--log-format", "json", "run", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not sink.exists() or sink.stat().st_size == 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any("SIGTERM received" in r["msg"] for r in records)
    stopped = next(r["msg"] for r in records if r["msg"].startswith("junction stopped"))
    matched = int(re.search(r"matched=(\d+)", stopped).group(1))  # type: ignore[union-attr]
    delivered = int(re.search(r"delivered=(\d+)", stopped).group(1))  # type: ignore[union-attr]
    lines = sink.read_text().count("\n")
    assert 0 < matched == delivered == lines
