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
from ..model.trace import WRITER_ROLES, RunDelays, thread_key, thread_role


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
    wait channel and run delay of its writer threads, found again through the pid file when QEMU
    is replaced (a revert starts a new one). Each writer thread's three files stay open and are
    read again at offset 0: 7.6 us a thread against 23.6 us opening them each time (measured
    on a build machine), the bulk of a tick. close() when done with it."""

    def __init__(self, procfs: str, pid_directory: str, domain: str, pid: int | None) -> None:
        self.procfs = Path(procfs)
        self.pid_directory = Path(pid_directory)
        self.domain = domain
        self.pid = pid
        self.process: psutil.Process | None = None
        self.roles: dict[str, str] = {}  # tid -> role, from its first name
        self.delays = RunDelays()
        self._files: dict[str, tuple[int, int, int]] = {}  # tid -> stat, wchan, schedstat

    def read(self) -> tuple[dict[str, float], dict[str, int]]:
        """(counters, thread states); empty when QEMU is gone."""
        tids = self._tids() if self.process is not None else None
        # Not yet followed, or gone (its task directory with it): the pid file names the next.
        if tids is None and (not self._attach() or (tids := self._tids()) is None):
            return {}, {}
        counters: dict[str, float] = {}
        with contextlib.suppress(psutil.Error, AttributeError):
            io = self.process.io_counters()
            counters = {"qemu_write_bytes": io.write_bytes, "qemu_write_chars": io.write_chars,
                        # a revert reads its vmstate: all of it (chars), from the device (bytes)
                        "qemu_read_bytes": io.read_bytes, "qemu_read_chars": io.read_chars}
        states: dict[str, int] = {}
        delays = []
        for tid, role, state, wchan, delay in self._threads(tids):
            key = thread_key(role, state, wchan)
            states[key] = states.get(key, 0) + 1
            delays.append((tid, role, delay))
        for role, total in self.delays.update(delays).items():
            counters[f"run_delay_{role}_ns"] = total
        return counters, states

    def close(self) -> None:
        """Close the threads' files."""
        for tid in list(self._files):
            self._close(tid)

    def _attach(self) -> bool:
        """Follow the pid given, or else (or once it is gone) the one the pid file names."""
        if self.process is not None or self.pid is None:
            self.pid = read_qemu_pid(self.pid_directory, self.domain)
        self.process = None
        self.close()
        if self.pid is None:
            return False
        try:
            self.process = psutil.Process(self.pid)
        except psutil.Error:
            self.pid = None  # the pid file names the next one
            return False
        return True

    def _tids(self) -> list[str] | None:
        """Its threads; None once the process is gone."""
        try:
            return os.listdir(f"{self.procfs}/{self.pid}/task")
        except OSError:
            return None

    def _threads(self, tids: list[str]) -> Iterable[tuple[int, str, str, str, int]]:
        """(tid, role, state, wait channel, run delay) of each writer thread (WRITER_ROLES):
        the verdict and the charts count nothing else. The vCPUs (paused during an internal
        snapshot) and the other threads (RCU, the monitor's, VNC) are skipped once their name
        is known: with many vCPUs most of the threads."""
        for tid in self._files.keys() - set(tids):  # ended
            self._close(tid)
        for tid in tids:
            role = self.roles.get(tid)
            if role is not None and role not in WRITER_ROLES:
                continue
            try:
                stat, wchan_file, schedstat = self._files.get(tid) or self._open(tid)
                name, state = parse_task_stat(_read(stat))
                role = self.roles.setdefault(tid, thread_role(self.pid, int(tid), name))
                if role not in WRITER_ROLES:
                    self._close(tid)
                    continue
                wchan = "" if state == "R" else _read(wchan_file).strip()
                delay = parse_schedstat(_read(schedstat))
            except (OSError, ValueError, IndexError):
                self._close(tid)
                continue  # the thread ended meanwhile
            yield int(tid), role, state, wchan, delay

    def _open(self, tid: str) -> tuple[int, int, int]:
        base = f"{self.procfs}/{self.pid}/task/{tid}"
        opened: list[int] = []
        try:
            for name in ("stat", "wchan", "schedstat"):
                opened.append(os.open(f"{base}/{name}", os.O_RDONLY))
        except OSError:
            for fd in opened:
                os.close(fd)
            raise
        files = self._files[tid] = (opened[0], opened[1], opened[2])
        return files

    def _close(self, tid: str) -> None:
        for fd in self._files.pop(tid, ()):
            os.close(fd)


def _read(fd: int) -> str:
    """A /proc file held open, read again from its start (the kernel writes it anew): fails
    with ESRCH once its thread has ended."""
    return os.pread(fd, 4096, 0).decode()
