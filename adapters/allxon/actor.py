"""The Allxon Octo plugin adapter: Junction as a plugin of the local Allxon agent.

Inbound (emitted to the router):
    ``command_request``  a Portal command for a declared command card, params by name; its
                         ``correlation_id`` is fresh (kept with the command's ack context)
                         and its ``deadline`` is now + ``command_timeout_s``
    ``alarm_update``     per declared module, when the Portal changes alarm settings (an
                         empty update: one with ``alarms = []`` per module with alarms)
    ``config_update``    per declared module in a config update

Outbound (``deliver``):
    ``state``            coalesced: the latest value per module/name wins
    ``metric``/``event`` batched into as few messages as fit 2 KB
    ``alert``            only for alarms the Portal enabled (latest AlarmUpdate); otherwise
                         dropped and counted as "alarm not enabled"
    ``property``         updates the declared value; a change re-announces the plugin
    ``command_result``   (or ``exec_result``) on the reply route: ACKED / ERRORED

Decisions:

- ``deliver`` returning means *accepted into the adapter's buffer*: the agent takes 500
  calls an hour, so data waits here, coalesced (see ``_outbox``), not in the route's queue.
  Every loss is counted by reason (``counters()["dropped"]``, the status detail) and
  logged; an envelope that can never be sent (undeclared name, value too long, an item that
  cannot fit 2 KB even alone) is dead-lettered with ``self.fail`` and the reason.
- Budget (``_budget``): a rolling-window cap that counts every call, plus a token bucket for
  data; ``reserve_calls`` of the window are kept for the announce and acks.
- The first frame of every connection is ``v2/notifyPluginUpdate``; nothing else is sent until
  the agent confirms it (its AlarmUpdate/ConfigUpdate) or ``announce_grace_s`` passes with no
  error frame. An error frame in that time means the announce was refused (wrong key, app
  GUID, clock): retried after ``offline_retry_s``.
- ``-32000`` (device offline): data stays buffered; data frames sent in the last 2 s are put
  back (they were probably refused; at worst a metric or event is sent twice); the plugin
  re-announces after ``offline_retry_s``.
- Frames from the agent are verified on their raw text, off the loop; one that fails is
  dropped, logged (truncated, redacted) and counted (``stats.bad_signatures``). Error frames
  carry no method and so no signature: they are only logged.
- An ack not sent within the Portal's 1 minute (connection down) is dropped with a log line.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any
from urllib.parse import urlsplit

import trio

from adapters.allxon._budget import CallBudget, load_stamps, save_stamps
from adapters.allxon._commands import CommandDesk
from adapters.allxon._declared import AlarmView, Declared
from adapters.allxon._inbound import InboundHandling
from adapters.allxon._outbound import OutboundHandling
from adapters.allxon._outbox import Frame, Outbox
from adapters.allxon._stats import AllxonStats
from adapters.allxon.cards import Module
from adapters.allxon.codec import (
    MAX_FRAME_BYTES,
    OctoMessage,
    PluginUpdate,
    encode_message,
    epoch_str,
)
from adapters.allxon.config import AllxonConfig
from adapters.allxon.connection import (
    AgentLink,
    AllxonConnectionError,
    Crypto,
    open_link,
    ssl_context_for,
)
from broker import Adapter, Backoff, Envelope, LogGate, reconnect_forever

OFFLINE_REQUEUE_S = 2.0
STABLE_AFTER_S = 30.0
#: The status gauge /metrics exports as ``junction_allxon_budget_remaining_ratio``: the
#: share of the window's data calls (``budget_per_hour`` less the priority reserve) left.
BUDGET_GAUGE = "allxon_budget_remaining_ratio"


#: What a route to this adapter keeps in the durable outbox by default: events, alerts,
#: and the results that become a command's ACKED/ERRORED ack.
PERSIST_KINDS = frozenset({"event", "alert", "command_result", "exec_result"})


class AllxonAdapter(InboundHandling, OutboundHandling, Adapter):
    """Allxon Octo plugin (see the module docstring)."""

    config: AllxonConfig
    max_batch = 512
    #: What it is sent waits for the call budget and the flush anyway (flush_interval_s, 2 s
    #: by default): 20 ms of gathering costs nothing there and saves a wake-up per envelope.
    gather_s = 0.02

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        credential = cfg.credential()  # the loader registered its access key for redaction
        self.app_guid = credential.app_guid
        self.crypto = Crypto(credential.access_key)
        self.where = urlsplit(cfg.url).netloc
        self.stats = AllxonStats()
        self.declared = Declared(cfg.modules)
        self.modules: list[Module] = list(cfg.modules)
        self.alarms = AlarmView()
        self.held_alerts: list[tuple[str, Envelope]] = []
        self.outbox = Outbox(
            self.app_guid,
            max_metrics=cfg.max_buffered_metrics,
            max_events=cfg.max_buffered_events,
            max_alerts=cfg.max_buffered_alerts,
        )
        self.outbox.on_drop = self._entry_dropped
        self._budget_file = self.ctx.state_dir / f"allxon-{self.name}-calls.json"
        self.budget = CallBudget(
            cfg.budget_per_hour,
            cfg.budget_window_s,
            cfg.bucket_size,
            cfg.reserve_calls,
            stamps=self._load_stamps(),
        )
        self.connections = 0
        self.quiet = False
        self._ssl = ssl_context_for(cfg)
        self._gate = LogGate()
        self._wake = trio.Event()
        self.desk = CommandDesk(
            self.name,
            self.app_guid,
            self.declared,
            cfg.command_timeout_s,
            self.ctx.routes_for,
            self.stats,
            self.log,
            wake=lambda: self._wake.set(),
        )
        self.desk.on_unsent = lambda route, env, why: self.fail(route, [env], why)
        self._send_lock = trio.Lock()
        self._link: AgentLink | None = None
        self._online = False
        self._phase = "down"
        self._announce_wanted = trio.Event()
        self._reannounce_at: float | None = None
        self._confirmed = trio.Event()
        self._awaiting_confirmation = False
        self._announce_error = ""
        self._recent: deque[tuple[float, Frame]] = deque()
        self._taken: list[Frame] = []
        self._dropped_logged: Counter[str] = Counter()

    # --- the connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        if self._ssl is not None and not self.config.ca_file and self.config.agent_is_loopback():
            self.log.info(
                "TLS certificate verification is off for the loopback agent at %s (its "
                "certificate is self-signed); set ca_file to verify it",
                self.where,
            )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher)
            nursery.start_soon(self._deadlines)
            await self._connect_forever()

    async def _connect_forever(self) -> None:
        cfg = self.config
        await reconnect_forever(
            self._serve_one_connection,
            status=self.status,
            where=f"agent at {self.where}",
            log=self.log,
            backoff=Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, STABLE_AFTER_S),
            transient=AllxonConnectionError,
        )

    async def _serve_one_connection(self) -> None:
        async with open_link(self.config, self._ssl) as link:
            self.connections += 1
            if self.connections > 1:
                self.status.reconnects += 1
            self._link = link
            self._reannounce_at = None
            self._announce_wanted.set()
            self._set_phase("announcing")
            self.log.info("connected to the agent at %s; announcing the plugin", self.where)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._announcer, link)
                    nursery.start_soon(self._ack_sender, link)
                    await self._read(link)
            finally:
                self._link = None
                self._set_phase("down")

    def _set_phase(self, phase: str) -> None:
        """``announcing`` -> ``connected``, or ``offline`` / ``announce-refused``; ``down``.
        Acks and data go out only while ``connected``."""
        self._phase = phase
        online = phase == "connected"
        if online != self._online:
            self._online = online
            self._wake.set()
        self._refresh_status()

    def _refresh_status(self) -> None:
        if self._link is None:
            self.status.gauges.pop(BUDGET_GAUGE, None)
            return
        # the share data may still use: data stops at limit - reserve (the rest is kept for
        # the announce and command acks), so that is where "spent" is
        budget = self.budget
        data = budget.limit - budget.reserve
        self.status.gauges[BUDGET_GAUGE] = max(0, data - budget.used()) / data if data else 0.0
        dropped = sum(self.outbox.dropped.values())
        self.status.set(
            self._phase,
            f"{self.where}: {self.budget.used()}/{self.budget.limit} calls in the window, "
            f"{self.unsent_items()} buffered, {dropped} dropped, {self.stats.bad_signatures} "
            f"bad frames, {len(self.desk.pending)} commands pending",
        )

    # --- announcing -------------------------------------------------------------------------

    async def _announcer(self, link: AgentLink) -> None:
        while True:
            await self._announce_wanted.wait()
            if self._reannounce_at is not None:
                await trio.sleep_until(self._reannounce_at)
                self._reannounce_at = None
            self._announce_wanted = trio.Event()  # this announce carries every change so far
            await self._announce(link)

    async def _announce(self, link: AgentLink) -> None:
        params = self.config.update_params(self.app_guid, epoch_str(time.time()), self.modules)
        self._confirmed = trio.Event()
        self._announce_error = ""
        self._awaiting_confirmation = True
        self._set_phase("announcing")
        try:
            await self._send(link, PluginUpdate(params=params), priority=True)
            self.stats.announces += 1
            with trio.move_on_after(self.config.announce_grace_s):
                await self._confirmed.wait()
        finally:
            self._awaiting_confirmation = False
        if self._phase == "offline":  # -32000 meanwhile: a re-announce is already scheduled
            return
        if self._announce_error and not self._confirmed.is_set():
            retry = self.config.offline_retry_s
            self.log.error(
                "the agent refused the announce (%s); retrying in %.0f s. A wrong access "
                "key or app GUID, or a clock far off, looks like this",
                self._announce_error,
                retry,
            )
            self._schedule_announce(retry)
            self._set_phase("announce-refused")
            return
        self._set_phase("connected")

    def _schedule_announce(self, after_s: float) -> None:
        if self._reannounce_at is None:
            self._reannounce_at = trio.current_time() + after_s
        self._announce_wanted.set()

    # --- sending ----------------------------------------------------------------------------

    async def _send(self, link: AgentLink, message: OctoMessage, priority: bool) -> bool:
        """Sign and send one message within the budget. A priority call waits for budget; a
        data call returns False when there is none right now (the caller keeps the data)."""
        async with self._send_lock:
            while (
                self.budget.priority_allowance() if priority else self.budget.data_allowance()
            ) < 1:
                if not priority:
                    return False
                wait = max(0.05, self.budget.wait_s(priority=True))
                allowed, _ = self._gate.allow("budget")
                if allowed:
                    self.log.warning(
                        "the agent's call budget is spent (%d calls in the last %.0f s); "
                        "%s waits %.0f s",
                        self.budget.used(),
                        self.budget.window_s,
                        message.method,
                        wait,
                    )
                await trio.sleep(wait)
            signed = await self.crypto.sign(encode_message(message))
            size = len(signed.encode("utf-8"))
            if size > MAX_FRAME_BYTES:  # the callers size everything first: a bug if reached
                self.log.error("not sending a %d-byte %s (over 2 KB)", size, message.method)
                return True
            self.budget.spend(priority)
            await link.send(signed)
            self.stats.note_sent(message.method, size)
            return True

    async def _flusher(self) -> None:
        """Every ``flush_interval_s``: send what the budget allows, by priority and age."""
        while True:
            await trio.sleep(self.config.flush_interval_s)
            self._refresh_status()
            self._log_drops()
            link = self._link
            if link is None or not self._online or not len(self.outbox):
                continue
            allowance = self.budget.data_allowance()
            if allowance < 1:
                continue
            await self._send_frames(link, self.outbox.take(allowance, epoch_str(time.time())))
            horizon = trio.current_time() - OFFLINE_REQUEUE_S
            while self._recent and self._recent[0][0] < horizon:
                self._recent.popleft()

    async def _send_frames(self, link: AgentLink, frames: list[Frame]) -> None:
        """Send taken frames in order; whatever is not sent (no budget, link lost,
        cancelled) goes back to the outbox."""
        self._taken = frames
        try:
            while frames:
                try:
                    sent = self._online and await self._send(link, frames[0].message, False)
                except AllxonConnectionError:
                    sent = False
                if not sent:
                    break
                frame = frames.pop(0)
                self._acknowledge_sent(frame)
                self._recent.append((trio.current_time(), frame))
        finally:
            if frames:
                self.outbox.put_back(frames)
            self._taken = []

    def unsent_items(self) -> int:
        """Items buffered or taken for a frame that has not been sent yet."""
        return len(self.outbox) + sum(len(f.entries) for f in self._taken)

    def counters(self) -> dict[str, Any]:
        """Every counter: frames, errors, commands, drops by reason, budget, signing CPU."""
        return {
            **self.stats.as_dict(),
            "dropped": dict(self.outbox.dropped),
            "coalesced_states": self.outbox.coalesced_states,
            "buffered": self.outbox.pending(),
            "calls_in_window": self.budget.used(),
            "sign_calls": self.crypto.sign_calls,
            "sign_cpu_s": self.crypto.sign_cpu_s,
            "verify_calls": self.crypto.verify_calls,
            "verify_cpu_s": self.crypto.verify_cpu_s,
        }

    def _log_drops(self) -> None:
        """A line (at most every 10 s) saying what was dropped since the last one, and why."""
        dropped = self.outbox.dropped
        if dropped == self._dropped_logged or not self._gate.allow("drops")[0]:
            return
        new = dropped - self._dropped_logged
        self._dropped_logged = dropped.copy()
        self.log.warning(
            "dropped since the last report: %s (%d buffered; the agent takes %d calls per %.0f s)",
            ", ".join(f"{n} {reason}" for reason, n in sorted(new.items())),
            len(self.outbox),
            self.budget.limit,
            self.budget.window_s,
        )

    async def _ack_sender(self, link: AgentLink) -> None:
        """Acks go out in order, before data, as soon as the link is confirmed."""
        while True:
            wake = self._wake
            ack = self.desk.next_ack(trio.current_time()) if self._online else None
            if ack is not None:
                await self._send(link, ack, priority=True)
                handle = self.desk.sent()
                if handle is not None:
                    self.ack(handle[0], [handle[1]])
                continue
            await wake.wait()
            if self._wake is wake:
                self._wake = trio.Event()

    # --- deadlines --------------------------------------------------------------------------

    async def _deadlines(self) -> None:
        while True:
            await trio.sleep(0.1)
            self.desk.expire(trio.current_time())

    # --- stopping ---------------------------------------------------------------------------

    def quiesce(self) -> bool:
        """Shutdown: refuse new commands and stop emitting; keep the link for acks and data."""
        self.quiet = self.desk.quiet = True
        return True

    async def aclose(self) -> None:
        self._save_stamps()
        left = self.outbox.pending()
        if any(left.values()):
            self.log.warning(
                "stopping with data the budget or the link did not let out: %s (lost)", left
            )
        if self.desk.pending or self.desk.acks:
            self.log.warning(
                "stopping with %d command(s) unanswered and %d ack(s) unsent",
                len(self.desk.pending),
                len(self.desk.acks),
            )

    def _load_stamps(self) -> list[float]:
        """The budget's call stamps saved by a previous instance (restart or crash)."""
        try:
            return load_stamps(self._budget_file)
        except (OSError, ValueError) as err:
            self.log.warning("ignoring unreadable budget file %s: %s", self._budget_file, err)
            return []

    def _save_stamps(self) -> None:
        try:
            save_stamps(self._budget_file, self.budget)
        except OSError as err:
            self.log.warning("could not save the call budget to %s: %s", self._budget_file, err)
