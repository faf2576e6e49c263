"""Rendering the live picture (adapters, routes, queues) as text a person can read.

Control characters in it are shown escaped, never sent to the terminal.
"""

from __future__ import annotations

import time
from typing import Any

from broker._logs import escape_controls


def render(snapshot: dict[str, Any]) -> str:
    """A compact multi-line table of a runtime snapshot."""
    lines = [f"junction  up {snapshot.get('uptime_s', 0):.0f} s"]
    adapters = snapshot.get("adapters", {})
    if adapters:
        lines.append("")
        lines.append(
            f"{'ADAPTER':<16} {'TYPE':<10} {'STATE':<12} {'FOR':>6} {'IN':>9} {'OUT':>9} "
            f"{'RESTARTS':>8}  DETAIL"
        )
        now = time.time()
        for name, a in adapters.items():
            since = now - a.get("since", now)
            lines.append(
                f"{name:<16} {a['type']:<10} {a['state']:<12} {_dur(since):>6} {a['received']:>9} "
                f"{a['sent']:>9} {a['restarts']:>8}  {a.get('detail', '')[:60]}"
            )
    routes = snapshot.get("routes", {})
    queues = snapshot.get("queues", {})
    if routes:
        lines.append("")
        lines.append(
            f"{'ROUTE':<22} {'MATCHED':>9} {'DELIVERED':>9} {'QUEUED':>7} {'FILTERED':>8} "
            f"{'DROPPED':>8} {'FAILED':>7}  NOTES"
        )
        for name, c in routes.items():
            depth = sum(q.get(name, 0) for q in queues.values())
            notes = [f"{k}={v}" for k, v in c["dropped"].items() if k != "filtered"]
            if c.get("replies") or c.get("reply_timeouts"):
                notes += [f"replies={c['replies']}", f"timeouts={c['reply_timeouts']}"]
            lines.append(
                f"{name:<22} {c['matched']:>9} {c['delivered']:>9} {depth:>7} "
                f"{c['filtered']:>8} {c['dropped_total']:>8} {c['failed']:>7}  {', '.join(notes)}"
            )
    lines.extend(_ledgers(routes))
    lines.extend(_outbox(snapshot.get("outbox")))
    unrouted = snapshot.get("unrouted", {})
    if unrouted:
        lines.append("")
        lines.append("unrouted: " + ", ".join(f"{k}={v}" for k, v in unrouted.items()))
    if snapshot.get("dead_letters"):
        lines.append(f"dead letters: {snapshot['dead_letters']}")
    recent = snapshot.get("recent_log")
    if recent:
        lines.append("")
        lines.append("recent log:")
        lines.extend(f"  {line}" for line in recent)
    # names and details may carry a peer's text (or come from any endpoint `status` asked):
    # a control character must not reach the operator's terminal
    return "\n".join(escape_controls(line) for line in lines)


def _ledgers(routes: dict[str, Any]) -> list[str]:
    """Per route: where every envelope it took in went, and what waits in the outbox.

    Only routes whose snapshot carries a ledger or an outbox entry are shown; a missing
    number reads as 0, a missing verdict as "-".
    """
    shown = {n: c for n, c in routes.items() if "ledger" in c or "outbox" in c}
    if not shown:
        return []
    lines = [
        "",
        f"{'ROUTE LEDGER':<22} {'RECEIVED':>9} {'DELIVERED':>9} {'PENDING':>7} {'DEAD':>6} "
        f"{'DROPPED':>8} {'BALANCED':>8} {'OUTBOX':>7} {'OLDEST':>7}",
    ]
    for name, c in shown.items():
        led = c.get("ledger") or {}
        box = c.get("outbox") or {}
        balanced = "-" if "balanced" not in led else "yes" if led["balanced"] else "NO"
        oldest = box.get("oldest_age_s")
        lines.append(
            f"{name:<22} {led.get('received', 0):>9} {led.get('delivered', 0):>9} "
            f"{led.get('pending', 0):>7} {led.get('dead_lettered', 0):>6} "
            f"{led.get('dropped', 0):>8} {balanced:>8} {box.get('pending', 0):>7} "
            f"{'-' if oldest is None else _dur(oldest):>7}"
        )
    return lines


def _outbox(box: dict[str, Any] | None) -> list[str]:
    """One line about the durable outbox as a whole, when the snapshot has one."""
    if not box:
        return []
    oldest = box.get("oldest_age_s")
    return [
        "",
        f"outbox: {box.get('rows', 0)} rows, {_size(box.get('bytes', 0))}, oldest "
        f"{'-' if oldest is None else _dur(oldest)}, dead letters {box.get('dead_letters', 0)}"
        + (f"  ({box['path']})" if box.get("path") else ""),
    ]


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
