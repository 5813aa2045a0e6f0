"""The bundle in a real Prometheus: the config loads, ${HYPERVISOR} is expanded into the
hypervisor external label, every rule evaluates without error on data shaped like the
exporter's, remote_write delivers labelled series to VictoriaMetrics, and every dashboard query
runs.

The exporter is stood in for by a small HTTP server serving a fixed exposition of
README.md metric names, so this needs no libvirt. Prometheus is Debian's 2.x, which expands
external labels only with --enable-feature=expand-external-labels (3.x always does).
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from .conftest import PROM, alerting_rules, load_yaml, recording_rules, tool
from .test_dashboard import QUERIES, _promql

HYPERVISOR = "hv-e2e"
GIB = 1024**3
J = 'job="libvirt-snapshot-exporter"'
START = time.time()


def _exposition() -> str:
    now = time.time()
    k = int(now - START)  # counters grow: one batch of 4 operations a second
    d = 'domain="vm1"'
    op = 'domain="vm1",operation="create"'
    hist = 'domain="vm1",operation="create",kind="internal",memory="true",outcome="success"'
    lines = [
        "# TYPE libvirt_up gauge", "libvirt_up 1",
        "# TYPE libvirt_node_memory_total_bytes gauge", f"libvirt_node_memory_total_bytes {16 * GIB}",
        "# TYPE libvirt_node_memory_available_bytes gauge",
        f"libvirt_node_memory_available_bytes {1 * GIB}",
        "# TYPE libvirt_node_memory_free_bytes gauge", f"libvirt_node_memory_free_bytes {GIB // 2}",
        "# TYPE libvirt_node_memory_cached_bytes gauge", f"libvirt_node_memory_cached_bytes {8 * GIB}",
        "# TYPE libvirt_node_memory_buffers_bytes gauge", "libvirt_node_memory_buffers_bytes 1048576",
        "# TYPE libvirt_node_memory_dirty_bytes gauge", f"libvirt_node_memory_dirty_bytes {GIB // 4}",
        "# TYPE libvirt_node_memory_writeback_bytes gauge", "libvirt_node_memory_writeback_bytes 0",
        "# TYPE libvirt_node_vm_dirty_ratio gauge", "libvirt_node_vm_dirty_ratio 0.2",
        "# TYPE libvirt_node_vm_dirty_background_ratio gauge",
        "libvirt_node_vm_dirty_background_ratio 0.1",
        "# TYPE libvirt_node_vm_dirty_bytes gauge", "libvirt_node_vm_dirty_bytes 0",
        "# TYPE libvirt_node_vm_dirty_background_bytes gauge",
        "libvirt_node_vm_dirty_background_bytes 0",
        "# TYPE libvirt_node_memory_written_bytes_total counter",
        f"libvirt_node_memory_written_bytes_total {1e6 * k}",
        "# TYPE libvirt_node_memory_dirtied_bytes_total counter",
        "libvirt_node_memory_dirtied_bytes_total 2e9",
        "# TYPE libvirt_node_memory_pageout_bytes_total counter",
        "libvirt_node_memory_pageout_bytes_total 3e9",
        "# TYPE libvirt_node_pressure_memory_waiting_seconds_total counter",
        "libvirt_node_pressure_memory_waiting_seconds_total 12",
        "# TYPE libvirt_node_pressure_memory_stalled_seconds_total counter",
        "libvirt_node_pressure_memory_stalled_seconds_total 6",
        "# TYPE libvirt_node_pressure_io_waiting_seconds_total counter",
        "libvirt_node_pressure_io_waiting_seconds_total 40",
        "# TYPE libvirt_node_pressure_io_stalled_seconds_total counter",
        "libvirt_node_pressure_io_stalled_seconds_total 20",
        "# TYPE libvirt_domain_info gauge", f'libvirt_domain_info{{{d},uuid="u1"}} 1',
        "# TYPE libvirt_domain_memory_used_bytes gauge",
        f'libvirt_domain_memory_used_bytes{{{d},source="balloon"}} {4 * GIB}',
        "# TYPE libvirt_domain_memory_balloon_maximum_bytes gauge",
        f"libvirt_domain_memory_balloon_maximum_bytes{{{d}}} {8 * GIB}",
        "# TYPE libvirt_domain_qemu_write_bytes_total counter",
        f"libvirt_domain_qemu_write_bytes_total{{{d}}} {5e6 * k}",
        "# TYPE libvirt_domain_block_write_bytes_total counter",
        f'libvirt_domain_block_write_bytes_total{{{d},target="vda"}} 7e9',
        "# TYPE libvirt_domain_image_size_bytes gauge",
        f"libvirt_domain_image_size_bytes{{{d}}} {20 * GIB}",
        "# TYPE libvirt_domain_image_filesystem_free_bytes gauge",
        f'libvirt_domain_image_filesystem_free_bytes{{{d},mountpoint="/var/lib/libvirt/images"}} '
        f"{5 * GIB}",
        "# TYPE libvirt_snapshots gauge", f"libvirt_snapshots{{{d}}} 3",
        "# TYPE libvirt_snapshot_max_depth gauge", f"libvirt_snapshot_max_depth{{{d}}} 3",
        "# TYPE libvirt_snapshot_oldest_creation_timestamp_seconds gauge",
        f"libvirt_snapshot_oldest_creation_timestamp_seconds{{{d}}} {now - 86400:.0f}",
        "# TYPE libvirt_snapshot_operation_in_progress gauge",
        f"libvirt_snapshot_operation_in_progress{{{op}}} 1",
        "# TYPE libvirt_snapshot_operation_elapsed_seconds gauge",
        f"libvirt_snapshot_operation_elapsed_seconds{{{op}}} 42",
        "# TYPE libvirt_snapshot_operation_start_timestamp_seconds gauge",
        f"libvirt_snapshot_operation_start_timestamp_seconds{{{op}}} {now - 42:.0f}",
        "# TYPE libvirt_snapshot_operation_progress_estimate_ratio gauge",
        f"libvirt_snapshot_operation_progress_estimate_ratio{{{op}}} 0.4",
        "# TYPE libvirt_snapshot_operation_duration_seconds histogram",
        f'libvirt_snapshot_operation_duration_seconds_bucket{{{hist},le="30.0"}} 0',
        f'libvirt_snapshot_operation_duration_seconds_bucket{{{hist},le="60.0"}} {3 * k}',
        f'libvirt_snapshot_operation_duration_seconds_bucket{{{hist},le="+Inf"}} {4 * k}',
        f"libvirt_snapshot_operation_duration_seconds_sum{{{hist}}} {400 * k}",
        f"libvirt_snapshot_operation_duration_seconds_count{{{hist}}} {4 * k}",
        "# TYPE libvirt_snapshot_exporter_collection_age_seconds gauge",
        'libvirt_snapshot_exporter_collection_age_seconds{collector="host"} 0.5',
    ]
    for name, value in (
        ("duration_seconds", 250), ("end_timestamp_seconds", round(now - 600)), ("success", 1),
        ("depth", 3), ("host_memory_available_start_bytes", 2 * GIB),
        ("host_memory_available_min_bytes", GIB), ("host_memory_free_min_bytes", GIB // 8),
        ("host_dirty_peak_bytes", GIB), ("host_writeback_peak_bytes", GIB // 4),
        ("qemu_written_bytes", 4 * GIB), ("qemu_write_rate_bytes_per_second", 17179869),
        ("memory_stall_seconds", 3), ("io_stall_seconds", 30),
        ("guest_memory_used_bytes", 4 * GIB), ("guest_cpu_ratio", 0.5),
    ):
        metric = f"libvirt_snapshot_last_operation_{name}"
        lines += [f"# TYPE {metric} gauge", f"{metric}{{{op}}} {value}"]
    return "\n".join(lines) + "\n"


class _Exporter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = _exposition().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, **params) -> dict:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _wait(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as e:  # not listening yet
            last = e
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}: {last!r}")


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
    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    prom_port, vm_port = _free_port(), _free_port()

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
    config["remote_write"] = [{"url": f"http://127.0.0.1:{vm_port}/api/v1/write",
                               "queue_config": {"batch_send_deadline": "1s"}}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp / "rules").mkdir()
    for path in (PROM / "rules").glob("*.yml"):
        rules = load_yaml(path)
        for group in rules["groups"]:
            group.pop("interval", None)
        (tmp / "rules" / path.name).write_text(yaml.safe_dump(rules, sort_keys=False))

    vm = subprocess.Popen(
        [tool("victoria-metrics"), f"-httpListenAddr=127.0.0.1:{vm_port}",
         f"-storageDataPath={tmp / 'vm'}", "-retentionPeriod=1", "-search.latencyOffset=0s",
         "-search.disableCache", "-loggerLevel=ERROR"],
        stdout=subprocess.DEVNULL, stderr=(tmp / "vm.log").open("w"))
    prometheus = subprocess.Popen(
        [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
         "--enable-feature=expand-external-labels"],
        env={"HYPERVISOR": HYPERVISOR, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("w"))
    try:
        prom = f"http://127.0.0.1:{prom_port}"
        _wait("Prometheus", lambda: urllib.request.urlopen(f"{prom}/-/ready", timeout=2).status == 200)
        _wait("VictoriaMetrics", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{vm_port}/health", timeout=2).status == 200)
        yield {"prometheus": prom, "vm": f"http://127.0.0.1:{vm_port}", "tmp": tmp}
    finally:
        _stop(prometheus)
        _stop(vm)
        exporter.shutdown()
        shutil.rmtree(tmp / "data", ignore_errors=True)


def _query(base: str, expr: str) -> list:
    answer = _get(f"{base}/api/v1/query", query=expr)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_external_label_is_expanded(stack):
    answer = _get(f"{stack['prometheus']}/api/v1/status/config")
    loaded = yaml.safe_load(answer["data"]["yaml"])
    assert loaded["global"]["external_labels"] == {"hypervisor": HYPERVISOR}


def test_every_rule_evaluates_without_error(stack):
    def all_evaluated():
        groups = _get(f"{stack['prometheus']}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2")
                                      and not r["lastEvaluation"].startswith("0001")
                                      for r in rules) else None

    rules = _wait("a first evaluation of every rule", all_evaluated)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad
    assert len(rules) == len(recording_rules()) + len(alerting_rules())


def test_rules_compute_on_exporter_data(stack):
    prom = stack["prometheus"]
    ratio = _wait("recording rules", lambda: _query(
        prom, f"instance:libvirt_node_memory_available:ratio{{{J}}}"))
    assert float(ratio[0]["value"][1]) == pytest.approx(1 / 16)
    p50 = _wait("quantiles", lambda: _query(
        prom, f"domain_operation:libvirt_snapshot_operation_duration_seconds:p50_7d{{{J}}}"))
    assert p50[0]["metric"]["domain"] == "vm1"
    # Only 1 GiB of 16 available while vm1's create runs: pending until its for: elapses.
    alerts = _wait("the memory pressure alert", lambda: _query(
        prom, 'ALERTS{alertname="LibvirtSnapshotHostMemoryLow"}'))
    assert alerts[0]["metric"]["domain"] == "vm1"
    assert alerts[0]["metric"]["severity"] == "warning"


def test_remote_write_carries_the_hypervisor_label(stack):
    series = _wait("remote-written series in VictoriaMetrics", lambda: _query(
        stack["vm"], f'libvirt_up{{{J},hypervisor="{HYPERVISOR}"}}'), timeout=90)
    assert series[0]["value"][1] == "1"
    alerts = _wait("remote-written ALERTS", lambda: _query(
        stack["vm"], f'ALERTS{{alertname="LibvirtSnapshotHostMemoryLow",hypervisor="{HYPERVISOR}"}}'),
        timeout=90)
    assert alerts[0]["metric"]["domain"] == "vm1"


def test_every_dashboard_query_runs(stack):
    prom = stack["prometheus"]
    # Every query returns data, except: no operation may have finished in the last minute,
    # and no alert fires yet (each has a for:). Rates and recorded quantiles need a few scrapes
    # and evaluations first, hence the retries.
    may_be_empty = ("'Snapshot operations finished'", "'Firing alerts'")

    def unexpectedly_empty() -> list[str]:
        empty = []
        for where, expr in QUERIES:
            answer = _get(f"{prom}/api/v1/query", query=_promql(expr))
            assert answer["status"] == "success", (where, answer)
            if not answer["data"]["result"] and not any(m in where for m in may_be_empty):
                empty.append(where)
        return empty

    deadline = time.monotonic() + 60
    while (empty := unexpectedly_empty()) and time.monotonic() < deadline:
        time.sleep(1)
    assert empty == []
