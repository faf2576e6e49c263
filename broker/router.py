"""The router actor: match, map, transform, dispatch; count everything; answer askers.

It receives batches from adapters (:class:`~broker.messages.Inbound`), runs each
envelope through every matching route, and offers the results to each target's
inlet in one batch per (target, route).  Targets confirm what they sent
(:class:`~broker.messages.Delivered`) or could not send (:class:`~broker.messages.Failed`).

Per route it counts ``matched``, ``queued``, ``delivered``, ``failed`` (dead-lettered)
and ``dropped`` by reason.  A mapping or transform that raises is contained: the
envelope is dead-lettered (logged with route and reason, counted, and sent to the
``dead_letter`` adapter when one is configured) and the router carries on.

Request/reply: a route with ``expects_reply = true`` records each request's
correlation id, the asker and a deadline.  An envelope that comes back carrying
that correlation id is a reply: it goes (through the route's ``reply_map``) to the
asker.  A request with no reply by its deadline gets a timeout result instead.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pluggy
import pykka

from broker.config import JunctionSettings
from broker.envelope import CommandResult, Envelope, ExecResult, LogLine
from broker.errors import TransformError
from broker.inlet import Inlet
from broker.mapping import MappingError
from broker.messages import Backlog, Delivered, Failed, Inbound, Snapshot, Tick, describe
from broker.routing import CompiledRoute, RoutingTable, run_route

log = logging.getLogger(__name__)

REPLY_SUFFIX = "::reply"
DEAD_LETTER_ROUTE = "dead_letter"


@dataclass
class RouteCounters:
    """What happened to envelopes on one route."""

    matched: int = 0
    queued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    replies: int = 0
    reply_timeouts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "queued": self.queued,
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": dict(self.dropped),
            # "filtered" is a transform's decision, not a loss: shown apart from real drops
            "filtered": self.dropped.get("filtered", 0),
            "dropped_total": sum(n for reason, n in self.dropped.items() if reason != "filtered"),
            "replies": self.replies,
            "reply_timeouts": self.reply_timeouts,
        }


@dataclass
class _Pending:
    route: CompiledRoute
    asker: str
    deadline: float
    request: Envelope


@dataclass(frozen=True, slots=True)
class Swap:
    """Replace the routing table in one step (hot reload)."""

    table: RoutingTable


class _Throttle:
    """At most ``per_s`` log lines per key per second; says how many it held back."""

    def __init__(self, per_s: int = 5) -> None:
        self.per_s = per_s
        self._window: dict[str, tuple[int, int, int]] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        now = int(time.monotonic())
        second, used, held = self._window.get(key, (now, 0, 0))
        if second != now:
            self._window[key] = (now, 1, 0)
            return True, held
        if used < self.per_s:
            self._window[key] = (second, used + 1, held)
            return True, 0
        self._window[key] = (second, used, held + 1)
        return False, 0


class Router(pykka.ThreadingActor):
    """Routes envelopes between adapters (see the module docstring)."""

    use_daemon_thread = True

    def __init__(
        self,
        table: RoutingTable,
        inlets: dict[str, Inlet],
        settings: JunctionSettings,
        hooks: pluggy.HookRelay | None = None,
        backlog: Backlog | None = None,
    ) -> None:
        super().__init__()
        self.table = table
        self.inlets = inlets
        self.settings = settings
        self.hooks = hooks
        self.backlog = backlog or Backlog()
        self.counters: dict[str, RouteCounters] = {r.name: RouteCounters() for r in table.routes}
        self.unrouted: Counter[tuple[str, str]] = Counter()
        self.dead_letters = 0
        self._pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._throttle = _Throttle()
        self._observe = self._observers()

    def _observers(self) -> tuple[bool, bool, bool]:
        if self.hooks is None:
            return False, False, False
        h = self.hooks
        return (
            bool(h.junction_envelopes_received.get_hookimpls()),
            bool(h.junction_envelopes_delivered.get_hookimpls()),
            bool(h.junction_envelope_dropped.get_hookimpls()),
        )

    # --- dispatch ---------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if type(message) is Inbound:
            self._route(message.source, message.envelopes)
        elif type(message) is Delivered:
            self._delivered(message)
        elif type(message) is Failed:
            name = message.route.removesuffix(REPLY_SUFFIX)
            for env in message.envelopes:
                self._dead_letter(name, env, f"{message.target}: {message.reason}")
        elif type(message) is Tick:
            self._expire_replies(time.time())
        elif type(message) is Snapshot:
            return self.snapshot()
        elif type(message) is Swap:
            self._swap(message.table)
        else:
            log.warning("router ignored an unknown message %r", type(message).__name__)
        return None

    def _route(self, source: str, envelopes: list[Envelope]) -> None:
        self.backlog.sub(len(envelopes))
        if self._observe[0] and self.hooks is not None:
            self.hooks.junction_envelopes_received(adapter=source, envelopes=envelopes)
        batches: dict[tuple[str, CompiledRoute], list[Envelope]] = {}
        pending = self._pending
        table = self.table
        counters = self.counters
        for env in envelopes:
            if pending and env.correlation_id in pending:
                self._reply(env)
                continue
            try:
                routes = table.match(env)
            except Exception as err:  # a predicate bug must not take the router down
                self._dead_letter("(matching)", env, f"matching raised {describe(err)}")
                continue
            if not routes:
                self._unrouted(env)
                continue
            for route in routes:
                c = counters[route.name]
                c.matched += 1
                if route.mapping is None and not route.transforms:
                    outs = [env]
                else:
                    try:
                        outs = run_route(route, env)
                    except (MappingError, TransformError) as err:
                        self._dead_letter(route.name, env, describe(err))
                        continue
                    except Exception as err:  # anything else in mapping: same containment
                        self._dead_letter(route.name, env, f"route raised {describe(err)}")
                        continue
                    if not outs:
                        self._drop(route.name, env, "filtered")
                        continue
                if route.spec.expects_reply:
                    outs = [self._expect_reply(route, out) for out in outs]
                for target in route.targets:
                    key = (target, route)
                    batch = batches.get(key)
                    if batch is None:
                        batches[key] = list(outs)
                    else:
                        batch.extend(outs)
        for (target, route), batch in batches.items():
            self._offer(target, route.name, batch, route.queue_size, route.overflow)

    def _offer(self, target: str, name: str, batch: list[Envelope], size: int, policy: str) -> None:
        counters = self.counters[name.removesuffix(REPLY_SUFFIX)]
        inlet = self.inlets.get(target)
        if inlet is None:  # validated at load time; only reachable after a bad swap
            for env in batch:
                self._drop(name, env, f"no adapter {target!r}")
            return
        result = inlet.offer(name, batch, size, policy)
        counters.queued += result.accepted
        for env, reason in result.dropped:
            self._drop(name, env, reason, target)

    def _delivered(self, msg: Delivered) -> None:
        name = msg.route.removesuffix(REPLY_SUFFIX)
        c = self.counters.get(name)
        if c is not None:
            if name == msg.route:
                c.delivered += msg.count
            else:  # "<route>::reply": an answer handed back to the asker
                c.replies += msg.count
        if self._observe[1] and self.hooks is not None:
            self.hooks.junction_envelopes_delivered(
                route=msg.route, target=msg.target, count=msg.count
            )

    # --- request / reply --------------------------------------------------------

    def _expect_reply(self, route: CompiledRoute, env: Envelope) -> Envelope:
        cid = env.correlation_id or env.id
        asker = env.reply_to or env.source
        timeout = route.spec.reply_timeout_s or self.settings.reply_timeout_s
        deadline = env.deadline or (time.time() + timeout)
        if env.correlation_id != cid or env.reply_to != asker or env.deadline != deadline:
            env = msgspec.structs.replace(
                env, correlation_id=cid, reply_to=asker, deadline=deadline
            )
        self._pending[cid] = _Pending(route, asker, deadline, env)
        heapq.heappush(self._deadlines, (deadline, cid))
        return env

    def _reply(self, env: Envelope) -> None:
        assert env.correlation_id is not None
        waiting = self._pending.pop(env.correlation_id)
        self._answer(waiting, env)

    def _answer(self, waiting: _Pending, reply: Envelope) -> None:
        route = waiting.route
        mapping = route.reply_mapping
        if mapping is not None:
            try:
                reply = mapping.apply(reply)
            except MappingError as err:
                self._dead_letter(route.name, reply, f"reply_map: {describe(err)}")
                return
        self._offer(waiting.asker, route.name + REPLY_SUFFIX, [reply], route.queue_size, "block")

    def _expire_replies(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, cid = heapq.heappop(self._deadlines)
            waiting = self._pending.get(cid)
            if waiting is None or waiting.deadline > now:
                continue
            del self._pending[cid]
            self.counters[waiting.route.name].reply_timeouts += 1
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

    # --- losses -------------------------------------------------------------------

    def _drop(self, route: str, env: Envelope, reason: str, target: str = "") -> None:
        c = self.counters.get(route.removesuffix(REPLY_SUFFIX))
        if c is not None:
            c.dropped[reason] += 1
        if reason != "filtered":
            ok, held = self._throttle.allow(f"drop:{route}")
            if ok:
                log.warning(
                    "dropped: route=%s target=%s reason=%s id=%s%s",
                    route,
                    target or "-",
                    reason,
                    env.id,
                    f" ({held} more not logged)" if held else "",
                )
        if self._observe[2] and self.hooks is not None:
            self.hooks.junction_envelope_dropped(route=route, envelope=env, reason=reason)

    def _dead_letter(self, route: str, env: Envelope, reason: str) -> None:
        c = self.counters.get(route)
        if c is not None:
            c.failed += 1
        self.dead_letters += 1
        ok, held = self._throttle.allow(f"dead:{route}")
        if ok:
            log.warning(
                "dead letter: route=%s id=%s kind=%s reason=%s%s",
                route,
                env.id,
                env.kind,
                reason,
                f" ({held} more not logged)" if held else "",
            )
        if self._observe[2] and self.hooks is not None:
            self.hooks.junction_envelope_dropped(
                route=route, envelope=env, reason=f"dead_letter: {reason}"
            )
        sink = self.settings.dead_letter
        if sink and sink in self.inlets:
            marked = msgspec.structs.replace(
                env,
                headers={
                    **env.headers,
                    "x-dead-letter-route": route,
                    "x-dead-letter-reason": reason,
                },
            )
            self.inlets[sink].offer(
                DEAD_LETTER_ROUTE, [marked], self.settings.queue_size, "drop_oldest"
            )

    def _unrouted(self, env: Envelope) -> None:
        key = (env.source, env.kind)
        self.unrouted[key] += 1
        if self.unrouted[key] == 1:
            log.info(
                "no route takes %s from %s (first one: subject=%r); counting them as unrouted",
                env.kind,
                env.source,
                env.subject,
            )

    # --- table and introspection -----------------------------------------------

    def _swap(self, table: RoutingTable) -> None:
        self.table = table
        for r in table.routes:
            self.counters.setdefault(r.name, RouteCounters())
        log.info("routing table replaced: %d routes", len(table.routes))

    def snapshot(self) -> dict[str, Any]:
        """Counters per route, unrouted counts, pending replies and queue depths."""
        return {
            "routes": {name: c.as_dict() for name, c in self.counters.items()},
            "unrouted": {f"{s}/{k}": n for (s, k), n in self.unrouted.items()},
            "dead_letters": self.dead_letters,
            "pending_replies": len(self._pending),
            "queues": {name: inlet.depths() for name, inlet in self.inlets.items()},
        }
