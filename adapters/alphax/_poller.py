"""The reading side: polls ``conduitv6`` / ``conduitv4`` and emits ``channel_reading`` envelopes.

One stream per configured device (or one for all devices), each walked by
:class:`~adapters.alphax._walker.Walker`. Calls are spaced to the tier's read limit (Basic one
per 15 s, Premium one per 5 s, per token, whatever the stream) by a shared
:class:`~adapters.alphax._pacing.ReadPacer`; a poll cycle runs every ``poll_interval_s``.

The marks are saved after every page, as JSON, in ``<state_dir>/alphax-<adapter>.poll.json``
(written to a temporary file, flushed and renamed over the old one, so a crash leaves the old
or the new file, never half of one). A stream whose key (api, device, channel filter) is not
in the file starts ``start_lookback_s`` back.

Status answers: 200 -> records; 304 -> nothing new (the window is read); 429 -> the call is
retried after the tier's interval (or a back-off); 401/403 -> status ``auth-failed``, retried
after ``auth_backoff_s``; 5xx, network errors and malformed bodies -> logged, retried with
back-off. The mark only moves past records that were emitted. A body that does not decode
(the codec's bounds: not JSON, nested past 128 levels, numbers too large, over 16 MiB) is
counted (``malformed``) and logged at most once a minute, with how many were not.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from adapters.alphax import codec
from adapters.alphax._http import error_text, get_records
from adapters.alphax._pacing import ReadPacer
from adapters.alphax._walker import (
    ALL_CHANNELS,
    Record,
    StreamState,
    Walker,
    Window,
    records_from_v4,
    records_from_v6,
)
from adapters.alphax.config import AlphaXConfig, PollConfig
from broker import AdapterStatus, ChannelReading, Envelope, LogGate, backoff_delay, truncate

STATE_VERSION = 1
#: States a successful read replaces (a write transport's own states are left alone).
_READ_OK_AFTER = frozenset({"running", "auth-failed"})


#: At most one line about malformed read responses this often (each is counted).
_MALFORMED_LOG_S = 60.0


class ReadFailed(Exception):
    """A read call did not give records; ``retry_in`` says when to try again; ``malformed``
    when the response body did not decode."""

    def __init__(self, reason: str, retry_in: float, *, malformed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in
        self.malformed = malformed


@dataclass
class Stream:
    """One walked stream: a device (or all) and the ``ch=`` filter sent with every call."""

    key: str
    device: str | None
    channel: int | None
    walker: Walker


def state_path(state_dir: Path, adapter: str) -> Path:
    """Where an adapter's read marks live."""
    return state_dir / f"alphax-{adapter}.poll.json"


def load_marks(path: Path) -> dict[str, StreamState]:
    """Read saved marks; a missing file means none, an unreadable one is an error (named)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise RuntimeError(f"cannot read the AlphaX read marks in {path}: {err}") from err
    if data.get("version") != STATE_VERSION:
        raise RuntimeError(f"{path}: unknown version {data.get('version')!r}")
    return {key: StreamState.from_json(s) for key, s in data.get("streams", {}).items()}


def save_marks(path: Path, marks: dict[str, StreamState]) -> None:
    """Write marks atomically (temporary file, fsync, rename)."""
    payload = {"version": STATE_VERSION, "streams": {k: s.to_json() for k, s in marks.items()}}
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        json.dump(payload, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def build_streams(poll: PollConfig, marks: dict[str, StreamState], start: int) -> list[Stream]:
    """The configured streams, each resuming from its saved mark or starting at ``start``."""
    single = poll.channels[0] if len(poll.channels) == 1 else None
    split: Sequence[int] = () if single is not None else (poll.channels or ALL_CHANNELS)
    streams = []
    devices: list[str | None] = list(poll.devices) or [None]
    for device in devices:
        key = f"{poll.api}|{device or '*'}|{single or '*'}"
        state = marks.get(key) or StreamState(start)
        walker = Walker(state, limit=poll.records_per_call, split_channels=split)
        streams.append(Stream(key, device, single, walker))
    return streams


class Poller:
    """Runs the poll cycles of one adapter until cancelled."""

    def __init__(
        self,
        cfg: AlphaXConfig,
        client: httpx.AsyncClient,
        *,
        source: str,
        state_file: Path,
        status: AdapterStatus,
        log: logging.Logger,
        publish: Callable[[list[Envelope]], Awaitable[None]],
    ) -> None:
        assert cfg.poll is not None
        self.cfg = cfg
        self.poll: PollConfig = cfg.poll
        self.client = client
        self.source = source
        self.state_file = state_file
        self.status = status
        self.log = log
        self.publish = publish
        self.pacer = ReadPacer(cfg.read_interval_s)
        self.host = urlsplit(cfg.read_url).netloc
        self.wanted = frozenset(self.poll.channels) if len(self.poll.channels) > 1 else None
        self.streams: list[Stream] = []
        self.calls = 0
        self.emitted = 0
        self.not_modified = 0
        self.skipped_empty = 0
        self.failures = 0
        self.malformed = 0
        self._gate = LogGate(every_s=_MALFORMED_LOG_S)
        self._reported_unreadable = 0

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        marks = await trio.to_thread.run_sync(load_marks, self.state_file)
        start = int(time.time() - self.poll.start_lookback_s)
        self.streams = build_streams(self.poll, marks, start)
        self.log.info(
            "reading %s every %.1f s: %d stream(s), %s",
            f"conduit{self.poll.api}",
            self.cfg.poll_interval_s,
            len(self.streams),
            ", ".join(f"{s.key} from {s.walker.state.hw}" for s in self.streams),
        )
        failures = 0
        while True:
            began = trio.current_time()
            try:
                for stream in self.streams:
                    await self._catch_up(stream)
            except ReadFailed as err:
                failures += 1
                self.failures += 1
                delay = max(err.retry_in, backoff_delay(failures, 1.0, self.cfg.backoff_max_s))
                self._log_failure(err, delay)
                self.pacer.push_back(delay)
                await trio.sleep(delay)
                continue
            failures = 0
            await trio.sleep_until(began + self.cfg.poll_interval_s)

    def _log_failure(self, err: ReadFailed, delay: float) -> None:
        if not err.malformed:
            self.log.warning("reading: %s; next try in %.1f s", err.reason, delay)
            return
        self.malformed += 1
        allowed, held = self._gate.allow("malformed")
        if allowed:
            self.log.warning(
                "reading: %s; next try in %.1f s (%d malformed responses so far%s)",
                err.reason,
                delay,
                self.malformed,
                f", {held} not logged" if held else "",
            )

    async def _catch_up(self, stream: Stream) -> None:
        until = int(time.time() - self.poll.settle_s)

        async def fetch(window: Window) -> Sequence[Record]:
            return await self._fetch(stream, window)

        async def on_page(records: list[Record]) -> None:
            await self._emit(records)
            await trio.to_thread.run_sync(self._save)

        await stream.walker.catch_up(until, fetch, on_page)
        unreadable = stream.walker.unreadable
        if len(unreadable) > self._reported_unreadable:
            for second, channel, n in unreadable[self._reported_unreadable :]:
                self.log.error(
                    "stream %s: more than %d records at second %d on channel %s: the API "
                    "cannot page within one second, some of them were not read",
                    stream.key,
                    n,
                    second,
                    channel if channel is not None else "(filtered)",
                )
            self._reported_unreadable = len(unreadable)

    async def _fetch(self, stream: Stream, window: Window) -> Sequence[Record]:
        params: dict[str, str | int] = {"fcdt": window.fcdt, "tcdt": window.tcdt}
        if stream.device is not None:
            params["id"] = stream.device
        channel = window.channel if window.channel is not None else stream.channel
        if channel is not None:
            params["ch"] = channel
        await self.pacer.wait()
        self.calls += 1
        try:
            response = await get_records(self.client, self.cfg, self.poll.api, params)
        except httpx.TransportError as err:
            text = f"conduit{self.poll.api}: network error: {type(err).__name__}: {err}"
            reason = codec.redact(text, self.cfg.token)
            raise ReadFailed(reason, self.cfg.backoff_initial_s) from None
        finally:
            self.pacer.done()
        code = response.status_code
        if code == 304:
            self.not_modified += 1
            return []
        if code != 200:
            reason = f"conduit{self.poll.api}: {error_text(response, self.cfg.token)}"
            if code in (401, 403):
                self.status.set("auth-failed", reason)
                raise ReadFailed(reason, self.cfg.auth_backoff_s)
            raise ReadFailed(reason, max(self.cfg.read_interval_s, self.cfg.backoff_initial_s))
        if self.status.state in _READ_OK_AFTER:
            self.status.set("connected", f"reading {self.host}")
        try:
            if self.poll.api == "v6":
                return records_from_v6(codec.decode_v6_records(response.content))
            return records_from_v4(codec.decode_v4_records(response.content))
        except (codec.CodecError, ValueError) as err:
            reason = codec.redact(f"conduit{self.poll.api}: bad response: {err}", self.cfg.token)
            raise ReadFailed(
                truncate(reason, 300), self.cfg.backoff_initial_s, malformed=True
            ) from None

    async def _emit(self, records: list[Record]) -> None:
        envelopes = []
        for r in records:
            if self.wanted is not None and r.channel not in self.wanted:
                continue
            if r.value is None:
                self.skipped_empty += 1
                continue
            body = ChannelReading(
                network_id=r.network_id,
                channel=r.channel,
                value=r.value,
                timestamp=float(r.second),
                raw=r.raw,
            )
            subject = f"{r.network_id}/{r.channel}"
            envelopes.append(Envelope(source=self.source, subject=subject, body=body))
        if envelopes:
            self.emitted += len(envelopes)
            await self.publish(envelopes)

    def _save(self) -> None:
        save_marks(self.state_file, {s.key: s.walker.state for s in self.streams})

    def snapshot(self) -> dict[str, Any]:
        """Counters and marks, for status views and tests."""
        return {
            "calls": self.calls,
            "emitted": self.emitted,
            "not_modified": self.not_modified,
            "failures": self.failures,
            "malformed": self.malformed,
            "marks": {s.key: s.walker.state.hw for s in self.streams},
            "splits": sum(s.walker.splits for s in self.streams),
        }
