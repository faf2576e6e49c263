"""Request/reply: the requests that wait for an answer, and the answers handed back.

A route with ``expects_reply = true`` records each request's correlation id, the asker
and a deadline.  An envelope that comes back carrying that correlation id is a reply: it
goes (through the route's ``reply_map``) to the asker, on the route's reply queue
(``QueueKey(route, reply=True)``).  A request with no reply by its deadline gets a
timeout result instead.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from broker._config import JunctionSettings
from broker._dead_letters import DeadLetters
from broker._envelope import CommandResult, Envelope, ExecResult, LogLine
from broker._ledger import Ledger
from broker._mapping import MappingError
from broker._messages import describe
from broker._overflow import Overflow
from broker._queue_key import QueueKey
from broker._routing import CompiledRoute

#: the router's logger: these lines are the router's (as before it was split in modules)
log = logging.getLogger("broker.router")

#: How the router queues an answer: (asker, queue, [reply], queue size, policy).
Offer = Callable[[str, QueueKey, list[Envelope], int, Overflow], None]


@dataclass
class _Pending:
    route: CompiledRoute
    asker: str
    deadline: float
    request: Envelope


class Replies:
    """The requests waiting for an answer, by correlation id (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        dead: DeadLetters,
        offer: Offer,
        settings: JunctionSettings,
        persist_kinds: Mapping[str, frozenset[str]],
        durable: bool,
    ) -> None:
        self.ledger = ledger
        self.dead = dead
        self.offer = offer
        #: the router's; both replaced on a reload
        self.settings = settings
        self.persist_kinds = persist_kinds
        #: answers of the kinds an asker keeps durable go to the outbox (when there is one)
        self.durable = durable
        self.pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[float, str]] = []

    def expect(self, route: CompiledRoute, env: Envelope) -> Envelope:
        """Record ``env`` as a request on ``route``; returns it with correlation id, asker
        and deadline set."""
        cid = env.correlation_id or env.id
        asker = env.reply_to or env.source
        timeout = route.spec.reply_timeout_s or self.settings.reply_timeout_s
        deadline = env.deadline or (time.time() + timeout)
        if env.correlation_id != cid or env.reply_to != asker or env.deadline != deadline:
            env = msgspec.structs.replace(
                env, correlation_id=cid, reply_to=asker, deadline=deadline
            )
        self.pending[cid] = _Pending(route, asker, deadline, env)
        heapq.heappush(self._deadlines, (deadline, cid))
        return env

    def reply(self, env: Envelope) -> None:
        """``env`` answers a pending request (its correlation id is in :attr:`pending`)."""
        assert env.correlation_id is not None
        waiting = self.pending.pop(env.correlation_id)
        self._answer(waiting, env)

    def _answer(self, waiting: _Pending, reply: Envelope) -> None:
        route = waiting.route
        mapping = route.reply_mapping
        if mapping is not None:
            try:
                reply = mapping.apply(reply)
            except MappingError as err:
                self.dead.dead_letter(route.name, reply, f"reply_map: {describe(err)}")
                return
        policy = self.policy(waiting.asker, reply)
        self.offer(
            waiting.asker, QueueKey(route.name, reply=True), [reply], route.queue_size, policy
        )

    def policy(self, asker: str, reply: Envelope) -> Overflow:
        """``persist`` for a kind the asker keeps durable (with an outbox), else ``block``."""
        keep = self.persist_kinds.get(asker, frozenset())
        return Overflow.PERSIST if reply.kind in keep and self.durable else Overflow.BLOCK

    def expire(self, now: float) -> None:
        """Answer each request past its deadline with a timeout result."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, cid = heapq.heappop(self._deadlines)
            waiting = self.pending.get(cid)
            if waiting is None or waiting.deadline > now:
                continue
            del self.pending[cid]
            self.ledger.counters[waiting.route.name].reply_timeouts += 1
            req = waiting.request
            text = f"no reply within the deadline on route {waiting.route.name!r}"
            log.warning(
                "reply timeout: route=%s correlation_id=%s target=%s",
                waiting.route.name,
                cid,
                ",".join(waiting.route.targets),
            )
            body: Any
            if req.kind == "exec_request":
                body = ExecResult(ok=False, error="timeout", message=text)
            elif req.kind == "command_request":
                body = CommandResult(ok=False, message=text)
            else:
                body = LogLine(level="error", message=text)
            reply = Envelope(
                source=",".join(waiting.route.targets),
                subject=req.subject,
                body=body,
                correlation_id=cid,
            )
            self._answer(waiting, reply)
