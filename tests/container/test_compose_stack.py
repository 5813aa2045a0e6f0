"""The compose stack run whole by podman-compose: docker-compose.yml's exporter, prometheus and
alertmanager services with their own commands, mounts, ports, network and healthchecks, the
two Prometheus images swapped for Debian's Prometheus 2.42 and Alertmanager 0.25 by
tests/container/compose.debian.yml (prom/* images cannot be pulled here).

Grafana is not run: no image of it can be built here (not packaged in Debian, PyPI or npm); its
dashboard is proven by its JSON and by its queries against a real Prometheus (tests/bundle,
tests/e2e).

Needs rootful podman set up by `scripts/container-base.sh up` (CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF from `scripts/container-base.sh env`; `make test` does both) and the
host's libvirtd on /var/run/libvirt.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from lse_devtools.bundle import load_yaml

pytestmark = pytest.mark.libvirt

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "tests" / "container" / "compose.debian.yml"
PROJECT = f"lse-cstack-{os.getpid()}"
SERVICES = ("exporter", "prometheus", "alertmanager")
PORTS = {"exporter": 9966, "prometheus": 9090, "alertmanager": 9093}
PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
HYPERVISOR = "hv-ctest"
# EXPORTER_URL is left unset: the default, the exporter's published port on this host.
EXPORTER_URL = "http://localhost:9966"


def container(service: str) -> str:
    return f"{PROJECT}_{service}_1"


def podman_compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "podman-compose"
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("EXPORTER_URL", "GRAFANA_ADMIN_PASSWORD")
                   and not k.endswith("_BIND")}
    environment.update(HYPERVISOR=HYPERVISOR, GRAFANA_ADMIN_PASSWORD="unused-grafana-is-not-run")
    return subprocess.run(
        [str(tool), "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"), "-f", str(OVERRIDE),
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment)


def podman(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)


def get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read()
    return json.loads(body) if response.headers.get_content_type() == "application/json" \
        else body.decode()


def query(expr: str) -> list[dict]:
    answer = get(f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, ValueError):
            result = None
        if result:
            return result
        time.sleep(0.5)
    logs = "".join(f"--- {s}\n" + (lambda r: r.stdout[-1500:] + r.stderr[-1500:])(
        podman("logs", "--tail", "20", container(s))) for s in SERVICES)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


def targets() -> dict[str, dict]:
    active = get(f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
    return {t["labels"]["job"]: t for t in active}


@pytest.fixture(scope="module")
def stack(libvirtd):
    if not os.environ.get("CONTAINERS_CONF") or not shutil.which("podman"):
        pytest.fail("podman is not set up: run `bash scripts/container-base.sh up` and "
                    'eval "$(bash scripts/container-base.sh env)" (make test does)')
    for service, port in PORTS.items():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is taken: the compose file publishes {service} there")
    started = time.monotonic()
    up = podman_compose("up", "-d", "--build", *SERVICES)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    print(f"\ncompose stack: built and started in {time.monotonic() - started:.1f} s")
    try:
        wait_for(lambda: get(f"{PROMETHEUS}/-/ready").startswith("Prometheus"), 60,
                 "Prometheus ready")
        # The first scrape of each target comes within one scrape_interval (15 s).
        wait_for(lambda: all(targets().get(job, {}).get("health") == "up"
                             for job in ("libvirt-snapshot-exporter", "alertmanager")),
                 60, "the exporter and Alertmanager scraped")
        print(f"compose stack: scraped {time.monotonic() - started:.1f} s after `up`")
        yield
    finally:
        podman_compose("down", "-v", timeout=120)


def test_every_service_runs_with_its_healthcheck_passing(stack):
    """docker-compose.yml's healthchecks as written (wget in the Prometheus images, Python in
    the exporter's) pass: podman runs them only when asked, without systemd."""
    for service in SERVICES:
        check = podman("healthcheck", "run", container(service))
        assert check.returncode == 0, (service, check.stdout + check.stderr)
        state = json.loads(podman("inspect", container(service)).stdout)[0]["State"]
        assert state["Health"]["Status"] == "healthy", (service, state["Health"])


def test_ports_are_published_on_loopback_only(stack):
    for service, port in PORTS.items():
        published = podman("port", container(service)).stdout.split()
        assert published == [f"{port}/tcp", "->", f"127.0.0.1:{port}"], (service, published)


def test_prometheus_loads_the_shipped_rules(stack):
    """rule_files `rules/*.yml`, relative to /etc/prometheus/prometheus.yml, finds the mounted
    prometheus/rules: every group of every shipped file is loaded."""
    groups = get(f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    loaded = {(Path(g["file"]).name, g["name"]): len(g["rules"]) for g in groups}
    shipped = {(path.name, g["name"]): len(g["rules"])
               for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
               for g in load_yaml(path)["groups"]}
    assert shipped and loaded == shipped
    assert all(g["file"].startswith("/etc/prometheus/rules/") for g in groups)
    assert any(r["type"] == "alerting" for g in groups for r in g["rules"])


def test_prometheus_scrapes_the_exporter_service(stack):
    exporter = targets()["libvirt-snapshot-exporter"]
    assert exporter["scrapeUrl"] == "http://exporter:9966/metrics"
    assert exporter["health"] == "up", exporter["lastError"]
    (up,) = query('up{job="libvirt-snapshot-exporter"}')
    assert up["value"][1] == "1"
    # The exporter's own series arrive through that scrape: its node name from HYPERVISOR.
    assert query(f'libvirt_node_info{{job="libvirt-snapshot-exporter",hostname="{HYPERVISOR}"}}')


def test_prometheus_reaches_alertmanager(stack):
    """Prometheus sends alerts to the alertmanager service, over the compose network, and
    Alertmanager runs the shipped alertmanager.yml."""
    active = get(f"{PROMETHEUS}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"] for a in active] == ["http://alertmanager:9093/api/v2/alerts"]
    assert targets()["alertmanager"]["health"] == "up"  # reachable under that name
    status = get(f"{ALERTMANAGER}/api/v2/status")
    shipped = load_yaml(ROOT / "alertmanager" / "alertmanager.yml")
    running = yaml.safe_load(status["config"]["original"])
    assert running["route"]["receiver"] == shipped["route"]["receiver"]
    assert [r["name"] for r in running["receivers"]] == [r["name"] for r in shipped["receivers"]]


def test_hypervisor_label_is_expanded(stack):
    """prometheus.yml's external label hypervisor: ${HYPERVISOR}, from the service's
    environment (the entrypoint exports it; the Debian 2.42 image expands it as 3.x does)."""
    config = yaml.safe_load(get(f"{PROMETHEUS}/api/v1/status/config")["data"]["yaml"])
    assert config["global"]["external_labels"] == {"hypervisor": HYPERVISOR}


def test_exporter_url_reaches_the_exporter_and_opens_it(stack):
    """--web.external-url from EXPORTER_URL (here its default): the exporter publishes it, and
    it opens the exporter's pages from this host."""
    (info,) = query('libvirt_snapshot_exporter_url_info{job="libvirt-snapshot-exporter"}')
    assert info["metric"]["url"] == EXPORTER_URL
    with urllib.request.urlopen(EXPORTER_URL + "/", timeout=5) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "text/html"
