"""Portal commands in flight: from ``v2/notifyPluginCommand`` to the second ack.

``CommandDesk`` holds the commands waiting for a reply (by the correlation id of the
``command_request`` envelope) and the acks waiting to be sent. It does no I/O and reads no
clock of its own (``now`` is the trio clock the adapter passes in), so the whole ack sequence
is plain code:

1. ``receive(params, now)`` -> the envelope to emit, or None. It queues ``ACCEPTED`` when the
   command is declared, its params are valid and at least one route takes it (the adapter's
   ``routes_for``); otherwise ``REJECTED`` with the reason.
2. ``reply(envelope)`` (a reply route delivered it) -> queues ``ACKED`` or ``ERRORED``
   (``_acks.outcome_of``); a reply for a command no longer pending is counted and ignored.
3. ``expire(now)`` -> ``ERRORED`` "no reply within N s" for every command past its deadline.
   The deadline is one second after the envelope's, so the router's own timeout result
   (which has the route's name in it) normally arrives first.
4. ``next_ack(now)`` / ``sent()`` -> the ack to send next; an ack older than the Portal's
   1-minute limit is dropped with a log line (it could only confuse the Portal).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.allxon._acks import ack_message, outcome_of, state_items, with_epoch
from adapters.allxon._declared import Declared, check_command
from adapters.allxon._stats import AllxonStats
from adapters.allxon.codec import CommandParams, PluginCommandAck
from broker import Envelope, new_id, truncate

__all__ = ["PORTAL_COMMAND_LIMIT_S", "CommandDesk"]

PORTAL_COMMAND_LIMIT_S = 60.0


@dataclass
class _Pending:
    command: CommandParams
    name: str
    deadline: float


@dataclass
class _Ack:
    message: PluginCommandAck
    queued_at: float
    #: (route, reply envelope) to acknowledge to the router once this ack is sent
    handle: tuple[str, Envelope] | None = None


class CommandDesk:
    """Commands waiting for replies and acks waiting to be sent (see the module docstring)."""

    def __init__(
        self,
        source: str,
        app_guid: str,
        declared: Declared,
        timeout_s: float,
        routes_for: Callable[[Envelope], list[str]],
        stats: AllxonStats,
        log: logging.Logger,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        #: the ``wake`` callback runs whenever an ack is queued (the sender waits for it)
        self.source = source
        self.app_guid = app_guid
        self.declared = declared
        self.timeout_s = timeout_s
        self.routes_for = routes_for
        self.stats = stats
        self.log = log
        self.wake = wake
        self.pending: dict[str, _Pending] = {}
        self.acks: deque[_Ack] = deque()
        #: Called with (route, envelope, reason) when a reply's ack is dropped unsent.
        self.on_unsent: Callable[[str, Envelope, str], None] | None = None
        self.quiet = False

    def receive(self, params: CommandParams, now: float) -> Envelope | None:
        """A command from the agent: the request envelope to emit (ACCEPTED queued), or None
        (REJECTED queued with the reason)."""
        self.stats.commands["received"] += 1
        check = check_command(self.declared, params)
        name = check.command
        if check.ignored:
            self.log.info("command %s: undeclared parameters ignored: %s", name, check.ignored)
        if self.quiet:
            self._reject(params, name, "the bridge is shutting down", now)
            return None
        if check.request is None:
            self._reject(params, name, check.reason, now)
            return None
        request = check.request
        cid = new_id()
        env = Envelope(
            source=self.source,
            subject=f"{request.module}/{request.command}",
            body=request,
            correlation_id=cid,
            deadline=time.time() + self.timeout_s,
        )
        if not self.routes_for(env):
            reason = (
                f"no route takes command {request.module}/{request.command} "
                f"(add a route from {self.source!r} with kind = 'command_request')"
            )
            self._reject(params, name, reason, now)
            return None
        self.pending[cid] = _Pending(params, name, now + self.timeout_s + 1.0)
        self.queue_ack(params, name, "ACCEPTED", {}, now)
        self.log.info(
            "command %s %s/%s accepted (params %s)",
            params.command_id,
            request.module,
            request.command,
            truncate(json.dumps(request.params, default=str), 200),
        )
        return env

    def _reject(self, params: CommandParams, name: str, reason: str, now: float) -> None:
        self.log.warning("command %s %r rejected: %s", params.command_id, name, reason)
        self.queue_ack(params, name, "REJECTED", {"response": reason}, now)

    def reply(self, env: Envelope, now: float, route: str = "") -> bool:
        """A reply came back: queue ACKED or ERRORED for its command (False: not pending)."""
        pending = self.pending.pop(env.correlation_id or "", None)
        if pending is None:
            self.stats.late_replies += 1
            self.log.info(
                "a %s came back for correlation id %s, which is no longer pending "
                "(answered or timed out already); ignored",
                env.kind,
                env.correlation_id,
            )
            return False
        outcome = outcome_of(env.body)
        command = pending.command
        handle = (route, env) if route else None
        self.queue_ack(
            command, pending.name, outcome.state, outcome.result, now, outcome.states, handle
        )
        self.log.info(
            "command %s %s: %s %s",
            command.command_id,
            pending.name,
            outcome.state,
            truncate(json.dumps(outcome.result), 200),
        )
        return True

    def expire(self, now: float) -> int:
        """ERRORED for every command past its deadline; returns how many."""
        expired = [cid for cid, p in self.pending.items() if p.deadline <= now]
        for cid in expired:
            pending = self.pending.pop(cid)
            self.stats.commands["timed_out"] += 1
            text = f"no reply within {self.timeout_s:g} s"
            self.log.warning("command %s %s: %s", pending.command.command_id, pending.name, text)
            self.queue_ack(pending.command, pending.name, "ERRORED", {"response": text}, now)
        return len(expired)

    def queue_ack(
        self,
        command: CommandParams,
        name: str,
        state: str,
        result: dict[str, str],
        now: float,
        states: dict[str, Any] | None = None,
        handle: tuple[str, Envelope] | None = None,
    ) -> None:
        """Queue an ack (kept under 2 KB; states that do not fit their cards left out)."""
        wall = time.time()
        items, problems = state_items(self.declared, command.module_name, states or {}, wall)
        for problem in problems:
            self.log.warning("command %s: state left out of the ack: %s", name, problem)
        message, note = ack_message(self.app_guid, command, name, state, result, wall, items)
        if note:
            self.log.warning("command %s %s: %s", name, command.command_id, note)
        self.acks.append(_Ack(message, now, handle))
        self.stats.commands[state.lower()] += 1
        self.wake()

    def next_ack(self, now: float) -> PluginCommandAck | None:
        """The next ack to send, stamped with the current epoch (call ``sent`` after sending)."""
        while self.acks:
            ack = self.acks[0]
            if now - ack.queued_at <= PORTAL_COMMAND_LIMIT_S:
                return with_epoch(ack.message, time.time())
            dropped = self.acks.popleft()
            if dropped.handle is not None and self.on_unsent is not None:
                self.on_unsent(*dropped.handle, "its ack was not sent within the Portal's 1 minute")
            self.stats.acks_expired += 1
            self.log.warning(
                "ack %s of command %s dropped: not sent within the Portal's 1 minute",
                ack.message.params.command_state,
                ack.message.params.command_id,
            )
        return None

    def sent(self) -> tuple[str, Envelope] | None:
        """The ack ``next_ack`` returned was sent; returns the reply to acknowledge, if any."""
        return self.acks.popleft().handle
