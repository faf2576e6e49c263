"""Configuration of the Allxon Octo plugin adapter (``type = "allxon"``).

::

    [adapters.allxon]
    type = "allxon"
    url = "wss://127.0.0.1:55688"              # the local agent (the default)
    credentials = "/etc/junction/plugin_credential.json"
    # or: app_guid = "${ALLXON_APP_GUID}"  access_key = "${ALLXON_ACCESS_KEY}"
    # ca_file = "/etc/junction/agent-ca.pem"   # verification is skipped ONLY for a loopback
    #                                            host with no ca_file (the agent's cert is
    #                                            self-signed); any other host is verified
    app_name = "junction"
    version = "1.0.0"
    sdk = "3.4.2"
    plugin_type = "ib"                          # ib | oob
    display_name = "Junction bridge"
    budget_per_hour = 500                       # the agent's limit; never exceeded
    bucket_size = 30                            # burst of data calls before pacing
    command_timeout_s = 45                      # well inside the Portal's 1 minute

    [[adapters.allxon.modules]]                 # cards, with the Octo wire names
    moduleName = "room-101"
    properties = [{ name = "site", displayType = "string", value = "HQ" }]
    states = [{ name = "power", displayType = "string" }]
    metrics = [{ name = "temperature", displayType = "temperature" }]
    events = [{ name = "door" }]
    alarms = [{ name = "too_hot", params = [{ name = "limit", displayType = "temperature" }] }]
    [[adapters.allxon.modules.commands]]
    name = "reboot"
    params = [{ name = "delay", displayType = "string", required = true }]

Card tables use the Octo wire names (``moduleName``, ``displayType``, ``displayFormat``...)
so that they read like Allxon's documentation; they are the structs of ``cards`` with unknown
keys forbidden, and ``cards.validate_update`` checks them when the file loads. A broken rule is
reported by ``junction check`` with its TOML path, e.g.
``adapters.allxon.modules[0].commands[1].params[0].displayFormat: datetime needs displayFormat
one of [...]``; further problems are listed in the same message. (The path rides on the
`` - at `$.<path>` `` suffix that ``broker._config`` reads from a msgspec validation error.)

Secrets: the access key comes from ``plugin_credential.json`` (``credentials``) or from a
``${ENV}`` / ``${file:...}`` reference; an inline ``access_key`` is refused. The loader cannot
see the reference itself, but it registers every expanded secret for redaction while it expands
them, before the struct is checked, so an inline key is exactly one not registered yet. (After
decoding it registers the ``Secret`` fields and the credentials file's key too: see
``AllxonConfig.secrets``.)

Budget: ``budget_per_hour`` calls in any rolling ``budget_window_s`` (3600 s; shorten it only
together with the agent's window, e.g. in a benchmark), ``bucket_size`` tokens refilled at
``budget_per_hour / budget_window_s`` per second for states/metrics/events/alerts, and
``reserve_calls`` of the window kept for the announce and command acks (data never uses them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NoReturn
from urllib.parse import urlsplit

import msgspec

from adapters.allxon.cards import (
    AlarmCard,
    CardError,
    CardParam,
    CommandCard,
    ConfigCard,
    EventCard,
    MetricCard,
    Module,
    PropertyCard,
    StateCard,
    UpdateParams,
    validate_update,
)
from adapters.allxon.codec import (
    MAX_FRAME_BYTES,
    CredentialError,
    PluginCredential,
    PluginUpdate,
    decode_credential,
    signed_size,
)
from broker import AdapterConfig, AtLeastOne, NonNegativeInt, Positive, Secret, redact

DEFAULT_URL = "wss://127.0.0.1:55688"

# ---------------------------------------------------------------------------- card tables
# The cards structs with unknown keys forbidden: a misspelt `displayFromat` is an error with
# its path instead of a silently missing field. Field types narrow to the strict variants.


class ParamDecl(CardParam, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A command/alarm/config parameter as declared in TOML."""


class PropertyDecl(PropertyCard, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A property card as declared in TOML (its value may later come from a route)."""


class StateDecl(StateCard, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A state card as declared in TOML."""


class MetricDecl(MetricCard, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A metric card as declared in TOML."""


class EventDecl(EventCard, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An event card as declared in TOML."""


class CommandDecl(CommandCard, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A command card as declared in TOML."""

    params: list[ParamDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]


class AlarmDecl(AlarmCard, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An alarm card as declared in TOML."""

    params: list[ParamDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]


class ConfigDecl(ConfigCard, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A config card as declared in TOML."""

    params: list[ParamDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]


class ModuleDecl(Module, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A module and its cards as declared in TOML (encodes exactly like ``cards.Module``)."""

    properties: list[PropertyDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]
    states: list[StateDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]
    metrics: list[MetricDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]
    events: list[EventDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]
    commands: list[CommandDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]
    alarms: list[AlarmDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]
    configs: list[ConfigDecl] = msgspec.field(default_factory=list)  # type: ignore[assignment]


# The wire path of a validate_update problem -> the config key that holds the value.
_TOP_LEVEL_KEYS = {
    "appGUID": "app_guid",
    "appName": "app_name",
    "version": "version",
    "sdk": "sdk",
    "type": "plugin_type",
}

# An epoch string as long as any until 2286, for sizing the announce at load time.
_EPOCH_PLACEHOLDER = "9999999999"


class AllxonConfig(AdapterConfig, kw_only=True):
    """Config of the Allxon Octo plugin adapter (see the module docstring)."""

    url: str = DEFAULT_URL
    credentials: str | None = None
    app_guid: str = ""
    access_key: Secret = ""
    ca_file: str | None = None
    app_name: str
    version: str = "1.0.0"
    sdk: str = "3.4.2"
    plugin_type: Literal["ib", "oob"] = "ib"
    display_name: str | None = None
    start_command: str | None = None
    stop_command: str | None = None
    modules: list[ModuleDecl] = []
    #: What to do with a state/metric/event for a name no card declares: "reject" dead-letters
    #: it; "send" passes it on (the 2 KB announce cannot declare many cards).
    undeclared: Literal["reject", "send"] = "reject"
    budget_per_hour: AtLeastOne = 500
    budget_window_s: Positive = 3600.0
    bucket_size: AtLeastOne = 30
    reserve_calls: NonNegativeInt = 50
    command_timeout_s: Positive = 45.0
    flush_interval_s: Positive = 2.0
    connect_timeout_s: Positive = 5.0
    disconnect_timeout_s: Positive = 2.0
    announce_grace_s: Positive = 1.0
    offline_retry_s: Positive = 30.0
    backoff_initial_s: Positive = 0.5
    backoff_max_s: Positive = 60.0
    max_buffered_metrics: AtLeastOne = 5000
    max_buffered_events: AtLeastOne = 1000
    max_buffered_alerts: AtLeastOne = 200

    def __post_init__(self) -> None:
        self._check_url()
        self._check_numbers()
        credential = self.credential()
        problems = validate_update(self.update_params(credential.app_guid, _EPOCH_PLACEHOLDER))
        if problems:
            _raise_card_problems(problems)
        size = signed_size(
            PluginUpdate(params=self.update_params(credential.app_guid, _EPOCH_PLACEHOLDER))
        )
        if size > MAX_FRAME_BYTES:
            _fail(
                "modules",
                f"the announce (v2/notifyPluginUpdate) of these cards is {size} bytes signed; "
                f"the agent takes at most {MAX_FRAME_BYTES} per message: declare fewer cards "
                "or shorter names and descriptions",
            )

    # --- helpers the adapter uses too ----------------------------------------------------

    def credential(self) -> PluginCredential:
        """The app GUID and access key, from ``credentials`` or the two keys.

        Raises ValueError (naming the config key) when they are missing or unusable.
        """
        if self.credentials is not None:
            if self.app_guid or self.access_key:
                _fail("credentials", "set either credentials or app_guid/access_key, not both")
            try:
                credential = decode_credential(Path(self.credentials).read_bytes())
            except OSError as err:
                _fail("credentials", f"cannot read {self.credentials!r}: {err.strerror or err}")
            except CredentialError as err:
                _fail("credentials", f"{self.credentials}: {err}")
            return credential
        if not self.app_guid or not self.access_key:
            _fail(
                "credentials",
                "set credentials = path to plugin_credential.json, or app_guid and access_key "
                'as references (access_key = "${ALLXON_ACCESS_KEY}")',
            )
        if redact(self.access_key) != "***":
            _fail(
                "access_key",
                "the access key is written inline; use a reference "
                '(access_key = "${ALLXON_ACCESS_KEY}" or "${file:/path}") or credentials = ...',
            )
        return PluginCredential(app_guid=self.app_guid, access_key=self.access_key)

    def secrets(self) -> Iterator[str]:
        """The ``Secret`` fields, and the access key of the ``credentials`` file."""
        yield from super().secrets()
        if self.credentials is not None:
            yield self.credential().access_key

    def update_params(
        self, app_guid: str, epoch: str, modules: list[Module] | None = None
    ) -> UpdateParams:
        """The ``v2/notifyPluginUpdate`` params of this declaration (``modules`` overrides the
        declared cards, e.g. with property values received from routes)."""
        return UpdateParams(
            app_guid=app_guid,
            app_name=self.app_name,
            epoch=epoch,
            type=self.plugin_type,
            sdk=self.sdk,
            version=self.version,
            modules=list(self.modules) if modules is None else modules,
            display_name=msgspec.UNSET if self.display_name is None else self.display_name,
            start_command=msgspec.UNSET if self.start_command is None else self.start_command,
            stop_command=msgspec.UNSET if self.stop_command is None else self.stop_command,
        )

    def host(self) -> str:
        """The agent's host name or address, as written in ``url``."""
        return urlsplit(self.url).hostname or ""

    def agent_is_loopback(self) -> bool:
        """True when ``url`` names this machine (``localhost`` or a loopback address)."""
        return is_loopback(self.host())

    # --- checks --------------------------------------------------------------------------

    def _check_url(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            _fail("url", f"must be wss://host:port (the agent: {DEFAULT_URL}), got {self.url!r}")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            _fail("ca_file", f"no such file: {self.ca_file!r}")

    def _check_numbers(self) -> None:
        # single-key bounds are msgspec.Meta types on the fields (checked while decoding)
        if self.reserve_calls >= self.budget_per_hour:
            _fail(
                "reserve_calls",
                f"must be below budget_per_hour ({self.budget_per_hour}), or no data could "
                f"ever be sent; got {self.reserve_calls}",
            )
        if self.command_timeout_s >= 60:
            _fail(
                "command_timeout_s",
                "the Portal gives up on a command after 1 minute; keep the timeout well "
                f"inside it (default 45), got {self.command_timeout_s}",
            )


def is_loopback(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 / ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fail(path: str, message: str) -> NoReturn:
    """Raise the ValueError that broker._config turns into a problem at ``<adapter>.<path>``."""
    raise ValueError(f"{message} - at `$.{path}`")


def _config_path(wire_path: str) -> str:
    head = wire_path.split(".", 1)[0].split("[", 1)[0]
    if head in _TOP_LEVEL_KEYS:
        return _TOP_LEVEL_KEYS[head] + wire_path[len(head) :]
    return wire_path


def _raise_card_problems(problems: list[CardError]) -> None:
    """One ValueError for all card problems: the first at its path (broker._config appends
    "(got <value>)" when that value is in the file), the others listed in brackets."""
    first, rest = problems[0], problems[1:]
    message = first.message
    if rest:
        listed = "; ".join(f"{_config_path(p.path)}: {_said(p)}" for p in rest)
        message += f" [and {len(rest)} more card problem(s): {listed}]"
    _fail(_config_path(first.path), message)


def _said(problem: CardError) -> str:
    if problem.value is None:
        return f"{problem.message} (missing)"
    return f"{problem.message} (got {problem.value!r})"
