"""``junction dlq``: look at, replay and purge the dead letters kept in the outbox.

::

    junction dlq list CONFIG [--route R] [--reason TEXT] [--ids [--limit N]]
    junction dlq show CONFIG SEQ...
    junction dlq replay CONFIG [--route R] [--reason TEXT] [--ids 1,2,5-9] [--rate N] [--yes]
    junction dlq purge CONFIG [--route R] [--reason TEXT] [--ids 1,2,5-9] [--yes]

Only ``[junction] state_dir`` and ``[junction.outbox] file`` are taken from CONFIG: the
rest of the file (adapters, routes) may be broken or use plugins this process lacks,
which is exactly when dead letters need looking at. The whole file is still expanded,
so the secrets it names are redacted from everything printed here.

``replay`` moves dead letters into the outbox's ``replay`` table; the running bridge
takes them from there (at most ``REPLAYS_PER_TICK`` per quarter second) and runs them
again: a ``route`` failure through its route, a ``deliver`` failure straight to its
target. While a bridge runs, the move is paced at ``--rate`` a second so a backfill does
not trip a peer's rate limit; with no bridge running nothing would consume a paced queue,
so the rows are queued at once and the bridge takes them at its own pace when it starts.

Selections are taken oldest first and capped at the count shown (and confirmed) before
anything changes: a replayed letter that fails again is stored under a new, higher seq,
so it is not picked up a second time by the same command.

Exit codes: 0 done, 1 nothing matched / no outbox / not confirmed / interrupted,
2 configuration error.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import config as config_mod
from broker import logs
from broker import reload as reload_mod
from broker.dead_letters import REPLAYS_PER_TICK
from broker.errors import ConfigError, ConfigProblem
from broker.outbox import DeadRow, Outbox, OutboxError

EXIT_OK, EXIT_FAIL = 0, 1
#: The router's tick: it takes queued replays this often.
TICK_S = 0.25
#: Replay and purge ask for confirmation (or ``--yes``) above this many dead letters.
CONFIRM_ABOVE = 100
DEFAULT_RATE = 100.0
LIST_LIMIT = 50
#: Rows per purge transaction and seqs per ``IN (...)`` query (well under SQLite's limit).
PURGE_CHUNK = 500
IDS_PER_QUERY = 500
REASON_WIDTH = 160


# --- the command line ------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dlq`` and its four subcommands to the ``junction`` parser."""
    dlq = sub.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters (the outbox's dead-letter store)",
        description="Inspect and act on the dead letters in <state_dir>/<outbox file>. "
        "Exit 0 done, 1 nothing matched / no outbox / not confirmed, 2 configuration error.",
    )
    dsub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    lst = dsub.add_parser("list", help="counts by route, stage and reason (or rows with --ids)")
    lst.add_argument("config", help="the TOML configuration of the bridge")
    _filters(lst)
    lst.add_argument(
        "--ids", action="store_true", help="list individual dead letters, oldest first"
    )
    lst.add_argument(
        "--limit",
        type=_non_negative_int,
        default=LIST_LIMIT,
        metavar="N",
        help=f"with --ids: show at most N rows (default {LIST_LIMIT}; 0 = all)",
    )
    lst.set_defaults(func=cmd_list)

    show = dsub.add_parser("show", help="print dead letters in full: metadata and envelope")
    show.add_argument("config", help="the TOML configuration of the bridge")
    show.add_argument("seqs", nargs="+", type=_seq, metavar="SEQ", help="seq numbers (from list)")
    show.set_defaults(func=cmd_show)

    rep = dsub.add_parser(
        "replay", help="hand dead letters back to the bridge, paced at --rate a second"
    )
    rep.add_argument("config", help="the TOML configuration of the bridge")
    _filters(rep, with_ids=True)
    rep.add_argument(
        "--rate",
        type=_positive_float,
        default=DEFAULT_RATE,
        metavar="N",
        help=f"dead letters a second while a bridge runs (default {DEFAULT_RATE:.0f}; "
        f"the bridge takes at most {REPLAYS_PER_TICK / TICK_S:.0f})",
    )
    _yes(rep)
    rep.set_defaults(func=cmd_replay)

    pur = dsub.add_parser("purge", help="delete dead letters for good")
    pur.add_argument("config", help="the TOML configuration of the bridge")
    _filters(pur, with_ids=True)
    _yes(pur)
    pur.set_defaults(func=cmd_purge)


def _filters(p: argparse.ArgumentParser, with_ids: bool = False) -> None:
    p.add_argument("--route", default=None, metavar="R", help="only dead letters of route R")
    p.add_argument(
        "--reason",
        default=None,
        metavar="TEXT",
        help="only reasons containing TEXT (ASCII case ignored; %% and _ are wildcards)",
    )
    if with_ids:
        p.add_argument(
            "--ids",
            type=parse_ids,
            default=None,
            metavar="1,2,5-9",
            help="only these seqs (combined with --route / --reason)",
        )


def _yes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--yes",
        action="store_true",
        help=f"do not ask for confirmation (needed above {CONFIRM_ABOVE} without a terminal)",
    )


def parse_ids(text: str) -> list[int]:
    """``"1,2,5-9"`` -> ``[1, 2, 5, 6, 7, 8, 9]`` (sorted, without repeats)."""
    seqs: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--ids: {part!r} is not a seq or a range (write e.g. 1,2,5-9)"
            ) from None
        if first <= 0 or last < first:
            raise argparse.ArgumentTypeError(f"--ids: {part!r} is not a positive seq or range")
        seqs.update(range(first, last + 1))
    if not seqs:
        raise argparse.ArgumentTypeError("--ids: no seq given (write e.g. 1,2,5-9)")
    return sorted(seqs)


def _number(
    parse: Callable[[str], float], what: str, ok: Callable[[float], bool], rule: str
) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse`` the text, then require ``ok`` of it (``rule`` says why)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: {rule}")
        return value

    return convert


_seq = _number(int, "a seq number", lambda v: v > 0, "seq numbers start at 1")
_positive_float = _number(float, "a number", lambda v: v > 0, "must be more than 0")
_non_negative_int = _number(int, "a whole number", lambda v: v >= 0, "must be 0 or more")


# --- finding the store -------------------------------------------------------------------


@dataclass(frozen=True)
class Located:
    """Where CONFIG's bridge keeps its outbox, and the route names CONFIG declares."""

    config: str
    state_dir: Path
    path: Path
    routes: frozenset[str]


def locate(config_path: str) -> Located:
    """Read ``[junction] state_dir`` and ``[junction.outbox] file`` from ``config_path``.

    Raises ConfigError (exit 2) for problems in the file as a whole (unreadable, bad TOML)
    or in its ``[junction]`` table; problems elsewhere are ignored here.
    """
    problems: list[ConfigProblem] = []
    try:
        cfg = config_mod.load(config_path, {}, problems)
    except ConfigError as err:
        raise ConfigError(_ours(err.problems) or err.problems) from err
    ours = _ours(problems)
    if ours:
        raise ConfigError(ours)
    settings = cfg.junction
    state_dir = Path(settings.state_dir)
    return Located(
        config=config_path,
        state_dir=state_dir,
        path=state_dir / settings.outbox.file,
        routes=frozenset(r.name for r in cfg.routes),
    )


def _ours(problems: Sequence[ConfigProblem]) -> list[ConfigProblem]:
    """The problems that stop this command: the file's own and those in ``[junction]``."""
    return [p for p in problems if p.path in ("", "junction") or p.path.startswith("junction.")]


def _open(where: Located) -> Outbox | None:
    """The outbox, or None (said on stderr) when there is none: never creates one."""
    if not where.path.is_file():
        note = ""
        if not where.state_dir.is_absolute():
            note = f"; state_dir {str(where.state_dir)!r} is relative to the working directory"
        _err(
            f"no outbox at {where.path.resolve()} (the bridge has not run with this "
            f"state_dir){note}"
        )
        return None
    return Outbox(where.path, checkpoints=False)  # the bridge checkpoints its own WAL


def _bridge_pid(state_dir: Path) -> int | None:
    """The pid of a bridge running with ``state_dir`` (its pid file names a live process)."""
    try:
        return reload_mod.running_pid(state_dir)
    except reload_mod.BridgeUnreachable:
        return None


# --- selecting -----------------------------------------------------------------------------


def reason_matches(pattern: str, reason: str) -> bool:
    """What SQLite's ``reason LIKE '%pattern%'`` (the store's filter) says, in Python.

    ASCII letters match either case, other characters exactly; ``%`` is any run of
    characters and ``_`` any one, as in SQL. Used to filter the summary so its counts
    agree with the rows the store returns for the same ``--reason``.
    """
    parts = [".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern]
    return re.search("".join(parts), reason, re.ASCII | re.IGNORECASE | re.DOTALL) is not None


@dataclass
class Selection:
    """Which dead letters a command acts on (filters as given, seqs resolved up front)."""

    route: str | None
    reason: str | None
    #: With ``--ids``: the seqs found (matching the filters), else None.
    seqs: list[int] | None
    count: int
    routes: set[str]
    #: ``--ids`` seqs not found or not matching the filters.
    missing: list[int]

    def describe(self) -> str:
        parts = []
        if self.route is not None:
            parts.append(f"route {self.route!r}")
        if self.reason is not None:
            parts.append(f"reason containing {self.reason!r}")
        if self.seqs is not None:
            parts.append(f"seqs {_ranges(self.seqs)}" if self.seqs else "the given seqs")
        return ", ".join(parts) or "all"

    def chunks(self, box: Outbox, sizes: Iterator[int]) -> Iterator[list[DeadRow]]:
        """The selection, oldest first, in chunks of the sizes asked for.

        Each chunk must be moved out of ``dead`` (replayed or purged) before the next is
        asked for: without ``--ids`` each chunk is "the oldest rows still matching",
        capped so the total never exceeds :attr:`count`.
        """
        done = 0
        for size in sizes:
            size = min(size, self.count - done)
            if size <= 0:
                return
            if self.seqs is not None:
                group = self.seqs[done : done + size]
                rows = _rows_by_seq(box, self.route, self.reason, group)
            else:
                rows = box.dead_rows(self.route, self.reason, limit=size)
            if not rows:
                return
            done += size
            yield rows


def select(
    box: Outbox, route: str | None, reason: str | None, ids: Sequence[int] | None
) -> Selection:
    """Count (and with ``ids`` resolve) what the filters select, without changing anything."""
    if ids is not None:
        rows = _rows_by_seq(box, route, reason, ids)
        found = [r.seq for r in rows]
        return Selection(
            route,
            reason,
            found,
            len(found),
            {r.route for r in rows},
            sorted(set(ids) - set(found)),
        )
    groups = _summary(box, route, reason)
    return Selection(route, reason, None, sum(g[3] for g in groups), {g[0] for g in groups}, [])


def _rows_by_seq(
    box: Outbox, route: str | None, reason: str | None, seqs: Sequence[int]
) -> list[DeadRow]:
    rows: list[DeadRow] = []
    for i in range(0, len(seqs), IDS_PER_QUERY):
        group = seqs[i : i + IDS_PER_QUERY]
        rows += box.dead_rows(route, reason, group, limit=len(group))
    return rows


def _summary(
    box: Outbox, route: str | None, reason: str | None
) -> list[tuple[str, str, str, int, float, float]]:
    return [
        g
        for g in box.dead_summary()
        if (route is None or g[0] == route) and (reason is None or reason_matches(reason, g[2]))
    ]


def _nothing_matched(box: Outbox, sel: Selection) -> int:
    total = box.dead_count()
    if total == 0:
        _err(f"no dead letters in {box.path}{_waiting(box)}")
    else:
        routes = sorted({g[0] for g in box.dead_summary()})
        _err(
            f"no dead letters match {sel.describe()} ({total} in the store, on routes "
            f"{', '.join(routes)}){_waiting(box)}"
        )
    return EXIT_FAIL


def _waiting(box: Outbox) -> str:
    n = box.replay_waiting()
    return f"; {n} replayed ones wait for the bridge to take them" if n else ""


def _confirm(action: str, sel: Selection, yes: bool) -> bool:
    """True to go ahead: small selections, ``--yes``, or a "y" typed at a terminal."""
    if yes or sel.count <= CONFIRM_ABOVE:
        return True
    what = f"{action} {sel.count} dead letters ({sel.describe()})"
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        _err(f"refusing to {what} without confirmation: stdin is not a terminal; pass --yes")
        return False
    print(f"{what}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = stdin.readline().strip().lower()
    if answer in ("y", "yes"):
        return True
    _err("nothing done")
    return False


# --- pacing ------------------------------------------------------------------------------


def chunk_schedule(
    total: int, rate: float, max_chunk: int = REPLAYS_PER_TICK
) -> Iterator[tuple[float, int]]:
    """When (seconds after the start) to queue how many of ``total`` replays at ``rate``/s.

    A chunk holds what ``rate`` allows in one router tick (at least 1, at most
    ``max_chunk``, what the router takes per tick); chunk k starts once the chunks
    before it have had their time at ``rate``, so after t seconds at most
    ``rate * t + chunk`` have been queued.
    """
    if total <= 0:
        return
    size = max(1, min(max_chunk, int(rate * TICK_S)))
    queued = 0
    while queued < total:
        n = min(size, total - queued)
        yield queued / rate, n
        queued += n


@dataclass
class ReplayOutcome:
    """How many dead letters a replay moved, and whether Ctrl-C cut it short."""

    moved: int
    interrupted: bool


def replay_paced(
    box: Outbox,
    sel: Selection,
    rate: float,
    paced: bool,
    report: Callable[[int, int, float], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayOutcome:
    """Move the selection into the replay queue chunk by chunk (see :func:`chunk_schedule`).

    ``paced`` False queues the chunks back to back. ``report(moved, total, elapsed)`` is
    called about once a second and at the end. Ctrl-C stops between chunks (a chunk is
    one transaction, so it is moved whole or not at all).
    """
    start = clock()
    moved = 0
    last = start
    if paced:
        sizes = _on_time(chunk_schedule(sel.count, rate), start, clock, sleep)
    else:
        sizes = _forever(REPLAYS_PER_TICK)
    try:
        for rows in sel.chunks(box, sizes):
            moved += box.queue_replay(rows)
            now = clock()
            if now - last >= 1.0:
                report(moved, sel.count, now - start)
                last = now
    except KeyboardInterrupt:
        report(moved, sel.count, clock() - start)
        return ReplayOutcome(moved, True)
    report(moved, sel.count, clock() - start)
    return ReplayOutcome(moved, False)


def _on_time(
    plan: Iterator[tuple[float, int]],
    start: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Iterator[int]:
    """The sizes of ``plan``, each handed out no earlier than ``start`` + its offset."""
    for at, size in plan:
        wait = start + at - clock()
        if wait > 0:
            sleep(wait)
        yield size


# --- the commands ----------------------------------------------------------------------------


def _with_store(args: argparse.Namespace, body: Callable[[Located, Outbox], int]) -> int:
    """Locate and open CONFIG's outbox, run ``body``, close it; store errors exit 1."""
    where = locate(args.config)
    try:
        box = _open(where)
        if box is None:
            return EXIT_FAIL
        try:
            return body(where, box)
        finally:
            box.close()
    except (OutboxError, sqlite3.Error) as err:
        text = str(err) if isinstance(err, OutboxError) else f"outbox {where.path}: {err}"
        _err(text)
        return EXIT_FAIL


def cmd_list(args: argparse.Namespace) -> int:
    def body(where: Located, box: Outbox) -> int:
        sel = select(box, args.route, args.reason, None)
        if sel.count == 0:
            return _nothing_matched(box, sel)
        if args.ids:
            _list_rows(box, sel, args.limit)
        else:
            _list_groups(box, sel)
        return EXIT_OK

    return _with_store(args, body)


def _list_groups(box: Outbox, sel: Selection) -> None:
    groups = _summary(box, sel.route, sel.reason)
    now = time.time()
    rows = [
        [route, stage, str(n), _when(first), _when(last), _one_line(why)]
        for route, stage, why, n, first, last in sorted(groups, key=lambda g: (g[0], -g[3]))
    ]
    first = min(g[4] for g in groups)
    last = max(g[5] for g in groups)
    text = _table(["ROUTE", "STAGE", "COUNT", "FIRST", "LAST", "REASON"], rows, numeric={2})
    _out(
        f"dead letters in {box.path} ({sel.describe()}):\n\n{text}\n\n"
        f"total: {sel.count} dead letters in {len(groups)} "
        f"group{'s' if len(groups) != 1 else ''} on {len(sel.routes)} "
        f"route{'s' if len(sel.routes) != 1 else ''}; first failed {_when(first)} "
        f"({_ago(now - first)} ago), last {_when(last)} ({_ago(now - last)} ago)"
        f"{_waiting(box)}\n"
        "see them: junction dlq list CONFIG --ids [--route R]; junction dlq show CONFIG SEQ"
    )


def _list_rows(box: Outbox, sel: Selection, limit: int) -> None:
    rows = box.dead_rows(sel.route, sel.reason, limit=limit if limit else -1)
    cells = [
        [
            str(r.seq),
            r.route,
            r.stage,
            r.target or "-",
            r.kind,
            r.env_id,
            _when(r.failed_at),
            _one_line(r.reason),
        ]
        for r in rows
    ]
    text = _table(
        ["SEQ", "ROUTE", "STAGE", "TARGET", "KIND", "ENV ID", "FAILED AT", "REASON"],
        cells,
        numeric={0},
    )
    more = (
        f"showing the oldest {len(rows)} of {sel.count} ({sel.describe()}); "
        "--limit N shows more, --limit 0 all"
        if len(rows) < sel.count
        else f"{len(rows)} dead letters ({sel.describe()}), oldest first"
    )
    _out(f"{text}\n\n{more}")


def cmd_show(args: argparse.Namespace) -> int:
    def body(where: Located, box: Outbox) -> int:
        wanted = sorted(set(args.seqs), key=args.seqs.index)
        found = {r.seq: r for r in _rows_by_seq(box, None, None, wanted)}
        blocks = [_full(found[s]) for s in wanted if s in found]
        if blocks:
            _out("\n\n".join(blocks))
        missing = [s for s in wanted if s not in found]
        if missing:
            _err(
                f"no dead letter with seq {_ranges(missing)} in {where.path} "
                "(replayed or purged already? see junction dlq list CONFIG --ids)"
            )
            return EXIT_FAIL
        return EXIT_OK

    return _with_store(args, body)


def _full(row: DeadRow) -> str:
    try:
        body = json.dumps(json.loads(row.body), indent=2, ensure_ascii=False)
    except ValueError:
        body = row.body.decode("utf-8", errors="replace")
    lines = [
        f"dead letter {row.seq}",
        f"  route      {row.route}",
        f"  stage      {row.stage}"
        + (" (matching, the mapping or a transform failed)" if row.stage == "route" else ""),
        f"  target     {row.target or '-'}",
        f"  kind       {row.kind}",
        f"  env id     {row.env_id}",
        f"  failed at  {_when(row.failed_at)} ({_ago(time.time() - row.failed_at)} ago)",
        f"  attempts   {row.attempts}",
        f"  reason     {row.reason}",
        "  envelope:",
        *(f"    {line}" for line in body.splitlines()),
    ]
    return "\n".join(lines)


def cmd_replay(args: argparse.Namespace) -> int:
    def body(where: Located, box: Outbox) -> int:
        sel = _chosen(box, args, "replay")
        if not isinstance(sel, Selection):
            return sel
        gone = sorted(r for r in sel.routes if r not in where.routes)
        if gone:
            _err(
                f"warning: {where.config} has no route {', '.join(map(repr, gone))}: the "
                "bridge dead-letters those replays again ('replay: route ... is no longer "
                "in the routing table')"
            )
        pid = _bridge_pid(where.state_dir)
        cap = REPLAYS_PER_TICK / TICK_S
        rate = min(args.rate, cap)
        if pid is not None:
            _out(
                f"replaying {sel.count} dead letters ({sel.describe()}) at {rate:.0f}/s "
                f"to the running bridge (pid {pid})"
                + (f"; it takes at most {cap:.0f}/s" if args.rate > cap else "")
            )
        else:
            _out(
                f"no bridge is running with {where.state_dir}: queuing {sel.count} dead "
                f"letters ({sel.describe()}) now; the bridge takes them at up to {cap:.0f}/s "
                "when it starts (start it first to pace a large backfill with --rate)"
            )
        outcome = replay_paced(box, sel, rate, paced=pid is not None, report=_progress)
        left = sel.count - outcome.moved
        if outcome.interrupted:
            _err(
                f"interrupted: {outcome.moved} replayed, {left} still dead letters "
                "(run the same command again to go on)"
            )
            return EXIT_FAIL
        if left:
            _err(f"{left} of the selected dead letters were gone before they could be replayed")
        if pid is not None:
            _out(f"the running bridge (pid {pid}) picks them up now")
        else:
            _out("they are delivered when the bridge next starts")
        return EXIT_OK

    return _with_store(args, body)


def _progress(moved: int, total: int, elapsed: float) -> None:
    speed = moved / elapsed if elapsed > 0 else 0.0
    if moved < total and speed > 0:
        left_s = (total - moved) / speed
        _out(f"replayed {moved}/{total} ({speed:.0f}/s, about {left_s:.0f} s left)")
    else:
        _out(f"replayed {moved}/{total}")


def cmd_purge(args: argparse.Namespace) -> int:
    def body(where: Located, box: Outbox) -> int:
        sel = _chosen(box, args, "purge")
        if not isinstance(sel, Selection):
            return sel
        purged = 0
        try:
            for rows in sel.chunks(box, _forever(PURGE_CHUNK)):
                purged += box.purge(ids=[r.seq for r in rows])
        except KeyboardInterrupt:
            _err(f"interrupted: {purged} of {sel.count} purged")
            return EXIT_FAIL
        _out(f"purged {purged} dead letters ({sel.describe()}) from {where.path}")
        return EXIT_OK

    return _with_store(args, body)


def _chosen(box: Outbox, args: argparse.Namespace, verb: str) -> Selection | int:
    """The dead letters the filters select, once confirmed; else the exit code to return."""
    sel = select(box, args.route, args.reason, args.ids)
    _say_missing(sel)
    if sel.count == 0:
        return _nothing_matched(box, sel)
    if not _confirm(verb, sel, args.yes):
        return EXIT_FAIL
    return sel


def _forever(n: int) -> Iterator[int]:
    while True:
        yield n


def _say_missing(sel: Selection) -> None:
    if sel.missing:
        _err(f"not found (or not matching the filters): seqs {_ranges(sel.missing)}")


# --- formatting ----------------------------------------------------------------------------


def _out(text: str) -> None:
    print(logs.redact(text), flush=True)


def _err(text: str) -> None:
    print(logs.redact(text), file=sys.stderr, flush=True)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _one_line(text: str, width: int = REASON_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _ranges(seqs: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    out: list[str] = []
    ordered = sorted(seqs)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    """Columns padded to their widest cell (redacted first); the last one is not padded."""
    rows = [[logs.redact(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                cells.append(cell)
            elif i in numeric:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append("  ".join(cells))
    return "\n".join(lines)
