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

This module is the command line and the commands; :mod:`broker._dlq_store` finds and
opens the store, :mod:`broker._dlq_select` selects and paces, :mod:`broker._dlq_format`
prints, and the SQL stays with the store (:mod:`broker._outbox`, :mod:`broker._dead_filter`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from broker._dead_letters import REPLAYS_PER_TICK
from broker._dlq_format import ago, err, full, one_line, out, ranges, table, when
from broker._dlq_select import TICK_S, Selection, forever, replay_paced, select, summary
from broker._dlq_store import EXIT_FAIL, EXIT_OK, Located, bridge_pid, with_store
from broker._outbox import Outbox

#: Replay and purge ask for confirmation (or ``--yes``) above this many dead letters.
CONFIRM_ABOVE = 100
DEFAULT_RATE = 100.0
LIST_LIMIT = 50
#: Rows per purge transaction.
PURGE_CHUNK = 500


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


# --- telling and asking -----------------------------------------------------------------


def _nothing_matched(box: Outbox, sel: Selection) -> int:
    total = box.dead_count()
    if total == 0:
        err(f"no dead letters in {box.path}{_waiting(box)}")
    else:
        routes = sorted({g[0] for g in box.dead_summary()})
        err(
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
        err(f"refusing to {what} without confirmation: stdin is not a terminal; pass --yes")
        return False
    print(f"{what}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = stdin.readline().strip().lower()
    if answer in ("y", "yes"):
        return True
    err("nothing done")
    return False


# --- the commands ----------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    def body(where: Located, box: Outbox) -> int:
        sel = select(box, args.route, args.reason, None)
        if sel.count == 0 and not (args.route or args.reason) and box.dead_count() == 0:
            # an empty store is an answer, not a failure (a filter that names nothing is)
            out(f"no dead letters in {box.path}{_waiting(box)}")
            return EXIT_OK
        if sel.count == 0:
            return _nothing_matched(box, sel)
        if args.ids:
            _list_rows(box, sel, args.limit)
        else:
            _list_groups(box, sel)
        return EXIT_OK

    return with_store(args.config, body)


def _list_groups(box: Outbox, sel: Selection) -> None:
    groups = summary(box, sel.route, sel.reason)
    now = time.time()
    rows = [
        [route, stage, str(n), when(first), when(last), one_line(why)]
        for route, stage, why, n, first, last in sorted(groups, key=lambda g: (g[0], -g[3]))
    ]
    first = min(g[4] for g in groups)
    last = max(g[5] for g in groups)
    text = table(["ROUTE", "STAGE", "COUNT", "FIRST", "LAST", "REASON"], rows, numeric={2})
    out(
        f"dead letters in {box.path} ({sel.describe()}):\n\n{text}\n\n"
        f"total: {sel.count} dead letters in {len(groups)} "
        f"group{'s' if len(groups) != 1 else ''} on {len(sel.routes)} "
        f"route{'s' if len(sel.routes) != 1 else ''}; first failed {when(first)} "
        f"({ago(now - first)} ago), last {when(last)} ({ago(now - last)} ago)"
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
            when(r.failed_at),
            one_line(r.reason),
        ]
        for r in rows
    ]
    text = table(
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
    out(f"{text}\n\n{more}")


def cmd_show(args: argparse.Namespace) -> int:
    def body(where: Located, box: Outbox) -> int:
        wanted = sorted(set(args.seqs), key=args.seqs.index)
        found = {r.seq: r for r in box.dead_rows_by_seq(wanted)}
        blocks = [full(found[s]) for s in wanted if s in found]
        if blocks:
            out("\n\n".join(blocks))
        missing = [s for s in wanted if s not in found]
        if missing:
            err(
                f"no dead letter with seq {ranges(missing)} in {where.path} "
                "(replayed or purged already? see junction dlq list CONFIG --ids)"
            )
            return EXIT_FAIL
        return EXIT_OK

    return with_store(args.config, body)


def cmd_replay(args: argparse.Namespace) -> int:
    def body(where: Located, box: Outbox) -> int:
        sel = _chosen(box, args, "replay")
        if not isinstance(sel, Selection):
            return sel
        gone = sorted(r for r in sel.routes if r not in where.routes)
        if gone:
            err(
                f"warning: {where.config} has no route {', '.join(map(repr, gone))}: the "
                "bridge dead-letters those replays again ('replay: route ... is no longer "
                "in the routing table')"
            )
        pid = bridge_pid(where.state_dir)
        cap = REPLAYS_PER_TICK / TICK_S
        rate = min(args.rate, cap)
        if pid is not None:
            out(
                f"replaying {sel.count} dead letters ({sel.describe()}) at {rate:.0f}/s "
                f"to the running bridge (pid {pid})"
                + (f"; it takes at most {cap:.0f}/s" if args.rate > cap else "")
            )
        else:
            out(
                f"no bridge is running with {where.state_dir}: queuing {sel.count} dead "
                f"letters ({sel.describe()}) now; the bridge takes them at up to {cap:.0f}/s "
                "when it starts (start it first to pace a large backfill with --rate)"
            )
        with _progress_bar(sel.count) as report:
            outcome = replay_paced(box, sel, rate, paced=pid is not None, report=report)
        left = sel.count - outcome.moved
        if outcome.interrupted:
            err(
                f"interrupted: {outcome.moved} replayed, {left} still dead letters "
                "(run the same command again to go on)"
            )
            return EXIT_FAIL
        if left:
            err(f"{left} of the selected dead letters were gone before they could be replayed")
        if pid is not None:
            out(f"the running bridge (pid {pid}) picks them up now")
        else:
            out("they are delivered when the bridge next starts")
        return EXIT_OK

    return with_store(args.config, body)


@contextlib.contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[int, int, float], None]]:
    """A progress bar on a terminal (rich), else a line per report (a log, a pipe)."""
    if not sys.stdout.isatty():
        yield _progress
        return
    columns = (
        TextColumn("queued for replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("replay", total=total, speed="")

        def report(moved: int, total: int, elapsed: float) -> None:
            speed = f"{moved / elapsed:.0f}/s" if elapsed > 0 else ""
            bar.update(task, completed=moved, total=total, speed=speed)

        yield report


def _progress(moved: int, total: int, elapsed: float) -> None:
    speed = moved / elapsed if elapsed > 0 else 0.0
    if moved < total and speed > 0:
        left_s = (total - moved) / speed
        out(f"queued for replay {moved}/{total} ({speed:.0f}/s, about {left_s:.0f} s left)")
    else:
        out(f"queued for replay {moved}/{total}")


def cmd_purge(args: argparse.Namespace) -> int:
    def body(where: Located, box: Outbox) -> int:
        sel = _chosen(box, args, "purge")
        if not isinstance(sel, Selection):
            return sel
        purged = 0
        try:
            for rows in sel.chunks(box, forever(PURGE_CHUNK)):
                purged += box.purge(ids=[r.seq for r in rows])
        except KeyboardInterrupt:
            err(f"interrupted: {purged} of {sel.count} purged")
            return EXIT_FAIL
        out(f"purged {purged} dead letters ({sel.describe()}) from {where.path}")
        return EXIT_OK

    return with_store(args.config, body)


def _chosen(box: Outbox, args: argparse.Namespace, verb: str) -> Selection | int:
    """The dead letters the filters select, once confirmed; else the exit code to return."""
    sel = select(box, args.route, args.reason, args.ids)
    _say_missing(sel)
    if sel.count == 0:
        return _nothing_matched(box, sel)
    if not _confirm(verb, sel, args.yes):
        return EXIT_FAIL
    return sel


def _say_missing(sel: Selection) -> None:
    if sel.missing:
        err(f"not found (or not matching the filters): seqs {ranges(sel.missing)}")
