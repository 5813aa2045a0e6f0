"""Figures of a domain's QEMU process: resident memory and the bytes it read and wrote.

/proc/PID/io needs root or CAP_SYS_PTRACE. Without it, the VM's own cgroup io.stat (libvirt puts
each VM in machine.slice) is used; a QEMU sharing libvirtd's cgroup gets no I/O figure at all,
rather than a host-wide one passed off as the VM's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import psutil

from ..model.samples import ProcessSample
from ..model.trace import ROLE_VCPU, RunDelays, thread_key, thread_role


def parse_io_stat(text: str) -> tuple[int, int]:
    """Sum rbytes and wbytes over the devices of a cgroup v2 io.stat."""
    read = write = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def parse_task_stat(text: str) -> tuple[str, str]:
    """(name, state) from /proc/PID/task/TID/stat; the name may hold spaces and parentheses
    ("CPU 0/TCG"), so it ends at the last ')'."""
    head, _, rest = text.rpartition(")")
    return head.partition("(")[2], rest.split()[0]


def parse_schedstat(text: str) -> int:
    """Run delay in ns (time runnable but waiting for a CPU) from /proc/PID/task/TID/schedstat:
    'cpu_ns run_delay_ns timeslices'."""
    return int(text.split()[1])


def read_qemu_pid(pid_directory: Path, domain: str) -> int | None:
    """The pid libvirt wrote to <pid_directory>/<domain>.pid; None when shut off."""
    try:
        return int((pid_directory / f"{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


class ProcessReader:
    def __init__(self, procfs: str = "/proc", cgroupfs: str = "/sys/fs/cgroup") -> None:
        self.procfs = Path(procfs)
        self.cgroupfs = Path(cgroupfs)

    def read(self, pid: int) -> ProcessSample | None:
        """None when the process is gone (the domain stopped or a revert restarted QEMU)."""
        try:
            proc = psutil.Process(pid)
            rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        try:
            io = proc.io_counters()
            return ProcessSample(pid, rss, io.read_bytes, io.write_bytes, "proc_io")
        except (psutil.AccessDenied, psutil.NoSuchProcess, AttributeError):
            pass
        cgroup = self._vm_cgroup(pid)
        if cgroup is not None:
            try:
                read, write = parse_io_stat((cgroup / "io.stat").read_text())
                return ProcessSample(pid, rss, read, write, "cgroup")
            except OSError:
                pass
        return ProcessSample(pid, rss, None, None, "none")

    def _vm_cgroup(self, pid: int) -> Path | None:
        try:
            lines = (self.procfs / str(pid) / "cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith("0::") and "machine" in line:
                return self.cgroupfs / line[3:].lstrip("/")
        return None


class QemuThreads:
    """Follows one domain's QEMU at the flight recorder's pace: bytes written and the state,
    wait channel and run delay of its threads, found again through the pid file when QEMU
    is replaced (a revert starts a new one)."""

    def __init__(self, procfs: str, pid_directory: str, domain: str, pid: int | None) -> None:
        self.procfs = Path(procfs)
        self.pid_directory = Path(pid_directory)
        self.domain = domain
        self.pid = pid
        self.process: psutil.Process | None = None
        self.roles: dict[str, str] = {}  # tid -> role, from its first name
        self.delays = RunDelays()

    def read(self) -> tuple[dict[str, float], dict[str, int]]:
        """(counters, thread states); empty when QEMU is gone."""
        if self.process is None or not self.process.is_running():
            if self.process is not None or self.pid is None:
                self.pid = read_qemu_pid(self.pid_directory, self.domain)
            self.process = None
            if self.pid is None:
                return {}, {}
            try:
                self.process = psutil.Process(self.pid)
            except psutil.Error:
                self.pid = None  # the pid file names the next one
                return {}, {}
        counters: dict[str, float] = {}
        with contextlib.suppress(psutil.Error, AttributeError):
            io = self.process.io_counters()
            counters = {"qemu_write_bytes": io.write_bytes, "qemu_write_chars": io.write_chars,
                        # a revert reads its vmstate: all of it (chars), from the device (bytes)
                        "qemu_read_bytes": io.read_bytes, "qemu_read_chars": io.read_chars}
        states: dict[str, int] = {}
        delays = []
        for tid, role, state, wchan, delay in self._threads():
            key = thread_key(role, state, wchan)
            states[key] = states.get(key, 0) + 1
            delays.append((tid, role, delay))
        for role, total in self.delays.update(delays).items():
            counters[f"run_delay_{role}_ns"] = total
        return counters, states

    def _threads(self) -> Iterable[tuple[int, str, str, str, int]]:
        """(tid, role, state, wchan, run delay) of each thread but the vCPUs, which write
        nothing of a snapshot (paused during an internal one): with many vCPUs most of the
        threads, skipped once their name is known."""
        task = f"{self.procfs}/{self.pid}/task"
        try:
            tids = os.listdir(task)
        except OSError:
            return
        for tid in tids:
            if self.roles.get(tid) == ROLE_VCPU:
                continue
            base = f"{task}/{tid}"
            try:
                name, state = parse_task_stat(_read(f"{base}/stat"))
                role = self.roles.setdefault(tid, thread_role(self.pid, int(tid), name))
                if role == ROLE_VCPU:
                    continue
                wchan = "" if state == "R" else _read(f"{base}/wchan").strip()
                delay = parse_schedstat(_read(f"{base}/schedstat"))
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
            yield int(tid), role, state, wchan, delay


def _read(path: str) -> str:
    """A small /proc file, without pathlib's cost (this runs 8 times a second per thread)."""
    with open(path) as handle:
        return handle.read()
