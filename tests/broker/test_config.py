"""Every class of config error names the file, the TOML path, the value and a hint."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import _logs as logs
from broker._errors import ConfigError
from broker._runtime import Loaded


def problems(load_config: Callable[[str], Loaded], text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert info.value.exit_code == 2
    return [str(p) for p in info.value.problems]


GOOD = """
[adapters.src]
type = "burst"
[adapters.sink]
type = "collector"
[[routes]]
name = "r"
from = "src"
to = "sink"
"""


def test_valid_config_loads(load_config: Callable[[str], Loaded]) -> None:
    loaded = load_config(GOOD)
    assert set(loaded.config.adapters) == {"src", "sink"}
    assert [r.name for r in loaded.table.routes] == ["r"]


def test_toml_syntax_error_names_line_and_column(load_config: Callable[[str], Loaded]) -> None:
    (msg,) = problems(load_config, "[adapters.src\ntype = 1\n")
    assert "junction.toml" in msg and "TOML syntax error" in msg and "line" in msg


def test_unknown_key_suggests_the_nearest(load_config: Callable[[str], Loaded]) -> None:
    (msg,) = problems(load_config, GOOD.replace('type = "burst"', 'type = "burst"\ncont = 5'))
    assert "adapters.src.cont: unknown key" in msg
    assert "did you mean 'count'?" in msg


def test_unknown_key_in_route_and_settings(load_config: Callable[[str], Loaded]) -> None:
    text = "[junction]\nqueue_sise = 5\n" + GOOD.replace(
        'to = "sink"', 'to = "sink"\noverflw = "block"'
    )
    msgs = problems(load_config, text)
    assert any("junction.queue_sise: unknown key; did you mean 'queue_size'?" in m for m in msgs)
    assert any("routes[0].overflw: unknown key; did you mean 'overflow'?" in m for m in msgs)


def test_wrong_type_shows_path_and_value(load_config: Callable[[str], Loaded]) -> None:
    (msg,) = problems(load_config, GOOD.replace('type = "burst"', 'type = "burst"\ncount = "lots"'))
    assert "adapters.src.count: expected int, not str (got 'lots')" in msg


def test_bad_enum_value_lists_choices(load_config: Callable[[str], Loaded]) -> None:
    (msg,) = problems(load_config, GOOD + 'overflow = "blok"\n')
    assert "routes[0].overflow: must be one of block, drop_oldest, drop_newest" in msg
    assert "did you mean 'block'?" in msg


def test_missing_env_var_is_named(
    load_config: Callable[[str], Loaded], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JUNCTION_TEST_NOPE", raising=False)
    text = GOOD.replace(
        'type = "collector"', 'type = "collector"\ndescription = "${JUNCTION_TEST_NOPE}"'
    )
    msgs = problems(load_config, text)
    assert any(
        "environment variable JUNCTION_TEST_NOPE is not set" in m
        and "adapters.sink.description" in m
        for m in msgs
    )


def test_env_var_and_secret_file_are_expanded_and_redacted(
    write_config: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker import _config as config
    from tests.support.core_plugin import BurstConfig

    secret_file = tmp_path / "token"
    secret_file.write_text("file-secret-value\n")
    monkeypatch.setenv("JUNCTION_TEST_PREFIX", "env-secret-value")
    path = write_config(
        '[adapters.src]\ntype = "burst"\nname_prefix = "${JUNCTION_TEST_PREFIX}"\n'
        f'[adapters.other]\ntype = "burst"\nname_prefix = "${{file:{secret_file}}}"\n'
    )
    cfg = config.load(path, {"burst": BurstConfig})
    assert cfg.adapters["src"].name_prefix == "env-secret-value"  # type: ignore[attr-defined]
    assert cfg.adapters["other"].name_prefix == "file-secret-value"  # type: ignore[attr-defined]
    assert logs.redact("token=env-secret-value&x=file-secret-value") == "token=***&x=***"


def test_missing_secret_file_is_named(load_config: Callable[[str], Loaded], tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    msgs = problems(
        load_config,
        GOOD.replace('type = "burst"', f'type = "burst"\nname_prefix = "${{file:{missing}}}"'),
    )
    assert any(
        f"cannot read secret file '{missing}'" in m and "adapters.src.name_prefix" in m
        for m in msgs
    )


def test_unknown_adapter_type_suggests(load_config: Callable[[str], Loaded]) -> None:
    msgs = problems(load_config, GOOD.replace('type = "collector"', 'type = "colector"'))
    assert any(
        "adapters.sink.type: unknown adapter type (got 'colector'); did you mean 'collector'?" in m
        for m in msgs
    )


def test_route_to_unknown_adapter_suggests(load_config: Callable[[str], Loaded]) -> None:
    (msg,) = problems(load_config, GOOD.replace('to = "sink"', 'to = "snk"'))
    assert "routes[0].to: unknown adapter (got 'snk'); did you mean 'sink'?" in msg


def test_route_with_unknown_transform_suggests(load_config: Callable[[str], Loaded]) -> None:
    (msg,) = problems(load_config, GOOD + 'transforms = ["celsius_to_kelvn"]\n')
    assert "routes[0].transforms[0]: unknown transform (got 'celsius_to_kelvn')" in msg
    assert "did you mean 'celsius_to_kelvin'?" in msg


def test_transform_options_are_checked(load_config: Callable[[str], Loaded]) -> None:
    (msg,) = problems(
        load_config, GOOD + 'transforms = [{ name = "throttle", options = { per_s = -1 } }]\n'
    )
    assert "routes[0].transforms[0].options" in msg and "per_s must be a number > 0" in msg


def test_unknown_kind_and_bad_match_and_bad_map(load_config: Callable[[str], Loaded]) -> None:
    text = GOOD + 'kind = "metrc"\n'
    (msg,) = problems(load_config, text)
    assert "routes[0].kind: unknown body kind (got 'metrc'); did you mean 'metric'?" in msg
    (msg,) = problems(load_config, GOOD + 'match = { "body.value" = { gte = 3 } }\n')
    assert "unknown operator(s) ['gte']" in msg
    (msg,) = problems(load_config, GOOD + 'kind = "metric"\nmap = { valu = 1 }\n')
    assert (
        "routes[0].map.valu: metric has no field 'valu'" in msg and "did you mean 'value'?" in msg
    )
    (msg,) = problems(load_config, GOOD + 'match = { "bdy.value" = 1 }\n')
    assert "unknown path 'bdy.value'" in msg


def test_duplicate_route_names_and_all_problems_reported(
    load_config: Callable[[str], Loaded],
) -> None:
    text = GOOD + '[[routes]]\nname = "r"\nfrom = "nope"\nto = "sink"\n'
    msgs = problems(load_config, text)
    assert any("routes[1].name: duplicate route name" in m for m in msgs)
    assert any("routes[1].from: unknown adapter (got 'nope')" in m for m in msgs)


def test_missing_file(load_config: Callable[[str], Loaded], tmp_path: Path) -> None:
    from broker._runtime import load

    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "absent.toml"))
    assert "absent.toml: cannot read the file" in str(info.value)


def test_env_default_is_used_when_unset(
    write_config: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker import _config as config
    from tests.support.core_plugin import BurstConfig

    monkeypatch.delenv("JUNCTION_TEST_UNSET", raising=False)
    monkeypatch.setenv("JUNCTION_TEST_SET", "from-env")
    path = write_config(
        '[adapters.a]\ntype = "burst"\nname_prefix = "${JUNCTION_TEST_UNSET:-fallback}"\n'
        '[adapters.b]\ntype = "burst"\nname_prefix = "${JUNCTION_TEST_SET:-fallback}"\n'
    )
    cfg = config.load(path, {"burst": BurstConfig})
    assert cfg.adapters["a"].name_prefix == "fallback"  # type: ignore[attr-defined]
    assert cfg.adapters["b"].name_prefix == "from-env"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("table", "key", "value", "words"),
    [
        ("junction", "shutdown_grace_s", "-5", "must be >= 0"),
        ("junction", "queue_size", "0", "must be >= 1"),
        ("junction", "block_timeout_s", "-1", "must be >= 0"),
        ("junction", "restart_backoff_s", "0", "must be > 0"),
        ("junction", "restart_backoff_max_s", "-1", "must be > 0"),
        ("junction", "reply_timeout_s", "0", "must be > 0"),
        ("junction", "switch_interval_ms", "-0.5", "must be >= 0"),
        ("junction.redelivery", "attempts", "0", "must be >= 1"),
        ("junction.redelivery", "backoff_initial_s", "0", "must be > 0"),
        ("junction.redelivery", "backoff_max_s", "-2", "must be > 0"),
        ("junction.redelivery", "stale_after_s", "0", "must be > 0"),
        ("junction.outbox", "max_rows", "0", "must be >= 1"),
        ("junction.outbox", "max_bytes", "-1", "must be >= 1"),
        ("junction.outbox", "max_dead_letters", "0", "must be >= 1"),
        ("junction.http", "ready_max_pending_age_s", "0", "must be > 0"),
    ],
)
def test_settings_bounds_name_file_key_and_value(
    load_config: Callable[[str], Loaded], table: str, key: str, value: str, words: str
) -> None:
    (msg,) = problems(load_config, f"[{table}]\n{key} = {value}\n" + GOOD)
    assert msg.endswith(f"junction.toml: {table}.{key}: {words} (got {value})")


@pytest.mark.parametrize(
    ("line", "path", "words"),
    [
        ("queue_size = 0", "routes[0].queue_size", "must be >= 1 (got 0)"),
        ("reply_timeout_s = -1", "routes[0].reply_timeout_s", "must be > 0 (got -1)"),
        (
            "redelivery = { attempts = 0 }",
            "routes[0].redelivery.attempts",
            "must be >= 1 (got 0)",
        ),
        (  # the one bound that spans two keys
            "redelivery = { backoff_initial_s = 5.0, backoff_max_s = 1.0 }",
            "routes[0].redelivery.backoff_initial_s",
            "must be at most backoff_max_s (got 5.0)",
        ),
    ],
)
def test_route_bounds_name_their_path(
    load_config: Callable[[str], Loaded], line: str, path: str, words: str
) -> None:
    (msg,) = problems(load_config, GOOD + line + "\n")
    assert f"{path}: {words}" in msg


def test_within_bounds_loads(load_config: Callable[[str], Loaded]) -> None:
    text = "[junction]\nshutdown_grace_s = 0\nblock_timeout_s = 0\nswitch_interval_ms = 0\n"
    settings = load_config(text + GOOD).config.junction
    assert (settings.shutdown_grace_s, settings.block_timeout_s) == (0, 0)


def test_a_state_dir_that_cannot_be_created_is_a_config_error_naming_it(
    tmp_path: Path, load_config: Callable[[str], Loaded]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    (msg,) = problems(load_config, f'[junction]\nstate_dir = "{blocker}/state"\n' + GOOD)
    assert "junction.state_dir: cannot be created:" in msg
    assert f"{blocker} is a file, not a directory" in msg


def test_check_and_run_refuse_such_a_state_dir_without_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[junction]\nstate_dir = "{blocker}/state"\n', encoding="utf-8")
    for command in ("check", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", command, str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (command, done.stderr)
        assert "junction.state_dir: cannot be created" in done.stderr
        assert "Traceback" not in done.stderr


def test_check_refuses_a_file_sink_whose_directory_cannot_be_made(tmp_path: Path) -> None:
    """`run` used to crash-loop on it, dead-lettering every envelope (issue 17, item 4)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        f'[junction]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[adapters.out]\ntype = "file"\npath = "{blocker}/out/x.jsonl"\n'
        f'[adapters.src]\ntype = "file"\nread = true\nwrite = false\npath = "{tmp_path}/none"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"adapters.out: path '{blocker}/out/x.jsonl': its directory cannot be created" in (
        done.stderr
    )
    assert f"adapters.src: path '{tmp_path}/none' is not a file to read" in done.stderr
    assert "Traceback" not in done.stderr


def junction_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``junction ARGS`` in a fresh interpreter, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, timeout=60
    )


def gen_to_file(state: Path, out: Path, extra: str = "") -> str:
    """A config: a generator of metrics routed to a file sink (``extra``: route keys)."""
    return (
        f'[junction]\nstate_dir = "{state}"\n'
        '[adapters.gen]\ntype = "generator"\nkind = "metric"\n'
        'body = { module = "m", name = "n", value = 1.0 }\nrate = 50\ncount = 5\n'
        f'[adapters.out]\ntype = "file"\npath = "{out}"\n'
        f'[[routes]]\nname = "r"\nfrom = "gen"\nto = "out"\n{extra}'
    )


def test_a_file_sink_creates_its_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    out = tmp_path / "new" / "deeper" / "out.jsonl"
    cfg.write_text(gen_to_file(tmp_path / "state", out), encoding="utf-8")
    done = junction_cli("run", str(cfg), "--duration", "2")
    assert done.returncode == 0, done.stderr
    assert out.read_text().count("\n") == 5


@pytest.mark.parametrize("command", ["check", "run", "status", "dlq"])
def test_a_config_that_is_not_utf8_is_one_line_not_a_traceback(
    command: str, tmp_path: Path
) -> None:
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes(b'[junction]\nstate_dir = "caf\xe9"\n')
    args = [command, "list", str(cfg)] if command == "dlq" else [command, str(cfg)]
    done = junction_cli(*args)
    assert done.returncode == 2, done.stderr
    assert f"{cfg}: not UTF-8 text (at byte 27); save it as UTF-8" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_on_a_file_that_is_no_outbox_says_so_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(bytes(range(256)) * 16)  # 4 KiB, no SQLite header
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        gen_to_file(state, tmp_path / "out.jsonl", 'overflow = "persist"\n'), encoding="utf-8"
    )
    done = junction_cli("run", str(cfg), "--duration", "2")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"junction run: outbox {state / 'outbox.sqlite3'}: file is not a database" in done.stderr
    assert "move it aside" in done.stderr
    assert (state / "outbox.sqlite3").read_bytes() == bytes(range(256)) * 16  # untouched


@pytest.mark.parametrize(
    "table",
    [
        '[adapters.ax]\ntype = "alphax"\ntoken = "alphax-token-1"\nca_file = "{missing}"\n',
        '[adapters.p]\ntype = "placeos"\nurl = "wss://h/api/engine/v2/systems/control"\n'
        'api_key = "placeos-key-1"\nca_file = "{missing}"\n',
    ],
)
def test_a_ca_file_that_is_not_there_is_refused_by_check(
    table: str, tmp_path: Path, load_config: Callable[[str], Loaded]
) -> None:
    """It used to pass check and fail at the first TLS connection, every reconnect."""
    missing = tmp_path / "nope.pem"
    (msg,) = problems(load_config, table.format(missing=missing))
    assert f"ca_file '{missing}' is not a file" in msg
