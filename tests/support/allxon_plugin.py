"""Test-only adapters for the Allxon adapter tests, registered through the real hooks.

``allxon_recorded``  the real Allxon adapter; each instance is kept in ``INSTANCES`` by name
                     so that tests can read its counters (``stats``, ``outbox``, ``budget``)
``responder``        answers ``command_request`` envelopes with a ``command_result``:
                     ok with ``{"response": "<command> done", **params}`` and the configured
                     ``states``; ``ok = false`` for commands in ``fail_for``; no answer at all
                     for commands in ``silent_for``; records what it was given
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from adapters.allxon.actor import PERSIST_KINDS, AllxonAdapter
from adapters.allxon.config import AllxonConfig
from broker._adapter import Adapter
from broker._config import AdapterConfig
from broker._envelope import CommandRequest, CommandResult, Envelope
from broker.hookspecs import AdapterType, hookimpl

INSTANCES: dict[str, AllxonAdapter] = {}
REQUESTS: dict[str, list[Envelope]] = {}
_lock = threading.Lock()


def reset() -> None:
    with _lock:
        INSTANCES.clear()
        REQUESTS.clear()


def adapter(name: str) -> AllxonAdapter:
    """The running instance of adapter ``name`` (the latest after a restart)."""
    with _lock:
        return INSTANCES[name]


def requests(name: str) -> list[Envelope]:
    with _lock:
        return list(REQUESTS.get(name, []))


class RecordedAllxon(AllxonAdapter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with _lock:
            INSTANCES[self.name] = self


class ResponderConfig(AdapterConfig, kw_only=True):
    silent_for: list[str] = []
    fail_for: list[str] = []
    states: dict[str, Any] = {}


class Responder(Adapter):
    config: ResponderConfig

    async def deliver(self, route: str, batch: list[Envelope]) -> None:
        replies = []
        for env in batch:
            body = env.body
            assert isinstance(body, CommandRequest), body
            with _lock:
                REQUESTS.setdefault(self.name, []).append(env)
            if body.command in self.config.silent_for:
                continue
            if body.command in self.config.fail_for:
                result = CommandResult(ok=False, message=f"{body.command} failed on purpose")
            else:
                result = CommandResult(
                    ok=True,
                    result={"response": f"{body.command} done", **body.params},
                    states=dict(self.config.states),
                )
            replies.append(
                Envelope(
                    source=self.name,
                    subject=env.subject,
                    correlation_id=env.correlation_id,
                    body=result,
                )
            )
        self.emit(replies)


@hookimpl
def junction_adapter_types() -> Sequence[AdapterType]:
    return [
        AdapterType(
            "allxon_recorded",
            AllxonConfig,
            RecordedAllxon,
            "allxon, kept for tests",
            persist_kinds=PERSIST_KINDS,
        ),
        AdapterType("responder", ResponderConfig, Responder, "test command responder"),
    ]
