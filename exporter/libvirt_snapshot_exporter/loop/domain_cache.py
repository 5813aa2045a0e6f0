"""What the collection loop knows of one domain between cycles: its last poll, statistics,
disks, process and images, and when it is next due. Its published view is rebuilt only when
something in it changed, so the view's rendered text stays cached (exposition/renderer.py).
LoopParts: what the loop's steps (domain_polls.py, sampling.py) share.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..model.guest import CpuReading, cpu_ratio, cpu_reading, guest_memory_total, guest_memory_used
from ..model.observations import DiskInfo, DomainPoll, GuestStats, OpenStackInstance
from ..model.samples import ProcessSample
from ..store.view import DomainView
from ..tracker.tracker import Tracker
from .source_health import LaterCalls, SourceHealth

if TYPE_CHECKING:
    from ..sources.libvirt.adapter import LibvirtAdapter


RESYNC_SECONDS = 60.0  # a full poll of every domain at least this often, whatever it looks like


@dataclass
class DomainCache:
    uuid: str = ""
    poll: DomainPoll | None = None
    stats: GuestStats = GuestStats()
    cpu_sample: CpuReading | None = None
    cpu_ratio: float | None = None
    disks: tuple[DiskInfo, ...] = ()
    disks_read_at: float = 0.0
    disks_pid: int | None = None  # the QEMU process whose disks they are (its cache modes)
    defined_at: float = 0.0  # when libvirt last said the domain was defined (its XML anew)
    openstack: OpenStackInstance | None = None
    process: ProcessSample | None = None
    image_size: int | None = None
    filesystems: dict[str, int] = field(default_factory=dict)
    state: tuple[int, int] = (0, 0)
    version: int = 0  # bumped whenever something published about the domain changes
    next_check: float = 0.0
    next_resync: float = 0.0
    _view: DomainView | None = field(default=None, init=False, repr=False, compare=False)
    _view_version: int = field(default=-1, init=False, repr=False, compare=False)

    @classmethod
    def first_seen(cls, name: str, now: float) -> DomainCache:
        """Domains' periodic full polls are spread over the resync period, not all at once."""
        return cls(next_resync=now + zlib.crc32(name.encode()) % 1000 / 1000 * RESYNC_SECONDS)

    def update_poll(self, poll: DomainPoll, now: float) -> None:
        """A new version only when what the view shows changed: the periodic full polls of
        idle domains then leave their views, and so their rendered text, as they were."""
        old, self.poll, self.uuid = self.poll, poll, poll.uuid
        if old is None or _shown(old) != _shown(poll):
            self.version += 1
        self.next_resync = now + RESYNC_SECONDS

    def update_stats(self, now: float, stats: GuestStats) -> None:
        """New guest statistics, and the guest's CPU ratio since the last ones."""
        # A snapshot holds the domain: NOWAIT skipped the guest's figures; keep the last.
        stats = stats.keeping_guest_figures(self.stats)
        if stats != self.stats:
            self.stats = stats
            self.version += 1
        reading = cpu_reading(now, stats)
        if reading is None:
            return
        if self.cpu_sample is not None:
            ratio = cpu_ratio(self.cpu_sample, reading)
            if ratio is not None:
                self.cpu_ratio = ratio
        self.cpu_sample = reading

    def update_process(self, process: ProcessSample | None) -> None:
        if process != self.process:
            self.process = process
            self.version += 1

    def update_disks(self, disks: tuple[DiskInfo, ...], now: float, pid: int | None) -> None:
        self.disks_read_at, self.disks_pid = now, pid
        if disks != self.disks:
            self.disks = disks
            self.version += 1

    def update_openstack(self, instance: OpenStackInstance | None) -> None:
        if instance != self.openstack:
            self.openstack = instance
            self.version += 1

    def update_images(self, size_bytes: int | None, free_bytes: dict[str, int]) -> None:
        if (self.image_size, self.filesystems) != (size_bytes, free_bytes):
            self.image_size, self.filesystems = size_bytes, free_bytes
            self.version += 1

    @property
    def pid(self) -> int | None:
        return self.poll.pid if self.poll is not None else None

    def image_paths(self) -> list[str]:
        """Its disks' images and its snapshots' memory files."""
        paths = [d.source for d in self.disks]
        if self.poll is not None:
            paths += [s.memory_file for s in self.poll.snapshots if s.memory_file]
        return paths

    def disk_sources(self) -> list[str]:
        """Its disks' sources: a path, or a network disk's name (the flight recorder finds
        the storage under them)."""
        return [d.source for d in self.disks if d.source]

    def disks_outdated(self) -> bool:
        """Read under another QEMU process: a start, a restore, a managed save's start can
        change the disks and their cache modes (bench switches them so)."""
        return self.disks_pid != self.pid

    def xml_outdated(self) -> bool:
        """Its XML is to be read again: the disks are outdated, or the domain was defined
        again (Nova does so in an instance snapshot) since the XML was last asked for."""
        return self.disks_outdated() or self.defined_at > self.disks_read_at

    def disk_cache_modes(self) -> tuple[str, ...]:
        """None known while the disks are outdated: an old mode would mislead the verdict."""
        if self.disks_outdated():
            return ()
        return tuple(sorted({d.cache for d in self.disks}))

    def guest_memory(self) -> tuple[int | None, int | None]:
        """Memory the guest uses (whatever its source) and its total, where known."""
        used = guest_memory_used(self.stats, self.process)
        return (used[0] if used else None), guest_memory_total(self.stats)

    def view(self, name: str) -> DomainView | None:
        """None before its first poll; the same object again while nothing changed."""
        if self.poll is None:
            return None
        if self._view is None or self._view_version != self.version:
            self._view = DomainView(
                name=name, uuid=self.uuid, state=self.poll.state, reason=self.poll.reason,
                stats=self.stats, disks=self.disks, process=self.process,
                snapshots=self.poll.snapshots, image_size_bytes=self.image_size,
                filesystems=self.filesystems, openstack=self.openstack,
            )
            self._view_version = self.version
        return self._view


def _shown(poll: DomainPoll) -> tuple:
    """What a domain's view takes from its poll."""
    return poll.uuid, poll.state, poll.reason, poll.snapshots


@dataclass(frozen=True)
class LoopParts:
    adapter: LibvirtAdapter
    domains: dict[str, DomainCache]  # the polls add and drop domains, the others fill them in
    tracker: Tracker
    health: SourceHealth
    later: LaterCalls

    @classmethod
    def on(cls, adapter: LibvirtAdapter) -> LoopParts:
        """Fresh parts around one adapter: no domain known yet, every source healthy."""
        health = SourceHealth()
        return cls(adapter, {}, Tracker(), health, LaterCalls(health))
