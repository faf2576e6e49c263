"""LogGate: how many lines a key may log per window, and the count of those held back."""

from __future__ import annotations

import pytest

from broker import _logs as logs
from broker._logs import LogGate


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    return now


def test_one_line_per_window_and_the_next_says_how_many_were_held(clock: list[float]) -> None:
    gate = LogGate(every_s=10.0)
    assert gate.allow("k") == (True, 0)
    assert [gate.allow("k") for _ in range(3)] == [(False, 0)] * 3
    assert gate.allow("other") == (True, 0)  # keys are apart
    clock[0] += 9.9
    assert gate.allow("k") == (False, 0)
    clock[0] += 0.1
    assert gate.allow("k") == (True, 4)
    assert gate.allow("k") == (False, 0)  # the window starts again at the line let through
    clock[0] += 10.0
    assert gate.allow("k") == (True, 1)
    clock[0] += 10.0
    assert gate.allow("k") == (True, 0)


def test_a_budget_of_lines_per_window(clock: list[float]) -> None:
    gate = LogGate(every_s=1.0, per=5)
    assert [gate.allow("k") for _ in range(7)] == [(True, 0)] * 5 + [(False, 0)] * 2
    clock[0] += 0.5
    assert gate.allow("k") == (False, 0)
    clock[0] += 0.5
    assert [gate.allow("k") for _ in range(6)] == [(True, 3)] + [(True, 0)] * 4 + [(False, 0)]
