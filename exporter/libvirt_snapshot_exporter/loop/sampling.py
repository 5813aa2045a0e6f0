"""The sampling steps beside the domain polls: guest statistics, QEMU processes, disks and
images of each domain, and the host's memory. Each is a source of its own (`guests`,
`qemu_process`, `images`, `host`); a domain whose figures cannot be read holds up no other
domain and no other source.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import time
from typing import TYPE_CHECKING

from ..model.printable import printable
from ..model.samples import HostSample
from ..sources.host import HostReader
from ..sources.images import image_usage
from ..sources.qemu_process import ProcessReader
from .context_keeper import ContextKeeper
from .domain_cache import DomainCache, LoopParts
from .source_health import Source

if TYPE_CHECKING:
    from ..verdict.recorder import FlightRecorder

log = logging.getLogger(__name__)

DISK_REFRESH_SECONDS = 60.0


class Sampler:
    """Fills in the figures of the domains of `parts` (the polls add and drop them) and
    keeps the last host sample; hands the samples an operation's context needs to `contexts`,
    and the host's to the flight recorder, whose ring holds the seconds before an operation."""

    def __init__(self, parts: LoopParts, host: HostReader, processes: ProcessReader,
                 contexts: ContextKeeper, recorder: FlightRecorder | None) -> None:
        self.adapter, self.domains, self.tracker = parts.adapter, parts.domains, parts.tracker
        self.health, self.later = parts.health, parts.later
        self.host = host
        self.processes = processes
        self.contexts = contexts
        self.recorder = recorder
        self.host_sample: HostSample | None = None
        self._stats_started = 0.0

    def sample_domains(self, now: float) -> None:
        """Every domain's figures: guest statistics (one bulk call, handled when it answers),
        QEMU processes and disks, then images."""
        self._stats_started = time.time()
        self.later.start("bulk_stats", self.adapter.bulk_stats, self._got_stats, Source.GUESTS)
        start = time.time()
        for name, cache in self.domains.items():
            self.health.run(Source.QEMU_PROCESS,
                            functools.partial(self._read_process, name, cache, now))
            self._refresh_disks(name, cache, now)
        self.health.mark(Source.QEMU_PROCESS, True, time.time() - start)
        start = time.time()
        for name, cache in self.domains.items():
            self.health.run(Source.IMAGES, functools.partial(self._read_images, name, cache))
        self.health.mark(Source.IMAGES, True, time.time() - start)

    def refresh_outdated_disks(self, now: float) -> None:
        """Between samplings, the disks of domains whose QEMU changed: a create right after a
        start (bench's cache switch) is to carry the cache modes it runs with."""
        for name, cache in self.domains.items():
            if cache.xml_outdated():
                self._refresh_disks(name, cache, now)

    def sample_busy_processes(self, now: float) -> None:
        """Between full samplings, the processes of domains with an operation in flight: what
        QEMU writes during it."""
        for name, cache in self.domains.items():
            if self.tracker.is_busy(name):
                self._read_process(name, cache, now)

    def sample_host(self) -> None:
        start = time.time()
        self.host_sample = None  # none rather than stale figures while the host source fails
        sample = self.host.read()
        self.contexts.add_host(sample)
        self.host_sample = sample
        if self.recorder is not None:
            self.recorder.note_host(sample)
        self.health.mark(Source.HOST, True, time.time() - start)

    def _got_stats(self, future: concurrent.futures.Future) -> None:
        now = time.time()
        try:
            stats, ok = future.result(), True
        except Exception as exc:  # noqa: BLE001
            log.warning("guest statistics failed: %s", exc)
            stats, ok = {}, False
        for name, values in stats.items():
            cache = self.domains.get(name)
            if cache is not None:
                cache.update_stats(now, values)
        self.health.mark(Source.GUESTS, ok, now - self._stats_started)

    def _read_process(self, name: str, cache: DomainCache, now: float) -> None:
        cache.update_process(self.processes.read(cache.pid) if cache.pid else None)
        if cache.process is not None:
            self.contexts.add_process(name, now, cache.process)

    def _refresh_disks(self, name: str, cache: DomainCache, now: float) -> None:
        """Disk XML only while the domain is idle: from libvirt 11.0 it waits for a snapshot."""
        if self.tracker.is_busy(name) or (now - cache.disks_read_at < DISK_REFRESH_SECONDS
                                          and not cache.xml_outdated()):
            return
        pid = cache.pid

        def got(future: concurrent.futures.Future) -> None:
            try:
                definition = future.result()
            except Exception as exc:  # noqa: BLE001
                log.debug("disks of %s: %s", printable(name), printable(exc))
                return
            cache.update_disks(definition.disks, now, pid)
            cache.update_openstack(definition.openstack)

        self.later.start(f"xml:{name}", lambda: self.adapter.domain_definition(name), got,
                         Source.DOMAINS)

    def _read_images(self, name: str, cache: DomainCache) -> None:
        """A file that cannot be read fails the images source; the figures stay as they were."""
        usage = image_usage(cache.image_paths())
        if usage.errors:
            raise OSError(f"images of {name}: {'; '.join(usage.errors)}")
        cache.update_images(usage.size_bytes, usage.free_bytes)
