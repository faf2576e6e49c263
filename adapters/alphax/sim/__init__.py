"""AlphaX Conduit simulator: HTTP (post/read), UDP, TCP and an MQTT ingest side, one store.

From tests::

    async with open_alphax_simulator(tokens=["t0k"], tier="basic", mqtt_url=broker.url) as sim:
        httpx.post(f"{sim.http_url}/post/v2", ...)      # also sim.url / sim.port
        await sim.wait_for(lambda: sim.store.count() >= 3)
        sim.store.values("dev-1", 1)                    # [(epoch seconds, value), ...]
        sim.fail_next(2, 503)                           # script faults
        sim.store.rejects()                             # {"HexFormatError": 1, ...}

From the command line (``junction sim alphax ...`` calls :func:`main`)::

    junction sim alphax --http-port 8080 --udp-port 9012 --tcp-port 9012 \\
        --mqtt mqtt://127.0.0.1:1883 --tier basic --token "$ALPHAX_TOKEN"

The token defaults to ``$ALPHAX_TOKEN``; without one a dev token is generated and printed once
to stdout (the only place the simulator ever shows a token; logs are redacted). The rules and
choices are documented in ``_core`` (tokens, tiers, faults), ``_http`` (HTTP),
``_net`` (UDP/TCP) and ``_mqtt`` (MQTT); the store in ``_store``.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from functools import partial

import trio

from adapters.alphax.sim._core import (
    DEFAULT_TIERS,
    AlphaXSimulator,
    CodeStyle,
    RequestLog,
    TierLimits,
    TokenSpec,
)
from adapters.alphax.sim._http import serve_http
from adapters.alphax.sim._mqtt import MqttConnectError, MqttSubscriber
from adapters.alphax.sim._net import serve_tcp, serve_udp
from adapters.alphax.sim._store import SimStore, StoredValue

__all__ = [
    "DEFAULT_TIERS",
    "AlphaXSimulator",
    "MqttConnectError",
    "RequestLog",
    "SimStore",
    "StoredValue",
    "TierLimits",
    "TokenSpec",
    "main",
    "open_alphax_simulator",
    "serve_cli",
]

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_alphax_simulator(
    tokens: Iterable[str] | Mapping[str, TokenSpec] | None = None,
    *,
    tier: str = "enterprise",
    mqtt_url: str | None = None,
    mqtt_username: str | None = None,
    mqtt_password: str | None = None,
    mqtt_timeout: float = 10.0,
    host: str = "127.0.0.1",
    http_port: int = 0,
    udp_port: int | None = 0,
    tcp_port: int | None = 0,
    tier_limits: Mapping[str, TierLimits] | None = None,
    max_body_bytes: int = 1_000_000,
    read_limit: int = 1000,
    error_code_style: CodeStyle = "alternate",
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[AlphaXSimulator]:
    """Run a simulator for the duration of the block.

    Ports default to 0 (the OS picks; read ``sim.http_url``, ``sim.udp_port``,
    ``sim.tcp_port``); ``udp_port=None`` / ``tcp_port=None`` turn those listeners off. With
    ``mqtt_url`` the block starts only once the broker acknowledged the subscriptions
    (``MqttConnectError`` after ``mqtt_timeout`` seconds otherwise).
    ``clock`` drives the rate limits (tests pass a hand-moved clock), ``wall_clock`` the
    default read window and the time of MQTT values that carry none.
    """
    sim = AlphaXSimulator(
        tokens,
        tier=tier,
        tier_limits=tier_limits,
        max_body_bytes=max_body_bytes,
        read_limit=read_limit,
        error_code_style=error_code_style,
        clock=clock,
        wall_clock=wall_clock,
    )
    subscriber = None
    if mqtt_url is not None:
        subscriber = MqttSubscriber(
            mqtt_url, sim.ingest_mqtt, username=mqtt_username, password=mqtt_password
        )
        await subscriber.start(mqtt_timeout)
        sim.mqtt_url = mqtt_url
        sim.mqtt = subscriber
    shutdown = trio.Event()
    # An exception from the block is re-raised after the nurseries closed, so the caller sees
    # it as is rather than wrapped in exception groups.
    body_error: Exception | None = None
    try:
        async with trio.open_nursery() as http_nursery:
            port = await http_nursery.start(serve_http, sim, host, http_port, shutdown)
            sim.http_url = f"http://{host}:{port}"
            try:
                async with trio.open_nursery() as nursery:
                    if udp_port is not None:
                        sim.udp_port = await nursery.start(serve_udp, sim, host, udp_port)
                    if tcp_port is not None:
                        sim.tcp_port = await nursery.start(serve_tcp, sim, host, tcp_port)
                    try:
                        yield sim
                    except Exception as err:
                        body_error = err
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                shutdown.set()
                http_nursery.cancel_scope.deadline = trio.current_time() + 2.0
    finally:
        if subscriber is not None:
            await subscriber.stop()
    if body_error is not None:
        raise body_error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="junction sim alphax", description="Run an AlphaX Conduit simulator."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (0: any free)")
    parser.add_argument("--udp-port", type=int, default=0, help="UDP port (0: any; -1: off)")
    parser.add_argument("--tcp-port", type=int, default=0, help="TCP port (0: any; -1: off)")
    parser.add_argument("--mqtt", metavar="URL", help="broker to subscribe to, mqtt://host:port")
    parser.add_argument("--mqtt-username", help="username for the broker (if it needs one)")
    parser.add_argument("--tier", default="enterprise", choices=sorted(DEFAULT_TIERS))
    parser.add_argument(
        "--token", action="append", help="accepted token (repeatable; default $ALPHAX_TOKEN)"
    )
    parser.add_argument("--max-body", type=int, default=1_000_000, help="413 above this size")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


async def serve_cli(argv: list[str]) -> int:
    """Run the simulator until cancelled (Ctrl-C); returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tokens: list[str] = args.token or []
    if not tokens and os.environ.get("ALPHAX_TOKEN"):
        tokens = [os.environ["ALPHAX_TOKEN"]]
    if not tokens:
        tokens = [f"dev-{secrets.token_hex(12)}"]
        print(f"no --token and no $ALPHAX_TOKEN: generated dev token {tokens[0]}", flush=True)
    mqtt_password = os.environ.get("ALPHAX_MQTT_PASSWORD")
    failures: list[str] = []
    try:
        async with open_alphax_simulator(
            tokens,
            tier=args.tier,
            mqtt_url=args.mqtt,
            mqtt_username=args.mqtt_username,
            mqtt_password=mqtt_password,
            host=args.host,
            http_port=args.http_port,
            udp_port=None if args.udp_port < 0 else args.udp_port,
            tcp_port=None if args.tcp_port < 0 else args.tcp_port,
            max_body_bytes=args.max_body,
        ) as sim:
            print(
                f"AlphaX simulator: http {sim.http_url}  udp {sim.udp_port}  tcp {sim.tcp_port}  "
                f"mqtt {sim.mqtt_url or 'off'}  tier {sim.tier}  tokens {len(sim.tokens)}",
                flush=True,
            )
            await trio.sleep_forever()
    except* (MqttConnectError, ValueError, OSError) as group:
        failures = [f"{type(err).__name__}: {err}" for err in _leaves(group)]
    if failures:
        print(f"alphax simulator: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0  # not reached: sleep_forever only ends by cancellation


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def main(argv: list[str] | None = None) -> int:
    """Synchronous entry point for ``junction sim alphax``; Ctrl-C exits with 0."""
    try:
        return trio.run(partial(serve_cli, sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:  # Ctrl-C arrives wrapped by the nurseries it crossed
        if group.split(KeyboardInterrupt)[1] is None:
            return 0
        raise
