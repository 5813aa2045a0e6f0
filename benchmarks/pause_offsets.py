#!/usr/bin/env python3
"""Where the guest's pause sits inside an internal create, idle and under CPU load.

An internal create's job starts (controlInfo stateTime), then libvirt pauses the guest
(SUSPENDED), writes its state, resumes it (RESUMED) and the API call returns. The exporter
times the operation from the job start to RESUMED and the guest's pause from SUSPENDED to
RESUMED, so their difference is the start-to-pause offset. This prints that offset and the
RESUMED-to-return offset over real creates, as seen by a client of its own (events and a
10 ms controlInfo poll), so that tests can bound them with what is true.

Run as root with libvirtd up:
  .venv/bin/python benchmarks/pause_offsets.py [--creates 8] [--load 2]
(`--load N` runs N busy loops beside QEMU; LSE_TEST_URI selects another libvirtd.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time

import libvirt
from lse_devtools import testbed

SUSPENDED, RESUMED = libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED


def busy(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


class Observer:
    """Lifecycle event arrival times and the job start read from controlInfo, on one domain."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        self.dom, self.events, self.job_start = dom, [], None
        conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, None)
        self.polling = False

    def _event(self, _conn, _dom, event: int, _detail: int, _opaque) -> None:
        self.events.append((event, time.time()))

    def poll(self) -> None:
        while self.polling:
            state, _details, state_time_ms = self.dom.controlInfo()
            if state == libvirt.VIR_DOMAIN_CONTROL_JOB and self.job_start is None:
                self.job_start = time.time() - state_time_ms / 1000
            time.sleep(0.01)

    def time_create(self, name: str) -> dict[str, float]:
        self.events.clear()
        self.job_start = None
        self.polling = True
        poller = threading.Thread(target=self.poll)
        poller.start()
        call_start = time.time()
        self.dom.snapshotCreateXML(f"<domainsnapshot><name>{name}</name></domainsnapshot>")
        call_end = time.time()
        time.sleep(0.2)  # let the RESUMED event arrive
        self.polling = False
        poller.join()
        suspend = next(t for e, t in self.events if e == SUSPENDED)
        resume = next(t for e, t in self.events if e == RESUMED)
        job_start = self.job_start if self.job_start is not None else call_start
        return {"start_to_pause": suspend - job_start, "resume_to_return": call_end - resume,
                "paused": resume - suspend, "call": call_end - call_start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=8)
    parser.add_argument("--load", type=int, default=0, help="busy loops beside QEMU")
    args = parser.parse_args()
    libvirt.virEventRegisterDefaultImpl()
    conn = libvirt.open(testbed.URI)
    threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                     daemon=True).start()
    guest = testbed.create_guest(conn, "offsets", memory_mib=512, fill_mib=256)
    loops: list[multiprocessing.Process] = []
    try:
        guest.wait_ready(timeout=300)
        observer = Observer(conn, guest.domain(conn))
        loops = [multiprocessing.Process(target=busy, args=(600,)) for _ in range(args.load)]
        for loop in loops:
            loop.start()
        rows = [observer.time_create(f"o{n}") for n in range(args.creates)]
    finally:
        for loop in loops:
            loop.kill()
        testbed.destroy_guest(conn, guest)
    daemon, qemu = conn.getLibVersion(), conn.getVersion()
    print(f"libvirt {daemon // 10**6}.{daemon // 1000 % 1000}, QEMU {qemu // 10**6}.{qemu // 1000 % 1000},"
          f" {args.load} busy loops, {len(rows)} internal creates of a guest holding 256 MiB")
    for key in ("call", "paused", "start_to_pause", "resume_to_return"):
        values = sorted(r[key] for r in rows)
        print(f"  {key:17s} min {values[0] * 1000:7.1f} ms  median {values[len(values) // 2] * 1000:7.1f} ms"
              f"  max {values[-1] * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
