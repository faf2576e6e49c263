"""The built wheel on its own: installed in a fresh venv, run from outside the checkout.

Builds the junction wheel (and the example plugin's: ``routes/demo.toml`` uses its
transforms, as ``make install`` installs it) from a copy of the sources, installs them in a
venv in ``tmp_path`` (dependencies from the package index, through pip's cache), then:

- without the ``sim`` extra, ``junction demo`` says in one line what to install (exit 2);
- with it, ``junction demo --duration 10`` run in ``tmp_path`` exits 0 with "demo OK":
  the routing tables, the simulators, the built-in plugins and the web console's page
  all come from the wheel.

Skipped when a venv cannot be created or pip cannot reach the index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "broker", "adapters", "routes")
#: What pip prints when it cannot reach the index (as opposed to a resolution error).
OFFLINE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ProxyError",
    "ConnectTimeoutError",
    "Max retries exceeded",
)
SIM_LINE = (
    "junction demo needs the simulators' extra (module 'trustme' is missing): "
    "pip install 'junction[sim]'"
)


def clean_env() -> dict[str, str]:
    """The environment minus what would point the child at the checkout or the outer venv."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("JUNCTION_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def pip(*args: str, cwd: Path) -> None:
    """Run the outer environment's pip; skip the test when it cannot reach the index."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        text = out.stdout + out.stderr
        if any(marker in text for marker in OFFLINE):
            pytest.skip(
                f"pip cannot reach the package index: pip {args[0]} failed:\n{text[-2000:]}"
            )
        raise AssertionError(f"pip {' '.join(args)} failed ({out.returncode}):\n{text[-4000:]}")


def copy_sources(dest: Path) -> Path:
    """The files the wheel is built from, copied so that the build leaves the checkout alone."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    dest.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~25 s here; generous for a shared, busy machine
def test_wheel_installs_and_runs_the_demo_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    src = copy_sources(tmp_path / "src")
    example = tmp_path / "example"
    shutil.copytree(
        ROOT / "plugins_example",
        example,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
    )
    pip("wheel", "-q", "--no-deps", "-w", str(wheels), str(src), str(example), cwd=tmp_path)
    (junction_wheel,) = wheels.glob("junction-*.whl")
    (example_wheel,) = wheels.glob("junction_example_plugins-*.whl")

    env_dir = tmp_path / "venv"
    try:
        venv.EnvBuilder(with_pip=False).create(env_dir)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot create a venv: {err}")
    python = env_dir / "bin" / "python"
    junction = env_dir / "bin" / "junction"

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(junction), "demo", *args],
            cwd=tmp_path,  # not the checkout: no routes/ here
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    # the product without its test peers: the demo says what it needs
    pip(
        "--python",
        str(python),
        "install",
        "-q",
        str(junction_wheel),
        str(example_wheel),
        cwd=tmp_path,
    )
    out = demo("--duration", "1")
    assert (out.returncode, out.stderr.strip()) == (2, SIM_LINE), out.stdout + out.stderr

    pip("--python", str(python), "install", "-q", f"{junction_wheel}[sim]", cwd=tmp_path)
    out = demo("--duration", "10")
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]
    assert "demo OK: every route delivered" in out.stdout
    assert "Traceback" not in out.stderr
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    assert (site / "routes" / "demo.toml").is_file()  # cwd has none: the demo ran this one
    # the web console's page ships as package data; the demo said where it served it
    for name in ("index.html", "console.js", "draw.js", "console.css"):
        assert (site / "broker" / "console" / name).is_file(), name
    assert out.stdout.startswith("console: http://127.0.0.1:")
    assert not (tmp_path / "routes").exists()
