"""The bundle in a real Prometheus: the config loads, ${HYPERVISOR} is expanded into the
hypervisor external label, and every rule evaluates without error on data shaped like the
exporter's, some to known values.

Remote write to VictoriaMetrics (the hypervisor label on series and ALERTS) and every dashboard
query returning data are checked once, on real operations of the real exporter, in
tests/e2e/test_hypervisor_stack.py.

The exporter is stood in for by a small HTTP server serving what the exporter's own exposition
code renders from a view built by hand (lse_devtools.handbuilt_view), so this needs no libvirt.
Prometheus is Debian's 2.x, which expands external labels only with
--enable-feature=expand-external-labels (3.x always does).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from lse_devtools import handbuilt_view
from lse_devtools.bundle import PROM, alerting_rules, load_yaml, recording_rules, tool
from lse_devtools.exporter_proc import free_port
from lse_devtools.services import exposition_server, get_json, wait

HYPERVISOR = "hv-e2e"
J = 'job="libvirt-snapshot-exporter"'
START = time.time()


def _stop(process: subprocess.Popen):
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    # The real exposition code's text for the hand-built view, whose counters grow: one batch
    # of 4 creates a second (vm1's create in flight has run 42 s whenever it is scraped).
    exporter = exposition_server(lambda: handbuilt_view.exposition(START))
    prom_port = free_port()

    # The bundle's config and rules, with this machine's addresses and 1 s intervals.
    config = load_yaml(PROM / "prometheus.yml")
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        if job["job_name"] == "libvirt-snapshot-exporter":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter.server_port}"]}]
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
        else:
            job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp / "rules").mkdir()
    for path in (PROM / "rules").glob("*.yml"):
        rules = load_yaml(path)
        for group in rules["groups"]:
            group.pop("interval", None)
        (tmp / "rules" / path.name).write_text(yaml.safe_dump(rules, sort_keys=False))

    prometheus = subprocess.Popen(
        [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
         "--enable-feature=expand-external-labels"],
        env={"HYPERVISOR": HYPERVISOR, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("w"))
    try:
        prom = f"http://127.0.0.1:{prom_port}"
        wait("Prometheus", lambda: urllib.request.urlopen(f"{prom}/-/ready", timeout=2).status == 200)
        yield {"prometheus": prom, "tmp": tmp}
    finally:
        _stop(prometheus)
        exporter.shutdown()
        shutil.rmtree(tmp / "data", ignore_errors=True)


def _query(base: str, expr: str) -> list:
    answer = get_json(f"{base}/api/v1/query", query=expr)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_external_label_is_expanded(stack):
    answer = get_json(f"{stack['prometheus']}/api/v1/status/config")
    loaded = yaml.safe_load(answer["data"]["yaml"])
    assert loaded["global"]["external_labels"] == {"hypervisor": HYPERVISOR}


def test_every_rule_evaluates_without_error(stack):
    def all_evaluated():
        groups = get_json(f"{stack['prometheus']}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2")
                                      and not r["lastEvaluation"].startswith("0001")
                                      for r in rules) else None

    rules = wait("a first evaluation of every rule", all_evaluated)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad
    assert len(rules) == len(recording_rules()) + len(alerting_rules())


def test_rules_compute_on_exporter_data(stack):
    prom = stack["prometheus"]
    ratio = wait("recording rules", lambda: _query(
        prom, f"instance:libvirt_node_memory_available:ratio{{{J}}}"))
    assert float(ratio[0]["value"][1]) == pytest.approx(1 / 16)
    baseline = wait("the baseline", lambda: _query(
        prom, f"domain_operation:libvirt_snapshot_domain_operation_duration_seconds:baseline_7d{{{J}}}"))
    assert baseline[0]["metric"]["domain"] == "vm1"
    p95 = wait("quantiles", lambda: _query(
        prom, f"instance:libvirt_snapshot_operation_duration_seconds:p95_1h{{{J}}}"))
    assert p95[0]["metric"]["operation"] == "create"
    # vm1's last create: 3.1x its expected duration, storage-contended (the hand-built verdict)
    alerts = wait("the verdict's alert", lambda: _query(
        prom, 'ALERTS{alertname="LibvirtSnapshotSlowerThanExpected"}'))
    assert alerts[0]["metric"]["domain"] == "vm1"
    assert alerts[0]["metric"]["pace_setter"] == "storage-contended"
    assert alerts[0]["metric"]["severity"] == "info"
