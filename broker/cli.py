"""The ``junction`` command line.

::

    junction run CONFIG          run the bridge until Ctrl-C / SIGTERM (SIGHUP: reload CONFIG)
    junction reload CONFIG       have the running bridge check CONFIG and apply it live
    junction check CONFIG        validate; print adapters and compiled routes (exit 0 or 2)
    junction init [--peers ...]  print a commented starter site configuration (broker._init)
    junction status CONFIG       the live table of a running bridge, from its /status endpoint
    junction explain CONFIG ENV  which routes take an envelope and what they make of it
    junction plugins             what is loaded and what each plugin registers
    junction dlq ACTION CONFIG   list | show | replay | purge dead letters (broker._dlq)

Plugins add commands through the ``junction_commands`` hook (``broker.hookspecs``); the demo
bundle (``adapters/demo``) adds these two:

    junction demo                run the built-in demo (routes/demo.toml) with a live view
    junction sim PEER ...        run a peer simulator (placeos, allxon, alphax)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from broker import _envelope as env_mod
from broker import _explain as explain_mod
from broker import _logs as logs
from broker import _operator_view as operator_view
from broker import _plugins as plugins_mod
from broker import _reload as reload_mod
from broker import _state_lock as state_lock
from broker import _status as status
from broker._errors import ConfigError, ConfigProblem, JunctionError, PluginError
from broker._overflow import Overflow
from broker._routing import resolve_policies
from broker._runtime import Loaded, Runtime, load
from broker._status_live import LiveStatus
from broker.hookspecs import Command

log = logging.getLogger("junction")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``junction`` console script."""
    try:
        parser = _parser(plugins_mod.commands())
    except PluginError as err:
        print(f"plugin error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        result: int = args.func(args)
        return result
    except ConfigError as err:
        print(f"configuration error{'s' if len(err.problems) > 1 else ''}:", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except PluginError as err:
        print(f"plugin error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except state_lock.StateDirBusy as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    except JunctionError as err:  # the environment said no (an outbox file that is not one)
        print(f"junction {args.command}: {err}", file=sys.stderr)
        return EXIT_CONFIG


def _parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The parser: the core commands, then each plugin command in ``commands``."""
    p = argparse.ArgumentParser(
        prog="junction",
        description="Junction bridges PlaceOS, the Allxon Octo agent and AlphaX Conduit "
        "through a routing table written in TOML.",
        epilog="Start with `junction demo`, then `junction check routes/demo.toml` to see a table.",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        default="human",
        choices=["human", "json"],
        help="human lines (default) or one JSON object per line",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the bridge until Ctrl-C or SIGTERM")
    run.add_argument("config", help="the TOML configuration file")
    run.add_argument(
        "--status-every",
        type=float,
        default=0,
        metavar="S",
        help="print the live status table every S seconds (0 = never)",
    )
    run.add_argument(
        "--duration",
        type=float,
        default=0,
        metavar="S",
        help="stop by itself after S seconds (0 = run until stopped)",
    )
    run.set_defaults(func=cmd_run)

    rel = sub.add_parser(
        "reload", help="have the bridge running CONFIG check and apply it without a restart"
    )
    rel.add_argument("config", help="the TOML configuration the bridge was started with")
    rel.add_argument(
        "--wait",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="seconds to wait for the bridge to say what it made of the file (default 30)",
    )
    rel.set_defaults(func=cmd_reload)

    init = sub.add_parser(
        "init",
        help="print a commented starter configuration for a site",
        description="Print a starter site configuration (to redirect into a file): the "
        "[junction] table, the named peers' adapters and the routes between them, every "
        "secret as ${NAME} from the environment.",
    )
    init.add_argument(
        "--peers",
        default="placeos,alphax,allxon",
        help="comma-separated peers to include (default: placeos,alphax,allxon)",
    )
    init.set_defaults(func=cmd_init)

    check = sub.add_parser("check", help="validate a configuration and show the compiled routes")
    check.add_argument("config")
    check.set_defaults(func=cmd_check)

    stat = sub.add_parser(
        "status", help="show a running bridge's live table (from its [junction.http] endpoint)"
    )
    stat.add_argument("config", help="the TOML configuration the bridge runs")
    stat.add_argument(
        "--url", default=None, help="ask this endpoint instead of the config's listen address"
    )
    stat.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    stat.set_defaults(func=cmd_status)

    exp = sub.add_parser(
        "explain", help="show which routes take an envelope and what each produces"
    )
    exp.add_argument("config")
    exp.add_argument(
        "envelope", help="envelope JSON, @FILE, or - for stdin; id and ts may be left out"
    )
    exp.set_defaults(func=cmd_explain)

    plug = sub.add_parser("plugins", help="list loaded plugins and what each registers")
    plug.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="NAME",
        help="block a plugin by name (as disabled_plugins would)",
    )
    plug.set_defaults(func=cmd_plugins)

    from broker import _dlq as dlq

    dlq.add_parser(sub)

    for command in (commands or {}).values():
        if command.name in sub.choices:
            raise PluginError(
                f"plugin {command.plugin!r} adds the command {command.name!r}, "
                "which junction already has"
            )
        cp = sub.add_parser(command.name, help=command.help, add_help=command.add_help)
        if command.configure is not None:
            command.configure(cp)
        cp.set_defaults(func=command.run)
    return p


def cmd_check(args: argparse.Namespace) -> int:
    loaded = load(args.config)
    print(f"{args.config}: OK")
    for warning in loaded.config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"\nadapters ({len(loaded.config.adapters)}):")
    for name, acfg in loaded.config.adapters.items():
        print(f"  {name:<20} type={acfg.type}{'' if acfg.required else ' (optional)'}")
    print(f"\nroutes ({len(loaded.table.routes)}):")
    kinds_of = {
        name: loaded.plugins.adapter_types[acfg.type].persist_kinds
        for name, acfg in loaded.config.adapters.items()
        if acfg.type in loaded.plugins.adapter_types
    }
    policies = resolve_policies(loaded.table, kinds_of)
    for r in loaded.table.routes:
        kinds = ",".join(r.kinds) if r.kinds else "*"
        print(f"  {r.name}: {','.join(r.sources)} [{kinds}] -> {','.join(r.targets)}")
        for text, _ in r.explain:
            print(f"      match {text}")
        if r.mapping is not None:
            print(f"      map   {json.dumps(r.mapping.spec, default=str)}")
        if r.transforms:
            print(f"      transforms {' -> '.join(name for name, _ in r.transforms)}")
        chosen = sorted({policies[(r.name, t)] for t in r.targets})
        overflow = "/".join(chosen) + (" (by target)" if r.overflow is Overflow.AUTO else "")
        extra = f"overflow={overflow} queue_size={r.queue_size}"
        if r.spec.expects_reply:
            extra += " expects_reply"
        print(f"      {extra}")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from broker import _init

    try:
        peers = _init.parse_peers(args.peers)
    except _init.InitError as err:
        print(f"junction init: {err}", file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(_init.starter_config(peers))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    loaded = load(args.config)
    text = args.envelope
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        env = env_mod.decode(text)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        print(f"not an envelope: {err}", file=sys.stderr)
        print(f"example: {json.dumps(explain_mod.EXAMPLE_ENVELOPE)}", file=sys.stderr)
        return EXIT_CONFIG
    print(explain_mod.render(explain_mod.explain(loaded.table, env)))
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = plugins_mod.load(disabled=args.disable)
    print("plugins:")
    for name in plugins.names():
        types = [t.name for t in plugins.adapter_types.values() if t.plugin == name]
        trans = [t.name for t in plugins.transforms.values() if t.plugin == name]
        cmds = [c.name for c in plugins.commands.values() if c.plugin == name]
        print(f"  {name}")
        if types:
            print(f"    adapter types: {', '.join(types)}")
        if trans:
            print(f"    transforms:    {', '.join(trans)}")
        if cmds:
            print(f"    commands:      {', '.join(cmds)}")
    for name in plugins.blocked:
        print(f"  {name} (disabled)")
    for failure in plugins.failures:
        print(f"  {failure.name} FAILED TO LOAD: {failure.reason}")
    print("\nadapter types:")
    for t in plugins.adapter_types.values():
        print(f"  {t.name:<12} {t.description}")
    print("\ntransforms:")
    for tr in plugins.transforms.values():
        print(f"  {tr.name:<18} {tr.description.strip().splitlines()[0] if tr.description else ''}")
    return EXIT_FAIL if plugins.failures else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from broker import _ops_client as ops_http
    from broker._ops_listen import LISTEN_KEY

    view = operator_view.read(args.config)  # [junction] only: no adapter secrets needed
    if view.token_problems:  # the endpoint's token is ${VAR} and VAR is not set here
        raise ConfigError(list(view.token_problems))
    url = args.url
    if url is None:
        listen = view.junction.http.listen
        if not listen:
            print(
                f"{args.config}: {LISTEN_KEY} is not set, so this bridge has no "
                'operations endpoint to ask; set it (e.g. listen = "127.0.0.1:9464") and '
                "restart the bridge, or pass --url",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        url = ops_http.base_url(listen, origin=args.config)
    try:
        snap = ops_http.fetch_status(url, token=view.junction.http.token)
    except ops_http.EndpointError as err:
        print(err, file=sys.stderr)
        return EXIT_FAIL
    print(json.dumps(snap, indent=1) if args.json else status.render(snap))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    loaded = load(args.config)
    return run_until_stopped(loaded, status_every=args.status_every, duration=args.duration)


def cmd_reload(args: argparse.Namespace) -> int:
    # [junction] only: the bridge checks the rest with its own environment (its secrets)
    view = operator_view.read(args.config)
    state_dir = view.junction.state_dir
    since = time.time()
    try:
        pid = reload_mod.request_reload(state_dir)
    except (reload_mod.BridgeUnreachable, JunctionError) as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return EXIT_FAIL
    outcome = reload_mod.wait_outcome(state_dir, since, args.wait)
    if outcome is None:
        print(
            f"{args.config}: sent SIGHUP to junction (pid {pid}), which did not say within "
            f"{args.wait:g} s what it made of it; its log says (or try --wait longer)",
            file=sys.stderr,
        )
        return EXIT_FAIL
    if not outcome.applied:
        print(f"junction (pid {pid}) refused {args.config}; it runs on unchanged:", file=sys.stderr)
        for problem in outcome.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"junction (pid {pid}) reloaded {outcome.summary}")
    return EXIT_FAIL if outcome.failed else EXIT_OK


def run_until_stopped(
    loaded: Loaded,
    status_every: float = 0,
    duration: float = 0,
    live: bool = False,
    extra: Callable[[], str] | None = None,
    footer: str = "",
) -> int:
    """Start the runtime, wait for a signal (or ``duration``), stop it cleanly.

    ``footer`` starts the live view's last line, which always shows (the demo's console URL).

    ``extra`` adds text under the status table each time it is shown (the demo's values).
    """
    stop = threading.Event()  # set by each signal handled here: wakes the loop below
    received: list[str] = []
    hangups: list[str] = []  # SIGHUP: reload, on the loop below (never inside the handler)
    sighup = getattr(signal, "SIGHUP", None)  # not on Windows

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == sighup:
            hangups.append("SIGHUP")
        else:
            received.append(signal.Signals(signum).name)
        stop.set()

    handled = (signal.SIGINT, signal.SIGTERM, *([sighup] if sighup is not None else []))
    old = {s: signal.signal(s, on_signal) for s in handled}
    try:
        lock = own_state_dir(loaded)  # before anything else touches the state directory
    except BaseException:
        for s, handler in old.items():
            signal.signal(s, handler)
        raise
    recent: logs.RecentLines | None = None
    runtime: Runtime | None = None
    view: LiveStatus | None = None
    screen = contextlib.ExitStack()
    try:
        if live:
            state = Path(loaded.config.junction.state_dir)
            recent = logs.RecentLines()
            logs.divert_to_file(str(state / "junction.log"), recent)
            where = f"(full log: {state / 'junction.log'}; Ctrl-C to stop)"
            view = LiveStatus(f"{footer}  {where}" if footer else where)
        runtime = Runtime(loaded)
        runtime.start()
        if view is not None:
            screen.enter_context(view)
        began = time.monotonic()
        every = status_every or 0.5
        while not stop.wait(every) or hangups:
            if hangups:
                hangups.clear()
                stop.clear()
                if received:  # a stop signal came with it
                    break
                reload_mod.reload_logged(runtime)
                continue
            if duration and time.monotonic() - began >= duration:
                break
            if status_every:
                _show(runtime, view, recent, extra)
        if received:
            log.info(
                "%s received: stopping (grace %.1f s)",
                received[0],
                runtime.loaded.config.junction.shutdown_grace_s,
            )
    finally:
        screen.close()  # the terminal's own screen back before the last words
        report = runtime.stop() if runtime is not None else None
        lock.release()
        for s, handler in old.items():
            signal.signal(s, handler)
    assert report is not None  # Runtime() raising leaves by the finally above
    if live:
        left = sum(report.left.values())
        sys.stdout.write(status.render(report.snapshot) + "\n\n")
        sys.stdout.write(
            f"stopped: {left} envelopes left undelivered\n"
            if left
            else "stopped cleanly: every queued envelope was delivered\n"
        )
    return EXIT_OK if not report.left else EXIT_FAIL


def _seconds(text: str) -> float:
    """A ``--wait`` value: a finite number of seconds, 0 or more."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def own_state_dir(loaded: Loaded) -> state_lock.StateLock:
    """Take the state directory's lock; raises StateDirBusy (exit 2) when another bridge
    holds it, ConfigError naming ``[junction] state_dir`` when it cannot be created."""
    state_dir = loaded.config.junction.state_dir
    try:
        return state_lock.acquire(state_dir)
    except OSError as err:
        raise ConfigError(
            [
                ConfigProblem(
                    loaded.config.path,
                    "junction.state_dir",
                    f"cannot lock {state_lock.pid_path(state_dir)}: {err.strerror or err}",
                    state_dir,
                    True,
                    "name a directory the bridge may create and write (e.g. /var/lib/junction)",
                )
            ]
        ) from err


def _show(
    runtime: Runtime,
    view: LiveStatus | None,
    recent: logs.RecentLines | None = None,
    extra: Callable[[], str] | None = None,
) -> None:
    """Hand the live view a fresh snapshot, or print the picture (not a terminal)."""
    snap = runtime.snapshot()
    if recent is not None:
        snap["recent_log"] = list(recent.lines)
    if view is not None:
        view.show(snap, extra)
        return
    lines = extra().splitlines() if extra is not None else []
    sys.stdout.write(status.render(snap, extra=lines) + "\n\n")
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
