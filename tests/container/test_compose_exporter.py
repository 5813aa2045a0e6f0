"""The exporter's image for real: built from exporter/Dockerfile and run as docker-compose.yml's
`exporter` service by podman-compose, watching the real libvirtd of this machine.

Needs rootful podman set up by `scripts/container-base.sh up` (CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF from `scripts/container-base.sh env`; `make test` does both), and the
host's libvirtd (9.0) on /var/run/libvirt: the compose file mounts that socket directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lse_devtools import testbed
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.libvirt

ROOT = Path(__file__).resolve().parents[2]
PROJECT = f"lse-ctest-{os.getpid()}"
URL = "http://127.0.0.1:9966"
CONTAINER = f"{PROJECT}_exporter_1"


def podman_compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "podman-compose"
    # The Grafana password is required by the compose file, whichever service runs.
    environment = {k: v for k, v in os.environ.items() if k != "HYPERVISOR"}
    environment["GRAFANA_ADMIN_PASSWORD"] = "unused-by-the-exporter"
    return subprocess.run([str(tool), "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=environment)


def podman(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)


def samples() -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(URL + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples]


def value(name: str, **labels: str) -> float | None:
    try:
        found = [v for n, lab, v in samples()
                 if n == name and all(lab.get(k) == w for k, w in labels.items())]
    except OSError:
        return None
    return found[0] if found else None


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    logs = podman("logs", "--tail", "30", CONTAINER)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs.stdout}{logs.stderr}")


def operations() -> list[dict]:
    with urllib.request.urlopen(URL + "/api/operations", timeout=5) as response:
        return json.load(response)["operations"]


@pytest.fixture(scope="module")
def service(libvirtd):
    if not os.environ.get("CONTAINERS_CONF") or not shutil.which("podman"):
        pytest.fail("podman is not set up: run `bash scripts/container-base.sh up` and "
                    'eval "$(bash scripts/container-base.sh env)" (make test does)')
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9966)) == 0:
            pytest.fail("port 9966 is taken (a demo or another exporter?): the compose file "
                        "publishes the exporter there")
    up = podman_compose("up", "-d", "--build", "exporter")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    try:
        wait_for(lambda: value("libvirt_up") == 1.0, 60, "libvirt_up 1 in the container")
        yield
    finally:
        podman_compose("down", "-v", timeout=120)


def test_connects_and_sees_the_host(service, libvirtd):
    conn = libvirtd.get()
    guest = testbed.create_guest(conn, "ctr", memory_mib=128)
    try:
        wait_for(lambda: value("libvirt_domain_info", domain=guest.name), 30,
                 f"{guest.name} in the container's /metrics")
        domains = {lab["domain"] for n, lab, _ in samples() if n == "libvirt_domain_info"}
        assert {d.name() for d in conn.listAllDomains()} <= domains
        # uts: host: with no HYPERVISOR set, the host's own name.
        assert value("libvirt_node_info", hostname=socket.gethostname()) == 1
        assert value("libvirt_snapshot_exporter_collector_success", collector="host") == 1
    finally:
        testbed.destroy_guest(conn, guest)


def test_times_a_real_snapshot_and_reads_qemu_io(service, libvirtd):
    conn = libvirtd.get()
    guest = testbed.create_guest(conn, "ctrsnap", memory_mib=384, fill_mib=192)
    try:
        guest.wait_ready(timeout=300)
        wait_for(lambda: value("libvirt_domain_info", domain=guest.name), 30, "the guest")
        # SYS_PTRACE and DAC_READ_SEARCH let uid 0 of the container read QEMU's /proc/PID/io.
        wait_for(lambda: value("libvirt_domain_qemu_io_source_info", domain=guest.name,
                               source="proc_io"), 30, "QEMU I/O read from /proc/PID/io")
        wall = testbed.create_snapshot(conn, guest, "in-container")
        (op,) = wait_for(lambda: [o for o in operations() if o["domain"] == guest.name], 20,
                         "the create in /api/operations")
        assert (op["operation"], op["snapshot"], op["outcome"]) == (
            "create", "in-container", "success")
        assert abs(op["duration_seconds"] - wall) <= 0.5, (op, wall)
        assert op["qemu_written_bytes"] > 100 * 2**20
        # The operation page and the uPlot it needs ship in the image (package data).
        with urllib.request.urlopen(f"{URL}/operations/{op['id']}", timeout=5) as response:
            assert f"create of {guest.name} / in-container".encode() in response.read()
        with urllib.request.urlopen(URL + "/static/uplot.iife.min.js", timeout=5) as response:
            assert response.read().startswith(b"/*! https://github.com/leeoniya/uPlot")
    finally:
        testbed.destroy_guest(conn, guest)


def test_runs_as_uid_0_with_two_capabilities(service):
    (info,) = json.loads(podman("inspect", CONTAINER).stdout)
    assert info["Config"]["User"] in ("0:0", "0")
    assert sorted(info["EffectiveCaps"]) == ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]
    assert info["HostConfig"]["ReadonlyRootfs"] is True


def test_healthcheck_passes(service):
    check = podman("healthcheck", "run", CONTAINER)
    assert check.returncode == 0, check.stdout + check.stderr
    state = json.loads(podman("inspect", CONTAINER).stdout)[0]["State"]
    assert state["Health"]["Status"] == "healthy", state["Health"]


def test_restart_keeps_the_operations_log(service):
    before = operations()
    assert before, "run after the snapshot test: nothing to keep"
    # A new container on the same named volume, as after `docker compose down && up`.
    down = podman_compose("down", timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]
    up = podman_compose("up", "-d", "exporter")
    assert up.returncode == 0, up.stderr[-2000:]
    wait_for(lambda: value("libvirt_up") == 1.0, 60, "libvirt_up 1 in the new container")
    assert value("libvirt_snapshot_exporter_state_write_success") == 1
    after = operations()
    assert [(o["domain"], o["snapshot"], o["start"]) for o in after[:len(before)]] == [
        (o["domain"], o["snapshot"], o["start"]) for o in before]
