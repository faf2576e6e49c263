"""Fixtures for the example plugin's tests: config files in a temp dir, and real Junction
runtimes that are always stopped.

These tests need Junction and this plugin installed in the same environment
(``pip install -e plugins_example``): the runtime must find the plugin through its
``junction.plugins`` entry point, exactly as a site's ``junction run`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import Loaded, Runtime


@pytest.fixture
def run_runtime() -> Iterator[Callable[[Loaded], Runtime]]:
    """Start a runtime for a loaded config; every one started is stopped after the test."""
    started: list[Runtime] = []

    def start(loaded: Loaded) -> Runtime:
        rt = Runtime(loaded)
        started.append(rt)
        rt.start()
        return rt

    yield start
    for rt in started:
        if rt.is_running():
            rt.stop(grace_s=2)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., str]:
    """Write a TOML config into the test's temp dir (with a private state_dir)."""

    def write(body: str, settings: str = "") -> str:
        """``settings`` are extra ``[junction]`` lines; ``body`` the adapters and routes."""
        path = tmp_path / "junction.toml"
        head = f'[junction]\nstate_dir = "{tmp_path / "state"}"\n{settings}\n'
        path.write_text(head + body, "utf-8")
        return str(path)

    return write
