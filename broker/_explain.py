"""``junction explain``: which routes take an envelope and what each makes of it, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from broker._envelope import Envelope
from broker._routing import CompiledRoute, RoutingTable

#: What an envelope looks like (``junction explain`` and the console show it when one does
#: not parse).
EXAMPLE_ENVELOPE: dict[str, Any] = {
    "source": "gen",
    "subject": "room/t",
    "body": {"kind": "metric", "module": "room", "name": "t", "value": 21.5},
}


@dataclass
class RouteVerdict:
    """One route's answer for one envelope."""

    route: str
    matched: bool
    why: list[str] = field(default_factory=list)
    steps: list[tuple[str, Any]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    error: str = ""


def explain(table: RoutingTable, env: Envelope) -> list[RouteVerdict]:
    """Every route with its verdict; matching routes carry each step's output."""
    matched = {r.name for r in table.match(env)}
    return [_verdict(route, env, route.name in matched) for route in table.routes]


def _verdict(route: CompiledRoute, env: Envelope, matched: bool) -> RouteVerdict:
    v = RouteVerdict(route.name, matched, targets=list(route.targets))
    if env.source not in route.sources:
        v.why.append(f"source {env.source!r} is not in from = {route.sources}")
    if route.kinds is not None and env.kind not in route.kinds:
        v.why.append(f"kind {env.kind!r} is not in kind = {route.kinds}")
    for text, pred in route.explain:
        v.why.append(f"{'ok  ' if pred(env) else 'FAIL'} {text}")
    if not matched:
        return v
    current: list[Envelope] = [env]
    if route.mapping is not None:
        try:
            current = [route.mapping.apply(env)]
        except ValueError as err:
            v.error = f"map: {err}"
            return v
        v.steps.append(("map", [_plain(e) for e in current]))
    for name, fn in route.transforms:
        nxt: list[Envelope] = []
        for item in current:
            try:
                out = fn(item)
            except Exception as err:
                v.error = f"transform {name!r} raised {type(err).__name__}: {err} (dead-lettered)"
                return v
            if out is None:
                continue
            nxt.extend([out] if isinstance(out, Envelope) else list(out))
        current = nxt
        v.steps.append((name, [_plain(e) for e in current] or "filtered out (dropped: filtered)"))
    v.steps.append(("deliver", f"{len(current)} envelope(s) to {', '.join(route.targets)}"))
    return v


def _plain(env: Envelope) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(env)
    return {k: out[k] for k in ("subject", "body") if k in out} | (
        {"correlation_id": env.correlation_id} if env.correlation_id else {}
    )


def render(verdicts: list[RouteVerdict]) -> str:
    """Human text for a list of verdicts."""
    lines: list[str] = []
    hits = [v for v in verdicts if v.matched]
    lines.append(f"{len(hits)} of {len(verdicts)} routes match")
    for v in verdicts:
        lines.append("")
        lines.append(f"route {v.route}: {'MATCH' if v.matched else 'no match'}")
        for why in v.why:
            lines.append(f"  {why}")
        for step, out in v.steps:
            text = out if isinstance(out, str) else msgspec.json.encode(out).decode()
            lines.append(f"  -> {step}: {text}")
        if v.error:
            lines.append(f"  !! {v.error}")
    return "\n".join(lines)
