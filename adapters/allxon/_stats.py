"""Counters of the Allxon adapter, and a gate that keeps repeated log lines readable."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AllxonStats", "LogGate"]


@dataclass
class AllxonStats:
    """What the adapter did, for people (status detail) and for tests and benchmarks.

    Losses by reason live in the outbox (``Outbox.dropped``); ``AllxonAdapter.counters()``
    merges everything.
    """

    frames_sent: int = 0
    frames_by_method: Counter[str] = field(default_factory=Counter)
    largest_frame: int = 0
    frames_received: int = 0
    bad_signatures: int = 0
    malformed: int = 0
    unexpected: int = 0
    agent_errors: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    late_replies: int = 0
    ignored_settings: int = 0
    announces: int = 0
    requeued: int = 0
    acks_expired: int = 0
    rejected_envelopes: int = 0

    def note_sent(self, method: str, size: int) -> None:
        self.frames_sent += 1
        self.frames_by_method[method] += 1
        self.largest_frame = max(self.largest_frame, size)

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        for key, value in out.items():
            if isinstance(value, Counter):
                out[key] = dict(value)
        return out


class LogGate:
    """At most one line per key every ``every_s`` seconds; says how many were held back."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def allow(self, key: str) -> tuple[bool, int]:
        """(log it?, how many were held back since the last line of this key)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] += 1
            return False, 0
        self._last[key] = now
        held = self._held.pop(key, 0)
        return True, held
