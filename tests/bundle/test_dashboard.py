"""The Grafana dashboard and provisioning: conventions, and every query parsed by promtool."""

from __future__ import annotations

import json

import pytest
import yaml
from lse_devtools.bundle import (
    JOB_MATCHER,
    ROOT,
    documented_labels,
    documented_metrics,
    load_yaml,
    range_selectors,
    recorded_names,
    run,
    selectors,
    tool,
)
from lse_devtools.dashboard import DASHBOARD, DASHBOARD_PATH, as_sent_at_all, expressions

GRAFANA = ROOT / "grafana"
PANELS = DASHBOARD["panels"]
ALLOWED_TYPES = {"timeseries", "stat", "table", "bargauge", "heatmap", "xychart"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
QUERIES = expressions()
# tests/bundle/test_live_prometheus.py (another engineer's file) still imports this name.


def test_dashboard_identity():
    assert "__inputs" not in DASHBOARD
    assert "__requires" not in DASHBOARD
    assert DASHBOARD["uid"] == "libvirt-snapshots"
    assert DASHBOARD["graphTooltip"] == 1
    assert DASHBOARD["editable"] is False
    assert DASHBOARD["title"]
    assert "id" not in DASHBOARD or DASHBOARD["id"] is None


def test_dashboard_file_is_tidy_json():
    text = DASHBOARD_PATH.read_text()
    assert text == json.dumps(DASHBOARD, indent=2, ensure_ascii=False) + "\n"


def test_template_variables():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for name in ("hypervisor", "instance", "domain"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == DATASOURCE
        assert var["includeAll"] is True
        assert var["allValue"] == ".*"
        assert JOB_MATCHER in var["query"]["query"]
    assert "$hypervisor" in variables["instance"]["query"]["query"]
    assert "$instance" in variables["domain"]["query"]["query"]


def test_panel_types_are_current():
    for panel in PANELS:
        assert panel["type"] in ALLOWED_TYPES, f"{panel['title']}: {panel['type']}"


def test_panel_ids_are_unique():
    ids = [p["id"] for p in PANELS]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in PANELS:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p["title"])
def test_panel_has_unit_description_and_datasource(panel):
    assert panel["fieldConfig"]["defaults"].get("unit"), "no unit"
    assert len(panel.get("description", "")) > 20, "no description"
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], "no query"
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE
        assert target["refId"]


@pytest.mark.parametrize("where,expr", QUERIES, ids=[w for w, _ in QUERIES])
def test_ranges_use_rate_interval(where, expr):
    for rng in range_selectors(expr):
        assert rng == "[$__rate_interval]", f"{where}: {rng}"


@pytest.mark.parametrize("where,expr", QUERIES, ids=[w for w, _ in QUERIES])
def test_queries_select_the_exporter_job_and_filters(where, expr):
    for name, matchers in selectors(expr):
        if name == "ALERTS":
            assert 'alertname=~"Libvirt.*"' in matchers
            continue
        assert JOB_MATCHER in matchers, f"{where}: {name}{{{matchers}}}"
        if not where.startswith("variable"):
            assert 'instance=~"$instance"' in matchers, f"{where}: {name}"
            assert 'hypervisor=~"$hypervisor"' in matchers, f"{where}: {name}"


@pytest.mark.parametrize("where,expr", QUERIES, ids=[w for w, _ in QUERIES])
def test_queries_use_only_known_metrics(where, expr):
    known = set(documented_metrics()) | recorded_names() | {"ALERTS", "up"}
    for name, _ in selectors(expr):
        assert name in known, f"{where}: {name} is neither in README.md's metric tables nor a rule"


def test_domain_panels_filter_by_domain():
    """Every series with a domain label is filtered by the domain variable (the hypervisor's
    histograms have none)."""
    labels = documented_labels()
    for where, expr in QUERIES:
        for name, matchers in selectors(expr):
            domain_series = "domain" in labels.get(name, ()) or \
                name.startswith(("domain:", "domain_operation:"))
            if domain_series and not where.startswith("variable"):
                assert 'domain=~"$domain"' in matchers, f"{where}: {name}"
            elif name.startswith("libvirt_snapshot_operation_duration_seconds"):
                assert 'domain=~"$domain"' not in matchers, f"{where}: {name} has no domain"


def test_every_query_parses_in_prometheus(tmp_path):
    """promtool parses each query (Grafana's variables filled in) as a recording rule."""
    rules = [{"record": f"dashboard:query:{i}", "expr": as_sent_at_all(expr)}
             for i, (_, expr) in enumerate(QUERIES)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_annotations_mark_snapshot_operations():
    exprs = [a.get("expr", "") for a in DASHBOARD["annotations"]["list"]]
    assert any("libvirt_snapshot_operation_in_progress" in e for e in exprs)
    assert any("libvirt_snapshot_last_operation_end_timestamp_seconds" in e for e in exprs)
    for annotation in DASHBOARD["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == DATASOURCE


def test_dashboard_shows_what_the_study_needs():
    text = json.dumps(PANELS)
    for metric in (
        "libvirt_snapshot_operation_elapsed_seconds",
        "libvirt_snapshot_last_operation_duration_seconds",
        "libvirt_snapshot_last_operation_depth",
        "libvirt_node_memory_available_bytes",
        "libvirt_node_memory_cached_bytes",
        "libvirt_node_memory_buffers_bytes",
        "libvirt_node_memory_dirty_bytes",
        "libvirt_node_memory_writeback_bytes",
        "libvirt_node_pressure_memory_waiting_seconds_total",
        "libvirt_node_pressure_io_waiting_seconds_total",
        "libvirt_domain_memory_used_bytes",
        "libvirt_domain_qemu_write_bytes_total",
        "libvirt_snapshot_last_operation_host_memory_available_start_bytes",
        "libvirt_snapshot_last_operation_host_dirty_peak_bytes",
        "libvirt_snapshot_last_operation_host_writeback_peak_bytes",
        "libvirt_snapshots",
        "libvirt_snapshot_max_depth",
        "libvirt_snapshot_oldest_creation_timestamp_seconds",
        "libvirt_domain_image_size_bytes",
        "ALERTS",
    ):
        assert metric in text, metric
    assert PANELS[0]["title"] == "Operations in flight" and PANELS[0]["gridPos"]["y"] == 0


def test_xychart_series_name_existing_fields():
    for panel in PANELS:
        if panel["type"] != "xychart":
            continue
        refs = {f"Value #{t['refId']}" for t in panel["targets"]}
        assert panel["options"]["mapping"] == "manual"
        for series in panel["options"]["series"]:
            assert series["x"]["matcher"]["options"] in refs
            assert series["y"]["matcher"]["options"] in refs


def test_datasource_provisioning():
    config = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (ds,) = config["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["uid"] == "libvirt-snapshot-prometheus"
    assert ds["url"] == "http://prometheus:9090"


def test_dashboard_provisioning():
    config = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
