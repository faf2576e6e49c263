"""Docs whose examples run: every TOML block of the README and ``docs/`` (issue 18, item 7).

Each ```` ```toml ```` block of ``README.md`` and ``docs/**/*.md`` is a whole configuration
that ``junction check`` accepts as it stands, unless the line right before its fence is
``<!-- toml: fragment -->`` (an HTML comment, invisible once rendered): a fragment is not a
whole Junction configuration (a plugin's ``pyproject.toml``, one table that needs the rest).
The marker anywhere else is an error, so a stray one cannot exempt the block after it.

The check runs as the user runs it: ``junction check FILE`` in a subprocess, in a temp
directory, with two substitutions only:

- ``/var/lib/junction`` becomes a temp directory, so the check (which refuses a
  ``state_dir`` or an output file the bridge could not create) does not depend on running
  as root;
- every ``${NAME}`` the block names (without a ``:-default``) is set to a dummy value long
  enough to be a credential. A ``${file:...}`` reference is not substituted: a block that
  needs a secret file does not pass.

The README's first example (the ``hot-rooms`` route) is also run for real, with
``junction run`` in a subprocess (no socket involved), and must write an ``overheat``
alert to its target file before it is stopped with SIGTERM (exit 0, the ledger logged).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- toml: fragment -->"
#: The README and docs/ held 5 TOML blocks (4 checked) when this test was written: fewer
#: means the extraction broke (or blocks were dropped), not that there is less to check.
MIN_BLOCKS = 5
MIN_CHECKED = 4
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DUMMY_SECRET = "dummy-secret-for-docs-check"
STATE_DIR = "/var/lib/junction"


@dataclass(frozen=True)
class Block:
    """One fenced TOML block: where its fence is, its text, whether it is a fragment."""

    file: str
    line: int
    text: str
    fragment: bool

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def toml_blocks(path: Path) -> list[Block]:
    """Every ```toml fenced block of ``path`` (indented ones, in a list item, dedented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = path.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        if opening["info"].lower() == "toml":
            fragment = i > 0 and lines[i - 1].strip() == MARKER
            blocks.append(Block(rel, i + 1, "\n".join(body) + "\n", fragment))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in toml_blocks(path)]


BLOCKS = all_blocks()
CHECKED = [block for block in BLOCKS if not block.fragment]


def junction() -> list[str]:
    """The ``junction`` command installed beside this Python (else ``python -m``)."""
    script = shutil.which("junction", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "broker.cli"]


def runnable(block: Block, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The block written to a file with its state paths in ``tmp_path``; its environment."""
    text = block.text.replace(STATE_DIR, str(tmp_path / "state"))
    config = tmp_path / "junction.toml"
    config.write_text(text, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(dict.fromkeys(ENV_REF.findall(text), DUMMY_SECRET))
    return config, env


@pytest.mark.parametrize("block", CHECKED, ids=[block.id for block in CHECKED])
def test_toml_block_passes_junction_check(block: Block, tmp_path: Path) -> None:
    config, env = runnable(block, tmp_path)
    done = subprocess.run(
        [*junction(), "check", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = f"{block.id}:\n{block.text}\n--- junction check:\n{done.stdout}{done.stderr}"
    assert done.returncode == 0, shown
    assert f"{config}: OK" in done.stdout, shown


def test_fragment_marker_only_right_before_a_toml_fence() -> None:
    misplaced = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if "toml: fragment" not in line:
                continue
            following = lines[n + 1] if n + 1 < len(lines) else ""
            opening = FENCE.match(following)
            if (
                line.strip() != MARKER
                or not opening
                or opening["info"].lower() != "toml"
                or opening["indent"] != line[: len(line) - len(line.lstrip())]
            ):
                misplaced.append(f"{path.relative_to(ROOT)}:{n + 1}: {line.strip()}")
    assert not misplaced, f"{MARKER} must be the line right before a ```toml fence:\n" + (
        "\n".join(misplaced)
    )


def test_the_extraction_finds_the_blocks() -> None:
    assert len(BLOCKS) >= MIN_BLOCKS, [block.id for block in BLOCKS]
    assert len(CHECKED) >= MIN_CHECKED, [block.id for block in CHECKED]
    first = BLOCKS[0]
    assert first.file == "README.md" and not first.fragment
    assert 'name = "hot-rooms"' in first.text
    for block in BLOCKS:  # a fragment is not a whole configuration, but still TOML
        try:
            tomllib.loads(block.text)
        except tomllib.TOMLDecodeError as err:
            raise AssertionError(f"{block.id}: not valid TOML: {err}") from err


def test_readme_first_example_fires_hot_rooms(tmp_path: Path) -> None:
    first = BLOCKS[0]
    config, env = runnable(first, tmp_path)
    table = tomllib.loads(config.read_text(encoding="utf-8"))
    route = next(r for r in table["routes"] if r["name"] == "hot-rooms")
    (target,) = route["to"]
    out = Path(table["adapters"][target]["path"])
    assert out.is_relative_to(tmp_path), out
    log = tmp_path / "junction.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*junction(), "run", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 20
        while not (out.exists() and out.read_bytes().endswith(b"\n")):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, (
                f"hot-rooms wrote nothing to {out}:\n" + log.read_text(errors="replace")[-3000:]
            )
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert "no route takes" not in text, text[-3000:]
    ledger = re.search(r"hot-rooms received=(\d+) delivered=(\d+)", text)
    assert ledger and int(ledger[2]) >= 1, text[-3000:]
    alert = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert alert["source"] == "sensors"
    body = alert["body"]
    assert (body["kind"], body["module"], body["alarm"], body["action"]) == (
        "alert",
        "room-1",
        "overheat",
        "trigger",
    ), alert
    shown = re.fullmatch(r"room-1 is at (\d+\.\d) C", body["message"])
    assert shown and float(shown[1]) > 27, alert
