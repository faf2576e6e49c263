"""The call budget (pure, on a fake clock): the rolling window is never exceeded, data keeps
out of the reserve, the bucket paces data, stamps survive a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.allxon._budget import CallBudget, load_stamps, save_stamps


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_bucket_size_then_paced_at_the_hourly_rate() -> None:
    clock = Clock()
    budget = CallBudget(500, 3600, 30, 50, clock=clock)
    assert budget.data_allowance() == 30
    for _ in range(30):
        budget.spend(priority=False)
    assert budget.data_allowance() == 0
    assert budget.wait_s(priority=False) == pytest.approx(3600 / 500)
    clock.now += 3600 / 500
    assert budget.data_allowance() == 1
    clock.now += 3600  # a quiet hour refills the bucket to its size, not beyond
    assert budget.data_allowance() == 30


def test_data_never_uses_the_reserve_but_priority_calls_may() -> None:
    clock = Clock()
    budget = CallBudget(10, 3600, 100, 3, clock=clock)
    for _ in range(7):
        budget.spend(priority=False)
    assert budget.data_allowance() == 0
    assert budget.priority_allowance() == 3
    with pytest.raises(RuntimeError):
        budget.spend(priority=False)
    for _ in range(3):
        budget.spend(priority=True)
    assert budget.priority_allowance() == 0
    # the oldest call leaves the window after window + slack
    assert budget.wait_s(priority=True) == pytest.approx(3600 + budget.slack_s)
    clock.now += 3600 + budget.slack_s + 0.001
    assert budget.used() == 0 and budget.priority_allowance() == 10


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=400), st.booleans(), st.integers(1, 20)),
        max_size=80,
    )
)
def test_no_rolling_window_ever_holds_more_than_the_limit(
    steps: list[tuple[float, bool, int]],
) -> None:
    clock = Clock()
    budget = CallBudget(20, 1000, 5, 4, clock=clock)
    spent: list[float] = []
    for gap, priority, tries in steps:
        clock.now += gap
        for _ in range(tries):
            allowed = budget.priority_allowance() if priority else budget.data_allowance()
            if allowed < 1:
                break
            budget.spend(priority)
            spent.append(clock.now)
    # every window of 1000 s (the agent's view) holds at most 20 calls
    for i, start in enumerate(spent):
        in_window = [t for t in spent[i:] if t < start + 1000]
        assert len(in_window) <= 20


def test_stamps_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    budget = CallBudget(5, 3600, 5, 1, clock=clock)
    for _ in range(4):
        budget.spend(priority=False)
    path = tmp_path / "calls.json"
    save_stamps(path, budget)
    again = CallBudget(5, 3600, 5, 1, clock=clock, stamps=load_stamps(path))
    assert again.used() == 4 and again.data_allowance() == 0
    assert load_stamps(tmp_path / "none.json") == []
    path.write_text('{"nope": 1}')
    with pytest.raises(ValueError):
        load_stamps(path)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CallBudget(10, 3600, 5, 10)
    with pytest.raises(ValueError):
        CallBudget(10, 0, 5, 1)
