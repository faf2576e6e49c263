"""When an envelope is stale, and how the reason says so: one rule for every stage.

An envelope with a ``deadline`` (epoch seconds: a reply's, or ``ts + stale_after_s`` on
a ``persist`` route) is stale from that moment on; it is dead-lettered instead of
delivered, with :func:`stale_reason` naming where it was found stale.
"""

from __future__ import annotations

from broker._envelope import Envelope

#: Where an envelope is found stale (for :func:`stale_reason`).
BEFORE_SENDING = "before it could be sent"
IN_THE_OUTBOX = "in the outbox"


def is_stale(env: Envelope, now: float) -> bool:
    """True when ``env`` has a deadline and it is not after ``now`` (``time.time()``)."""
    deadline = env.deadline
    return deadline is not None and deadline <= now


def stale_reason(where: str) -> str:
    """The dead-letter reason of a stale envelope: ``where`` it was found stale, e.g.
    :data:`BEFORE_SENDING`, :data:`IN_THE_OUTBOX` or ``"(<why delivery failed>)"``."""
    return f"stale: its deadline passed {where}"
