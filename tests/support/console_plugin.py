"""A transform for the web console's tests: ``flaky`` raises while :data:`BROKEN` is set.

So a test makes dead letters at will (route stage, the reason naming the subject), then
clears :data:`BROKEN` and replays them from the console: the replay runs the route again
and, the transform now passing, reaches the target.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from broker._envelope import Envelope
from broker.hookspecs import Transform, hookimpl, transform

BROKEN = threading.Event()


@transform("flaky", "raises while tests.support.console_plugin.BROKEN is set")
def flaky(env: Envelope) -> Envelope:
    if BROKEN.is_set():
        raise RuntimeError(f"flaky refused {env.subject}")
    return env


@hookimpl
def junction_transforms() -> Sequence[Transform]:
    return [flaky]
