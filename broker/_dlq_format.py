"""``junction dlq``'s output: tables, times, ranges of seqs, a dead letter in full.

Everything printed goes through :func:`broker._logs.redact`: a secret the configuration
expands never shows, not even inside a stored envelope.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from broker import _logs as logs
from broker._outbox import DeadRow

REASON_WIDTH = 160


def out(text: str) -> None:
    """Print ``text`` redacted, a reason's or body's control characters shown escaped."""
    print(_safe(text), flush=True)


def err(text: str) -> None:
    print(_safe(text), file=sys.stderr, flush=True)


def _safe(text: str) -> str:
    """Redacted, and escaped line by line: what a peer wrote cannot drive the terminal."""
    return "\n".join(logs.escape_controls(line) for line in logs.redact(text).split("\n"))


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def one_line(text: str, width: int = REASON_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def ranges(seqs: Sequence[int]) -> str:
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


def table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
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


def full(row: DeadRow) -> str:
    """A dead letter's metadata and its envelope (pretty JSON), for ``dlq show``."""
    try:
        body = json.dumps(json.loads(row.body), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or too deep to indent: shown as stored
        body = row.body.decode("utf-8", errors="replace")
    lines = [
        f"dead letter {row.seq}",
        f"  route      {row.route}",
        f"  stage      {row.stage}"
        + (" (matching, the mapping or a transform failed)" if row.stage == "route" else ""),
        f"  target     {row.target or '-'}",
        f"  kind       {row.kind}",
        f"  env id     {row.env_id}",
        f"  failed at  {when(row.failed_at)} ({ago(time.time() - row.failed_at)} ago)",
        f"  attempts   {row.attempts}",
        f"  reason     {row.reason}",
        "  envelope:",
        *(f"    {line}" for line in body.splitlines()),
    ]
    return "\n".join(lines)
