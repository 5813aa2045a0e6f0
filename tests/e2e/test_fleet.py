"""Many hypervisors, one Prometheus, real processes only: a copy of
prometheus/prometheus-fleet.example.yml finds two real exporters through file_sd, in a targets
file that is prometheus/targets/hypervisors.example.yml with only the addresses replaced, and
remote-writes to VictoriaMetrics. Both exporters watch the same real libvirtd, each started with
the hypervisor name of its entry as --node.hostname; a real snapshot of the filler guest
gives them an operation to count.

The copy differs from the example in addresses (loopback ports), in its scrape and evaluation
interval (1 s) and in having no alerting block (no Alertmanager runs here); rules as shipped,
groups evaluated every second (devtools/lse_devtools/derived.py)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

import pytest
from lse_devtools import dashboard, derived, testbed
from lse_devtools.bundle import PROM, load_yaml
from lse_devtools.driving import run_recorded
from lse_devtools.exporter_proc import ExporterProcess, free_port
from lse_devtools.services import Server, prometheus, victoria_metrics, wait

pytestmark = pytest.mark.libvirt

JOB = 'job="libvirt-snapshot-exporter"'


@dataclass
class Fleet:
    prometheus: Server
    victoria_metrics: Server
    exporters: dict[str, ExporterProcess]  # by hypervisor label


@pytest.fixture(scope="module")
def fleet(libvirtd, filler, tmp_path_factory):
    testbed.delete_all_snapshots(libvirtd.get(), filler)  # leftovers of failed earlier tests
    tmp = tmp_path_factory.mktemp("e2e-fleet")
    entries = load_yaml(PROM / "targets" / "hypervisors.example.yml")
    assert len(entries) == 2
    started: list = []
    exporters: dict[str, ExporterProcess] = {}
    try:
        for entry in entries:
            name = entry["labels"]["hypervisor"]
            exporter = ExporterProcess(f"--node.hostname={name}", state_dir=str(tmp / name))
            started.append(exporter)
            exporter.start()
            exporters[name] = exporter
            entry["targets"] = [f"127.0.0.1:{exporter.port}"]
        (tmp / "targets").mkdir()
        derived.write_yaml(tmp / "targets" / "hypervisors.yml", entries)

        prom_port, vm_port = free_port(), free_port()
        vm = victoria_metrics(tmp / "vm", vm_port)
        started.append(vm)
        config = derived.prometheus_config("prometheus-fleet.example.yml", {
            "localhost:9090": f"127.0.0.1:{prom_port}",
            "victoria-metrics.example.org:8428": f"127.0.0.1:{vm_port}",
            # its scrape job stays, towards nothing: this fleet runs no Alertmanager
            "alertmanager.example.org:9093": f"127.0.0.1:{free_port()}",
        }, drop=("alerting",))
        derived.rules(tmp / "rules")
        prom = prometheus(derived.write_yaml(tmp / "prometheus.yml", config), tmp / "data",
                          prom_port)
        started.append(prom)
        conn = libvirtd.get()
        try:
            ran = run_recorded(list(exporters.values()), filler.name,
                               lambda: testbed.create_snapshot(conn, filler, "fleet"))
            assert ran.error is None and ran.logged, ran
            yield Fleet(prom, vm, exporters)
        finally:
            testbed.delete_all_snapshots(conn, filler)
    finally:
        for item in reversed(started):
            item.stop()
            if isinstance(item, ExporterProcess):
                item.log_path.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _by_hypervisor(server: Server, expr: str) -> dict[str, dict]:
    series = server.query(expr)
    return {s["metric"].get("hypervisor", ""): s["metric"] for s in series}


def test_file_sd_finds_both_exporters_with_their_hypervisor_label(fleet):
    prom, exporters = fleet.prometheus, fleet.exporters
    up = wait("both targets up", lambda: len(found := _by_hypervisor(
        prom, f"up{{{JOB}}} == 1")) == 2 and found)
    assert set(up) == set(exporters)
    for name, exporter in exporters.items():
        assert up[name]["instance"] == f"127.0.0.1:{exporter.port}"
    nodes = _by_hypervisor(prom, f"libvirt_node_info{{{JOB}}}")
    assert {h: m["hostname"] for h, m in nodes.items()} == {h: h for h in exporters}


def test_every_series_carries_its_hypervisor_label(fleet, filler):
    prom, exporters = fleet.prometheus, fleet.exporters
    wait("a scrape of the snapshot's duration", lambda: len(_by_hypervisor(
        prom, f'libvirt_snapshot_domain_operation_duration_seconds_count{{{JOB}, domain="{filler.name}", '
        'outcome="success", operation="create"}'
    )) == 2)
    # Scraped series and the rules recorded from them; alerts are left out, as absent() makes
    # LibvirtSnapshotExporterAbsent (for: 1 s here) fire before the first scrape, unlabelled.
    assert prom.query(f'{{{JOB}, hypervisor="", __name__!~"ALERTS|ALERTS_FOR_STATE"}}') == []
    expected = {
        "up", "libvirt_up", "libvirt_node_memory_dirty_bytes",
        "libvirt_snapshot_domain_operation_duration_seconds_count",
        "instance:libvirt_node_memory_available:ratio",  # recording rules keep the label
    }

    def names() -> dict[str, set[str]]:
        found = prom.query(f"count by (hypervisor, __name__) ({{{JOB}}})")
        return {h: {s["metric"]["__name__"] for s in found if s["metric"].get("hypervisor") == h}
                for h in exporters}

    wait("the series of both hypervisors", lambda: all(n >= expected for n in names().values()))
    now = time.time()
    # the dashboard's Hypervisor variable, its $job filled in with the bundle's job
    selector = dashboard.interpolate(dashboard.variables()["hypervisor"], {}, 1.0, 1.0)
    assert prom.label_values("hypervisor", selector, now - 300, now) == sorted(exporters)


def test_remote_write_carries_the_hypervisor_label(fleet, filler):
    vm, exporters = fleet.victoria_metrics, fleet.exporters
    for selector in (
        f"libvirt_up{{{JOB}}}",
        f"libvirt_node_memory_dirty_bytes{{{JOB}}}",
        f'libvirt_snapshot_domain_operation_duration_seconds_count{{{JOB}, domain="{filler.name}", '
        'operation="create", outcome="success"}',
    ):
        found = wait(f"{selector} of both hypervisors in VictoriaMetrics",
                     lambda s=selector: len(seen := _by_hypervisor(vm, s)) == 2 and seen,
                     timeout=60)
        assert set(found) == set(exporters), selector
