"""What the adapter does with the frames the agent sends (a mixin of ``AllxonAdapter``).

Each frame is decoded first (cheap, to tell an error frame from a method) and, unless it is
an error frame (no method, so no signature), verified on its raw text off the loop before
anything acts on it. Then:

- ``v2/notifyPluginCommand`` -> the command desk (``_commands``): a request envelope is
  emitted, or the command is rejected;
- ``v2/notifyPluginAlarmUpdate`` / ``ConfigUpdate`` confirm the announce and become
  ``alarm_update`` / ``config_update`` envelopes (undeclared names ignored with a log line);
- an error frame is logged by meaning; ``-32000`` (device offline) pauses sending, puts the
  data frames of the last seconds back and schedules a re-announce.

Bad, malformed and unexpected frames are dropped, counted in ``stats`` and logged (truncated,
redacted, at most one line per kind every 10 s for the repetitive ones).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from adapters.allxon._commands import CommandDesk
from adapters.allxon._declared import AlarmView, Declared, config_bodies
from adapters.allxon._outbox import Frame, Outbox
from adapters.allxon._stats import AllxonStats
from adapters.allxon.codec import (
    AgentError,
    AgentErrorFrame,
    AlarmUpdateParams,
    CodecError,
    ConfigUpdateParams,
    PluginAlarmUpdate,
    PluginCommand,
    PluginConfigUpdate,
    decode_frame,
)
from adapters.allxon.config import AllxonConfig
from adapters.allxon.connection import AgentLink, Crypto
from adapters.allxon.signing import SignatureError
from broker import Envelope, LogGate, redact, truncate

__all__ = ["InboundHandling"]


class InboundHandling:
    """Reading and acting on agent frames; mixed into ``AllxonAdapter``, whose state it uses."""

    if TYPE_CHECKING:  # provided by AllxonAdapter / Adapter
        import logging

        name: str
        config: AllxonConfig
        log: logging.Logger
        stats: AllxonStats
        crypto: Crypto
        desk: CommandDesk
        declared: Declared
        alarms: AlarmView
        outbox: Outbox
        quiet: bool
        _gate: LogGate
        _confirmed: trio.Event
        _awaiting_confirmation: bool
        _announce_error: str
        _reannounce_at: float | None
        _recent: deque[tuple[float, Frame]]

        def emit(
            self, envelopes: Sequence[Envelope], on_settled: Callable[[], None] | None = None
        ) -> None: ...

        def _replay_held_alerts(self) -> None: ...
        def _set_phase(self, phase: str) -> None: ...
        def _schedule_announce(self, after_s: float) -> None: ...

    async def _read(self, link: AgentLink) -> None:
        while True:
            raw = await link.receive()
            if isinstance(raw, bytes):
                self._malformed("a binary frame", raw.decode(errors="replace"))
                continue
            try:
                frame = decode_frame(raw)
            except CodecError as err:
                self._malformed(str(err), raw)
                continue
            if isinstance(frame, AgentErrorFrame):  # no method, so no signature to check
                self._on_error(frame)
                continue
            try:
                await self.crypto.verify(raw)
            except SignatureError as err:
                self.stats.bad_signatures += 1
                allowed, held = self._gate.allow("bad-signature")
                if allowed:
                    self.log.warning(
                        "dropped a frame from the agent that failed verification (%s; %d so "
                        "far%s): %s",
                        err.reason.value,
                        self.stats.bad_signatures,
                        f", {held} not logged" if held else "",
                        truncate(redact(raw), 160),
                    )
                continue
            match frame:
                case PluginCommand():
                    request = self.desk.receive(frame.params, trio.current_time())
                    if request is not None:
                        self.emit([request])
                case PluginAlarmUpdate():
                    self._on_alarms(frame.params)
                case PluginConfigUpdate():
                    self._on_configs(frame.params)
                case _:
                    self.stats.unexpected += 1
                    self.log.warning(
                        "the agent sent %s, a plugin-side method; ignored", frame.method
                    )

    def _malformed(self, what: str, raw: str) -> None:
        self.stats.malformed += 1
        allowed, held = self._gate.allow("malformed")
        if allowed:
            self.log.warning(
                "ignored a frame from the agent (%s; %d so far%s): %s",
                what,
                self.stats.malformed,
                f", {held} not logged" if held else "",
                truncate(redact(raw), 160),
            )

    def _on_error(self, frame: AgentErrorFrame) -> None:
        kind = frame.kind
        self.stats.agent_errors[kind.value] += 1
        text = f"{frame.error.code} {frame.error.message}".strip()
        if kind is AgentError.DEVICE_OFFLINE:
            self._on_offline(text)
            return
        if self._awaiting_confirmation:
            self._announce_error = text
        meaning = {
            AgentError.INVALID_REQUEST: "refused a frame as invalid (bad signature, epoch, "
            "size or budget)",
            AgentError.PARSE_ERROR: "could not parse a frame",
        }.get(kind, "sent an error code this bridge does not know")
        allowed, held = self._gate.allow(f"agent-error:{kind.value}")
        if allowed:
            self.log.warning(
                "the agent %s: %s (%d such errors%s)",
                meaning,
                truncate(text, 200),
                self.stats.agent_errors[kind.value],
                f", {held} not logged" if held else "",
            )

    def _on_offline(self, text: str) -> None:
        self._set_phase("offline")
        requeue = [frame for _, frame in self._recent]
        self._recent.clear()
        if requeue:
            self.outbox.put_back(requeue)
            self.stats.requeued += len(requeue)
        scheduled = self._reannounce_at is not None
        self._schedule_announce(self.config.offline_retry_s)
        if not scheduled:
            self.log.warning(
                "the agent reports the device offline (%s: it cannot reach the Allxon cloud); "
                "keeping %d buffered item(s) (%d frame(s) put back), re-announcing in %.0f s",
                text,
                len(self.outbox),
                len(requeue),
                self.config.offline_retry_s,
            )

    def _on_alarms(self, params: AlarmUpdateParams) -> None:
        self._confirmed.set()
        bodies, ignored = self.alarms.apply(params, self.declared)
        self._ignored("alarm", ignored)
        enabled = sorted(f"{m}/{a}" for m, a in self.alarms.enabled)
        self.log.info("alarm settings from the Portal: enabled %s", enabled or "none")
        self._emit_settings([(f"{b.module}/alarms", b) for b in bodies])
        self._replay_held_alerts()

    def _on_configs(self, params: ConfigUpdateParams) -> None:
        self._confirmed.set()
        bodies, ignored = config_bodies(params, self.declared)
        self._ignored("config", ignored)
        self._emit_settings([(f"{b.module}/configs", b) for b in bodies])

    def _ignored(self, what: str, ignored: list[str]) -> None:
        if ignored:
            self.stats.ignored_settings += len(ignored)
            self.log.info("%s update: ignored settings for undeclared %s", what, ignored)

    def _emit_settings(self, items: list[tuple[str, Any]]) -> None:
        if self.quiet or not items:
            return
        self.emit([Envelope(source=self.name, subject=s, body=b) for s, b in items])
