"""The demo bundle's plugin: ``junction demo`` and ``junction sim PEER``, through the
``junction_commands`` hook (a built-in, found by its entry point like any plugin).

Both run the simulators, which need the ``sim`` extra (``pip install 'junction[sim]'``);
without it they say so in one line and exit 2.  Nothing here imports a simulator until a
command runs, so every other ``junction`` command works without the extra.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from broker.hookspecs import Command, hookimpl

EXIT_CONFIG = 2  # as broker.cli: usage, configuration or installation error
#: Modules only the simulators use: what the ``sim`` extra installs (pyproject.toml).
SIM_MODULES = ("trustme",)
SIMULATORS = {
    "placeos": "adapters.placeos.sim",
    "allxon": "adapters.allxon.sim",
    "alphax": "adapters.alphax.sim",
}


@hookimpl
def junction_commands() -> Sequence[Command]:
    return [
        Command("demo", "run the built-in demo with a live view", run_demo, configure_demo),
        Command("sim", "run a peer simulator", run_sim, configure_sim, add_help=False),
    ]


def configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="demo table (default: routes/demo.toml)")
    parser.add_argument(
        "--duration",
        type=float,
        default=0,
        metavar="S",
        help="run S seconds without a live view, print a summary; exit 0 only "
        "when every route delivered",
    )


def run_demo(args: argparse.Namespace) -> int:
    if not _sim_extra_installed("junction demo"):
        return EXIT_CONFIG
    from adapters.demo import runner

    path = args.config or str(runner.default_config())
    live = sys.stdout.isatty() and not args.duration
    return runner.run_demo(path, duration=args.duration, live=live)


def configure_sim(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("peer", choices=sorted(SIMULATORS))
    parser.add_argument("args", nargs=argparse.REMAINDER)


def run_sim(args: argparse.Namespace) -> int:
    if not _sim_extra_installed(f"junction sim {args.peer}"):
        return EXIT_CONFIG
    module = importlib.import_module(SIMULATORS[args.peer])
    result: int = module.main(list(args.args))
    return result


def _sim_extra_installed(command: str) -> bool:
    """True when the simulators can run; otherwise says, in one line, what to install."""
    for name in SIM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            print(
                f"{command} needs the simulators' extra (module {name!r} is missing): "
                "pip install 'junction[sim]'",
                file=sys.stderr,
            )
            return False
    return True
