"""Plugins load from real installed entry points (a dist-info on the path, as pip leaves
it), can be blocked by name, and a broken or misspelt plugin is reported by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = """
from broker.hookspecs import hookimpl, transform
from broker._envelope import Envelope
import msgspec

@transform("shout", "upper-cases body.message")
def shout(env: Envelope) -> Envelope:
    return msgspec.structs.replace(env, body=msgspec.structs.replace(env.body, message=env.body.message.upper()))

@hookimpl
def junction_transforms():
    return [shout]
"""

MISSPELT = """
from broker.hookspecs import hookimpl

@hookimpl
def junction_transform():
    return []
"""


def _install(site: Path, dist: str, module: str, source: str, entry: str) -> None:
    """Lay out a distribution the way an installer does: module + dist-info."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[junction.plugins]\n{entry} = {module}\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "junction_testplug", "junction_testplug", PLUGIN, "testplug")
    _install(site, "junction_broken", "junction_broken", "import no_such_module_xyz\n", "broken")
    return site


def junction(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(Path.cwd())]))
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_entry_point_plugin_is_loaded_and_broken_one_named(site: Path) -> None:
    out = junction(site, "plugins")
    assert "testplug" in out.stdout
    assert "shout" in out.stdout
    assert (
        "broken FAILED TO LOAD: ModuleNotFoundError: No module named 'no_such_module_xyz'"
        in out.stdout
    )
    assert "Traceback" not in out.stdout + out.stderr
    assert out.returncode == 1  # a plugin failed: say so in the exit code too


def test_blocked_plugin_is_not_loaded(site: Path) -> None:
    out = junction(site, "plugins", "--disable", "testplug", "--disable", "broken")
    assert "testplug (disabled)" in out.stdout
    assert "shout" not in out.stdout
    assert out.returncode == 0


CONFIG = """
[junction]
state_dir = "{state}"
{extra}
[adapters.src]
type = "generator"
kind = "event"
body = {{ module = "m", name = "e", value = "x" }}
[adapters.out]
type = "file"
path = "-"
[[routes]]
name = "loud"
from = "src"
to = "out"
transforms = ["shout"]
"""


def test_config_uses_plugin_transform_and_disabling_it_is_a_config_error(
    site: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(CONFIG.format(state=tmp_path, extra=""))
    out = junction(site, "check", str(good))
    assert out.returncode == 0, out.stderr
    assert "transforms shout" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.format(state=tmp_path, extra='disabled_plugins = ["testplug"]'))
    out = junction(site, "check", str(bad))
    assert out.returncode == 2
    assert "routes[0].transforms[0]: unknown transform (got 'shout')" in out.stderr


def test_misspelt_hook_fails_loudly(site: Path) -> None:
    _install(site, "junction_misspelt", "junction_misspelt", MISSPELT, "misspelt")
    out = junction(site, "plugins")
    assert out.returncode == 2
    assert "plugin error" in out.stderr and "junction_transform" in out.stderr
    assert "misspelt" in out.stderr


COMMANDS = """
from broker.hookspecs import Command, hookimpl

def configure(parser):
    parser.add_argument("who")

def hello(args):
    print(f"hello {args.who}")
    return 0

@hookimpl
def junction_commands():
    return [Command("hello", "say hello", hello, configure)]
"""


def test_plugin_adds_a_command_but_not_one_named_like_a_core_command(site: Path) -> None:
    _install(site, "junction_hello", "junction_hello", COMMANDS, "hello")
    out = junction(site, "hello", "world")
    assert (out.returncode, out.stdout) == (0, "hello world\n"), out.stderr
    assert "hello" in junction(site, "--help").stdout
    listed = junction(site, "plugins").stdout
    assert "  hello\n    commands:      hello\n" in listed
    assert "  builtin:adapters.demo.plugin\n    commands:      demo, sim\n" in listed
    clash = COMMANDS.replace('Command("hello"', 'Command("run"')
    _install(site, "junction_clash", "junction_clash", clash, "clash")
    out = junction(site, "check", "x.toml")
    assert out.returncode == 2
    assert "plugin error: plugin 'clash' adds the command 'run', which junction already has" in (
        out.stderr
    )
