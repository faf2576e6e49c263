"""State and rules of the AlphaX simulator, shared by its HTTP, UDP/TCP and MQTT sides.

Holds the tokens (tier and rights each), the tier rate limits, scripted faults, the store, and
the one ingest path every transport uses (decode with the codec, check the token, store or
count the reject). Tokens never reach a log line: details are passed through ``redact``.

Choices (documented for the tests and the bridge):

- Rate limits apply to HTTP only (UDP, TCP and MQTT have no way to answer 429). Writes: a
  sliding one-second window per token (Basic/Premium 100 requests/s). Reads: one call per
  interval per token (Basic 15 s, Premium 5 s); a 304 counts as a call, a 400 does not.
- No ``Retry-After`` header: AlphaX does not promise one, so clients must pace by tier
  (docs/protocols/alphax.md, "Rate limits").
- Faults scripted with :meth:`AlphaXSimulator.fail_next` answer before anything else is checked
  and store nothing.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import trio

from adapters.alphax.codec import (
    CodecError,
    V1Uplink,
    V2Uplink,
    decode_channel_value,
    decode_uplink_body,
    decode_v1_hex,
    decode_v2_body,
    parse_topic,
    redact,
    redact_topic,
)
from adapters.alphax.sim._store import SimStore

if TYPE_CHECKING:
    from adapters.alphax.sim._mqtt import MqttSubscriber

log = logging.getLogger(__name__)

Need = Literal["read", "write"]
CodeStyle = Literal["number", "string", "alternate"]
ENDPOINTS = ("post/v1", "post/v2", "conduitv4", "conduitv6")


@dataclass(frozen=True)
class TierLimits:
    """Limits of one subscription tier; ``None`` means unlimited."""

    writes_per_s: int | None
    read_interval_s: float | None


DEFAULT_TIERS: Mapping[str, TierLimits] = {
    "basic": TierLimits(writes_per_s=100, read_interval_s=15.0),
    "premium": TierLimits(writes_per_s=100, read_interval_s=5.0),
    "enterprise": TierLimits(writes_per_s=None, read_interval_s=None),
}


@dataclass(frozen=True)
class TokenSpec:
    """What one token may do. ``tier`` None means the simulator's default tier."""

    tier: str | None = None
    read: bool = True
    write: bool = True


@dataclass(frozen=True)
class Fault:
    """A scripted HTTP failure: answer ``status`` with ``error`` on the given endpoints."""

    status: int
    error: str
    endpoints: frozenset[str] | None = None
    #: Sent as the response body instead of the JSON error body (hostile-peer tests).
    body: bytes | None = None


@dataclass(frozen=True)
class RequestLog:
    """One HTTP request as the simulator answered it (path redacted)."""

    method: str
    path: str
    endpoint: str | None
    status: int
    request_encoding: str
    response_encoding: str
    body_bytes: int


class RateLimiter:
    """Per-token tier limits; trio thread only (the HTTP side), so no lock."""

    def __init__(self, tiers: Mapping[str, TierLimits], clock: Callable[[], float]) -> None:
        self.tiers = tiers
        self.clock = clock
        self._writes: dict[str, deque[float]] = {}
        self._last_read: dict[str, float] = {}

    def try_write(self, token: str, tier: str) -> bool:
        """Count one write if the tier allows it now; False means answer 429."""
        limit = self.tiers[tier].writes_per_s
        if limit is None:
            return True
        now = self.clock()
        window = self._writes.setdefault(token, deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= limit:
            return False
        window.append(now)
        return True

    def try_read(self, token: str, tier: str) -> bool:
        """Count one read if the tier's interval has passed; False means answer 429."""
        interval = self.tiers[tier].read_interval_s
        if interval is None:
            return True
        now = self.clock()
        last = self._last_read.get(token)
        if last is not None and now - last < interval:
            return False
        self._last_read[token] = now
        return True


class AlphaXSimulator:
    """A running simulator: inspect ``store``, script faults, await conditions.

    Built by :func:`adapters.alphax.sim.open_alphax_simulator`, which fills in the URLs
    and ports once its listeners are bound.
    """

    def __init__(
        self,
        tokens: Iterable[str] | Mapping[str, TokenSpec] | None = None,
        *,
        tier: str = "enterprise",
        tier_limits: Mapping[str, TierLimits] | None = None,
        max_body_bytes: int = 1_000_000,
        read_limit: int = 1000,
        error_code_style: CodeStyle = "alternate",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if tokens is None:
            tokens = [f"sim-{secrets.token_hex(12)}"]
        specs = dict(tokens) if isinstance(tokens, Mapping) else {t: TokenSpec() for t in tokens}
        if not specs:
            raise ValueError("the simulator needs at least one token")
        self.tiers = dict(tier_limits or DEFAULT_TIERS)
        for spec in specs.values():
            if (spec.tier or tier) not in self.tiers:
                raise ValueError(
                    f"unknown tier {spec.tier or tier!r} for a token; known: {sorted(self.tiers)}"
                )
        self.tokens: dict[str, TokenSpec] = specs
        self.token = next(iter(specs))
        self.tier = tier
        self.max_body_bytes = max_body_bytes
        self.read_limit = read_limit
        self.error_code_style: CodeStyle = error_code_style
        self.wall_clock = wall_clock
        self.limiter = RateLimiter(self.tiers, clock)
        self.store = SimStore(self.token)
        self.requests: deque[RequestLog] = deque(maxlen=10_000)
        self.http_url = ""
        self.udp_port: int | None = None
        self.tcp_port: int | None = None
        self.mqtt_url: str | None = None
        self.mqtt: MqttSubscriber | None = None
        self._faults: deque[Fault] = deque()
        self._code_flip = False
        self._lock = threading.Lock()
        self._received: Counter[str] = Counter()

    # -- public face ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The HTTP base URL (``http://127.0.0.1:<port>``)."""
        return self.http_url

    @property
    def port(self) -> int:
        """The HTTP port."""
        return int(self.http_url.rsplit(":", 1)[1])

    def fail_next(
        self,
        count: int = 1,
        status: int = 429,
        *,
        error: str | None = None,
        endpoints: Iterable[str] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next ``count`` HTTP requests (to ``endpoints``, default all) with
        ``status`` and a JSON error body (or ``body`` as it is), storing nothing."""
        chosen = frozenset(endpoints) if endpoints is not None else None
        if chosen is not None and not chosen <= set(ENDPOINTS):
            raise ValueError(f"unknown endpoints {sorted(chosen - set(ENDPOINTS))}")
        fault = Fault(status, error or f"simulated failure {status}", chosen, body)
        self._faults.extend([fault] * count)

    def faults_pending(self) -> int:
        """How many scripted faults have not fired yet."""
        return len(self._faults)

    def received(self) -> dict[str, int]:
        """Accepted uplinks (documents, not values) by transport: http, udp, tcp, mqtt."""
        with self._lock:
            return dict(self._received)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once ``predicate()`` is true; TimeoutError (with the store's state) if not."""
        with trio.move_on_after(timeout):
            while not predicate():
                await trio.sleep(0.005)
            return
        raise TimeoutError(
            f"condition not met within {timeout} s: {self.store.count()} values stored, "
            f"received {self.received()}, rejects {self.store.rejects()}"
        )

    # -- rules used by the transports ---------------------------------------------------------

    def tier_of(self, token: str) -> str:
        """The tier of a known token."""
        return self.tokens[token].tier or self.tier

    def authorize(self, token: str, need: Need) -> int | None:
        """None if ``token`` may ``need``; else the HTTP status to answer (401 or 403)."""
        spec = self.tokens.get(token)
        if spec is None:
            return 401
        allowed = spec.read if need == "read" else spec.write
        return None if allowed else 403

    def take_fault(self, endpoint: str) -> Fault | None:
        """Pop the first scripted fault that applies to ``endpoint``."""
        for i, fault in enumerate(self._faults):
            if fault.endpoints is None or endpoint in fault.endpoints:
                del self._faults[i]
                return fault
        return None

    def code_as_string(self) -> bool:
        """Whether the next error body carries its code as a string (per ``error_code_style``)."""
        if self.error_code_style == "alternate":
            self._code_flip = not self._code_flip
            return self._code_flip
        return self.error_code_style == "string"

    def reject(self, transport: str, reason: str, detail: str, token: str | None = None) -> None:
        """Count and log one rejected input; ``detail`` is redacted here once more."""
        clean = redact(detail, token)
        self.store.reject(reason, f"{transport}: {clean}")
        log.warning("rejected %s input (%s): %s", transport, reason, clean)

    def store_uplink(self, uplink: V1Uplink | V2Uplink, transport: str) -> int:
        """Store an authorized uplink; returns the number of values."""
        if isinstance(uplink, V1Uplink):
            values: Iterable[tuple[int, float]] = uplink.payload.as_channels().items()
        else:
            values = [(cv.channel, cv.value) for cv in uplink.values]
        n = self.store.add_channels(
            uplink.token, uplink.network_id, uplink.timestamp_ms / 1000, values
        )
        self._count(transport)
        log.debug("stored %d values of device %s via %s", n, uplink.network_id, transport)
        return n

    def _count(self, transport: str) -> None:
        with self._lock:
            self._received[transport] += 1

    def _check_token(self, token: str, transport: str) -> bool:
        status = self.authorize(token, "write")
        if status is not None:
            reason = "unknown_token" if status == 401 else "forbidden"
            self.reject(transport, reason, "token not allowed to write", token)
            return False
        return True

    def ingest_uplink(self, raw: bytes, transport: str) -> bool:
        """One v1 or v2 JSON document from UDP or TCP; True if stored."""
        try:
            uplink = decode_uplink_body(raw)
        except CodecError as err:
            self.reject(transport, type(err).__name__, str(err))
            return False
        if not self._check_token(uplink.token, transport):
            return False
        self.store_uplink(uplink, transport)
        return True

    def ingest_mqtt(self, topic: str, payload: bytes) -> bool:
        """One MQTT message (called on paho's thread); True if stored."""
        try:
            parsed = parse_topic(topic)
        except CodecError as err:
            self.reject("mqtt", type(err).__name__, f"topic {redact_topic(topic)}: {err}")
            return False
        token, nid = parsed.token, parsed.network_id
        if not self._check_token(token, "mqtt"):
            return False
        try:
            if parsed.kind == "bulk":
                body = decode_v2_body(payload)
                if body.token != token or body.network_id != nid:
                    what = "token" if body.token != token else "networkId"
                    self.reject("mqtt", f"{what}_mismatch", f"body {what} differs from topic")
                    return False
                self.store_uplink(body, "mqtt")
                return True
            now = self.wall_clock()
            if parsed.kind == "publish_v4":
                hexdata = payload.decode("ascii", errors="replace")
                values = decode_v1_hex(hexdata).as_channels().items()
            else:
                assert parsed.channel is not None
                values = {parsed.channel: decode_channel_value(payload)}.items()
        except CodecError as err:
            self.reject("mqtt", type(err).__name__, f"topic {redact_topic(topic)}: {err}", token)
            return False
        n = self.store.add_channels(token, nid, now, values)
        self._count("mqtt")
        log.debug("stored %d values of device %s via mqtt %s", n, nid, parsed.kind)
        return True
