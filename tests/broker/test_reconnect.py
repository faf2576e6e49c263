"""The shared reconnect loop: transient errors back off and retry, bugs propagate.

Both tests run on pytest-trio's ``autojump_clock``: the back-off waits take no real time.
"""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing

from broker._adapter import AdapterStatus
from broker._backoff import Backoff
from broker._reconnect import Retry, reconnect_forever


class PeerDown(Exception):
    pass


class Refused(PeerDown):
    pass


async def test_transient_errors_back_off_and_a_bug_ends_the_loop(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    status = AdapterStatus(name="x", type="t")
    shown: list[tuple[str, str]] = []
    original = status.set

    def record(state: str, detail: str = "") -> None:
        shown.append((state, detail))
        original(state, detail)

    status.set = record  # type: ignore[method-assign]
    seen: list[tuple[str, str]] = []
    lost: list[str] = []
    errors = [PeerDown("reset"), PeerDown("reset"), Refused("bad key"), KeyError("bug")]

    async def serve() -> None:
        seen.append((status.state, status.detail))
        raise errors.pop(0)

    def classify(error: Exception, delay: float) -> Retry:
        if isinstance(error, Refused):
            return Retry(300.0, "auth-failed", logging.ERROR)
        return Retry(delay)

    caplog.set_level(logging.WARNING)
    with pytest.raises(KeyError, match="bug"):
        await reconnect_forever(
            serve,
            status=status,
            where="peer:1",
            log=logging.getLogger("test.reconnect"),
            backoff=Backoff(0.1, 1.0),
            transient=PeerDown,
            classify=classify,
            on_lost=lambda e: lost.append(type(e).__name__),
        )
    assert [s for s, _ in seen] == ["connecting"] * 4
    assert lost == ["PeerDown", "PeerDown", "Refused", "KeyError"]
    waits = [(state, detail) for state, detail in shown if state != "connecting"]
    assert [state for state, _ in waits] == ["disconnected", "disconnected", "auth-failed"]
    assert waits[-1][1] == "peer:1: bad key; retry in 300.0 s"
    lines = [r.getMessage() for r in caplog.records if r.name == "test.reconnect"]
    # the same error again within a minute is held back; a new one is logged at once
    assert len(lines) == 2 and "reset" in lines[0] and "bad key" in lines[1]
    assert caplog.records[-1].levelno == logging.ERROR


async def test_waits_grow_with_each_failure(autojump_clock: trio.testing.MockClock) -> None:
    status = AdapterStatus(name="x", type="t")
    started: list[float] = []

    async def serve() -> None:
        started.append(trio.current_time())
        if len(started) == 5:
            raise RuntimeError("stop here")
        raise PeerDown("refused")

    with pytest.raises(RuntimeError):
        await reconnect_forever(
            serve,
            status=status,
            where="peer:1",
            log=logging.getLogger("test.reconnect"),
            backoff=Backoff(1.0, 8.0),
            transient=PeerDown,
        )
    gaps = [b - a for a, b in itertools.pairwise(started)]
    # jittered exponential back-off: each wait within [half, all] of 1, 2, 4, 8 s
    for gap, cap in zip(gaps, (1.0, 2.0, 4.0, 8.0), strict=True):
        assert cap / 2 <= gap <= cap + 1e-6, gaps
