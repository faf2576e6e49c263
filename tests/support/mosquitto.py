"""Run a real mosquitto broker for tests, on a free loopback port, with restart on that port.

Usage (sync, so it works in any fixture)::

    with run_mosquitto(tmp_path) as broker:
        broker.url          # "mqtt://127.0.0.1:<port>"
        broker.restart()    # stop and start again on the same port ("broker restarted" tests)

The broker gets a generated config in its own directory (``listener <port> 127.0.0.1``,
``allow_anonymous true``, persistence off unless asked for, ``max_queued_messages 0``) and
logs to ``mosquitto.log`` there; on failure the log tail is put into the exception. If the
binary is missing the test is skipped with a message saying how to install it (``make test``
installs the Debian package).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

_CANDIDATES = ("/usr/sbin/mosquitto",)


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the broker binds it right after)."""
    return distinct_free_ports(1)[0]


def distinct_free_ports(count: int) -> list[int]:
    """``count`` loopback TCP ports free a moment ago and different from each other: all are
    held at once while chosen (one :func:`free_port` after another may hand out the same
    port twice when nothing binds the first one in between)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        ports: list[int] = [sock.getsockname()[1] for sock in socks]
        return ports
    finally:
        for sock in socks:
            sock.close()


class BrokerError(RuntimeError):
    """The broker did not start (or stop) as expected; the message carries its log tail."""


class MosquittoBroker:
    """One mosquitto process on a fixed loopback port; restartable on the same port."""

    host = "127.0.0.1"

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        max_queued_messages: int = 0,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.extra_config = tuple(extra_config)
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (for CPU accounting in benchmarks)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # mosquitto drops QoS 1 messages queued for a slow subscriber past 1000 by default;
            # the simulator subscribes on AlphaX's behalf, so a broker-side drop there would be
            # blamed on the client under test. Unlimited, unless a test asks otherwise.
            f"max_queued_messages {self.max_queued_messages}",
            *self.extra_config,
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root mosquitto drops to the `mosquitto` user, who cannot write our temp dir.
            lines.append("user root")
        self.config_path.write_text("\n".join(lines) + "\n")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.running:
            raise BrokerError(f"mosquitto already running on port {self.port}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {self._proc.returncode} on port {self.port}:\n"
                    + self.log_tail()
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5),
            ):
                self.starts += 1
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not accept on port {self.port}:\n" + self.log_tail())

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self, downtime: float = 0.0) -> None:
        """Stop, stay down ``downtime`` seconds, and start again on the same port.

        Blocking; from trio call ``await trio.to_thread.run_sync(broker.restart)``.
        """
        self.stop()
        if downtime > 0:
            time.sleep(downtime)
        self.start()


@contextlib.contextmanager
def run_mosquitto(
    workdir: Path,
    *,
    persistence: bool = False,
    max_queued_messages: int = 0,
    extra_config: Sequence[str] = (),
) -> Iterator[MosquittoBroker]:
    """Start a broker in ``workdir`` (skip the test if mosquitto is not installed).

    ``max_queued_messages`` 0 means unlimited; ``extra_config`` lines are appended verbatim.
    """
    binary = find_mosquitto()
    if binary is None:
        pytest.skip(
            "mosquitto binary not found (looked on PATH and in /usr/sbin): "
            "install the Debian package `mosquitto` (`make test` does)"
        )
    for attempt in range(3):  # the free port may be taken between probe and bind
        broker = MosquittoBroker(
            binary,
            workdir,
            persistence=persistence,
            max_queued_messages=max_queued_messages,
            extra_config=extra_config,
        )
        try:
            broker.start()
            break
        except BrokerError:
            if attempt == 2:
                raise
    try:
        yield broker
    finally:
        broker.stop()
