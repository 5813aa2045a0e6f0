"""Alertmanager routing, checked with the real amtool."""

from __future__ import annotations

import json
import urllib.request

from libvirt_snapshot_exporter.loop.source_health import Source
from lse_devtools import derived
from lse_devtools.bundle import PROM, ROOT, alerting_rules, load_yaml, run, tool
from lse_devtools.exporter_proc import free_port
from lse_devtools.services import alertmanager, wait

CONFIG = ROOT / "alertmanager" / "alertmanager.yml"


def test_amtool_check_config():
    result = run([tool("amtool"), "check-config", str(CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_severity_has_a_route():
    routes = load_yaml(CONFIG)["route"]["routes"]
    routed = {m.split("=", 1)[1].strip('"') for r in routes for m in r["matchers"]
              if m.startswith("severity=")}
    used = {r["labels"]["severity"] for r in alerting_rules()}
    assert used <= routed, f"severities without a route: {used - routed}"


def test_routing_tree_sends_each_severity_to_its_receiver():
    for severity in ("critical", "warning", "info"):
        result = run([tool("amtool"), "config", "routes", "test", f"--config.file={CONFIG}",
                      f"severity={severity}", "alertname=LibvirtSnapshotSlow"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == severity


def test_alerts_are_grouped_per_hypervisor():
    route = load_yaml(CONFIG)["route"]
    assert "hypervisor" in route["group_by"]
    for rule in load_yaml(CONFIG)["inhibit_rules"]:
        assert "hypervisor" in rule["equal"]


def test_receivers_are_webhook_examples():
    receivers = load_yaml(CONFIG)["receivers"]
    names = {r["name"] for r in receivers}
    assert {"default", "critical", "warning", "info"} <= names
    for receiver in receivers:
        assert receiver["webhook_configs"][0]["url"].startswith("http")


def test_the_inhibited_sources_are_the_exporters_libvirt_sources():
    """Without libvirtd the loop marks domains failed and stops sampling guests, QEMU processes
    and images; the host, the metadata watch, the recorder and the traces go on."""
    (rule,) = [r for r in load_yaml(CONFIG)["inhibit_rules"]
               if r["source_matchers"] == ['alertname="LibvirtUnreachable"']]
    (matcher,) = [m for m in rule["target_matchers"] if m.startswith("collector=~")]
    names = set(matcher.removeprefix('collector=~"').removesuffix('"').split("|"))
    assert names == {Source.DOMAINS, Source.GUESTS, Source.QEMU_PROCESS, Source.IMAGES}
    assert names <= {s.value for s in Source}


def test_the_default_receiver_is_documented_at_the_top():
    """An operator opening the file learns first that alerts go nowhere until they edit it."""
    head = CONFIG.read_text().split("\nroute:", 1)[0]
    assert "ALERTS GO NOWHERE" in head
    assert "LibvirtSnapshotNotificationsFailing" in head
    for receiver in ("default", "critical", "warning", "info"):
        assert f"`{receiver}`" in head, receiver
    for annotation in ("runbook_url", "operation_url"):
        assert annotation in head, annotation


def test_the_bundles_prometheus_scrapes_the_alertmanager_it_sends_to():
    """LibvirtSnapshotNotificationsFailing reads Alertmanager's own counter."""
    config = load_yaml(PROM / "prometheus.yml")
    (sent_to,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    scraped = [t for job in config["scrape_configs"] for static in job.get("static_configs", [])
               for t in static["targets"]]
    assert sent_to in scraped
    (rule,) = [r for r in alerting_rules() if r["alert"] == "LibvirtSnapshotNotificationsFailing"]
    assert "alertmanager_notifications_failed_total" in rule["expr"]


def test_as_shipped_notifications_fail_and_alertmanager_counts_them(tmp_path):
    """The real Alertmanager with the shipped routes and receivers, waits shortened to 1 s
    (devtools/lse_devtools/derived.py) and the webhooks sent, like the shipped placeholders, to
    a port where nothing listens: a notification fails for good once its retries run out (one
    group interval, 5 minutes as shipped) and alertmanager_notifications_failed_total rises,
    what LibvirtSnapshotNotificationsFailing alerts on."""
    port, nowhere = free_port(), free_port()
    config = derived.write_yaml(tmp_path / "alertmanager.yml",
                                derived.alertmanager_config(f"127.0.0.1:{nowhere}"))
    am = alertmanager(config, tmp_path / "am", port)
    try:
        alert = [{"labels": {"alertname": "LibvirtSnapshotStuck", "severity": "critical",
                             "instance": "hv1:9966", "hypervisor": "hv1"},
                  "annotations": {"summary": "test"}}]
        request = urllib.request.Request(f"{am.url}/api/v2/alerts", method="POST",
                                         data=json.dumps(alert).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

        def failed() -> float:
            with urllib.request.urlopen(f"{am.url}/metrics", timeout=10) as response:
                text = response.read().decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith('alertmanager_notifications_failed_total{')
                       and 'integration="webhook"' in line)

        assert wait("a failed webhook notification", failed, timeout=60) >= 1
    finally:
        am.stop()
