"""Hot reload: ``Runtime.reload``, SIGHUP and ``junction reload`` against a running bridge.

Real actors, real trio loops, the test plugin's adapters; the PlaceOS case runs the
PlaceOS simulator over loopback WebSockets; the CLI case runs ``junction run`` as a
subprocess and signals it the way an operator would.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
import trio

from adapters.placeos.sim import open_placeos_simulator
from broker import _reload as reload_mod
from broker import _state_lock as state_lock
from broker._adapter import Adapter
from broker._adapter_actor import AdapterActor
from broker._envelope import Envelope, Metric, StatusChange
from broker._errors import ConfigError
from broker._runtime import Loaded, Runtime, load
from tests.conftest import TEST_PLUGINS, wait_for, wait_until
from tests.support.core_plugin import inject, received

ROOT = Path(__file__).resolve().parents[2]


# --- helpers ---------------------------------------------------------------------------


def instances(rt: Runtime) -> dict[str, Adapter]:
    """The adapter objects running now for ``rt``, by name (read through their hosts)."""
    assert rt.router is not None
    out: dict[str, Adapter] = {}
    for ref in pykka.ActorRegistry.get_by_class(AdapterActor):
        try:
            adapter: Adapter = ref.proxy().adapter.get(timeout=5)
        except pykka.ActorDeadError:
            continue
        if rt.contexts.get(adapter.name) is adapter.ctx:
            out[adapter.name] = adapter
    return out


def values(name: str) -> list[float]:
    return [e.body.value for e in received(name) if isinstance(e.body, Metric)]


def metrics(start: int, n: int) -> list[Envelope]:
    return [
        Envelope(source="src", subject="t", body=Metric(module="t", name="m", value=float(i)))
        for i in range(start, start + n)
    ]


class Feeder:
    """Injects numbered metrics through probe ``src`` from its own thread until stopped."""

    def __init__(self) -> None:
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            inject("src", metrics(self.sent, 10))
            self.sent += 10
            time.sleep(0.002)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.sent


@pytest.fixture
def reloadable(
    write_config: Callable[..., str], runtime_of: Callable[[Loaded], Runtime]
) -> Callable[[str], tuple[Runtime, Callable[[str], None]]]:
    """Start a runtime from a config file; returns it and a function that rewrites the file."""

    def start(text: str) -> tuple[Runtime, Callable[[str], None]]:
        path = write_config(text)
        rt = runtime_of(load(path, extra_plugins=TEST_PLUGINS))
        return rt, lambda new_text: Path(path).write_text(new_text, encoding="utf-8")

    return start


def with_state(text: str, state: Path, junction: str = "") -> str:
    return f'[junction]\nstate_dir = "{state}"\n{junction}\n{text}'


# --- a stream flowing through a reload ------------------------------------------------

FLOW = """
[adapters.src]
type = "probe"
[adapters.sink]
type = "collector"
[adapters.side]
type = "collector"
[[routes]]
name = "main"
from = "src"
kind = "metric"
to = "sink"
overflow = "block"
queue_size = 100000
[[routes]]
name = "tap"
from = "src"
to = "side"
overflow = "block"
queue_size = 100000
"""


def test_route_change_while_a_stream_flows_loses_nothing_and_touches_no_one(
    reloadable: Callable[[str], tuple[Runtime, Callable[[str], None]]], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    before = FLOW + 'match = { "body.name" = "never" }\n'
    rt, rewrite = reloadable(with_state(before, state))
    wait_until(lambda: rt.statuses["src"].state == "running")
    kept = instances(rt)
    kept_status = dict(rt.statuses)
    assert set(kept) == {"src", "sink", "side"}

    after = (
        FLOW  # "tap" loses its match (changed); "copy" to a new adapter "extra" (added)
        + """
[adapters.extra]
type = "collector"
[[routes]]
name = "copy"
from = "src"
to = "extra"
overflow = "block"
queue_size = 100000
"""
    )
    with Feeder() as feeder:
        wait_until(lambda: len(values("sink")) >= 200, what="the stream flowing")
        rewrite(with_state(after, state))
        report = rt.reload()
        sent_at_reload = feeder.sent
        wait_until(lambda: feeder.sent >= sent_at_reload + 200, what="more after the reload")
        total = feeder.stop()

    wait_until(lambda: len(values("sink")) == total, what=f"all {total} at the sink")
    # nothing lost, nothing doubled, order kept, through the swap
    assert values("sink") == [float(i) for i in range(total)]
    # the changed and the added route both began at one envelope: the swap was one step
    wait_until(lambda: values("side")[-1:] == [total - 1], what="tap caught up")
    wait_until(lambda: values("extra")[-1:] == [total - 1], what="copy caught up")
    first = int(values("side")[0])
    assert 0 < first <= sent_at_reload
    assert values("side") == values("extra") == [float(i) for i in range(first, total)]

    assert report.added == ["extra"] and report.removed == [] and report.restarted == []
    assert sorted(report.unchanged) == ["side", "sink", "src"]
    assert (report.routes_added, report.routes_changed, report.routes_removed) == (
        ["copy"],
        ["tap"],
        [],
    )
    now = instances(rt)
    for name in ("src", "sink", "side"):
        assert now[name] is kept[name], f"{name} was restarted"
        assert rt.statuses[name] is kept_status[name]
        assert (rt.statuses[name].restarts, rt.statuses[name].reconnects) == (0, 0)
    assert "extra" in now and rt.statuses["extra"].state == "running"
    routes = rt.snapshot()["routes"]
    assert routes["main"]["matched"] == total  # the remaining route kept counting
    assert routes["tap"]["matched"] == total - first


# --- PlaceOS: a route change does not reconnect ---------------------------------------

KEY = "reload-test-key.0123"
MODEL: dict[str, Any] = {
    "systems": [
        {
            "id": "sys-1",
            "name": "Room 1",
            "modules": [
                {
                    "id": "mod-ENV",
                    "name": "Environment",
                    "index": 1,
                    "status": {"temperature": 21.5, "humidity": 40},
                }
            ],
        }
    ]
}


def placeos_config(url: str, match: str = "") -> str:
    return f"""
[junction]
restart_backoff_s = 0.05
[adapters.placeos]
type = "placeos"
url = "{url}"
api_key = "{KEY}"
backoff_initial_s = 0.05
backoff_max_s = 0.2
bindings = [{{ sys = "sys-1", mod = "Environment", name = "temperature" }},
            {{ sys = "sys-1", mod = "Environment", name = "humidity" }}]
[adapters.sink]
type = "collector"
[[routes]]
name = "statuses"
from = "placeos"
kind = "status_change"
to = "sink"
{match}
"""


def changes() -> list[tuple[str, Any]]:
    return [
        (e.body.name, e.body.value) for e in received("sink") if isinstance(e.body, StatusChange)
    ]


async def test_placeos_keeps_its_connection_when_only_a_route_changes(
    write_config: Callable[..., str], start_runtime: Any
) -> None:
    with trio.fail_after(30):
        async with open_placeos_simulator(MODEL, api_key=KEY, drift=False) as sim:
            path = write_config(placeos_config(sim.url))
            async with start_runtime(load(path, extra_plugins=TEST_PLUGINS)) as rt:
                await wait_for(lambda: len(changes()) == 2, what="the two bound values")
                status = rt.statuses["placeos"]
                assert sim.sessions_opened == 1 and sim.bind_count() == 2
                adapter = (await trio.to_thread.run_sync(instances, rt))["placeos"]

                write_config(placeos_config(sim.url, 'match = { "body.name" = "temperature" }'))
                report = await trio.to_thread.run_sync(rt.reload)
                assert report.routes_changed == ["statuses"]
                assert sorted(report.unchanged) == ["placeos", "sink"] and not report.restarted

                # the changed route takes effect: humidity no longer passes, temperature does
                sim.set_status("sys-1", "Environment", 1, "humidity", 55)
                sim.set_status("sys-1", "Environment", 1, "temperature", 23.0)
                await wait_for(lambda: ("temperature", 23.0) in changes(), what="23.0")
                assert ("humidity", 55) not in changes()

                # ... over the same connection, with the same bindings, by the same instance
                assert sim.sessions_opened == 1 and len(sim.sessions) == 1
                assert sim.bind_count() == 2
                session = sim.sessions[0]
                bound = Counter(
                    r.name for r in session.received if type(r).__name__ == "BindRequest"
                )
                assert bound == Counter({"temperature": 1, "humidity": 1})
                assert (status.reconnects, status.restarts) == (0, 0)
                assert rt.statuses["placeos"] is status
                assert (await trio.to_thread.run_sync(instances, rt))["placeos"] is adapter


# --- an invalid file changes nothing -------------------------------------------------

SIMPLE = """
[adapters.src]
type = "probe"
[adapters.sink]
type = "collector"
[[routes]]
name = "main"
from = "src"
to = "sink"
overflow = "block"
queue_size = 10000
"""


def test_invalid_file_changes_nothing_and_the_stream_flows_on(
    reloadable: Callable[[str], tuple[Runtime, Callable[[str], None]]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "state"
    rt, rewrite = reloadable(with_state(SIMPLE, state))
    inject("src", metrics(0, 50))
    wait_until(lambda: len(values("sink")) == 50)
    loaded, kept = rt.loaded, instances(rt)
    assert rt.router is not None
    table = rt.router.proxy().table.get()

    rewrite(with_state(SIMPLE + "[[routes]\nname = ", state))
    with pytest.raises(ConfigError) as syntax:
        rt.reload()
    assert "TOML syntax error" in str(syntax.value)

    rewrite(with_state(SIMPLE + '[adapters.extra]\ntype = "colector"\n', state))
    with pytest.raises(ConfigError) as unknown:
        rt.reload()
    problem = unknown.value.problems[0]
    assert (problem.path, problem.message, problem.value) == (
        "adapters.extra.type",
        "unknown adapter type",
        "colector",
    )
    assert "did you mean 'collector'?" in str(problem)
    # the signal path logs why, naming file, key and value, and the bridge runs on
    with caplog.at_level(logging.ERROR, logger="broker.reload"):
        assert reload_mod.reload_logged(rt) is None
    assert "refused, still running the previous configuration" in caplog.text
    assert "adapters.extra.type: unknown adapter type (got 'colector')" in caplog.text

    assert rt.loaded is loaded and rt.router.proxy().table.get() is table
    assert "extra" not in rt.statuses and "extra" not in rt.inlets
    now = instances(rt)
    assert set(now) == {"src", "sink"} and all(now[n] is kept[n] for n in now)
    inject("src", metrics(50, 50))
    wait_until(lambda: len(values("sink")) == 100, what="the stream after the refused reloads")
    assert values("sink") == [float(i) for i in range(100)]

    # the same file again: nothing to do, and it says so
    rewrite(with_state(SIMPLE, state))
    report = rt.reload()
    assert not report.changed and str(report).endswith("no changes")
    assert instances(rt)["sink"] is kept["sink"]


# --- a changed adapter restarts alone, keeping what was queued for it -----------------


def test_changed_adapter_restarts_alone_and_keeps_its_queue(
    reloadable: Callable[[str], tuple[Runtime, Callable[[str], None]]], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    gated = SIMPLE.replace('type = "collector"', 'type = "collector"\ngated = true')
    rt, rewrite = reloadable(with_state(gated, state))
    kept = instances(rt)
    inject("src", metrics(0, 300))
    # held by the shut gate: queued in its inlet, one batch inside deliver()
    wait_until(lambda: rt.inlets["sink"].pending() == 300, what="300 waiting for the sink")
    inlet = rt.inlets["sink"]

    rewrite(
        with_state(
            SIMPLE.replace('type = "collector"', 'type = "collector"\ndelay_s = 0.001'), state
        )
    )
    report = rt.reload()
    assert report.restarted == ["sink"] and report.unchanged == ["src"]
    wait_until(lambda: len(values("sink")) == 300, what="all 300 delivered by the new instance")
    assert values("sink") == [float(i) for i in range(300)]

    now = instances(rt)
    assert now["src"] is kept["src"]
    assert now["sink"] is not kept["sink"]
    assert now["sink"].config.gated is False  # type: ignore[attr-defined]
    assert rt.inlets["sink"] is inlet
    assert rt.statuses["src"].restarts == 0
    wait_until(lambda: rt.snapshot()["routes"]["main"]["delivered"] == 300)
    assert rt.snapshot()["routes"]["main"]["dead_lettered"] == 0


# --- a removed adapter and [junction] settings ----------------------------------------


def test_removed_adapter_reports_what_it_left_and_settings_apply_or_wait(
    reloadable: Callable[[str], tuple[Runtime, Callable[[str], None]]], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    extra = """
[adapters.gone]
type = "collector"
gated = true
[[routes]]
name = "to-gone"
from = "src"
to = "gone"
overflow = "block"
queue_size = 100
"""
    rt, rewrite = reloadable(
        with_state(SIMPLE + extra, state, "shutdown_grace_s = 0.3\nreply_timeout_s = 10")
    )
    inject("src", metrics(0, 5))
    wait_until(lambda: rt.inlets["gone"].pending() == 5 and len(values("sink")) == 5)

    rewrite(
        with_state(
            SIMPLE,
            tmp_path / "elsewhere",
            "shutdown_grace_s = 0.3\nreply_timeout_s = 3\nqueue_size = 500\n"
            '[junction.http]\nlisten = "127.0.0.1:0"',
        )
    )
    report = rt.reload()
    assert report.removed == ["gone"] and report.routes_removed == ["to-gone"]
    assert report.left == {"gone/to-gone": 5}
    # what it left is dead-lettered (replayable), and the route's ledger still balances
    ledger = rt.snapshot()["routes"]["to-gone"]["ledger"]
    assert ledger["balanced"] and ledger["dead_lettered"] == 5, ledger
    assert sorted(report.settings_applied) == [
        "queue_size 1000 -> 500",
        "reply_timeout_s 10.0 -> 3.0",
    ]
    assert sorted(report.needs_restart) == [
        "http.listen '' -> '127.0.0.1:0'",
        f"state_dir {str(state)!r} -> {str(tmp_path / 'elsewhere')!r}",
    ]
    text = str(report)
    assert "-gone" in text and "needs a restart" in text and "gone/to-gone=5" in text

    settings = rt.loaded.config.junction
    assert (settings.state_dir, settings.http.listen) == (str(state), "")  # kept
    assert (settings.queue_size, settings.reply_timeout_s) == (500, 3.0)  # applied
    assert rt.router is not None
    assert rt.router.proxy().settings.get().reply_timeout_s == 3.0
    assert rt.contexts["sink"].settings is settings
    assert rt.ops is None
    assert "gone" not in rt.statuses and "gone" not in rt.inlets
    assert "gone" not in instances(rt)
    inject("src", metrics(5, 5))
    wait_until(lambda: len(values("sink")) == 10, what="the stream after the removal")


# --- junction run / junction reload, end to end ----------------------------------------

RUN = """
[junction]
state_dir = "{state}"
shutdown_grace_s = 10
[adapters.gen]
type = "generator"
kind = "metric"
body = {{ module = "m", name = "n", value = 1.0 }}
rate = 200
[adapters.out]
type = "file"
path = "{out}"
[[routes]]
name = "r"
from = "gen"
to = "out"
"""

SECOND = """
[adapters.out2]
type = "file"
path = "{out2}"
[[routes]]
name = "r2"
from = "gen"
to = "out2"
"""


def junction(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``junction run`` in a subprocess; yields it, its config file and its log file."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN.format(state=tmp_path / "state", out=tmp_path / "out.jsonl"))
    log_path = tmp_path / "bridge.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "run", str(cfg)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
    try:
        yield proc, cfg, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_junction_reload_end_to_end(
    bridge: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path
) -> None:
    proc, cfg, log_path = bridge

    def logged(text: str) -> bool:
        return text in log_path.read_text(errors="replace")

    out, out2 = tmp_path / "out.jsonl", tmp_path / "out2.jsonl"
    state = tmp_path / "state"
    wait_until(lambda: lines(out) > 0 and state_lock.holder(state) is not None, timeout=30)
    assert state_lock.holder(state) == proc.pid

    # a bad file is refused by the bridge (exit 2, its reasons printed) and changes nothing
    good = cfg.read_text()
    cfg.write_text(good + '[adapters.bad]\ntype = "colector"\n')
    refused = junction("reload", str(cfg))
    assert refused.returncode == 2, refused.stderr
    assert f"junction (pid {proc.pid}) refused" in refused.stderr
    assert "adapters.bad.type: unknown adapter type (got 'colector')" in refused.stderr
    assert logged("refused, still running the previous configuration")

    cfg.write_text(good + SECOND.format(out2=out2))
    asked = junction("reload", str(cfg))
    assert asked.returncode == 0, asked.stderr
    assert f"junction (pid {proc.pid}) reloaded" in asked.stdout
    assert "adapters +out2, 2 untouched; routes +r2" in asked.stdout
    wait_until(lambda: lines(out2) > 0, timeout=30, what="the added route writing out2")
    assert logged("adapters +out2, 2 untouched; routes +r2")

    # SIGHUP with a broken file: logged with the reason, and the bridge runs on
    cfg.write_text("[[routes]\n")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: logged("TOML syntax error"), timeout=30, what="the refusal logged")
    grown = lines(out2)
    wait_until(lambda: lines(out2) > grown + 20, timeout=30, what="out2 still growing")
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log_path.read_text()
    assert state_lock.holder(state) is None

    # no bridge now: exit 1 saying so
    cfg.write_text(good)
    gone = junction("reload", str(cfg))
    assert gone.returncode == 1 and "no junction is running" in gone.stderr


def test_junction_reload_ignores_a_pid_file_nobody_holds(tmp_path: Path) -> None:
    """A pid file left by a bridge that was SIGKILLed names a pid that may be reused by
    another program: only a held lock counts, so that program is never signalled."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN.format(state=tmp_path / "state", out=tmp_path / "out.jsonl"))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "junction.pid").write_text(f"{os.getpid()}\n")  # alive, not holding
    out = junction("reload", str(cfg))
    assert out.returncode == 1
    assert "no junction is running with this state_dir: nothing holds" in out.stderr


def test_junction_reload_needs_only_the_junction_table(tmp_path: Path) -> None:
    """An operator's shell without the adapters' secrets can still ask for a reload."""
    cfg = tmp_path / "run.toml"
    text = RUN.format(state=tmp_path / "state", out=tmp_path / "out.jsonl")
    cfg.write_text(text + '[adapters.x]\ntype = "placeos"\napi_key = "${NOT_EXPORTED_HERE}"\n')
    out = junction("reload", str(cfg))
    assert out.returncode == 1, out.stderr  # no bridge: that is all it says
    assert "no junction is running" in out.stderr and "NOT_EXPORTED_HERE" not in out.stderr
