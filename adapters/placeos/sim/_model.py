"""The PlaceOS simulator's world: the model file and the server's state machine, without I/O.

A *model* (TOML, JSON or a dict) declares systems -> modules -> status variables and methods::

    [[systems]]
    id = "sys-ROOM1"
    name = "Boardroom"

    [[systems.modules]]
    id = "mod-DISP1"            # module id (what debug / ignore address)
    name = "Display"            # module name (what bind / exec address), with index
    index = 1
    status = { power = false, input = "HDMI1" }

    [systems.modules.methods.power]
    set = { power = "$0" }      # "$N": the N-th positional argument
    return = "$0"               # constant or argument (default null)
    log = "power -> $0"         # a debug line for sessions that `debug` this module
    # raise = "device offline"  # the driver raises -> error_code 3 "module raised: <msg>"
    # delay_s = 2.0             # the call takes this long
    # delete = ["input"]        # statuses the call deletes
    # security = "support"      # "support" / "administrator": error_code 2 for lesser keys

    [systems.modules.drift.temperature]   # a random walk within bounds (the demo rooms)
    min = 19.0
    max = 25.0
    step = 0.3
    every_s = 5.0
    decimals = 1                # 0 -> integers

``World`` is what the real server does with that model, driven by the simulator's sessions
(each a ``Sink`` that queues text frames): bindings keyed like the server's
``{sys, mod, index, name}``, notifies only when a status's JSON text changes, the first value
after a bind only if the status exists, debug sessions keyed ``{sys, module id, index}``, and the
server's exec checks in its order (module -> function -> clearance -> call). Statuses are kept
as their JSON text, so comparing and sending never re-encodes them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeAlias

import msgspec

from adapters.placeos.codec import (
    BindRequest,
    DebugRequest,
    ErrorCode,
    ExecRequest,
    IgnoreRequest,
    Meta,
    UnbindRequest,
    encode_debug,
    encode_error,
    encode_notify,
    encode_success,
)

__all__ = [
    "Clearance",
    "DriftSpec",
    "LogLevel",
    "MethodSpec",
    "ModelError",
    "ModuleSpec",
    "SimModel",
    "Sink",
    "SystemSpec",
    "World",
    "load_model",
]

log = logging.getLogger(__name__)

Clearance: TypeAlias = Literal["user", "support", "admin"]
LogLevel: TypeAlias = Literal["trace", "debug", "info", "notice", "warn", "error", "fatal"]
StatusKey: TypeAlias = tuple[str, str, int, str]
Location: TypeAlias = tuple[str, str, int]
_ARG_REF: Final = re.compile(r"\$(\d+)")
_NULL: Final = msgspec.Raw(b"null")


# --------------------------------------------------------------------------- the model


class ModelError(ValueError):
    """A simulator model that cannot be used (with the file and the path of the problem)."""


class DriftSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A status that wanders by at most ``step`` every ``every_s`` seconds within bounds."""

    min: float
    max: float
    step: float
    every_s: float = 5.0
    decimals: int = 1


class MethodSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What calling a module method does (see the module docstring for the fields)."""

    set: dict[str, Any] = {}
    delete: list[str] = []
    returns: Any = msgspec.field(default=None, name="return")
    raises: str | None = msgspec.field(default=None, name="raise")
    delay_s: float = 0.0
    log: str | None = None
    log_level: LogLevel = "info"
    security: Literal["support", "administrator"] | None = None


class ModuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A module of a system: its id, the name and index it is addressed by, statuses, methods."""

    id: str
    name: str
    index: int = 1
    status: dict[str, Any] = {}
    methods: dict[str, MethodSpec] = {}
    drift: dict[str, DriftSpec] = {}


class SystemSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A PlaceOS system (a room): id, display name, modules."""

    id: str
    name: str = ""
    modules: list[ModuleSpec] = []


class SimModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole simulated site."""

    systems: list[SystemSpec] = []


def load_model(source: SimModel | Mapping[str, Any] | str | Path | None) -> SimModel:
    """A validated model from a struct, a dict, or a ``.toml`` / ``.json`` file (None: empty)."""
    where = "model"
    try:
        if source is None:
            model = SimModel()
        elif isinstance(source, SimModel):
            model = source
        elif isinstance(source, Mapping):
            model = msgspec.convert(dict(source), SimModel)
        else:
            path = Path(source)
            where = str(path)
            data = path.read_bytes()
            if path.suffix == ".json":
                model = msgspec.json.decode(data, type=SimModel)
            else:
                model = msgspec.toml.decode(data, type=SimModel)
    except OSError as err:
        raise ModelError(f"cannot read simulator model {where}: {err}") from err
    except msgspec.DecodeError as err:
        raise ModelError(f"invalid simulator model {where}: {err}") from err
    _check(model, where)
    return model


def _check(model: SimModel, where: str) -> None:
    system_ids: set[str] = set()
    module_ids: set[str] = set()
    for s, system in enumerate(model.systems):
        at = f"{where}: systems[{s}] ({system.id})"
        if not system.id or system.id in system_ids:
            raise ModelError(f"{at}: system id empty or repeated")
        system_ids.add(system.id)
        places: set[tuple[str, int]] = set()
        for module in system.modules:
            mat = f"{at}: module {module.id}"
            if not module.id or module.id in module_ids:
                raise ModelError(f"{mat}: module id empty or repeated")
            module_ids.add(module.id)
            if not module.name or module.index < 1 or (module.name, module.index) in places:
                raise ModelError(f"{mat}: name empty, index < 1, or name+index repeated")
            places.add((module.name, module.index))
            for status, drift in module.drift.items():
                if not (drift.min <= drift.max and drift.step > 0 and drift.every_s > 0):
                    raise ModelError(f"{mat}: drift.{status} needs min <= max, step, every_s > 0")


# --------------------------------------------------------------------------- the world


class Sink(Protocol):
    """Where a session's outgoing text frames go (queued; never blocks)."""

    def push(self, frame: str) -> None: ...


@dataclass(eq=False)
class SimModule:
    """A running module: its identity, current statuses (JSON text), methods and drift."""

    id: str
    name: str
    index: int
    status: dict[str, bytes]
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    drift: dict[str, DriftSpec] = field(default_factory=dict)


class DriverError(Exception):
    """A simulated driver raised (error_code 3, ``module raised: <msg>``)."""


@dataclass(frozen=True)
class ExecPlan:
    """An exec that passed the server's checks, waiting for its ``delay_s``."""

    module: SimModule
    method: MethodSpec


_json = msgspec.json.Encoder()
_CLEARED: Final = {"support": ("support", "admin"), "administrator": ("admin",)}


class World:
    """The server's state for all sessions; every method runs on the simulator's trio thread."""

    def __init__(self, model: SimModel) -> None:
        self._modules: dict[str, SimModule] = {}
        self._where: dict[Location, SimModule] = {}
        self._locations: dict[str, list[Location]] = {}
        self._subscribers: dict[StatusKey, dict[Sink, int]] = {}
        self._bindings: dict[Sink, dict[StatusKey, int]] = {}
        self._debuggers: dict[str, dict[tuple[Sink, Location], tuple[int, Meta]]] = {}
        self._debugs: dict[Sink, dict[Location, str]] = {}
        self._metas: dict[StatusKey, Meta] = {}
        self._adhoc = 0
        for system in model.systems:
            for spec in system.modules:
                status = {k: _json.encode(v) for k, v in spec.status.items()}
                module = SimModule(spec.id, spec.name, spec.index, status)
                module.methods.update(spec.methods)
                module.drift.update(spec.drift)
                self._add(system.id, module)

    def _add(self, sys: str, module: SimModule) -> None:
        self._modules[module.id] = module
        self._where[(sys, module.name, module.index)] = module
        self._locations.setdefault(module.id, []).append((sys, module.name, module.index))

    # ------------------------------------------------------------- lookups and statuses

    def resolve(self, sys: str, mod: str, index: int) -> SimModule | None:
        """The module named ``mod`` at ``index`` in system ``sys``, if there is one."""
        return self._where.get((sys, mod, index))

    def module(self, module_id: str) -> SimModule | None:
        """The module with id ``module_id``, if there is one."""
        return self._modules.get(module_id)

    def modules(self) -> list[SimModule]:
        """Every module (model and ad hoc)."""
        return list(self._modules.values())

    def status_json(self, sys: str, mod: str, index: int, name: str) -> bytes | None:
        """The JSON text of a status, or None when it does not exist."""
        module = self.resolve(sys, mod, index)
        return None if module is None else module.status.get(name)

    def set_status(self, sys: str, mod: str, index: int, name: str, value: Any) -> bool:
        """Set a status (creating the system/module ad hoc if needed); True if it changed."""
        module = self.resolve(sys, mod, index)
        if module is None:
            self._adhoc += 1
            module = SimModule(f"mod-SIM{self._adhoc:04d}", mod, index, {})
            self._add(sys, module)
            log.info("status for unknown %s/%s_%d: created module %s", sys, mod, index, module.id)
        return self.store(module, name, _json.encode(value))

    def delete_status(self, sys: str, mod: str, index: int, name: str) -> bool:
        """Delete a status; bound sessions get a ``null`` notify. True if it existed."""
        module = self.resolve(sys, mod, index)
        return module is not None and self.store(module, name, None)

    def store(self, module: SimModule, name: str, value: bytes | None) -> bool:
        """Set (bytes) or delete (None) a status and notify bound sessions if it changed."""
        old = module.status.get(name)
        if old == value:
            return False
        if value is None:
            del module.status[name]
        else:
            module.status[name] = value
        raw = _NULL if value is None else msgspec.Raw(value)
        for location in self._locations[module.id]:
            key = (*location, name)
            subscribers = self._subscribers.get(key)
            if subscribers:
                meta = self._meta(key)
                for sink, bind_id in subscribers.items():
                    sink.push(encode_notify(bind_id, raw, meta))
        return True

    def _meta(self, key: StatusKey) -> Meta:
        meta = self._metas.get(key)
        if meta is None:
            meta = self._metas[key] = Meta(*key)
        return meta

    # ------------------------------------------------------------- bind / unbind

    def bind(self, sink: Sink, req: BindRequest, clearance: Clearance, value_first: bool) -> None:
        """Bind (idempotent per session): success, then the current value if it exists."""
        key = (req.sys, req.mod, req.index, req.name)
        bindings = self._bindings.setdefault(sink, {})
        success = encode_success(req.id, meta=self._meta(key))
        if key in bindings:
            sink.push(success)
            return
        if req.mod.startswith("_") and clearance == "user":
            msg = "attempted to access protected module"
            sink.push(encode_error(req.id, ErrorCode.ACCESS_DENIED, msg))
            return
        bindings[key] = req.id
        self._subscribers.setdefault(key, {})[sink] = req.id
        current = self.status_json(req.sys, req.mod, req.index, req.name)
        first = None
        if current is not None:
            first = encode_notify(req.id, msgspec.Raw(current), self._meta(key))
        for frame in (first, success) if value_first else (success, first):
            if frame is not None:
                sink.push(frame)

    def unbind(self, sink: Sink, req: UnbindRequest) -> None:
        """Unbind; success even when nothing was bound."""
        key = (req.sys, req.mod, req.index, req.name)
        if self._bindings.get(sink, {}).pop(key, None) is not None:
            self._unsubscribe(key, sink)
        sink.push(encode_success(req.id))

    def _unsubscribe(self, key: StatusKey, sink: Sink) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is not None:
            subscribers.pop(sink, None)
            if not subscribers:
                del self._subscribers[key]

    def bind_count(
        self,
        sys: str | None = None,
        mod: str | None = None,
        index: int | None = None,
        name: str | None = None,
    ) -> int:
        """Bindings over all sessions whose key matches every filter given."""
        want = (sys, mod, index, name)
        return sum(
            len(subs)
            for key, subs in self._subscribers.items()
            if all(w is None or w == k for w, k in zip(want, key, strict=True))
        )

    def drop_sink(self, sink: Sink) -> int:
        """Forget a closed session: every binding and debug subscription. Returns bindings."""
        bindings = self._bindings.pop(sink, {})
        for key in bindings:
            self._unsubscribe(key, sink)
        for location, module_id in self._debugs.pop(sink, {}).items():
            self._debuggers.get(module_id, {}).pop((sink, location), None)
        return len(bindings)

    # ------------------------------------------------------------- debug / ignore / logs

    def debug(self, sink: Sink, req: DebugRequest) -> None:
        """Forward module ``req.mod``'s (an id) log lines to the session; error 7 if unknown."""
        if self.module(req.mod) is None:
            msg = "failed to attach debugger"
            sink.push(encode_error(req.id, ErrorCode.UNEXPECTED_FAILURE, msg))
            return
        location = (req.sys, req.mod, req.index)
        debugs = self._debugs.setdefault(sink, {})
        if location not in debugs:  # the server reuses an existing debug socket
            debugs[location] = req.mod
            meta = Meta(req.sys, req.mod, req.index, req.name)
            self._debuggers.setdefault(req.mod, {})[(sink, location)] = (req.id, meta)
        sink.push(encode_success(req.id))

    def ignore(self, sink: Sink, req: IgnoreRequest) -> None:
        """Stop a session's debug frames for ``{sys, module id, index}``; always success."""
        location = (req.sys, req.mod, req.index)
        module_id = self._debugs.get(sink, {}).pop(location, None)
        if module_id is not None:
            self._debuggers.get(module_id, {}).pop((sink, location), None)
        sink.push(encode_success(req.id))

    def log(self, module_id: str, msg: str, level: LogLevel = "info") -> int:
        """A module log line, sent to every debugging session. Returns how many got it."""
        debuggers = self._debuggers.get(module_id, {})
        for (sink, _), (request_id, meta) in debuggers.items():
            sink.push(encode_debug(request_id, module_id, level, msg, meta))
        return len(debuggers)

    # ------------------------------------------------------------- exec

    def plan_exec(self, sink: Sink, req: ExecRequest, clearance: Clearance) -> ExecPlan | None:
        """The server's checks before a call; on failure pushes the error, returns None."""
        module = self.resolve(req.sys, req.mod, req.index)
        method = None if module is None else module.methods.get(req.name)
        if module is None:
            error = (ErrorCode.MODULE_NOT_FOUND, "could not find module")
        elif method is None:
            error = (ErrorCode.BAD_REQUEST, f"could not find function {req.name}")
        elif method.security is not None and clearance not in _CLEARED[method.security]:
            error = (ErrorCode.ACCESS_DENIED, f"attempted to access privileged function {req.name}")
        else:
            return ExecPlan(module, method)
        sink.push(encode_error(req.id, *error))
        return None

    def finish_exec(self, sink: Sink, req: ExecRequest, plan: ExecPlan) -> None:
        """Run a planned call: log, raise or set/delete statuses, then reply."""
        method, module, args = plan.method, plan.module, req.args or []
        try:
            if method.log is not None:
                self.log(module.id, _render(method.log, args), method.log_level)
            if method.raises is not None:
                raise DriverError(_render(method.raises, args))
            updates = {k: _json.encode(_arg(v, args, req.name)) for k, v in method.set.items()}
            value = _json.encode(_arg(method.returns, args, req.name))
        except DriverError as err:
            sink.push(encode_error(req.id, ErrorCode.REQUEST_FAILED, f"module raised: {err}"))
            return
        for name, encoded in updates.items():
            self.store(module, name, encoded)
        for name in method.delete:
            self.store(module, name, None)
        meta = Meta(req.sys, req.mod, req.index, req.name)
        sink.push(encode_success(req.id, meta=meta, value=msgspec.Raw(value), code=200))


def _arg(template: Any, args: list[Any], method: str) -> Any:
    """``"$N"`` -> the N-th argument (a driver error when missing); anything else as is."""
    if isinstance(template, str):
        match = _ARG_REF.fullmatch(template)
        if match is not None:
            n = int(match.group(1))
            if n >= len(args):
                raise DriverError(f"missing argument {n} for {method} ({len(args)} given)")
            return args[n]
    return template


def _render(template: str, args: list[Any]) -> str:
    """A text with every ``$N`` replaced by the argument (strings bare, others as JSON)."""

    def one(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n >= len(args):
            return match.group(0)
        arg = args[n]
        return arg if isinstance(arg, str) else _json.encode(arg).decode()

    return _ARG_REF.sub(one, template)
