"""The supervisor actor: starts adapter hosts, restarts crashed ones with back-off.

pykka has no supervision of its own.  When an adapter's task (on the shared loop, or
on its own loop with ``own_thread``) ends with an error, its host tells the supervisor
(:class:`~broker.messages.Crashed`); the supervisor waits ``min(cap, base * 2**n)``
seconds, jittered to 50-100 %, then starts a fresh instance on the same inlet, so
nothing queued for it is lost.  ``n`` counts consecutive crashes and resets once an
instance has run for a minute.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from broker.adapter import Adapter, AdapterHost, AdapterStatus
from broker.backoff import Backoff
from broker.inlet import Inlet
from broker.loop import SharedLoop
from broker.messages import Crashed, RestartDue

log = logging.getLogger(__name__)

STABLE_AFTER_S = 60.0


@dataclass
class _Slot:
    name: str
    make: Callable[[], Adapter]
    inlet: Inlet
    status: AdapterStatus
    host: pykka.ActorRef[Any] | None = None
    generation: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0, STABLE_AFTER_S))
    timer: threading.Timer | None = None


class Supervisor(pykka.ThreadingActor):
    """Owns every adapter host (see the module docstring)."""

    use_daemon_thread = True

    def __init__(
        self, backoff_s: float, backoff_max_s: float, loop: SharedLoop | None = None
    ) -> None:
        super().__init__()
        #: where adapters without ``own_thread`` run (None: each on a thread of its own)
        self.loop = loop
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._slots: dict[str, _Slot] = {}
        self._stopping = False

    def add(
        self, name: str, make: Callable[[], Adapter], inlet: Inlet, status: AdapterStatus
    ) -> None:
        """Start adapter ``name``; ``make`` builds a fresh instance for each (re)start."""
        slot = self._slots[name] = _Slot(
            name,
            make,
            inlet,
            status,
            backoff=Backoff(self.backoff_s, self.backoff_max_s, STABLE_AFTER_S),
        )
        self._start(slot)

    def remove(self, name: str) -> None:
        """Stop adapter ``name`` and forget it (its inlet stays with the caller)."""
        slot = self._slots.pop(name, None)
        if slot is not None:
            self._stop_slot(slot)

    def quiesce(self) -> None:
        """Ask every adapter to stop producing (sinks keep draining their queues)."""
        for slot in self._slots.values():
            if slot.host is not None and slot.host.is_alive():
                slot.host.ask("quiesce")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crashed):
            self._crashed(message)
        elif isinstance(message, RestartDue):
            slot = self._slots.get(message.adapter)
            if slot is not None and slot.generation == message.generation and not self._stopping:
                self._restart(slot)
        return None

    def on_stop(self) -> None:
        self._stopping = True
        for slot in self._slots.values():
            self._stop_slot(slot)

    def _start(self, slot: _Slot) -> None:
        adapter = slot.make()
        slot.generation += 1
        slot.backoff.started()
        loop = None if adapter.config.own_thread else self.loop
        slot.host = AdapterHost.start(
            adapter, slot.inlet, self.actor_ref, slot.generation, loop=loop
        )

    def _stop_slot(self, slot: _Slot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
        if slot.host is not None:
            try:
                slot.host.stop(timeout=15)
            except pykka.ActorDeadError:
                pass
            except pykka.Timeout:
                log.error("adapter %s did not stop within 15 s", slot.name)
            slot.host = None

    def _crashed(self, msg: Crashed) -> None:
        slot = self._slots.get(msg.adapter)
        if slot is None or slot.generation != msg.generation or self._stopping:
            return
        ran = slot.backoff.lasted()
        delay = slot.backoff.failed()
        slot.status.restarts += 1
        slot.status.set("restarting", f"in {delay:.1f} s after: {msg.error}")
        log.warning(
            "adapter %s crashed after %.1f s (%s); restart %d in %.1f s",
            msg.adapter,
            ran,
            msg.error,
            slot.backoff.failures,
            delay,
        )
        due = RestartDue(msg.adapter, msg.generation)
        slot.timer = threading.Timer(delay, self.actor_ref.tell, args=(due,))
        slot.timer.daemon = True
        slot.timer.start()

    def _restart(self, slot: _Slot) -> None:
        if slot.host is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                slot.host.stop(timeout=15)
        self._start(slot)
        log.info("adapter %s restarted (generation %d)", slot.name, slot.generation)
