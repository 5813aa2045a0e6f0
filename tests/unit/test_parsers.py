"""/proc and XML parsers, fed with files read on a machine of the project's kind."""

from __future__ import annotations

from pathlib import Path

from libvirt_snapshot_exporter.sources.host import (
    PAGE_SIZE,
    parse_meminfo,
    parse_pressure,
    vmstat_bytes,
    vmstat_fields,
)
from libvirt_snapshot_exporter.sources.libvirt.common import parse_domain_disks
from libvirt_snapshot_exporter.sources.libvirt.snapshot_xml import parse_snapshot_xml
from libvirt_snapshot_exporter.sources.qemu_process import parse_io_stat

PROC = Path(__file__).parent / "proc"


def test_meminfo_in_bytes():
    info = parse_meminfo((PROC / "meminfo").read_text())
    assert info["MemTotal"] % 1024 == 0 and info["MemTotal"] > 2**30
    assert {"Dirty", "Writeback", "Cached", "Active(file)", "Inactive(file)"} <= set(info)
    assert info["HugePages_Total"] < 2**20  # a count, not kB: not scaled


def test_vmstat_counters_in_bytes():
    text = (PROC / "vmstat").read_text()
    raw = dict(line.split() for line in text.splitlines())
    out = vmstat_bytes(vmstat_fields(text))
    assert out["pageout"] == int(raw["pgpgout"]) * 1024
    assert out["dirtied"] == int(raw["nr_dirtied"]) * PAGE_SIZE
    assert out["written"] == int(raw["nr_written"]) * PAGE_SIZE


def test_pressure_totals_in_seconds():
    out = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=1234567\n"
                         "full avg10=0.00 avg60=0.00 avg300=0.00 total=42\n")
    assert out == {"some": 1.234567, "full": 0.000042}
    assert set(parse_pressure((PROC / "pressure-memory").read_text())) == {"some", "full"}


def test_cgroup_io_stat_sums_devices():
    text = ("8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n"
            "253:1 rbytes=5 wbytes=7 rios=1 wios=1 dbytes=0 dios=0\n")
    assert parse_io_stat(text) == (105, 207)


SNAPSHOT_EXTERNAL = """<domainsnapshot><name>eml</name><state>running</state>
<parent><name>em</name></parent><creationTime>1795646016</creationTime>
<memory snapshot='external' file='/images/vm.eml.mem'/>
<disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>
<source file='/images/vm.eml.qcow2'/></disk></disks><domain type='qemu'><name>vm</name></domain>
</domainsnapshot>"""


def test_snapshot_xml():
    rec = parse_snapshot_xml(SNAPSHOT_EXTERNAL, current=True)
    assert (rec.name, rec.parent, rec.creation_time) == ("eml", "em", 1795646016.0)
    assert (rec.kind, rec.memory, rec.memory_file, rec.current) == (
        "external", True, "/images/vm.eml.mem", True)
    disk_only = parse_snapshot_xml(
        "<domainsnapshot><name>d</name><state>disk-snapshot</state><creationTime>1</creationTime>"
        "<memory snapshot='no'/><disks><disk name='vda' snapshot='external'/></disks>"
        "</domainsnapshot>", current=False)
    assert (disk_only.kind, disk_only.memory, disk_only.parent) == ("external", False, None)
    internal = parse_snapshot_xml(
        "<domainsnapshot><name>i</name><state>running</state><creationTime>5</creationTime>"
        "<memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/></disks>"
        "</domainsnapshot>", current=False)
    assert (internal.kind, internal.memory) == ("internal", True)


def test_domain_disks():
    xml = """<domain><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
        <source file='/images/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/>
        <source dev='/dev/vg/b'/><target dev='vdb'/></disk></devices></domain>"""
    disks = parse_domain_disks(xml)
    assert [(d.target, d.source, d.format, d.cache) for d in disks] == [
        ("vda", "/images/a.qcow2", "qcow2", "none"), ("vdb", "/dev/vg/b", "raw", "default")]
