"""Prometheus config, rules and their promtool unit tests, checked with the real promtool."""

from __future__ import annotations

import re
import shutil

import pytest
from lse_devtools.bundle import (
    JOB_MATCHER,
    PROM,
    ROOT,
    RULE_FILES,
    alerting_rules,
    documented_metrics,
    github_anchor,
    load_yaml,
    recorded_names,
    recording_rules,
    rule_groups,
    run,
    selectors,
    tool,
)

UNIT_TESTS = sorted((PROM / "tests").glob("*_test.yml"))
SEVERITIES = {"critical", "warning", "info"}
# Every runbook_url is the runbook URL of the alert's instance (the one setting, at the top of
# recording.yml), else RUNBOOK.md, then the alert's section; alerts without an exporter
# instance take any exporter's.
RUNBOOK_SETTING = "instance:libvirt_snapshot_runbook_url:info"
RUNBOOK_URL = (
    '{{ with printf "' + RUNBOOK_SETTING + '{instance=%q}" $labels.instance | query }}'
    "{{ (. | first).Labels.runbook_url }}{{ else }}RUNBOOK.md{{ end }}#"
)
RUNBOOK_URL_ANY_EXPORTER = (
    '{{ with query "' + RUNBOOK_SETTING + '" }}'
    "{{ (. | first).Labels.runbook_url }}{{ else }}RUNBOOK.md{{ end }}#"
)
WITHOUT_EXPORTER_INSTANCE = {"LibvirtSnapshotExporterAbsent", "LibvirtSnapshotNotificationsFailing"}
# Alerts about one operation link its page (operation_url), Stuck the exporter's /.
OPERATION = re.compile(r"libvirt_snapshot_(last_)?operation_(?!in_progress\b)")
# Not the exporter's: Alertmanager's own counter (the bundle's Prometheus scrapes it).
OTHER_METRICS = {"up", "alertmanager_notifications_failed_total"}
PLACEHOLDER = "github.com/libvirt-snapshot-exporter"


def test_rule_files_exist():
    assert {p.name for p in RULE_FILES} == {"alerts.yml", "recording.yml", "thresholds.yml"}
    assert UNIT_TESTS, "no promtool unit tests in prometheus/tests"


def test_promtool_check_config():
    result = run([tool("promtool"), "check", "config", str(PROM / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 rule files found" in result.stdout


def test_promtool_check_fleet_config_with_its_targets(tmp_path):
    """The fleet example with targets/hypervisors.yml made from the example file, as its
    comments tell: promtool then also validates the file_sd targets."""
    shutil.copytree(PROM / "rules", tmp_path / "rules")
    (tmp_path / "targets").mkdir()
    shutil.copy(PROM / "targets" / "hypervisors.example.yml",
                tmp_path / "targets" / "hypervisors.yml")
    config = tmp_path / "prometheus-fleet.yml"
    shutil.copy(PROM / "prometheus-fleet.example.yml", config)
    result = run([tool("promtool"), "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_file_sd_example_labels_every_hypervisor():
    groups = load_yaml(PROM / "targets" / "hypervisors.example.yml")
    assert groups
    for group in groups:
        assert len(group["targets"]) == 1
        assert group["targets"][0].endswith(":9966")
        assert group["labels"]["hypervisor"]


def test_fleet_config_scrapes_file_sd_and_remote_writes():
    config = load_yaml(PROM / "prometheus-fleet.example.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "libvirt-snapshot-exporter")
    assert job["file_sd_configs"][0]["files"] == ["targets/hypervisors.yml"]
    assert config["remote_write"][0]["url"].endswith("/api/v1/write")
    assert config["rule_files"] == ["rules/*.yml"]


def test_local_config_labels_the_hypervisor():
    config = load_yaml(PROM / "prometheus.yml")
    assert config["global"]["external_labels"]["hypervisor"] == "${HYPERVISOR}"
    assert config["rule_files"] == ["rules/*.yml"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["libvirt-snapshot-exporter"]["static_configs"][0]["targets"] == ["exporter:9966"]
    assert "prometheus" in jobs
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_promtool_check_rules():
    result = run([tool("promtool"), "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = run([tool("promtool"), "test", "rules", *map(str, UNIT_TESTS)], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def _unit_test_cases():
    alert_cases: dict[str, list[bool]] = {}
    exprs: list[str] = []
    for path in UNIT_TESTS:
        for group in load_yaml(path)["tests"]:
            for case in group.get("alert_rule_test", []):
                alert_cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
            exprs.extend(case["expr"] for case in group.get("promql_expr_test", []))
    return alert_cases, exprs


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: r["alert"])
def test_every_alert_is_unit_tested_both_ways(rule):
    alert_cases, _ = _unit_test_cases()
    outcomes = alert_cases.get(rule["alert"], [])
    assert True in outcomes, f"{rule['alert']}: no unit test where it fires"
    assert False in outcomes, f"{rule['alert']}: no unit test where it must not fire"


@pytest.mark.parametrize("name", sorted(recorded_names()))
def test_every_recording_rule_is_unit_tested(name):
    _, exprs = _unit_test_cases()
    pattern = re.compile(rf"(?<![\w:]){re.escape(name)}(?![\w:])")
    assert any(pattern.search(e) for e in exprs), f"{name}: no promql_expr_test reads it"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: r["alert"])
def test_alert_conventions(rule):
    name = rule["alert"]
    assert re.fullmatch(r"Libvirt(?:[A-Z][a-z0-9]+)+", name), f"{name} is not CamelCase Libvirt..."
    expr = rule["expr"]
    if "libvirt_snapshot" in expr and "exporter" not in name.lower() and "Filesystem" not in name:
        assert name.startswith("LibvirtSnapshot") or name == "LibvirtUnreachable", name
    assert rule["labels"]["severity"] in SEVERITIES
    assert set(rule["labels"]) == {"severity"}
    annotations = rule["annotations"]
    about_an_operation = bool(OPERATION.search(expr))
    expected = {"summary", "description", "runbook_url"} | (
        {"operation_url"} if about_an_operation else set())
    assert set(annotations) == expected, name
    runbook = RUNBOOK_URL_ANY_EXPORTER if name in WITHOUT_EXPORTER_INSTANCE else RUNBOOK_URL
    assert annotations["runbook_url"] == runbook + name.lower()
    if about_an_operation:
        url = annotations["operation_url"]
        assert "libvirt_snapshot_exporter_url_info" in url, name  # the exporter's / at least
        if name != "LibvirtSnapshotStuck":  # a running operation has no page yet
            assert "libvirt_snapshot_last_operation_info" in url, name
    if name != "LibvirtSnapshotExporterAbsent":
        assert "{{ $labels.instance }}" in annotations["description"], name
    if re.search(r"libvirt_snapshot_(last_)?operation|libvirt_snapshots\b|libvirt_snapshot_max|"
                 r"libvirt_snapshot_oldest|image_filesystem", expr):
        assert "{{ $labels.domain }}" in annotations["description"], name
    assert "$value" in annotations["description"] or name == "LibvirtSnapshotExporterAbsent", name
    assert "for" in rule, f"{name} has no for:"


def test_no_placeholder_urls_are_left():
    """Every link is built from what the exporters publish (or the runbook setting)."""
    for path in [*RULE_FILES, *UNIT_TESTS, ROOT / "RUNBOOK.md", ROOT / "docs" / "bundle.md",
                 ROOT / "alertmanager" / "alertmanager.yml"]:
        assert PLACEHOLDER not in path.read_text(), path


def test_the_runbook_setting_defaults_to_each_exporters_own_runbook():
    (rule,) = [r for r in recording_rules() if r["record"] == RUNBOOK_SETTING]
    assert "libvirt_snapshot_exporter_url_info" in rule["expr"]
    assert '"$1/runbook"' in rule["expr"]
    assert "last_over_time(" in rule["expr"]  # the link of an exporter that is down


def test_no_alert_claims_a_cause_of_its_own():
    """Causes are the verdict's (pace_setter, condition): no alert reads host memory or
    writeback figures to name one (docs/verdict.md: present is not the pace)."""
    for rule in alerting_rules():
        assert "libvirt_node_memory" not in rule["expr"], rule["alert"]
        assert "instance:libvirt_node_" not in rule["expr"], rule["alert"]
        text = " ".join(rule["annotations"].values()).lower()
        for claim in ("paced by writeback", "little page cache", "short of memory"):
            assert claim not in text, (rule["alert"], claim)


def test_alert_names_are_unique():
    names = [r["alert"] for r in alerting_rules()]
    assert len(names) == len(set(names))


def test_every_alert_has_a_runbook_section():
    headings = re.findall(r"^## (.+)$", (ROOT / "RUNBOOK.md").read_text(), flags=re.M)
    anchors = {github_anchor(h) for h in headings}
    alerts = {r["alert"] for r in alerting_rules()}
    for name in alerts:
        assert name in headings, f"RUNBOOK.md has no section {name}"
        assert name.lower() in anchors
    stale = {h for h in headings if h.startswith("Libvirt")} - alerts
    assert not stale, f"RUNBOOK.md sections without an alert: {stale}"


def test_the_served_runbook_has_each_alerts_anchor():
    """runbook_url's fragment is an id of the page the exporter serves at /runbook."""
    from libvirt_snapshot_exporter.web import runbook

    html = runbook.render().decode()
    for rule in alerting_rules():
        assert f'id="{rule["alert"].lower()}"' in html, rule["alert"]


def test_recording_rule_names_follow_level_metric_operations():
    for rule in recording_rules():
        parts = rule["record"].split(":")
        assert len(parts) in (2, 3), rule["record"]
        assert all(parts), rule["record"]
        if parts[0] == "libvirt_snapshot":
            assert parts[1].startswith("threshold_"), rule["record"]
        else:
            assert len(parts) == 3, rule["record"]


def test_aggregations_use_without():
    for rule in recording_rules() + alerting_rules():
        assert not re.search(r"\bby\s*\(", rule["expr"]), f"{rule}: aggregate with without(...)"


def _exporter_metric(name: str) -> bool:
    return name in documented_metrics() or name == "up"


@pytest.mark.parametrize(
    "rule", recording_rules() + alerting_rules(), ids=lambda r: r.get("alert") or r["record"]
)
def test_rules_select_the_exporter_job(rule):
    for name, matchers in selectors(rule["expr"]):
        if _exporter_metric(name) or (name in recorded_names() and not name.startswith(
                "libvirt_snapshot:threshold_")):
            assert JOB_MATCHER in matchers, f"{name}{{{matchers}}} in {rule}"


@pytest.mark.parametrize(
    "rule", recording_rules() + alerting_rules(), ids=lambda r: r.get("alert") or r["record"]
)
def test_rules_use_only_known_metrics(rule):
    known = set(documented_metrics()) | recorded_names() | OTHER_METRICS
    for name, _ in selectors(rule["expr"]):
        assert name in known, f"{name} in {rule} is neither in README.md's metric tables nor a rule"


def test_no_rule_matches_le_values_as_strings():
    """Prometheus 3 normalises le="60.0" to "60": never match bucket bounds by their text."""
    for rule in recording_rules() + alerting_rules():
        assert not re.search(r"\ble\s*[=!]~?", rule["expr"]), rule


def test_thresholds_are_plain_vectors():
    thresholds = [r for g in load_yaml(PROM / "rules" / "thresholds.yml")["groups"]
                  for r in g["rules"]]
    assert thresholds
    for rule in thresholds:
        assert rule["record"].startswith("libvirt_snapshot:threshold_")
        assert re.fullmatch(r"vector\([0-9.]+\)", rule["expr"]), rule
        assert "labels" not in rule, "defaults carry no labels; overrides go in another file"


def test_alerts_read_thresholds_not_literals():
    """Tunable numbers live in thresholds.yml; alert expressions compare with those series."""
    for rule in alerting_rules():
        expr = re.sub(r"\{[^}]*\}", "", rule["expr"])
        numbers = set(re.findall(r"(?<![\w.\[])\d+(?:\.\d+)?(?![\w\]])", expr))
        assert numbers <= {"0"}, f"{rule['alert']} has literal thresholds {numbers}"


def test_group_names_are_unique():
    names = [g["name"] for g in rule_groups()]
    assert len(names) == len(set(names))
