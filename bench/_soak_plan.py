"""What one soak runs (``bench/soak.py``): the config it adds, its restart schedule, and the
ledger sums it checks at the end -- the plain parts, apart from the processes."""

from __future__ import annotations

import math
from typing import Any

#: the statuses the PlaceOS simulator drives (the people counts of the demo's rooms)
PEOPLE = [
    f"{room}/Environment_1/people_count"
    for room in ("sys-boardroom", "sys-huddle2", "sys-training")
]
HTTP_DEVICE, MQTT_DEVICE = "4107", "4108"  # people-to-alphax's device (demo.toml); the MQTT leg's
#: AlphaX carries a value as a signed 32-bit count of thousandths: the ids must stay below this
MAX_ID = 2_000_000


def extra_config(mqtt_url: str, ops_port: int) -> str:
    """What the soak adds to ``routes/demo.toml``: the ops endpoint and the MQTT leg."""
    channels = "\n".join(
        f'"{key}" = {{ network_id = "{MQTT_DEVICE}", channel = {i} }}'
        for i, key in enumerate(PEOPLE, 1)
    )
    return f"""
# --- added by bench/soak.py ------------------------------------------------------------------
[junction.http]
listen = "127.0.0.1:{ops_port}"

[adapters.alphax_mqtt]
type = "alphax"
token = "${{JUNCTION_DEMO_ALPHAX_TOKEN}}"
tier = "enterprise"

[adapters.alphax_mqtt.write]
transport = "mqtt"
url = "{mqtt_url}"
topic_form = "bulk"

[[routes]]
name = "people-to-alphax-mqtt"
from = "placeos"
kind = "status_change"
match = {{ "body.name" = "people_count" }}
to = "alphax_mqtt"
[[routes.transforms]]
name = "placeos_to_alphax_channel"
[routes.transforms.options.map]
{channels}
"""


def ledger_totals(snap: dict[str, Any]) -> dict[str, int]:
    """The ledger of every route summed (broker._ledger's words), plus ``unaccounted``
    (module docstring)."""
    keys = ("received", "delivered", "pending", "dead_lettered", "dropped", "filtered")
    total = dict.fromkeys((*keys, "unaccounted"), 0)
    for route in snap["routes"].values():
        ledger = route["ledger"]
        for key in keys:
            total[key] += ledger[key]
        total["unaccounted"] += ledger["received"] - sum(ledger[k] for k in keys[1:])
    return total


def schedule(duration: float, every: float) -> list[tuple[float, str]]:
    """(seconds from the start, peer) of every kill-and-restart within ``duration``."""
    events = [
        (start + every * share, name)
        for start in [every * i for i in range(math.ceil(duration / every))]
        for share, name in ((0.25, "placeos"), (0.5, "allxon"), (0.75, "alphax"))
    ]
    events.append((duration / 2 + every / 8, "mosquitto"))
    return sorted(e for e in events if e[0] < duration)
