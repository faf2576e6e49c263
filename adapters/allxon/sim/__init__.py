"""A simulated Allxon Octo agent: a TLS WebSocket server speaking signed JSON-RPC 2.0.

Use it from tests::

    async with open_allxon_simulator(budget=5) as sim:
        ...connect a plugin to sim.url with sim.client_ssl_context(), signing with
        sim.credential.access_key...
        await sim.wait_for(lambda s: s.state("my-module", "power") == "on", timeout=5)
        command_id = await sim.send_command("my-module", "reboot", {"delay": "5"})

or from a shell: ``junction sim allxon --write-credentials plugin_credential.json --port 55688``
(``main(argv)``); it prints the plugin's cards and latest values every few seconds.

Behaviour (the real agent's, as ``docs/protocols/allxon.md`` describes it; the choices it leaves
open are marked *decided* and listed there under "What the simulator decides"):

- TLS with a throwaway CA from ``trustme`` (``sim.ca_pem``, ``sim.client_ssl_context()``);
  text frames only (a binary frame gets a -32700 error frame).
- Every received frame is checked in this order; the first failure is answered with an error
  frame (``{"jsonrpc":"2.0","error":{"code":"-32600",...},"id":null}``, code a string) and the
  frame is *not* recorded (``sim.store.rejected`` counts it by ``Rejection``):
  size over ``max_frame`` (2048) -> -32600; device offline (``set_offline``) -> -32000;
  not JSON-RPC -> -32700; unknown method or bad params -> -32600; an agent -> plugin method
  sent by the plugin -> -32600; missing or bad signature -> -32600 (verified on the raw text, in
  a worker thread); not ``v2/notifyPluginUpdate`` as the first accepted frame of the connection
  -> -32600; wrong ``appGUID`` -> -32600; a declaration that breaks the card rules -> -32600
  (listing the first problems); past the rolling call budget -> -32600.
- *Decided*: rejections never close the connection (the agent is only known to treat a
  plugin that skipped the update as offline; keeping the socket lets it recover by sending the
  update). Only accepted calls use budget (which calls count is not documented). The
  error code for an exhausted budget is not documented; we use -32600.
- *Decided*: while offline every frame gets -32000 and the connection must send
  ``v2/notifyPluginUpdate`` again once the device is back (an offline agent wants the update
  re-sent later: docs/protocols/allxon.md, "Errors from the agent").
- After an accepted update it sends the ``v2/notifyPluginAlarmUpdate`` and
  ``v2/notifyPluginConfigUpdate`` that the real agent sends, empty here (a reset: every alarm
  disabled), as the real agent's may be (``send_initial_updates``).
- Everything it sends is signed with the access key, in a worker thread.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import os
import platform
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, serve_websocket

from adapters.allxon.codec import (
    MAX_FRAME_BYTES,
    PluginCredential,
    decode_credential,
    encode_credential,
)
from adapters.allxon.sim._server import (
    RECEIVE_LIMIT,
    AllxonSimulator,
    NoPluginConnectedError,
    dev_credential,
)
from adapters.allxon.sim._store import sample_command

__all__ = [
    "AllxonSimulator",
    "NoPluginConnectedError",
    "load_credential",
    "main",
    "open_allxon_simulator",
    "serve_cli",
    "write_dev_credential",
]


logger = logging.getLogger(__name__)

DEFAULT_PORT = 55688


# --------------------------------------------------------------------------- credentials


def write_dev_credential(path: Path | str, *, overwrite: bool = False) -> PluginCredential:
    """Write a fresh development ``plugin_credential.json`` (mode 0600) and return it."""
    target = Path(path)
    credential = PluginCredential(
        app_guid=str(uuid.uuid4()),
        access_key=secrets.token_hex(16),  # 32 characters, like a real access key
        platform=sys.platform,
        architecture=platform.machine(),
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(encode_credential(credential))
    logger.info("wrote a development plugin credential to %s", target)
    return credential


def load_credential(path: Path | str) -> PluginCredential:
    """Read a ``plugin_credential.json`` (raises ``OSError`` or ``codec.CredentialError``)."""
    return decode_credential(Path(path).read_bytes())


@asynccontextmanager
async def open_allxon_simulator(
    *,
    credential: PluginCredential | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    budget: int = 500,
    budget_window: float = 3600.0,
    clock: Callable[[], float] | None = None,
    max_frame: int = MAX_FRAME_BYTES,
    send_initial_updates: bool = True,
    check_app_guid: bool = True,
) -> AsyncIterator[AllxonSimulator]:
    """Run a simulated agent on ``host:port`` (port 0 = any free port) for the block's
    duration. Without ``credential`` a random development one is made (``sim.credential``)."""
    sim = AllxonSimulator(
        credential or dev_credential(),
        budget=budget,
        budget_window=budget_window,
        clock=clock,
        max_frame=max_frame,
        send_initial_updates=send_initial_updates,
        check_app_guid=check_app_guid,
    )
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(
                serve_websocket,
                sim._handle,
                host,
                port,
                sim._server_ssl_context(),
                max_message_size=RECEIVE_LIMIT,
                connect_timeout=10,
                disconnect_timeout=2,
            )
        )
        sim.host = host
        sim.port = server.port
        logger.info("Allxon agent simulator listening on %s", sim.url)
        try:
            yield sim
        finally:
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="junction sim allxon", description="Simulated Allxon Octo agent (wss, signed)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = any free port")
    parser.add_argument("--credentials", metavar="FILE", help="plugin_credential.json to use")
    parser.add_argument(
        "--write-credentials", metavar="FILE", help="create a dev credential FILE and use it"
    )
    parser.add_argument("--app-guid", help="instead of a credential file (with --access-key)")
    parser.add_argument("--access-key", help="instead of a credential file (with --app-guid)")
    parser.add_argument("--ca-out", metavar="FILE", help="write the simulator's CA PEM here")
    parser.add_argument("--budget", type=int, default=500, help="calls per rolling hour")
    parser.add_argument("--command-every", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--render-every", type=float, default=5.0, metavar="SECONDS")
    return parser


def _cli_credential(args: argparse.Namespace) -> PluginCredential:
    if args.write_credentials:
        return write_dev_credential(args.write_credentials)
    if args.credentials:
        return load_credential(args.credentials)
    if args.app_guid and args.access_key:
        return PluginCredential(app_guid=args.app_guid, access_key=args.access_key)
    raise ValueError("give --credentials FILE, --write-credentials FILE or --app-guid/--access-key")


async def _command_loop(sim: AllxonSimulator, every: float) -> None:
    while True:
        await trio.sleep(every)
        sample = sample_command(sim.store.update, datetime.datetime.now())
        if sample is None:
            logger.info("scheduled command skipped: no plugin has declared a command")
            continue
        module, name, params = sample
        try:
            await sim.send_command(module, name, params)
        except (NoPluginConnectedError, ConnectionClosed) as err:
            logger.info("scheduled command skipped: %s", err)


async def _render_loop(sim: AllxonSimulator, every: float) -> None:
    while True:
        print(sim.render(), flush=True)
        print(flush=True)
        await trio.sleep(every)


async def serve_cli(argv: list[str]) -> int:
    """Run the simulator until cancelled (Ctrl-C), printing its table periodically."""
    args = _parser().parse_args(argv)
    try:
        credential = _cli_credential(args)
    except (OSError, ValueError) as err:
        print(f"junction sim allxon: {err}", file=sys.stderr)
        return 2
    async with open_allxon_simulator(
        credential=credential, host=args.host, port=args.port, budget=args.budget
    ) as sim:
        if args.ca_out:
            Path(args.ca_out).write_bytes(sim.ca_pem)
        print(
            f"Allxon agent simulator on {sim.url} appGUID={credential.app_guid}"
            + (f" CA={args.ca_out}" if args.ca_out else ""),
            flush=True,
        )
        async with trio.open_nursery() as nursery:
            if args.render_every > 0:
                nursery.start_soon(_render_loop, sim, args.render_every)
            if args.command_every > 0:
                nursery.start_soon(_command_loop, sim, args.command_every)
            await trio.sleep_forever()
    return 0  # pragma: no cover - only reached by cancellation


def main(argv: list[str] | None = None) -> int:
    """Synchronous entry point for ``junction sim allxon``; Ctrl-C exits 0."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return trio.run(serve_cli, list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:  # Ctrl-C raised inside a nursery arrives wrapped
        _, rest = group.split(KeyboardInterrupt)
        if rest is None:
            return 0
        raise
