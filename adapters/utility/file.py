"""The ``file`` adapter: JSON Lines in and out (``-`` is stdin / stdout).

As a sink it writes every envelope it receives as one JSON line, flushed per batch.
As a source it reads envelope lines (``junction explain`` input has the same shape)
and emits them as coming from this adapter; a bad line is logged with its number
and counted, never fatal::

    [adapters.out]
    type = "file"
    path = "state/out.jsonl"     # or "-" for stdout
    [adapters.replay]
    type = "file"
    path = "recorded.jsonl"
    read = true                  # act as a source too
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

import msgspec
import trio

from broker import (
    Adapter,
    AdapterConfig,
    Envelope,
    NonNegative,
    decode,
    encode,
    truncate,
    writable_dir_problem,
)


class FileConfig(AdapterConfig, kw_only=True):
    """Config of the ``file`` adapter."""

    path: str
    read: bool = False
    write: bool = True
    append: bool = True
    rate: NonNegative = 0.0

    def __post_init__(self) -> None:
        """Refuse, at ``junction check``, a path that ``run`` could not open."""
        if self.path == "-":
            return
        target = Path(self.path)
        if self.read and not (target.is_file() or target.is_fifo()):
            raise ValueError(f"path {self.path!r} is not a file to read (read = true)")
        if not self.write:
            return
        if target.exists():
            if not target.is_file() or not os.access(target, os.W_OK):
                raise ValueError(f"path {self.path!r} is not a file this bridge may write")
            return
        why = writable_dir_problem(target.parent)
        if why:
            raise ValueError(f"path {self.path!r}: its directory {why}")


class FileAdapter(Adapter):
    """JSON Lines sink (and optional source)."""

    config: FileConfig

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._out: IO[bytes] | None = None
        self.bad_lines = 0
        self.accepts_envelopes = self.config.write

    async def run(self) -> None:
        if not self.config.read:
            await trio.sleep_forever()
        await self._read()

    async def _read(self) -> None:
        cfg = self.config
        interval = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
        if cfg.path == "-":
            stream = trio.wrap_file(sys.stdin.buffer)
        else:
            stream = await trio.open_file(cfg.path, "rb")
        lineno = 0
        batch: list[Envelope] = []
        async with stream:
            async for line in stream:
                lineno += 1
                if not line.strip():
                    continue
                try:
                    env = decode(line)
                except (msgspec.ValidationError, msgspec.DecodeError) as err:
                    self.bad_lines += 1
                    self.log.warning(
                        "%s line %d is not an envelope (%s): %s",
                        cfg.path,
                        lineno,
                        err,
                        truncate(line.decode(errors="replace").strip(), 120),
                    )
                    continue
                batch.append(msgspec.structs.replace(env, source=self.name))
                if interval or len(batch) >= 256:
                    await self.publish(batch)
                    batch = []
                    if interval:
                        await trio.sleep(interval)
        await self.publish(batch)
        self.status.set("finished", f"read {lineno} lines, {self.bad_lines} bad")

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        data = b"".join(encode(e) + b"\n" for e in batch)
        await trio.to_thread.run_sync(self._write, data)

    def _write(self, data: bytes) -> None:
        if self._out is None:
            if self.config.path == "-":
                self._out = sys.stdout.buffer
            else:
                Path(self.config.path).parent.mkdir(parents=True, exist_ok=True)
                self._out = open(self.config.path, "ab" if self.config.append else "wb")  # noqa: SIM115
        self._out.write(data)
        self._out.flush()

    async def aclose(self) -> None:
        if self._out is not None and self.config.path != "-":
            self._out.close()
        self._out = None
