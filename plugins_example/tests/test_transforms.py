"""The example transforms: unit tests of each, then all three through a real router.

Unit tests call a transform's factory with a route's options and feed it envelopes.
The router tests load a real config with ``broker._runtime.load`` (the plugin found
through its ``junction.plugins`` entry point, not imported by path), read envelopes
from a JSON Lines file with the built-in ``file`` adapter, and check what the
``file`` sinks wrote.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from junction_example import allxon_event, alphax_channel, threshold_alert

from broker import (
    Alert,
    ChannelWrite,
    ConfigError,
    ConfigSetting,
    ConfigUpdate,
    Envelope,
    Event,
    Loaded,
    Metric,
    Runtime,
    StatusChange,
    TransformFn,
    decode,
    encode,
    load,
)

# --- helpers -------------------------------------------------------------------------


def status(subject: str, value: object, source: str = "placeos") -> Envelope:
    """A ``status_change`` as the PlaceOS adapter emits it: subject ``<sys>/<mod>_<idx>/<name>``."""
    system, module_index, name = subject.split("/")
    module, _, index = module_index.rpartition("_")
    body = StatusChange(system=system, module=module, index=int(index), name=name, value=value)
    return Envelope(source=source, subject=subject, body=body)


def config_update(module: str, config: str, **params: object) -> Envelope:
    """A ``config_update`` as the Allxon adapter emits it (subject ``<module>/configs``)."""
    body = ConfigUpdate(module=module, configs=[ConfigSetting(name=config, params=params)])
    return Envelope(source="allxon", subject=f"{module}/configs", body=body)


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def one(fn: TransformFn, env: Envelope) -> Envelope:
    """Apply ``fn`` and insist on exactly one envelope back."""
    out = fn(env)
    assert isinstance(out, Envelope), out
    return out


TEMP = "sys-1/Environment_1/temperature"

# --- placeos_to_allxon_event ---------------------------------------------------------


def test_event_takes_the_status_name_and_renders_values_as_text() -> None:
    fn = allxon_event.make({"module": "room-101"})
    door = status("sys-1/Door_1/door", "open")
    out = one(fn, door)
    assert out.body == Event(module="room-101", name="door", value="open", time=door.ts)
    assert out.subject == "room-101/door"
    assert out.id == door.id  # traceable to the change that caused it
    rendered = {
        21.5: "21.5",
        True: "true",
        None: "null",  # a deleted status
        7: "7",
    }
    for value, text in rendered.items():
        body = one(fn, status("sys-1/Door_1/door", value)).body
        assert isinstance(body, Event) and body.value == text
    booking = one(fn, status("sys-1/Bookings_1/current", {"title": "Standup", "room": 3})).body
    assert isinstance(booking, Event) and booking.value == '{"title":"Standup","room":3}'


def test_event_name_and_value_templates() -> None:
    fn = allxon_event.make(
        {"module": "room-101", "name": "{body.module}-{body.name}", "value": "now {body.value}"}
    )
    env = status("sys-1/Display_1/power", True)
    body = one(fn, env).body
    assert body == Event(module="room-101", name="Display-power", value="now True", time=env.ts)
    fixed = allxon_event.make({"module": "m", "name": "occupancy"})
    assert one(fixed, status("sys-1/Room_1/people", 3)).body.name == "occupancy"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option 'module' is required"),
        ({"module": "m", "nmae": "x"}, "unknown option(s) ['nmae']; did you mean 'name'"),
        ({"module": ""}, "option 'module' must be a non-empty string"),
        ({"module": "m", "name": "{bogus.path}"}, "option 'name' is not a valid template"),
    ],
)
def test_event_bad_options_are_value_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        allxon_event.make(options)
    assert message in str(err.value)


def test_event_refuses_other_kinds() -> None:
    fn = allxon_event.make({"module": "m"})
    metric = Envelope(source="x", body=Metric(module="m", name="t", value=1.0))
    with pytest.raises(ValueError, match="takes status_change envelopes, got metric"):
        fn(metric)


# --- placeos_to_alphax_channel -------------------------------------------------------

CHANNEL_MAP = {
    TEMP: {"network_id": "4106", "channel": 1},
    "sys-1/Sensor_1/co2": {"network_id": 4107, "channel": 3, "scale": 0.001, "offset": 0},
    "sys-1/Display_1/power": {"network_id": "4107", "channel": 32},
}


def test_channel_write_from_the_map_with_scaling() -> None:
    fn = alphax_channel.make({"map": CHANNEL_MAP, "offset": 273.15, "round": 2})
    env = status(TEMP, 21.5)
    out = one(fn, env)
    assert out.body == ChannelWrite(network_id="4106", channel=1, value=294.65, timestamp=env.ts)
    assert out.subject == "4106/1" and out.id == env.id
    # an entry's own scale/offset win over the route-wide ones; a bare network_id number
    # becomes the id text
    co2 = one(fn, status("sys-1/Sensor_1/co2", 850)).body
    assert isinstance(co2, ChannelWrite)
    assert (co2.network_id, co2.channel, co2.value) == ("4107", 3, 0.85)


def test_channel_booleans_are_one_and_zero() -> None:
    fn = alphax_channel.make({"map": CHANNEL_MAP})
    on = one(fn, status("sys-1/Display_1/power", True)).body
    off = one(fn, status("sys-1/Display_1/power", False)).body
    assert isinstance(on, ChannelWrite) and isinstance(off, ChannelWrite)
    assert (on.value, off.value, on.channel) == (1.0, 0.0, 32)


def test_channel_unmapped_subject_is_filtered_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fn = alphax_channel.make({"map": CHANNEL_MAP})
    with caplog.at_level(logging.INFO, logger="junction_example.alphax_channel"):
        assert fn(status("sys-1/Environment_1/humidity", 40)) is None
        assert fn(status("sys-1/Environment_1/humidity", 41)) is None
    notes = [r.getMessage() for r in caplog.records if "humidity" in r.getMessage()]
    assert len(notes) == 1 and "not in the channel map" in notes[0]
    strict = alphax_channel.make({"map": CHANNEL_MAP, "unmapped": "error"})
    with pytest.raises(ValueError, match="humidity' is not in the channel map"):
        strict(status("sys-1/Environment_1/humidity", 40))


def test_channel_unmapped_logging_stops_after_a_cap(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alphax_channel, "_LOG_SUBJECTS_MAX", 2)
    fn = alphax_channel.make({"map": CHANNEL_MAP})
    with caplog.at_level(logging.INFO, logger="junction_example.alphax_channel"):
        for i in range(5):
            assert fn(status(f"sys-1/Extra_{i}/x", 1)) is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "over 2 unmapped subjects; no longer logging each one" in messages[2]


def test_channel_non_numeric_raises_and_deleted_is_filtered() -> None:
    fn = alphax_channel.make({"map": CHANNEL_MAP})
    with pytest.raises(ValueError, match=r"temperature: value 'warm' is not a number"):
        fn(status(TEMP, "warm"))
    for bad in (math.nan, [1, 2], {"v": 1}, 10**400):
        with pytest.raises(ValueError, match="is not a number"):
            fn(status(TEMP, bad))
    assert fn(status(TEMP, None)) is None
    with pytest.raises(ValueError, match="takes status_change envelopes, got metric"):
        fn(Envelope(source="x", subject=TEMP, body=Metric(module="m", name="t", value=1.0)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option 'map' is required"),
        ({"map": {}}, "names no subject"),
        ({"map": CHANNEL_MAP, "sacle": 2}, "did you mean 'scale'"),
        ({"map": CHANNEL_MAP, "scale": "2"}, "option 'scale' must be a number"),
        ({"map": CHANNEL_MAP, "round": 1.5}, "option 'round' must be a whole number"),
        ({"map": CHANNEL_MAP, "unmapped": "skip"}, "must be one of ['drop', 'error']"),
        ({"map": {TEMP: 5}}, f"map.{TEMP!r} must be a table"),
        ({"map": {TEMP: {"network_id": "1", "channel": 0}}}, "channel must be 1..32, got 0"),
        ({"map": {TEMP: {"network_id": "1", "channel": 33}}}, "channel must be 1..32, got 33"),
        ({"map": {TEMP: {"network_id": "1", "channel": True}}}, "channel must be a whole number"),
        ({"map": {TEMP: {"channel": 1}}}, "network_id must be a device id"),
        ({"map": {TEMP: {"network_id": "1", "channel": 1, "chanel": 2}}}, "did you mean"),
        ({"map": {TEMP: {"network_id": "1", "channel": 1, "scale": True}}}, "'scale' must be"),
    ],
)
def test_channel_bad_options_are_value_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        alphax_channel.make(options)
    assert message in str(err.value)


# --- threshold_alert -----------------------------------------------------------------

ALERT_OPTIONS: dict[str, Any] = {
    "module": "room-101",
    "alarm": "too_hot",
    "above": 26.0,
    "hysteresis": 0.5,
    "message": "{subject} {action} at {value:.1f} (limit {threshold:g})",
    "config": "thresholds",
    "param": "too_hot_above",
}


def actions(fn: TransformFn, subject: str, values: list[float]) -> list[str | None]:
    """The alert action (or None) for each value fed in order."""
    out = []
    for v in values:
        result = fn(status(subject, v))
        assert result is None or isinstance(result, Envelope)
        out.append(result.body.action if result is not None else None)  # type: ignore[union-attr]
    return out


def test_alert_triggers_above_and_resolves_below_the_hysteresis_band() -> None:
    fn = threshold_alert.make(dict(ALERT_OPTIONS))
    seen = actions(fn, TEMP, [25.0, 26.0, 26.1, 27.0, 25.6, 25.5, 25.4, 25.9, 26.2])
    # 26.0 is not above; 25.6 and 25.5 are inside the band; 25.4 is below 25.5
    assert seen == [None, None, "trigger", None, None, None, "resolve", None, "trigger"]
    env = status(TEMP, 30.25)
    fresh = threshold_alert.make(dict(ALERT_OPTIONS))
    out = one(fresh, env)
    assert out.body == Alert(
        module="room-101",
        alarm="too_hot",
        action="trigger",
        message=f"{TEMP} trigger at 30.2 (limit 26)",
        time=env.ts,
    )
    assert out.subject == "room-101/too_hot" and out.id == env.id


def test_alert_state_is_per_subject_and_takes_metrics() -> None:
    fn = threshold_alert.make(dict(ALERT_OPTIONS, hysteresis=0))
    other = "sys-1/Environment_2/temperature"
    assert actions(fn, TEMP, [27.0]) == ["trigger"]
    assert actions(fn, other, [27.0, 25.9]) == ["trigger", "resolve"]
    assert actions(fn, TEMP, [26.5, 25.9]) == [None, "resolve"]
    metric = Envelope(source="allxon", subject="m/t", body=Metric(module="m", name="t", value=99))
    assert one(fn, metric).body.action == "trigger"  # type: ignore[union-attr]


def test_alert_threshold_follows_config_updates(caplog: pytest.LogCaptureFixture) -> None:
    fn = threshold_alert.make(dict(ALERT_OPTIONS))
    assert actions(fn, TEMP, [26.4]) == ["trigger"]
    with caplog.at_level(logging.INFO, logger="junction_example.threshold_alert"):
        assert fn(config_update("room-101", "thresholds", too_hot_above=" 28.5 ")) is None
    assert "threshold 26 -> 28.5 (Allxon config room-101/thresholds.too_hot_above)" in caplog.text
    assert actions(fn, TEMP, [27.9, 28.4, 28.6]) == ["resolve", None, "trigger"]
    # numbers work as well as strings; other modules, cards and params are not ours
    assert fn(config_update("room-101", "thresholds", too_hot_above=30)) is None
    assert fn(config_update("room-102", "thresholds", too_hot_above=1)) is None
    assert fn(config_update("room-101", "limits", too_hot_above=1)) is None
    assert fn(config_update("room-101", "thresholds", too_cold_below=1)) is None
    assert actions(fn, TEMP, [29.4, 30.5]) == ["resolve", "trigger"]
    with pytest.raises(ValueError, match=r"too_hot_above = 'hot' is not a number.*stays 30"):
        fn(config_update("room-101", "thresholds", too_hot_above="hot"))
    with pytest.raises(ValueError, match="is not a number"):
        fn(config_update("room-101", "thresholds", too_hot_above=True))
    assert actions(fn, TEMP, [29.4]) == ["resolve"]  # still 30 after the refused updates


def test_alert_config_module_names_where_the_card_lives() -> None:
    fn = threshold_alert.make(dict(ALERT_OPTIONS, config_module="site"))
    assert fn(config_update("room-101", "thresholds", too_hot_above=10)) is None
    assert actions(fn, TEMP, [20.0]) == [None]
    assert fn(config_update("site", "thresholds", too_hot_above=10)) is None
    assert actions(fn, TEMP, [20.0]) == ["trigger"]


def test_alert_refuses_what_it_cannot_judge() -> None:
    fn = threshold_alert.make({"module": "m", "alarm": "a", "above": 1})
    assert fn(status(TEMP, None)) is None  # a deleted status
    with pytest.raises(ValueError, match="value 'hot' is not a number to compare"):
        fn(status(TEMP, "hot"))
    with pytest.raises(ValueError, match="value True is not a number"):
        fn(status(TEMP, True))
    with pytest.raises(ValueError, match="got event"):
        fn(Envelope(source="x", body=Event(module="m", name="e")))
    with pytest.raises(ValueError, match="has no 'config' and 'param' options"):
        fn(config_update("m", "thresholds", too_hot_above=3))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"above": None}, "option 'above' must be a number"),
        ({"above": "26"}, "option 'above' must be a number"),
        ({"hysteresis": -1}, "option 'hysteresis' must be at least 0.0"),
        ({"message": "{room} is hot"}, "unknown placeholder {room}"),
        ({"message": "{value:q}"}, "option 'message' is not a valid template"),
        ({"message": "{} hot"}, "option 'message' is not a valid template"),
        ({"param": None}, "option 'param' must be a non-empty string"),
        ({"abov": 3}, "did you mean 'above' for 'abov'?"),
    ],
)
def test_alert_bad_options_are_value_errors(changes: dict[str, Any], message: str) -> None:
    options = dict(ALERT_OPTIONS, **changes)
    with pytest.raises(ValueError) as err:
        threshold_alert.make(options)
    assert message in str(err.value)


def test_alert_option_pairs() -> None:
    base = {"module": "m", "alarm": "a", "above": 1}
    with pytest.raises(ValueError, match="'config' and 'param' go together"):
        threshold_alert.make(dict(base, config="c"))
    with pytest.raises(ValueError, match="'config_module' needs 'config' and 'param'"):
        threshold_alert.make(dict(base, config_module="site"))
    with pytest.raises(ValueError, match="option 'alarm' is required"):
        threshold_alert.make({"module": "m", "above": 1})


# --- registration --------------------------------------------------------------------

NAMES = ["placeos_to_allxon_event", "placeos_to_alphax_channel", "threshold_alert"]


def test_plugin_is_registered_through_its_entry_point(write_config: Callable[..., str]) -> None:
    eps = importlib.metadata.entry_points(group="junction.plugins")
    ours = [ep for ep in eps if ep.name == "example"]
    assert [ep.value for ep in ours] == ["junction_example.plugin"], (
        "pip install -e plugins_example"
    )
    loaded = load(write_config("")).plugins
    assert "example" in loaded.names()
    assert {n: loaded.transforms[n].plugin for n in NAMES} == dict.fromkeys(NAMES, "example")


def test_junction_plugins_command_lists_the_plugin() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "broker.cli", "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"  example\n    transforms:    {', '.join(NAMES)}\n" in out.stdout


# --- through a real router -----------------------------------------------------------

BRIDGE = """
[adapters.site]            # one file stands in for PlaceOS and Allxon: one file keeps order
type = "file"
path = "{inbox}"
read = true
write = false

[adapters.events]
type = "file"
path = "{dir}/events.jsonl"
[adapters.channels]
type = "file"
path = "{dir}/channels.jsonl"
[adapters.alerts]
type = "file"
path = "{dir}/alerts.jsonl"
[adapters.dlq]
type = "file"
path = "{dir}/dead.jsonl"

[[routes]]
name = "door-events"
from = "site"
kind = "status_change"
match = {{ "body.name" = {{ in = ["door", "current"] }} }}
to = "events"
transforms = [{{ name = "placeos_to_allxon_event", options = {{ module = "room-101" }} }}]

[[routes]]
name = "to-alphax"
from = "site"
kind = "status_change"
to = "channels"
[[routes.transforms]]
name = "placeos_to_alphax_channel"
[routes.transforms.options.map]
"sys-1/Environment_1/temperature" = {{ network_id = "4106", channel = 1 }}
"sys-1/Environment_1/mode" = {{ network_id = "4106", channel = 2 }}
"sys-1/Display_1/power" = {{ network_id = 4107, channel = 1 }}

[[routes]]
name = "too-hot"
from = "site"
kind = ["status_change", "config_update"]
match = {{ subject = {{ in = ["sys-1/Environment_1/temperature", "room-101/configs"] }} }}
to = "alerts"
[[routes.transforms]]
name = "threshold_alert"
[routes.transforms.options]
module = "room-101"
alarm = "too_hot"
above = 26.0
hysteresis = 0.5
message = "{{subject}} at {{value:.1f}}"
config = "thresholds"
param = "too_hot_above"
"""


def read_lines(path: Path) -> list[Envelope]:
    if not path.exists():
        return []
    return [decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_all_three_transforms_run_through_a_real_router(
    tmp_path: Path,
    write_config: Callable[..., str],
    run_runtime: Callable[[Loaded], Runtime],
) -> None:
    inbox = tmp_path / "inbox.jsonl"
    script = [
        status("sys-1/Door_1/door", "open"),
        status(TEMP, 25.0),
        status(TEMP, 26.4),  # trigger
        status("sys-1/Display_1/power", True),
        status("sys-1/Environment_1/humidity", 40),  # unmapped: filtered
        status("sys-1/Environment_1/mode", "eco"),  # mapped but not a number: dead letter
        status("sys-1/Bookings_1/current", {"title": "Standup"}),
        config_update("room-101", "thresholds", too_hot_above="28"),
        status(TEMP, 25.8),  # resolve (under 28 - 0.5)
        status(TEMP, 27.9),  # under the new threshold: nothing
        status(TEMP, 28.3),  # trigger
    ]
    inbox.write_bytes(b"".join(encode(e) + b"\n" for e in script))
    path = write_config(BRIDGE.format(inbox=inbox, dir=tmp_path), settings='dead_letter = "dlq"')
    loaded = load(path)
    assert "example" in loaded.plugins.names()
    assert loaded.plugins.transforms["threshold_alert"].plugin == "example"

    rt = run_runtime(loaded)
    files = {n: tmp_path / f"{n}.jsonl" for n in ("events", "channels", "alerts", "dead")}
    want = {"events": 2, "channels": 6, "alerts": 3, "dead": 1}
    wait_until(
        lambda: {n: len(read_lines(p)) for n, p in files.items()} == want,
        what=f"sink line counts {want}",
    )
    routes = rt.snapshot()["routes"]
    counts = {
        name: {k: routes[name][k] for k in ("matched", "filtered", "dead_lettered")}
        for name in ("door-events", "to-alphax", "too-hot")
    }
    assert counts == {
        "door-events": {"matched": 2, "filtered": 0, "dead_lettered": 0},
        "to-alphax": {"matched": 10, "filtered": 3, "dead_lettered": 1},
        "too-hot": {"matched": 6, "filtered": 3, "dead_lettered": 0},
    }
    rt.stop(grace_s=2)

    events = [e.body for e in read_lines(files["events"])]
    assert [(b.name, b.value) for b in events if isinstance(b, Event)] == [
        ("door", "open"),
        ("current", '{"title":"Standup"}'),
    ]
    writes = [e.body for e in read_lines(files["channels"])]
    assert [(w.network_id, w.channel, w.value) for w in writes if isinstance(w, ChannelWrite)] == [
        ("4106", 1, 25.0),
        ("4106", 1, 26.4),
        ("4107", 1, 1.0),
        ("4106", 1, 25.8),
        ("4106", 1, 27.9),
        ("4106", 1, 28.3),
    ]
    alerts = [e.body for e in read_lines(files["alerts"])]
    assert [(a.action, a.message) for a in alerts if isinstance(a, Alert)] == [
        ("trigger", f"{TEMP} at 26.4"),
        ("resolve", f"{TEMP} at 25.8"),
        ("trigger", f"{TEMP} at 28.3"),
    ]
    (dead,) = read_lines(files["dead"])
    assert dead.subject == "sys-1/Environment_1/mode"
    assert dead.headers["x-dead-letter-route"] == "to-alphax"
    assert "value 'eco' is not a number" in dead.headers["x-dead-letter-reason"]


def test_bad_route_option_is_a_config_error_with_its_path(
    write_config: Callable[..., str],
) -> None:
    path = write_config("""
[adapters.src]
type = "file"
path = "-"
read = true
write = false
[adapters.out]
type = "file"
path = "-"
[[routes]]
name = "too-hot"
from = "src"
to = "out"
transforms = [{ name = "threshold_alert", options = { module = "m", alarm = "a", abov = 26 } }]
""")
    with pytest.raises(ConfigError) as err:
        load(path)
    (problem,) = err.value.problems
    assert problem.path == "routes[0].transforms[0].options"
    assert "transform 'threshold_alert' rejected its options" in problem.message
    assert "unknown option(s) ['abov']; did you mean 'above' for 'abov'?" in problem.message
