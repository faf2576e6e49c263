"""The operations files (issue 18, item 6): alert rules, dashboard and systemd unit.

Every metric that ``docs/operations/alerts.yml`` and ``grafana-dashboard.json`` name (each
``junction_...`` token anywhere in them) must be a series that a real bridge's ``/metrics``
exports. The bridge is a real :class:`~broker._runtime.Runtime` with ``[junction.http]`` on
127.0.0.1 port 0, a generator -> file route (so the route families, the ledger and the
latency histogram carry samples) and a real ``type = "allxon"`` adapter linked to the
project's Allxon agent simulator (``adapters.allxon.sim``) over TLS loopback, so that
``junction_allxon_budget_remaining_ratio`` has a sample too. It is scraped over HTTP while it
runs.

A name counts as exported by its family's type, as Prometheus stores it: a gauge by its
name, a counter only as ``<name>_total`` (prometheus_client writes a
``CounterMetricFamily("x")`` as ``x_total``), a histogram as ``<name>_bucket``, ``_sum`` and
``_count``. So a bare counter name, or ``_total`` on a gauge, is reported missing.

No YAML library is installed in the venv (PyYAML is not a dependency), so ``alerts.yml`` is
read by :func:`read_yaml_subset`: a strict reader of block mappings and sequences with one
``key: value`` per line, plain or ``"..."`` scalars (no escapes), and comments. Anything
else in the file (flow collections, multi-line scalars, anchors, tabs) is an error here, so
the file stays within what both this reader and Prometheus read the same way; the file's
header says so.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from adapters.allxon.codec import encode_credential
from adapters.allxon.sim import open_allxon_simulator
from broker._ops_metrics import SnapshotCollector
from broker._runtime import Runtime, load

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "docs" / "operations"
ALERTS = OPS / "alerts.yml"
DASHBOARD = OPS / "grafana-dashboard.json"
UNIT = OPS / "junction.service"

METRIC = re.compile(r"\bjunction_[a-z0-9_]+")
LABEL_REF = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
#: The series names a family of each type is stored under, by suffix.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
#: The alerts issue 18 asks for, and the metric each one must watch.
REQUIRED_ALERTS = {
    "JunctionAdapterDisconnected": "junction_adapter_connected",
    "JunctionLedgerUnbalanced": "junction_route_ledger_balanced",
    "JunctionOldestPendingTooOld": "junction_route_oldest_pending_age_seconds",
    "JunctionDeadLettersRising": "junction_route_dead_lettered_total",
    "JunctionAllxonBudgetNearlySpent": "junction_allxon_budget_remaining_ratio",
}
BUDGET = "junction_allxon_budget_remaining_ratio"
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


# --------------------------------------------------------------------------- the YAML subset


@dataclass(frozen=True)
class _Line:
    number: int
    indent: int  # of the key; for "- key: v" that is past the "- "
    item: bool  # starts a sequence item
    key: str
    value: str | None  # None: a nested block follows


_KEY_LINE = re.compile(
    r"(?P<indent> *)(?P<item>- )?(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?: (?P<v>.*))?"
)


def _scalar(text: str | None, number: int) -> str | None:
    text = (text or "").strip()
    if not text:
        return None
    if text.startswith('"'):
        inner = text[1:-1]
        if len(text) < 2 or not text.endswith('"') or '"' in inner or "\\" in inner:
            raise ValueError(f'line {number}: a quoted value is one "..." without escapes')
        return inner
    if text[0] in "'[]{}&*!|>%@`#" or ": " in text or " #" in text or text.endswith(":"):
        raise ValueError(f"line {number}: not a plain scalar this reader takes: {text!r}")
    return text


def read_yaml_subset(text: str) -> Any:
    """The mappings, sequences and string scalars of ``text`` (see the module docstring)."""
    lines: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        found = _KEY_LINE.fullmatch(raw)
        if found is None:
            raise ValueError(f"line {number}: not `key: value` or `- key: value`: {raw!r}")
        indent = len(found["indent"]) + (2 if found["item"] else 0)
        value = _scalar(found["v"], number)
        lines.append(_Line(number, indent, bool(found["item"]), found["key"], value))
    if not lines:
        raise ValueError("empty document")
    node, end = _block(lines, 0, lines[0].indent)
    if end != len(lines):
        raise ValueError(f"line {lines[end].number}: indented less than the document")
    return node


def _block(lines: list[_Line], i: int, indent: int) -> tuple[Any, int]:
    if not lines[i].item:
        return _mapping(lines, i, indent)
    items: list[dict[str, Any]] = []
    while i < len(lines) and lines[i].indent == indent and lines[i].item:
        item, i = _mapping(lines, i, indent)
        items.append(item)
    return items, i


def _mapping(lines: list[_Line], i: int, indent: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    start = i
    while i < len(lines) and lines[i].indent >= indent:
        line = lines[i]
        if line.indent > indent:
            raise ValueError(f"line {line.number}: unexpected indentation")
        if line.item and i != start:
            break  # the next item of the sequence this mapping is in
        if line.key in out:
            raise ValueError(f"line {line.number}: {line.key} twice")
        i += 1
        if line.value is not None:
            out[line.key] = line.value
        elif i < len(lines) and lines[i].indent > indent:
            out[line.key], i = _block(lines, i, lines[i].indent)
        else:
            raise ValueError(f"line {line.number}: {line.key} has no value")
    return out, i


# --------------------------------------------------------------------------- metric names


def used_metrics(*texts: str) -> set[str]:
    """Every ``junction_...`` token of the texts."""
    return {name for text in texts for name in METRIC.findall(text)}


def exported_series(page: str) -> dict[str, set[str]]:
    """The series names a ``/metrics`` page exports, by family type (see the module
    docstring), each with the label names its samples carry."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(page):
        for suffix in SUFFIXES.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(k for k in sample.labels if k != "le")
    return out


def missing(used: Iterable[str], exported: dict[str, set[str]]) -> list[str]:
    """The names of ``used`` that are not exported series, sorted."""
    return sorted(set(used) - set(exported))


def rules() -> list[dict[str, Any]]:
    doc = read_yaml_subset(ALERTS.read_text(encoding="utf-8"))
    assert set(doc) == {"groups"}, doc.keys()
    out: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group.keys()
        out.extend(group["rules"])
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every query of the dashboard: panel targets and template variables."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for var in dashboard["templating"]["list"]:
        yield var["query"]["query"] if isinstance(var["query"], dict) else var["query"]


# --------------------------------------------------------------------------- a real bridge


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def values(page: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a page keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


async def scrape_until(url: str, ready: Callable[[str], bool], timeout: float = 20.0) -> str:
    """Scrape ``url`` (off the trio loop, which serves the simulator) until ``ready`` of the
    page is true; that page."""
    page = ""
    with trio.move_on_after(timeout):
        while True:
            status, page = await trio.to_thread.run_sync(_get, url)
            assert status == 200, page
            if ready(page):
                return page
            await trio.sleep(0.1)
    raise AssertionError(f"not ready within {timeout} s; the last page:\n{page}")


BRIDGE = """
[junction]
state_dir = "{state}"
[junction.http]
listen = "127.0.0.1:0"
[adapters.gen]
type = "generator"
kind = "metric"
body = {{ module = "m", name = "n", value = 1.0 }}
rate = 50
[adapters.out]
type = "file"
path = "{out}"
[adapters.allxon]
type = "allxon"
url = "{url}"
credentials = "{credentials}"
ca_file = "{ca}"
app_name = "junction-test"
flush_interval_s = 0.1
announce_grace_s = 0.5
[[adapters.allxon.modules]]
moduleName = "room"
states = [{{ name = "power", displayType = "string" }}]
[[routes]]
name = "gen-to-file"
from = "gen"
to = "out"
"""


async def test_every_metric_of_the_rules_and_the_dashboard_is_exported(
    tmp_path: Path, write_config: Any, start_runtime: Any
) -> None:
    alerts, dashboard = ALERTS.read_text(encoding="utf-8"), DASHBOARD.read_text(encoding="utf-8")
    used = used_metrics(alerts, dashboard)
    exprs = [r["expr"] for r in rules()] + list(dashboard_exprs(json.loads(dashboard)))
    assert used_metrics(*exprs) == used  # no name outside a query (a typo in a description)
    with trio.fail_after(60):
        async with open_allxon_simulator() as sim:
            credentials, ca = tmp_path / "plugin_credential.json", tmp_path / "agent-ca.pem"
            credentials.write_bytes(encode_credential(sim.credential))
            ca.write_bytes(sim.ca_pem)
            text = BRIDGE.format(
                state=tmp_path / "state",
                out=tmp_path / "out.jsonl",
                url=sim.url,
                credentials=credentials,
                ca=ca,
            )
            async with start_runtime(load(write_config(text))) as rt:
                assert isinstance(rt, Runtime) and rt.ops is not None
                page = await scrape_until(f"{rt.ops.url}/metrics", linked_and_delivering)
    exported = exported_series(page)
    assert missing(used, exported) == []
    assert len(used) >= 12, sorted(used)  # the check checked something
    # the rules' annotations name only labels their metrics carry
    for rule in rules():
        known = set(TARGET_LABELS)
        for name in used_metrics(rule["expr"]):
            known |= exported[name]
        refs = set(LABEL_REF.findall(" ".join(rule["annotations"].values())))
        assert refs <= known, (rule["alert"], refs - known)
    # the announce is spent: the ratio tracks the calls in the window (the status gauge)
    budget = {k: v for k, v in values(page).items() if k[0] == BUDGET}
    assert list(budget) == [(BUDGET, (("adapter", "allxon"),))]
    assert 0.9 < budget[(BUDGET, (("adapter", "allxon"),))] < 1.0


def linked_and_delivering(page: str) -> bool:
    """The Allxon adapter is connected (announced), and the route delivered and timed."""
    got = values(page)
    allxon = (("adapter", "allxon"),)
    route = (("route", "gen-to-file"),)
    return (
        got.get(("junction_adapter_connected", allxon)) == 1
        and got.get((BUDGET, allxon), 1.0) < 1.0
        and got.get(("junction_route_delivery_latency_seconds_count", route), 0) > 0
        and got.get(("junction_route_ledger_balanced", route)) == 1
    )


def test_the_name_check_reports_what_is_not_exported() -> None:
    snapshot = {
        "adapters": {
            "a": {"state": "connected", "gauges": {"allxon_budget_remaining_ratio": 0.99}}
        },
        "routes": {"r": {"ledger": {"received": 1, "balanced": True}}},
    }
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    exported = exported_series(generate_latest(registry).decode())
    alerts = ALERTS.read_text(encoding="utf-8")
    wrong = alerts + "\n        expr: rate(junction_no_such_metric[5m]) > junction_route_pending\n"
    assert missing(used_metrics(alerts), exported) == []
    assert missing(used_metrics(wrong), exported) == ["junction_no_such_metric"]
    # by type: a counter is stored as _total, a histogram as _bucket/_sum/_count only
    assert missing(
        [
            "junction_route_delivered",
            "junction_route_pending_total",
            "junction_route_delivery_latency_seconds",
            "junction_route_delivery_latency_seconds_count",
        ],
        exported,
    ) == [
        "junction_route_delivered",
        "junction_route_delivery_latency_seconds",
        "junction_route_pending_total",
    ]


# --------------------------------------------------------------------------- the files themselves


def test_alert_rules_are_well_formed_and_cover_the_issue() -> None:
    by_name: dict[str, dict[str, Any]] = {}
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] not in by_name, rule["alert"]
        by_name[rule["alert"]] = rule
        assert rule["expr"].strip(), rule
        assert "for" not in rule or DURATION.fullmatch(rule["for"]), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule
        assert set(rule["annotations"]) == {"summary", "description"}, rule
        assert all(v.strip() for v in rule["annotations"].values()), rule
    for name, metric in REQUIRED_ALERTS.items():
        assert metric in used_metrics(by_name[name]["expr"]), (name, by_name[name]["expr"])
    assert by_name["JunctionAdapterDisconnected"]["for"] == "2m"
    assert by_name["JunctionLedgerUnbalanced"]["for"] == "5m"
    assert "[10m]" in by_name["JunctionDeadLettersRising"]["expr"]
    assert "< 0.1" in by_name["JunctionAllxonBudgetNearlySpent"]["expr"]


def test_the_yaml_reader_is_strict() -> None:
    assert read_yaml_subset('a:\n  - b: "x y"\n    c: d\n  - b: e\n') == {
        "a": [{"b": "x y", "c": "d"}, {"b": "e"}]
    }
    for bad in (
        "a: [1, 2]\n",  # a flow sequence
        "a: |\n  text\n",  # a block scalar
        'a: "x\\"y"\n',  # an escape
        "a: b: c\n",  # a colon in a plain scalar
        "a:\n",  # no value
        "a: x\nb:\n    c: 1\n  d: 2\n",  # indentation that closes no block
        "a: 1\na: 2\n",  # a key twice
        "a: 1 # comment\n",  # a trailing comment (kept out of values)
    ):
        with pytest.raises(ValueError):
            read_yaml_subset(bad)


def test_the_dashboard_is_importable_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes the bridge's /metrics",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    assert 36 <= dash["schemaVersion"] <= 41 and dash["uid"] and dash["title"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
    text = json.dumps(dash)
    for wanted in (
        "junction_adapter_connected",
        "rate(junction_route_received_total",
        "rate(junction_route_delivered_total",
        "rate(junction_route_dead_lettered_total",
        "rate(junction_route_dropped_total",
        "junction_route_pending{",
        "junction_route_oldest_pending_age_seconds",
        "junction_route_ledger_balanced",
        "histogram_quantile(0.5, sum by (route, le) (rate(junction_route_delivery_latency",
        "histogram_quantile(0.99, sum by (route, le) (rate(junction_route_delivery_latency",
        "junction_outbox_rows",
        "junction_outbox_bytes",
        "junction_allxon_budget_remaining_ratio",
    ):
        assert wanted in text, wanted


def unit_file(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections: each key with its values in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, eq, value = line.partition("=")
        assert current is not None and eq and key.strip() == key, f"line {number}: {raw!r}"
        current.setdefault(key, []).append(value.strip())
    return sections


def test_the_systemd_unit_runs_junction_run_and_outlasts_the_shutdown_grace() -> None:
    unit = unit_file(UNIT.read_text(encoding="utf-8"))
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/junction") and argv[argv.index("run") :] == [
        "run",
        "/etc/junction/site.toml",
    ]
    # Type=notify would hang the start: the bridge never calls sd_notify
    assert not any("NOTIFY_SOCKET" in p.read_text() for p in (ROOT / "broker").rglob("*.py"))
    assert service["Type"] == ["simple"]
    assert service["User"] == ["junction"] and service["StateDirectory"] == ["junction"]
    assert service["EnvironmentFile"] == ["/etc/junction/junction.env"]
    assert service["Restart"] == ["on-failure"] and service["KillSignal"] == ["SIGTERM"]
    assert service["NoNewPrivileges"] == ["yes"] and service["ProtectSystem"] == ["strict"]
    site = tomllib.loads((ROOT / "routes" / "site-example.toml").read_text(encoding="utf-8"))
    assert site["junction"]["state_dir"] == "/var/lib/junction"  # = StateDirectory
    grace = float(site["junction"]["shutdown_grace_s"])
    assert float(service["TimeoutStopSec"][0]) > grace + 5
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/operations/junction.service" in readme and "ExecStart=" not in readme
