"""The demo's part of the live view: the latest value of each subject (a pluggy observer
on every batch the router receives) and the simulated Portal's last commands with their
acks, shown under the status table."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import msgspec
import trio

from broker import ChannelReading, ConfigUpdate, Envelope, StatusChange
from broker.hookspecs import hookimpl

if TYPE_CHECKING:
    from adapters.demo.runner import PeersThread


class LatestValues:
    """A pluggy observer: the latest value per subject, from every batch the router gets."""

    def __init__(self, keep: int = 40) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._values: OrderedDict[str, tuple[float, str]] = OrderedDict()

    @hookimpl
    def junction_envelopes_received(self, adapter: str, envelopes: Sequence[Envelope]) -> None:
        """Remember the last value of each subject (runs in the router; cheap)."""
        latest: dict[str, tuple[float, str]] = {}
        for env in envelopes:
            text = _value_text(env)
            if text is not None:
                latest[f"{adapter} {env.subject}"] = (env.ts, text)
        if not latest:
            return
        with self._lock:
            for key, value in latest.items():
                self._values.pop(key, None)
                self._values[key] = value
            while len(self._values) > self.keep:
                self._values.popitem(last=False)

    def lines(self, limit: int = 12) -> list[str]:
        """The most recently updated subjects, sorted by name, one line each."""
        with self._lock:
            items = list(self._values.items())[-limit:]
        now = time.time()
        return [
            f"  {key:<50} {text[:40]:<40} {max(0.0, now - ts):>4.0f}s ago"
            for key, (ts, text) in sorted(items)
        ]


def _value_text(env: Envelope) -> str | None:
    body = env.body
    if isinstance(body, StatusChange):
        value = body.value
        return value if isinstance(value, str) else msgspec.json.encode(value).decode()
    if isinstance(body, ChannelReading):
        return f"{body.value:g} (channel reading)"
    if isinstance(body, ConfigUpdate):
        return ", ".join(f"{c.name}={c.params}" for c in body.configs) or "(empty config)"
    return None  # commands and exec results: the command list shows them with their acks


def extra_view(values: LatestValues, sims: PeersThread) -> Callable[[], str]:
    """The demo's part of the live view: latest values and the last commands."""

    def render() -> str:
        lines = ["latest values:", *values.lines()]
        try:
            commands = sims.call(lambda: sims.peers.command_lines() if sims.peers else [])
            threshold = sims.call(lambda: sims.peers.threshold if sims.peers else math.nan)
        except (trio.RunFinishedError, RuntimeError):
            commands, threshold = ["  (simulators stopped)"], math.nan
        lines += ["", f"portal commands (too-hot threshold now {threshold:g} C):"]
        lines += commands or ["  none yet"]
        return "\n".join(lines)

    return render
