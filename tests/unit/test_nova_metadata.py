"""OpenStack Nova's instance metadata: read from a domain XML in the shape Nova writes it
(tests/unit/libvirt/nova_instance_domain.xml, written after nova/virt/libvirt/config.py's
LibvirtConfigGuestMetaNova* and a Nova host's `virsh dumpxml`, not captured from one), nothing
without it, malformed variants refused; through the adapter on libvirt's test driver, skipped
with one log line per domain (through the collection loop: test_collection_loop.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.model.observations import OpenStackInstance
from libvirt_snapshot_exporter.sources.libvirt.adapter import LibvirtAdapter
from libvirt_snapshot_exporter.sources.libvirt.nova_metadata import (
    NOVA_NAMESPACE,
    MalformedNovaMetadata,
    parse_nova_instance,
)
from lse_devtools.test_driver import URI, guest_xml, running_guest

SAMPLE = (Path(__file__).parent / "libvirt" / "nova_instance_domain.xml").read_text()
INSTANCE = OpenStackInstance(
    name="web-frontend-1", flavor_name="m1.medium", project_name="web-team",
    project_id="9a8b7c6d5e4f40312a1b2c3d4e5f6a7b", user_name="alice",
    user_id="5d8e2f1a9b3c4e7d8f6a1b2c3d4e5f60")


def nova(inner: str) -> str:
    """<nova:instance> as Nova writes it (its namespace declared on it), holding `inner`."""
    return f'<nova:instance xmlns:nova="{NOVA_NAMESPACE}">{inner}</nova:instance>'


def domain(metadata: str) -> str:
    return guest_xml("instance-00000001", metadata=metadata)


OWNER = ('<nova:owner><nova:user uuid="u1">alice</nova:user>'
         '<nova:project uuid="p1">web-team</nova:project></nova:owner>')


def test_the_instance_as_nova_writes_it():
    assert parse_nova_instance(SAMPLE) == INSTANCE


def test_only_a_name_is_needed():
    """Nova writes the owner's user and project only where it knows both id and name."""
    instance = parse_nova_instance(domain(nova("<nova:name> db-1 </nova:name><nova:owner/>")))
    assert instance == OpenStackInstance("db-1")


@pytest.mark.parametrize("metadata", [
    "",
    '<app:info xmlns:app="http://example.com/app"><app:name>x</app:name></app:info>',
    # another version's namespace is not the one Nova writes
    '<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.0">'
    "<nova:name>x</nova:name></nova:instance>",
], ids=["none", "another-application", "another-namespace"])
def test_no_nova_metadata_is_no_instance(metadata):
    assert parse_nova_instance(domain(metadata)) is None


@pytest.mark.parametrize("inner,why", [
    (f"<nova:flavor name='m1.small'/>{OWNER}", "no <nova:name>"),
    (f"<nova:name>  </nova:name>{OWNER}", "no <nova:name>"),
    ("<nova:name><nova:first>web</nova:first></nova:name>", "holds elements"),
    ("<nova:name>a</nova:name><nova:name>b</nova:name>", "2 <nova:name>"),
    ("<nova:name>a</nova:name><nova:flavor name='x'/><nova:flavor name='y'/>", "2 <nova:flavor>"),
    ("<nova:name>a</nova:name><nova:owner><nova:user>alice</nova:user></nova:owner>",
     "<nova:user> without its uuid"),
    ("<nova:name>a</nova:name><nova:owner><nova:project uuid=''>p</nova:project></nova:owner>",
     "<nova:project> without its uuid"),
    ("<nova:name>a</nova:name><nova:owner><nova:user uuid='u'><x/></nova:user></nova:owner>",
     "<nova:user> holds elements"),
], ids=["no-name", "blank-name", "name-of-elements", "two-names", "two-flavors",
        "user-without-id", "project-with-empty-id", "user-of-elements"])
def test_malformed_metadata_is_refused_saying_why(inner, why):
    with pytest.raises(MalformedNovaMetadata, match=why):
        parse_nova_instance(domain(nova(inner)))


def test_two_instances_are_refused():
    with pytest.raises(MalformedNovaMetadata, match="2 <nova:instance>"):
        parse_nova_instance(domain(nova("<nova:name>a</nova:name>") * 2))


# --- through the adapter, on libvirt's test driver ----------------------------------------------


@pytest.fixture
def adapter():
    adapter = LibvirtAdapter(URI, lambda _obs: None)
    assert adapter.ensure_connected()
    yield adapter
    adapter.close()


def test_the_adapter_reads_disks_and_instance_in_one_definition(adapter):
    with running_guest(metadata=nova(f"<nova:name>web-1</nova:name>"
                                     f"<nova:flavor name='m1.small'/>{OWNER}")) as dom:
        definition = adapter.domain_definition(dom.name()).result(5)
    assert [d.target for d in definition.disks] == ["vda"]
    assert definition.openstack == OpenStackInstance("web-1", "m1.small", "web-team", "p1",
                                                     "alice", "u1")
    with running_guest() as dom:
        assert adapter.domain_definition(dom.name()).result(5).openstack is None


def test_malformed_metadata_is_logged_once_per_domain(adapter, caplog):
    caplog.set_level(logging.WARNING)
    with running_guest(metadata=nova(OWNER)) as dom:
        for _ in range(3):  # three collection cycles' reads
            definition = adapter.domain_definition(dom.name()).result(5)
            assert definition.openstack is None and definition.disks
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [f"OpenStack metadata of {dom.name()} skipped: no <nova:name>"]
        # Mended, then broken another way: that is said once more.
        conn = dom.connect()
        conn.defineXML(guest_xml(dom.name(), metadata=nova("<nova:name>ok</nova:name>"),
                               domain_uuid=dom.UUIDString()))
        dom.destroy()
        assert adapter.domain_definition(dom.name()).result(5).openstack.name == "ok"
        conn.defineXML(guest_xml(dom.name(), metadata=nova(f"<nova:name>ok</nova:name>"
                                                           f"{OWNER}{OWNER}"),
                                 domain_uuid=dom.UUIDString()))
        for _ in range(2):
            adapter.domain_definition(dom.name()).result(5)
        assert len(caplog.records) == 2 and "2 <nova:owner>" in caplog.records[1].getMessage()
