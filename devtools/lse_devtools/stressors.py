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


def _die_with_parent(cpu_seconds: int | None = None) -> Callable[[], None]:
    """preexec_fn for a stressor child: killed when the test process dies (so a killed run
    leaves no busy loop or hog behind), and at most cpu_seconds of CPU in any case."""

    def setup() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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
import ctypes, os, sys, threading
leave, field, chunk = int(sys.argv[1]), sys.argv[2], 64 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PROT_RW, MAP_PRIVATE_ANONYMOUS, MAP_POPULATE, MADV_HUGEPAGE, MADV_POPULATE_WRITE = 3, 0x22, 0x8000, 14, 23
def left():
    with open("/proc/meminfo") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
def take(size):  # anonymous (no swap here), resident at once; ctypes lets go of the GIL
    addr = libc.mmap(None, size, PROT_RW, MAP_PRIVATE_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    libc.madvise(addr, size, MADV_HUGEPAGE)  # 2 MiB faults where the host allows them
    if libc.madvise(addr, size, MADV_POPULATE_WRITE) != 0:  # before Linux 5.14
        ctypes.memset(addr, 1, size)
lock, held, pending = threading.Lock(), [0], [0]
def worker():
    while True:
        with lock:  # what other threads are still populating is not yet off `left()`
            size = min(chunk, left() - pending[0] - leave)
            if size < 16 << 20:
                return
            pending[0] += size
        take(size)
        with lock:
            pending[0] -= size
            held[0] += size
threads = [threading.Thread(target=worker) for _ in range(len(os.sched_getaffinity(0)))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(held[0], flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def memory_hog(leave_bytes: int, keep: str = "MemAvailable") -> Iterator[int]:
    """Anonymous memory held for the block so that about leave_bytes of the /proc/meminfo
    field `keep` stay: of MemAvailable, the page cache and the dirty thresholds (a ratio of
    dirtyable memory) shrink; of MemFree, the page cache stays and whatever is written next
    must reclaim it. The hog is the first the OOM killer takes, and dies with the test
    process. Yields the bytes it holds.

    Why it takes long: on this build machine (a VM with free page reporting: freed pages go
    back to its host within seconds) every page the hog touches is a fault in the host as
    well, and the host serves them one at a time (two threads keep one CPU busy, not two):
    about 2 s per GB, whatever the hog does. 24 GB took 54-59 s taken 4 KiB at a time on one
    thread with MAP_POPULATE, 46-49 s this way (one thread per CPU, huge pages where allowed;
    runs alternated, 2026-12-06); 9 s when the memory had been freed just before."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOG, str(leave_bytes), keep], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_die_with_parent())
    try:
        Path(f"/proc/{proc.pid}/oom_score_adj").write_text("1000")
        held = proc.stdout.readline().strip()
        if not held.isdigit():  # "" if it died (the OOM killer)
            raise RuntimeError(f"memory hog did not come up ({proc.poll()})")
        yield int(held)
    finally:
        _stop(proc)
