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


def junction(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ if env is None else env, PYTHONPATH=str(ROOT)),
    )


def test_check_demo_table_passes_with_no_environment_set() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUNCTION_DEMO_")}
    out = junction("check", "routes/demo.toml", env=env)
    assert out.returncode == 0, out.stderr
    assert "routes/demo.toml: OK" in out.stdout
    assert "temp-to-alphax: placeos [status_change] -> alphax" in out.stdout
    assert "too-hot-alert: placeos,allxon [status_change,config_update] -> allxon" in out.stdout
    assert "alphax-readback: alphax [channel_reading] -> allxon" in out.stdout
    assert "transforms threshold_alert" in out.stdout  # the example plugin, by entry point
    assert "overflow=drop_oldest (by target) queue_size=1000 expects_reply" in out.stdout
    assert "overflow=persist (by target)" in out.stdout  # temp-to-alphax: channel writes


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
            "source": "placeos",
            "subject": "sys-boardroom/Environment_1/temperature",
            "body": {
                "kind": "status_change",
                "system": "sys-boardroom",
                "module": "Environment",
                "name": "temperature",
                "value": 26.0,
            },
        }
    )
    out = junction("explain", "routes/demo.toml", env)
    assert out.returncode == 0, out.stderr
    assert "3 of 9 routes match" in out.stdout
    assert '"kind":"channel_write","network_id":"4106","channel":1,"value":26.0' in out.stdout
    assert '"module":"sys-boardroom","name":"temperature","value":299.15' in out.stdout
    assert '"action":"trigger","message":"sys-boardroom/Environment_1/temperature at 26.0 C' in (
        out.stdout
    )


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
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # hung: never leave it running after the test
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any("SIGTERM received" in r["msg"] for r in records)
    stopped = next(r["msg"] for r in records if r["msg"].startswith("junction stopped"))
    received = int(re.search(r"received=(\d+)", stopped).group(1))  # type: ignore[union-attr]
    delivered = int(re.search(r"delivered=(\d+)", stopped).group(1))  # type: ignore[union-attr]
    assert "pending=0 " in stopped and "NOT BALANCED" not in stopped, stopped
    lines = sink.read_text().count("\n")
    assert 0 < received == delivered == lines


SITE_ENV = {
    "PLACEOS_URL": "wss://placeos.example.com/api/engine/v2/systems/control",
    "PLACEOS_API_KEY": "dummy-placeos-key-0123",
    "ALPHAX_TOKEN": "dummy-alphax-token-4567",
    "ALPHAX_PASSWORD": "dummy-mqtt-password-89",
}


def test_site_example_checks_once_its_environment_is_set(tmp_path: Path) -> None:
    cred = tmp_path / "plugin_credential.json"
    cred.write_text(
        '{"app_guid": "6f1c2d3e-0000-4000-8000-000000000001", "access_key": "dummy-access-key-0" }'
    )
    bare = {k: v for k, v in os.environ.items() if k not in SITE_ENV}
    out = junction("check", "routes/site-example.toml", env=dict(bare, **SITE_ENV))
    assert "cannot read" in out.stderr  # /etc/junction/plugin_credential.json is not here
    env = dict(bare, **SITE_ENV, ALLXON_CREDENTIALS=str(cred))
    out = junction("check", "routes/site-example.toml", env=env)
    assert out.returncode == 0, out.stderr
    assert "display-command: allxon [command_request] -> placeos" in out.stdout
    assert "overflow=persist queue_size=1000" in out.stdout  # temp-to-alphax, explicit
    for secret in SITE_ENV.values():
        assert secret not in out.stdout + out.stderr
    missing = junction("check", "routes/site-example.toml", env=bare)
    assert missing.returncode == 2
    for name in SITE_ENV:
        assert f"environment variable {name} is not set" in missing.stderr


def test_demo_and_sim_without_the_sim_extra_say_what_to_install() -> None:
    """The demo bundle's commands (a plugin's, through junction_commands) need the `sim`
    extra; without it (trustme hidden here) one line says what to install, exit 2."""
    for command in (["demo", "--duration", "1"], ["sim", "allxon", "--help"]):
        code = f"import sys; sys.modules['trustme'] = None; from broker.cli import main; sys.exit(main({command!r}))"
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [
            f"junction {' '.join(command[:2]) if command[0] == 'sim' else 'demo'} needs the "
            "simulators' extra (module 'trustme' is missing): pip install 'junction[sim]'"
        ]
        assert out.stdout == ""
