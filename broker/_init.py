"""``junction init``: a commented starter configuration for a real site.

``junction init --peers placeos,alphax,allxon > /etc/junction/site.toml`` writes the
``[junction]`` table (the service's state directory, a dead-letter file, the operations
endpoint on loopback), one adapter table per named peer and the routes that join the named
peers. Every secret is a ``${NAME}`` read from the environment (the systemd unit's
``EnvironmentFile``), listed at the top of the file; every site-specific value (system
ids, device ids, channels) is a placeholder the comments point at. Once those variables
are set, the output passes ``junction check`` as it is (the tests check every combination
of peers).

The text is assembled from fixed parts rather than generated from the configuration
schema: a starter file is read by a person, and its comments are the point.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PEERS", "InitError", "starter_config"]

#: The peers ``junction init`` knows, in the order their tables are written.
PEERS = ("placeos", "alphax", "allxon")


class InitError(ValueError):
    """``--peers`` named nothing, or a peer ``junction init`` does not know."""


_HEAD = """\
# Junction site configuration, written by `junction init --peers {peers}`.
#
#   junction check /etc/junction/site.toml     # validate (set the variables below first)
#   junction run /etc/junction/site.toml       # or: systemctl start junction
#
# Secrets never go in this file: they come from the environment (the systemd unit's
# EnvironmentFile, mode 0600) or from files (${{file:/path}}), and are redacted from every
# log line. This file expects:
#
{variables}#   JUNCTION_HTTP_TOKEN (optional) the operations endpoint's token, once it is public
#
# Replace the placeholders marked CHANGE ME (system ids, device ids, channels) with the
# site's own before the first run: `junction check` accepts them, but no PlaceOS system or
# AlphaX device has those ids. `junction explain /etc/junction/site.toml '<envelope JSON>'`
# shows what a route makes of an envelope.

[junction]
state_dir = "/var/lib/junction"          # outbox, dead letters, marks (systemd StateDirectory)
shutdown_grace_s = 10.0                  # SIGTERM waits this long for queues to drain
dead_letter = "dead_letters"             # every route's failures also go to this adapter

# The operations endpoint: /metrics (Prometheus), /healthz, /readyz and /status (what
# `junction status` prints). Keep it on loopback; a public listen needs a token.
[junction.http]
listen = "127.0.0.1:9464"
ready_max_pending_age_s = 120
# token = "${{JUNCTION_HTTP_TOKEN}}"

[adapters.dead_letters]
type = "file"
path = "/var/lib/junction/dead-letters.jsonl"
"""

_VARIABLES = {
    "placeos": (
        "#   PLACEOS_URL        wss://placeos.example.com/api/engine/v2/systems/control\n"
        "#   PLACEOS_API_KEY    an X-API-Key with access to the systems bound below\n"
    ),
    "alphax": (
        "#   ALPHAX_TOKEN       the AlphaX Conduit token of the site\n"
        "#   ALPHAX_PASSWORD    the MQTT password that goes with it\n"
    ),
    "allxon": (
        "#   ALLXON_CREDENTIALS the plugin_credential.json the Allxon agent issued (unset:\n"
        "#                      /etc/junction/plugin_credential.json, which must exist)\n"
    ),
}

_ADAPTERS = {
    "placeos": """
# PlaceOS: bind the status variables to follow; each change arrives as a status_change.
[adapters.placeos]
type = "placeos"
url = "${PLACEOS_URL}"
api_key = "${PLACEOS_API_KEY}"
# ca_file = "/etc/junction/placeos-ca.pem"   # a private CA; verification stays on
bindings = [
  { sys = "sys-CHANGE-ME", mod = "Environment", name = "temperature" },   # CHANGE ME
  { sys = "sys-CHANGE-ME", mod = "Environment", name = "people_count" },
  { sys = "sys-CHANGE-ME", mod = "Display", name = "power" },
]
""",
    "alphax": """
# AlphaX Conduit: channel writes over MQTT QoS 1 (a write is delivered once acknowledged).
[adapters.alphax]
type = "alphax"
token = "${ALPHAX_TOKEN}"
tier = "basic"                           # basic | premium | enterprise: paces the writes

[adapters.alphax.write]
transport = "mqtt"                       # or "http" (v2 JSON), "udp", "tcp"
url = "mqtts://mqtt.alphax.cloud:8883"
password = "${ALPHAX_PASSWORD}"
""",
    "allxon": """
# Allxon: this bridge is a plugin of the Octo agent on this machine; the cards below are
# what the Portal shows for it.
[adapters.allxon]
type = "allxon"
url = "wss://127.0.0.1:55688"            # the local agent (its certificate is accepted on loopback)
credentials = "${ALLXON_CREDENTIALS:-/etc/junction/plugin_credential.json}"  # mode 0600
app_name = "junction"
display_name = "Building bridge"

[[adapters.allxon.modules]]
moduleName = "building"
displayName = "Building"
metrics = [{ name = "temperature", displayType = "temperature" }]
states = [{ name = "people", displayType = "string" }, { name = "bridge", displayType = "string" }]
alarms = [{ name = "too_hot" }]
commands = [{ name = "display_power", type = "asynchronous", params = [
  { name = "power", displayType = "switch", displayValues = [false, true], required = true }] }]
""",
}

#: Routes per pair of peers: (the peers it needs, its text).
_ROUTES: tuple[tuple[frozenset[str], str], ...] = (
    (
        frozenset({"placeos", "alphax"}),
        """
# One PlaceOS status to one AlphaX channel (a route per channel; CHANGE ME: the system,
# the device's network_id and its channel 1..32). Persisted: kept on disk until acknowledged.
[[routes]]
name = "temperature-to-alphax"
from = "placeos"
kind = "status_change"
match = { "body.system" = "sys-CHANGE-ME", "body.name" = "temperature" }
to = "alphax"
map = { kind = "channel_write", network_id = "CHANGE-ME", channel = 1, value = "{body.value}" }
overflow = "persist"
redelivery = { attempts = 8, stale_after_s = 86400 }   # a day late is still worth storing
""",
    ),
    (
        frozenset({"placeos", "allxon"}),
        """
# PlaceOS values as Allxon cards (the module named in [[adapters.allxon.modules]]).
[[routes]]
name = "temperature-to-allxon"
from = "placeos"
kind = "status_change"
match = { "body.name" = "temperature" }
to = "allxon"
[routes.map]                             # what the route makes of each envelope
kind = "metric"
module = "building"
name = "temperature"
value = { from = "body.value", offset = 273.15, round = 2 }   # C to K, as the card shows it

[[routes]]
name = "people-to-allxon"
from = "placeos"
kind = "status_change"
match = { "body.name" = "people_count" }
to = "allxon"
map = { kind = "state", module = "building", name = "people", value = "{body.value}" }

# With the example plugin installed (pip install ./plugins_example: its threshold_alert
# transform), an alarm when a temperature passes 26 C, with 0.5 C hysteresis:
# [[routes]]
# name = "too-hot-alert"
# from = "placeos"
# kind = "status_change"
# match = { "body.name" = "temperature" }
# to = "allxon"
# [[routes.transforms]]
# name = "threshold_alert"
# [routes.transforms.options]
# module = "building"
# alarm = "too_hot"
# above = 26.0
# hysteresis = 0.5
# message = "{subject} at {value:.1f} C"

# A Portal command runs a PlaceOS driver method; its result is the command's ack.
[[routes]]
name = "display-command"
from = "allxon"
kind = "command_request"
match = { "body.command" = "display_power" }
to = "placeos"
expects_reply = true
[routes.map]
kind = "exec_request"
system = "sys-CHANGE-ME"                 # CHANGE ME: the room whose display it switches
module = "Display"
method = "power"
args = ["{body.params.power}"]
""",
    ),
)

#: A peer that no route above joins still gets one, so the file is a whole configuration.
_ALONE = {
    "placeos": """
# Every status change, to a file (replace with the routes of the site).
[adapters.placeos_log]
type = "file"
path = "/var/lib/junction/placeos.jsonl"

[[routes]]
name = "placeos-to-file"
from = "placeos"
kind = "status_change"
to = "placeos_log"
""",
    "alphax": """
# AlphaX needs a source: a steady test value to channel 1 of one device (CHANGE ME).
[adapters.alphax_heartbeat]
type = "generator"
kind = "metric"
body = { module = "junction", name = "alive", value = 1.0 }
rate = 0.0167                            # one a minute

[[routes]]
name = "heartbeat-to-alphax"
from = "alphax_heartbeat"
kind = "metric"
to = "alphax"
map = { kind = "channel_write", network_id = "CHANGE-ME", channel = 1, value = "{body.value}" }
overflow = "persist"
""",
    "allxon": """
# The bridge's own heartbeat as an Allxon state card (replace with the routes of the site).
[adapters.allxon_heartbeat]
type = "generator"
kind = "state"
body = { module = "building", name = "bridge", value = "running" }
rate = 0.0167                            # one a minute

[[routes]]
name = "heartbeat-to-allxon"
from = "allxon_heartbeat"
kind = "state"
to = "allxon"
""",
}


def parse_peers(text: str) -> list[str]:
    """``placeos,alphax`` -> the peers in :data:`PEERS` order; InitError for the others."""
    named = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not named:
        raise InitError(f"--peers names no peer: choose from {', '.join(PEERS)}")
    unknown = [p for p in named if p not in PEERS]
    if unknown:
        raise InitError(
            f"--peers: unknown peer {unknown[0]!r}: choose from {', '.join(PEERS)} "
            "(comma-separated, e.g. --peers placeos,alphax)"
        )
    return [p for p in PEERS if p in named]


def starter_config(peers: Sequence[str]) -> str:
    """The starter configuration for ``peers`` (names from :data:`PEERS`)."""
    chosen = set(peers)
    variables = "".join(_VARIABLES[p] for p in PEERS if p in chosen)
    parts = [_HEAD.format(peers=",".join(p for p in PEERS if p in chosen), variables=variables)]
    parts += [_ADAPTERS[p] for p in PEERS if p in chosen]
    routes = [(needs, text) for needs, text in _ROUTES if needs <= chosen]
    parts += [text for _, text in routes]
    joined = set().union(*(needs for needs, _ in routes))
    parts += [_ALONE[p] for p in PEERS if p in chosen and p not in joined]
    return "".join(parts)
