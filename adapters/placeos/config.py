"""Configuration of the PlaceOS adapter (``type = "placeos"``).

::

    [adapters.placeos]
    type = "placeos"
    url = "wss://placeos.example.com/api/engine/v2/systems/control"
    api_key = "${PLACEOS_API_KEY}"     # X-API-Key; or bearer_token = "${PLACEOS_TOKEN}"
    ca_file = "/etc/junction/placeos-ca.pem"   # optional private CA; verification stays on
    bindings = [
      { sys = "sys-BOARDROOM", mod = "Environment", index = 1, name = "temperature" },
      { sys = "sys-BOARDROOM", mod = "Display", name = "power" },
    ]
    debug = [{ sys = "sys-BOARDROOM", mod = "mod-BR-DISP1" }]   # module ids: log lines -> envelopes
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from broker import AdapterConfig, AtLeastOne, Positive, Secret


class Binding(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A status variable to bind: system id, module name, 1-based index, status name."""

    sys: str
    mod: str
    index: AtLeastOne = 1
    name: str


class DebugTarget(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A module whose log lines become ``log`` envelopes (``mod`` is the module *id*)."""

    sys: str
    mod: str
    index: AtLeastOne = 1


class PlaceOSConfig(AdapterConfig, kw_only=True):
    """Config of the PlaceOS real-time WebSocket adapter."""

    url: str
    api_key: Secret = ""
    bearer_token: Secret = ""
    ca_file: str | None = None
    connect_timeout_s: Positive = 5.0
    disconnect_timeout_s: Positive = 2.0
    ping_interval_s: Positive = 15.0
    dead_after_s: Positive = 60.0
    exec_timeout_s: Positive = 10.0
    backoff_initial_s: Positive = 0.3
    backoff_max_s: Positive = 30.0
    auth_backoff_s: Positive = 120.0
    max_message_bytes: AtLeastOne = 4 * 1024 * 1024
    emit_batch: AtLeastOne = 256
    bindings: list[Binding] = []
    debug: list[DebugTarget] = []

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        """The server URL: the API key or bearer token goes with the upgrade request."""
        yield "url", self.url

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(
                f"url must be ws://host/... or wss://host/..., got {self.url!r} "
                "(e.g. wss://placeos.example.com/api/engine/v2/systems/control)"
            )
        if not self.api_key and not self.bearer_token:
            raise ValueError(
                'set api_key (X-API-Key) or bearer_token, e.g. api_key = "${PLACEOS_API_KEY}"'
            )
        if self.api_key and self.bearer_token:
            raise ValueError("set only one of api_key and bearer_token")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file {self.ca_file!r} is not a file (a PEM bundle of the CA)")
        if self.dead_after_s <= self.ping_interval_s:
            raise ValueError(
                f"dead_after_s ({self.dead_after_s}) must be longer than ping_interval_s "
                f"({self.ping_interval_s}), or every quiet connection would be declared dead"
            )
        keys = [(b.sys, b.mod, b.index, b.name) for b in self.bindings]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"binding {dup} is listed twice")
