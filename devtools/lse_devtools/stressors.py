"""Stressors that induce, on a real guest, each condition that can make a snapshot slow
(../shared/slow-snapshots.md, "What each condition did"), as context managers that put the
host back as they found it even when the block raises.

Host-wide ones (dirty limits, CPU affinity and a real-time loop, a memory hog) change what
every process on the machine sees: run them alone, never beside other heavy tests. The disk
cache mode is not a stressor but a property of the guest: testbed.create_guest(disk_cache=...).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1
VM = Path("/proc/sys/vm")


def _die_with_parent(cpu_seconds: int | None = None, death_signal: int = signal.SIGKILL
                     ) -> Callable[[], None]:
    """preexec_fn for a stressor child: killed when the test process dies (so a killed run
    leaves no busy loop or hog behind; SIGTERM for one that must put something back first),
    and at most cpu_seconds of CPU in any case."""

    def setup() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, death_signal)
        if cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))

    return setup


def _stop(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Kill a stressor's whole process group and wait until none of it is left (a dd killed
    in the middle of a flush exits only when its I/O has completed)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@contextlib.contextmanager
def competing_writer(directory: Path, mib: int = 256, direct: bool = False) -> Iterator[Path]:
    """Another writer on the same storage, from start to end of the block: dd rewriting a file
    of mib MiB over and over, each pass flushed (buffered, as the brief's dd) or with O_DIRECT.
    It takes device bandwidth from whatever else writes there."""
    path = directory / f"competing-writer-{os.getpid()}"
    flags = "oflag=direct conv=notrunc" if direct else "conv=notrunc,fdatasync"
    proc = subprocess.Popen(
        ["sh", "-c", f"while :; do dd if=/dev/zero of={path} bs=1M count={mib} {flags} "
                     "status=none || exit 1; done"],
        start_new_session=True, preexec_fn=_die_with_parent())
    try:
        yield path
    finally:
        _stop(proc)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@contextlib.contextmanager
def rt_cpu_hog(qemu_pid: int, cpu: int | None = None, limit_seconds: int = 600) -> Iterator[int]:
    """Real CPU starvation of a QEMU: every one of its threads pinned to one CPU, and a
    SCHED_FIFO busy loop (`chrt -f 1`, pinned by taskset) on that CPU. Plain busy loops do not
    starve it here (sched_autogroup leaves QEMU half a CPU); a real-time one leaves it the 5 %
    that sched_rt_runtime_us keeps for others. Yields the CPU; the threads' own affinities are
    restored (threads started meanwhile get the main thread's)."""
    cpu = max(os.sched_getaffinity(qemu_pid)) if cpu is None else cpu
    saved = {tid: os.sched_getaffinity(tid) for tid in _threads(qemu_pid)}
    hog: subprocess.Popen | None = None
    try:
        for tid in saved:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, {cpu})
        hog = subprocess.Popen(
            ["chrt", "-f", "1", "taskset", "-c", str(cpu), "sh", "-c", "while :; do :; done"],
            start_new_session=True, preexec_fn=_die_with_parent(limit_seconds))
        yield cpu
    finally:
        if hog is not None:
            _stop(hog)
        default = saved.get(qemu_pid) or set(range(os.cpu_count() or 1))
        with contextlib.suppress(FileNotFoundError):  # QEMU gone: nothing to restore
            for tid in _threads(qemu_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(tid, saved.get(tid, default))


DIRTY_KEYS = ("dirty_bytes", "dirty_ratio", "dirty_background_bytes", "dirty_background_ratio")


@contextlib.contextmanager
def dirty_limits(dirty_bytes: int | None = None, background_bytes: int | None = None,
                 dirty_ratio: int | None = None, background_ratio: int | None = None
                 ) -> Iterator[dict[str, int]]:
    """vm.dirty_* set for the block: bytes (tight limits: the writer then waits in
    balance_dirty_pages) or ratios. Writing one form zeroes the other, so what is restored is
    the form that was in force: the bytes where they were set, else the ratios. Yields the
    previous values."""
    saved = {k: int((VM / k).read_text()) for k in DIRTY_KEYS}
    wanted = {"dirty_bytes": dirty_bytes, "dirty_background_bytes": background_bytes,
              "dirty_ratio": dirty_ratio, "dirty_background_ratio": background_ratio}
    try:
        for key, value in wanted.items():
            if value is not None:
                (VM / key).write_text(str(value))
        yield saved
    finally:
        for bytes_key, ratio_key in (("dirty_bytes", "dirty_ratio"),
                                     ("dirty_background_bytes", "dirty_background_ratio")):
            if saved[bytes_key]:
                (VM / bytes_key).write_text(str(saved[bytes_key]))
            else:
                (VM / ratio_key).write_text(str(saved[ratio_key]))


def mem_available() -> int:
    """MemAvailable in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


HOG = """
import mmap, select, signal, sys
leave, field, chunk = int(sys.argv[1]), sys.argv[2], 256 << 20
POOL = "/proc/sys/vm/nr_hugepages"
def meminfo(key):
    with open("/proc/meminfo") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
def pool(pages):
    with open(POOL, "w") as f:
        f.write(str(pages))
# The test process died (SIGTERM) or closed stdin: stop and put the pool back. The handler only
# sets a flag: one that raised could land inside the finally below, when the test process's
# death closes stdin and signals at once, and skip the write (the pool left taken, seen in CI).
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
saved, page = int(open(POOL).read()), meminfo("Hugepagesize")
try:
    # The bulk as huge pages of the kernel's pool: taken from free memory at once, never
    # touched (so never faulted in from this VM's host); 1 GiB short of the goal, whose free
    # memory may be too fragmented for 2 MiB pages.
    bulk = (min(meminfo(field), meminfo("MemFree")) - leave - (1 << 30)) // page
    if bulk > 0:
        pool(saved + bulk)
    pooled = (int(open(POOL).read()) - saved) * page
    held = []  # the rest anonymous (no swap here), resident at once (MAP_POPULATE)
    while not stop and (size := min(chunk, meminfo(field) - leave)) >= 16 << 20:
        held.append(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE))
    print(pooled + sum(len(m) for m in held), flush=True)
    while not stop:
        if select.select([sys.stdin], [], [], 0.25)[0] and not sys.stdin.read(1):
            break
        if pooled and meminfo("MemAvailable") < 64 << 20:  # others need it: the pool goes
            pool(saved)
            pooled = 0
finally:
    pool(saved)
"""


@contextlib.contextmanager
def memory_hog(leave_bytes: int, keep: str = "MemAvailable") -> Iterator[int]:
    """Memory held for the block so that about leave_bytes of the /proc/meminfo field `keep`
    stay: of MemAvailable, the page cache and the dirty thresholds (a ratio of dirtyable
    memory) shrink; of MemFree, the page cache stays and whatever is written next must
    reclaim it. Yields the bytes it holds.

    The hog takes the bulk of the free memory as huge pages of the kernel's pool
    (vm.nr_hugepages, host-wide, put back as it was: by the hog when the block ends, when the
    test process dies or when MemAvailable falls under 64 MiB, and by this block once more),
    the rest as anonymous memory. Like anonymous memory, pool pages are neither free, nor
    available, nor dirtyable, nor reclaimable (no swap here), so the snapshot's writes meet
    the same shortage. Anonymous memory alone took 45-60 s to take here: on this build
    machine (a VM with free page reporting: freed pages go back to its host within seconds)
    every page touched is a fault in the host as well, about 2 s per GB (24 GB: 54-59 s with
    MAP_POPULATE on one thread, 46-49 s on one thread per CPU in transparent huge pages,
    2026-12-06), while pool pages are never touched (22 GB in 0.04 s)."""
    saved = (VM / "nr_hugepages").read_text()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOG, str(leave_bytes), keep], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_die_with_parent(death_signal=signal.SIGTERM))
    try:
        Path(f"/proc/{proc.pid}/oom_score_adj").write_text("1000")
        held = proc.stdout.readline().strip()
        if not held.isdigit():  # "" if it died (the OOM killer)
            raise RuntimeError(f"memory hog did not come up ({proc.poll()})")
        yield int(held)
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the hog puts the pool back and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        _stop(proc)
        (VM / "nr_hugepages").write_text(saved)
