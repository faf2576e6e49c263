"""Secrets are registered by the config loader, for every adapter type: a ``Secret`` field's
value (inline or expanded) is redacted without the adapter registering anything."""

from __future__ import annotations

import secrets
from pathlib import Path

import msgspec
import pytest

from adapters.allxon.codec import PluginCredential, encode_credential
from adapters.allxon.config import AllxonConfig
from adapters.alphax.config import AlphaXConfig
from adapters.placeos.config import PlaceOSConfig
from broker import _logs as logs
from broker._config import AdapterConfig, Secret, loads
from broker._errors import ConfigError

TYPES: dict[str, type[AdapterConfig]] = {
    "alphax": AlphaXConfig,
    "placeos": PlaceOSConfig,
    "allxon": AllxonConfig,
}


def fresh(prefix: str) -> str:
    """A value no other test registered (the registry is process-wide)."""
    return f"{prefix}-{secrets.token_hex(8)}"


def load(text: str) -> None:
    loads(text, "junction.toml", TYPES)


def test_the_alphax_token_and_mqtt_password_are_redacted() -> None:
    token, password = fresh("tok"), fresh("pw")
    assert logs.redact(token) == token  # not known before the load
    load(
        f'[adapters.ax]\ntype = "alphax"\ntoken = "{token}"\n'
        f'[adapters.ax.write]\ntransport = "mqtt"\npassword = "{password}"\n'
    )
    assert logs.redact(f"t={token} p={password}") == "t=*** p=***"


@pytest.mark.parametrize("key", ["api_key", "bearer_token"])
def test_the_placeos_credential_is_redacted(key: str) -> None:
    value = fresh(key)
    load(f'[adapters.pos]\ntype = "placeos"\nurl = "wss://h/x"\n{key} = "{value}"\n')
    assert logs.redact(f"Bearer {value}") == "Bearer ***"


def test_the_allxon_key_of_a_credentials_file_is_redacted(tmp_path: Path) -> None:
    key = fresh("access").replace("-", "")
    path = tmp_path / "plugin_credential.json"
    path.write_bytes(encode_credential(PluginCredential(app_guid="guid-1", access_key=key)))
    load(f'[adapters.ox]\ntype = "allxon"\ncredentials = "{path}"\napp_name = "j"\n')
    assert logs.redact(f"key {key}") == "key ***"


class Inner(msgspec.Struct, kw_only=True):
    secret: Secret = ""
    plain: str = ""


class Outer(AdapterConfig, kw_only=True):
    one: Inner = msgspec.field(default_factory=Inner)
    many: list[Inner] = []
    plain: str = ""


def test_a_secret_inside_a_nested_table_or_list_is_found() -> None:
    a, b, c = fresh("a"), fresh("b"), fresh("c")
    cfg = Outer(
        type="x",
        one=Inner(secret=a, plain=c),
        many=[Inner(secret=b), Inner()],
        plain=c,
    )
    assert sorted(cfg.secrets()) == sorted([a, b])


def test_a_failed_config_registers_nothing() -> None:
    token = fresh("tok")
    with pytest.raises(Exception, match="must be an http"):
        load(f'[adapters.ax]\ntype = "alphax"\ntoken = "{token}"\nread_url = "nope"\n')
    assert logs.redact(token) == token


# --- issue 17, item 9: whole tokens only; short secrets refused --------------------------


def test_redaction_replaces_whole_occurrences_not_parts_of_words() -> None:
    word = f"connect{secrets.token_hex(2)}"  # a secret that reads like a word
    logs.register_secret(word)
    line = f"cannot {word}: {word}ing failed, re{word} later; key={word}&x=1 '{word}'"
    assert logs.redact(line) == (f"cannot ***: {word}ing failed, re{word} later; key=***&x=1 '***'")


def test_a_secret_edged_with_punctuation_is_redacted_wherever_it_appears() -> None:
    token = f"-{secrets.token_hex(6)}+/="
    logs.register_secret(token)
    assert logs.redact(f"x{token}y") == "x***y"  # its own edges are no letters: still it


def test_a_value_shorter_than_eight_characters_is_never_registered() -> None:
    logs.register_secret("conn")  # e.g. a ${PORT}-like value read from the environment
    assert logs.redact("cannot connect: reconnecting") == "cannot connect: reconnecting"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[adapters.p]\ntype = "placeos"\nurl = "wss://h/x"\napi_key = "k3y-5"\n', "api_key"),
        (
            '[adapters.ax]\ntype = "alphax"\ntoken = "abc1234"\n[adapters.ax.write]\n'
            'transport = "http"\n',
            "ax.token",
        ),
    ],
)
def test_a_secret_shorter_than_eight_characters_is_refused_naming_its_key(
    table: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(table)
    (problem,) = [p for p in caught.value.problems if "too short" in p.message]
    assert problem.path.endswith(key)
    assert "use one of at least 8 characters" in str(problem)
    assert "k3y-5" not in str(problem) and "abc1234" not in str(problem)  # value not echoed


def test_allow_short_secrets_accepts_them_with_a_warning_and_does_not_redact_them() -> None:
    # the Node-RED comparison's fixed one-letter token (bench/nodered_flow.toml)
    cfg = loads(
        '[junction]\nallow_short_secrets = true\n[junction.http]\nlisten = "127.0.0.1:0"\n'
        'token = "tok"\n[adapters.ax]\ntype = "alphax"\ntoken = "T"\n'
        '[adapters.ax.write]\ntransport = "http"\n',
        "junction.toml",
        TYPES,
    )
    paths = [w.path for w in cfg.warnings if "allow_short_secrets = true" in w.message]
    assert sorted(paths) == ["adapters.ax.token", "junction.http.token"]
    assert "NOT redacted" in str(cfg.warnings[0])
    assert logs.redact("Token T and tok") == "Token T and tok"


def test_a_short_key_in_an_allxon_credentials_file_is_refused(tmp_path: Path) -> None:
    cred = tmp_path / "cred.json"
    cred.write_bytes(encode_credential(PluginCredential(app_guid=fresh("g"), access_key="k1")))
    with pytest.raises(ConfigError, match="a secret it reads of 2 characters is too short"):
        load(f'[adapters.ax]\ntype = "allxon"\ncredentials = "{cred}"\napp_name = "j"\n')


# --- a credential over clear text to another machine is warned about ----------------------


def warnings_of(text: str) -> list[str]:
    return [str(w) for w in loads(text, "junction.toml", TYPES).warnings]


KEY = 'api_key = "placeos-key-0123"\n'


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("ws://10.1.2.3/api/engine/v2/systems/control", True),
        ("ws://placeos.example.com/api/engine/v2/systems/control", True),
        ("wss://10.1.2.3/api/engine/v2/systems/control", False),
        ("ws://127.0.0.1:8080/api/engine/v2/systems/control", False),
        ("ws://localhost/api/engine/v2/systems/control", False),
        ("ws://[::1]:8080/api/engine/v2/systems/control", False),
    ],
)
def test_placeos_key_over_ws_to_another_host_is_warned_about(url: str, warned: bool) -> None:
    found = warnings_of(f'[adapters.p]\ntype = "placeos"\nurl = "{url}"\n{KEY}')
    assert bool(found) is warned
    if warned:
        (text,) = found
        assert "adapters.p.url: the credential goes to this host unencrypted" in text
        assert url in text and "placeos-key-0123" not in text


def test_alphax_token_over_http_writes_reads_and_mqtt_is_warned_about() -> None:
    base = 'type = "alphax"\ntoken = "alphax-token-0123"\nread_url = "http://reads.example.com"\n'
    found = warnings_of(
        f"[adapters.a]\n{base}[adapters.a.poll]\n"
        '[adapters.a.write]\ntransport = "http"\nbase_url = "http://conduit.example.com"\n'
        f"[adapters.m]\n{base}"
        '[adapters.m.write]\ntransport = "mqtt"\nurl = "mqtt://broker.example.com"\n'
    )
    keys = sorted(w.split(": ")[1] for w in found)
    assert keys == ["adapters.a.read_url", "adapters.a.write.base_url", "adapters.m.write.url"]


def test_check_prints_the_warning_and_still_says_ok(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "site.toml"
    cfg.write_text(
        f'[junction]\nstate_dir = "{tmp_path / "s"}"\n[adapters.p]\ntype = "placeos"\n'
        f'url = "ws://10.9.9.9/api/engine/v2/systems/control"\n{KEY}'
    )
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "warning: " in done.stderr and "adapters.p.url" in done.stderr


# --- redaction with escaping, and while secrets are being registered ----------------------


@pytest.mark.parametrize("before", ["\n", "\t", "\x01", " "])
def test_a_secret_right_after_a_control_character_is_redacted_in_both_formats(
    before: str,
) -> None:
    import json
    import logging

    token = fresh("tokafter")
    logs.register_secret(token)
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "peer said: %s", (f"x{before}{token}",), None
    )
    human = logs.HumanFormatter().format(record)
    machine = json.loads(logs.JsonFormatter().format(record))["msg"]
    assert token not in human and token not in machine
    assert human.endswith("***") and machine.endswith("***")


def test_a_secret_that_json_would_escape_is_redacted_in_the_json_format() -> None:
    import logging

    token = f'pa"ssw\u00f6rd-{secrets.token_hex(4)}'
    logs.register_secret(token)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "login %s", (token,), None)
    record.fields = {"user": token}
    line = logs.JsonFormatter().format(record)
    assert "ssw" not in line  # neither the message nor the field shows any of it


def test_redaction_while_other_threads_register_secrets() -> None:
    import threading

    stop = threading.Event()
    errors: list[BaseException] = []

    def log_lines() -> None:
        while not stop.is_set():
            try:
                logs.redact("a line with nothing secret in it, and a " + "word " * 20)
            except BaseException as err:
                errors.append(err)
                return

    threads = [threading.Thread(target=log_lines) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(60):
        logs.register_secret(fresh(f"rot{i}"))
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


def test_a_secret_file_that_is_not_utf8_is_a_problem_naming_it(tmp_path: Path) -> None:
    secret = tmp_path / "bin.secret"
    secret.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"secret file .*bin.secret' is not UTF-8 text"):
        load(f'[adapters.p]\ntype = "placeos"\nurl = "wss://h/x"\napi_key = "${{file:{secret}}}"\n')
