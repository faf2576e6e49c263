"""Exceptions the broker raises, named for what happened: the whole tree.

::

    JunctionError                 base of every error the broker raises on purpose
    ├── ConfigError               problems in a configuration file (exit code 2), each a
    │                             ConfigProblem naming file, TOML path, bad value, hint
    ├── PluginError               a plugin failed to load or registered something invalid
    ├── TransformError            a transform raised; the envelope is dead-lettered
    ├── MappingError (ValueError) a route's ``map`` could not build the outgoing envelope;
    │                             dead-lettered (broker._mapping)
    ├── MapSpecError (ValueError) a ``map`` table is invalid; becomes a ConfigProblem
    │                             (broker._mapping)
    ├── MatchError (ValueError)   a ``match`` entry is invalid; becomes a ConfigProblem
    │                             (broker._routing)
    ├── OutboxError (RuntimeError) the outbox file cannot be opened or written; the router
    │                             logs it and keeps routing (broker._outbox)
    ├── BridgeUnreachable         ``junction reload``: no running bridge to signal
    │                             (broker._reload)
    ├── StateDirBusy              ``junction run``: another bridge holds the state
    │                             directory (exit 2; broker._state_lock)
    └── EndpointError             ``junction status``: no snapshot from the running bridge
                                  (broker._ops_client)

Errors of a peer or its wire format are the adapters' own (each codec has a ``CodecError``
tree); an adapter's reconnect loop retries them and the runtime never sees them. The one
peer-format error of the broker, ``JsonRefused`` (a ValueError of broker._json), is what
``decode_json`` raises for the codecs to turn into their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def unwrap(err: BaseException) -> Exception:
    """The one real error inside nested single-error groups (trio nurseries wrap errors).

    Cancellations beside it are ignored; a group of several real errors stays a group.
    """
    import trio

    while isinstance(err, BaseExceptionGroup):
        inner = [e for e in err.exceptions if not isinstance(e, trio.Cancelled)]
        if len(inner) != 1:
            break
        err = inner[0]
    return err if isinstance(err, Exception) else RuntimeError(repr(err))


class JunctionError(Exception):
    """Base of every error the broker raises on purpose (and adapters raise for a config
    their peer cannot serve): its text is the whole story, so a crash it causes is logged
    in one line, without a traceback."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration file, said so a person can fix it."""

    file: str
    path: str
    message: str
    value: Any = None
    has_value: bool = False
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        text = f"{where}: {self.message}"
        if self.has_value:
            text += f" (got {_show(self.value)})"
        if self.hint:
            text += f"; {self.hint}"
        from broker._logs import redact  # a bad value may be an expanded secret

        return redact(text)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ConfigError(JunctionError):
    """A configuration file is invalid; ``problems`` lists every fault found."""

    exit_code = 2

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PluginError(JunctionError):
    """A plugin could not be loaded or registered something invalid."""


class TransformError(JunctionError):
    """A transform raised; carries the route and transform names for the dead letter."""

    def __init__(self, route: str, transform: str, cause: BaseException) -> None:
        self.route = route
        self.transform = transform
        self.cause = cause
        super().__init__(f"route {route!r}: transform {transform!r} raised {cause!r}")
