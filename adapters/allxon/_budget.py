"""The agent's call budget, kept on our side so that the agent never has to refuse a call.

Pure (the clock is injected). Two limits, both checked before every call:

- a **rolling window**: at most ``limit`` calls in any ``window_s`` seconds (500 per hour for
  the Octo agent). Every call counts, acks and the announce included. This is the hard cap.
  A call's stamp expires ``slack_s`` after the window, so our stamp (taken before sending) is
  never younger than the agent's (taken on receipt).
- a **token bucket** for data calls (states, metrics, events, alerts): ``bucket_size`` tokens,
  refilled at ``limit / window_s`` per second. It lets a burst through after a quiet spell and
  then paces data at the sustained rate, so the budget is spread over the hour instead of being
  spent in the first minutes of a flood.

``reserve`` calls of the window are kept for *priority* calls (the announce, command acks):
data may use only ``limit - reserve`` of the window, priority calls the whole of it and no
tokens. So a flood can delay acks only when the agent's whole budget is gone.

Stamps are wall-clock seconds so that the adapter can persist them across restarts.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["CallBudget", "load_stamps", "save_stamps"]


class CallBudget:
    """A rolling-window cap plus a token bucket for data (see the module docstring)."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        bucket_size: int,
        reserve: int,
        *,
        clock: Callable[[], float] = time.time,
        stamps: Iterable[float] = (),
    ) -> None:
        if limit < 1 or window_s <= 0 or bucket_size < 1 or not 0 <= reserve < limit:
            raise ValueError(
                f"budget needs limit >= 1, window > 0, bucket >= 1 and 0 <= reserve < limit; "
                f"got {limit}, {window_s}, {bucket_size}, {reserve}"
            )
        self.limit = limit
        self.window_s = window_s
        self.bucket_size = bucket_size
        self.reserve = reserve
        self.rate = limit / window_s
        self.slack_s = min(5.0, window_s * 0.01)
        self._clock = clock
        now = clock()
        self._stamps: deque[float] = deque(sorted(s for s in stamps if s <= now))
        self._tokens = float(bucket_size)
        self._refilled_at = now
        self.spent = 0
        self.spent_priority = 0

    # --- reading ---------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s - self.slack_s
        stamps = self._stamps
        while stamps and stamps[0] <= horizon:
            stamps.popleft()

    def _refill(self, now: float) -> None:
        if now > self._refilled_at:
            gained = (now - self._refilled_at) * self.rate
            self._tokens = min(float(self.bucket_size), self._tokens + gained)
        self._refilled_at = now

    def used(self) -> int:
        """Calls counted in the current window."""
        self._expire(self._clock())
        return len(self._stamps)

    def tokens(self) -> float:
        """Data tokens in the bucket now."""
        self._refill(self._clock())
        return self._tokens

    def data_allowance(self) -> int:
        """How many data calls may be made right now."""
        now = self._clock()
        self._expire(now)
        self._refill(now)
        room = self.limit - self.reserve - len(self._stamps)
        return max(0, min(math.floor(self._tokens), room))

    def priority_allowance(self) -> int:
        """How many priority calls (announce, acks) may be made right now."""
        self._expire(self._clock())
        return max(0, self.limit - len(self._stamps))

    def wait_s(self, priority: bool) -> float:
        """Seconds until one more call of that class is allowed (0 when it is now)."""
        now = self._clock()
        self._expire(now)
        cap = self.limit if priority else self.limit - self.reserve
        waits = [0.0]
        excess = len(self._stamps) - cap
        if excess >= 0:  # the window is full for this class: wait for the oldest to expire
            waits.append(self._stamps[excess] + self.window_s + self.slack_s - now)
        if not priority:
            self._refill(now)
            if self._tokens < 1:
                waits.append((1 - self._tokens) / self.rate)
        return max(waits)

    def stamps(self) -> list[float]:
        """The stamps of the calls in the window (to persist)."""
        self._expire(self._clock())
        return list(self._stamps)

    # --- spending --------------------------------------------------------------------------

    def spend(self, priority: bool) -> None:
        """Count one call now. Raises RuntimeError if it is not allowed (a caller bug)."""
        allowed = self.priority_allowance() if priority else self.data_allowance()
        if allowed < 1:
            raise RuntimeError(
                f"{'priority' if priority else 'data'} call over budget "
                f"({len(self._stamps)}/{self.limit} in the window, {self._tokens:.2f} tokens)"
            )
        self._stamps.append(self._clock())
        if priority:
            self.spent_priority += 1
        else:
            self._tokens -= 1
        self.spent += 1


def load_stamps(path: Path) -> list[float]:
    """Call stamps saved by ``save_stamps`` (``[]`` when there is no file).

    Raises ``ValueError`` for a file that is not what ``save_stamps`` writes, ``OSError`` when
    it cannot be read.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    try:
        return [float(s) for s in data["stamps"]]
    except (KeyError, TypeError) as err:
        raise ValueError(f"no list of stamps in {path}") from err


def save_stamps(path: Path, budget: CallBudget) -> None:
    """Persist the stamps of the window, so that a restarted adapter keeps the budget."""
    data = {"limit": budget.limit, "window_s": budget.window_s, "stamps": budget.stamps()}
    path.write_text(json.dumps(data), encoding="utf-8")
