"""A PlaceOS real-time WebSocket server simulator that behaves like the real server.

Use it from tests::

    async with open_placeos_simulator(model={"systems": [...]}) as sim:
        url, key = sim.url, sim.api_key          # ws://127.0.0.1:<port>/api/engine/v2/...
        sim.set_status("sys-A", "Display", 1, "power", True)   # notifies bound sessions
        await sim.wait_until(lambda: sim.bind_count() == 1000)

or from a shell: ``junction sim placeos --port 8080 --model rooms.toml`` (``main(argv)``);
``--rate HZ --rate-status SYS/MODULE_INDEX/NAME`` sets statuses at a steady rate (``_rate``).

What it does, following ``docs/protocols/placeos.md`` and the server's source
(PlaceOS/rest-api ``websocket/session.cr``, PlaceOS/driver ``proxy/remote_driver.cr``):

- Authentication before the upgrade: ``X-API-Key`` header, else ``?api-key=``; an unknown key is
  ``401 {"error": "unknown X-API-Key"}`` (no fall-through to a bearer token). Else
  ``Authorization: Bearer`` / ``?bearer_token=``; none or an unknown token is a bare ``401``.
  A credential added with ``scoped=False`` is a bare ``403``. ``GET /auth/authority`` answers
  JSON with ``version`` ``2.x.y`` (no auth, as on the server); a non-upgrade request to the
  control path is ``426``; other paths ``404``.
- Requests parsed strictly (``codec.parse_request``); a frame it cannot parse gets no reply
  (nor does a binary frame). ``args`` on a non-exec command is accepted and ignored, as the
  server's ``Request`` (``JSON::Serializable::Strict``, ``args`` nilable) does.
  Each exec runs in its own task, so replies come out of order; bind/unbind/debug/ignore are
  answered in arrival order (each in its own task too while ``delay_replies`` is on).
- Exec errors as the server sends them: unknown system *or* module -> 6 ``could not find
  module`` (the server looks the module up by system; it never sends 5), unknown method -> 1
  ``could not find function <name>``, a privileged method -> 2, a raising method -> 3
  ``module raised: <msg>``; every error has ``code: 500``. Codes 0, 4, 5, 7 (which the server
  does not send for these cases) can be scripted with ``script_error`` to test clients.
  ``debug`` of an unknown module id -> 7 ``failed to attach debugger``.
- Text ``ping`` -> ``pong``; an unsolicited ``pong`` every ``pong_interval`` s (80 by default);
  protocol-level pings are answered by trio-websocket (even after ``stop_answering_pings``).
- Binding a module whose name starts with ``_`` needs support clearance (else error 2), as on
  the server; ``debug`` frames carry the id of the ``debug`` request and the module id.
- On close every binding and debug subscription of the session is dropped.

All methods run on the simulator's trio thread (the test's own loop); none is thread-safe.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from adapters.placeos.sim._model import ModelError, SimModel, load_model
from adapters.placeos.sim._rate import RateKey, drive, parse_rate_status, without_drift
from adapters.placeos.sim._server import (
    AUTHORITY_PATH,
    CONTROL_PATH,
    DEV_API_KEY,
    Grant,
    HttpExchange,
    PlaceOSSimulator,
    SimSession,
)

__all__ = [
    "AUTHORITY_PATH",
    "CONTROL_PATH",
    "DEV_API_KEY",
    "EXAMPLE_MODEL",
    "Grant",
    "HttpExchange",
    "ModelError",
    "PlaceOSSimulator",
    "SimModel",
    "SimSession",
    "load_model",
    "main",
    "open_placeos_simulator",
    "serve_cli",
]

log = logging.getLogger(__name__)

EXAMPLE_MODEL: Final = Path(__file__).with_name("model_example.toml")


@asynccontextmanager
async def open_placeos_simulator(
    model: SimModel | Mapping[str, Any] | str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEV_API_KEY,
    pong_interval: float | None = 80.0,
    drift: bool = True,
    seed: int | None = None,
    **options: Any,
) -> AsyncIterator[PlaceOSSimulator]:
    """Serve a simulator on ``host:port`` (0: any free port) for the duration of the block.

    ``model``: a ``SimModel``, a dict, or a TOML/JSON file (None: no systems). ``drift``: run
    the model's random walks (``seed`` makes them repeatable). ``options`` go to
    ``PlaceOSSimulator`` (``value_before_success``, ``authority_version``, ``max_outbox``).
    """
    sim = PlaceOSSimulator(
        load_model(model), api_key=api_key, pong_interval=pong_interval, **options
    )
    listeners = await trio.open_tcp_listeners(port, host=host)  # OSError: port taken ...
    sim.host, sim.port = host, listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, sim.handle_tcp, listeners)
        log.info("PlaceOS simulator serving %s", sim.url)
        if drift:
            sim.start_drift(nursery, seed)
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="junction sim placeos", description="Serve a simulated PlaceOS real-time API."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    parser.add_argument("--model", type=Path, default=EXAMPLE_MODEL, help="TOML or JSON model")
    parser.add_argument("--api-key", help="accepted X-API-Key (default: $PLACEOS_API_KEY)")
    parser.add_argument("--pong-interval", type=float, default=80.0, help="seconds (0: off)")
    parser.add_argument("--seed", type=int, help="seed for the drifting values")
    parser.add_argument(
        "--rate", type=float, default=0.0, metavar="HZ", help="changes a second (0: off)"
    )
    parser.add_argument(
        "--rate-status",
        action="append",
        default=[],
        metavar="SYS/MODULE_INDEX/NAME",
        help="a status --rate sets, in turn with the others, to 1, 2, 3... (repeatable)",
    )
    parser.add_argument("--rate-start", type=int, default=1, help="the first value --rate sets")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper
    )
    return parser


async def serve_cli(argv: list[str]) -> int:
    """Run the simulator until cancelled (Ctrl-C); returns a process exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s  %(message)s"
        )
    key = args.api_key or os.environ.get("PLACEOS_API_KEY")
    try:
        model = load_model(args.model)
        rate_keys = _rate_keys(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = without_drift(model, rate_keys)
    try:
        async with open_placeos_simulator(
            model,
            host=args.host,
            port=args.port,
            api_key=key or DEV_API_KEY,
            pong_interval=args.pong_interval or None,
            seed=args.seed,
        ) as sim:
            shown = "from --api-key / $PLACEOS_API_KEY" if key else f"dev default {DEV_API_KEY!r}"
            print(f"PlaceOS simulator listening on {sim.url}", flush=True)
            print(f"  authority: {sim.http_url}{AUTHORITY_PATH}; X-API-Key: {shown}", flush=True)
            systems = ", ".join(s.id for s in model.systems) or "none"
            print(f"  systems: {systems}  (Ctrl-C to stop)", flush=True)
            if rate_keys:
                await drive(sim, rate_keys, args.rate, args.rate_start)
            await trio.sleep(math.inf)
    except OSError as err:  # raised before serving (in the body it would arrive grouped)
        print(f"error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    return 0


def _rate_keys(args: argparse.Namespace) -> list[RateKey]:
    """The statuses ``--rate`` drives (none when it is off); ValueError for a bad pair."""
    if args.rate < 0 or (args.rate > 0) != bool(args.rate_status):
        raise ValueError("--rate HZ (above 0) and --rate-status go together")
    return [parse_rate_status(text) for text in args.rate_status]


def main(argv: list[str] | None = None) -> int:
    """Synchronous entry point for ``junction sim placeos ...``; Ctrl-C exits with 0."""
    try:
        return trio.run(serve_cli, list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:  # Ctrl-C inside the server's nursery arrives grouped
        if group.split(KeyboardInterrupt)[1] is None:
            return 0
        raise
