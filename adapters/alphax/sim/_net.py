"""UDP and TCP listeners of the AlphaX simulator (trio sockets).

**Choice** (docs/protocols/alphax.md, "TCP and UDP"): one JSON uplink document, v1 or v2 (told
apart by ``data``), per UDP datagram and per newline-terminated line on TCP (``\\r\\n``
accepted). Malformed input is counted in ``sim.store.rejects()`` and logged, never fatal. TCP
lines over ``MAX_LINE`` bytes are rejected (``line_too_long``) and skipped to the next newline;
bytes left without a newline when the peer closes are rejected as ``unterminated_line``.
Nothing is sent back on either.
"""

from __future__ import annotations

import logging
import socket
from functools import partial

import trio

from adapters.alphax.sim._core import AlphaXSimulator

log = logging.getLogger(__name__)

MAX_LINE = 65_536
_MAX_DATAGRAM = 65_535


async def serve_udp(
    sim: AlphaXSimulator,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Receive datagrams until cancelled; reports the bound port via ``task_status``."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind((host, port))
        bound: int = sock.getsockname()[1]
        log.info("AlphaX simulator UDP on %s:%d", host, bound)
        task_status.started(bound)
        while True:
            data, _addr = await sock.recvfrom(_MAX_DATAGRAM)
            sim.ingest_uplink(data, "udp")


async def serve_tcp(
    sim: AlphaXSimulator,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections until cancelled; reports the bound port via ``task_status``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    log.info("AlphaX simulator TCP on %s:%d", host, bound)
    task_status.started(bound)
    await trio.serve_listeners(partial(_connection, sim), listeners)


async def _connection(sim: AlphaXSimulator, stream: trio.SocketStream) -> None:
    buffer = bytearray()
    skipping = False  # inside an over-long line, waiting for its newline
    async with stream:
        try:
            while chunk := await stream.receive_some(MAX_LINE):
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end]).rstrip(b"\r")
                    del buffer[: end + 1]
                    if skipping:
                        skipping = False
                    elif line.strip():
                        sim.ingest_uplink(line, "tcp")
                if len(buffer) > MAX_LINE:
                    if not skipping:
                        sim.reject("tcp", "line_too_long", f"line over {MAX_LINE} bytes")
                    buffer.clear()
                    skipping = True
        except trio.BrokenResourceError as err:
            log.info("TCP uplink connection broke: %s", err)
            return
        if buffer.strip() and not skipping:
            sim.reject("tcp", "unterminated_line", f"{len(buffer)} bytes without a newline")
