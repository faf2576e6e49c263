"""Rendering the live picture (adapters, routes, queues) as text a person can read."""

from __future__ import annotations

import time
from typing import Any


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
    return "\n".join(lines)


def _dur(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
