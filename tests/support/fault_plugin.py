"""Test-only transform for the fault tests: one a test can break and then fix.

``fails_on_odd`` raises ``ValueError`` for an envelope whose ``body.value`` is odd while
:data:`BROKEN` is set, and passes every envelope through once a test clears it -- a
stand-in for a transform bug that is fixed in a later release, after which the dead
letters it made are replayed (tests/test_faults.py). The flag is a ``threading.Event``
because the router calls the transform on its own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from broker._envelope import Envelope
from broker.hookspecs import Transform, hookimpl, transform

#: Set: odd values raise (the bug). Clear: every envelope passes (the fix).
BROKEN = threading.Event()


def reset() -> None:
    """Back to the broken behaviour (each test starts from it)."""
    BROKEN.set()


reset()


@transform("fails_on_odd", "raises for odd body.value while fault_plugin.BROKEN is set")
def fails_on_odd(env: Envelope) -> Envelope:
    value = getattr(env.body, "value", 0)
    if BROKEN.is_set() and int(value) % 2:
        raise ValueError(f"fails_on_odd: odd value {value} (the bug under test)")
    return env


@hookimpl
def junction_transforms() -> Sequence[Transform]:
    return [fails_on_odd]
