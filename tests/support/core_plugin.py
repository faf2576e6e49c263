"""Test-only adapters and transforms, registered through the real plugin hooks.

``collector``  a sink that records what it was given, per adapter name; it can be
               slowed down, held shut, or made to crash on chosen batches.
``burst``      a source that emits ``count`` metric envelopes as fast as it may, then
               stops; it can crash after emitting a number of them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import msgspec
import trio

from broker._adapter import Adapter
from broker._config import AdapterConfig
from broker._envelope import Envelope, ExecRequest, ExecResult, Metric
from broker.hookspecs import AdapterType, Transform, hookimpl, transform

RECEIVED: dict[str, list[Envelope]] = defaultdict(list)
PROGRESS: dict[str, int] = {}
GATES: dict[str, threading.Event] = {}
#: The size of each batch a collector was handed, in order.
BATCH_SIZES: dict[str, list[int]] = defaultdict(list)
#: The thread a collector's last deliver ran on.
THREADS: dict[str, str] = {}
#: Collectors whose aclose() has finished, in order.
CLOSED: list[str] = []
#: How many times each collector was constructed.
BUILT: Counter[str] = Counter()
_lock = threading.Lock()


def reset() -> None:
    with _lock:
        RECEIVED.clear()
        GATES.clear()
        PROGRESS.clear()
        OBSERVED.clear()
        INBOX.clear()
        _batch_counts.clear()
        BATCH_SIZES.clear()
        THREADS.clear()
        CLOSED.clear()
        BUILT.clear()


def received(name: str) -> list[Envelope]:
    with _lock:
        return list(RECEIVED[name])


class CollectorConfig(AdapterConfig, kw_only=True):
    delay_s: float = 0.0
    crash_on_batches: list[int] = []
    gated: bool = False
    max_batch: int = 512
    refuse_odd: bool = False
    #: Record, but never acknowledge (as a peer that has not confirmed yet): defer() all.
    defer_all: bool = False
    gather_s: float = 0.0
    #: Block the thread this long in every deliver (an adapter doing synchronous I/O).
    block_s: float = 0.0
    #: Take this long (awaiting) to close, as a peer connection being shut down would.
    close_s: float = 0.0
    #: Deliver inside a nursery (as a sink sending several requests at once does).
    in_nursery: bool = False
    #: The constructor refuses this many times after the first instance (a restart whose
    #: config or files have gone bad for a while).
    refuse_restarts: int = 0


class Collector(Adapter):
    produces_envelopes = False
    config: CollectorConfig

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        with _lock:
            BUILT[self.name] += 1
            built = BUILT[self.name]
        if 1 < built <= 1 + self.config.refuse_restarts:
            raise ValueError(f"collector {self.name} refuses to be built (build {built})")
        self.max_batch = self.config.max_batch
        self.gather_s = self.config.gather_s

    async def aclose(self) -> None:
        if self.config.close_s:
            await trio.sleep(self.config.close_s)
        with _lock:
            CLOSED.append(self.name)

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        if self.config.in_nursery:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deliver, route, batch)
        else:
            await self._deliver(route, batch)

    async def _deliver(self, route: str, batch: list[Envelope]) -> None:
        with _lock:
            THREADS[self.name] = threading.current_thread().name
        if self.config.block_s:
            time.sleep(self.config.block_s)
        if self.config.gated:
            gate = GATES.setdefault(self.name, threading.Event())
            while not gate.is_set():
                await trio.sleep(0.005)
        global_batch = _count_batch(self.name)
        if global_batch in self.config.crash_on_batches:
            raise RuntimeError(f"collector {self.name} told to crash on batch {global_batch}")
        if self.config.delay_s:
            await trio.sleep(self.config.delay_s)
        if self.config.refuse_odd:
            odd = [e for e in batch if int(getattr(e.body, "value", 0)) % 2]
            self.fail(route, odd, "odd values are refused by this test sink")
            batch = [e for e in batch if e not in odd]
        if self.config.defer_all:
            self.defer(route, batch)
        with _lock:
            RECEIVED[self.name].extend(batch)
            BATCH_SIZES[self.name].append(len(batch))


_batch_counts: dict[str, int] = defaultdict(int)


def _count_batch(name: str) -> int:
    with _lock:
        _batch_counts[name] += 1
        return _batch_counts[name]


class BurstConfig(AdapterConfig, kw_only=True):
    count: int = 100
    crash_after: int = 0
    batch: int = 50
    name_prefix: str = "m"
    requests: bool = False
    #: Refuse (fail) every envelope delivered to it: the answers to its requests die.
    refuse_replies: bool = False


class Burst(Adapter):
    """Emits metrics (or exec requests with ``requests = true``); records what it is sent."""

    config: BurstConfig

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        if self.config.refuse_replies:
            self.fail(route, batch, "this asker refuses its answers")
            return
        with _lock:
            RECEIVED[self.name].extend(batch)

    def _make(self, i: int) -> Envelope:
        name = f"{self.config.name_prefix}{i}"
        if self.config.requests:
            return Envelope(
                source=self.name,
                subject=name,
                correlation_id=f"req-{i}",
                body=ExecRequest(system="sys-1", module="M", method="echo", args=[i]),
            )
        return Envelope(
            source=self.name, subject=name, body=Metric(module="test", name=name, value=float(i))
        )

    async def run(self) -> None:
        cfg = self.config
        done = PROGRESS.get(self.name, 0)  # survives restarts: a restarted source resumes
        while done < cfg.count:
            n = min(cfg.batch, cfg.count - done)
            batch = [self._make(done + i) for i in range(n)]
            await self.publish(batch)
            done += n
            PROGRESS[self.name] = done
            if cfg.crash_after and done >= cfg.crash_after and self.status.restarts == 0:
                raise RuntimeError(f"burst {self.name} told to crash after {done}")
            await trio.sleep(0)
        self.status.set("finished", str(done))


class EchoConfig(AdapterConfig, kw_only=True):
    silent_for: list[int] = []


class Echo(Adapter):
    """Answers each exec request with an exec result carrying its args (unless told not to)."""

    config: EchoConfig

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        replies = []
        for env in batch:
            body = env.body
            assert isinstance(body, ExecRequest)
            if body.args and body.args[0] in self.config.silent_for:
                continue
            replies.append(
                Envelope(
                    source=self.name,
                    subject=env.subject,
                    correlation_id=env.correlation_id,
                    body=ExecResult(ok=True, value=body.args, code=200),
                )
            )
        self.emit(replies)


OBSERVED: dict[str, list[object]] = defaultdict(list)


class ProbeConfig(AdapterConfig, kw_only=True):
    pass


Injected = tuple[list[Envelope], Callable[[], None] | None]
INBOX: dict[str, queue.SimpleQueue[Injected]] = defaultdict(queue.SimpleQueue)


def inject(
    name: str, envelopes: list[Envelope], on_settled: Callable[[], None] | None = None
) -> None:
    """Have probe adapter ``name`` emit ``envelopes`` (callable from any thread), with
    ``on_settled`` passed to ``emit`` (the router calls it when the batch is settled)."""
    INBOX[name].put((envelopes, on_settled))


class Probe(Adapter):
    """Emits what a test injects (with :func:`inject`) and records what it is sent."""

    config: ProbeConfig

    async def run(self) -> None:
        box = INBOX[self.name]
        while True:
            try:
                batch, on_settled = box.get_nowait()
            except queue.Empty:
                await trio.sleep(0.005)
                continue
            self.emit([msgspec.structs.replace(e, source=self.name) for e in batch], on_settled)

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        with _lock:
            RECEIVED[self.name].extend(batch)


@hookimpl
def junction_envelope_dropped(route: str, envelope: Envelope, reason: str) -> None:
    with _lock:
        OBSERVED["dropped"].append((route, envelope.id, reason))


@transform("explode_on_odd", "raises for odd body.value (tests dead-lettering)")
def explode_on_odd(env: Envelope) -> Envelope:
    value = getattr(env.body, "value", 0)
    if int(value) % 2:
        raise ValueError(f"odd value {value}")
    return env


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType("collector", CollectorConfig, Collector, "test sink"),
        AdapterType("burst", BurstConfig, Burst, "test source"),
        AdapterType("echo", EchoConfig, Echo, "test exec responder"),
        AdapterType("probe", ProbeConfig, Probe, "test source/sink driven by the test"),
    ]


@hookimpl
def junction_transforms() -> Sequence[Transform]:
    return [explode_on_odd]
