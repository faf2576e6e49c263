"""A stored envelope that does not decode stops neither its queue nor the router (issue 17,
item 1: the envelope as stored in the outbox and the dead-letter store).

A metric whose value was NaN is written by msgspec's encoder with ``null``, which does not
decode as a float; before, ``Outbox.load`` raised msgspec's error out of the router's
recovery and refill, so the rows behind it were never delivered. Now the row becomes a
dead letter as it is read, counted as failed in its route's ledger, and the queue goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from broker._envelope import Envelope, Metric
from broker._outbox import Outbox
from broker._runtime import Loaded, Runtime
from tests.broker.test_outbox import ledgers_balanced, persist_config
from tests.conftest import wait_until
from tests.support import core_plugin


def metric(value: float, name: str) -> Envelope:
    return Envelope(source="src", subject=name, body=Metric(module="m", name=name, value=value))


def test_rows_left_by_the_last_run_are_delivered_around_an_unreadable_one(
    load_config: Callable[[str], Loaded], runtime_of: Callable[[Loaded], Runtime], tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "state" / "outbox.sqlite3", checkpoints=False)
    envs = [metric(float(i), f"m{i}") for i in range(250)]
    envs[1] = metric(math.nan, "bad")  # a window of 100 in memory: the refills read on
    box.append("sink", "r", envs)
    box.close()
    core_plugin.PROGRESS["src"] = 300  # the source has nothing left to send
    rt = runtime_of(load_config(persist_config(count=300)))
    wait_until(lambda: len(core_plugin.received("sink")) == 249)
    got = [e.subject for e in core_plugin.received("sink")]
    assert got == [e.subject for e in envs if e.subject != "bad"]
    wait_until(lambda: rt.outbox is not None and rt.outbox.rows == 0)
    routes = ledgers_balanced(rt)
    assert routes["r"]["ledger"]["dead_lettered"] == 1 and routes["r"]["recovered"] == 250
    snapshot = rt.snapshot()
    assert snapshot["outbox"]["unreadable"] == 1 and snapshot["outbox"]["dead_letters"] == 1
    assert rt.outbox is not None
    (dead,) = rt.outbox.dead_rows()
    assert dead.route == "r" and "Expected `float`, got `null`" in dead.reason
    assert rt.router is not None and rt.router.is_alive()
