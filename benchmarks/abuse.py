#!/usr/bin/env python3
"""Abuse benchmark: do scrapes keep working whatever other clients do?

A real exporter process (libvirt's test driver) with a full log of `--entries` operations
(operations.log-size the same, 100,000 by default: the largest allowed) and the trace of its
newest operation. For each kind of abusive client, `--clients` of them (64) run at once for
`--seconds` while a separate process scrapes /metrics every 50 ms; printed per kind: the
scrapes' p50/p99/max (a refused or timed-out scrape counts as its timeout), how many failed,
and the exporter's RSS, against the target (p99 < 100 ms).

Kinds:
- missing-ids: random ids absent from the log, on /operations/<id> and
  /api/operations/<id>/verdict in turn;
- slow-readers: ask for /api/operations?limit=10000 (about 15 MB with this log) and never
  read, each reconnecting every `--hold` seconds;
- operation-page: the page of the traced operation, fetched in a loop;
- landing-filters: the landing page with a random `?domain=` filter, in a loop.

    .venv/bin/python benchmarks/abuse.py [--entries 100000] [--clients 64] [--seconds 20]
        [--kinds missing-ids,slow-readers,operation-page,landing-filters]

Measuring older code: `PYTHONPATH=<a checkout>/exporter .venv/bin/python benchmarks/abuse.py`
(the exporter process inherits PYTHONPATH, which comes before the editable install).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
from libvirt_snapshot_exporter.model.operation import FinishedOperation, Verdict
from lse_devtools.exporter_proc import ExporterProcess
from lse_devtools.handbuilt_trace import slow_create, slow_trace

TARGET_P99_MS = 100.0
SCRAPE_INTERVAL = 0.05
SCRAPE_TIMEOUT = 10.0  # Prometheus's default scrape timeout
KINDS = ("missing-ids", "slow-readers", "operation-page", "landing-filters")
DOMAINS = 20


def full_entry(i: int, rng: random.Random) -> FinishedOperation:
    """An entry with every figure and a verdict, as a traced create is logged (~1.4 KB)."""
    base = slow_create(f"vm-{i % DOMAINS:03d}", f"snap-{i:06d}")
    start = base.start - 60.0 * (i + 1)
    figures = {f.name: rng.randrange(2**20, 2**34) for f in dataclasses.fields(base)
               if f.metadata.get("figure") and getattr(base, f.name) is None}
    figures.update(memory_stall_seconds=rng.random(), io_stall_seconds=rng.random(),
                   guest_cpu_ratio=rng.random())
    verdict = Verdict("storage-slow", 10.2, 2.97, {"storage": 0.71, "cpu": 0.05, "size": 0.24},
                      ("dirty-throttling",), {"rate": 38.9e6, "usual_rate": 120e6,
                                              "device_busy": 0.96}, "written")
    return dataclasses.replace(base, **figures, start=start, end=start + base.duration_seconds,
                               storage="dm-0", verdict=verdict, id=f"{rng.getrandbits(64):016x}")


def write_state(directory: Path, entries: int) -> str:
    """A log of `entries` valid entries, oldest first, ending with the traced operation; its id."""
    rng = random.Random(24)
    newest = slow_create()
    with open(directory / "operations.jsonl", "w") as log:
        for i in range(entries - 1, 0, -1):
            log.write(json.dumps(full_entry(i, rng).to_json(), sort_keys=True) + "\n")
        log.write(json.dumps(newest.to_json(), sort_keys=True) + "\n")
    (directory / "traces").mkdir()
    trace = slow_trace()
    (directory / "traces" / f"{trace.id}.json").write_text(
        json.dumps(trace.to_json(), separators=(",", ":")))
    return newest.id


def _get(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as answer:  # a 404 for a missing id, a 503: at once again
        answer.read()
        answer.close()
    except OSError:
        time.sleep(0.05)  # refused or dropped: try again, as a hostile client would


def _fetcher(make_url: Callable[[random.Random], str]) -> Callable[[threading.Event, int], None]:
    def run(stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            _get(make_url(rng))
    return run


def _slow_reader(host: str, port: int, hold: float) -> Callable[[threading.Event, int], None]:
    request = f"GET /api/operations?limit=10000 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def run(stop: threading.Event, _seed: int) -> None:
        while not stop.is_set():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                sock.connect((host, port))
                sock.sendall(request)
                stop.wait(hold)  # never reads
            except OSError:
                stop.wait(0.05)
            finally:
                sock.close()
    return run


def scrape_elsewhere(url: str, seconds: float) -> list[float]:
    """Scrape latencies (seconds; a failure counts as SCRAPE_TIMEOUT) taken by a separate
    process, so the abusive clients' threads do not share its interpreter lock."""
    result = subprocess.run([sys.executable, __file__, "--scrape", url, "--seconds", str(seconds)],
                            capture_output=True, text=True, check=True, timeout=seconds + 120)
    return json.loads(result.stdout)


def _scrape(url: str, seconds: float) -> None:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
                response.read()
            latencies.append(time.perf_counter() - start)
        except OSError:
            latencies.append(-max(time.perf_counter() - start, SCRAPE_TIMEOUT))  # failed
        time.sleep(SCRAPE_INTERVAL)
    print(json.dumps(latencies))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_kind(kind: str, exporter: ExporterProcess, traced: str, args: argparse.Namespace) -> None:
    base = exporter.url
    clients: dict[str, Callable[[threading.Event, int], None]] = {
        "missing-ids": _fetcher(lambda r: base + (
            f"/operations/{r.getrandbits(64):016x}" if r.random() < 0.5
            else f"/api/operations/{r.getrandbits(64):016x}/verdict")),
        "slow-readers": _slow_reader("127.0.0.1", exporter.port, args.hold),
        "operation-page": _fetcher(lambda _r: f"{base}/operations/{traced}"),
        "landing-filters": _fetcher(lambda r: f"{base}/?domain=vm-{r.randrange(10**6):06d}"),
    }
    proc = psutil.Process(exporter.proc.pid)
    rss_before = proc.memory_info().rss / 1e6
    stop = threading.Event()
    threads = [threading.Thread(target=clients[kind], args=(stop, n), daemon=True)
               for n in range(args.clients)]
    for thread in threads:
        thread.start()
    peak = [rss_before]

    def watch() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], proc.memory_info().rss / 1e6)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(2)  # the abuse is under way before the first scrape
    latencies = scrape_elsewhere(base + "/metrics", args.seconds)
    rss_end = proc.memory_info().rss / 1e6
    stop.set()
    for thread in threads:
        thread.join(timeout=40)
    failed = sum(1 for v in latencies if v < 0)
    ms = [abs(v) * 1000 for v in latencies]
    p50, p99, worst = percentile(ms, 50), percentile(ms, 99), max(ms)
    verdict = "met" if p99 < TARGET_P99_MS else "missed"
    print(f"{kind:16} {args.clients:3} clients  /metrics p50 {p50:8.1f}  p99 {p99:8.1f}  "
          f"max {worst:8.1f} ms  {len(ms):4} scrapes, {failed:3} failed  "
          f"RSS {rss_before:6.0f} -> peak {peak[0]:6.0f}, end {rss_end:6.0f} MB  "
          f"(target p99 < {TARGET_P99_MS:.0f} ms: {verdict})", flush=True)
    time.sleep(3)  # the exporter drops what the clients left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hold", type=float, default=10.0,
                        help="seconds a slow reader holds its connection before reconnecting")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--scrape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scrape:
        _scrape(args.scrape, args.seconds)
        return
    kinds = args.kinds.split(",")
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="lse-abuse-") as state:
        started = time.monotonic()
        traced = write_state(Path(state), args.entries)
        size = (Path(state) / "operations.jsonl").stat().st_size
        print(f"log: {args.entries} entries, {size / 1e6:.0f} MB, written in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        exporter = ExporterProcess(f"--operations.log-size={args.entries}", state_dir=state,
                                   uri="test:///default")
        started = time.monotonic()
        exporter.start()
        try:
            exporter.wait_for(lambda: exporter.get(f"/operations/{traced}", timeout=60), 120,
                              "the traced operation's page")
            quiet = [abs(v) for v in scrape_elsewhere(exporter.url + "/metrics", 5)]
            print(f"exporter up in {time.monotonic() - started:.0f} s, RSS "
                  f"{psutil.Process(exporter.proc.pid).memory_info().rss / 1e6:.0f} MB; "
                  f"quiet /metrics p50 {percentile(quiet, 50) * 1000:.1f} p99 "
                  f"{percentile(quiet, 99) * 1000:.1f} ms", flush=True)
            for kind in kinds:
                run_kind(kind, exporter, traced, args)
        finally:
            exporter.stop()


if __name__ == "__main__":
    main()
