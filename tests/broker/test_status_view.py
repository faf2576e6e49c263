"""The terminal view (broker._status, broker._status_live): it fits the window it is given,
adapters and routes first, in the ledger's words; backfill and replay progress."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import pytest
from rich.console import Console

from broker._adapter import AdapterStatus
from broker._backfill import BackfillProgress
from broker._ledger import VOCABULARY
from broker._status import render
from broker._status_live import LiveStatus


def adapter(name: str, detail: str = "", age_s: float = 42.0) -> dict[str, Any]:
    return {
        "type": name,
        "state": "connected",
        "since": time.time() - age_s,
        "received": 120,
        "sent": 3,
        "restarts": 0,
        "detail": detail,
    }


def route(i: int, balanced: bool = True, replies: int = 0) -> dict[str, Any]:
    received = 10 * i + replies
    return {
        "matched": 10 * i,
        "delivered": 9 * i,
        "drop_reasons": {"drop_oldest": i - 1},
        "dropped": i - 1,
        "filtered": 1,
        "dead_lettered": 0,
        "replies": replies,
        "reply_timeouts": 0,
        "ledger": {
            "received": received,
            "delivered": 9 * i + replies,
            "pending": 0,
            "dead_lettered": 0,
            "dropped": i - 1,
            "filtered": 1,
            "balanced": balanced,
            "matched": 10 * i,
            "replies": replies,
            "recovered": 0,
            "replayed": 0,
        },
        "outbox": {"pending": 0, "oldest_age_s": None},
    }


def site(routes: int) -> dict[str, Any]:
    long = "wss://placeos.example.com/api/engine/v2/systems/control: 10 bound, 0 in flight"
    return {
        "uptime_s": 42,
        "adapters": {
            "placeos": adapter("placeos", long),
            "allxon": adapter("allxon", "127.0.0.1:55688: 12/500 calls in the window"),
            "alphax": adapter("alphax", "mqtt 127.0.0.1:1883"),
            "dead_letters": adapter("file"),
        },
        "routes": {f"route-{i}": route(i) for i in range(1, routes + 1)},
        "outbox": {"rows": 0, "bytes": 0, "oldest_age_s": None, "dead_letters": 2},
        "unrouted": {"sensors/metric": 3},
    }


def fits(text: str, width: int, height: int) -> None:
    lines = text.splitlines()
    assert len(lines) <= height, f"{len(lines)} lines:\n{text}"
    assert max(len(line) for line in lines) <= width, text


def test_80x24_shows_every_adapter_and_as_many_routes_as_fit() -> None:
    text = render(site(30), 80, 24, extra=["latest values:", "  a value"])
    fits(text, 80, 24)
    lines = text.splitlines()
    assert lines[0].startswith("junction up 42s · 4 adapters · 30 routes · 2 dead letters")
    for name in ("placeos", "allxon", "alphax", "dead_letters"):
        assert any(line.startswith(name + " ") for line in lines), name
    shown = [line for line in lines if line.startswith("route-")]
    assert len(shown) >= 10 and f"... {30 - len(shown)} more" in text
    assert "latest values:" not in text  # detail only while rows are left
    assert "…" in text  # the long PlaceOS detail ends in an ellipsis, on its own line


def test_a_larger_window_adds_the_ledger_verdict_notes_and_detail() -> None:
    snap = site(3)
    snap["routes"]["route-2"] = route(2, replies=5)
    text = render(snap, 160, 50, extra=["latest values:", "  placeos sys-1/temperature 21.5"])
    fits(text, 160, 50)
    header = next(line for line in text.splitlines() if line.startswith("ROUTE "))
    assert header.split() == [
        "ROUTE",
        *(w.upper() for w in ("received", "delivered", "pending", "dead_lettered")),
        *(w.upper() for w in ("dropped", "filtered", "balanced")),
        "OLDEST",
        "NOTES",
    ]
    assert set(w.lower() for w in header.split()[1:8]) <= set(VOCABULARY)
    row = next(line for line in text.splitlines() if line.startswith("route-2 "))
    assert row.split()[:8] == ["route-2", "25", "23", "0", "0", "1", "1", "yes"]
    assert row.endswith("matched 20, replies 5, drop_oldest 1")  # received 25 vs matched 20
    assert "latest values:" in text and "unrouted: sensors/metric=3" in text
    assert "wss://placeos.example.com/api/engine/v2/systems/control: 10 bound" in text


def test_a_narrow_window_names_why_received_and_matched_differ_below_the_tables() -> None:
    snap = site(2)
    snap["routes"]["route-2"] = route(2, replies=5)
    text = render(snap, 80, 40)
    assert "route-2: matched 20, replies 5, drop_oldest 1" in text


def test_an_unbalanced_route_is_marked_and_named_in_the_title() -> None:
    snap = site(3)
    snap["routes"]["route-2"] = route(2, balanced=False)
    for width in (80, 160):
        text = render(snap, width, 40)
        assert "NOT BALANCED: route-2" in text.splitlines()[0]
        assert any(line.startswith("! route-2") for line in text.splitlines())


def test_for_is_the_time_since_the_state_changed_not_the_detail() -> None:
    status = AdapterStatus(name="a", type="allxon")
    status.set("connected", "12/500 calls")
    since = status.since
    time.sleep(0.01)
    status.set("connected", "13/500 calls")
    assert status.since == since and status.detail == "13/500 calls"
    status.set("reconnecting", "peer closed")
    assert status.since > since


def test_the_live_view_fits_the_window_and_redraws_to_a_new_size() -> None:
    console = Console(file=io.StringIO(), width=80, height=24, force_terminal=True)
    view = LiveStatus("(Ctrl-C to stop)", console=console)
    view.show(site(30), lambda: "latest values:\n  a value")

    def drawn() -> str:
        out = Console(file=io.StringIO(), width=console.width, color_system=None)
        out.print(view._render())
        return str(out.file.getvalue()).rstrip("\n")  # type: ignore[attr-defined]

    small = drawn()
    fits(small, 80, 24)
    assert small.splitlines()[-1] == "(Ctrl-C to stop)"  # the footer always shows
    console.size = (160, 50)  # the window was resized
    large = drawn()
    fits(large, 160, 50)
    assert "latest values:" in large and "NOTES" in large
    assert large.count("\nroute-") > small.count("\nroute-")


def test_backfill_progress_is_reported_until_the_backlog_is_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    progress = BackfillProgress(clock=lambda: now[0])
    progress.recovered("temp-to-alphax", 1000, delivered=0)
    caplog.set_level(logging.INFO, "broker.router")
    progress.tick(lambda route: (600, 400))
    assert not caplog.records  # not due yet
    now[0] += 5.0
    progress.tick(lambda route: (600, 400))
    assert caplog.messages[-1] == (
        "outbox backfill of route temp-to-alphax: 600 of the 1000 the last run left still "
        "to deliver; 400 delivered since the start (80/s, about 8 s left)"
    )
    now[0] += 5.0
    # new traffic keeps the route's pending above 0: the backlog is through all the same
    progress.tick(lambda route: (35, 1000))
    assert caplog.messages[-1].startswith("outbox backfill of route temp-to-alphax done")
    assert progress.routes() == {}
    now[0] += 5.0
    progress.tick(lambda route: (35, 1200))
    assert len(caplog.messages) == 2  # no more lines


def test_odd_snapshots_are_drawn_not_raised() -> None:
    """A snapshot from another version or a damaged answer: drawn as far as it goes."""
    odd: list[dict[str, Any]] = [
        {},
        {"uptime_s": "12", "adapters": {"a": "not a table"}, "routes": []},
        {"adapters": {"a": {"since": "yesterday", "state": None}}, "outbox": {"bytes": None}},
        {"routes": {"r": {"drop_reasons": ["x"], "ledger": "?", "outbox": 3}}, "queues": 7},
        {"routes": {"r": {"ledger": {"received": 10**30, "balanced": False}}}},
    ]
    for snap in odd:
        for width, height in ((80, 24), (160, 50), (30, 5)):
            text = render(snap, width, height)
            assert text.startswith("junction up"), text
            fits(text, width, height)


def test_many_adapters_still_leave_room_for_the_routes() -> None:
    snap = site(2)
    snap["adapters"] = {f"adapter-{i}": adapter("file") for i in range(19)}
    text = render(snap, 80, 24)
    fits(text, 80, 24)
    assert "ROUTE " in text and "route-1" in text and "... " in text
    assert "outbox:" not in text  # no detail while a table is cut
    tiny = render(site(30), 80, 10)
    fits(tiny, 80, 10)
    assert "ROUTE " in tiny and "ADAPTER " in tiny


def test_dlq_replay_shows_a_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from broker import _dlq

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stdout", screen)
    with _dlq._progress_bar(10) as report:
        report(5, 10, 1.0)
    assert "5/10" in screen.getvalue() and "5/s" in screen.getvalue()
    plain = io.StringIO()
    monkeypatch.setattr("sys.stdout", plain)
    with _dlq._progress_bar(10) as report:
        report(5, 10, 1.0)
    assert "queued for replay 5/10 (5/s, about 1 s left)" in plain.getvalue()  # a log, a pipe
