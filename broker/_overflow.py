"""What a route does when a target's queue is full: its ``overflow`` policy.

The values are the TOML ones (``overflow = "persist"``); ``auto`` is what leaving
``overflow`` out means (see :func:`broker._routing.resolve_policies`).  A ``str`` enum, so
a policy compares equal to its text (``Overflow.BLOCK == "block"``) wherever text is
still used (the inlets).
"""

from __future__ import annotations

from enum import StrEnum


class Overflow(StrEnum):
    """A route's overflow policy (see :mod:`broker._inlet` for the first three)."""

    DROP_NEWEST = "drop_newest"
    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"
    #: kept in the outbox until the target acknowledges it (see :mod:`broker._durable`)
    PERSIST = "persist"
    #: ``persist`` for the kinds the target keeps durable, ``drop_oldest`` for the rest
    AUTO = "auto"
