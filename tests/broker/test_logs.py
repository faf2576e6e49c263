"""LogGate (how many lines a key may log per window), and the formatters' escaping of peer
text."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from broker import _logs as logs
from broker._logs import LogGate


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    return now


def test_one_line_per_window_and_the_next_says_how_many_were_held(clock: list[float]) -> None:
    gate = LogGate(every_s=10.0)
    assert gate.allow("k") == (True, 0)
    assert [gate.allow("k") for _ in range(3)] == [(False, 0)] * 3
    assert gate.allow("other") == (True, 0)  # keys are apart
    clock[0] += 9.9
    assert gate.allow("k") == (False, 0)
    clock[0] += 0.1
    assert gate.allow("k") == (True, 4)
    assert gate.allow("k") == (False, 0)  # the window starts again at the line let through
    clock[0] += 10.0
    assert gate.allow("k") == (True, 1)
    clock[0] += 10.0
    assert gate.allow("k") == (True, 0)


def test_a_budget_of_lines_per_window(clock: list[float]) -> None:
    gate = LogGate(every_s=1.0, per=5)
    assert [gate.allow("k") for _ in range(7)] == [(True, 0)] * 5 + [(False, 0)] * 2
    clock[0] += 0.5
    assert gate.allow("k") == (False, 0)
    clock[0] += 0.5
    assert [gate.allow("k") for _ in range(6)] == [(True, 3)] + [(True, 0)] * 4 + [(False, 0)]


# --- issue 17, item 2: peer text cannot forge lines or drive the terminal ------------------

HOSTILE = "ok\n00:00:00.000 ERROR   junction  forged\r\x1b[31mred\x1b[0m\x00\x07\x9b\u2028end"


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("broker.peer", logging.WARNING, __file__, 1, msg, args, info)


def test_human_format_shows_control_characters_escaped_on_one_line() -> None:
    line = logs.HumanFormatter().format(record("frame from peer: %s", HOSTILE))
    assert "\n" not in line and "\r" not in line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)
    assert line.endswith(
        "frame from peer: ok\\n00:00:00.000 ERROR   junction  forged\\r\\x1b[31mred\\x1b[0m"
        "\\x00\\x07\\x9b\\u2028end"
    )


def test_a_traceback_follows_indented_so_no_line_of_it_starts_a_record() -> None:
    text = logs.HumanFormatter().format(record("adapter crashed", exc=True))
    first, *rest = text.split("\n")
    assert first.endswith("adapter crashed")
    assert rest and all(line.startswith(logs.CONTINUATION) for line in rest)
    assert rest[0] == logs.CONTINUATION + "Traceback (most recent call last):"
    assert "\x1b" not in text and "\\x1b[31mred" in text


def test_json_format_escapes_the_message_and_the_traceback_text() -> None:
    out = json.loads(logs.JsonFormatter().format(record("frame: %s", HOSTILE, exc=True)))
    assert out["msg"] == "frame: " + logs.escape_controls(HOSTILE)
    assert "\n" not in out["msg"] and "\x1b" not in out["msg"]
    assert "\x1b" not in out["exc"] and "\\x1b[31mred" in out["exc"]
    assert out["exc"].startswith("Traceback (most recent call last):\n")  # its own lines kept


def test_text_without_control_characters_is_left_alone() -> None:
    plain = "dead letter: route=r id=1 reason=sink said 'no' — ünïcode fine"
    assert logs.escape_controls(plain) is plain


def test_status_table_shows_a_peers_control_characters_escaped() -> None:
    from broker._status import render

    snap = {
        "uptime_s": 3,
        "adapters": {
            "placeos": {
                "type": "placeos",
                "state": "reconnecting",
                "since": 0,
                "received": 1,
                "sent": 0,
                "restarts": 0,
                "detail": "server said: \x1b]0;owned\x07\nforged line",
            }
        },
    }
    text = render(snap)
    assert "\x1b" not in text and "\x07" not in text
    assert "server said: \\x1b]0;owned\\x07\\nforged line" in text
    assert len(text.splitlines()) == 4  # title, header, its rule, one adapter row
