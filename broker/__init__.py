"""Junction's public face: everything a plugin (an adapter type, a transform, a command)
or an embedding program may use.  Import from here, ``from broker import Adapter``;
every other module of ``broker`` is internal and may change between releases.

What a plugin must do, and when its code runs, is written down in :mod:`broker.hookspecs`
(the hooks and the adapter contract).
"""

from broker._adapter import Adapter, AdapterContext, AdapterStatus
from broker._backoff import Backoff, backoff_delay
from broker._config import (
    AdapterConfig,
    AtLeastOne,
    NonNegative,
    NonNegativeInt,
    Port,
    Positive,
    Secret,
    writable_dir_problem,
)
from broker._envelope import (
    BODY_TYPES,
    AlarmSetting,
    AlarmUpdate,
    Alert,
    Bind,
    Body,
    ChannelReading,
    ChannelWrite,
    CommandRequest,
    CommandResult,
    ConfigSetting,
    ConfigUpdate,
    Debug,
    Envelope,
    Event,
    ExecRequest,
    ExecResult,
    LogLine,
    Metric,
    Property,
    State,
    StatusChange,
    decode,
    encode,
    new_id,
)
from broker._errors import (
    ConfigError,
    ConfigProblem,
    JunctionError,
    PluginError,
    TransformError,
)
from broker._json import NESTED_TOO_DEEP, JsonRefused, decode_json
from broker._logs import LogGate, redact, register_secret, truncate
from broker._mapping import Getter, compile_template
from broker._queue_key import QueueKey
from broker._reconnect import Retry, reconnect_forever
from broker._runtime import Loaded, Runtime, load
from broker._status import render as render_status
from broker.hookspecs import (
    ENTRY_POINT_GROUP,
    AdapterType,
    Command,
    Transform,
    TransformFn,
    hookimpl,
    transform,
)

__all__ = [
    "BODY_TYPES",
    "ENTRY_POINT_GROUP",
    "NESTED_TOO_DEEP",
    "Adapter",
    "AdapterConfig",
    "AdapterContext",
    "AdapterStatus",
    "AdapterType",
    "AlarmSetting",
    "AlarmUpdate",
    "Alert",
    "AtLeastOne",
    "Backoff",
    "Bind",
    "Body",
    "ChannelReading",
    "ChannelWrite",
    "Command",
    "CommandRequest",
    "CommandResult",
    "ConfigError",
    "ConfigProblem",
    "ConfigSetting",
    "ConfigUpdate",
    "Debug",
    "Envelope",
    "Event",
    "ExecRequest",
    "ExecResult",
    "Getter",
    "JsonRefused",
    "JunctionError",
    "Loaded",
    "LogGate",
    "LogLine",
    "Metric",
    "NonNegative",
    "NonNegativeInt",
    "PluginError",
    "Port",
    "Positive",
    "Property",
    "QueueKey",
    "Retry",
    "Runtime",
    "Secret",
    "State",
    "StatusChange",
    "Transform",
    "TransformError",
    "TransformFn",
    "backoff_delay",
    "compile_template",
    "decode",
    "decode_json",
    "encode",
    "hookimpl",
    "load",
    "new_id",
    "reconnect_forever",
    "redact",
    "register_secret",
    "render_status",
    "transform",
    "truncate",
    "writable_dir_problem",
]
