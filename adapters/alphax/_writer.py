"""The one face every AlphaX write transport shows (:class:`UplinkWriter`), and the choice.

::

    writer = open_writer(cfg, name, status, log)   # connection.py: by write.transport
    writer.open()                                  # trio thread: begin connecting (MQTT)
    sent = await writer.send(envelopes)            # encode and hand over one batch
    sent.failures                                  # [(envelope, reason)]: never sendable
    sent.pending.when_settled(callback)            # if not None: acks still to come (MQTT);
                                                   # callback(given_up) once they came
    lost = await sent.pending.wait()               # the same, awaited
    writer.stats()                                 # the transport's counters
    await writer.aclose()

``send`` returns once every envelope of the batch is either acknowledged by the peer or in
``failures`` -- except what went out with acknowledgements still to come (MQTT: PUBACKs),
which is in ``sent.pending``: its ``envelopes`` count as delivered once it is settled, less
the failures it reports (``when_settled`` calls back on the trio thread, with no task per
batch; ``wait`` awaits the same). So the caller handles every transport the same way, and a
transport that acknowledges later (only MQTT today) lets the next batch go out meanwhile.

Peer trouble that may pass (429, 5xx, a broker or server down) makes ``send`` (or ``wait``)
wait and retry, the data kept; what can never be sent is a failure with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.alphax._uplinks import Failure
from broker import Envelope


class Pending(Protocol):
    """Envelopes handed to the peer whose acknowledgements are still to come."""

    @property
    def envelopes(self) -> list[Envelope]:
        """What was handed over (the failures of ``wait`` are among them)."""
        ...

    def when_settled(self, callback: Callable[[list[Failure]], None]) -> None:
        """Call ``callback(given_up)`` once every acknowledgement came or was given up on."""
        ...

    async def wait(self) -> list[Failure]:
        """Wait for the acknowledgements; what was given up on, with the reason."""
        ...


@dataclass(frozen=True)
class Sent:
    """What :meth:`UplinkWriter.send` did with one batch."""

    #: Envelopes that can never be sent, with the reason (for the dead-letter queue).
    failures: list[Failure]
    #: Handed over, acknowledgements to come (None: the rest of the batch is acknowledged).
    pending: Pending | None = None


class UplinkWriter(Protocol):
    """One write transport to AlphaX (see the module docstring)."""

    #: Whether ``send`` may return acknowledgements still to come (``Sent.pending``): the
    #: caller then has a place ready to await them before it sends.
    defers_acks: bool

    def open(self) -> None:
        """Begin connecting where the transport keeps a connection. Trio thread only."""
        ...

    async def send(self, batch: Sequence[Envelope]) -> Sent:
        """Encode ``batch`` and hand it to the peer (retrying what may pass)."""
        ...

    def stats(self) -> dict[str, Any]:
        """The transport's counters, for tests and status views."""
        ...

    async def aclose(self) -> None:
        """Release the connection or socket (safe to call once, whatever was opened)."""
        ...
