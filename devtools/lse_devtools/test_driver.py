"""Guests on libvirt's test driver (test:///default): a real libvirt inside the test process,
for fast tests of what polls it. Every connection the process opens to test:///default sees
the same domains, so each guest here has a name of its own and is removed after its test.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import libvirt

URI = "test:///default"


def guest_xml(name: str, disk: str = "/guest/diskimage1", metadata: str = "",
              domain_uuid: str = "") -> str:
    """metadata: what the domain's <metadata> holds (OpenStack Nova's <nova:instance>, say);
    domain_uuid: the UUID of the domain it defines again (libvirt refuses another)."""
    held = (f"<uuid>{domain_uuid}</uuid>" if domain_uuid else "") + (
        f"<metadata>{metadata}</metadata>" if metadata else "")
    return (f"<domain type='test'><name>{name}</name>{held}<memory unit='KiB'>1048576</memory>"
            f"<vcpu>1</vcpu><os><type arch='i686'>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><source file='{disk}'/>"
            f"<target dev='vda' bus='virtio'/><driver name='qemu' cache='none'/></disk>"
            f"</devices></domain>")


@contextlib.contextmanager
def running_guest(disk: str = "/guest/diskimage1", metadata: str = "") -> Iterator[libvirt.virDomain]:
    """A running guest on a read-write connection (dom.connect()), gone afterwards whatever
    the test did to it."""
    conn = libvirt.open(URI)
    name = f"unit-{uuid.uuid4().hex[:8]}"
    dom = conn.defineXML(guest_xml(name, disk, metadata))
    dom.create()
    try:
        yield dom
    finally:
        with contextlib.suppress(libvirt.libvirtError):  # the test may have undefined it
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        conn.close()


def snapshot(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
    return dom.snapshotCreateXML(f"<domainsnapshot><name>{name}</name></domainsnapshot>")
