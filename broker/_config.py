"""Configuration files: TOML decoded into typed structs, with errors a person can act on.

A file has three parts::

    [junction]              # process-wide settings (JunctionSettings)
    [adapters.<name>]       # one table per adapter instance; ``type`` picks its struct
    [[routes]]              # the routing table (RouteSpec), compiled by broker._routing

Every struct forbids unknown keys, so a typo is an error that names the file, the
TOML path, the bad key and the nearest valid one.  Secrets are never required
inline: any string may be ``${ENV_VAR}`` (a missing variable is an error naming it),
``${ENV_VAR:-default}`` (the default when unset), or ``${file:/path/to/secret}`` (the
file's content, stripped).  Expanded references, and every adapter field typed
:data:`Secret` (inline or not, see :meth:`AdapterConfig.secrets`), are registered with
:mod:`broker._logs` so they are redacted from every log line: adapters do not register
their own.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec

from broker import _logs as logs
from broker._config_problems import _choices, _problem, _suggest
from broker._config_secrets import Secret as Secret  # the mark lives there; re-exported
from broker._config_secrets import clear_text_warnings, marked_secrets, short_secret_problems
from broker._errors import ConfigError, ConfigProblem
from broker._ops_listen import listen_problem, public_problem

T = TypeVar("T")

# Bounds, checked by msgspec while decoding: the error names the TOML path and the value
# ("adapters.x.timeout_s: must be > 0 (got -5)"). Every config struct uses these.
#: A duration or rate that must be above zero.
Positive = Annotated[float, msgspec.Meta(gt=0)]
#: A duration, size or rate where 0 means "none" / "off".
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
#: A count of at least one (sizes, windows, attempts).
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
#: A count where 0 means "none" / "unlimited".
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
#: A TCP or UDP port.
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


OverflowPolicy = Literal["block", "drop_oldest", "drop_newest", "persist"]


class RedeliveryPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How a ``persist`` route retries what its target could not take, and when to give up.

    A failure the target calls permanent (a peer's 4xx, a value it cannot encode) is
    dead-lettered at once; a transient one (the adapter crashed mid-batch) is retried
    ``attempts`` times in all with capped, jittered exponential back-off. An envelope
    older than ``stale_after_s`` is dead-lettered instead of delivered (a command to a
    room an hour late does more harm than good); None: never stale.
    """

    attempts: AtLeastOne = 5
    backoff_initial_s: Positive = 0.5
    backoff_max_s: Positive = 30.0
    stale_after_s: Positive | None = None


class OutboxSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The durable outbox (``[junction.outbox]``): a SQLite file in the state directory."""

    file: str = "outbox.sqlite3"
    max_rows: AtLeastOne = 1_000_000
    max_bytes: AtLeastOne = 512 * 1024 * 1024
    #: Dead letters kept; past it the oldest are deleted (counted and logged).
    max_dead_letters: AtLeastOne = 1_000_000


class HttpSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The operations endpoint (``[junction.http]``): /metrics, /healthz, /readyz, /status.

    See broker._ops_http for what each limit does; a ``listen`` other machines can reach
    needs ``token`` (or ``allow_public_without_token``), checked at load.
    """

    #: ``host:port`` to listen on; empty: no endpoint. Keep it on loopback.
    listen: str = ""
    #: /readyz fails while any route's oldest pending envelope is older than this.
    ready_max_pending_age_s: Positive = 60.0
    #: When set, every path but /healthz and the web console's page (``/``, ``/console/``)
    #: needs ``Authorization: Bearer <token>``.
    token: Secret = ""
    #: Listen on a non-loopback address with no token (a network that is the site's alone).
    allow_public_without_token: bool = False
    #: Connections served at once; one more displaces the longest idle one (else 503).
    max_connections: AtLeastOne = 64
    #: A request head must be complete this long after the connection (or its first byte).
    request_timeout_s: Positive = 10.0
    #: A keep-alive connection with no request for this long is closed.
    idle_timeout_s: Positive = 15.0

    def secrets(self) -> Iterator[str]:
        """The token, when set (for redaction and the length check)."""
        yield from marked_secrets(self)


class JunctionSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Process-wide settings (the ``[junction]`` table)."""

    state_dir: str = "state"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Seconds adapters get to finish their deliveries on shutdown (0: stop at once).
    shutdown_grace_s: NonNegative = 5.0
    disabled_plugins: list[str] = []
    dead_letter: str | None = None
    queue_size: AtLeastOne = 1000
    #: How long a ``block`` route waits for room before dead-lettering (0: not at all).
    block_timeout_s: NonNegative = 5.0
    restart_backoff_s: Positive = 0.5
    restart_backoff_max_s: Positive = 30.0
    reply_timeout_s: Positive = 10.0
    #: The interpreter's thread switch interval (``sys.setswitchinterval``; 0: Python's own):
    #: with a busy thread beside the loop (the outbox's checkpoints, an own_thread adapter,
    #: a worker thread signing), Python's 5 ms default stretches every hop of an envelope
    #: (measured: a 1 ms trio sleep took 6.5 ms at p50, 2.2 ms at 1 ms).
    switch_interval_ms: NonNegative = 1.0
    #: Accept secrets shorter than 8 characters (benchmarks and test peers with fixed
    #: one-letter tokens): each gets a warning, and is NOT redacted from the logs (it would
    #: blank ordinary words).  Never for a site.
    allow_short_secrets: bool = False
    redelivery: RedeliveryPolicy = msgspec.field(default_factory=RedeliveryPolicy)
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)

    def outbox_path(self) -> Path:
        """Where the outbox file is: ``[junction.outbox] file`` in the state directory."""
        return Path(self.state_dir) / self.outbox.file


class AdapterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Keys every adapter accepts; each adapter type subclasses this with its own."""

    type: str
    required: bool = True
    #: Run this adapter on a trio loop of its own thread instead of the loop the adapters
    #: share: for adapter code that blocks (synchronous I/O, long computations).
    own_thread: bool = False
    #: Keys this adapter type no longer takes at the top of its table, each with a hint to
    #: where it went (``{table}`` is replaced by the table's TOML path): a file that still
    #: has them gets one problem per moved key, not just "unknown key" for the first.
    moved_keys: ClassVar[dict[str, str]] = {}

    def secrets(self) -> Iterator[str]:
        """The credentials in this config, for :func:`loads` to register for redaction.

        Every non-empty field typed :data:`Secret`, in this struct and the structs it holds
        (tables, lists of tables); a subclass adds credentials it derives (e.g. read from a
        file it names) by extending this.
        """
        yield from marked_secrets(self)

    def credential_urls(self) -> Iterator[tuple[str, str]]:
        """``(key, url)`` for each URL this adapter sends a credential to (a key in the
        query or a header, a login): the loader warns when one is clear text to another
        machine. None by default; an adapter type with credentials overrides this."""
        return iter(())


class TransformRef(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A transform named in a route, with options for its factory."""

    name: str
    options: dict[str, Any] = {}


class RouteSpec(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, rename={"sources": "from"}
):
    """One ``[[routes]]`` entry, as written (see broker._routing for what each key does)."""

    name: str
    sources: str | list[str]
    to: str | list[str]
    kind: str | list[str] | None = None
    match: dict[str, Any] = {}
    match_any: list[dict[str, Any]] = []
    map: dict[str, Any] = {}
    transforms: list[str | TransformRef] = []
    #: None: ``persist`` for the kinds the target keeps durable by default (AlphaX writes,
    #: Allxon events, alerts and command results), ``drop_oldest`` for the rest.
    overflow: OverflowPolicy | None = None
    queue_size: AtLeastOne | None = None
    redelivery: RedeliveryPolicy | None = None
    expects_reply: bool = False
    reply_timeout_s: Positive | None = None
    reply_map: dict[str, Any] = {}
    description: str = ""


class Config(msgspec.Struct, kw_only=True):
    """A loaded, typed configuration (routes not compiled yet)."""

    path: str
    junction: JunctionSettings
    adapters: dict[str, AdapterConfig]
    routes: list[RouteSpec]
    declared_adapters: list[str] = []
    #: Things that work but deserve a second look (a credential sent in clear text).
    warnings: list[ConfigProblem] = []


class _RawFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    junction: dict[str, Any] = {}
    adapters: dict[str, dict[str, Any]] = {}
    routes: list[dict[str, Any]] = []


_REF = re.compile(r"\$\{([^}]*)\}")


def writable_dir_problem(directory: str | os.PathLike[str]) -> str:
    """Why ``directory`` could not be created or written, or "" when it can.

    Nothing is created here: ``junction check`` must say what ``junction run`` would die
    on (a file in the way, no write permission) without changing the machine.
    """
    path = Path(directory)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"cannot be {'written' if existing == path else 'created'}: {existing} is not writable"
        )
    return ""


def load(
    path: str | os.PathLike[str],
    adapter_types: Mapping[str, type[AdapterConfig]],
    problems: list[ConfigProblem] | None = None,
) -> Config:
    """Read, expand and decode a config file; raises ConfigError listing every problem.

    With ``problems`` given, problems are appended there instead and the best-effort
    config is returned (so route checks can still run and report theirs too).
    """
    file = str(path)
    return loads(read_text(file), file, adapter_types, problems)


def read_text(file: str) -> str:
    """The text of a config file; ConfigError (one line, exit 2) when it cannot be read."""
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            [ConfigProblem(file, "", f"cannot read the file: {err.strerror}")]
        ) from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            [ConfigProblem(file, "", f"not UTF-8 text (at byte {err.start}); save it as UTF-8")]
        ) from err


def loads(
    text: str,
    file: str,
    adapter_types: Mapping[str, type[AdapterConfig]],
    problems: list[ConfigProblem] | None = None,
) -> Config:
    """Like :func:`load`, from text; ``file`` names it in errors."""
    collect = problems is not None
    problems = problems if problems is not None else []
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([ConfigProblem(file, "", f"TOML syntax error: {err}")]) from err
    data = _expand(data, "", file, problems)
    raw = _convert(data, _RawFile, "", file, problems)
    if raw is None:
        raise ConfigError(problems)
    settings = _convert(raw.junction, JunctionSettings, "junction", file, problems)
    warnings: list[ConfigProblem] = []
    # short secrets: refused, or (allow_short_secrets) accepted with a warning each
    allow_short = settings is not None and settings.allow_short_secrets
    if settings is not None:
        problems += short_secrets(settings.http, "junction.http", file, allow_short, warnings)
        problems += http_problems(settings.http, file)
        why = writable_dir_problem(settings.state_dir)
        if why:
            hint = "name a directory the bridge may create and write (e.g. /var/lib/junction)"
            problems.append(
                ConfigProblem(file, "junction.state_dir", why, settings.state_dir, True, hint)
            )
    adapters: dict[str, AdapterConfig] = {}
    for name, table in raw.adapters.items():
        where = f"adapters.{name}"
        if not _is_name(name):
            problems.append(
                ConfigProblem(
                    file, where, "adapter names use letters, digits, '_' and '-'", name, True
                )
            )
            continue
        kind = table.get("type")
        if kind is None:
            problems.append(
                ConfigProblem(
                    file, f"{where}.type", "missing key 'type'", hint=_choices(adapter_types)
                )
            )
            continue
        cls = adapter_types.get(kind) if isinstance(kind, str) else None
        if cls is None:
            problems.append(
                ConfigProblem(
                    file,
                    f"{where}.type",
                    "unknown adapter type",
                    kind,
                    True,
                    _suggest(str(kind), adapter_types) or _choices(adapter_types),
                )
            )
            continue
        moved = [key for key in table if key in cls.moved_keys]
        if moved:
            problems += [
                ConfigProblem(
                    file,
                    f"{where}.{key}",
                    "unknown key",
                    hint=cls.moved_keys[key].format(table=where),
                )
                for key in moved
            ]
            continue
        converted = _convert(table, cls, where, file, problems)
        if converted is not None:
            problems += short_secrets(converted, where, file, allow_short, warnings)
            warnings += clear_text_warnings(converted, where, file)
            for secret in converted.secrets():
                logs.register_secret(secret)
            adapters[name] = converted
    routes: list[RouteSpec] = []
    for i, table in enumerate(raw.routes):
        route = _convert(table, RouteSpec, f"routes[{i}]", file, problems)
        if route is not None:
            routes.append(route)
    if settings is None or (problems and not collect):
        raise ConfigError(problems)
    return Config(
        path=file,
        junction=settings,
        adapters=adapters,
        routes=routes,
        declared_adapters=list(raw.adapters),
        warnings=warnings,
    )


def http_problems(http: HttpSettings, file: str) -> list[ConfigProblem]:
    """``[junction.http]``'s problems: a bad ``listen``, a public ``listen`` with no token
    and no ``allow_public_without_token``. Registers the token for redaction."""
    for secret in http.secrets():
        logs.register_secret(secret)
    problems: list[ConfigProblem] = []
    if http.listen:
        found = listen_problem(http.listen, file, "junction.http.listen") or public_problem(
            http.listen, http.token, http.allow_public_without_token, file
        )
        problems += [found] if found is not None else []
    return problems


def short_secrets(
    converted: Any, where: str, file: str, allow: bool, warnings: list[ConfigProblem]
) -> list[ConfigProblem]:
    """The secrets of ``converted`` shorter than 8 characters: returned as problems (refused),
    or with ``allow`` (the ``[junction] allow_short_secrets`` setting) added to ``warnings``,
    saying what it costs."""
    found = short_secret_problems(converted, where, file)
    if not allow:
        return found
    warnings += [
        dataclasses.replace(
            problem,
            message=f"{problem.message}; accepted (allow_short_secrets = true) and NOT redacted "
            "from the logs",
            hint="set allow_short_secrets only for a benchmark or a test peer",
        )
        for problem in found
    ]
    return []


def _is_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name) is not None


def _expand(value: Any, path: str, file: str, problems: list[ConfigProblem]) -> Any:
    """Replace ``${VAR}`` / ``${file:PATH}`` references in every string."""
    if isinstance(value, str):
        if "${" not in value:
            return value
        return _REF.sub(lambda m: _resolve(m.group(1), path, file, problems), value)
    if isinstance(value, dict):
        return {
            k: _expand(v, f"{path}.{k}" if path else k, file, problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", file, problems) for i, v in enumerate(value)]
    return value


def _resolve(ref: str, path: str, file: str, problems: list[ConfigProblem]) -> str:
    if ref.startswith("file:"):
        secret_path = ref[5:]
        try:
            secret = Path(secret_path).read_text(encoding="utf-8").strip()
        except OSError as err:
            problems.append(
                ConfigProblem(
                    file, path, f"cannot read secret file {secret_path!r}: {err.strerror}"
                )
            )
            return ""
        except UnicodeDecodeError as err:
            problems.append(
                ConfigProblem(
                    file,
                    path,
                    f"secret file {secret_path!r} is not UTF-8 text (at byte {err.start})",
                    hint="write the secret as text (a binary key: base64 it)",
                )
            )
            return ""
    else:
        ref, has_default, default = ref.partition(":-")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref):
            problems.append(
                ConfigProblem(
                    file,
                    path,
                    "bad reference",
                    f"${{{ref}}}",
                    True,
                    "write ${ENV_VAR}, ${ENV_VAR:-default} or ${file:/path/to/secret}",
                )
            )
            return ""
        found = os.environ.get(ref)
        if found is None and has_default:
            return default  # written in the file, so not a secret
        if found is None:
            problems.append(
                ConfigProblem(
                    file,
                    path,
                    f"environment variable {ref} is not set",
                    hint=f"export {ref}=... or use ${{file:/path}}",
                )
            )
            return ""
        secret = found
    logs.register_secret(secret)
    return secret


def _convert(
    data: Any, cls: type[T], where: str, file: str, problems: list[ConfigProblem]
) -> T | None:
    """msgspec.convert with the error turned into a ConfigProblem (path, value, hint)."""
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as err:
        problems.append(_problem(err, data, cls, where, file))
        return None


def suggest(word: str, options: Any) -> str:
    """``did you mean 'x'?`` for the closest option, else the list of valid ones."""
    return _suggest(word, options) or _choices(options)


def as_list(value: str | list[str] | None) -> list[str]:
    """Normalise the ``x = "a"`` / ``x = ["a", "b"]`` forms."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
