"""The plugin module the ``junction.plugins`` entry point names: its hooks register
this distribution's transforms (see ``broker/hookspecs.py`` for every hook)."""

from __future__ import annotations

from collections.abc import Sequence

from broker import Transform, hookimpl
from junction_example import allxon_event, alphax_channel, threshold_alert


@hookimpl
def junction_transforms() -> Sequence[Transform]:
    """The transforms this plugin provides; their names must not clash with other plugins'."""
    return [allxon_event.TRANSFORM, alphax_channel.TRANSFORM, threshold_alert.TRANSFORM]
