"""Pacing to AlphaX's tier limits (retries use broker._backoff).

Writes: the service allows N write requests per second per token and answers 429 past that.
The simulator (and, we assume, the service) counts a request when it *arrives*, in a sliding
one-second window. The client cannot see arrival times, only that a request arrived somewhere
between sending it and getting its answer. :class:`WritePacer` therefore starts request k only
once the answer to request k-N came back at least ``window + margin`` seconds ago; in-flight
requests count as "now". That guarantees at most N arrivals in any window of one second
without knowing the network delay, at the price of a little throughput on a slow link.

Reads: one call per interval per token (:class:`ReadPacer`, same reasoning: the next call
starts ``interval + margin`` after the previous one *returned*).

Both use trio's clock, so tests can drive them with an autojump clock.
"""

from __future__ import annotations

from collections import deque

import trio


class WritePacer:
    """At most ``per_s`` requests in any ``window_s`` (None: no limit). FIFO across tasks."""

    def __init__(self, per_s: float | None, window_s: float = 1.0, margin_s: float = 0.05) -> None:
        self.limit = None if per_s is None else max(1, int(per_s))
        self.window = window_s + margin_s
        self._done: deque[float] = deque()
        self._in_flight = 0
        self._lock = trio.Lock()
        self._released = trio.Event()
        #: How many requests had to wait, and for how long in total (seconds).
        self.waits = 0
        self.waited_s = 0.0

    async def acquire(self) -> None:
        """Wait for a slot; pair every call with :meth:`release`."""
        if self.limit is None:
            self._in_flight += 1
            return
        async with self._lock:
            began = trio.current_time()
            waited = False
            while True:
                now = trio.current_time()
                while self._done and self._done[0] + self.window <= now:
                    self._done.popleft()
                if len(self._done) + self._in_flight < self.limit:
                    break
                waited = True
                if self._done:  # the oldest answer leaves the window: one slot frees up
                    await trio.sleep_until(self._done[0] + self.window)
                else:
                    self._released = trio.Event()
                    await self._released.wait()
            if waited:
                self.waits += 1
                self.waited_s += trio.current_time() - began
            self._in_flight += 1

    def release(self) -> None:
        """The request's answer came back (or it failed): it counts from now."""
        self._in_flight -= 1
        if self.limit is not None:
            self._done.append(trio.current_time())
            self._released.set()


class ReadPacer:
    """One call per ``interval_s`` (0: unlimited), counted from when the last call returned."""

    def __init__(self, interval_s: float, margin_s: float = 0.1) -> None:
        self.interval = interval_s
        self.margin = margin_s if interval_s > 0 else 0.0
        self._next_at = float("-inf")

    async def wait(self) -> None:
        """Sleep until the next call is allowed."""
        await trio.sleep_until(max(self._next_at, trio.current_time()))

    def done(self) -> None:
        """The call just returned (whatever its status)."""
        self._next_at = max(self._next_at, trio.current_time() + self.interval + self.margin)

    def push_back(self, seconds: float) -> None:
        """Make the next call wait at least ``seconds`` from now (after a 429 or an error)."""
        self._next_at = max(self._next_at, trio.current_time() + seconds)
