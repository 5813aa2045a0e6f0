#!/usr/bin/env python3
"""`make demo`: a self-contained demo hypervisor on this machine.

Boots a small TCG guest that fills part of its RAM with random data, runs the exporter on
localhost, runs a short `bench` (the study in small; DEMO_BENCH=0 skips it), then takes an
internal snapshot now and then (a chain three levels deep, then deletes it and starts again),
printing each operation as the exporter saw it. Ctrl-C (or DEMO_SECONDS elapsing, or
DEMO_OPERATIONS recorded) stops it and removes the demo guest and its snapshots.

Environment:
  DEMO_SECONDS     run that long, then stop (default: until Ctrl-C)
  DEMO_OPERATIONS  stop once the exporter has recorded that many of the demo's own snapshot
                   operations (creates of demo-N; a deletion of the chain counts 3; default:
                   no such limit)
  DEMO_BENCH       0: skip the short bench (default 1: run it)
  DEMO_PORT        the exporter's port (default 9966)
  DEMO_INTERVAL    seconds between snapshot operations (default 15, at least 1)
Whatever stops it, it exits 1 unless the exporter recorded a successful create of the demo
guest (bench's count; earlier runs' history in state/demo does not).
CI runs DEMO_BENCH=0 DEMO_INTERVAL=1 DEMO_OPERATIONS=6 (tests/integration/test_bench.py covers
bench).
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

import libvirt
from lse_devtools import testbed
from lse_devtools.exporter_proc import ExporterProcess

ROOT = Path(__file__).resolve().parent.parent

stop = False


def on_signal(_signum: int, _frame: object) -> None:
    global stop
    stop = True


class DemoError(Exception):
    """A failure the user can act on: printed as one line, exit 1."""


def number(name: str, default: str, low: float) -> float:
    raw = os.environ.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= low:  # also refuses nan
        raise DemoError(f"{name}={raw!r} is not a number >= {low:g}")
    return value


def main() -> int:
    try:
        return run_demo()
    except DemoError as exc:
        print(f"make demo: error: {exc}", file=sys.stderr)
        return 1


def run_demo() -> int:
    seconds = number("DEMO_SECONDS", "0", 0)
    port = int(number("DEMO_PORT", "9966", 1))
    interval = number("DEMO_INTERVAL", "15", 1)
    operations = int(number("DEMO_OPERATIONS", "0", 0))
    bench = os.environ.get("DEMO_BENCH", "1")
    if bench not in ("0", "1"):
        raise DemoError(f"DEMO_BENCH={bench!r} is not 0 or 1")
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        conn = libvirt.open(testbed.URI)
    except libvirt.libvirtError as exc:
        raise DemoError(f"cannot connect to {testbed.URI} ({exc}); is libvirtd running? "
                        "`bash scripts/libvirtd-up.sh` starts one") from None
    print("building the demo guest (Debian cloud kernel + busybox, cached after the first run)")
    try:
        guest = testbed.create_guest(conn, "demo", memory_mib=512, fill_mib=256)
    except (subprocess.CalledProcessError, OSError, libvirt.libvirtError) as exc:
        raise DemoError(f"cannot build the demo guest: {one_line(exc)}") from None
    exporter = None
    seen: set[tuple] = set()
    try:
        try:
            guest.wait_ready(timeout=300)
        except TimeoutError as exc:
            raise DemoError(f"{exc}; its console log is {guest.console}") from None
        state = ROOT / "state" / "demo"
        state.mkdir(parents=True, exist_ok=True)
        exporter = ExporterProcess(state_dir=str(state), port=port)
        try:
            exporter.start()
        except (AssertionError, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DemoError(f"the exporter did not come up on port {port} ({reason}); its log is "
                            f"{exporter.log_path}; if another process holds the port, set DEMO_PORT"
                            ) from None
        if bench == "1":
            run_bench(guest.name, state)
        print(f"""
demo guest {guest.name} is running; the exporter watches it:
  metrics:          {exporter.url}/metrics
  operations page:  {exporter.url}/
  operations JSON:  {exporter.url}/api/operations
  exporter log:     {exporter.log_path}
a snapshot operation every {interval:.0f} s; {until(seconds, operations)}
""")
        dom = conn.lookupByName(guest.name)
        started = time.monotonic()
        next_op = time.monotonic() + 2
        level = 0
        while not stop and (not seconds or time.monotonic() - started < seconds):
            if operations and len(own(seen, guest.name)) >= operations:
                break
            if time.monotonic() >= next_op:
                level = step(dom, level)
                next_op = time.monotonic() + interval
            report(exporter, seen)
            time.sleep(0.5)
        if not (operations and len(own(seen, guest.name)) >= operations):
            time.sleep(2)
            report(exporter, seen)
    finally:
        print(f"\nremoving the demo guest {guest.name} and its snapshots")
        testbed.destroy_guest(conn, guest)
        if exporter is not None and exporter.proc is not None:
            exporter.stop()
    of_guest = [k for k in seen if k[0] == guest.name]
    creates = [k for k in of_guest if k[1] == "create" and k[4] == "success"]
    if not creates:
        print("no snapshot operation of the demo guest was recorded: something is wrong",
              file=sys.stderr)
        return 1
    print(f"{len(of_guest)} snapshot operations of the demo guest recorded, {len(creates)} "
          "successful creates")
    return 0


def until(seconds: float, operations: int) -> str:
    stops = ([f"after {seconds:.0f} s"] if seconds else []) + (
        [f"once {operations} operations are recorded"] if operations else [])
    return "stopping " + " or ".join(stops) if stops else "Ctrl-C to stop"


def own(seen: set[tuple], domain: str) -> list[tuple]:
    """The demo's own operations (demo-N) of those seen: not bench's, nor other domains'."""
    return [k for k in seen if k[0] == domain and k[2].startswith("demo-")]


def step(dom: libvirt.virDomain, level: int) -> int:
    """The next operation of the demo's cycle: a chain three levels deep, then its deletion."""
    try:
        if level < 3:
            level += 1
            print(f"virsh-style: creating internal snapshot demo-{level} ...", flush=True)
            dom.snapshotCreateXML(f"<domainsnapshot><name>demo-{level}</name></domainsnapshot>")
            return level
        print("deleting the chain demo-3, demo-2, demo-1 ...", flush=True)
        for n in (3, 2, 1):
            dom.snapshotLookupByName(f"demo-{n}").delete()
        return 0
    except libvirt.libvirtError as exc:
        raise DemoError(f"a snapshot operation of {dom.name()} failed: {exc}") from None


def run_bench(domain: str, state: Path) -> None:
    """The study in small: a 2-level chain created, timed with host context, and deleted."""
    print("a short study first: libvirt-snapshot-exporter bench (2 levels, 1 run)", flush=True)
    outputs = ["--output", str(state / "bench.csv"), "--json", str(state / "bench.json")]
    try:
        import matplotlib  # noqa: F401

        outputs += ["--plot", str(state / "bench.png")]
    except ImportError:
        pass
    bench = subprocess.run([sys.executable, "-m", "libvirt_snapshot_exporter", "bench", domain,
                            "--levels", "2", "--repeat", "1", "--yes", *outputs])
    if bench.returncode != 0 and not stop:  # bench has printed its own one-line reason
        raise DemoError(f"the short bench failed (exit {bench.returncode}), see its line above")
    print(f"bench results: {state}/bench.csv, bench.json"
          + (", bench.png and one bench-r1-l<level>-<operation>.png of each operation's trace"
             if "--plot" in outputs else ""), flush=True)


def one_line(exc: BaseException) -> str:
    """An exception as one line, with a failed command's own last error line."""
    if isinstance(exc, subprocess.CalledProcessError):
        lines = (exc.stderr or "").strip().splitlines()
        return f"{' '.join(map(str, exc.cmd))} failed" + (f": {lines[-1]}" if lines else "")
    return " ".join(str(exc).split())


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
