"""Shared fixtures: config files in a temp dir, runtimes that always stop.

Sync tests use ``runtime_of`` and :func:`wait_until`.  Async (trio) tests that run a
simulator in the test's own loop must not block it: they use ``start_runtime``
(start and stop happen in a worker thread) and :func:`wait_for`.
"""

from __future__ import annotations

import logging
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from broker._outbox import Outbox
from broker._runtime import Loaded, Runtime, load
from tests.support import core_plugin

T = TypeVar("T")

TEST_PLUGINS = ("tests.support.core_plugin",)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a test's in-process ``junction`` call did to the root logger.

    ``junction`` configures logging for its process (a handler on the stderr of the
    moment, the level it was given); inside pytest that stderr is closed after the
    test, and an INFO root level would let other tests' libraries log more.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], str]:
    """Write a TOML config (dedented) into the test's temp dir; returns its path.

    A config that names no ``state_dir`` gets the test's own, so no test writes state
    (the outbox, dead letters) into the working directory.
    """

    def write(text: str, name: str = "junction.toml") -> str:
        path = tmp_path / name
        body = textwrap.dedent(text)
        own = f'state_dir = "{tmp_path / "state"}"\n'
        if "[junction]" not in body:
            body = "[junction]\n" + own + body
        elif "state_dir" not in body:
            body = body.replace("[junction]\n", "[junction]\n" + own, 1)
        path.write_text(body, encoding="utf-8")
        return str(path)

    return write


@pytest.fixture
def load_config(write_config: Callable[[str], str]) -> Callable[[str], Loaded]:
    """Write and load a config with the test plugin registered."""
    return lambda text: load(write_config(text), extra_plugins=TEST_PLUGINS)


@pytest.fixture
def runtime_of() -> Iterator[Callable[[Loaded], Runtime]]:
    """Start runtimes for a test and make sure every one is stopped afterwards."""
    core_plugin.reset()
    started: list[Runtime] = []

    def start(loaded: Loaded) -> Runtime:
        rt = Runtime(loaded)
        rt.start()
        started.append(rt)
        return rt

    yield start
    for rt in started:
        if rt.router is not None and rt.router.is_alive():
            rt.stop(grace_s=2)
    core_plugin.reset()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Like :func:`wait_until`, without blocking the trio loop it runs in."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


@pytest.fixture
def start_runtime() -> Iterator[Callable[[Loaded], object]]:
    """``async with start_runtime(loaded) as rt:`` -- start/stop off the trio loop."""
    core_plugin.reset()

    @asynccontextmanager
    async def run(loaded: Loaded) -> AsyncIterator[Runtime]:
        rt = Runtime(loaded)
        await trio.to_thread.run_sync(rt.start)
        try:
            yield rt
        finally:
            await trio.to_thread.run_sync(lambda: rt.stop(grace_s=2))

    yield run
    core_plugin.reset()


def peek(rt: Runtime, read: Callable[[Outbox], T]) -> T:
    """``read`` a running bridge's outbox through a connection of the test's own (the
    bridge's is its router's alone), as ``junction dlq`` does from another process."""
    assert rt.outbox is not None
    box = Outbox(rt.outbox.path, checkpoints=False)
    try:
        return read(box)
    finally:
        box.close()
