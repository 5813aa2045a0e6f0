"""libvirt's snapshot XML (formatsnapshot) read into a SnapshotRecord: pure, so the adapter and
the tests share it without libvirt."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ...model.observations import SnapshotRecord


def parse_snapshot_xml(xml: str, current: bool) -> SnapshotRecord:
    """A SnapshotRecord from snapshot XML (see libvirt's formatsnapshot)."""
    root = ET.fromstring(xml)
    memory = root.find("memory")
    memory_mode = memory.get("snapshot") if memory is not None else None
    state = root.findtext("state", "")
    disk_modes = {d.get("snapshot") for d in root.findall("disks/disk")}
    external = memory_mode == "external" or "external" in disk_modes
    # Without a <memory> element (old libvirt) memory follows the state.
    has_memory = state in ("running", "paused") if memory_mode is None else memory_mode != "no"
    return SnapshotRecord(
        name=root.findtext("name", ""),
        parent=root.findtext("parent/name"),
        creation_time=float(root.findtext("creationTime", "0")),
        state=state,
        memory=has_memory,
        kind="external" if external else "internal",
        current=current,
        memory_file=memory.get("file") if memory is not None else None,
    )
