"""One hypervisor's monitoring end to end, real processes only: the exporter watching the real
libvirtd, Prometheus run with a copy of prometheus/prometheus.yml and the shipped rules,
Alertmanager with a copy of alertmanager/alertmanager.yml delivering to a webhook receiver on
loopback, and the commented remote_write block of prometheus.yml enabled towards
VictoriaMetrics. Real operations feed it: a chain of internal snapshots of the filler guest, a
revert and deletes, and a create that really fails (the guest's qcow2 lives on a 64 MiB tmpfs).

The copies differ from what ships in these ways only (devtools/lse_devtools/derived.py):
- addresses: the compose service names become the loopback ports of the processes started here;
- time: scrape and evaluation every second, the rule groups' own `interval:` dropped (the hourly
  7-day baseline is evaluated every second too) and every alert's `for:` SHORTENED TO 1 s; the
  alert expressions, recording rules and default thresholds are exactly as shipped;
- the slow threshold is lowered to 0.5 s and the guest pause threshold to 0.1 s for the filler
  domain alone, through the documented override (a thresholds-local.yml beside the shipped
  rules, docs/bundle.md);
- Alertmanager waits 1 s before and between notifications, and its webhooks point here.

The exporter runs with --web.external-url set to its loopback address, as an operator sets it to
the address users reach it at: the alerts' operation_url and runbook_url are fetched from it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.model.operation import PACE_SETTERS
from lse_devtools import dashboard, derived, testbed
from lse_devtools.driving import Ran, run_recorded
from lse_devtools.exporter_proc import ExporterProcess, free_port
from lse_devtools.services import (
    Server,
    Webhook,
    alertmanager,
    get_json,
    prometheus,
    victoria_metrics,
    wait,
)

pytestmark = pytest.mark.libvirt

HYPERVISOR = "hv-e2e"
SLOW_SECONDS = 0.5
PAUSED_SECONDS = 0.1
JOB = 'job="libvirt-snapshot-exporter"'


@dataclass
class Stack:
    exporter: ExporterProcess
    prometheus: Server
    alertmanager: Server
    victoria_metrics: Server
    webhook: Webhook

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.exporter.port}"


@dataclass
class Scenario:
    failure: Ran | None = None  # the create on the full tmpfs
    # where -> first non-empty answer of each in-flight dashboard query while an operation ran
    in_flight: dict[str, list] = field(default_factory=dict)


@pytest.fixture(scope="module")
def full_guest(libvirtd):
    """A guest whose qcow2 lives on a 64 MiB tmpfs: saving its 256 MiB of RAM there fails.
    Created first, so that it boots while the filler does."""
    mount = Path(tempfile.mkdtemp(prefix="lse-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    guest = None
    try:
        guest = testbed.create_guest(libvirtd.get(), "full", memory_mib=512, fill_mib=256,
                                     disk_dir=mount, disk_size="1G")
        yield guest
    finally:
        if guest is not None:
            testbed.destroy_guest(libvirtd.get(), guest)
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


@pytest.fixture(scope="module")
def stack(full_guest, filler, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-hypervisor")
    started: list = []
    try:
        port = free_port()
        exporter = ExporterProcess(f"--node.hostname={HYPERVISOR}",
                                   f"--web.external-url=http://127.0.0.1:{port}",
                                   state_dir=str(tmp / "state"), port=port)
        started.append(exporter)
        exporter.start()
        webhook = Webhook()
        started.append(webhook)
        prom_port, am_port, vm_port = free_port(), free_port(), free_port()
        vm = victoria_metrics(tmp / "vm", vm_port)
        started.append(vm)

        am_config = derived.write_yaml(tmp / "alertmanager.yml",
                                       derived.alertmanager_config(f"127.0.0.1:{webhook.port}"))
        am = alertmanager(am_config, tmp / "am", am_port)
        started.append(am)

        config = derived.prometheus_config("prometheus.yml", {
            "exporter:9966": f"127.0.0.1:{exporter.port}",
            "localhost:9090": f"127.0.0.1:{prom_port}",
            "alertmanager:9093": f"127.0.0.1:{am_port}",
        })
        assert "remote_write" not in config  # shipped commented out: enabled as its comment says
        config["remote_write"] = [{"url": f"http://127.0.0.1:{vm_port}/api/v1/write",
                                   "queue_config": {"batch_send_deadline": derived.SHORT}}]
        derived.rules(tmp / "rules", [{
            "record": "libvirt_snapshot:threshold_slow_seconds",
            "expr": f"vector({SLOW_SECONDS})",
            "labels": {"domain": filler.name},
        }, {
            "record": "libvirt_snapshot:threshold_guest_paused_seconds",
            "expr": f"vector({PAUSED_SECONDS})",
            "labels": {"domain": filler.name},
        }])
        prom = prometheus(derived.write_yaml(tmp / "prometheus.yml", config), tmp / "data",
                          prom_port, hypervisor=HYPERVISOR)
        started.append(prom)
        yield Stack(exporter, prom, am, vm, webhook)
    finally:
        for item in reversed(started):
            item.stop()
            if isinstance(item, ExporterProcess):
                item.log_path.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _values(stack: Stack, domain: str) -> dict[str, str | None]:
    """The dashboard's variables as a user picks them: All hypervisors (a hypervisor's own
    Prometheus has no hypervisor label: it is an external label, added on the way out), this
    exporter's instance, the domain."""
    return {"hypervisor": None, "instance": stack.instance, "domain": domain}


def _ask(server: Server, q: dashboard.Query, values: dict[str, str | None],
         now: float) -> list[dict]:
    """A query as a 5-minute dashboard asks it: range panels every second, annotations at
    their own step, tables and stats at the instant now."""
    expr = dashboard.interpolate(q.expr, values, 1.0, q.step)
    if q.instant:
        return server.query(expr, now)
    return server.query_range(expr, now - 300, now, q.step)


@pytest.fixture(scope="module")
def scenario(stack, filler, full_guest, libvirtd):
    """The operations, once for the module; the dashboard's in-flight queries are asked
    while each runs."""
    conn = libvirtd.get()
    testbed.delete_all_snapshots(conn, filler)
    full_guest.wait_ready(timeout=300)
    for guest in (filler, full_guest):
        wait(f"Prometheus to scrape {guest.name}", lambda g=guest: stack.prometheus.query(
            f'libvirt_domain_info{{{JOB}, domain="{g.name}"}}'))
    result = Scenario()
    values = _values(stack, filler.name)
    watched = [q for q in dashboard.queries() if q.in_flight]

    def ask_in_flight() -> None:
        for q in watched:
            if q.where in result.in_flight:
                continue
            answer = _ask(stack.prometheus, q, values, time.time())
            if answer:
                result.in_flight[q.where] = answer

    def op(fn) -> None:
        ran = run_recorded([stack.exporter], filler.name, fn, ask_in_flight)
        assert ran.error is None and ran.logged, ran

    dom = conn.lookupByName(filler.name)
    try:
        for n in (1, 2, 3, 4):
            op(lambda n=n: testbed.create_snapshot(conn, filler, f"level{n}"))
        op(lambda: dom.revertToSnapshot(dom.snapshotLookupByName("level2")))
        for name in ("level4", "level3"):  # level1 and level2 stay: inventory panels need them
            op(lambda name=name: dom.snapshotLookupByName(name).delete())
        result.failure = run_recorded([stack.exporter], full_guest.name,
                                      lambda: testbed.create_snapshot(conn, full_guest, "nospace"))
        yield result
    finally:
        testbed.delete_all_snapshots(conn, filler)


def _delivered(stack: Stack, alertname: str, domain: str) -> tuple[str, dict]:
    found = wait(f"{alertname} of {domain} at the webhook receiver",
                 lambda: stack.webhook.alerts(alertname, domain=domain), timeout=90)
    return found[0]


def _alerts(stack: Stack, alertname: str, domain: str) -> list[dict]:
    return stack.prometheus.query(f'ALERTS{{alertname="{alertname}", domain="{domain}"}}')


def _check_labels_and_annotations(stack: Stack, alert: dict, domain: str, anchor: str) -> None:
    labels, annotations = alert["labels"], alert["annotations"]
    assert labels["severity"] == "warning"
    assert labels["hypervisor"] == HYPERVISOR  # the external label, added on the way out
    assert labels["instance"] == stack.instance
    assert labels["job"] == "libvirt-snapshot-exporter"
    assert annotations["summary"]
    assert domain in annotations["description"]
    assert stack.instance in annotations["description"]
    # The exporter's own runbook (the default of the one setting, recording.yml), at the
    # alert's section.
    assert annotations["runbook_url"] == f"{stack.exporter.url}/runbook#{anchor}"


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200, url
        return response.read().decode()


def _linked(stack: Stack, alertname: str, domain: str) -> dict:
    """The latest firing alert delivered whose operation_url is an operation's page (a
    notification sent before the exporter published the id links the exporter's / instead;
    every later alert of the group sends the group again)."""
    page = re.compile(rf"{re.escape(stack.exporter.url)}/operations/[0-9a-f]{{16}}")

    def linked() -> list[dict]:
        return [alert for _, alert in stack.webhook.alerts(alertname, domain=domain)
                if page.fullmatch(alert["annotations"].get("operation_url", ""))]

    return wait(f"{alertname} of {domain} with its operation's page", linked, timeout=90)[-1]


def _check_links(stack: Stack, alert: dict, domain: str, anchor: str) -> str:
    """Both links open: operation_url the page of one of the domain's operations, runbook_url
    the runbook with the alert's section. Returns the operation's id."""
    url = alert["annotations"]["operation_url"]
    op_id = url.rsplit("/", 1)[1]
    logged = get_json(f"{stack.exporter.url}/api/operations")["operations"]
    (entry,) = [op for op in logged if op["id"] == op_id]
    assert entry["domain"] == domain
    assert entry["operation"] == alert["labels"]["operation"]
    page = _fetch(url)
    assert f"<td>{domain}</td>" in page  # the page of that operation, with its domain
    runbook = _fetch(alert["annotations"]["runbook_url"])
    assert f'id="{anchor}"' in runbook
    assert f">{alert['labels']['alertname']}<" in runbook  # the section's heading
    return op_id


def test_slow_snapshot_alert_reaches_the_receiver(stack, scenario, filler, full_guest):
    path, alert = _delivered(stack, "LibvirtSnapshotSlow", filler.name)
    assert path == "/alerts/warning"
    assert alert["labels"]["operation"] in ("create", "revert", "delete")
    _check_labels_and_annotations(stack, alert, filler.name, "libvirtsnapshotslow")
    # The exporter's verdict on that operation, named in the description once it is given
    # (3 s after the operation's end; here the alert's `for:` is shortened below that, while
    # the shipped 1 m leaves the verdict time to come).
    paces = "|".join(PACE_SETTERS)

    def described() -> list[str]:
        alerts = get_json(f"{stack.prometheus.url}/api/v1/alerts")["data"]["alerts"]
        return [a["annotations"]["description"] for a in alerts
                if a["labels"]["alertname"] == "LibvirtSnapshotSlow"
                and a["labels"].get("domain") == filler.name
                and re.search(rf"What set its pace, as the exporter's verdict measured: ({paces})[;.]",
                              a["annotations"]["description"])]

    wait("the slow alert's description naming what set the pace", described, timeout=60)
    # The links in the alert as the receiver got it: the operation's page and the runbook,
    # both served by the exporter that saw it.
    _check_links(stack, _linked(stack, "LibvirtSnapshotSlow", filler.name), filler.name,
                 "libvirtsnapshotslow")
    # The override is for the filler alone: the failed create of the other guest, much
    # shorter than the default 300 s, is not slow.
    assert _alerts(stack, "LibvirtSnapshotSlow", full_guest.name) == []


def test_failed_snapshot_alert_reaches_the_receiver(stack, scenario, filler, full_guest):
    assert scenario.failure.error is not None, "the create on the full tmpfs succeeded"
    assert "Error while writing VM state" in str(scenario.failure.error)
    assert scenario.failure.logged, "the exporter did not log the failed create"
    path, alert = _delivered(stack, "LibvirtSnapshotFailed", full_guest.name)
    assert path == "/alerts/warning"
    assert alert["labels"]["operation"] == "create"
    _check_labels_and_annotations(stack, alert, full_guest.name, "libvirtsnapshotfailed")
    # The alert that foretells this failure: less room than the guest's memory.
    _, alert = _delivered(stack, "LibvirtSnapshotInsufficientSpace", full_guest.name)
    _check_labels_and_annotations(stack, alert, full_guest.name,
                                  "libvirtsnapshotinsufficientspace")
    # Every operation of the filler succeeded.
    assert _alerts(stack, "LibvirtSnapshotFailed", filler.name) == []
    # Its link opens the failed create's page.
    op_id = _check_links(stack, _linked(stack, "LibvirtSnapshotFailed", full_guest.name),
                         full_guest.name, "libvirtsnapshotfailed")
    (entry,) = [op for op in get_json(f"{stack.exporter.url}/api/operations")["operations"]
                if op["id"] == op_id]
    assert entry["outcome"] == "failure"


def test_guest_pause_alert_reaches_the_receiver(stack, scenario, filler, full_guest):
    """The guest's pause of an internal snapshot with memory, over the filler's 0.1 s
    override: the alert names it and links its page."""
    path, alert = _delivered(stack, "LibvirtSnapshotGuestPausedLong", filler.name)
    assert path == "/alerts/warning"
    _check_labels_and_annotations(stack, alert, filler.name, "libvirtsnapshotguestpausedlong")
    assert "kept the guest paused for" in alert["annotations"]["description"]
    _check_links(stack, _linked(stack, "LibvirtSnapshotGuestPausedLong", filler.name),
                 filler.name, "libvirtsnapshotguestpausedlong")
    # The default threshold (60 s) holds for the other guest.
    assert _alerts(stack, "LibvirtSnapshotGuestPausedLong", full_guest.name) == []


def test_notifications_reach_the_receiver_so_no_delivery_alert(stack, scenario, filler):
    """The receiver here answers: Alertmanager (scraped by the shipped config's job) counts no
    failed notification and LibvirtSnapshotNotificationsFailing stays silent."""
    _delivered(stack, "LibvirtSnapshotSlow", filler.name)
    failed = stack.prometheus.query('sum(alertmanager_notifications_failed_total)')
    assert failed and float(failed[0]["value"][1]) == 0
    assert stack.prometheus.query('ALERTS{alertname="LibvirtSnapshotNotificationsFailing"}') == []


def test_in_flight_dashboard_queries_answer_while_an_operation_runs(scenario, filler):
    watched = {q.where for q in dashboard.queries() if q.in_flight}
    assert watched, "the dashboard has no in-flight query"
    assert sorted(watched - set(scenario.in_flight)) == []
    for where, answer in scenario.in_flight.items():
        if where.startswith("panel 1 "):  # the table of operations in flight
            assert {s["metric"]["domain"] for s in answer} == {filler.name}, where
        if where.endswith(dashboard.TWIN):  # the number of operations in flight
            assert float(answer[0]["value"][1]) >= 1, where


def _every_query_answers(server: Server, values: dict[str, str | None]) -> None:
    """Every query but the in-flight ones returns data, once recording rules and rates have
    caught up with the last operation; a fallback 0 never stands beside real series."""
    asked = [q for q in dashboard.queries() if not q.in_flight]
    deadline = time.monotonic() + 30
    while True:
        now = time.time() - 2  # one instant for all, whose samples are all stored already
        answers = {q.where: _ask(server, q, values, now) for q in asked}
        empty = [where for where, answer in answers.items() if not answer]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert empty == []
    for where, answer in answers.items():
        twin = answers.get(where + dashboard.TWIN)
        if twin:
            assert [s["metric"] for s in answer] == [s["metric"] for s in twin], where


def test_every_dashboard_query_returns_real_data(stack, scenario, filler):
    """Asked once the operations are over and while an alert fires (the firing-alerts
    panel)."""
    wait("LibvirtSnapshotSlow firing", lambda: stack.prometheus.query(
        f'ALERTS{{alertname="LibvirtSnapshotSlow", alertstate="firing", domain="{filler.name}"}}'),
        timeout=90)
    _every_query_answers(stack.prometheus, _values(stack, filler.name))


def test_dashboard_works_unchanged_on_the_central_store(stack, scenario, filler):
    """docs/bundle.md: one Grafana on the central store that every hypervisor remote-writes
    to, the dashboard unchanged, the Hypervisor variable picking this one."""
    wait("ALERTS remote-written with the hypervisor label", lambda: stack.victoria_metrics.query(
        f'ALERTS{{alertname="LibvirtSnapshotSlow", alertstate="firing", domain="{filler.name}", '
        f'hypervisor="{HYPERVISOR}"}}'), timeout=90)
    _every_query_answers(stack.victoria_metrics, {**_values(stack, filler.name),
                                                  "hypervisor": HYPERVISOR})


def test_dashboard_variables_list_the_instance_and_domains(stack, scenario, filler, full_guest):
    variables = dashboard.variables()
    now = time.time()

    def values(name: str, **picked: str | None) -> list[str]:
        selector = dashboard.interpolate(variables[name], picked, 1.0, dashboard.PANEL_STEP)
        return stack.prometheus.label_values(name, selector, now - 300, now)

    assert stack.instance in values("instance", hypervisor=None)
    domains = values("domain", hypervisor=None, instance=stack.instance)
    assert {filler.name, full_guest.name} <= set(domains)
    # Locally the hypervisor label does not exist (it is external): the variable offers only
    # All here; test_remote_write_carries_the_hypervisor_label reads it where it does exist.
    assert values("hypervisor") == []


def test_remote_write_carries_the_hypervisor_label(stack, scenario, filler):
    """The shipped prometheus.yml's ${HYPERVISOR} external label on what it remote-writes (the
    one check of it: tests/bundle/test_live_prometheus.py checks only its expansion; ALERTS
    carry it too: test_dashboard_works_unchanged_on_the_central_store)."""
    vm = stack.victoria_metrics
    for selector in (
        "libvirt_up",
        "libvirt_node_memory_dirty_bytes",
        f'libvirt_snapshot_domain_operation_duration_seconds_count{{domain="{filler.name}", '
        'operation="create", outcome="success"}',
    ):
        series = wait(f"{selector} in VictoriaMetrics", lambda s=selector: vm.query(s), timeout=60)
        for s in series:
            assert s["metric"]["hypervisor"] == HYPERVISOR, s
            assert s["metric"]["job"] == "libvirt-snapshot-exporter", s
    creates = wait("all four creates in VictoriaMetrics", lambda: [
        s for s in vm.query('libvirt_snapshot_domain_operation_duration_seconds_count'
                            f'{{domain="{filler.name}", operation="create", outcome="success"}}')
        if float(s["value"][1]) >= 4])
    assert creates
    now = time.time()
    selector = dashboard.interpolate(dashboard.variables()["hypervisor"], {}, 1.0,
                                     dashboard.PANEL_STEP)  # the bundle's job, as it defaults
    hypervisors = vm.label_values("hypervisor", selector, now - 300, now)
    assert hypervisors == [HYPERVISOR]

