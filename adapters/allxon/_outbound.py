"""What the router sends the Allxon adapter: data into the buffer, properties, command acks.

Mixed into ``AllxonAdapter`` (as ``_inbound.InboundHandling`` is for what the agent sends),
whose state it uses; the adapter's module docstring says what each kind becomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from adapters.allxon._commands import CommandDesk
from adapters.allxon._declared import AlarmView, Declared, Rejected
from adapters.allxon._intake import AlarmNotEnabled, data_item, property_modules
from adapters.allxon._outbox import Entry, Frame, Outbox
from adapters.allxon._stats import AllxonStats
from adapters.allxon.cards import Module
from adapters.allxon.config import AllxonConfig

if TYPE_CHECKING:
    from adapters.allxon.connection import AgentLink
from broker import Alert, Envelope, LogGate, Property, QueueKey

__all__ = ["ACKED_ON_SEND", "MAX_HELD_ALERTS", "OutboundHandling"]

#: Kinds acknowledged to the router when their frame is sent, not when buffered.
ACKED_ON_SEND = frozenset({"event", "alert"})
MAX_HELD_ALERTS = 100  # alerts kept while the Portal's alarm settings have not come yet


class OutboundHandling:
    """``deliver`` and what it needs; mixed into ``AllxonAdapter``, whose state it uses."""

    if TYPE_CHECKING:  # provided by AllxonAdapter / Adapter
        import logging

        config: AllxonConfig
        log: logging.Logger
        stats: AllxonStats
        desk: CommandDesk
        declared: Declared
        alarms: AlarmView
        outbox: Outbox
        modules: list[Module]
        app_guid: str
        held_alerts: list[tuple[str, Envelope]]
        _gate: LogGate
        _link: AgentLink | None
        _announce_wanted: trio.Event

        def defer(self, route: str, envelopes: Sequence[Envelope]) -> None: ...
        def ack(self, route: str, envelopes: Sequence[Envelope]) -> None: ...
        def fail(
            self, route: str, envelopes: Sequence[Envelope], reason: str, permanent: bool = True
        ) -> None: ...

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        """Buffer data (returns at once), apply properties, turn replies into acks.

        Events and alerts are acknowledged to the router only when their frame is sent
        (:meth:`defer` now, :meth:`ack` then), so a ``persist`` route keeps them in the
        outbox until the agent has them; latest-value states and metrics are acknowledged
        when buffered.
        """
        allow = self.config.undeclared == "send"
        for env in batch:
            try:
                if QueueKey.parse(route).reply:
                    # acknowledged when the command's ack frame is sent, not before
                    self.defer(route, [env])
                    if not self.desk.reply(env, trio.current_time(), route):
                        self.fail(
                            route,
                            [env],
                            "its command is no longer pending (answered or timed out already)",
                        )
                elif isinstance(env.body, Property):
                    self._property(env.body)
                else:
                    kind, module, item = data_item(
                        env, self.declared, self.alarms, self.outbox, allow
                    )
                    handle = (route, env) if kind in ACKED_ON_SEND else None
                    if handle is not None:
                        self.defer(route, [env])
                    self.outbox.add(kind, module, item, handle)
            except AlarmNotEnabled as err:
                if self.alarms.updates == 0 and len(self.held_alerts) < MAX_HELD_ALERTS:
                    # The Portal has not said yet which alarms are on: keep the alert until
                    # it does, rather than lose a first trigger sent before the settings.
                    self.defer(route, [env])
                    self.held_alerts.append((route, env))
                else:
                    self._alarm_not_enabled(err.body, route, env)
            except Rejected as err:
                self.stats.rejected_envelopes += 1
                self.fail(route, [env], str(err))

    def _replay_held_alerts(self) -> None:
        """The Portal's alarm settings arrived: send the held alerts of enabled alarms."""
        held, self.held_alerts = self.held_alerts, []
        allow = self.config.undeclared == "send"
        for route, env in held:
            try:
                kind, module, item = data_item(env, self.declared, self.alarms, self.outbox, allow)
                self.outbox.add(kind, module, item, (route, env))
            except AlarmNotEnabled as err:
                self._alarm_not_enabled(err.body, route, env)
        if held:
            self.log.info(
                "%d alert(s) held until the Portal's alarm settings came: replayed", len(held)
            )

    def _acknowledge_sent(self, frame: Frame) -> None:
        """A frame went out: acknowledge its deferred items to the router (once each)."""
        by_route: dict[str, list[Envelope]] = {}
        for entry in frame.entries:
            if entry.handle is not None:
                route, env = entry.handle
                by_route.setdefault(route, []).append(env)
                entry.handle = None
        for route, envs in by_route.items():
            self.ack(route, envs)

    def _entry_dropped(self, entry: Entry, reason: str) -> None:
        """A deferred item fell out of a full buffer: fail it, so the route counts it."""
        if entry.handle is not None:
            route, env = entry.handle
            entry.handle = None
            self.fail(route, [env], f"Allxon adapter: {reason}")

    def _alarm_not_enabled(self, body: Alert, route: str, env: Envelope) -> None:
        # Not silently "delivered": the route dead-letters it, replayable once enabled.
        self.fail(route, [env], f"alarm {body.module}/{body.alarm} is not enabled in the Portal")
        self.outbox.dropped["alarm not enabled"] += 1
        allowed, held = self._gate.allow(f"alarm:{body.module}/{body.alarm}")
        if allowed:
            self.log.info(
                "alert %s for %s/%s dropped: the Portal has not enabled that alarm%s",
                body.action,
                body.module,
                body.alarm,
                f" ({held} more since the last line)" if held else "",
            )

    def _property(self, body: Property) -> None:
        modules = property_modules(self.config, self.app_guid, self.modules, body)
        if modules is None:
            return
        self.modules = modules
        self.log.info("property %s/%s changed; re-announcing", body.module, body.name)
        if self._link is not None:
            self._announce_wanted.set()
