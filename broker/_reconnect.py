"""The reconnect loop every connection-holding adapter runs: connect, serve, back off, repeat.

An adapter gives it a coroutine that opens one connection and serves it until it ends,
and the exception types that mean "the peer or the network" (retried with capped,
jittered back-off). Anything else is a bug: it is raised, so the adapter's
actor restarts it. Status and logs follow one pattern for every peer: ``connecting``, then the
adapter's own states, then ``disconnected`` (or what ``classify`` says, e.g.
``auth-failed``) with the reason and the next attempt; the same error is logged once a
minute with how many similar lines were held back, a new one at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

import trio

from broker._adapter import AdapterStatus
from broker._backoff import Backoff
from broker._errors import unwrap
from broker._logs import LogGate


@dataclass(frozen=True)
class Retry:
    """How to wait after a failure: the delay, the state shown, the log level."""

    delay: float
    state: str = "disconnected"
    level: int = logging.WARNING


async def reconnect_forever(
    serve: Callable[[], Awaitable[None]],
    *,
    status: AdapterStatus,
    where: str,
    log: logging.Logger,
    backoff: Backoff,
    transient: type[Exception] | tuple[type[Exception], ...],
    classify: Callable[[Exception, float], Retry] | None = None,
    on_lost: Callable[[Exception | None], None] | None = None,
) -> NoReturn:
    """Run ``serve`` again and again (see the module docstring); never returns.

    ``classify(error, backoff_delay)`` may change the wait and how it is shown (an
    authentication refusal waits longer and says so); ``on_lost(error)`` runs after every
    connection, however it ended.
    """
    gate = LogGate(every_s=60.0)
    while True:
        status.set("connecting", where)
        backoff.started()
        error: Exception | None = None
        try:
            await serve()
        except Exception as err:  # every failure is classified below
            error = unwrap(err)
        finally:
            if on_lost is not None:
                on_lost(error)
        if error is not None and not isinstance(error, transient):
            raise error  # a bug, not the network: the adapter's actor restarts it
        delay = backoff.failed()
        why = str(error) if error is not None else "the connection closed"
        retry = classify(error, delay) if classify is not None and error else Retry(delay)
        status.set(retry.state, f"{where}: {why}; retry in {retry.delay:.1f} s")
        allowed, held = gate.allow(why)
        if allowed:
            log.log(
                retry.level,
                "%s: %s; reconnecting in %.1f s (attempt %d)%s",
                where,
                why,
                retry.delay,
                backoff.failures,
                f" ({held} similar lines held back)" if held else "",
            )
        await trio.sleep(retry.delay)
