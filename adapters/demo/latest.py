"""The demo's latest values for the web console: a pluggy observer on every batch the
router receives, kept as data (adapter, subject, value, time) for the console's snapshot
(``Loaded.console_extra``), beside the live view's own text lines (:mod:`adapters.demo.view`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import msgspec

from broker import ConfigUpdate, Envelope
from broker.hookspecs import hookimpl

#: Characters of a value shown.
VALUE_CHARS = 120


class ConsoleValues:
    """The latest value per (adapter, subject): what the console's "latest values" shows."""

    def __init__(self, keep: int = 40) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._values: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    @hookimpl
    def junction_envelopes_received(self, adapter: str, envelopes: Sequence[Envelope]) -> None:
        """Remember the last value of each subject (runs in the router; cheap)."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for env in envelopes:
            text = value_text(env)
            if text is not None:
                latest[(adapter, env.subject)] = {
                    "adapter": adapter,
                    "subject": env.subject,
                    "kind": env.kind,
                    "value": text,
                    "ts": env.ts,
                }
        if not latest:
            return
        with self._lock:
            for key, value in latest.items():
                self._values.pop(key, None)
                self._values[key] = value
            while len(self._values) > self.keep:
                self._values.popitem(last=False)

    def snapshot(self) -> dict[str, Any]:
        """``{"latest": [...]}`` sorted by adapter and subject (any thread)."""
        with self._lock:
            values = [dict(v) for _, v in sorted(self._values.items())]
        return {"latest": values}


def value_text(env: Envelope) -> str | None:
    """The envelope's value as short text, or None for bodies without one (commands)."""
    body = env.body
    if isinstance(body, ConfigUpdate):
        text = ", ".join(f"{c.name}={c.params}" for c in body.configs) or "(empty config)"
    elif hasattr(body, "value"):
        value = body.value
        text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    else:
        return None
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 3] + "..."
