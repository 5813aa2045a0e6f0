"""The Grafana dashboard and provisioning: Grafana's conventions as its dashboard linter checks
them (github.com/grafana/dashboard-linter: a datasource variable, job and instance variables,
job=~"$job" and instance=~"$instance" in every query, $__rate_interval in rates, units), the
rows, the data links to the exporter's pages, every query parsed by promtool, and the queries
that read the series of #22 answered by a real Prometheus scraping a handwritten exposition."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import yaml
from lse_devtools import dashboard, handbuilt_view
from lse_devtools.bundle import (
    JOB,
    ROOT,
    RULE_FILES,
    documented_labels,
    documented_metrics,
    load_yaml,
    range_selectors,
    recorded_names,
    run,
    selectors,
    tool,
)
from lse_devtools.dashboard import (
    DASHBOARD,
    DASHBOARD_PATH,
    PANELS,
    ROWS,
    VARIABLES,
    as_sent_at_all,
    expressions,
    panel_links,
    render_text,
    resolve_link,
)
from lse_devtools.exporter_proc import free_port
from lse_devtools.services import exposition_server, prometheus, wait

GRAFANA = ROOT / "grafana"
ALLOWED_TYPES = {"timeseries", "stat", "table", "bargauge", "heatmap", "xychart"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
QUERIES = expressions()
JOB_MATCH = 'job=~"$job"'
INSTANCE_MATCH = 'instance=~"$instance"'
# The rows, top to bottom (RUNBOOK.md names them).
ROW_TITLES = ["Now", "Last operations", "Guest pause", "Verdicts", "Host during snapshots",
              "Inventory", "Exporter"]
LAST_OPERATIONS = "Last operations: verdict, guest pause, duration and host context"
# Tables and where their rows link: an operation's page, or its exporter's status page.
TABLE_LINKS = {
    "Operations in flight": "exporter",
    LAST_OPERATIONS: "operation",
    "Firing alerts": "operation",
    "Exporters": "exporter",
}
JOIN_OPERATION = "group_left (id, url) libvirt_snapshot_last_operation_info{"
JOIN_EXPORTER = "group_left (url) libvirt_snapshot_exporter_url_info{"
RULES_NOTE = "prometheus/rules/recording.yml"
# The OpenStack instance's name beside each domain; `instance` is the scrape target's label.
JOIN_INSTANCE_NAME = "group_left (instance_name) (libvirt_domain_openstack_info{"
DOMAIN_TABLES = ("Operations in flight", LAST_OPERATIONS, "Firing alerts")
# Grafana's unit ids the linter accepts (packages/grafana-data/src/valueFormats/categories.ts),
# those of the categories a dashboard of durations, bytes and counts can use.
VALID_UNITS = {
    "none", "string", "short", "percent", "percentunit", "sci", "locale",
    "bytes", "decbytes", "bits", "decbits", "kbytes", "deckbytes", "mbytes", "decmbytes",
    "gbytes", "decgbytes", "tbytes", "dectbytes",
    "binBps", "Bps", "binbps", "bps", "KiBs", "KBs", "MiBs", "MBs", "GiBs", "GBs",
    "dateTimeAsIso", "dateTimeAsIsoNoDateIfToday", "dateTimeAsUS", "dateTimeAsUSNoDateIfToday",
    "dateTimeAsLocal", "dateTimeAsLocalNoDateIfToday", "dateTimeAsSystem", "dateTimeFromNow",
    "hertz", "ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dthms",
    "dtdhms", "timeticks", "clockms", "clocks",
    "cps", "ops", "reqps", "rps", "wps", "iops", "cpm", "opm", "rpm", "wpm",
    "bool", "bool_yes_no", "bool_on_off",
}
LINTED_TYPES = {"stat", "table", "timeseries", "gauge"}  # the linter's panel-units-rule's


def _lint_exclusions() -> dict[str, set[str]]:
    """rule: panels excluded from it by grafana/dashboards/.lint."""
    config = load_yaml(GRAFANA / "dashboards" / ".lint")
    return {rule: {e["panel"] for e in entry["entries"]}
            for rule, entry in config["exclusions"].items()}


def _panel(title: str) -> dict:
    (found,) = [p for p in PANELS if p["title"] == title]
    return found


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
    """The linter's template rules: a datasource variable; job and instance query variables on
    the templated datasource, labeled Job and Instance, multi-select with allValue .+; every
    query variable refreshed on time range change."""
    ds = VARIABLES["datasource"]
    assert ds["type"] == "datasource" and ds["label"] == "Data source"
    assert ds["query"] == "prometheus"
    for name, var in VARIABLES.items():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, name
            assert var["refresh"] == 2, name
            assert var["query"]["query"] == var["definition"], name
    for name in ("job", "instance"):
        var = VARIABLES[name]
        assert var["type"] == "query"
        assert var["label"] == name.title()
        assert var["multi"] is True
        assert var["allValue"] == ".+"
    # job: the bundle's by default, listed from a series only this exporter has (Debian's
    # prometheus-libvirt-exporter exports libvirt_up too); no All, which would mix them in.
    job = VARIABLES["job"]
    assert job["query"]["query"] == "label_values(libvirt_snapshot_exporter_build_info, job)"
    assert job["current"]["value"] == [JOB] and job["includeAll"] is False
    # Every other variable: All by default, narrowed by the ones above it.
    for name in ("hypervisor", "instance", "domain"):
        var = VARIABLES[name]
        assert var["includeAll"] is True and var["current"]["value"] == ["$__all"]
        assert JOB_MATCH in var["query"]["query"]
    assert VARIABLES["hypervisor"]["allValue"] == ".*"  # absent on a hypervisor's own Prometheus
    assert VARIABLES["domain"]["allValue"] == ".*"
    assert "$hypervisor" in VARIABLES["instance"]["query"]["query"]
    assert "$instance" in VARIABLES["domain"]["query"]["query"]
    assert list(VARIABLES) == ["datasource", "job", "hypervisor", "instance", "domain"]


def test_rows_in_order():
    """Rows, expanded, in the order RUNBOOK.md names them, each followed by its panels."""
    assert [r["title"] for r in ROWS] == ROW_TITLES
    assert DASHBOARD["panels"][0]["type"] == "row"
    for r in ROWS:
        assert r["collapsed"] is False and r["panels"] == []
        assert r["gridPos"] == {"x": 0, "y": r["gridPos"]["y"], "w": 24, "h": 1}
    ys = [r["gridPos"]["y"] for r in ROWS]
    assert ys == sorted(ys)
    # Every panel sits below its row, in the order of the file.
    row_of = {}
    current = None
    for p in DASHBOARD["panels"]:
        if p["type"] == "row":
            current = p
            continue
        row_of[p["title"]] = current["title"]
        assert p["gridPos"]["y"] > current["gridPos"]["y"], p["title"]
        later = [r for r in ROWS if r["gridPos"]["y"] > current["gridPos"]["y"]]
        if later:
            assert p["gridPos"]["y"] + p["gridPos"]["h"] <= later[0]["gridPos"]["y"], p["title"]
    assert row_of["Operations in flight"] == "Now"
    assert row_of["Stuck operations"] == "Now"
    assert row_of[LAST_OPERATIONS] == "Last operations"
    assert row_of["What set the pace of operations in the last 24 h"] == "Verdicts"
    assert row_of["Exporters"] == "Exporter"
    assert row_of["Firing alerts"] == "Exporter"


def test_verdict_and_guest_pause_near_the_top():
    """The last operations' table comes right after Now, its verdict and guest pause columns
    among its first, before the host context."""
    table = _panel(LAST_OPERATIONS)
    assert table["gridPos"]["y"] <= 12
    exprs = {t["refId"]: t["expr"] for t in table["targets"]}
    verdict = next(r for r, e in exprs.items() if "libvirt_snapshot_last_operation_verdict_info" in e)
    paused = next(r for r, e in exprs.items()
                  if "libvirt_snapshot_last_operation_guest_paused_seconds" in e)
    index = table["transformations"][-1]["options"]["indexByName"]
    # right after what the operation is: hypervisor, instance, domain and its OpenStack name,
    # operation, when it ended and whether it worked
    assert index["pace_setter"] < 9, "the verdict is not among the first columns"
    assert index[f"Value #{paused}"] < 9, "the guest pause is not among the first columns"
    assert f"Value #{verdict}" in table["transformations"][-1]["options"]["excludeByName"]
    assert _panel("Longest guest pause in the last 24 h")["gridPos"]["y"] < table["gridPos"]["y"]


def test_panel_types_are_current():
    for panel in PANELS:
        assert panel["type"] in ALLOWED_TYPES, f"{panel['title']}: {panel['type']}"


def test_panel_ids_are_unique():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p["title"])
def test_panel_has_unit_description_and_datasource(panel):
    unit = panel["fieldConfig"]["defaults"].get("unit")
    assert unit, "no unit"
    if panel["type"] in LINTED_TYPES:
        assert unit in VALID_UNITS, f"{unit!r} is not one of Grafana's unit ids"
    assert len(panel.get("description", "")) > 20, "no description"
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], "no query"
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE
        assert target["refId"]


# f(selector[range]): a function applied to one range selector.
_RANGE_CALL = re.compile(r"(\w+)\(\s*[a-zA-Z_:][\w:]*\{[^}]*\}(\[[^\]]*\])\s*\)")


@pytest.mark.parametrize("where,expr", QUERIES, ids=[w for w, _ in QUERIES])
def test_ranges_use_rate_interval(where, expr):
    """rate and irate (the linter's target-rate-interval-rule), increase and changes over
    $__rate_interval; a fixed window only for a *_over_time of the last day."""
    calls = _RANGE_CALL.findall(expr)
    assert len(calls) == len(range_selectors(expr)), f"{where}: a range outside f(selector[...])"
    for function, rng in calls:
        if function.endswith("_over_time") and rng == "[1d]":
            continue
        assert rng == "[$__rate_interval]", f"{where}: {function}{rng}"


@pytest.mark.parametrize("where,expr", QUERIES, ids=[w for w, _ in QUERIES])
def test_queries_select_the_job_and_instance_variables(where, expr):
    """job=~"$job" and instance=~"$instance" in every selector (the linter's target-job-rule
    and target-instance-rule), and the hypervisor filter; the firing alerts' ALERTS are the
    exceptions grafana/dashboards/.lint declares."""
    exclusions = _lint_exclusions()
    if where == "variable job":  # lists the jobs: test_template_variables
        return
    for name, matchers in selectors(expr):
        if name == "ALERTS":
            assert 'alertname=~"Libvirt.*"' in matchers or 'alertname="Libvirt' in matchers
            if any(where.startswith(f"panel {p['id']} ") for p in PANELS
                   if p["title"] in exclusions["target-instance-rule"]):
                assert 'instance=~"$instance|"' in matchers, where
                continue
        assert JOB_MATCH in matchers, f"{where}: {name}{{{matchers}}}"
        assert 'job="' not in matchers, f"{where}: a hard-coded job"
        if where != "variable hypervisor":
            assert 'hypervisor=~"$hypervisor"' in matchers, f"{where}: {name}"
        if not where.startswith("variable"):
            assert INSTANCE_MATCH in matchers, f"{where}: {name}"


def test_lint_exclusions_are_real():
    """Each panel .lint excludes exists and has a query the rule would reject."""
    for rule, panels in _lint_exclusions().items():
        label = rule.split("-")[1]
        for title in panels:
            exprs = [t["expr"] for t in _panel(title)["targets"]]
            assert any(f'{label}=~"${label}"' not in m for e in exprs for _, m in selectors(e)), \
                f"{rule}: {title} needs no exclusion"


@pytest.mark.parametrize("where,expr", QUERIES, ids=[w for w, _ in QUERIES])
def test_queries_use_only_known_metrics(where, expr):
    known = set(documented_metrics()) | recorded_names() | {"ALERTS", "up"}
    for name, _ in selectors(expr):
        assert name in known, f"{where}: {name} is neither in docs/metrics.md's tables nor a rule"


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
            elif name.startswith(("libvirt_snapshot_operation_duration_seconds",
                                  "libvirt_snapshot_operation_guest_paused_seconds")):
                assert 'domain=~"$domain"' not in matchers, f"{where}: {name} has no domain"


def test_every_query_parses_in_prometheus(tmp_path):
    """promtool parses each query (Grafana's variables filled in) as a recording rule."""
    rules = [{"record": f"dashboard:query:{i}", "expr": as_sent_at_all(expr)}
             for i, (_, expr) in enumerate(QUERIES)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def _annotation(name: str) -> dict:
    (found,) = [a for a in DASHBOARD["annotations"]["list"] if a.get("name") == name]
    return found


def test_annotations_mark_snapshot_operations_and_link_them():
    """Running operations link to their exporter's status page (and to the page their id has
    once they have ended), finished ones to their own page: the url label joined into the
    query, an <a href> in the text (Grafana's annotation tooltip renders the text as sanitized
    HTML)."""
    running = _annotation("Snapshot operations running")
    finished = _annotation("Snapshot operations finished")
    assert "libvirt_snapshot_operation_in_progress" in running["expr"]
    assert JOIN_EXPORTER in running["expr"]
    assert '<a href="{{url}}/"' in running["textFormat"]
    assert '<a href="{{url}}/operations/{{id}}"' in running["textFormat"]  # once it has ended
    assert "libvirt_snapshot_last_operation_end_timestamp_seconds" in finished["expr"]
    assert JOIN_OPERATION in finished["expr"]
    assert '<a href="{{url}}"' in finished["textFormat"]
    for annotation in DASHBOARD["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == DATASOURCE
            assert "{{url}}" in annotation["textFormat"], annotation["name"]


def test_every_table_links_its_rows():
    """Each table's rows link to an operation's page (/operations/<id>, the url label of
    libvirt_snapshot_last_operation_info joined into its query) or, for operations in flight
    and exporters, to the exporter's status page (libvirt_snapshot_exporter_url_info)."""
    tables = {p["title"]: p for p in PANELS if p["type"] == "table"}
    assert set(tables) == set(TABLE_LINKS)
    for title, kind in TABLE_LINKS.items():
        panel = tables[title]
        urls = [link["url"] for link in panel_links(panel)]
        exprs = " ".join(t["expr"] for t in panel["targets"])
        if kind == "operation":
            assert urls == ["${__data.fields.url}"], title
            assert JOIN_OPERATION in exprs, title
        else:
            assert urls == ["${__data.fields.url}/"], title
            assert "libvirt_snapshot_exporter_url_info{" in exprs, title
        # The url column is kept for the link (hidden, not removed by the transformations).
        for transformation in panel.get("transformations", []):
            assert "url" not in transformation["options"].get("excludeByName", {}), title


def test_domain_tables_show_the_openstack_instance_name_beside_the_domain():
    """Each table with a domain column joins libvirt_domain_openstack_info's instance_name on
    the target's labels and the domain, or the domain's own series where it has none (a domain
    without Nova's metadata keeps its rows), and shows it right after the domain."""
    for title in DOMAIN_TABLES:
        panel = _panel(title)
        (target,) = [t for t in panel["targets"] if JOIN_INSTANCE_NAME in t["expr"]]
        keys = re.search(r"on \(([^)]*)\) " + re.escape(JOIN_INSTANCE_NAME), target["expr"])[1]
        assert keys in ("job, hypervisor, instance, domain", "instance, domain"), title
        assert f"or on ({keys}) group by ({keys}) (" in target["expr"], title
        options = panel["transformations"][-1]["options"]
        assert options["indexByName"]["instance_name"] == options["indexByName"]["domain"] + 1
        assert options["renameByName"]["instance_name"] == "OpenStack instance"


def test_guest_pause_panels():
    """Paused time per operation (table column and time series), per domain (rate of the
    summary's sum over its count) and the worst of the day."""
    text = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in PANELS}
    row = [p["title"] for p in PANELS
           if "guest_paused" in text[p["title"]] and p["type"] != "table"]
    assert "libvirt_snapshot_last_operation_guest_paused_seconds" in text[LAST_OPERATIONS]
    assert "libvirt_snapshot_last_operation_guest_paused_seconds{" in \
        text["Guest paused by the last operation"]
    per_domain = text["Mean guest pause per domain"]
    assert "rate(libvirt_snapshot_domain_operation_guest_paused_seconds_sum{" in per_domain
    assert "rate(libvirt_snapshot_domain_operation_guest_paused_seconds_count{" in per_domain
    for title in ("Longest guest pause in the last 24 h",
                  "Longest guest pause per domain in the last 24 h"):
        assert "max_over_time(libvirt_snapshot_last_operation_guest_paused_seconds{" in text[title]
        assert "[1d]" in text[title]
    assert len(row) >= 4


def test_rule_panels_say_they_need_the_recording_rules():
    """A panel reading a recording rule says so in its description, and docs/bundle.md's
    dashboard section lists it."""
    recorded = recorded_names()
    doc = (ROOT / "docs" / "bundle.md").read_text()
    section = doc[doc.index("\n## Dashboard"):]
    section = " ".join(section[:section.index("\n## ", 1)].split())
    needing = []
    for panel in PANELS:
        names = {n for t in panel["targets"] for n, _ in selectors(t["expr"])}
        if names & recorded:
            needing.append(panel["title"])
            assert RULES_NOTE in panel["description"], panel["title"]
            assert f"*{panel['title']}*" in section, f"docs/bundle.md: {panel['title']}"
        else:
            assert RULES_NOTE not in panel["description"], panel["title"]
    assert needing


def test_dashboard_shows_what_the_study_needs():
    text = json.dumps(PANELS)
    for metric in (
        "libvirt_snapshot_operation_elapsed_seconds",
        "libvirt_snapshot_last_operation_duration_seconds",
        "libvirt_snapshot_last_operation_depth",
        "libvirt_snapshot_last_operation_guest_paused_seconds",
        "libvirt_snapshot_domain_operation_guest_paused_seconds_sum",
        "libvirt_snapshot_operation_guest_paused_seconds_bucket",
        "libvirt_snapshot_last_operation_verdict_info",
        "libvirt_snapshot_last_operation_info",
        "libvirt_snapshot_exporter_url_info",
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
    assert PANELS[0]["title"] == "Operations in flight" and PANELS[0]["gridPos"]["y"] == 1


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


# ---- The new series in a real Prometheus -----------------------------------------------------
# A handwritten exposition of the series #22 adds, beside those the queries join them with: vm1
# finishes a create every 2 s (the n-th at START + 2 (n - 1), with its own id and page), vm2's
# delete runs.
EXTERNAL_URL = "https://hv1.example:9966"
RUNNING_ID = "00000000000000ff"
START = time.time()


def _operation(n: int) -> str:
    return f"{0xabc0000000000000 + n:016x}"


def _exposition() -> bytes:
    n = 1 + int((time.time() - START) / 2)
    create = 'domain="vm1",operation="create"'
    delete = 'domain="vm2",operation="delete"'
    summary = f'{create},kind="internal",memory="true",outcome="success"'
    hypervisor = 'operation="create",kind="internal",memory="true",outcome="success"'
    lines = [
        "libvirt_up 1",
        'libvirt_snapshot_exporter_build_info{version="0.0.0",python_version="3.11.2"} 1',
        f'libvirt_snapshot_exporter_url_info{{url="{EXTERNAL_URL}"}} 1',
        'libvirt_domain_info{domain="vm1",uuid="1"} 1',
        f'libvirt_snapshot_last_operation_info{{{create},id="{_operation(n)}",'
        f'url="{EXTERNAL_URL}/operations/{_operation(n)}"}} 1',
        f"libvirt_snapshot_last_operation_end_timestamp_seconds{{{create}}} {START + 2 * (n - 1):.3f}",
        f"libvirt_snapshot_last_operation_duration_seconds{{{create}}} 12.5",
        f"libvirt_snapshot_last_operation_success{{{create}}} 1",
        f'libvirt_snapshot_last_operation_verdict_info{{{create},pace_setter="size"}} 1',
        f"libvirt_snapshot_last_operation_guest_paused_seconds{{{create}}} {10 + n % 3}",
        f"libvirt_snapshot_domain_operation_guest_paused_seconds_count{{{summary}}} {n}",
        f"libvirt_snapshot_domain_operation_guest_paused_seconds_sum{{{summary}}} {11 * n}",
        f'libvirt_snapshot_operation_guest_paused_seconds_bucket{{{hypervisor},le="10"}} 0',
        f'libvirt_snapshot_operation_guest_paused_seconds_bucket{{{hypervisor},le="30"}} {n}',
        f'libvirt_snapshot_operation_guest_paused_seconds_bucket{{{hypervisor},le="+Inf"}} {n}',
        f"libvirt_snapshot_operation_guest_paused_seconds_count{{{hypervisor}}} {n}",
        f"libvirt_snapshot_operation_guest_paused_seconds_sum{{{hypervisor}}} {11 * n}",
        f"libvirt_snapshot_operation_in_progress{{{delete}}} 1",
        f'libvirt_snapshot_operation_in_progress_info{{{delete},id="{RUNNING_ID}"}} 1',
        f"libvirt_snapshot_operation_elapsed_seconds{{{delete}}} 42",
        f"libvirt_snapshot_operation_start_timestamp_seconds{{{delete}}} {START:.3f}",
    ]
    return ("\n".join(lines) + "\n").encode()


def _prometheus_scraping(tmp, exposition):
    """Debian's Prometheus scraping exposition() every second as the bundle's job, with the
    bundle's rules loaded; yields it once it has a few scrapes."""
    exporter = exposition_server(exposition)
    rules = tmp / "rules"
    rules.mkdir()
    for path in RULE_FILES:
        loaded = load_yaml(path)
        for group in loaded["groups"]:
            group.pop("interval", None)
        (rules / path.name).write_text(yaml.safe_dump(loaded, sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules / "*.yml")],
        "scrape_configs": [{"job_name": JOB, "static_configs": [
            {"targets": [f"127.0.0.1:{exporter.server_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = prometheus(tmp / "prometheus.yml", tmp / "data", free_port())
    try:
        up = f'libvirt_up{{job="{JOB}"}}'
        wait("a few scrapes", lambda: server.query(up) and len(server.query_range(
            up, time.time() - 60, time.time(), 1)[0]["values"]) >= 6, timeout=60)
        yield server
    finally:
        server.stop()
        exporter.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Prometheus scraping the handwritten exposition."""
    yield from _prometheus_scraping(tmp_path_factory.mktemp("dashboard-live"), _exposition)


def _target(title: str, needle: str) -> dashboard.Query:
    panel = _panel(title)
    (target,) = [t for t in panel["targets"] if needle in t["expr"]]
    return dashboard.Query(f"panel {panel['id']}", target["expr"], bool(target.get("instant")),
                           dashboard.PANEL_STEP)


def _ask(server, q: dashboard.Query) -> list[dict]:
    """As Grafana asks it, every variable at its default (the bundle's job, All): instant
    targets now, range targets and annotations over the last minute."""
    expr = dashboard.interpolate(q.expr, {}, 1.0, q.step)
    now = time.time()
    if q.instant:
        return server.query(expr, now)
    return server.query_range(expr, now - 60, now, q.step)


def test_job_variable_lists_the_bundle_job(live):
    selector = dashboard.interpolate(dashboard.variables()["job"], {}, 1.0, 1.0)
    assert live.label_values("job", selector, time.time() - 60, time.time()) == [JOB]


def test_every_query_evaluates(live):
    """Every dashboard query, with its variables at their defaults, is answered without error
    by a real Prometheus (the rules' ones included)."""
    for q in dashboard.queries():
        _ask(live, q)


def test_last_operations_rows_link_to_their_page(live):
    table = _panel(LAST_OPERATIONS)
    (row,) = _ask(live, _target(LAST_OPERATIONS, JOIN_OPERATION))
    fields = row["metric"]
    assert re.fullmatch(r"[0-9a-f]{16}", fields["id"])
    (link,) = panel_links(table)
    url = resolve_link(link["url"], fields)
    assert url == f"{EXTERNAL_URL}/operations/{fields['id']}"
    assert fields["domain"] == "vm1" and fields["operation"] == "create"
    assert float(row["value"][1]) == 12.5


def test_firing_alerts_rows_link_to_their_page(live):
    """The alerts table's query keeps an alert without operation and joins the page of an
    alert about a domain's last operation (ALERTS written by hand here: no alert waits its
    `for:` in this test)."""
    expr = dashboard.interpolate(_panel("Firing alerts")["targets"][0]["expr"], {}, 1.0, 1.0)
    alerts = ('label_replace(label_replace(vector(1), "alertname", "LibvirtSnapshotSlow", "", ""),'
              ' "operation", "create", "", "")')
    # The same query with two hand-made alerts in place of the ALERTS series.
    fake = (f'({alerts} * on () group_left (instance, domain, job) '
            f'max by (instance, domain, job) (libvirt_snapshot_last_operation_info{{job="{JOB}"}}))'
            f' or label_replace(vector(1), "alertname", "LibvirtSnapshotExporterAbsent", "", "")')
    firing = re.compile(r'ALERTS\{[^}]*\}')
    assert len(firing.findall(expr)) == 3  # the third: the rows of domains without OpenStack
    answer = live.query(firing.sub(lambda _: f"({fake})", expr))
    by_name = {s["metric"]["alertname"]: s["metric"] for s in answer}
    assert set(by_name) == {"LibvirtSnapshotSlow", "LibvirtSnapshotExporterAbsent"}
    slow = by_name["LibvirtSnapshotSlow"]
    (link,) = panel_links(_panel("Firing alerts"))
    assert resolve_link(link["url"], slow) == f"{EXTERNAL_URL}/operations/{slow['id']}"
    assert "url" not in by_name["LibvirtSnapshotExporterAbsent"]


def test_finished_operations_annotations_link_to_their_page(live):
    annotation = _annotation("Snapshot operations finished")
    q = next(q for q in dashboard.queries() if q.where == "annotation 'Snapshot operations finished'")
    q = dashboard.Query(q.where, q.expr, False, 1.0)  # a point a second: each operation's own
    series = _ask(live, q)
    assert len(series) >= 2, "fewer than 2 operations finished in the last minute"
    for s in series:
        labels = s["metric"]
        href = re.search(r'href="([^"]+)"', render_text(annotation["textFormat"], labels))[1]
        assert href == f"{EXTERNAL_URL}/operations/{labels['id']}"
        # An operation's annotation marks moments after its end, never before.
        n = int(labels["id"], 16) - 0xabc0000000000000
        first = float(s["values"][0][0])
        assert first >= START + 2 * (n - 1) - 1, (labels["id"], first - START)


def test_operations_in_flight_link_to_the_exporter(live):
    (row,) = _ask(live, _target("Operations in flight", JOIN_EXPORTER))
    (link,) = panel_links(_panel("Operations in flight"))
    assert resolve_link(link["url"], row["metric"]) == f"{EXTERNAL_URL}/"
    (info,) = _ask(live, _target("Operations in flight", "in_progress_info"))
    assert info["metric"]["id"] == RUNNING_ID
    annotation = _annotation("Snapshot operations running")
    q = next(q for q in dashboard.queries() if q.where == "annotation 'Snapshot operations running'")
    (series,) = _ask(live, q)
    text = render_text(annotation["textFormat"], series["metric"])
    assert f'href="{EXTERNAL_URL}/"' in text
    assert f'href="{EXTERNAL_URL}/operations/{RUNNING_ID}"' in text


def test_exporters_table_links_each_exporter(live):
    rows = _ask(live, _target("Exporters", "libvirt_snapshot_exporter_url_info"))
    (link,) = panel_links(_panel("Exporters"))
    assert [resolve_link(link["url"], r["metric"]) for r in rows] == [f"{EXTERNAL_URL}/"]


def test_guest_pause_panels_answer(live):
    (last,) = _ask(live, _target("Guest paused by the last operation", "guest_paused"))
    assert {float(v) for _, v in last["values"]} <= {10.0, 11.0, 12.0}
    worst = wait("two operations' pauses", lambda: [
        s for s in _ask(live, _target("Longest guest pause in the last 24 h", "guest_paused"))
        if float(s["value"][1]) == 12.0])
    assert worst
    (per_domain,) = _ask(live, _target("Longest guest pause per domain in the last 24 h",
                                       "guest_paused"))
    assert per_domain["metric"]["domain"] == "vm1" and float(per_domain["value"][1]) <= 12.0
    (mean,) = _ask(live, _target("Mean guest pause per domain", "guest_paused"))
    means = [float(v) for _, v in mean["values"] if v != "NaN"]
    assert means and all(m == pytest.approx(11.0) for m in means)
    (p95,) = _ask(live, _target("Guest pause per hypervisor: 95th percentile", "guest_paused"))
    values = [float(v) for _, v in p95["values"] if v != "NaN"]
    assert values and all(10.0 < v <= 30.0 for v in values)


# ---- Every query on the real exposition code's output -----------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """What the exporter's own exposition code renders from lse_devtools.handbuilt_view (vm1:
    a running guest with creates in flight and finishing, 4 a second; vm2: a failed delete)."""
    yield from _prometheus_scraping(tmp_path_factory.mktemp("dashboard-real"),
                                    lambda: handbuilt_view.exposition(START))


def test_every_query_answers_on_the_exporters_exposition(real):
    """Every query but the firing alerts' (no alert has waited its `for:` here) returns data,
    once rates and recording rules have two samples; a fallback 0 never stands beside real
    series."""
    asked = [q for q in dashboard.queries() if "'Firing alerts'" not in q.where]
    deadline = time.monotonic() + 30
    while True:
        answers = {q.where: _ask(real, q) for q in asked}
        empty = [where for where, answer in answers.items() if not answer]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert empty == []
    for where, answer in answers.items():
        twin = answers.get(where + dashboard.TWIN)
        if twin:
            assert [s["metric"] for s in answer] == [s["metric"] for s in twin], where


def test_links_lead_to_the_exporters_operation_pages(real):
    """The last operations' rows and the operations in flight link to the URLs the exporter
    publishes: its operations' pages, its status page."""
    rows = _ask(real, _target(LAST_OPERATIONS, JOIN_OPERATION))
    assert {(r["metric"]["domain"], r["metric"]["operation"]) for r in rows} >= {
        ("vm1", "create"), ("vm2", "delete")}
    (link,) = panel_links(_panel(LAST_OPERATIONS))
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{16}", r["metric"]["id"])
        assert resolve_link(link["url"], r["metric"]) == \
            f"{handbuilt_view.EXTERNAL_URL}/operations/{r['metric']['id']}"
    in_flight = _ask(real, _target("Operations in flight", JOIN_EXPORTER))
    assert {r["metric"]["domain"] for r in in_flight} == {"vm1", "vm2"}
    (link,) = panel_links(_panel("Operations in flight"))
    assert {resolve_link(link["url"], r["metric"]) for r in in_flight} == {
        f"{handbuilt_view.EXTERNAL_URL}/"}


def test_the_domain_tables_carry_the_openstack_instance_name(real):
    """vm1 is OpenStack's web-1, vm2 no OpenStack domain: both keep their rows."""
    for title in ("Operations in flight", LAST_OPERATIONS):
        rows = _ask(real, _target(title, JOIN_INSTANCE_NAME))
        names = {(r["metric"]["domain"], r["metric"].get("instance_name")) for r in rows}
        assert {("vm1", "web-1"), ("vm2", None)} <= names, title
        assert len(names) == len({d for d, _ in names}), title
