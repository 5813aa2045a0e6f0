"""An OpenStack instance on a real libvirtd and a real QEMU guest: a domain defined with Nova's
metadata (in the shape nova/virt/libvirt/config.py writes it) shows its instance in
libvirt_domain_openstack_info, keeps it through Nova's redefinition of the running domain
(undefine, define: its instance snapshot's footprint), gives its name to its snapshot on `/`,
on the operation's page and in /api/operations, and follows a redefinition with other
metadata while the entry keeps the name it ended with."""

from __future__ import annotations

import re
import time

import libvirt
import pytest
from lse_devtools import testbed
from lse_devtools.driving import operations, wait_operations

pytestmark = pytest.mark.libvirt

NOVA = "http://openstack.org/xmlns/libvirt/nova/1.1"
PROJECT_ID, USER_ID = "9a8b7c6d5e4f40312a1b2c3d4e5f6a7b", "5d8e2f1a9b3c4e7d8f6a1b2c3d4e5f60"


def nova_metadata(name: str) -> str:
    return f"""<nova:instance xmlns:nova="{NOVA}">
  <nova:package version="29.2.0"/>
  <nova:name>{name}</nova:name>
  <nova:creationTime>2026-12-06 21:00:00</nova:creationTime>
  <nova:flavor name="m1.tiny" id="1">
    <nova:memory>128</nova:memory><nova:disk>1</nova:disk><nova:swap>0</nova:swap>
    <nova:ephemeral>0</nova:ephemeral><nova:vcpus>1</nova:vcpus><nova:extraSpecs/>
  </nova:flavor>
  <nova:image uuid=""><nova:properties/></nova:image>
  <nova:owner>
    <nova:user uuid="{USER_ID}">alice</nova:user>
    <nova:project uuid="{PROJECT_ID}">web-team</nova:project>
  </nova:owner>
</nova:instance>"""


def define_with(conn: libvirt.virConnect, name: str, metadata: str) -> None:
    """The domain defined again from its persistent XML with this metadata in it."""
    xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml = re.sub(r"\s*<metadata>.*?</metadata>", "", xml, flags=re.S)
    conn.defineXML(xml.replace("</uuid>", f"</uuid>\n  <metadata>{metadata}</metadata>", 1))


def test_an_openstack_instance_is_known_by_its_name(exporter, conn):
    guest = testbed.create_guest(conn, "nova", memory_mib=128, start=False)
    try:
        dom = guest.domain(conn)
        uuid = dom.UUIDString()
        define_with(conn, guest.name, nova_metadata("web-frontend-1"))
        dom.create()

        def info(name: str) -> float | None:
            return exporter.value(
                "libvirt_domain_openstack_info", domain=guest.name, instance_name=name,
                instance_id=uuid, flavor_name="m1.tiny", project_name="web-team",
                project_id=PROJECT_ID, user_name="alice", user_id=USER_ID)

        exporter.wait_for(lambda: info("web-frontend-1") == 1, 30, "the instance's info")

        # Nova's live snapshot: the running domain undefined (transient), then defined again.
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom.undefine()
        conn.defineXML(xml)
        time.sleep(1.5)  # a few collection cycles: the XML read again after the definition
        assert info("web-frontend-1") == 1

        since = time.time()
        testbed.create_snapshot(conn, guest, "s1")
        (op,) = wait_operations(exporter, guest.name, 1, since)
        assert op["instance_name"] == "web-frontend-1" and op["snapshot"] == "s1"
        beside = ('<span class="name instance" title="OpenStack instance web-frontend-1">'
                  "web-frontend-1</span>")
        assert beside in exporter.get(f"/?domain={guest.name}")
        page = exporter.get(f"/operations/{op['id']}")
        assert f"create of {guest.name} (web-frontend-1) / s1" in page
        assert "<th>OpenStack instance</th><td>web-frontend-1</td>" in page

        # Stopped, then defined again with another name: the labels follow in seconds (not at
        # the XML's refresh a minute later); the logged snapshot keeps the name it ended with.
        dom.destroy()
        exporter.wait_for(lambda: exporter.value("libvirt_domain_state", domain=guest.name) == 5,
                          10, "shut off")
        time.sleep(1.5)  # the XML read again for the stopped QEMU, before the definition
        define_with(conn, guest.name, nova_metadata("web-frontend-2"))
        exporter.wait_for(lambda: info("web-frontend-2") == 1, 10, "the new name")
        assert info("web-frontend-1") is None
        (logged,) = operations(exporter, guest.name, since)
        assert logged["instance_name"] == "web-frontend-1"
        assert "OpenStack metadata" not in exporter.log()  # nothing was skipped
    finally:
        testbed.destroy_guest(conn, guest)
