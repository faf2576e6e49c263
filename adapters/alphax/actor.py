"""The AlphaX Conduit adapter: channel writes go up, channel readings come back.

Outbound (from routes): ``channel_write`` envelopes (``network_id``, ``channel`` 1..32 or
252..255, ``value``, ``timestamp`` epoch s, else the envelope's ``ts``), written over the
configured transport (see :mod:`adapters.alphax.connection`). An envelope counts as
delivered once AlphaX has the data: HTTP 2xx; MQTT PUBACK (published batches are deferred and
acked as their PUBACKs arrive, so the next batch need not wait); UDP/TCP: sent, best effort.
What can never be sent is dead-lettered with the reason: a value the codec cannot encode, an
envelope of another kind, or an HTTP 400/404/405/413 with the status and the server's error
body. 429, 5xx and network trouble are retried, the data kept; a refused token (401/403) is
the site's to fix: the data is held, the status says ``auth-failed``, and posts are retried
with back-off until it is accepted.

Inbound (to the router), with ``[poll]`` configured: ``channel_reading`` envelopes, subject
``<network_id>/<channel>``, each record read exactly once across polls and restarts (marks
persisted in the state directory).

The token and the MQTT password are ``Secret`` config fields: the config loader registers
them, so every log line redacts them;
URLs, topics and bodies are also passed through ``codec.redact`` before any message is built.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any

import trio

from adapters.alphax.config import AlphaXConfig
from adapters.alphax.connection import Conduit, Failure
from broker import Adapter, Envelope


class AlphaXAdapter(Adapter):
    """AlphaX Conduit writer and (optionally) poller; see the module docstring."""

    config: AlphaXConfig
    max_batch = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.conduit = Conduit(cfg, self.name, self.status, self.log)
        self._poll_scope: trio.CancelScope | None = None
        self._quiet = False  # quiesce() came: no reading
        self.failed = 0

    async def run(self) -> None:
        """Start the transport, run the poller (if configured), and stay up for deliveries."""
        self.conduit.start()
        poller = self.conduit.poller(self.name, self.ctx.state_dir, self.publish)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.conduit.watch)  # raises once the MQTT driver died
            if poller is not None and not self._quiet:
                with trio.CancelScope() as scope:
                    self._poll_scope = scope
                    await poller.run()

    def quiesce(self) -> bool:
        """Shutdown began: stop reading (or never start, when it comes before ``run``);
        the connection stays for queued deliveries."""
        self._quiet = True
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        return True

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        """Write ``batch``; envelopes that can never be written are dead-lettered by reason.

        What the transport acknowledges later (MQTT: PUBACKs) is deferred: ``deliver``
        returns without waiting, so the next batch goes out while this one's
        acknowledgements are on their way (one broker round trip per batch would otherwise
        cap the rate and add a round trip of waiting to every message at a steady rate).
        Each batch is acked to the router when its acknowledgements have arrived (the
        transport calls back; no task waits per batch); ``max_inflight`` bounds what is
        outstanding.
        """
        sent = await self.conduit.send(batch)
        self._fail_by_reason(route, sent.failures)
        if sent.pending is None:
            return
        envelopes = sent.pending.envelopes
        self.defer(route, envelopes)
        sent.pending.when_settled(partial(self._settle, route, envelopes))

    def _settle(self, route: str, envelopes: list[Envelope], lost: list[Failure]) -> None:
        if lost:
            lost_ids = {id(env) for env, _ in lost}
            self._fail_by_reason(route, lost)
            envelopes = [env for env in envelopes if id(env) not in lost_ids]
        self.ack(route, envelopes)

    def _fail_by_reason(self, route: str, failures: list[Failure]) -> None:
        if not failures:
            return
        self.failed += len(failures)
        by_reason: dict[str, list[Envelope]] = defaultdict(list)
        for env, reason in failures:
            by_reason[reason].append(env)
        for reason, envs in by_reason.items():
            self.fail(route, envs, reason)

    async def aclose(self) -> None:
        """Close the transports."""
        await self.conduit.aclose()

    def stats(self) -> dict[str, Any]:
        """The conduit's counters plus envelopes failed (for tests and status views)."""
        return {**self.conduit.stats(), "failed": self.failed}
