"""A plugin whose ``junction_envelopes_received`` observer raises: routing a batch fails."""

from __future__ import annotations

from collections.abc import Sequence

from broker._envelope import Envelope
from broker.hookspecs import hookimpl


@hookimpl
def junction_envelopes_received(adapter: str, envelopes: Sequence[Envelope]) -> None:
    raise RuntimeError("observer broke")
