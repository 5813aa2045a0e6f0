"""What both libvirt adapters share: the exporter's read-only one (libvirt_adapter) and bench's
read-write one (bench/control): libvirt's error output silenced once, the version figures, the
disks read from a domain's XML, the guest statistics read from libvirt's bulk ones, and
libvirt's event loop (both receive lifecycle events).
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from ...model.observations import BlockStats, DiskInfo, GuestStats, Versions

# libvirt prints every error to stderr by default; the exporter logs them and bench reports
# them on one line, themselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_event_loop_started = threading.Lock()
_event_loop_running = False


def start_event_loop() -> None:
    """libvirt's default event loop on a daemon thread; must exist before any connection whose
    events are wanted. Once per process, whoever asks first."""
    global _event_loop_running
    with _event_loop_started:
        if _event_loop_running:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_running = True


def version_string(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def read_versions(conn: libvirt.virConnect) -> Versions:
    daemon = conn.getLibVersion()
    return Versions(
        library=version_string(libvirt.getVersion()),
        daemon=version_string(daemon),
        hypervisor=version_string(conn.getVersion()),
        daemon_number=daemon,
    )


def parse_domain_disks(xml: str) -> list[DiskInfo]:
    """Disks of a domain XML with their source, image format and cache mode."""
    disks = []
    for disk in ET.fromstring(xml).findall("devices/disk"):
        if disk.get("device", "disk") not in ("disk", "lun"):
            continue
        source = disk.find("source")
        driver = disk.find("driver")
        path = ""
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("name") or ""
        disks.append(
            DiskInfo(
                target=disk.find("target").get("dev", "") if disk.find("target") is not None else "",
                source=path,
                format=driver.get("type", "") if driver is not None else "",
                cache=(driver.get("cache") if driver is not None else None) or "default",
            )
        )
    return disks


def _kib(values: dict[str, Any], key: str) -> int | None:
    return int(values[key]) * 1024 if key in values else None


def _int(values: dict[str, Any], key: str) -> int | None:
    return int(values[key]) if key in values else None


def guest_stats(values: dict[str, Any]) -> GuestStats:
    """From one domain's getAllDomainStats record: libvirt reports memory in KiB (balloon.*),
    CPU time in nanoseconds (cpu.time) and disks as block.N.* keys."""
    return GuestStats(
        cpu_time_ns=_int(values, "cpu.time"),
        vcpus=_int(values, "vcpu.current"),
        balloon_current_bytes=_kib(values, "balloon.current"),
        balloon_maximum_bytes=_kib(values, "balloon.maximum"),
        available_bytes=_kib(values, "balloon.available"),
        usable_bytes=_kib(values, "balloon.usable"),
        unused_bytes=_kib(values, "balloon.unused"),
        swap_in_bytes=_kib(values, "balloon.swap_in"),
        swap_out_bytes=_kib(values, "balloon.swap_out"),
        major_faults=_int(values, "balloon.major_fault"),
        disks=tuple(
            BlockStats(str(values.get(f"block.{i}.name", i)), _int(values, f"block.{i}.rd.bytes"),
                       _int(values, f"block.{i}.wr.bytes"))
            for i in range(int(values.get("block.count", 0)))
        ),
    )
