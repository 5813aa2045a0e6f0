"""Alertmanager routing, checked with the real amtool."""

from __future__ import annotations

from libvirt_snapshot_exporter.loop.source_health import Source
from lse_devtools.bundle import ROOT, alerting_rules, load_yaml, run, tool

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
