"""What both libvirt adapters share: the exporter's read-only one (libvirt_adapter) and bench's
read-write one (bench/control): libvirt's error output silenced once, the version figures, and
the disks read from a domain's XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from .observations import DiskInfo, Versions

# libvirt prints every error to stderr by default; the exporter logs them and bench reports
# them on one line, themselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


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
