"""Figures of a domain's QEMU process: resident memory and the bytes it read and wrote.

/proc/PID/io needs root or CAP_SYS_PTRACE. Without it, the VM's own cgroup io.stat (libvirt puts
each VM in machine.slice) is used; a QEMU sharing libvirtd's cgroup gets no I/O figure at all,
rather than a host-wide one passed off as the VM's.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from ..model.samples import ProcessSample


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
