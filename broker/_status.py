"""The live picture (adapters, routes, outbox) as a terminal view a person can read.

One renderer for ``junction status``, ``junction run --status-every`` and ``junction
demo``'s live view, built with rich's tables. It fits the window it is given: adapters
and routes come first and always show (a long list ends in "... N more"); the outbox,
unrouted counts, recent log lines and the caller's extra lines (the demo's latest values)
are added only while rows are left, so 80x24 shows the essentials and a larger window
adds detail. Text too wide for its column ends in an ellipsis, never wraps.

The route table speaks the ledger's words (``broker._ledger.VOCABULARY``): received,
delivered, pending, dead_lettered, dropped, filtered, balanced; where received differs
from matched, the NOTES column (or the notes below, in a narrow window) names why
(replies, recovered, replayed), and the drop reasons. FOR is the time since the adapter's
state changed (``AdapterStatus.since``), not since its detail did.

Control characters in names and details (a peer's text) are shown escaped, never sent to
the terminal.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterable, Mapping
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from broker._logs import escape_controls

__all__ = ["render", "renderable"]

#: Windows narrower than this leave out BALANCED (an unbalanced route is then marked in
#: the ROUTE column) and NOTES (shown below the tables, room permitting).
_WIDE = 120
#: Rows a table takes besides its own: its header and the blank line after it.
_TABLE_EXTRA = 2


def render(
    snapshot: Mapping[str, Any],
    width: int | None = None,
    height: int | None = None,
    extra: Iterable[str] = (),
) -> str:
    """The picture as plain text (no colour), ``width`` columns wide (the terminal's, or
    120) and at most ``height`` lines (None: everything)."""
    if width is None:
        width = shutil.get_terminal_size((120, 50)).columns
    console = Console(
        file=io.StringIO(), width=width, color_system=None, force_terminal=False, highlight=False
    )
    console.print(renderable(snapshot, width, height, extra))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in str(text).rstrip("\n").splitlines())


def renderable(
    snapshot: Mapping[str, Any],
    width: int,
    height: int | None = None,
    extra: Iterable[str] = (),
) -> RenderableType:
    """The picture as a rich renderable that fits ``width`` x ``height`` (the live view
    asks again with the new size after a resize)."""
    left = height if height is not None else 10**9
    parts: list[RenderableType] = []
    wide = width >= _WIDE

    def take(lines: int) -> bool:
        nonlocal left
        if lines > left:
            return False
        left -= lines
        return True

    parts.append(_title(snapshot))
    take(1)
    adapters = _entries(snapshot.get("adapters"))
    routes = _entries(snapshot.get("routes"))
    # adapters and routes first, both always (at least one row each), sharing what is left
    room = left - (_TABLE_EXTRA if adapters else 0) - (_TABLE_EXTRA if routes else 0)
    shown_adapters, shown_routes = _split(len(adapters), len(routes), room)
    if adapters and take(shown_adapters + _TABLE_EXTRA + (shown_adapters < len(adapters))):
        parts.append(_adapters(adapters, shown_adapters, width, wide))
    if routes and take(shown_routes + _TABLE_EXTRA + (shown_routes < len(routes))):
        queues = snapshot.get("queues") if isinstance(snapshot.get("queues"), Mapping) else {}
        parts.append(_routes(routes, queues or {}, shown_routes, width, wide))
    if shown_adapters < len(adapters) or shown_routes < len(routes):
        return Group(*parts)  # no detail while the tables themselves are cut
    for lines in (
        [] if wide else _route_notes(routes),
        _outbox(snapshot.get("outbox")),
        _unrouted(snapshot),
        _recent(snapshot.get("recent_log")),
        list(extra),
    ):
        if lines and take(len(lines) + 1):
            parts.append(Text(""))
            parts.extend(_line(line) for line in lines)
    return Group(*parts)


def _split(adapters: int, routes: int, room: int) -> tuple[int, int]:
    """Rows of each table that fit in ``room`` lines, a cut table taking one more line
    for its "... N more"; the longer one gives way first, neither below one row."""
    a, r = adapters, routes

    def lines() -> int:
        return a + r + (a < adapters) + (r < routes)

    while lines() > room and (a > 1 or r > 1):
        if (a >= r and a > 1) or r <= 1:
            a -= 1
        else:
            r -= 1
    return a, r


def _ledger_of(route: Mapping[str, Any]) -> Mapping[str, Any]:
    led = route.get("ledger")
    return led if isinstance(led, Mapping) else {}


def _entries(value: Any) -> dict[str, Mapping[str, Any]]:
    """The adapters or routes of a snapshot; what is not a table of tables is left out
    (a snapshot from another version, a damaged answer)."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, Mapping)}


def _number(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _title(snapshot: Mapping[str, Any]) -> Text:
    routes = _entries(snapshot.get("routes"))
    unbalanced = [
        n
        for n, r in routes.items()
        if isinstance(r.get("ledger"), Mapping) and r["ledger"].get("balanced") is False
    ]
    verdict = (
        "NOT BALANCED: " + ", ".join(unbalanced)  # those rows start with "!"
        if unbalanced
        else "all balanced"
        if any("ledger" in r for r in routes.values())
        else ""
    )
    dead = (snapshot.get("outbox") or {}).get("dead_letters", snapshot.get("dead_letters", 0))
    parts = [
        f"junction up {_dur(_number(snapshot.get('uptime_s')))}",
        f"{len(snapshot.get('adapters') or {})} adapters",
        f"{len(routes)} routes",
        f"{dead} dead letters",
    ]
    if verdict:
        parts.append(verdict)
    return _line(" · ".join(parts))


def _table(
    width: int,
    columns: list[tuple[str, str]],
    rows: list[list[Text]],
    flexible: tuple[int, ...],
    more: int,
) -> RenderableType:
    """A table at most ``width`` wide, one space between columns: every column is as wide
    as its widest cell (or header), except the ``flexible`` ones (a name, then a detail),
    which take what is left -- the name up to 24 columns first -- and end their text in
    an ellipsis."""
    widths = [
        max([len(header), *(row[c].cell_len for row in rows if c < len(row))])
        for c, (header, _) in enumerate(columns)
    ]
    fixed = sum(w for c, w in enumerate(widths) if c not in flexible) + len(columns) - 1
    room = max(len(flexible) * 3, width - fixed)
    for n, c in enumerate(flexible):  # the first (a name) keeps up to 24 columns first
        later = 3 * (len(flexible) - n - 1)
        widths[c] = max(3, min(widths[c], room - later, 24 if later else room))
        room -= widths[c]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0)
    for (header, justify), w in zip(columns, widths, strict=True):
        table.add_column(
            header,
            justify="right" if justify == "r" else "left",
            no_wrap=True,
            overflow="ellipsis",
            width=w,
        )
    for row in rows:
        table.add_row(*row)
    if more:  # a line of its own: the first column may be too narrow for it
        return Group(table, Text(f"... {more} more"))
    return table


def _adapters(adapters: Mapping[str, Any], shown: int, width: int, wide: bool) -> RenderableType:
    columns = [("ADAPTER", "l"), ("TYPE", "l")] if wide else [("ADAPTER", "l")]
    columns += [("STATE", "l"), ("FOR", "r"), ("IN", "r"), ("OUT", "r"), ("RESTARTS", "r")]
    columns.append(("DETAIL", "l"))
    now = time.time()
    rows = []
    for name, a in list(adapters.items())[:shown]:
        since = now - _number(a.get("since"), now)
        rows.append(
            [
                _cell(name),
                *([_cell(a.get("type", ""))] if wide else []),
                _cell(a.get("state", "")),
                Text(_dur(since)),
                Text(str(a.get("received", 0))),
                Text(str(a.get("sent", 0))),
                Text(str(a.get("restarts", 0))),
                _cell(a.get("detail", "")),
            ]
        )
    return _table(width, columns, rows, (0, len(columns) - 1), len(adapters) - shown)


def _routes(
    routes: Mapping[str, Any], queues: Mapping[str, Any], shown: int, width: int, wide: bool
) -> RenderableType:
    words = ("received", "delivered", "pending", "dead_lettered", "dropped", "filtered")
    columns = [("ROUTE", "l"), *((w.upper(), "r") for w in words)]
    if wide:
        columns += [("BALANCED", "r"), ("OLDEST", "r"), ("NOTES", "l")]
    rows = []
    for name, r in list(routes.items())[:shown]:
        led = _ledger(name, r, queues)
        balanced = led.get("balanced")
        label = _cell(name)
        if balanced is False:  # also named in the title line
            label = Text("! ") + label
            label.stylize("bold red")
        row = [label, *(Text(str(led.get(w, 0))) for w in words)]
        if wide:
            oldest = (
                r["outbox"].get("oldest_age_s") if isinstance(r.get("outbox"), Mapping) else None
            )
            verdict = "-" if balanced is None else "yes" if balanced else "NO"
            row += [
                Text(verdict),
                Text("-" if not isinstance(oldest, int | float) else _dur(oldest)),
                _cell(", ".join(_notes(r, led))),
            ]
        rows.append(row)
    flexible = (0, len(columns) - 1) if wide else (0,)
    return _table(width, columns, rows, flexible, len(routes) - shown)


def _ledger(name: str, r: Mapping[str, Any], queues: Mapping[str, Any]) -> dict[str, Any]:
    """The route's ledger; from its own counters when the snapshot carries none."""
    led = r.get("ledger")
    if isinstance(led, Mapping):
        return dict(led)
    return {
        "received": r.get("matched", 0),
        "delivered": r.get("delivered", 0),
        "pending": sum(int(q.get(name, 0)) for q in queues.values() if isinstance(q, Mapping)),
        "dead_lettered": r.get("dead_lettered", 0),
        "dropped": r.get("dropped", 0),
        "filtered": r.get("filtered", 0),
    }


def _notes(r: Mapping[str, Any], led: Mapping[str, Any]) -> list[str]:
    """Why received differs from matched, and the drop reasons."""
    notes = [f"matched {r.get('matched', led.get('matched', 0))}"]
    for word in ("replies", "recovered", "replayed"):
        n = led.get(word, r.get(word, 0))
        if n:
            notes.append(f"{word} {n}")
    if r.get("reply_timeouts"):
        notes.append(f"reply timeouts {r['reply_timeouts']}")
    reasons = r.get("drop_reasons")
    if isinstance(reasons, Mapping):
        notes += [f"{why} {n}" for why, n in sorted(reasons.items()) if n]
    return notes


def _route_notes(routes: Mapping[str, Any]) -> list[str]:
    """The NOTES column, as lines (a narrow window has no room for it)."""
    lines = []
    for name, r in routes.items():
        led = r.get("ledger") if isinstance(r.get("ledger"), Mapping) else {}
        notes = _notes(r, led or {})
        if len(notes) > 1 or (led and led.get("matched") != led.get("received")):
            lines.append(f"{name}: {', '.join(notes)}")
    return lines


def _outbox(box_: Mapping[str, Any] | None) -> list[str]:
    """One line about the durable outbox as a whole, when the snapshot has one."""
    if not box_:
        return []
    if not isinstance(box_, Mapping):
        return []
    oldest = box_.get("oldest_age_s")
    return [
        f"outbox: {box_.get('rows', 0)} rows, {_size(_number(box_.get('bytes')))}, oldest "
        f"{'-' if not isinstance(oldest, int | float) else _dur(oldest)}, dead letters "
        f"{box_.get('dead_letters', 0)}" + (f"  ({box_['path']})" if box_.get("path") else "")
    ]


def _unrouted(snapshot: Mapping[str, Any]) -> list[str]:
    unrouted = snapshot.get("unrouted") or {}
    if not unrouted:
        return []
    return ["unrouted: " + ", ".join(f"{k}={v}" for k, v in unrouted.items())]


def _recent(recent: Any) -> list[str]:
    if not recent:
        return []
    return ["recent log:", *(f"  {line}" for line in recent)]


def _line(line: str) -> Text:
    return Text(escape_controls(line), no_wrap=True, overflow="ellipsis")


def _cell(value: Any) -> Text:
    return Text(escape_controls(str(value)), no_wrap=True, overflow="ellipsis")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _dur(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
