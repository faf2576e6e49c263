"""The ``generator`` adapter: emits envelopes of one kind, at a rate or flat out.

For demos, benchmarks and testing routes without a peer::

    [adapters.room_sensor]
    type = "generator"
    kind = "metric"
    subject = "demo/temperature"
    body = { module = "room", name = "temperature", value = 21.0 }
    walk = { field = "value", step = 0.4, min = 17.0, max = 29.0 }  # optional random walk
    sequence_field = ""       # optional: an int body field set to 1, 2, 3, ...
    rate = 5.0                # envelopes per second; 0 = as fast as the router takes them
    count = 0                 # stop after this many; 0 = never
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import trio

from broker import (
    BODY_TYPES,
    Adapter,
    AdapterConfig,
    AtLeastOne,
    Envelope,
    NonNegative,
    NonNegativeInt,
)


class Walk(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A bounded random walk applied to one numeric body field."""

    field: str
    step: float = 0.5
    min: float = float("-inf")
    max: float = float("inf")


class GeneratorConfig(AdapterConfig, kw_only=True):
    """Config of the ``generator`` adapter."""

    kind: str
    body: dict[str, object] = {}
    subject: str = ""
    rate: NonNegative = 1.0
    count: NonNegativeInt = 0
    batch: AtLeastOne = 256
    walk: Walk | None = None
    sequence_field: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in BODY_TYPES:
            raise ValueError(f"unknown kind {self.kind!r}; valid: {', '.join(sorted(BODY_TYPES))}")
        # Fail at load time, not at the first envelope, when the body does not fit the kind.
        msgspec.convert(self._fields(0, 0.0), BODY_TYPES[self.kind])

    def _fields(self, seq: int, walked: float | None) -> dict[str, object]:
        fields = dict(self.body)
        if self.sequence_field:
            fields[self.sequence_field] = seq
        if self.walk is not None and walked is not None:
            fields[self.walk.field] = walked
        return fields


class GeneratorAdapter(Adapter):
    """Emits ``count`` (or endless) envelopes built from the config's body."""

    accepts_envelopes = False
    config: GeneratorConfig

    async def run(self) -> None:
        cfg = self.config
        cls = BODY_TYPES[cfg.kind]
        rng = random.Random(cfg.seed)
        walked = float(cfg.body.get(cfg.walk.field, 0.0)) if cfg.walk else None  # type: ignore[arg-type]
        sent = 0
        interval = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
        next_at = trio.current_time()
        self.status.set("running", f"{cfg.rate:g}/s" if cfg.rate else "flat out")
        while cfg.count == 0 or sent < cfg.count:
            n = 1 if interval else min(cfg.batch, cfg.count - sent if cfg.count else cfg.batch)
            batch = []
            for _ in range(n):
                sent += 1
                if cfg.walk is not None and walked is not None:
                    w = cfg.walk
                    walked = min(w.max, max(w.min, walked + rng.uniform(-w.step, w.step)))
                    walked = round(walked, 3)
                body: Any = msgspec.convert(cfg._fields(sent, walked), cls)
                batch.append(Envelope(source=self.name, subject=cfg.subject, body=body))
            await self.publish(batch)
            if interval:
                next_at += interval
                await trio.sleep_until(next_at)
            else:
                await trio.sleep(0)
        self.status.set("finished", f"sent {sent}")
