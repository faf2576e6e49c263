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
