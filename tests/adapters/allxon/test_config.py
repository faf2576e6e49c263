"""The ``allxon`` config: card rules reported with their TOML paths, credentials, TLS rules."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from adapters.allxon.codec import PluginCredential, encode_credential
from adapters.allxon.config import AllxonConfig, is_loopback
from adapters.allxon.connection import ssl_context_for
from broker import cli
from broker._config import loads
from broker._errors import ConfigError, ConfigProblem

TYPES = {"allxon": AllxonConfig}
KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def cred(tmp_path: Path) -> Path:
    path = tmp_path / "plugin_credential.json"
    path.write_bytes(encode_credential(PluginCredential(app_guid="7f1e0c52-guid", access_key=KEY)))
    return path


def text(cred: Path | None, body: str = "", cards: str = "") -> str:
    credentials = f'credentials = "{cred}"' if cred is not None else ""
    return f"""
[adapters.allxon]
type = "allxon"
{credentials}
app_name = "junction"
{body}
{cards}
"""


def problems_of(source: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        loads(source, "junction.toml", TYPES)
    return info.value.problems


GOOD_CARDS = """
[[adapters.allxon.modules]]
moduleName = "room"
states = [{ name = "power", displayType = "string" }]
metrics = [{ name = "temp", displayType = "temperature" }]
[[adapters.allxon.modules.commands]]
name = "reboot"
params = [{ name = "at", displayType = "datetime", displayFormat = "HH:MM", required = true }]
"""


def test_a_valid_declaration_loads_with_the_documented_defaults(cred: Path) -> None:
    config = loads(text(cred, cards=GOOD_CARDS), "junction.toml", TYPES)
    allxon = config.adapters["allxon"]
    assert isinstance(allxon, AllxonConfig)
    assert allxon.url == "wss://127.0.0.1:55688"
    assert (allxon.budget_per_hour, allxon.command_timeout_s) == (500, 45.0)
    assert allxon.credential().app_guid == "7f1e0c52-guid"
    params = allxon.update_params("7f1e0c52-guid", "1700000000")
    assert params.modules[0].commands[0].params[0].display_format == "HH:MM"
    assert params.type == "ib" and params.sdk == "3.4.2"


def test_a_card_error_is_reported_at_its_toml_path_with_the_others_listed(cred: Path) -> None:
    cards = """
[[adapters.allxon.modules]]
moduleName = "room"
[[adapters.allxon.modules.commands]]
name = "ok"
[[adapters.allxon.modules.commands]]
name = "reboot"
params = [{ name = "at", displayType = "datetime" }]
[[adapters.allxon.modules]]
moduleName = "hall"
metrics = [{ name = "flow", displayType = "custom" }]
"""
    (problem,) = problems_of(text(cred, cards=cards))
    assert problem.path == "adapters.allxon.modules[0].commands[1].params[0].displayFormat"
    assert "datetime needs displayFormat" in problem.message
    assert (
        "[and 1 more card problem(s): modules[1].metrics[0].displayUnit: required for custom "
        "(missing)]" in problem.message
    )
    assert str(problem).startswith("junction.toml: adapters.allxon.modules[0].commands[1]")


def test_identity_errors_point_at_the_config_keys(cred: Path) -> None:
    (problem,) = problems_of(text(cred, 'version = "1.0"'))
    assert problem.path == "adapters.allxon.version"
    assert problem.value == "1.0"  # broker._config found the value in the file


def test_a_misspelt_card_key_is_an_error_with_a_suggestion(cred: Path) -> None:
    cards = """
[[adapters.allxon.modules]]
moduleName = "room"
[[adapters.allxon.modules.commands]]
name = "reboot"
params = [{ name = "at", displayType = "datetime", displayFromat = "HH:MM" }]
"""
    (problem,) = problems_of(text(cred, cards=cards))
    assert problem.path == "adapters.allxon.modules[0].commands[0].params[0].displayFromat"
    assert problem.message == "unknown key" and "displayFormat" in problem.hint


def test_an_inline_access_key_is_refused_and_a_reference_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inline = f'app_guid = "g-1"\naccess_key = "{KEY[::-1]}"'
    (problem,) = problems_of(text(None, inline))
    assert problem.path == "adapters.allxon.access_key" and "inline" in problem.message
    monkeypatch.setenv("TEST_ALLXON_KEY", "fedcba9876543210fedcba9876543210")
    config = loads(
        text(None, 'app_guid = "g-1"\naccess_key = "${TEST_ALLXON_KEY}"'), "junction.toml", TYPES
    )
    allxon = config.adapters["allxon"]
    assert isinstance(allxon, AllxonConfig)
    assert allxon.credential().access_key == "fedcba9876543210fedcba9876543210"


def test_credentials_must_be_given_and_readable(tmp_path: Path) -> None:
    (problem,) = problems_of(text(None))
    assert problem.path == "adapters.allxon.credentials"
    (problem,) = problems_of(text(tmp_path / "missing.json"))
    assert problem.path == "adapters.allxon.credentials" and "cannot read" in problem.message
    bad = tmp_path / "bad.json"
    bad.write_text('{"app_guid": "x"}')
    (problem,) = problems_of(text(bad))
    assert "unusable" in problem.message and KEY not in str(problem)


def test_a_declaration_that_cannot_fit_one_message_is_refused(cred: Path) -> None:
    metrics = ", ".join(
        f'{{ name = "metric_{i:02d}", displayType = "temperature" }}' for i in range(60)
    )
    cards = f'[[adapters.allxon.modules]]\nmoduleName = "room"\nmetrics = [{metrics}]'
    (problem,) = problems_of(text(cred, cards=cards))
    assert problem.path == "adapters.allxon.modules"
    assert "at most 2048" in problem.message


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        ("reserve_calls = 500", "reserve_calls", "below budget_per_hour"),
        ("command_timeout_s = 60", "command_timeout_s", "1 minute"),
        ("bucket_size = 0", "bucket_size", ">= 1"),
        ('url = "https://127.0.0.1:55688"', "url", "wss://"),
        ('plugin_type = "inband"', "plugin_type", "must be one of"),
        ('ca_file = "/nonexistent/ca.pem"', "ca_file", "no such file"),
    ],
)
def test_bad_settings_name_their_key(cred: Path, body: str, path: str, fragment: str) -> None:
    (problem,) = problems_of(text(cred, body))
    assert problem.path == f"adapters.allxon.{path}"
    assert fragment in str(problem)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        *[
            (key, value, "must be > 0")
            for key in (
                "budget_window_s",
                "command_timeout_s",
                "flush_interval_s",
                "connect_timeout_s",
                "disconnect_timeout_s",
                "announce_grace_s",
                "offline_retry_s",
                "backoff_initial_s",
                "backoff_max_s",
            )
            for value in ("0", "-1.5")
        ],
        *[
            (key, "0", "must be >= 1")
            for key in (
                "budget_per_hour",
                "bucket_size",
                "max_buffered_metrics",
                "max_buffered_events",
                "max_buffered_alerts",
            )
        ],
        ("reserve_calls", "-1", "must be >= 0"),
    ],
)
def test_each_bound_names_file_key_and_value(cred: Path, key: str, value: str, words: str) -> None:
    (problem,) = problems_of(text(cred, f"{key} = {value}"))
    assert str(problem) == f"junction.toml: adapters.allxon.{key}: {words} (got {value})"


def test_junction_check_prints_the_card_path(
    cred: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cards = """
[[adapters.allxon.modules]]
moduleName = "room"
metrics = [{ name = "9lives", displayType = "temperature" }]
"""
    path = tmp_path / "junction.toml"
    path.write_text(text(cred, cards=cards))
    assert cli.main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "adapters.allxon.modules[0].metrics[0].name: must match" in err


# ------------------------------------------------------------------------- TLS


def config_for(cred: Path, url: str, ca_file: str | None = None) -> AllxonConfig:
    ca = f'ca_file = "{ca_file}"' if ca_file else ""
    loaded = loads(text(cred, f'url = "{url}"\n{ca}'), "junction.toml", TYPES)
    allxon = loaded.adapters["allxon"]
    assert isinstance(allxon, AllxonConfig)
    return allxon


def test_verification_is_skipped_only_for_a_loopback_agent_without_a_ca_file(
    cred: Path, tmp_path: Path
) -> None:
    for url in ("wss://127.0.0.1:55688", "wss://localhost:55688", "wss://[::1]:55688"):
        context = ssl_context_for(config_for(cred, url))
        assert context is not None and context.verify_mode is ssl.CERT_NONE, url
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    remote = ssl_context_for(config_for(cred, "wss://agent.example.com:55688"))
    assert remote is not None and remote.verify_mode is ssl.CERT_REQUIRED
    assert remote.check_hostname
    ca = tmp_path / "ca.pem"
    ca.write_bytes(trustme.CA().cert_pem.bytes())
    pinned = ssl_context_for(config_for(cred, "wss://127.0.0.1:55688", str(ca)))
    assert pinned is not None and pinned.verify_mode is ssl.CERT_REQUIRED
    assert len(pinned.get_ca_certs()) == 1
    assert ssl_context_for(config_for(cred, "ws://127.0.0.1:55688")) is None


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("LOCALHOST")
    assert not is_loopback("10.0.0.1") and not is_loopback("agent.local")
