"""The soak's peers (``bench/soak.py``): processes to SIGKILL and restart, and the sinks' records.

- :class:`Peer`: one peer simulator as a process of its own on a fixed loopback port
  (``junction sim placeos``, ``junction sim allxon``, or the AlphaX wrapper below): ``start``
  returns once the port accepts connections, ``kill`` is a real SIGKILL (then a wait for the
  exit), so a restart is a new process on the same port. Its output goes to a log file.
- :class:`KillableBroker`: the tests' mosquitto (``tests/support/mosquitto.py``) with ``kill``.
- The AlphaX wrapper, ``python bench/_soak_peers.py alphax --port P --token T --journal F``:
  the AlphaX simulator (``open_alphax_simulator``, HTTP only) whose store also appends every
  value it stores to ``F`` (``"<network id> <channel> <value>"`` lines), with one ``write``
  system call before the HTTP 200 is sent: the kernel keeps what was written when the process
  is killed, so the journal holds every value the simulator acknowledged, across restarts.
  (``junction sim alphax`` keeps its store in memory only, which a SIGKILL takes with it.)
- :func:`proc_sample`: a process's resident set, open descriptors, threads, CPU (``/proc``).
- :class:`MqttSink`: the MQTT leg's AlphaX ingest, in the soak's own process (never killed): a
  paho client with a fixed client id and a persistent session (``clean_session=False``) at
  QoS 1, subscriptions renewed on every connect, handing each message to an
  ``AlphaXSimulator`` (no listeners) that decodes and stores it before paho sends the PUBACK.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import MosquittoBroker

#: network id -> (channel, value) -> how many times a sink stored it
Records = dict[str, Counter[tuple[int, float]]]


class PeerError(RuntimeError):
    """A peer did not start; the message carries the tail of its log."""


class Peer:
    """A peer simulator process on a fixed port, started, SIGKILLed and restarted."""

    def __init__(self, name: str, port: int, argv: Callable[[], list[str]], log_path: Path) -> None:
        self.name = name
        self.port = port
        self._argv = argv  # called at each start: the arguments may change (PlaceOS ids)
        self.log_path = log_path
        self.starts = 0
        self.started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float = 30.0) -> None:
        """Start the process; return once its port accepts a connection."""
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PeerError(f"{self.name} exited with {self._proc.returncode}:\n{self.tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                self.starts += 1
                return
            time.sleep(0.02)
        self.kill()
        raise PeerError(f"{self.name} did not listen on port {self.port}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process and wait for it (nothing of it runs after this returns)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly (SIGINT: the simulators' Ctrl-C), SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class KillableBroker(MosquittoBroker):
    """The tests' mosquitto, with a SIGKILL."""

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


def proc_sample(pid: int) -> dict[str, float]:
    """Resident set (MB: all, anonymous, file-backed), open descriptors, threads and CPU
    seconds of process ``pid``."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        # of which the heap and other private memory, and mapped files (e.g. SQLite's -shm)
        "anon_mb": int(fields["RssAnon"].split()[0]) / 1024,
        "file_mb": (int(fields["RssFile"].split()[0]) + int(fields["RssShmem"].split()[0])) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
        "cpu_s": (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"),
    }


def read_journal(path: Path) -> Records:
    """What the AlphaX wrapper journaled, by network id (a line cut by a kill is skipped)."""
    records: Records = {}
    with contextlib.suppress(FileNotFoundError), path.open() as handle:
        for line in handle:
            parts = line.split()
            if len(parts) != 3 or not line.endswith("\n"):
                continue
            records.setdefault(parts[0], Counter())[(int(parts[1]), float(parts[2]))] += 1
    return records


class _JournalFile:
    """``add_channels`` of a SimStore, also appending each value to a file (one write)."""

    def __init__(self, path: Path, add: Callable[..., int]) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._add = add

    def __call__(
        self, token: str, network_id: str, timestamp: float, values: Iterable[tuple[int, float]]
    ) -> int:
        items = list(values)
        n = self._add(token, network_id, timestamp, items)
        os.write(self._fd, "".join(f"{network_id} {ch} {v!r}\n" for ch, v in items).encode())
        return n


def alphax_main(argv: list[str]) -> int:
    """The AlphaX simulator over HTTP on ``--port``, journaling what it stores."""
    import trio

    from adapters.alphax.sim import open_alphax_simulator

    ap = argparse.ArgumentParser(prog="_soak_peers.py alphax")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--journal", type=Path, required=True)
    args = ap.parse_args(argv)

    async def main() -> None:
        async with open_alphax_simulator(
            [args.token], tier="enterprise", http_port=args.port, udp_port=None, tcp_port=None
        ) as sim:
            sim.store.add_channels = _JournalFile(  # type: ignore[method-assign]
                args.journal, sim.store.add_channels
            )
            print(f"AlphaX simulator (journal {args.journal}) on {sim.http_url}", flush=True)
            await trio.sleep(math.inf)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
    return 0


class MqttSink:
    """AlphaX's MQTT ingest behind the broker, kept in this process (see the module docstring)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        from adapters.alphax.codec import SUBSCRIPTION_FILTERS
        from adapters.alphax.sim import AlphaXSimulator

        self.sim = AlphaXSimulator([token], tier="enterprise")
        self.records: Records = {}
        self.connects = 0
        self._filters = [(topic, 1) for topic in SUBSCRIPTION_FILTERS]
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="junction-soak-sink", clean_session=False
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=30)
        # counted here instead of stored: (channel, value) is all the soak compares
        self.sim.store.add_channels = self._record  # type: ignore[method-assign]

    def start(self) -> None:
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        self.connects += 1
        client.subscribe(self._filters)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.sim.ingest_mqtt(message.topic, bytes(message.payload))

    def _record(
        self, token: str, network_id: str, timestamp: float, values: Iterable[tuple[int, float]]
    ) -> int:
        counts = self.records.setdefault(network_id, Counter())
        n = 0
        for channel, value in values:
            counts[(channel, float(value))] += 1
            n += 1
        return n


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "alphax":
        sys.exit("usage: _soak_peers.py alphax --port P --token T --journal FILE")
    sys.exit(alphax_main(sys.argv[2:]))
