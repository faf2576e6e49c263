"""The demo's latest values: a pluggy observer on every batch the router receives, keeping
the latest envelope with a value per (adapter, subject). The web console shows them as data
(:meth:`LatestValues.snapshot`, ``Loaded.console_extra``), the live view as text lines
(:func:`adapters.demo.view.extra_view`); one observer serves both."""

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


class LatestValues:
    """The latest envelope with a value per (adapter, subject), and its value as text."""

    def __init__(self, keep: int = 40) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._values: OrderedDict[tuple[str, str], tuple[Envelope, str]] = OrderedDict()

    @hookimpl
    def junction_envelopes_received(self, adapter: str, envelopes: Sequence[Envelope]) -> None:
        """Remember the last value of each subject (runs in the router; cheap)."""
        latest: dict[tuple[str, str], tuple[Envelope, str]] = {}
        for env in envelopes:
            text = value_text(env)
            if text is not None:
                latest[(adapter, env.subject)] = (env, text)
        if not latest:
            return
        with self._lock:
            for key, value in latest.items():
                self._values.pop(key, None)
                self._values[key] = value
            while len(self._values) > self.keep:
                self._values.popitem(last=False)

    def recent(self) -> list[tuple[str, str, Envelope]]:
        """(adapter, subject, envelope), least recently updated first (any thread)."""
        with self._lock:
            return [
                (adapter, subject, env) for (adapter, subject), (env, _) in self._values.items()
            ]

    def snapshot(self) -> dict[str, Any]:
        """``{"latest": [...]}`` sorted by adapter and subject (any thread)."""
        with self._lock:
            items = sorted(self._values.items())
        values = [
            {"adapter": a, "subject": s, "kind": env.kind, "value": text, "ts": env.ts}
            for (a, s), (env, text) in items
        ]
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
