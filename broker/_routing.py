"""The routing table: ``[[routes]]`` compiled for flat-cost matching.

A route::

    [[routes]]
    name = "room-temps"                 # unique; names the route in logs and counters
    from = ["placeos"]                  # source adapter(s)
    kind = "status_change"              # body kind(s); omitted = any
    to = ["alphax", "allxon"]           # target adapter(s)
    match = { "body.name" = "temperature",          # equality
              subject = "sys-*/Room*",              # glob (a string with * ? or [)
              "body.value" = { gt = -40, le = 85 } }  # gt ge lt le eq ne in glob exists
    match_any = [{ kind = "config_update" },        # and, besides every ``match`` entry,
                 { "body.name" = "temperature" }]   # at least one of these tables
    map = { kind = "channel_write", ... }           # see broker._mapping
    transforms = ["celsius_to_kelvin", { name = "threshold_alert", options = { above = 30 } }]
    overflow = "persist"                # block | drop_oldest | drop_newest | persist
    queue_size = 1000                   # bound of each target's in-memory queue for this route
    redelivery = { attempts = 5, stale_after_s = 3600 }   # persist routes: retries, staleness

``overflow`` left out means ``persist`` for the kinds the target keeps durable by default
(its adapter type's ``persist_kinds``: AlphaX writes; Allxon events, alerts and command
results) and ``drop_oldest`` for the rest (latest-value data such as metrics and states).

Every route whose source, kind and predicates match gets the envelope (fan-out), in
table order.  Matching cost stays flat as routes grow: routes are indexed by (source,
kind), and within a bucket by the value of the equality predicate most of them share,
so a thousand routes that differ by ``body.name`` cost one dict lookup.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker._config import Config, RedeliveryPolicy, RouteSpec, TransformRef, as_list, suggest
from broker._envelope import KINDS, Envelope
from broker._errors import ConfigError, ConfigProblem, JunctionError, TransformError
from broker._mapping import MISSING, MapSpecError, compile_path
from broker._mapping import Mapping as FieldMapping
from broker._overflow import Overflow
from broker.hookspecs import Transform, TransformFn

Predicate = Callable[[Envelope], bool]
_OPS = {"eq", "ne", "gt", "ge", "lt", "le", "in", "glob", "exists"}


@dataclass(eq=False)
class CompiledRoute:
    """A route ready to run: predicates, mapping and transform functions bound."""

    index: int
    name: str
    sources: list[str]
    kinds: list[str] | None
    targets: list[str]
    predicates: list[Predicate]
    equalities: dict[str, Any]
    mapping: FieldMapping | None
    transforms: list[tuple[str, TransformFn]]
    spec: RouteSpec
    #: ``block`` | ``drop_oldest`` | ``drop_newest`` | ``persist`` | ``auto`` (by target and kind)
    overflow: Overflow
    queue_size: int
    redelivery: RedeliveryPolicy = field(default_factory=RedeliveryPolicy)
    reply_mapping: FieldMapping | None = None
    explain: list[tuple[str, Predicate]] = field(default_factory=list)

    def matches(self, env: Envelope) -> bool:
        """True when every predicate holds (source and kind are checked by the index)."""
        for pred in self.predicates:  # noqa: SIM110 - a plain loop is faster on the hot path
            if not pred(env):
                return False
        return True


class MatchError(JunctionError, ValueError):
    """A ``match`` entry is invalid."""


def compile_predicate(path: str, rule: Any) -> tuple[Predicate, Any]:
    """A predicate for ``path`` and its rule; also returns the equality value (or MISSING)."""
    get = compile_path(path)
    if isinstance(rule, dict):
        unknown = set(rule) - _OPS
        if unknown:
            raise MatchError(
                f"unknown operator(s) {sorted(unknown)}; valid: {', '.join(sorted(_OPS))}"
            )
        preds = [_operator(get, op, arg) for op, arg in rule.items()]
        if len(preds) == 1:
            eq = rule["eq"] if set(rule) == {"eq"} and _indexable(rule["eq"]) else MISSING
            return preds[0], eq
        return (lambda env: all(p(env) for p in preds)), MISSING
    if isinstance(rule, str) and any(c in rule for c in "*?["):
        return _operator(get, "glob", rule), MISSING
    if isinstance(rule, list | dict):
        raise MatchError("use { in = [...] } to match one of several values")
    return _operator(get, "eq", rule), rule if _indexable(rule) else MISSING


def _indexable(value: Any) -> bool:
    """Values a bucket may index by: hashable, and not bool (True == 1 would collide)."""
    if isinstance(value, bool):
        return False
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _operator(get: Callable[[Envelope], Any], op: str, arg: Any) -> Predicate:
    if op == "eq":
        return lambda env: _same(get(env), arg)
    if op == "ne":
        return lambda env: not _same(get(env), arg)
    if op in ("gt", "ge", "lt", "le"):
        if isinstance(arg, bool) or not isinstance(arg, int | float):
            raise MatchError(f"{op} needs a number, got {arg!r}")
        return _compare(get, op, arg)
    if op == "in":
        if not isinstance(arg, list):
            raise MatchError(f"in needs a list, got {arg!r}")
        choices = list(arg)
        return lambda env: any(_same(get(env), c) for c in choices)
    if op == "glob":
        if not isinstance(arg, str):
            raise MatchError(f"glob needs a string pattern, got {arg!r}")
        regex = re.compile(fnmatch.translate(arg))
        return lambda env: isinstance(v := get(env), str) and regex.match(v) is not None
    if op == "exists":
        if not isinstance(arg, bool):
            raise MatchError(f"exists needs true or false, got {arg!r}")
        return lambda env: (get(env) is not MISSING) is arg
    raise MatchError(f"unknown operator {op!r}")


def _same(value: Any, expected: Any) -> bool:
    # True == 1 in Python; a route that asks for 1 must not match a boolean.
    return value == expected and isinstance(value, bool) is isinstance(expected, bool)


def _compare(get: Callable[[Envelope], Any], op: str, limit: float) -> Predicate:
    def number(env: Envelope) -> float | None:
        v = get(env)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None
        return v

    if op == "gt":
        return lambda env: (v := number(env)) is not None and v > limit
    if op == "ge":
        return lambda env: (v := number(env)) is not None and v >= limit
    if op == "lt":
        return lambda env: (v := number(env)) is not None and v < limit
    return lambda env: (v := number(env)) is not None and v <= limit


def _all_of(preds: list[Predicate]) -> Predicate:
    return lambda env: all(p(env) for p in preds)


class _Bucket:
    """The routes for one (source, kind), indexed by their commonest equality predicate."""

    def __init__(self, routes: list[CompiledRoute]) -> None:
        counts: dict[str, int] = {}
        for r in routes:
            for path in r.equalities:
                counts[path] = counts.get(path, 0) + 1
        self.key_path = max(counts, key=lambda p: counts[p]) if counts else None
        self.by_value: dict[Any, list[CompiledRoute]] = {}
        self.rest: list[CompiledRoute] = []
        self.get = compile_path(self.key_path) if self.key_path else None
        for r in routes:
            if self.key_path is not None and self.key_path in r.equalities:
                self.by_value.setdefault(r.equalities[self.key_path], []).append(r)
            else:
                self.rest.append(r)
        self.all = routes

    def candidates(self, env: Envelope) -> list[CompiledRoute]:
        if self.get is None:
            return self.rest
        value = self.get(env)
        try:
            hit = self.by_value.get(value, ()) if not isinstance(value, bool) else ()
        except TypeError:  # unhashable value (a list or dict): no equality route can match
            hit = ()
        if not hit:
            return self.rest
        if not self.rest:
            return list(hit)
        return sorted([*hit, *self.rest], key=lambda r: r.index)


class RoutingTable:
    """Compiled routes with the (source, kind) index; immutable once built."""

    def __init__(self, routes: list[CompiledRoute]) -> None:
        self.routes = routes
        self.by_name = {r.name: r for r in routes}
        grouped: dict[tuple[str, str], list[CompiledRoute]] = {}
        for r in routes:
            for src in r.sources:
                for kind in r.kinds or sorted(KINDS):
                    grouped.setdefault((src, kind), []).append(r)
        self._buckets = {key: _Bucket(rs) for key, rs in grouped.items()}

    def match(self, env: Envelope) -> list[CompiledRoute]:
        """Every route that takes ``env``, in table order."""
        bucket = self._buckets.get((env.source, env.body.kind_name))
        if bucket is None:
            return []
        return [r for r in bucket.candidates(env) if r.matches(env)]

    def sources(self) -> set[str]:
        return {s for r in self.routes for s in r.sources}


def run_route(route: CompiledRoute, env: Envelope) -> list[Envelope]:
    """Apply a route's mapping then its transforms; [] when a transform filtered it out.

    Raises MappingError or TransformError (from broker._errors) for the caller to
    dead-letter.
    """
    out = route.mapping.apply(env) if route.mapping is not None else env
    batch: list[Envelope] = [out]
    for tname, fn in route.transforms:
        nxt: list[Envelope] = []
        for item in batch:
            try:
                result = fn(item)
            except Exception as err:
                raise TransformError(route.name, tname, err) from err
            if result is None:
                continue
            if isinstance(result, Envelope):
                nxt.append(result)
            elif isinstance(result, Sequence) and all(isinstance(e, Envelope) for e in result):
                nxt.extend(result)
            else:
                raise TransformError(
                    route.name,
                    tname,
                    TypeError(f"returned {type(result).__name__}, not Envelope(s)"),
                )
        batch = nxt
    return batch


def compile_table(
    config: Config,
    transforms: Mapping[str, Transform],
    problems: list[ConfigProblem] | None = None,
) -> RoutingTable:
    """Compile and validate every route; raises ConfigError listing every problem.

    ``problems`` carries problems found earlier (adapter sections) into the report.
    """
    problems = list(problems or [])
    adapters = set(config.adapters) | set(config.declared_adapters)
    seen: set[str] = set()
    compiled: list[CompiledRoute] = []
    for i, spec in enumerate(config.routes):
        route = _compile_route(i, spec, config, adapters, transforms, problems)
        if spec.name in seen:
            problems.append(
                ConfigProblem(
                    config.path, f"routes[{i}].name", "duplicate route name", spec.name, True
                )
            )
        seen.add(spec.name)
        if route is not None:
            compiled.append(route)
    if problems:
        raise ConfigError(problems)
    return RoutingTable(compiled)


def _compile_route(
    i: int,
    spec: RouteSpec,
    config: Config,
    adapters: set[str],
    transforms: Mapping[str, Transform],
    problems: list[ConfigProblem],
) -> CompiledRoute | None:
    file = config.path
    where = f"routes[{i}]"
    before = len(problems)

    def bad(path: str, message: str, value: Any = MISSING, hint: str = "") -> None:
        problems.append(
            ConfigProblem(
                file,
                f"{where}.{path}",
                message,
                None if value is MISSING else value,
                value is not MISSING,
                hint,
            )
        )

    sources, targets = as_list(spec.sources), as_list(spec.to)
    for key, names in (("from", sources), ("to", targets)):
        if not names:
            bad(key, "needs at least one adapter")
        for name in names:
            if name not in adapters:
                bad(key, "unknown adapter", name, suggest(name, adapters))
    kinds = as_list(spec.kind) or None
    for kind in kinds or ():
        if kind not in KINDS:
            bad("kind", "unknown body kind", kind, suggest(kind, KINDS))
    predicates: list[Predicate] = []
    explain: list[tuple[str, Predicate]] = []
    equalities: dict[str, Any] = {}
    for path, rule in spec.match.items():
        try:
            pred, eq = compile_predicate(path, rule)
        except ValueError as err:
            bad(f'match."{path}"', str(err), rule)
            continue
        predicates.append(pred)
        explain.append((f"{path} {rule!r}", pred))
        if eq is not MISSING:
            equalities[path] = eq
    alternatives: list[list[Predicate]] = []
    for k, table in enumerate(spec.match_any):
        group: list[Predicate] = []
        for path, rule in table.items():
            try:
                group.append(compile_predicate(path, rule)[0])
            except ValueError as err:
                bad(f'match_any[{k}]."{path}"', str(err), rule)
        alternatives.append(group)
        explain.append((f"any of: {table!r}", _all_of(group)))
    if alternatives:
        groups = [_all_of(g) for g in alternatives]
        predicates.append(lambda env: any(g(env) for g in groups))
    mapping: FieldMapping | None = None
    if spec.map:
        known_kinds = [k for k in (kinds or []) if k in KINDS]
        try:
            mapping = FieldMapping(spec.map, known_kinds if kinds else [])
        except MapSpecError as err:
            value = err.value
            bad(
                f"map.{err.key}",
                err.message,
                value,
                suggest(err.key, err.options) if err.options else "",
            )
    reply_mapping: FieldMapping | None = None
    if spec.reply_map:
        if not spec.expects_reply:
            bad("reply_map", "only means something with expects_reply = true")
        try:
            reply_mapping = FieldMapping(spec.reply_map, [])
        except MapSpecError as err:
            bad(
                f"reply_map.{err.key}",
                err.message,
                err.value,
                suggest(err.key, err.options) if err.options else "",
            )
    fns: list[tuple[str, TransformFn]] = []
    for j, ref in enumerate(spec.transforms):
        tref = ref if isinstance(ref, TransformRef) else TransformRef(name=ref)
        found = transforms.get(tref.name)
        if found is None:
            bad(f"transforms[{j}]", "unknown transform", tref.name, suggest(tref.name, transforms))
            continue
        try:
            fns.append((tref.name, found.factory(dict(tref.options))))
        except (ValueError, TypeError, KeyError) as err:
            bad(
                f"transforms[{j}].options",
                f"transform {tref.name!r} rejected its options: {err}",
                tref.options,
            )
    size = spec.queue_size if spec.queue_size is not None else config.junction.queue_size
    redelivery = spec.redelivery or config.junction.redelivery
    _check_redelivery(redelivery, bad)
    if len(problems) > before:
        return None
    return CompiledRoute(
        index=i,
        name=spec.name,
        sources=sources,
        kinds=kinds,
        targets=targets,
        predicates=predicates,
        equalities=equalities,
        mapping=mapping,
        transforms=fns,
        spec=spec,
        overflow=Overflow(spec.overflow) if spec.overflow else Overflow.AUTO,
        queue_size=size,
        redelivery=redelivery,
        reply_mapping=reply_mapping,
        explain=explain,
    )


def _check_redelivery(policy: RedeliveryPolicy, bad: Callable[[str, str, Any], None]) -> None:
    # each bound alone is the config struct's (msgspec.Meta); this one spans two keys
    if policy.backoff_max_s < policy.backoff_initial_s:
        bad(
            "redelivery.backoff_initial_s",
            "must be at most backoff_max_s",
            policy.backoff_initial_s,
        )


def resolve_policies(
    table: RoutingTable, persist_kinds: Mapping[str, frozenset[str]], durable: bool = True
) -> dict[tuple[str, str], Overflow]:
    """The overflow policy of each (route, target).

    ``auto`` (``overflow`` left out) becomes ``persist`` when the route hands the target a
    kind its adapter type keeps durable (or kinds unknown until a transform runs), else
    ``drop_oldest``. Without an outbox (``durable=False``) ``persist`` degrades to ``block``.
    """
    policies: dict[tuple[str, str], Overflow] = {}
    for route in table.routes:
        out_kinds = _output_kinds(route)
        for target in route.targets:
            policy = route.overflow
            if policy is Overflow.AUTO:
                keep = persist_kinds.get(target, frozenset())
                kept = bool(keep) and (out_kinds is None or bool(out_kinds & keep))
                policy = Overflow.PERSIST if kept else Overflow.DROP_OLDEST
            if policy is Overflow.PERSIST and not durable:
                policy = Overflow.BLOCK
            policies[(route.name, target)] = policy
    return policies


def _output_kinds(route: CompiledRoute) -> frozenset[str] | None:
    """The kinds a route hands its targets, when known without running it (None: any)."""
    kind = route.spec.map.get("kind") if route.spec.map else None
    if isinstance(kind, str):
        return frozenset({kind})
    if route.transforms:
        return None
    return frozenset(route.kinds) if route.kinds else None
