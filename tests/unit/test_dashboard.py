"""The Grafana dashboard of the chain (deploy/grafana/provisioning.json): a dashboard Grafana
can import, whose queries name only the metrics the workers define."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shared.observability import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "provisioning.json"
PANEL_TYPES = {"row", "timeseries", "stat"}
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
    variables = [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries + variables


def test_dashboard_has_what_grafana_imports() -> None:
    """The dashboard has a uid, title, schema version and panels with unique ids inside the
    24-column grid, each query panel reading the Prometheus data source variable."""
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h"))
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
