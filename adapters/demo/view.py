"""The demo's part of the live view: the latest value of each subject (from
:class:`adapters.demo.latest.LatestValues`, which the web console reads too) and the
simulated Portal's last commands with their acks, shown under the status table."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import trio

from adapters.demo.latest import LatestValues
from broker import ChannelReading, ConfigUpdate, Envelope, StatusChange

if TYPE_CHECKING:
    from adapters.demo.runner import PeersThread


def value_lines(values: LatestValues, limit: int = 12) -> list[str]:
    """The most recently updated subjects the live view shows, sorted by name, one line
    each (status changes, channel readings and config updates; commands are shown with
    their acks below)."""
    shown = [
        (f"{adapter} {subject}", env.ts, text)
        for adapter, subject, env in values.recent()
        if (text := _value_text(env)) is not None
    ][-limit:]
    now = time.time()
    return [
        f"  {key:<50} {text[:40]:<40} {max(0.0, now - ts):>4.0f}s ago"
        for key, ts, text in sorted(shown)
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
        lines = ["latest values:", *value_lines(values)]
        try:
            commands = sims.call(lambda: sims.peers.command_lines() if sims.peers else [])
            threshold = sims.call(lambda: sims.peers.threshold if sims.peers else math.nan)
        except (trio.RunFinishedError, RuntimeError):
            commands, threshold = ["  (simulators stopped)"], math.nan
        lines += ["", f"portal commands (too-hot threshold now {threshold:g} C):"]
        lines += commands or ["  none yet"]
        return "\n".join(lines)

    return render
