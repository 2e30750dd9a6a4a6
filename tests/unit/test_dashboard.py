"""The Grafana dashboard of the chain (deploy/grafana/provisioning.json): Grafana's dashboard by
Grafana's own types, whose queries name only the metrics the workers define.

Grafana publishes the dashboard model its frontend loads, and each panel plugin's options, as
TypeScript types (npm @grafana/schema). tests/grafana/schema.ts puts them together; the test
writes the dashboard as an object literal that ``satisfies`` them and runs TypeScript's
``tsc --noEmit --strict``, so a field of the wrong type, a required one missing, one Grafana does
not know or an unknown panel type is a compiler error. Both packages (pinned below) are installed
by the test itself into ``.provision/npm/`` and kept there; without Node or npm the test fails.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shared.observability import Metrics
from tests import npm

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "provisioning.json"
SCHEMA_TS = REPO_ROOT / "tests" / "grafana" / "schema.ts"
GRAFANA_SCHEMA_VERSION = "13.2.3"
TYPESCRIPT_VERSION = "7.0.2"
TOOLS_DIR = (
    REPO_ROOT / ".provision" / "npm" / f"grafana-schema-{GRAFANA_SCHEMA_VERSION}-ts-{TYPESCRIPT_VERSION}"
)
NPM_TIMEOUT = 300
TSC_OPTIONS = {
    "strict": True,
    "noEmit": True,
    "module": "esnext",
    "moduleResolution": "bundler",  # @grafana/schema's types are reached through its exports map
    "target": "es2022",
    "types": [],
}
# A metric name in PromQL: a name followed by a selector or a range, or any of our prefix.
_SELECTED = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
_OURS = re.compile(r"\bprovisioning_[a-zA-Z0-9_]+")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _series_names() -> set[str]:
    """Every series name the workers' registry exposes (counters with ``_total``, histograms
    with ``_bucket``, ``_sum`` and ``_count``)."""
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total"}
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names |= {family.name}
    return names


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries + variables


def test_dashboard_has_what_grafana_imports() -> None:
    """What Grafana's types leave open: a uid and a title, panels with unique ids inside the
    24-column grid, each query panel reading the Prometheus data source variable."""
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs
        assert len(refs) == len(set(refs))


@pytest.mark.parametrize(
    "wanted",
    [
        "provisioning_steps_processed_total",  # rates
        "provisioning_step_duration_seconds_bucket",  # step durations
        "provisioning_steps_retried_total",  # retries
        "provisioning_messages_deadlettered_total",  # dead letters
        "provisioning_consumer_lag",  # consumer lag
    ],
)
def test_dashboard_shows_the_chain(wanted: str) -> None:
    """Rates, step durations, retries, dead letters and consumer lag each have a query."""
    assert any(wanted in expr for expr in _exprs(_dashboard()))


def test_dashboard_queries_only_metrics_the_workers_define() -> None:
    """Every metric a query names is one shared/observability.py defines."""
    defined = _series_names()
    for expr in _exprs(_dashboard()):
        named = set(_OURS.findall(expr)) | {
            name for name in _SELECTED.findall(expr) if not name.startswith("$")
        }
        assert named, expr
        assert named <= defined, f"undefined in {expr!r}: {named - defined}"


WHY = "the dashboard is checked with @grafana/schema and tsc"


def _tool(name: str) -> str:
    return npm.tool(name, why=WHY)


@pytest.fixture(scope="module")
def tools_dir() -> Path:
    """The directory whose node_modules holds @grafana/schema and typescript, installed on first use."""
    packages = [f"@grafana/schema@{GRAFANA_SCHEMA_VERSION}", f"typescript@{TYPESCRIPT_VERSION}"]
    return npm.installed(TOOLS_DIR, packages, why=WHY, timeout=NPM_TIMEOUT)


def _tsc(tools: Path, dashboard: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``tsc --noEmit --strict`` of ``dashboard`` as an object literal satisfying Grafana's types,
    in a directory of its own under ``tools`` (where the packages resolve)."""
    work = Path(tempfile.mkdtemp(prefix="check-", dir=tools))
    try:
        shutil.copy(SCHEMA_TS, work / "schema.ts")
        literal = json.dumps(dashboard, indent=1)
        (work / "dashboard.ts").write_text(
            f'import type {{ CheckedDashboard }} from "./schema";\n\n'
            f"export const dashboard = {literal} satisfies CheckedDashboard;\n"
        )
        config = {"compilerOptions": TSC_OPTIONS, "files": ["schema.ts", "dashboard.ts"]}
        (work / "tsconfig.json").write_text(json.dumps(config))
        tsc = tools / "node_modules" / "typescript" / "bin" / "tsc"
        return subprocess.run(
            [_tool("node"), str(tsc), "--pretty", "false", "-p", str(work / "tsconfig.json")],
            capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_pinned_compiler_runs(tools_dir: Path) -> None:
    """The installed TypeScript is the pinned one (the check's results are that version's)."""
    done = subprocess.run(
        [_tool("node"), str(tools_dir / "node_modules" / "typescript" / "bin" / "tsc"), "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.stdout.strip() == f"Version {TYPESCRIPT_VERSION}", done.stderr


def test_the_dashboard_is_grafana_s_dashboard_by_its_own_types(tools_dir: Path) -> None:
    """tsc --strict finds deploy/grafana/provisioning.json to satisfy @grafana/schema's Dashboard,
    each panel its plugin's options: no error at all."""
    done = _tsc(tools_dir, _dashboard())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout == ""


def _panel(dashboard: dict[str, Any], kind: str) -> dict[str, Any]:
    panel: dict[str, Any] = next(p for p in dashboard["panels"] if p["type"] == kind)
    return panel


Mutation = Callable[[dict[str, Any]], None]


def _set(path: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Mutation:
    """Set ``key`` to ``value`` in the part of the dashboard ``path`` finds."""

    def mutate(dashboard: dict[str, Any]) -> None:
        path(dashboard)[key] = value

    return mutate


def _drop(key: str) -> Mutation:
    """Remove ``key`` from the dashboard."""

    def mutate(dashboard: dict[str, Any]) -> None:
        del dashboard[key]

    return mutate


BROKEN: dict[str, tuple[Mutation, str]] = {
    "a gridPos coordinate as a string": (
        _set(lambda d: _panel(d, "stat")["gridPos"], "x", "0"),
        "Type 'string' is not assignable to type 'number'",
    ),
    "an unknown panel type": (
        _set(lambda d: _panel(d, "timeseries"), "type", "timeserie"),
        "'\"timeserie\"' is not assignable",
    ),
    "a field no panel has": (
        _set(lambda d: _panel(d, "stat"), "colour", "red"),
        "'\"colour\"' does not exist",
    ),
    "a stat option outside its enum": (
        _set(lambda d: _panel(d, "stat")["options"], "colorMode", "rainbow"),
        "'\"rainbow\"' is not assignable",
    ),
    "a time series field config misspelt": (
        _set(lambda d: _panel(d, "timeseries")["fieldConfig"]["defaults"], "custom", {"lineWidht": 2}),
        "'\"lineWidht\"' does not exist",
    ),
    "a variable's current value without its text": (
        _set(lambda d: d["templating"]["list"][0], "current", {}),
        "missing the following properties",
    ),
    "no schemaVersion": (_drop("schemaVersion"), "schemaVersion"),
}
"""Mutations of the real dashboard, each with what tsc must say of it."""


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_grafana_s_types_refuse_a_broken_dashboard(tools_dir: Path, broken: str) -> None:
    """The check has teeth: the dashboard broken one way is a compiler error naming the fault."""
    mutate, said = BROKEN[broken]
    dashboard = copy.deepcopy(_dashboard())
    mutate(dashboard)
    done = _tsc(tools_dir, dashboard)
    assert done.returncode != 0, f"tsc accepted {broken}"
    assert "error TS" in done.stdout and said in done.stdout, done.stdout[-3000:]
