"""One owner per state directory (issue 17, item 3): the lock, and the commands around it.

Real processes: ``junction run`` in subprocesses, SIGKILL included, because the point of
an OS lock is what the kernel does when its holder dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import _state_lock as state_lock
from tests.broker.test_reload import junction
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]

RUN = """
[junction]
state_dir = "{state}"
shutdown_grace_s = 5
[adapters.gen]
type = "generator"
kind = "metric"
body = {{ module = "m", name = "n", value = 1.0 }}
rate = 100
[adapters.out]
type = "file"
path = "{out}"
[[routes]]
name = "r"
from = "gen"
to = "out"
overflow = "persist"
"""


def start(cfg: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "run", str(cfg)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN.format(state=tmp_path / "state", out=tmp_path / "out.jsonl"))
    return cfg


@pytest.fixture
def first(config: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A running bridge that holds ``tmp_path/state``."""
    proc = start(config, tmp_path / "first.log")
    try:
        wait_until(
            lambda: state_lock.holder(tmp_path / "state") == proc.pid or proc.poll() is not None,
            timeout=30,
            what="the first bridge holding its state_dir",
        )
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_a_second_bridge_on_the_same_state_dir_exits_2_naming_the_first(
    first: subprocess.Popen[bytes], config: Path, tmp_path: Path
) -> None:
    second = junction("run", str(config), "--duration", "5")
    assert second.returncode == 2, second.stderr
    assert f"is in use by another junction (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    # it touched nothing: the first still holds the directory and keeps writing
    assert state_lock.holder(tmp_path / "state") == first.pid
    assert first.poll() is None
    out = tmp_path / "out.jsonl"
    grown = out.read_text().count("\n")
    wait_until(lambda: out.read_text().count("\n") > grown + 10, timeout=30, what="first writes")


def test_a_killed_bridge_leaves_no_stale_lock(
    first: subprocess.Popen[bytes], config: Path, tmp_path: Path
) -> None:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert (tmp_path / "state" / "junction.pid").read_text().strip() == str(first.pid)
    assert state_lock.holder(tmp_path / "state") is None  # the kernel dropped the lock
    again = junction("run", str(config), "--duration", "2")
    assert again.returncode == 0, again.stderr


def test_operator_commands_read_the_state_dir_without_taking_it_over(
    first: subprocess.Popen[bytes], config: Path, tmp_path: Path
) -> None:
    listed = junction("dlq", "list", str(config))
    assert listed.returncode == 0, listed.stderr
    assert state_lock.holder(tmp_path / "state") == first.pid
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0
    assert state_lock.holder(tmp_path / "state") is None
    assert (tmp_path / "state" / "junction.pid").read_text() == ""  # emptied, not deleted


def test_acquire_refuses_while_held_even_in_the_same_process(tmp_path: Path) -> None:
    lock = state_lock.acquire(tmp_path / "s")
    try:
        assert state_lock.holder(tmp_path / "s") == os.getpid()
        with pytest.raises(state_lock.StateDirBusy, match=rf"pid {os.getpid()}\)"):
            state_lock.acquire(tmp_path / "s")
    finally:
        lock.release()
    assert state_lock.holder(tmp_path / "s") is None
    state_lock.acquire(tmp_path / "s").release()  # free again
    lock.release()  # twice is harmless


def test_holder_of_a_directory_never_run_is_none(tmp_path: Path) -> None:
    assert state_lock.holder(tmp_path / "never") is None


def test_an_operator_probing_does_not_make_a_starting_bridge_refuse(tmp_path: Path) -> None:
    """``holder`` takes a shared lock for an instant; an ``acquire`` racing it used to say
    the directory was in use by another junction, though none ran."""
    import threading

    state_lock.acquire(tmp_path / "s").release()  # the file exists, nobody holds it
    stop = threading.Event()
    seen: list[int | None] = []

    def probe() -> None:
        while not stop.is_set():
            seen.append(state_lock.holder(tmp_path / "s"))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(3000):
            state_lock.acquire(tmp_path / "s").release()
    finally:
        stop.set()
        prober.join()
    assert seen and set(seen) <= {None, os.getpid()}
