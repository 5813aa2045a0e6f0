"""Real TCG guests on a real libvirtd, for the tests, the demo and the benchmarks.

Two kinds of guest:
- a *filler*: Debian's cloud kernel booted directly with a busybox initramfs that loads the
  virtio balloon driver, fills N MiB of tmpfs with random data and prints a ready line on its
  serial console, so a snapshot has real memory to write;
- a *bare* guest with no OS (SeaBIOS only), which boots at once, for cases where memory content
  does not matter.
The kernel and initramfs are built once and cached under CACHE_DIR.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from libvirt_snapshot_exporter.sources.qemu_process import read_qemu_pid

URI = os.environ.get("LSE_TEST_URI", "qemu:///system")
CACHE_DIR = Path(os.environ.get("LSE_TESTBED_CACHE", "/var/cache/libvirt-snapshot-exporter-testbed"))
IMAGE_DIR = Path(os.environ.get("LSE_TESTBED_IMAGES", "/var/lib/libvirt/images/lse-testbed"))
NAME_PREFIX = "lse-"

# Load order of the virtio balloon driver and its dependencies in Debian's cloud kernel.
BALLOON_MODULES = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_balloon",
]

INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in {modules}; do insmod /lib/modules/$m.ko; done
MIB=$(sed -n 's/.*fill_mib=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
mkdir -p /fill
mount -t tmpfs -o size=$((MIB + 16))m tmpfs /fill
dd if=/dev/urandom of=/fill/data bs=1M count=$MIB 2>/dev/null
echo GUEST-READY fill_mib=$MIB > /dev/ttyS0
while true; do sleep 3600; done
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def kernel_and_initrd() -> tuple[Path, Path]:
    """Debian's cloud kernel and a busybox initramfs, built once and cached."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    kernel, initrd = CACHE_DIR / "vmlinuz", CACHE_DIR / "initrd.gz"
    if kernel.exists() and initrd.exists():
        return kernel, initrd
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deps = _run(["apt-cache", "depends", "linux-image-cloud-amd64"]).stdout
        package = next(
            line.split()[-1]
            for line in deps.splitlines()
            if "Depends: linux-image-" in line and line.split()[-1][12:13].isdigit()
        )
        _run(["apt-get", "download", package], cwd=work)
        _run(["dpkg", "-x", glob.glob(str(work / "*.deb"))[0], str(work / "pkg")])
        root = work / "initramfs"
        for sub in ("bin", "proc", "sys", "dev", "lib/modules"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/busybox", root / "bin/busybox")
        for module in BALLOON_MODULES:
            found = glob.glob(str(work / f"pkg/lib/modules/*/kernel/drivers/virtio/{module}.ko"))
            if found:
                shutil.copy(found[0], root / f"lib/modules/{module}.ko")
        (root / "init").write_text(INIT_SCRIPT.format(modules=" ".join(BALLOON_MODULES)))
        (root / "init").chmod(0o755)
        files = subprocess.run(
            ["find", "."], cwd=root, check=True, capture_output=True
        ).stdout
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
            check=True, capture_output=True,
        ).stdout
        with open(tmp + "/i.gz", "wb") as packed:
            subprocess.run(["gzip", "-1"], input=cpio, check=True, stdout=packed)
        shutil.copy(glob.glob(str(work / "pkg/boot/vmlinuz-*"))[0], kernel.with_suffix(".tmp"))
        shutil.copy(tmp + "/i.gz", initrd.with_suffix(".tmp"))
        kernel.with_suffix(".tmp").rename(kernel)
        initrd.with_suffix(".tmp").rename(initrd)
    return kernel, initrd


@dataclass
class Guest:
    """A transient-free (persistent) test domain and the files it owns."""

    name: str
    memory_mib: int
    fill_mib: int
    disk: Path
    console: Path
    extra_files: list[Path] = field(default_factory=list)

    def domain(self, conn: libvirt.virConnect) -> libvirt.virDomain:
        return conn.lookupByName(self.name)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait for the initramfs' ready line (filler) or just for running (bare)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fill_mib == 0:
                return
            if self.console.exists() and "GUEST-READY" in self.console.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"guest {self.name} not ready after {timeout:.0f} s")


def _domain_xml(guest: Guest, disk_cache: str, boot_kernel: bool, stats_period: int) -> str:
    if boot_kernel:
        kernel, initrd = kernel_and_initrd()
        os_xml = (
            f"<kernel>{kernel}</kernel><initrd>{initrd}</initrd>"
            f"<cmdline>console=ttyS0 quiet fill_mib={guest.fill_mib}</cmdline>"
        )
    else:
        os_xml = "<boot dev='hd'/>"
    stats = f"<stats period='{stats_period}'/>" if stats_period else ""
    return f"""<domain type='qemu'>
  <name>{guest.name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>{guest.memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{os_xml}</os>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='{disk_cache}'/>
      <source file='{guest.disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{guest.console}'/><target port='0'/></serial>
    <memballoon model='virtio'>{stats}</memballoon>
  </devices>
</domain>"""


def create_guest(
    conn: libvirt.virConnect,
    label: str,
    memory_mib: int = 256,
    fill_mib: int = 0,
    disk_cache: str = "writeback",
    disk_dir: Path | None = None,
    disk_size: str = "256M",
    stats_period: int = 1,
    start: bool = True,
) -> Guest:
    """Define (and by default start) a guest; fill_mib > 0 boots the filler kernel."""
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    # The creating process' pid is in the name: leftovers of dead runs can be told apart from
    # the guests of test runs going on beside this one.
    name = f"{NAME_PREFIX}{label}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    disk = (disk_dir or IMAGE_DIR) / f"{name}.qcow2"
    _run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), disk_size])
    guest = Guest(name, memory_mib, fill_mib, disk, IMAGE_DIR / f"{name}.console.log")
    xml = _domain_xml(guest, disk_cache, boot_kernel=fill_mib > 0, stats_period=stats_period)
    dom = conn.defineXML(xml)
    if start:
        dom.create()
    return guest


def destroy_guest(conn: libvirt.virConnect, guest: Guest) -> None:
    """Stop the guest, drop its snapshot metadata and definition, remove its files."""
    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByName(guest.name)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            for snap in dom.listAllSnapshots():
                with contextlib.suppress(libvirt.libvirtError):
                    snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            )
    for path in [guest.disk, guest.console, *guest.extra_files]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _orphaned(name: str) -> bool:
    """A test guest whose creating process is gone (names: lse-<label>-<pid>-<random>)."""
    parts = name.split("-")
    if not name.startswith(NAME_PREFIX) or len(parts) < 4 or not parts[-2].isdigit():
        return False
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        return True
    return False


def remove_leftovers(conn: libvirt.virConnect) -> None:
    """Remove test guests, and their files, that killed earlier runs left behind; guests of
    test runs still going on beside this one are left alone."""
    for dom in conn.listAllDomains():
        if _orphaned(dom.name()):
            destroy_guest(conn, Guest(dom.name(), 0, 0, IMAGE_DIR / "-", IMAGE_DIR / "-"))
    if IMAGE_DIR.exists():
        for path in IMAGE_DIR.glob(f"{NAME_PREFIX}*"):
            if _orphaned(path.name.split(".")[0]):
                with contextlib.suppress(OSError):
                    path.unlink()


LIBVIRTD_PIDFILE = Path(os.environ.get("LSE_LIBVIRTD_PIDFILE", "/run/libvirtd.pid"))
# How to start the libvirtd under test again (a chroot's daemon needs `chroot DIR libvirtd -d`).
LIBVIRTD_START = os.environ.get("LSE_LIBVIRTD_START", "libvirtd -d").split()


def stop_libvirtd() -> None:
    """Kill the libvirtd under test (only that one: another libvirt may run beside it)."""
    pid = int(LIBVIRTD_PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def start_libvirtd() -> None:
    subprocess.run(LIBVIRTD_START, check=True)


# How to make sure the libvirtd under test answers. The default may configure and start the
# host's; another libvirt (scripts/libvirt11-chroot.sh) brings its own, leaving the host's alone.
LIBVIRTD_UP = os.environ.get("LSE_LIBVIRTD_UP", "").split()
# Where the libvirtd under test writes <domain>.pid for each QEMU (a chroot's is under it).
PID_DIRECTORY = Path(os.environ.get("LSE_PID_DIRECTORY", "/run/libvirt/qemu"))
# Where it keeps snapshot metadata (<domain>/<snapshot>.xml); a chroot's is under it, and the
# exporter cannot derive that from the URI, so it is given with --libvirt.snapshot-directory.
SNAPSHOT_DIRECTORY = Path(os.environ.get("LSE_SNAPSHOT_DIRECTORY", "/var/lib/libvirt/qemu/snapshot"))


def libvirtd_up() -> None:
    """Start libvirtd the way CI and `make demo` do, if it is not answering."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "libvirtd-up.sh"
    _run(LIBVIRTD_UP or ["bash", str(script)])


def qemu_pid(guest: Guest) -> int:
    """The pid of the guest's QEMU as the exporter reads it; a guest that should run has one."""
    pid = read_qemu_pid(PID_DIRECTORY, guest.name)
    if pid is None:
        raise RuntimeError(f"{guest.name} has no QEMU pid in {PID_DIRECTORY}")
    return pid


def create_snapshot(conn, guest, name: str, xml: str | None = None, flags: int = 0) -> float:
    """Take a snapshot through libvirt-python; returns the client's wall-clock seconds."""
    dom = conn.lookupByName(guest.name)
    start = time.time()
    dom.snapshotCreateXML(xml or f"<domainsnapshot><name>{name}</name></domainsnapshot>", flags)
    return time.time() - start


def delete_all_snapshots(conn, guest) -> None:
    """Leaves first, so each delete is a plain internal one."""
    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByName(guest.name)
        while dom.snapshotNum():
            leaves = dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_LEAVES)
            for snap in leaves:
                snap.delete()


def external_snapshot_xml(guest: Guest, name: str, memory: bool) -> str:
    """Snapshot XML for an external snapshot of the guest's disk (and memory), its files next
    to the disk image and registered with the guest so destroy_guest removes them."""
    overlay = guest.disk.with_name(f"{guest.name}.{name}.qcow2")
    guest.extra_files.append(overlay)
    mem = "<memory snapshot='no'/>"
    if memory:
        mem_file = guest.disk.with_name(f"{guest.name}.{name}.mem")
        guest.extra_files.append(mem_file)
        mem = f"<memory snapshot='external' file='{mem_file}'/>"
    return (f"<domainsnapshot><name>{name}</name>{mem}<disks><disk name='vda' "
            f"snapshot='external'><source file='{overlay}'/></disk></disks></domainsnapshot>")
