"""Plain records of what the adapters saw, each stamped with the wall-clock time it was seen.

They are the only thing that crosses from the I/O side (libvirt, /proc) to the pure tracker, so
they can be recorded to JSON lines and replayed in unit tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

# libvirt's numeric codes, repeated here so the tracker need not import libvirt.
STATE_RUNNING, STATE_PAUSED, STATE_SHUTOFF, STATE_CRASHED = 1, 3, 5, 6
PAUSED_SAVE, PAUSED_SNAPSHOT, PAUSED_STARTING_UP = 3, 9, 11  # reasons of STATE_PAUSED
CONTROL_OK, CONTROL_JOB, CONTROL_OCCUPIED, CONTROL_ERROR = 0, 1, 2, 3
EVENT_DEFINED, EVENT_UNDEFINED, EVENT_STARTED = 0, 1, 2
EVENT_SUSPENDED, EVENT_RESUMED, EVENT_STOPPED = 3, 4, 5
DETAIL_SUSPENDED_PAUSED, DETAIL_SUSPENDED_FROM_SNAPSHOT = 0, 5
DETAIL_SUSPENDED_API_ERROR = 6  # an API call failed while the guest was paused
DETAIL_RESUMED_UNPAUSED, DETAIL_RESUMED_FROM_SNAPSHOT = 0, 2
DETAIL_STARTED_RESTORED, DETAIL_STARTED_FROM_SNAPSHOT = 2, 3
DETAIL_STOPPED_SAVED, DETAIL_STOPPED_FROM_SNAPSHOT = 4, 6
DETAIL_DEFINED_FROM_SNAPSHOT = 3
JOB_OPERATION_SAVE, JOB_OPERATION_SNAPSHOT, JOB_OPERATION_SNAPSHOT_REVERT = 2, 6, 7


@dataclass(frozen=True)
class DiskInfo:
    target: str
    source: str
    format: str
    cache: str


@dataclass(frozen=True)
class OpenStackInstance:
    """What OpenStack Nova writes of its instance into the domain XML (<nova:instance>): on an
    OpenStack host every domain is instance-XXXXXXXX, and a person knows it by this name. Its
    id is the domain's UUID, which Nova sets to the instance's. "" where Nova wrote nothing."""

    name: str
    flavor_name: str = ""
    project_name: str = ""
    project_id: str = ""
    user_name: str = ""
    user_id: str = ""


@dataclass(frozen=True)
class DomainDefinition:
    """What the exporter takes from a domain's XML, read in one call: its disks and, on an
    OpenStack host, its instance (None without Nova's metadata or with metadata it could not
    read)."""

    disks: tuple[DiskInfo, ...]
    openstack: OpenStackInstance | None = None


@dataclass(frozen=True)
class Versions:
    """Of libvirt's library, of libvirtd and of the hypervisor (QEMU) it runs."""

    library: str
    daemon: str
    hypervisor: str  # QEMU's, for the qemu:// driver
    daemon_number: int  # libvirtd's as libvirt encodes it: major * 1,000,000 + minor * 1,000 + micro


@dataclass(frozen=True)
class BlockStats:
    target: str
    read_bytes: int | None
    write_bytes: int | None


@dataclass(frozen=True)
class GuestStats:
    """What libvirt's bulk statistics say of one guest, in bytes, nanoseconds and counts. None
    where libvirt reported nothing: shut off, no balloon driver, or a job holding the domain
    (NOWAIT then skips what needs QEMU)."""

    cpu_time_ns: int | None = None
    vcpus: int | None = None
    balloon_current_bytes: int | None = None
    balloon_maximum_bytes: int | None = None
    available_bytes: int | None = None  # the guest's own figures, through its balloon driver
    usable_bytes: int | None = None
    unused_bytes: int | None = None
    swap_in_bytes: int | None = None
    swap_out_bytes: int | None = None
    major_faults: int | None = None
    disks: tuple[BlockStats, ...] = ()

    def keeping_guest_figures(self, previous: GuestStats) -> GuestStats:
        """These statistics, with the guest's own figures of `previous` where NOWAIT skipped
        them: the used-memory source then stays the balloon instead of flipping to QEMU's RSS
        for the length of a snapshot."""
        if self.available_bytes is not None or previous.available_bytes is None:
            return self
        return replace(self, **{name: getattr(previous, name) for name in GUEST_FIGURES})


GUEST_FIGURES = ("balloon_current_bytes", "balloon_maximum_bytes", "available_bytes",
                 "usable_bytes", "unused_bytes", "swap_in_bytes", "swap_out_bytes",
                 "major_faults")


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot as libvirt lists it; parsed once from its XML and cached by the adapter."""

    name: str
    parent: str | None
    creation_time: float
    state: str  # running/paused/shutoff = taken with memory or offline; disk-snapshot = disk only
    memory: bool
    kind: str  # internal | external
    current: bool
    memory_file: str | None = None  # external memory snapshots only


def depth_of(snapshots: dict[str, SnapshotRecord], name: str | None) -> int:
    """Depth of a snapshot in its tree, the root being 1 (the study's "level"); 0 for none."""
    depth, seen = 0, set()
    while name is not None and name in snapshots and name not in seen:
        seen.add(name)
        depth += 1
        name = snapshots[name].parent
    return depth


@dataclass(frozen=True)
class DomainPoll:
    """Everything cheap (never blocking during a snapshot) about one domain at one moment."""

    time: float
    domain: str
    uuid: str
    state: int
    reason: int
    control_state: int
    control_time_ms: int  # milliseconds spent in control_state so far
    snapshots: tuple[SnapshotRecord, ...]
    pid: int | None = None
    # a shut-off domain with a managed save image: what tells a managed save from a save to
    # a file (both stop the domain with STOPPED/SAVED) and the start that restores it
    managed_save: bool = False


@dataclass(frozen=True)
class DomainUnchanged:
    """A cheap check found nothing new (no job, same snapshot count) at this time."""

    time: float
    domain: str


@dataclass(frozen=True)
class DomainGone:
    """A domain the previous poll saw is no longer defined."""

    time: float
    domain: str


@dataclass(frozen=True)
class LifecycleEvent:
    time: float
    domain: str
    event: int
    detail: int


@dataclass(frozen=True)
class JobCompletedEvent:
    """VIR_DOMAIN_EVENT_ID_JOB_COMPLETED; params carry operation, time_elapsed (ms), downtime..."""

    time: float
    domain: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockJobEvent:
    time: float
    domain: str
    disk: str
    job_type: int
    status: int


@dataclass(frozen=True)
class JobProgress:
    """External snapshot memory phase, as libvirt's job stats report it on a side connection."""

    time: float
    domain: str
    processed_bytes: int
    remaining_bytes: int


@dataclass(frozen=True)
class SnapshotFileEvent:
    """libvirt wrote or removed a snapshot's metadata file (metadata_watch): the exact end of a
    create (its file created), a revert (current flags rewritten) or a delete (file removed)."""

    time: float
    domain: str
    snapshot: str
    change: str  # created | rewritten | removed


@dataclass(frozen=True)
class DomainStatusSaved:
    """libvirt renamed a running domain's status XML into place (`<pid-directory>/<domain>.xml`,
    metadata_watch). Measured on libvirt 9.0 and 11.3: 2-4 ms after a snapshot call begins, and
    again as it ends (11.3 also mid-job); the start of a delete that no poll caught is the first
    one after whatever ran before it. It names the domain's async job as saved (`<job
    async='save' asyncStarted='ms'>`: save, start, snapshot...; "" once none runs) and when
    libvirt began it: a save's exact start, and a restore's end (its job gone)."""

    time: float
    domain: str
    job: str = ""
    job_started: float | None = None


@dataclass(frozen=True)
class ManagedSaveImage:
    """libvirt created a domain's managed save image (`<domain>.save` in its save directory,
    beside the snapshot directory; metadata_watch) as a managed save began writing it: what
    tells a managed save from a save to a file before the domain stops."""

    time: float
    domain: str


@dataclass(frozen=True)
class MetadataWatchState:
    """The metadata watch started or stopped seeing libvirt's files: while it sees them, a poll
    that shows an operation ended before its file event arrived waits for that event."""

    time: float
    watching: bool


Observation = (
    DomainPoll | DomainUnchanged | DomainGone | LifecycleEvent | JobCompletedEvent
    | BlockJobEvent | JobProgress | SnapshotFileEvent | DomainStatusSaved | ManagedSaveImage
    | MetadataWatchState
)

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (DomainPoll, DomainUnchanged, DomainGone, LifecycleEvent, JobCompletedEvent,
                BlockJobEvent, JobProgress, SnapshotFileEvent, DomainStatusSaved,
                ManagedSaveImage, MetadataWatchState)
}


def to_record(obs: Observation) -> dict[str, Any]:
    """A JSON-ready dict of an observation, tagged with its type."""
    return {"type": type(obs).__name__, **asdict(obs)}


def from_record(record: dict[str, Any]) -> Observation:
    """Rebuild an observation written by to_record (used to replay recorded sequences)."""
    fields = dict(record)
    cls = _TYPES[fields.pop("type")]
    if cls is DomainPoll:
        fields["snapshots"] = tuple(SnapshotRecord(**s) for s in fields["snapshots"])
    return cls(**fields)
