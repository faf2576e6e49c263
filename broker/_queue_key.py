"""The key of one queue the router feeds: a route's, or the answers it hands back.

A route ``r`` has one queue per target, named ``r``; a route that expects replies also
has a queue at the asker named ``r::reply`` for the answers.  Inside the router and its
durable queues a queue is a :class:`QueueKey`; its :attr:`~QueueKey.name` is the text
the inlets, the adapters (``deliver(route, ...)``) and the outbox rows use, so rows
written by any version load as the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What a reply queue's name adds to its route's name (in inlets, messages and outbox rows).
REPLY_SUFFIX = "::reply"


@dataclass(frozen=True, slots=True)
class QueueKey:
    """Route ``route``'s queue; ``reply``: the one carrying answers back to the asker."""

    route: str
    reply: bool = False

    @property
    def name(self) -> str:
        """The queue's name where text is used: inlets, adapters, logs, outbox rows."""
        return self.route + REPLY_SUFFIX if self.reply else self.route

    @classmethod
    def parse(cls, name: str) -> QueueKey:
        """The key a queue name stands for (the inverse of :attr:`name`)."""
        if name.endswith(REPLY_SUFFIX):
            return cls(name[: -len(REPLY_SUFFIX)], True)
        return cls(name)

    def __str__(self) -> str:
        return self.name
