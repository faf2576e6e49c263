"""``junction init``: the starter configuration passes ``junction check`` once its variables
are set, for every combination of peers, and holds no secret of its own."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from broker import cli
from broker._init import PEERS

ROOT = Path(__file__).resolve().parents[2]

#: What the starter file's head says it expects (the values only need the right shape).
VARIABLES = {
    "PLACEOS_URL": "wss://placeos.example.com/api/engine/v2/systems/control",
    "PLACEOS_API_KEY": "placeos-api-key-0123456789",
    "ALPHAX_TOKEN": "alphax-token-0123456789",
    "ALPHAX_PASSWORD": "alphax-password-0123456789",
    "ALLXON_CREDENTIALS": str(ROOT / "routes" / "demo_plugin_credential.json"),
}

COMBINATIONS = [
    ",".join(c) for n in range(1, len(PEERS) + 1) for c in itertools.combinations(PEERS, n)
]


def init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["init", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("peers", COMBINATIONS)
def test_the_starter_file_passes_check_once_its_variables_are_set(
    peers: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text, _ = init(capsys, "--peers", peers)
    assert code == 0
    used = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for name in re.findall(r"\$\{([A-Z_]+)", used):  # every variable it uses is listed on top
        assert f"#   {name}" in text, name
        if name in VARIABLES:
            monkeypatch.setenv(name, VARIABLES[name])
    site = tmp_path / "site.toml"
    site.write_text(text)
    assert cli.main(["check", str(site)]) == 0, capsys.readouterr().err
    checked = capsys.readouterr().out
    config = tomllib.loads(text)
    assert config["junction"]["state_dir"] == "/var/lib/junction"  # the service's state dir
    assert set(config["adapters"]) >= set(peers.split(","))
    for route in config["routes"]:
        assert f"  {route['name']}:" in checked


def test_every_secret_is_read_from_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    _, text, _ = init(capsys)
    config = tomllib.loads(text)
    secrets = [
        config["adapters"]["placeos"]["api_key"],
        config["adapters"]["placeos"]["url"],
        config["adapters"]["alphax"]["token"],
        config["adapters"]["alphax"]["write"]["password"],
        config["adapters"]["allxon"]["credentials"],
    ]
    assert all(s.startswith("${") and s.endswith("}") for s in secrets), secrets
    assert "CHANGE ME" in text  # the site's own ids are placeholders a person replaces


def test_without_its_variables_check_names_the_missing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    _, text, _ = init(capsys, "--peers", "alphax")
    site = tmp_path / "site.toml"
    site.write_text(text)
    assert cli.main(["check", str(site)]) == 2
    err = capsys.readouterr().err
    assert "ALPHAX_TOKEN" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("peers", "says"),
    [("placeos,mqtt", "unknown peer 'mqtt'"), (" , ", "names no peer")],
)
def test_an_unknown_peer_is_a_clear_error(
    peers: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = init(capsys, "--peers", peers)
    assert code == 2 and out == ""
    assert says in err and "placeos, alphax, allxon" in err


def test_the_command_as_a_person_runs_it(tmp_path: Path) -> None:
    """``junction init > site.toml`` then ``junction check site.toml``, as processes."""
    junction = Path(sys.executable).with_name("junction")
    env = {**os.environ, **VARIABLES}
    site = tmp_path / "site.toml"
    with site.open("w") as out:
        subprocess.run([str(junction), "init"], stdout=out, check=True, env=env, timeout=60)
    checked = subprocess.run(
        [str(junction), "check", str(site)], capture_output=True, text=True, env=env, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert f"{site}: OK" in checked.stdout
