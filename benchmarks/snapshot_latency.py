#!/usr/bin/env python3
"""Scrape latency while a real internal snapshot pauses a guest, and the exporter's timing error.

Prints, from real snapshots of a TCG guest holding random data:
1. scrape latency (p50/p99/max) of this exporter over scrapes taken while a snapshot is in
   flight, and of Debian's prometheus-libvirt-exporter in the same run when it is installed;
2. the error of the exporter's measured create, revert and delete durations against the
   client's wall time of each API call (p50/p95/max over --snapshots of each, and the mean
   signed error), and the delay until the create shows in progress.

Run as root with libvirtd up:  .venv/bin/python benchmarks/snapshot_latency.py [--snapshots 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import libvirt
from libvirt_snapshot_exporter.sources.libvirt.common import version_string
from lse_devtools import testbed
from lse_devtools.exporter_proc import ExporterProcess, free_port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float], unit: float = 1000.0, suffix: str = "ms") -> str:
    if not values:
        return "no samples"
    return (f"n={len(values)} p50={percentile(values, 50) * unit:.1f} {suffix} "
            f"p99={percentile(values, 99) * unit:.1f} {suffix} max={max(values) * unit:.1f} {suffix}")


def error_summary(signed: list[float]) -> str:
    """p50/p95/max of the absolute error, and the mean signed error (positive: too long)."""
    if not signed:
        return "no samples"
    errors = [abs(e) for e in signed]
    return (f"p50={percentile(errors, 50) * 1000:.1f} ms p95={percentile(errors, 95) * 1000:.1f} ms "
            f"max={max(errors) * 1000:.1f} ms mean={sum(signed) / len(signed) * 1000:+.1f} ms")


def timed(fn) -> tuple[float, float]:
    start = time.time()
    fn()
    return start, time.time()


class Scraper:
    """Scrapes one URL back to back on a thread; keeps (start, latency, body) of each scrape."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self.url, self.interval = url, interval
        self.records: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.time()
            try:
                with urllib.request.urlopen(self.url, timeout=120) as response:
                    body = response.read().decode()
            except OSError:
                body = ""
            self.records.append((start, time.time() - start, body))
            self._stop.wait(self.interval)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def during(self, start: float, end: float) -> list[float]:
        """Latencies of scrapes that began while [start, end] was in flight."""
        return [lat for t, lat, _ in self.records if start <= t <= end]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=10, help="creates to time (>= 10)")
    parser.add_argument("--fill-mib", type=int, default=900, help="random data in guest RAM")
    args = parser.parse_args()

    testbed.libvirtd_up()
    conn = libvirt.open(testbed.URI)
    print(f"machine: {platform.node()} {platform.machine()}, {testbed.os.cpu_count()} cores, "
          f"libvirt {version_string(conn.getLibVersion())}, QEMU {version_string(conn.getVersion())}"
          " (TCG guest)")
    guest = testbed.create_guest(conn, "bench", memory_mib=args.fill_mib + 256,
                                 fill_mib=args.fill_mib)
    ours = ExporterProcess("--log.level=debug")  # each observation logged, to replay
    debian = None
    try:
        guest.wait_ready(timeout=600)
        ours.start()
        debian_bin = shutil.which("prometheus-libvirt-exporter")
        if debian_bin:
            port = free_port()
            debian = subprocess.Popen([debian_bin, f"--web.listen-address=127.0.0.1:{port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            debian_url = f"http://127.0.0.1:{port}/metrics"
            time.sleep(2)
        time.sleep(6)  # a full stats cycle of our exporter before the first snapshot
        dom = conn.lookupByName(guest.name)
        walls, delays, windows = [], [], []
        other_walls: dict[tuple[str, str], float] = {}
        with Scraper(ours.url + "/metrics") as mine, \
                (Scraper(debian_url) if debian else _Null()) as theirs:
            for n in range(1, args.snapshots + 1):
                start = time.time()
                dom.snapshotCreateXML(f"<domainsnapshot><name>b{n}</name></domainsnapshot>")
                end = time.time()
                walls.append(end - start)
                windows.append((start, end))
                shown = [t for t, lat, body in mine.records
                         if t >= start and f'in_progress{{domain="{guest.name}"' in body]
                if shown:
                    # the scrape that first showed it was answered at t + latency
                    first = min(shown)
                    lat = next(lat for t, lat, _ in mine.records if t == first)
                    delays.append(first + lat - start)
                time.sleep(3)
                snap = dom.snapshotLookupByName(f"b{n}")
                start, end = timed(lambda s=snap: dom.revertToSnapshot(s))
                other_walls[("revert", f"b{n}")] = end - start
                time.sleep(2)
                start, end = timed(snap.delete)
                other_walls[("delete", f"b{n}")] = end - start
                time.sleep(2)
            time.sleep(2)
        ops = json.load(urllib.request.urlopen(ours.url + "/api/operations?limit=10000"))["operations"]
        measured = {(o["operation"], o["snapshot"]): o for o in ops if o["domain"] == guest.name}
        client = {("create", f"b{n}"): wall for n, wall in enumerate(walls, 1)} | other_walls
        signed: dict[str, list[float]] = {"create": [], "revert": [], "delete": []}
        worst: dict[str, tuple[float, dict]] = {}
        for key, wall in client.items():
            if key in measured:
                error = measured[key]["duration_seconds"] - wall
                signed[key[0]].append(error)
                if abs(error) >= abs(worst.get(key[0], (0.0, {}))[0]):
                    worst[key[0]] = (error, measured[key])
        mine_during = [lat for s, e in windows for lat in mine.during(s, e)]
        print(f"\nsnapshots: {len(walls)} internal creates of a running guest with "
              f"{args.fill_mib} MiB of random data; wall time {summary(walls, 1, 's')}")
        print("\nscrape latency while a snapshot is in flight:")
        print(f"  libvirt-snapshot-exporter:        {summary(mine_during)}")
        if debian:
            theirs_during = [lat for s, e in windows for lat in theirs.during(s, e)]
            print(f"  prometheus-libvirt-exporter 0.2:  {summary(theirs_during)}")
        else:
            print("  prometheus-libvirt-exporter: not installed, not measured")
        print("\nexporter timing against the client's wall time:")
        for operation, errors in signed.items():
            performed = sum(1 for key in client if key[0] == operation)
            print(f"  {operation} duration error: {error_summary(errors)} (measured {len(errors)}"
                  f" of {performed})")
            if operation in worst:
                error, op = worst[operation]
                print(f"    worst {error * 1000:+.1f} ms: {op['snapshot']}, start from "
                      f"{op['start_source']}, end from {op['end_source']}")
        print(f"  shown in progress after: {summary(delays)} (scraping every 50 ms)")
        print(f"exporter log (each observation at debug): {ours.log_path}")
        return 0
    finally:
        if debian:
            debian.terminate()
            debian.wait()
        if ours.proc is not None:
            ours.stop()
        testbed.destroy_guest(conn, guest)


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
