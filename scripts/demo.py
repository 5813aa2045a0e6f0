#!/usr/bin/env python3
"""`make demo`: a self-contained demo hypervisor on this machine.

Boots a small TCG guest that fills part of its RAM with random data, runs the exporter on
localhost, runs a short `bench` (the study in small), then takes an internal snapshot now and
then (a chain three levels deep, then deletes it and starts again), printing each operation as
the exporter saw it. Ctrl-C (or DEMO_SECONDS elapsing) stops it and removes the demo guest and
its snapshots.

Environment: DEMO_SECONDS (run that long, then stop; default: until Ctrl-C),
DEMO_PORT (default 9966), DEMO_INTERVAL (seconds between snapshot operations, default 15).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import libvirt  # noqa: E402
import testbed  # noqa: E402
from exporter_proc import ExporterProcess  # noqa: E402

stop = False


def on_signal(_signum: int, _frame: object) -> None:
    global stop
    stop = True


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "0"))
    port = int(os.environ.get("DEMO_PORT", "9966"))
    interval = float(os.environ.get("DEMO_INTERVAL", "15"))
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    conn = libvirt.open(testbed.URI)
    print("building the demo guest (Debian cloud kernel + busybox, cached after the first run)")
    guest = testbed.create_guest(conn, "demo", memory_mib=512, fill_mib=256)
    exporter = None
    seen: set[tuple] = set()
    try:
        guest.wait_ready(timeout=300)
        state = ROOT / "state" / "demo"
        exporter = ExporterProcess(state_dir=str(state), port=port).start()
        run_bench(guest.name, state)
        print(f"""
demo guest {guest.name} is running; the exporter watches it:
  metrics:          {exporter.url}/metrics
  operations page:  {exporter.url}/
  operations JSON:  {exporter.url}/api/operations
  exporter log:     {exporter.log_path}
a snapshot operation every {interval:.0f} s; {'Ctrl-C to stop' if not seconds else
        f'stopping after {seconds:.0f} s'}
""")
        dom = conn.lookupByName(guest.name)
        started = time.monotonic()
        next_op = time.monotonic() + 2
        level = 0
        while not stop and (not seconds or time.monotonic() - started < seconds):
            if time.monotonic() >= next_op:
                if level < 3:
                    level += 1
                    print(f"virsh-style: creating internal snapshot demo-{level} ...", flush=True)
                    dom.snapshotCreateXML(
                        f"<domainsnapshot><name>demo-{level}</name></domainsnapshot>")
                else:
                    print("deleting the chain demo-3, demo-2, demo-1 ...", flush=True)
                    for n in (3, 2, 1):
                        dom.snapshotLookupByName(f"demo-{n}").delete()
                    level = 0
                next_op = time.monotonic() + interval
            report(exporter, seen)
            time.sleep(0.5)
        time.sleep(2)
        report(exporter, seen)
    finally:
        print(f"\nremoving the demo guest {guest.name} and its snapshots")
        testbed.destroy_guest(conn, guest)
        if exporter is not None and exporter.proc is not None:
            exporter.stop()
    creates = [k for k in seen if k[1] == "create" and k[4] == "success"]
    if not creates:
        print("no snapshot operation was recorded: something is wrong", file=sys.stderr)
        return 1
    print(f"{len(seen)} snapshot operations recorded, {len(creates)} successful creates")
    return 0


def run_bench(domain: str, state: Path) -> None:
    """The study in small: a 2-level chain created, timed with host context, and deleted."""
    print("a short study first: libvirt-snapshot-exporter bench (2 levels, 1 run)", flush=True)
    outputs = ["--output", str(state / "bench.csv"), "--json", str(state / "bench.json")]
    try:
        import matplotlib  # noqa: F401

        outputs += ["--plot", str(state / "bench.png")]
    except ImportError:
        pass
    subprocess.run([sys.executable, "-m", "libvirt_snapshot_exporter", "bench", domain,
                    "--levels", "2", "--repeat", "1", "--yes", *outputs], check=True)
    print(f"bench results: {state}/bench.csv, bench.json"
          + (", bench.png" if "--plot" in outputs else ""), flush=True)


def report(exporter: ExporterProcess, seen: set[tuple]) -> None:
    """Print operations the exporter finished since the last call."""
    try:
        with urllib.request.urlopen(exporter.url + "/api/operations", timeout=2) as response:
            data = json.load(response)
    except OSError:
        return
    for op in reversed(data["operations"]):
        key = (op["domain"], op["operation"], op["snapshot"], op["start"], op["outcome"])
        if key in seen:
            continue
        seen.add(key)
        free = op.get("host_memory_free_min_bytes")
        dirty = op.get("host_dirty_peak_bytes")
        print(f"  exporter saw: {op['operation']:6s} {op['snapshot']:8s} level {op['depth']}"
              f"  {op['duration_seconds']:7.3f} s  guest paused {op['paused_seconds']:.3f} s"
              f"  {op['outcome']}"
              + (f"  host MemFree min {free / 2**20:,.0f} MiB" if free else "")
              + (f"  peak Dirty {dirty / 2**20:,.0f} MiB" if dirty is not None else ""),
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
