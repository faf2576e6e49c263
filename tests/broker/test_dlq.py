"""``junction dlq``: dead letters made by a real bridge, then listed, shown, replayed, purged."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import _logs as logs
from broker import _state_lock as state_lock
from broker import cli
from broker._dead_filter import reason_matches
from broker._dlq import parse_ids
from broker._dlq_select import chunk_schedule, select
from broker._envelope import CommandResult, Envelope, Metric
from broker._outbox import DeadLetter, Outbox
from broker._runtime import Runtime, load
from tests.conftest import TEST_PLUGINS, peek, wait_until
from tests.support import core_plugin

COUNT = 20  # the burst's values 0..19: 10 odd ones die on each route

BRIDGE = """
[junction]
state_dir = "{state}"
shutdown_grace_s = 1

[adapters.src]
type = "burst"
count = {count}
name_prefix = "${{DLQ_TEST_PREFIX}}"

[adapters.sink]
type = "collector"
refuse_odd = {refuse}

[adapters.other]
type = "collector"

[[routes]]
name = "checked"
from = "src"
to = "other"
transforms = ["explode_on_odd"]

[[routes]]
name = "persisted"
from = "src"
to = "sink"
overflow = "persist"
redelivery = {{ attempts = 2, backoff_initial_s = 0.05 }}
"""

SECRET = "s3cr3t-prefix-"


@pytest.fixture
def bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], str]]:
    """``bridge(refuse)`` writes the config (refusing odd values or not); returns its path."""
    monkeypatch.setenv("DLQ_TEST_PREFIX", SECRET)
    core_plugin.reset()

    def write(refuse: bool) -> str:
        path = tmp_path / f"junction-{'refusing' if refuse else 'fixed'}.toml"
        text = BRIDGE.format(state=tmp_path / "state", count=COUNT, refuse=str(refuse).lower())
        path.write_text(text, encoding="utf-8")
        return str(path)

    yield write
    core_plugin.reset()


def start(path: str) -> Runtime:
    rt = Runtime(load(path, extra_plugins=TEST_PLUGINS))
    rt.start()
    return rt


def outbox_of(path: str) -> Outbox:
    return Outbox(
        Path(load(path, extra_plugins=TEST_PLUGINS).config.junction.state_dir) / "outbox.sqlite3"
    )


@pytest.fixture
def dead(bridge: Callable[[bool], str]) -> str:
    """Run the refusing bridge until all 20 odd envelopes are dead letters; returns the config."""
    path = bridge(True)
    rt = start(path)
    try:
        wait_until(
            lambda: rt.outbox is not None and peek(rt, Outbox.dead_count) == COUNT, what="20 dead"
        )
        wait_until(lambda: rt.snapshot()["routes"]["persisted"]["ledger"]["pending"] == 0)
    finally:
        rt.stop(grace_s=1)
    core_plugin.reset()
    core_plugin.PROGRESS["src"] = COUNT  # a restarted source has sent everything already
    return path


def dlq(*args: str) -> int:
    return cli.main(["dlq", *args])


def table_rows(out: str, first: str) -> list[list[str]]:
    """The cells of the table lines starting with ``first`` (split on runs of 2+ spaces)."""
    rows = [
        re.split(r"\s{2,}", line.strip())
        for line in out.splitlines()
        if line.startswith(first + " ")
    ]
    assert rows, f"no row {first!r} in:\n{out}"
    return rows


# --- list and show -----------------------------------------------------------------------


def test_list_of_an_empty_store_says_so_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "clean.toml"
    path.write_text(
        f'[junction]\nstate_dir = "{tmp_path / "state"}"\n'
        '[adapters.src]\ntype = "burst"\ncount = 5\n[adapters.sink]\ntype = "collector"\n'
        '[[routes]]\nname = "r"\nfrom = "src"\nto = "sink"\n',
        encoding="utf-8",
    )
    core_plugin.reset()
    rt = start(str(path))  # nothing fails: the store is created and stays without dead letters
    try:
        wait_until(lambda: len(core_plugin.received("sink")) == 5, what="all delivered")
    finally:
        rt.stop(grace_s=1)
        core_plugin.reset()
    assert dlq("list", str(path)) == 0
    assert "no dead letters in" in capsys.readouterr().out
    assert dlq("list", str(path), "--route", "nope") == 1  # a filter that names nothing still fails


def test_list_counts_by_route_stage_and_reason(
    dead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dlq("list", dead) == 0
    out = capsys.readouterr().out
    # the transform's reason names the value, so each is its own group
    checked = table_rows(out, "checked")
    assert [c[:3] for c in checked] == [["checked", "route", "1"]] * 10
    assert sorted(c[-1].rsplit(" ", 1)[-1] for c in checked) == sorted(
        f"{v}.0')" for v in range(1, COUNT, 2)
    )
    (persisted,) = table_rows(out, "persisted")
    assert persisted[:3] == ["persisted", "deliver", "10"]
    assert "odd values are refused" in persisted[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", persisted[3])  # human-readable
    assert "total: 20 dead letters in 11 groups on 2 routes" in out

    assert dlq("list", dead, "--reason", "REFUSED") == 0  # case-insensitive substring
    out = capsys.readouterr().out
    assert "persisted" in out and "\nchecked" not in out and "total: 10" in out

    assert dlq("list", dead, "--route", "nope") == 1
    err = capsys.readouterr().err
    assert "no dead letters match route 'nope'" in err and "checked, persisted" in err


def test_list_ids_shows_rows_oldest_first_up_to_the_limit(
    dead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dlq("list", dead, "--ids", "--route", "persisted", "--limit", "4") == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if re.match(r"\s*\d+\s{2}", ln)]
    assert len(lines) == 4
    seqs = [int(ln.split()[0]) for ln in lines]
    assert seqs == sorted(seqs)
    cells = re.split(r"\s{2,}", lines[0].strip())
    assert cells[1:5] == ["persisted", "deliver", "sink", "metric"]
    assert "showing the oldest 4 of 10" in out

    assert dlq("list", dead, "--ids", "--limit", "0") == 0
    out = capsys.readouterr().out
    assert len([ln for ln in out.splitlines() if re.match(r"\s*\d+\s{2}", ln)]) == 20
    assert "20 dead letters (all), oldest first" in out


def test_show_prints_each_dead_letter_with_its_envelope_redacted(
    dead: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    box = outbox_of(dead)
    row = box.dead_rows(route="persisted", limit=1)[0]
    box.close()
    # forget what this process learnt: `dlq` must register the config's secrets itself
    monkeypatch.setattr(logs, "_registry", (frozenset(), None))
    assert dlq("show", dead, str(row.seq)) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dead letter {row.seq}\n")
    assert "  route      persisted" in out and "  target     sink" in out
    assert SECRET not in out
    body = out.split("  envelope:\n", 1)[1]
    env = json.loads(body)
    assert env["id"] == row.env_id
    assert env["body"]["kind"] == "metric" and env["body"]["value"] % 2 == 1
    assert env["subject"].startswith("***")  # the secret prefix, redacted

    assert dlq("show", dead, str(row.seq), "999999") == 1
    captured = capsys.readouterr()
    assert f"dead letter {row.seq}" in captured.out
    assert "no dead letter with seq 999999" in captured.err


# --- replay ------------------------------------------------------------------------------


def test_replay_into_a_fixed_sink_delivers_them_and_the_dead_table_shrinks(
    dead: str, bridge: Callable[[bool], str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert dlq("replay", dead, "--route", "persisted") == 0
    out = capsys.readouterr().out
    assert "queued for replay 10/10" in out
    assert "they are delivered when the bridge next starts" in out
    box = outbox_of(dead)
    assert box.dead_count() == 10 and box.replay_waiting() == 10
    box.close()

    rt = start(bridge(False))
    try:
        wait_until(lambda: len(core_plugin.received("sink")) == 10, what="10 replays delivered")
        values = sorted(e.body.value for e in core_plugin.received("sink"))  # type: ignore[union-attr]
        assert values == [float(v) for v in range(1, COUNT, 2)]
        assert rt.outbox is not None
        wait_until(lambda: rt.outbox is not None and rt.outbox.replay_waiting() == 0)
        assert {r.route for r in peek(rt, lambda b: b.dead_rows(limit=100))} == {"checked"}
        assert peek(rt, Outbox.dead_count) == 10
    finally:
        rt.stop(grace_s=1)


def test_replay_while_a_bridge_runs_is_picked_up_live(
    dead: str, bridge: Callable[[bool], str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = bridge(False)
    rt = start(path)
    state_dir = rt.loaded.config.junction.state_dir
    lock = state_lock.acquire(state_dir)  # as `junction run` does
    try:
        assert rt.outbox is not None
        before = max(r.seq for r in peek(rt, lambda b: b.dead_rows(route="checked", limit=100)))
        assert dlq("replay", path, "--route", "persisted", "--rate", "1000") == 0
        out = capsys.readouterr().out
        assert "to the running bridge" in out and "queued for replay 10/10" in out
        assert "picks them up now" in out
        wait_until(lambda: len(core_plugin.received("sink")) == 10, what="live replay")

        # still failing: replayed once, they come back as new dead letters (higher seqs)
        assert (
            dlq("replay", path, "--route", "checked", "--reason", "value 1", "--rate", "1000") == 0
        )
        assert "queued for replay 6/6" in capsys.readouterr().out  # 1, 11, 13, 15, 17, 19
        wait_until(lambda: rt.snapshot()["routes"]["checked"]["dead_lettered"] == 6)
        wait_until(lambda: rt.outbox is not None and peek(rt, Outbox.dead_count) == 10)
        rows = peek(rt, lambda b: b.dead_rows(route="checked", limit=100))
        assert sorted(r.envelope.body.value for r in rows if r.seq > before) == [  # type: ignore[union-attr]
            1.0,
            11.0,
            13.0,
            15.0,
            17.0,
            19.0,
        ]
    finally:
        lock.release()
        rt.stop(grace_s=1)


# --- purge, confirmation, errors -------------------------------------------------------------


def test_purge_by_route(dead: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert dlq("purge", dead, "--route", "checked") == 0
    assert "purged 10 dead letters (route 'checked')" in capsys.readouterr().out
    box = outbox_of(dead)
    assert {g[0] for g in box.dead_summary()} == {"persisted"} and box.dead_count() == 10
    seqs = [r.seq for r in box.dead_rows(limit=3)]
    box.close()
    assert dlq("purge", dead, "--route", "checked") == 1
    assert "no dead letters match route 'checked'" in capsys.readouterr().err

    assert dlq("purge", dead, "--ids", f"{seqs[0]},{seqs[1]},999999") == 0
    captured = capsys.readouterr()
    assert "purged 2 dead letters" in captured.out
    assert "not found (or not matching the filters): seqs 999999" in captured.err


def bury(path: Path, n: int) -> Outbox:
    box = Outbox(path)
    box.bury(
        [
            DeadLetter(
                "r",
                "sink",
                "deliver",
                Envelope(source="t", body=Metric(module="m", name="n", value=i)),
                "HTTP 429",
            )
            for i in range(n)
        ]
    )
    return box


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command", ["purge", "replay"])
def test_more_than_100_need_yes_or_a_typed_yes_at_a_terminal(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "j.toml"
    config.write_text(f'[junction]\nstate_dir = "{tmp_path / "state"}"\n', encoding="utf-8")
    box = bury(tmp_path / "state" / "outbox.sqlite3", 101)

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal: refused
    assert dlq(command, str(config)) == 1
    assert "without confirmation: stdin is not a terminal; pass --yes" in capsys.readouterr().err
    assert box.dead_count() == 101

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert dlq(command, str(config)) == 1
    err = capsys.readouterr().err
    assert f"{command} 101 dead letters (all)? [y/N]" in err and "nothing done" in err
    assert box.dead_count() == 101

    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert dlq(command, str(config), "--route", "r") == 0
    assert box.dead_count() == 0
    box.close()


def test_a_small_selection_needs_no_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "j.toml"
    config.write_text(f'[junction]\nstate_dir = "{tmp_path / "state"}"\n', encoding="utf-8")
    box = bury(tmp_path / "state" / "outbox.sqlite3", 100)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert dlq("purge", str(config)) == 0
    assert box.dead_count() == 0
    box.close()


def test_a_config_error_exits_2_and_a_broken_rest_of_the_file_does_not_matter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[junction]\nstate_dir = 5\n", encoding="utf-8")
    assert dlq("list", str(bad)) == 2
    assert "junction.state_dir" in capsys.readouterr().err
    typo = tmp_path / "typo.toml"
    typo.write_text("[junction.outbox]\nfil = 'x'\n", encoding="utf-8")
    assert dlq("purge", str(typo), "--yes") == 2
    err = capsys.readouterr().err
    assert "junction.outbox.fil: unknown key" in err and "file" in err
    assert dlq("list", str(tmp_path / "absent.toml")) == 2

    # adapters of unknown types and routes the CLI cannot compile: only [junction] is read
    other = tmp_path / "other.toml"
    other.write_text(
        f'[junction]\nstate_dir = "{tmp_path / "state"}"\n'
        '[adapters.x]\ntype = "no-such-type"\ntoken = "${DLQ_UNSET_VAR}"\n'
        '[[routes]]\nname = "r"\nfrom = "x"\nto = "y"\n',
        encoding="utf-8",
    )
    bury(tmp_path / "state" / "outbox.sqlite3", 3).close()
    assert dlq("list", str(other)) == 0
    assert [c[:3] for c in table_rows(capsys.readouterr().out, "r")] == [["r", "deliver", "3"]]


def test_no_outbox_exits_1_without_creating_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "j.toml"
    state = tmp_path / "never-ran"
    config.write_text(f'[junction]\nstate_dir = "{state}"\n', encoding="utf-8")
    for args in (["list"], ["show", "1"], ["replay", "--yes"], ["purge", "--yes"]):
        assert dlq(args[0], str(config), *args[1:]) == 1
        err = capsys.readouterr().err
        assert (
            f"no outbox at {state / 'outbox.sqlite3'} (the bridge has not run with this state_dir)"
            in err
        )
    assert not state.exists()


# --- pure pieces ---------------------------------------------------------------------------


def test_the_chunk_schedule_paces_at_the_rate_in_tick_sized_chunks() -> None:
    plan = list(chunk_schedule(1000, 100))
    assert {n for _, n in plan} == {25} and len(plan) == 40  # a router tick's worth each
    assert plan[0] == (0.0, 25) and plan[1] == (0.25, 25) and plan[-1] == (9.75, 25)
    # never ahead of the rate by more than one chunk
    for at, _ in plan:
        queued_by_then = sum(n for t, n in plan if t <= at)
        assert queued_by_then <= 100 * at + 25
    assert list(chunk_schedule(3, 1)) == [(0.0, 1), (1.0, 1), (2.0, 1)]
    assert list(chunk_schedule(7, 0.5))[-1] == (12.0, 1)
    big = list(chunk_schedule(1100, 10_000))  # capped at what the router takes per tick
    assert [n for _, n in big] == [250, 250, 250, 250, 100]
    assert [round(t, 3) for t, _ in big] == [0.0, 0.025, 0.05, 0.075, 0.1]
    assert list(chunk_schedule(10, 100)) == [(0.0, 10)]
    assert list(chunk_schedule(0, 100)) == []
    assert sum(n for _, n in chunk_schedule(1234, 37)) == 1234


def test_replay_paced_sleeps_until_each_chunk_is_due(tmp_path: Path) -> None:
    from broker._dlq_select import replay_paced

    box = bury(tmp_path / "o.sqlite3", 60)
    sel = select(box, None, None, None)
    now = [100.0]
    slept: list[float] = []
    moved_at: list[tuple[float, int]] = []

    def sleep(s: float) -> None:
        slept.append(round(s, 6))
        now[0] += s

    def report(moved: int, total: int, elapsed: float) -> None:
        moved_at.append((round(elapsed, 6), moved))

    outcome = replay_paced(box, sel, 40, True, report, clock=lambda: now[0], sleep=sleep)
    assert outcome.moved == 60 and not outcome.interrupted
    assert slept == [0.25] * 5  # chunks of 10 at 0, 0.25, ..., 1.25 s
    assert moved_at[-1] == (1.25, 60) and (1.0, 50) in moved_at
    assert box.dead_count() == 0 and box.replay_waiting() == 60
    box.close()


def test_parse_ids() -> None:
    assert parse_ids("3, 1,5-7,3") == [1, 3, 5, 6, 7]
    for bad in ("a", "5-2", "0", "", "1-x"):
        with pytest.raises(Exception, match="--ids"):
            parse_ids(bad)


def test_reason_matching_agrees_with_the_store(tmp_path: Path) -> None:
    reasons = ["HTTP 429: Too Many", "ValueError: odd value 3", "100% full", "a_b", "Ünïcode Ä"]
    box = Outbox(tmp_path / "o.sqlite3")
    box.bury(
        [
            DeadLetter(
                "r",
                "",
                "route",
                Envelope(source="t", body=Metric(module="m", name="n", value=1)),
                why,
            )
            for why in reasons
        ]
    )
    for needle in ["http", "ODD", "0%", "a_b", "%", "_", "ünï", "Ünï", "ä", "x"]:
        expected = {r.reason for r in box.dead_rows(reason=needle)}
        assert {why for why in reasons if reason_matches(needle, why)} == expected, needle
        assert select(box, None, needle, None).count == len(expected)
    box.close()


def test_ctrl_c_during_a_replay_stops_between_chunks(tmp_path: Path) -> None:
    from broker._dlq_select import replay_paced

    box = bury(tmp_path / "o.sqlite3", 30)
    sel = select(box, None, None, None)
    now = [0.0]
    calls: list[float] = []

    def sleep(s: float) -> None:
        calls.append(s)
        if len(calls) == 2:
            raise KeyboardInterrupt
        now[0] += s

    outcome = replay_paced(box, sel, 40, True, lambda *_: None, clock=lambda: now[0], sleep=sleep)
    assert outcome.interrupted and outcome.moved == 20  # chunks at 0 and 0.25 s, not 0.5 s
    assert box.dead_count() == 10 and box.replay_waiting() == 20
    box.close()


# --- a dead-lettered reply (issue 17, item 10) ----------------------------------------------

ASKING = """
[junction]
state_dir = "{state}"
shutdown_grace_s = 1
[adapters.asker]
type = "burst"
count = 4
requests = true
refuse_replies = {refuse}
[adapters.placeos]
type = "echo"
[[routes]]
name = "exec"
from = "asker"
kind = "exec_request"
to = "placeos"
expects_reply = true
reply_map = {{ kind = "command_result", ok = "{{body.ok}}", message = "exec code {{body.code}}" }}
"""


def test_a_dead_lettered_reply_replays_back_to_the_asker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    core_plugin.reset()
    path = tmp_path / "asking.toml"
    path.write_text(ASKING.format(state=tmp_path / "state", refuse="true"))
    rt = start(str(path))
    try:
        wait_until(lambda: rt.outbox is not None and peek(rt, Outbox.dead_count) == 4)
    finally:
        rt.stop(grace_s=1)
    box = outbox_of(str(path))
    rows = box.dead_rows(route="exec", limit=10)
    box.close()
    assert {r.target for r in rows} == {"asker"}  # the answers died on their way back
    assert {r.envelope.correlation_id for r in rows} == {f"req-{i}" for i in range(4)}

    core_plugin.reset()
    core_plugin.PROGRESS["asker"] = 4  # it asked already; only the answers are owed
    path.write_text(ASKING.format(state=tmp_path / "state", refuse="false"))
    assert dlq("replay", str(path), "--route", "exec", "--rate", "1000") == 0
    assert "queued for replay 4/4" in capsys.readouterr().out
    rt = start(str(path))
    try:
        wait_until(lambda: len(core_plugin.received("asker")) == 4, what="the answers delivered")
        answers = {e.correlation_id: e.body for e in core_plugin.received("asker")}
        assert set(answers) == {f"req-{i}" for i in range(4)}
        assert all(isinstance(b, CommandResult) and b.ok for b in answers.values())
        assert core_plugin.received("placeos") == []  # replayed to the asker, not re-asked
        assert peek(rt, Outbox.dead_count) == 0
    finally:
        rt.stop(grace_s=1)
        core_plugin.reset()


def test_dlq_output_shows_a_peers_control_characters_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from broker._dlq_format import err, out

    out("reason  conduit said: 400 \x1b[31mbad\x1b[0m\x1b]0;TITLE\x07\x9b\n  next line")
    err("failed: \x1b[2J")
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err and "\x07" not in captured.out
    assert "\\x1b[31mbad\\x1b[0m\\x1b]0;TITLE\\x07\\x9b" in captured.out
    assert captured.out.count("\n") == 2  # the text's own line break kept
    assert "\\x1b[2J" in captured.err
