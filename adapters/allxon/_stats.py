"""Counters of the Allxon adapter."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AllxonStats"]


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
