"""Capped, jittered exponential back-off, shared by everything that retries.

``delay(attempt)`` is ``min(maximum, initial * 2**(attempt-1))`` scaled by a random
factor in [0.5, 1.0], so a fleet of bridges restarted together does not reconnect in
lock-step.  :class:`Backoff` also forgets past failures once a connection has stayed
up for ``stable_after_s``: a link that drops once a day starts again from ``initial``.
"""

from __future__ import annotations

import random
import time


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    base = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    return base * random.uniform(0.5, 1.0)


class Backoff:
    """Counts consecutive failures and says how long to wait before the next try."""

    def __init__(self, initial: float, maximum: float, stable_after_s: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.stable_after_s = stable_after_s
        self.failures = 0
        self._started = time.monotonic()

    def started(self) -> None:
        """An attempt (a connection, a run) begins now."""
        self._started = time.monotonic()

    def failed(self) -> float:
        """The attempt ended in failure: the delay before the next one."""
        lasted = time.monotonic() - self._started
        self.failures = 1 if lasted >= self.stable_after_s else self.failures + 1
        return backoff_delay(self.failures, self.initial, self.maximum)

    def lasted(self) -> float:
        """Seconds since the current attempt began."""
        return time.monotonic() - self._started
