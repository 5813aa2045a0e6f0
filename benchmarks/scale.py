#!/usr/bin/env python3
"""Scale benchmark: the exporter's cost with many domains, at its default intervals.

Scenarios (each prints scrape latency p50/p99, collection cycle time, CPU as a share of one
core at idle, RSS and number of series, against the targets):
- testdriver: 1,000 domains holding 10 snapshots each, served by libvirt's test driver from a
  generated node XML (test:///path/node.xml), exporter as a separate process;
- history: the same 1,000 domains, in-process, with create and delete history in every domain
  (driven through the exporter's own connection: a test driver lives inside the process that
  opened it), scraped from a separate process, plain and gzip (as Prometheus asks). The
  exporter's own RSS is the process' RSS less what the test driver holds, measured in a bare
  Python process that opens the same node XML and makes the same creates and deletes
  (`--domain-histograms` adds per-domain buckets); its CPU at idle is the process' once the
  history is done (`--tracemalloc` also prints where the Python heap goes, and slows it all);
- real: N guests without an OS under the real libvirtd, with Debian's
  prometheus-libvirt-exporter measured in the same run for comparison.

    .venv/bin/python benchmarks/scale.py [--domains 1000] [--real-guests 20] [--scenario all]
        [--domain-histograms] [--tracemalloc]

Each target is printed with "met" or "missed" (issue 23's: at 1,000 domains with history, own
RSS at most 100 MB, scrape p99 at most 25 ms, idle at most 2 % of a core).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import libvirt
import psutil

TARGETS = {"scrape_p99_ms": 150.0, "rss_mb": 150.0, "cpu_share": 0.02,
           "history_scrape_p99_ms": 25.0, "history_rss_mb": 100.0, "series_per_domain": 50.0}
HISTORY_ROUNDS = 2  # creates and deletes of one snapshot in every domain


def node_xml(domains: int, snapshots: int) -> str:
    """A test-driver node: running domains, each with a chain of internal snapshots."""
    parts = ["<node>"]
    for d in range(domains):
        name = f"scale-{d:04d}"
        dom = (f"<domain type='test'><name>{name}</name><memory>1048576</memory>"
               f"<os><type>hvm</type></os></domain>")
        snaps = []
        for s in range(snapshots):
            parent = f"<parent><name>s{s - 1}</name></parent>" if s else ""
            snaps.append(
                f"<test:domainsnapshot><name>s{s}</name><state>running</state>{parent}"
                f"<creationTime>{1700000000 + s * 3600}</creationTime>"
                f"<memory snapshot='internal'/><active>{1 if s == snapshots - 1 else 0}</active>"
                f"{dom}</test:domainsnapshot>")
        parts.append(
            f"<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            f"<name>{name}</name><memory>1048576</memory><vcpu>1</vcpu>"
            f"<os><type>hvm</type></os>{''.join(snaps)}</domain>")
    parts.append("</node>")
    return "\n".join(parts)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def scrape_stats(url: str, count: int = 100, pause: float = 0.05, gzip_body: bool = False
                 ) -> tuple[list[float], str]:
    """Latencies of `count` scrapes; gzip_body: asked and read compressed, as Prometheus does
    (the body returned is then the compressed one's length, as text)."""
    latencies, body = [], ""
    headers = {"Accept-Encoding": "gzip"} if gzip_body else {}
    for _ in range(count):
        start = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=30) as response:
            raw = response.read()
        latencies.append(time.perf_counter() - start)
        body = str(len(raw)) if gzip_body else raw.decode()
        time.sleep(pause)
    return latencies, body


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def cpu_share(proc: psutil.Process, seconds: float) -> float:
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    return (after.user + after.system - before.user - before.system) / seconds


def verdict(value: float, target: float, unit: str) -> str:
    """'met', or 'missed by' how much (a target is an upper bound)."""
    return "met" if value <= target else f"missed by {value - target:.1f} {unit}"


def report(title: str, latencies: list[float], cycle: float | None, cpu: float | None,
           rss: float, series: int, p99_target: float, rss_target: float = TARGETS["rss_mb"]
           ) -> None:
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    print(f"\n== {title}")
    print(f"  scrape latency  p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   (target p99 <= "
          f"{p99_target:.0f} ms: {verdict(p99, p99_target, 'ms')})")
    if cycle is not None:
        print(f"  collection cycle (domains collector): {cycle * 1000:.1f} ms")
    if cpu is not None:
        print(f"  CPU at idle: {cpu * 100:.2f} % of one core   (target <= "
              f"{TARGETS['cpu_share'] * 100:.0f} %: "
              f"{verdict(cpu * 100, TARGETS['cpu_share'] * 100, 'points')})")
    print(f"  RSS: {rss:.1f} MB   (target <= {rss_target:.0f} MB: {verdict(rss, rss_target, 'MB')})")
    print(f"  series: {series}")


def metric(text: str, name: str, label: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def run_testdriver(domains: int, snapshots: int, idle_seconds: float) -> None:
    from lse_devtools.exporter_proc import ExporterProcess

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node.xml"
        path.write_text(node_xml(domains, snapshots))
        exporter = ExporterProcess(uri=f"test://{path}")
        start = time.time()
        exporter.start()
        proc = psutil.Process(exporter.proc.pid)
        exporter.wait_for(lambda: (exporter.value("libvirt_snapshots", domain="scale-0999")
                                   if domains >= 1000 else True), 120, "all domains seen")
        print(f"\n(testdriver: all {domains} domains exported {time.time() - start:.1f} s "
              f"after start)")
        time.sleep(10)
        cpu = cpu_share(proc, idle_seconds)
        latencies, body = scrape_stats(exporter.url + "/metrics")
        rss = proc.memory_info().rss / 1e6
        cycle = metric(body, "libvirt_snapshot_exporter_collector_duration_seconds",
                       'collector="domains"')
        exporter.stop()
    report(f"test driver: {domains} domains x {snapshots} snapshots, separate process",
           latencies, cycle, cpu, rss, series_count(body), TARGETS["scrape_p99_ms"])


def _wait_for_domain(url: str, name: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if f'libvirt_snapshots{{domain="{name}"}}' in \
                    urllib.request.urlopen(url, timeout=10).read().decode():
                return
        except OSError:
            pass
        time.sleep(0.5)


def make_history(conn, domains: int, settle: float) -> None:
    """HISTORY_ROUNDS creates and deletes in every domain, each left visible for `settle` s
    (the test driver sends no event: a change must outlast one idle check interval)."""
    for round_ in range(HISTORY_ROUNDS):
        for d in range(domains):
            dom = conn.lookupByName(f"scale-{d:04d}")
            dom.snapshotCreateXML(f"<domainsnapshot><name>h{round_}</name></domainsnapshot>")
        time.sleep(settle)
        for d in range(domains):
            conn.lookupByName(f"scale-{d:04d}").snapshotLookupByName(f"h{round_}").delete()
        time.sleep(settle)


def _wait_for_history(url: str, operations: int, still: float = 30.0) -> tuple[int, int]:
    """Idle means the history is behind: every operation of it logged and judged (the last
    deletes are seen up to a check interval after they were made, then judged), or nothing
    more for `still` seconds. Returns the operations logged and judged, which the benchmark
    prints: a history with operations missed is a finding of its own."""
    def total(body: str, family: str) -> int:
        return round(sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                         if line.startswith(family + "{")))

    seen, since = (-1, -1), time.time()
    while True:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read().decode()
        now = (total(body, "libvirt_snapshot_operation_duration_seconds_count"),
               total(body, "libvirt_snapshot_operation_verdicts_total"))
        if min(now) >= operations or (now == seen and time.time() - since > still):
            return now
        if now != seen:
            seen, since = now, time.time()
        time.sleep(2)


def driver_rss_mb(path: Path, domains: int) -> float:
    """What libvirt's test driver alone holds for this node and history: the RSS a bare Python
    process gains by opening it and making the same creates and deletes."""
    result = subprocess.run([sys.executable, __file__, "--driver-baseline", str(path),
                             "--domains", str(domains)], capture_output=True, text=True,
                            check=True, timeout=600)
    return float(result.stdout.strip())


def _driver_baseline(path: str, domains: int) -> None:

    proc = psutil.Process()
    before = proc.memory_info().rss
    conn = libvirt.open(f"test://{path}")
    make_history(conn, domains, 0)
    print((proc.memory_info().rss - before) / 1e6)


def scrape_elsewhere(url: str) -> dict:
    """Scrape statistics taken by a separate process, so that the client does not compete with
    the exporter for its interpreter lock."""
    result = subprocess.run([sys.executable, __file__, "--scrape", url], capture_output=True,
                            text=True, check=True, timeout=600)
    return json.loads(result.stdout)


def _scrape(url: str) -> None:
    gzipped, size = scrape_stats(url, gzip_body=True)
    latencies, body = scrape_stats(url)
    series = [line for line in body.splitlines() if line and not line.startswith("#")]
    with_domain = [line for line in series if 'domain="' in line.split(" ")[0]]
    domains = {line.split('domain="', 1)[1].split('"', 1)[0] for line in with_domain}
    counted = sum(1 for line in series
                  if line.startswith("libvirt_snapshot_domain_operation_duration_seconds_count"))
    print(json.dumps({"latencies": latencies, "series": len(series), "domains": len(domains),
                      "domain_series": len(with_domain), "counted": counted,
                      "gzip_latencies": gzipped, "gzip_bytes": int(size), "bytes": len(body)}))


def run_history(domains: int, snapshots: int, domain_histograms: bool, idle_seconds: float,
                traced: bool) -> None:
    """In-process: the exporter's own connection drives creates and deletes on every domain."""
    from libvirt_snapshot_exporter import cli
    from lse_devtools.exporter_proc import free_port

    if traced:
        tracemalloc.start(8)

    with tempfile.TemporaryDirectory() as tmp, _read_write_connections() as opened:
        path = Path(tmp) / "node.xml"
        path.write_text(node_xml(domains, snapshots))
        driver = driver_rss_mb(path, domains)
        port = free_port()
        argv = [f"--libvirt.uri=test://{path}", f"--web.listen-address=127.0.0.1:{port}",
                f"--state.directory={tmp}/state", "--log.level=warning"]
        if domain_histograms:
            argv.append("--collector.domain-histograms")
        app = cli.build_app(argv)
        threading.Thread(target=app.serve, daemon=True).start()
        url = f"http://127.0.0.1:{port}/metrics"
        _wait_for_domain(url, f"scale-{domains - 1:04d}")
        make_history(opened[0], domains, 2 * (2 * domains / 200.0) + 3)
        logged, judged = _wait_for_history(url, 2 * HISTORY_ROUNDS * domains)
        cpu = cpu_share(psutil.Process(), idle_seconds)
        stats = scrape_elsewhere(url)
        rss = psutil.Process().memory_info().rss / 1e6
        if traced:
            print_heap(tracemalloc.take_snapshot())
        app.shutdown()
    option = "with" if domain_histograms else "without"
    print(f"\n(history: {stats['counted']} per-domain duration series after "
          f"{HISTORY_ROUNDS * domains} creates and {HISTORY_ROUNDS * domains} deletes; "
          f"{logged} operations logged, {judged} judged)")
    report(f"test driver with history: {domains} domains, in-process, {option} "
           "collector.domain-histograms", stats["latencies"], None, cpu, rss - driver,
           stats["series"], TARGETS["history_scrape_p99_ms"], TARGETS["history_rss_mb"])
    gzipped = stats["gzip_latencies"]
    print(f"  scrapes asking for gzip (as Prometheus does): p50 "
          f"{percentile(gzipped, 50) * 1000:.1f} ms, p99 {percentile(gzipped, 99) * 1000:.1f} ms; "
          f"{stats['gzip_bytes'] / 1e3:.0f} kB compressed of {stats['bytes'] / 1e6:.1f} MB")
    per_domain = stats["domain_series"] / max(1, stats["domains"])
    target = TARGETS["series_per_domain"]
    print(f"  process RSS {rss:.1f} MB, of which the test driver {driver:.1f} MB (measured in "
          f"a bare process): the exporter's own {rss - driver:.1f} MB")
    print(f"  series per domain: {per_domain:.1f}   (target <= {target:.0f}: "
          f"{verdict(per_domain, target, 'series')}); per host (no domain label): "
          f"{stats['series'] - stats['domain_series']}")


def print_heap(snapshot: tracemalloc.Snapshot, top: int = 15) -> None:
    """Where the Python heap goes: the lines holding most, and the totals."""
    current, peak = tracemalloc.get_traced_memory()
    print(f"\n(tracemalloc: {current / 1e6:.1f} MB traced now, peak {peak / 1e6:.1f} MB)")
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    for stat in snapshot.statistics("lineno")[:top]:
        print(f"  {stat.size / 1e6:6.2f} MB {stat.count:7d} blocks  {stat.traceback[0]}")


@contextlib.contextmanager
def _read_write_connections() -> Iterator[list[libvirt.virConnect]]:
    """Every libvirt.openReadOnly of this process opens read-write instead, and is kept: a
    test:///node.xml driver lives inside the connection that opened it, so only the
    exporter's own connection sees (and may make) its snapshots; read-only, it may not."""
    opened: list[libvirt.virConnect] = []

    def open_read_write(uri: str) -> libvirt.virConnect:
        conn = libvirt.open(uri)
        opened.append(conn)
        return conn

    with mock.patch.object(libvirt, "openReadOnly", open_read_write):
        yield opened


def run_real(guests: int, idle_seconds: float) -> None:
    from lse_devtools import testbed
    from lse_devtools.exporter_proc import ExporterProcess, free_port

    testbed.libvirtd_up()
    conn = libvirt.open(testbed.URI)
    created = []
    debian = None
    try:
        for _ in range(guests):
            created.append(testbed.create_guest(conn, "scale", memory_mib=64))
        ours = ExporterProcess().start()
        proc = psutil.Process(ours.proc.pid)
        time.sleep(12)
        cpu = cpu_share(proc, idle_seconds)
        latencies, body = scrape_stats(ours.url + "/metrics")
        rss = proc.memory_info().rss / 1e6
        cycle = metric(body, "libvirt_snapshot_exporter_collector_duration_seconds",
                       'collector="domains"')
        ours.stop()
        report(f"real libvirtd: {guests} guests without an OS", latencies, cycle, cpu, rss,
               series_count(body), TARGETS["scrape_p99_ms"])
        binary = shutil.which("prometheus-libvirt-exporter")
        if binary:
            port = free_port()
            debian = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
            dproc = psutil.Process(debian.pid)
            theirs, tbody = scrape_stats(f"http://127.0.0.1:{port}/metrics")
            # their cost is paid per scrape: CPU over 100 scrapes, per scrape
            before = dproc.cpu_times()
            scrape_stats(f"http://127.0.0.1:{port}/metrics", 20, 0)
            after = dproc.cpu_times()
            per_scrape = (after.user + after.system - before.user - before.system) / 20
            print(f"\n== Debian prometheus-libvirt-exporter 0.2, same {guests} guests")
            print(f"  scrape latency  p50 {percentile(theirs, 50) * 1000:7.1f} ms   p99 "
                  f"{percentile(theirs, 99) * 1000:7.1f} ms; CPU per scrape "
                  f"{per_scrape * 1000:.1f} ms; RSS {dproc.memory_info().rss / 1e6:.1f} MB; "
                  f"series {series_count(tbody)}")
            ours_per_scrape = statistics.mean(latencies)
            print(f"  ours per scrape (latency, includes rendering): "
                  f"{ours_per_scrape * 1000:.1f} ms")
    finally:
        if debian:
            debian.terminate()
            debian.wait()
        for guest in created:
            testbed.destroy_guest(conn, guest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--real-guests", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--scenario", choices=("all", "testdriver", "history", "real"),
                        default="all")
    parser.add_argument("--domain-histograms", action="store_true",
                        help="history: with the exporter's collector.domain-histograms")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="history: print the lines holding most of the Python heap")
    parser.add_argument("--scrape", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--driver-baseline", metavar="NODE_XML", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scrape:  # the helper processes of run_history
        _scrape(args.scrape)
        return 0
    if args.driver_baseline:
        _driver_baseline(args.driver_baseline, args.domains)
        return 0
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}")
    if args.scenario in ("all", "testdriver"):
        run_testdriver(args.domains, args.snapshots, args.idle_seconds)
    if args.scenario in ("all", "history"):
        run_history(args.domains, args.snapshots, args.domain_histograms, args.idle_seconds,
                    args.tracemalloc)
    if args.scenario in ("all", "real"):
        run_real(args.real_guests, args.idle_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
