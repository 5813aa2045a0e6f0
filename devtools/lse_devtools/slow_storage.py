"""Slow storage that behaves like a slow disk, for snapshots whose pace the host's dirty
throttling, page cache and device set (the local disk here absorbs a vmstate at ~700 MB/s, so
nothing shows on it).

Layers, bottom up (../shared/slow-snapshots.md, "measured recipe"): a rate-limited FUSE
passthrough filesystem (ratefs.py, in a process of its own: a FUSE server on a thread of the
test process would stall on its interpreter lock) -> a file on it attached as a loop device ->
ext4 on the loop device (inode tables and journal initialised at mkfs, so lazy init does not
compete for the bandwidth) -> the guests' qcow2 images in its mount. Dirty pages of that ext4
are then real dirty pages of a block device (loopN in /proc/diskstats) that drain at `rate`.

A second bed, `throttled_storage`, throttles ABOVE the device, as QoS-limited Ceph, a SAN or
a cloud volume do: a sparse file on the local disk -> a loop device -> ext4 -> the images, with
the root blkio cgroup's blkio.throttle.write_bps_device set to `rate` for that loop device
(cgroup v1: every write to it, the kernel's writeback among them, belongs to the root group).
Requests then wait in the block layer's throttle, not in the device's queue: the device's
utilisation in /proc/diskstats reads a few percent while its writers wait on I/O nearly all
the time, where the FUSE bed's device is busy as a slow disk is.

Everything lives under one directory /tmp/lse-slow-<pid>-*: /tmp reaches the libvirt 11
chroot (scripts/libvirt11-chroot.sh), so its QEMU sees the images at the same paths, and a bed
whose creating process is gone is found and taken down by the next one (its throttle removed
before its loop device is detached: the setting belongs to the device number, and a detached
loop device's next user would inherit it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from lse_devtools import testbed

ROOT = Path("/tmp")
PREFIX = "lse-slow-"
DAEMON_MODULE = "lse_devtools.ratefs"
# The root blkio group's write limits (cgroup v1), "MAJ:MIN BYTES_PER_SECOND" a line; writing
# "MAJ:MIN 0" removes a device's. Nothing else of the cgroups is touched.
THROTTLE = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device")
THROTTLED_DEVICE = "throttled-device"  # under the bed's base: the device number it throttles


@dataclass(frozen=True)
class SlowStorage:
    """A mounted bed: put guest images in `directory`; `device` is its line in /proc/diskstats."""

    base: Path
    directory: Path
    device: str
    rate: float  # bytes per second the device writes
    daemon_pid: int | None = None  # the FUSE bed's ratefs; None for the throttled bed
    kind: str = "fuse"  # "fuse" (a slow device) or "throttled" (a limit above a fast one)

    def sectors_written(self) -> int:
        """512-byte sectors the device has written since it was attached."""
        return diskstats(self.device)["sectors_written"]


def diskstats(device: str) -> dict[str, int]:
    """The device's /proc/diskstats counters that tell how busy it was and with what."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == device:
            return {"writes": int(fields[7]), "sectors_written": int(fields[9]),
                    "io_ticks_ms": int(fields[12])}
    raise KeyError(f"{device} not in /proc/diskstats")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _mounts_under(base: Path) -> list[Path]:
    """Mount points under base in this mount namespace, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(base) or point.startswith(f"{base}/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _loops_backed_under(base: Path) -> list[str]:
    """Loop devices whose backing file lies under base."""
    loops = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip().startswith(f"{base}/"):
                loops.append(backing.parents[1].name)
    return loops


def _devnum(loop: str) -> str | None:
    """MAJ:MIN of a block device, None if it is gone."""
    with contextlib.suppress(OSError):
        return Path(f"/sys/block/{loop}/dev").read_text().strip()
    return None


def throttles() -> dict[str, int]:
    """The root blkio group's write limits: bytes per second by MAJ:MIN ({} without cgroup v1
    blkio)."""
    with contextlib.suppress(OSError):
        return {line.split()[0]: int(line.split()[1])
                for line in THROTTLE.read_text().splitlines() if line.strip()}
    return {}


def _set_throttle(devnum: str, rate: int) -> None:
    THROTTLE.write_text(f"{devnum} {rate}\n")


def _backed(devnum: str) -> bool:
    """Whether the loop device with that number is attached to a file."""
    with contextlib.suppress(OSError, ValueError):
        name = Path(f"/sys/dev/block/{devnum}").resolve().name
        return Path(f"/sys/block/{name}/loop/backing_file").exists()
    return False


def _throttled_under(base: Path) -> list[str]:
    """MAJ:MIN of the bed's devices that hold a write limit: its loop devices', and the number
    its creator wrote down if that device is no longer attached to anything (another bed's
    device would be attached)."""
    numbers = {n for n in map(_devnum, _loops_backed_under(base)) if n}
    with contextlib.suppress(OSError):
        recorded = (base / THROTTLED_DEVICE).read_text().strip()
        if recorded and not _backed(recorded):
            numbers.add(recorded)
    limits = throttles()
    return sorted(n for n in numbers if limits.get(n))


def _daemon_pid(base: Path) -> int | None:
    """The bed's FUSE daemon, if still alive and still that daemon (a pid can be reused)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((base / "daemon.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if DAEMON_MODULE.encode() in cmdline and str(base / "backing").encode() in cmdline:
            return pid
    return None


def _umount(point: Path, fuse: bool) -> None:
    """Unmount; a busy mount gets a few tries, then a lazy unmount so nothing stays visible."""
    for _ in range(20):
        cmd = ["fusermount3", "-u", str(point)] if fuse else ["umount", str(point)]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def teardown(base: Path) -> None:
    """Take a bed down from what is found under base (not from what its creator remembers), so
    the same steps clean up after a run that was killed: remove the write limit of its loop
    device (first: before the device is detached, and so that unmounting flushes at the disk's
    pace), unmount the ext4, detach the loop device, unmount the FUSE filesystem, stop its
    daemon, remove the directory."""
    for devnum in _throttled_under(base):
        _set_throttle(devnum, 0)
    points = _mounts_under(base)
    for point in points:
        if point.name != "fuse":
            _umount(point, fuse=False)
    for loop in _loops_backed_under(base):
        subprocess.run(["losetup", "-d", f"/dev/{loop}"], capture_output=True)
    for point in points:
        if point.name == "fuse":
            _umount(point, fuse=True)
    pid = _daemon_pid(base)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _daemon_pid(base) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if _daemon_pid(base) is not None:
            os.kill(pid, signal.SIGKILL)
    if not _mounts_under(base):  # never remove files through a mount still there
        shutil.rmtree(base, ignore_errors=True)


def leftovers(root: Path = ROOT) -> list[Path]:
    """Beds whose creating process is gone (named lse-slow-<pid>-*)."""
    found = []
    for base in root.glob(f"{PREFIX}*"):
        pid = base.name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            found.append(base)
    return found


def remains(base: Path) -> list[str]:
    """What of a bed is still on the host (empty once it is fully down)."""
    left = [f"mount {p}" for p in _mounts_under(base)]
    left += [f"write limit on {n}" for n in _throttled_under(base)]
    left += [f"loop device {d}" for d in _loops_backed_under(base)]
    if _daemon_pid(base) is not None:
        left.append(f"daemon {_daemon_pid(base)}")
    if base.exists():
        left.append(f"directory {base}")
    return left


@contextlib.contextmanager
def slow_storage(size_mib: int = 768, rate: float = 40e6, root: Path = ROOT) -> Iterator[SlowStorage]:
    """A mounted bed of size_mib whose device writes `rate` bytes per second. Teardown always
    runs; guests with images on it must be gone by then (slow_guest inside this block)."""
    for old in leftovers(root):
        teardown(old)
    base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
    daemon: subprocess.Popen | None = None
    try:
        for sub in ("backing", "fuse", "mnt"):
            (base / sub).mkdir()
        with open(base / "daemon.log", "ab") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", DAEMON_MODULE, str(base / "backing"), str(base / "fuse"),
                 f"--rate={rate}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (base / "daemon.pid").write_text(str(daemon.pid))
        deadline = time.monotonic() + 15
        while not os.path.ismount(base / "fuse"):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ratefs did not mount: {(base / 'daemon.log').read_text()}")
            time.sleep(0.05)
        image = base / "fuse" / "disk.img"
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        loop = _run("losetup", "--find", "--show", str(image))
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", loop)
        _run("mount", loop, str(base / "mnt"))
        yield SlowStorage(base, base / "mnt", Path(loop).name, rate, daemon.pid)
    finally:
        teardown(base)
        if daemon is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(timeout=5)  # reap it


@contextlib.contextmanager
def throttled_storage(size_mib: int = 768, rate: float = 30e6, root: Path = ROOT
                      ) -> Iterator[SlowStorage]:
    """A mounted bed of size_mib on the local disk whose loop device the root blkio group
    limits to `rate` bytes per second of writes: throttled above the device, which stays fast
    and idle. Teardown always runs and removes the limit before the device is detached; guests
    with images on it must be gone by then (slow_guest inside this block)."""
    if not THROTTLE.exists():
        raise RuntimeError(f"no {THROTTLE}: the throttled bed needs the cgroup v1 blkio controller")
    for old in leftovers(root):
        teardown(old)
    base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
    try:
        (base / "mnt").mkdir()
        image = base / "disk.img"
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        loop = _run("losetup", "--find", "--show", str(image))
        # Built before the limit: its inode tables and journal are written at the disk's pace.
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", loop)
        _run("mount", loop, str(base / "mnt"))
        devnum = _devnum(Path(loop).name)
        if devnum is None:
            raise RuntimeError(f"{loop} has no device number")
        (base / THROTTLED_DEVICE).write_text(devnum)  # written down first: teardown finds it
        _set_throttle(devnum, int(rate))
        yield SlowStorage(base, base / "mnt", Path(loop).name, rate, kind="throttled")
    finally:
        teardown(base)


@contextlib.contextmanager
def slow_guest(conn: libvirt.virConnect, storage: SlowStorage, label: str, memory_mib: int,
               fill_mib: int, disk_cache: str = "writeback") -> Iterator[testbed.Guest]:
    """A running, filled testbed guest whose disk lives on the bed, destroyed on the way out
    (before the bed's teardown, which cannot unmount an image QEMU holds open)."""
    guest = testbed.create_guest(conn, label, memory_mib=memory_mib, fill_mib=fill_mib,
                                 disk_cache=disk_cache, disk_dir=storage.directory)
    try:
        guest.wait_ready(timeout=300)
        yield guest
    finally:
        testbed.destroy_guest(conn, guest)
