"""Take docs/console.png: the web console of ``junction demo`` at 1280x900.

::

    .venv/bin/python docs/console_screenshot.py [--out docs/console.png] [--wait 15]

Runs ``junction demo`` (its state in a temporary directory) as the README shows it, reads
the ``console: URL`` line it prints first, lets the demo run ``--wait`` seconds (rates,
latest values, a few Portal commands), then photographs the page in Debian's Chromium
through Playwright (``make browser`` installs it) and stops the demo with Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "console.png"))
    parser.add_argument("--wait", type=float, default=15.0, metavar="S")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as state:
        env = dict(os.environ, JUNCTION_DEMO_STATE_DIR=state, PYTHONPATH=str(ROOT))
        demo = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "demo", "--duration", str(args.wait + 60)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert demo.stdout is not None
            first = demo.stdout.readline().strip()
            if not first.startswith("console: "):
                print(f"junction demo did not print its console first: {first!r}", file=sys.stderr)
                return 1
            url = first.removeprefix("console: ")
            time.sleep(args.wait)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.wait_for_selector("#live.on")
                page.wait_for_selector("#graph text.rate")
                time.sleep(3)  # rates over a few snapshots
                page.screenshot(path=args.out)
                browser.close()
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=30)
    print(f"wrote {args.out} from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
