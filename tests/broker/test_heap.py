"""broker._heap: the freed heap really goes back to the system (glibc), and the bridge's
tick is what calls it."""

from __future__ import annotations

import ctypes.util
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import _heap, _runtime
from broker._runtime import Loaded, Runtime
from tests.conftest import wait_until


def _anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim is glibc's; elsewhere release_free_heap does nothing",
)


@glibc_only
def test_freed_heap_holes_are_handed_back() -> None:
    # 4 KB objects come from glibc's heap (beyond pymalloc's 512 bytes, below the mmap
    # threshold); one kept in a hundred pins the heap, so nothing is returned by itself
    junk = [bytes(4000) + bytes([i % 256]) for i in range(20_000)]
    kept = junk[::100]
    del junk
    before = _anon_mb()
    assert _heap.release_free_heap() is True
    after = _anon_mb()
    assert before - after > 40, (before, after)
    assert len(kept) == 200


_ARENA_PROBE = """
import ctypes, ctypes.util, os, sys, tempfile, threading
from broker import _heap
if sys.argv[1] == "one":
    _heap.use_one_arena()
both_allocating = threading.Barrier(3)
kept = []
def work():
    kept.append(bytes(4000) + b"x")
    both_allocating.wait()
    kept.append([bytes(4000) + b"x" for _ in range(100)])
threads = [threading.Thread(target=work) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
fd, path = tempfile.mkstemp()
os.close(fd)
out = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
print(open(path).read().count("<heap nr="))
"""


def _arenas_after_threads(mode: str, env: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _ARENA_PROBE, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout.split()[-1])


@glibc_only
def test_one_arena_for_every_thread_unless_the_operator_says_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _arenas_after_threads("default", env) > 1  # what glibc does by itself
    assert _arenas_after_threads("one", env) == 1
    assert _arenas_after_threads("one", {**env, "MALLOC_ARENA_MAX": "4"}) > 1


def test_without_malloc_trim_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_heap, "_malloc_trim", None)
    monkeypatch.setattr(_heap, "_mallopt", None)
    assert _heap.release_free_heap() is False
    assert _heap.use_one_arena() is False


@glibc_only
def test_glibc_has_malloc_trim_and_mallopt() -> None:
    assert ctypes.util.find_library("c") is not None
    assert _heap._malloc_trim is not None and _heap._mallopt is not None


def test_a_running_bridge_hands_heap_back_on_its_tick(
    monkeypatch: pytest.MonkeyPatch,
    load_config: Callable[[str], Loaded],
    runtime_of: Callable[[Loaded], Runtime],
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(_runtime, "TRIM_EVERY_S", 0.3)
    monkeypatch.setattr(_runtime, "release_free_heap", lambda: calls.append(time.monotonic()))
    runtime_of(
        load_config("""
[adapters.sink]
type = "collector"
""")
    )
    wait_until(lambda: len(calls) >= 2, what="two heap releases from the tick")
    assert calls[1] - calls[0] >= 0.25
