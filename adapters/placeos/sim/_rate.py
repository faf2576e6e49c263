"""Statuses set at a steady rate: ``junction sim placeos --rate HZ --rate-status KEY ...``.

A load for benchmarks that run the simulator as its own process (``bench/soak.py``): the
listed statuses are set in turn, round robin, each change to the next integer from
``--rate-start``, ``HZ`` changes a second on a fixed schedule (what is due by now; behind
schedule it sets what is due at once, and never more). Every value is new, so a bench can
follow each one to wherever the bridge sends it; that is also why a status the rate drives
does not drift (:func:`without_drift` drops its random walk from the model).

A status is named as the bridge's PlaceOS envelopes name their subject,
``SYS/MODULE_INDEX/NAME`` (``sys-boardroom/Environment_1/people_count``). The first value of
every status is set before the simulator serves its first request, so a bind never sees the
model's own value of a driven status.
"""

from __future__ import annotations

import msgspec
import trio

from adapters.placeos.sim._model import SimModel
from adapters.placeos.sim._server import PlaceOSSimulator

#: (system id, module name, module index, status name)
RateKey = tuple[str, str, int, str]


def parse_rate_status(text: str) -> RateKey:
    """``SYS/MODULE_INDEX/NAME`` -> its key; ValueError saying what is wrong otherwise."""
    parts = text.split("/")
    module, _, index = parts[1].rpartition("_") if len(parts) == 3 else ("", "", "")
    if len(parts) != 3 or not (parts[0] and module and index.isdigit() and parts[2]):
        raise ValueError(
            f"--rate-status {text!r}: expected SYS/MODULE_INDEX/NAME, "
            "e.g. sys-boardroom/Environment_1/people_count"
        )
    return parts[0], module, int(index), parts[2]


def without_drift(model: SimModel, keys: list[RateKey]) -> SimModel:
    """``model`` without the random walks of the statuses in ``keys``."""
    driven = set(keys)
    systems = []
    for system in model.systems:
        modules = []
        for module in system.modules:
            drift = {
                name: spec
                for name, spec in module.drift.items()
                if (system.id, module.name, module.index, name) not in driven
            }
            modules.append(msgspec.structs.replace(module, drift=drift))
        systems.append(msgspec.structs.replace(system, modules=modules))
    return msgspec.structs.replace(model, systems=systems)


async def drive(sim: PlaceOSSimulator, keys: list[RateKey], hz: float, start: int) -> None:
    """Set ``keys`` in turn to ``start``, ``start + 1``, ... at ``hz`` changes a second, forever.

    The first round is set before the first checkpoint, i.e. before the simulator can
    answer a bind.
    """
    value = start
    for key in keys:
        sim.set_status(*key, value)
        value += 1
    sent = len(keys)
    began = trio.current_time()
    while True:
        due = int((trio.current_time() - began) * hz) + len(keys)
        while sent < due:
            sim.set_status(*keys[sent % len(keys)], value)
            value += 1
            sent += 1
        await trio.sleep_until(began + (sent - len(keys) + 1) / hz)
