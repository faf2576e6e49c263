"""Before/after: run one bench command alternately in two checkouts and compare medians.

    .venv/bin/python bench/compare.py --before /work/bench-base --after . --pairs 5 \\
        -- bench/e2e.py --repeat 1

Why: on a shared, noisy 2-core machine the figures drift from minute to minute, so two
series taken one after the other mostly compare the load.  Alternating A B A B ... with a
fresh process per run lets the drift hit both sides alike; quote the ratio of the medians.

Each run is a fresh process with the checkout as its cwd: a command ending in ``.py`` runs
under that checkout's own ``.venv/bin/python``, anything else (the Node-RED comparison's
``run.sh``) as given.  ``{side}`` (before/after) and ``{i}`` (the pair) in the command are
replaced, so runs that keep results under a tag do not overwrite each other.  A run's result
is the last stdout line holding a JSON object (a leading word such as ``AGGREGATE`` is
skipped); nested objects become dotted keys, and every numeric value is compared
(``--keys`` keeps those whose name contains one of the given substrings).

Prints per key the median before, the median after and after/before, and the load average
at the start and the end; the last line is one JSON object with the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIDES = ("before", "after")


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that holds a JSON object, from its first ``{``."""
    for line in reversed(text.splitlines()):
        start = line.find("{")
        if start < 0:
            continue
        try:
            obj = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def numbers(obj: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of ``obj`` (bools excluded), nested keys joined with dots."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numbers(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def run_one(checkout: Path, command: list[str], timeout: float) -> tuple[str, int, float]:
    argv = list(command)
    if argv[0].endswith(".py"):
        argv.insert(0, str(checkout / ".venv" / "bin" / "python"))
    began = time.monotonic()
    try:
        proc = subprocess.run(
            argv, cwd=checkout, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "", -1, time.monotonic() - began
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
    return proc.stdout, proc.returncode, time.monotonic() - began


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="baseline checkout (with .venv)")
    ap.add_argument("--after", type=Path, required=True, help="checkout under test (with .venv)")
    ap.add_argument("--pairs", type=int, default=3, help="A B pairs to run")
    ap.add_argument("--keys", default="", help="comma list of substrings: only matching keys")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    ap.add_argument("--log", type=Path, help="directory to keep each run's stdout in")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the bench command and args")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command: give it after --")
    dirs = {"before": args.before.resolve(), "after": args.after.resolve()}
    wanted = [k for k in args.keys.split(",") if k]
    if args.log:
        args.log.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    results: dict[str, list[dict[str, float]]] = {s: [] for s in SIDES}
    failed = 0
    for i in range(1, args.pairs + 1):
        for side in SIDES:
            cmd = [a.replace("{side}", side).replace("{i}", str(i)) for a in command]
            out, rc, took = run_one(dirs[side], cmd, args.timeout)
            if args.log:
                (args.log / f"{i:02d}-{side}.out").write_text(out)
            found = last_json(out) if rc == 0 else None
            if found is None:
                failed += 1
                print(f"pair {i} {side:<6} FAILED (exit {rc}, {took:.1f} s)", flush=True)
                continue
            results[side].append(numbers(found))
            print(f"pair {i} {side:<6} {took:6.1f} s  load {os.getloadavg()[0]:.2f}", flush=True)
    load_end = os.getloadavg()
    keys = [k for r in results["before"] + results["after"] for k in r]
    keys = [k for k in dict.fromkeys(keys) if not wanted or any(w in k for w in wanted)]
    med: dict[str, dict[str, float | None]] = {"before": {}, "after": {}, "ratio": {}}
    width = max([len(k) for k in keys] + [3])
    print(f"\n{'key':<{width}} {'before':>14} {'after':>14} {'after/before':>12}")
    for key in keys:
        for side in SIDES:
            vals = [r[key] for r in results[side] if key in r]
            med[side][key] = statistics.median(vals) if vals else None
        b, a = med["before"][key], med["after"][key]
        med["ratio"][key] = round(a / b, 4) if a is not None and b else None
        cells = [f"{x:>14,.6g}" if x is not None else f"{'-':>14}" for x in (b, a)]
        ratio = med["ratio"][key]
        print(f"{key:<{width}} {cells[0]} {cells[1]} {ratio if ratio is not None else '-':>12}")
    print(f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    summary = {
        **med,
        "runs": {s: len(results[s]) for s in SIDES},
        "failed": failed,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
        "before_dir": str(dirs["before"]),
        "after_dir": str(dirs["after"]),
        "command": command,
    }
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
