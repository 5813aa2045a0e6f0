"""The metric families of the last published view, built with prometheus_client; a scrape
never calls libvirt. exposition/renderer.py formats them, caching what belongs to one domain.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from ..model.guest import guest_memory_used
from ..model.observations import depth_of
from ..model.samples import MEMINFO, HostSample
from ..store.view import (
    DomainOperations,
    DomainView,
    Histogram,
    HostOperations,
    OperationLabels,
    View,
)
from .operation_families import (
    domain_operation_families,
    host_histogram_family,
    host_operation_families,
    host_verdict_family,
    in_flight_families,
)

D = ["domain"]

GUEST_BALLOON = (
    ("available", "available_bytes", "Guest-reported total usable memory."),
    ("usable", "usable_bytes", "Guest-reported memory usable without swapping."),
    ("unused", "unused_bytes", "Guest-reported free memory."),
)
GUEST_COUNTERS = (
    ("swap_in_bytes_total", "swap_in_bytes", "Guest swap-in."),
    ("swap_out_bytes_total", "swap_out_bytes", "Guest swap-out."),
    ("major_faults_total", "major_faults", "Guest major page faults."),
)


class MetricFamilies:
    """Builds the metric families: global ones, and those of one domain."""

    def __init__(self, external_url: str, domain_histograms: bool = False) -> None:
        self.external_url = external_url  # web.external-url, or this host's address
        self.domain_histograms = domain_histograms  # collector.domain-histograms

    def global_families(self, view: View, host: HostOperations, now: float,
                        host_sample: HostSample | None) -> Iterator[Metric]:
        """host_sample: the host's figures as read for this scrape (view.host if unread)."""
        yield from self.scrape_families(view, now, host_sample)
        yield from self.host_operation_families(host)

    def scrape_families(self, view: View, now: float, host_sample: HostSample | None
                        ) -> Iterator[Metric]:
        """The global families that change with every scrape (ages, elapsed times, the host's
        figures as read for it)."""
        yield from self._self_metrics(view, now)
        url = GaugeMetricFamily(
            "libvirt_snapshot_exporter_url_info",
            "The URL users reach this exporter at (web.external-url): its pages, the runbook.",
            labels=["url"])
        url.add_metric([self.external_url], 1)
        yield url
        yield from self._node(view, host_sample)
        yield from in_flight_families(view, now)

    @staticmethod
    def host_operation_families(host: HostOperations) -> Iterator[Metric]:
        """The hypervisor's histograms and verdict counts: they change with its operations."""
        yield from host_operation_families(host)

    @staticmethod
    def host_part_families(part: str, key: OperationLabels | str, data: Histogram | dict
                           ) -> Iterator[Metric]:
        """One part of host_operation_families, as the exposition keeps it: a series of the
        table named `part` ("durations", "paused") under the labels `key`, or ("verdicts")
        the verdict counts."""
        if part == "verdicts":
            yield host_verdict_family(data)
        else:
            yield host_histogram_family(part, key, data)

    def domain_families(self, name: str, dom: DomainView) -> Iterator[Metric]:
        yield from self._domains({name: dom})
        yield from self._inventory({name: dom})

    def operation_families(self, ops: DomainOperations) -> Iterator[Metric]:
        yield from domain_operation_families(ops, self.domain_histograms, self.external_url)

    # --- exporter ---------------------------------------------------------------------------

    def _self_metrics(self, view: View, now: float) -> Iterator[Metric]:
        up = GaugeMetricFamily("libvirt_up", "1 when the connection to libvirtd works.")
        up.add_metric([], 1 if view.up else 0)
        yield up
        build = GaugeMetricFamily(
            "libvirt_snapshot_exporter_build_info", "Version of the exporter.",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        if view.versions is not None:
            versions = GaugeMetricFamily(
                "libvirt_snapshot_exporter_versions_info",
                "Versions of libvirt's library, of libvirtd and of the QEMU it runs.",
                labels=["libvirt_library", "libvirt_daemon", "qemu", "uri"],
            )
            v = view.versions
            versions.add_metric([v.library, v.daemon, v.hypervisor, view.uri], 1)
            yield versions
        yield from self._source_metrics(view, now)
        yield from self._state_metrics(view)

    @staticmethod
    def _source_metrics(view: View, now: float) -> Iterator[Metric]:
        """Each source's own success, duration and age, as node_exporter's collectors have;
        then the connection and the events that reach the exporter."""
        success = GaugeMetricFamily(
            "libvirt_snapshot_exporter_collector_success",
            "1 when the source's last collection worked.", labels=["collector"],
        )
        duration = GaugeMetricFamily(
            "libvirt_snapshot_exporter_collector_duration_seconds",
            "How long the source's last collection took.", labels=["collector"],
        )
        age = GaugeMetricFamily(
            "libvirt_snapshot_exporter_collection_age_seconds",
            "Seconds since the source last collected successfully.", labels=["collector"],
        )
        for name, status in sorted(view.sources.items()):
            success.add_metric([name], 1 if status.success else 0)
            duration.add_metric([name], status.duration)
            if status.last_success is not None:
                age.add_metric([name], max(0.0, now - status.last_success))
        yield success
        yield duration
        yield age
        reconnects = CounterMetricFamily(
            "libvirt_snapshot_exporter_reconnects",
            "Connections to libvirtd (re)established.",
        )
        reconnects.add_metric([], view.reconnects)
        yield reconnects
        events = CounterMetricFamily(
            "libvirt_snapshot_exporter_events", "libvirt events received.", labels=["type"]
        )
        for kind, count in sorted(view.events.items()):
            events.add_metric([kind], count)
        yield events

    @staticmethod
    def _state_metrics(view: View) -> Iterator[Metric]:
        """The operations log in the state directory: written, read back, entries refused."""
        oplog = GaugeMetricFamily(
            "libvirt_snapshot_exporter_state_write_success",
            "1 when the operations log was last written to the state directory.",
        )
        oplog.add_metric([], 1 if view.oplog_write_ok else 0)
        yield oplog
        oplog_errors = CounterMetricFamily(
            "libvirt_snapshot_exporter_state_write_errors",
            "Failed writes of the operations log.",
        )
        oplog_errors.add_metric([], view.oplog_write_errors)
        yield oplog_errors
        yield GaugeMetricFamily(
            "libvirt_snapshot_exporter_state_load_success",
            "1 when the operations log was read back at start (or there was none).",
            value=1 if view.oplog_load_ok else 0,
        )
        yield GaugeMetricFamily(
            "libvirt_snapshot_exporter_state_invalid_entries",
            "Lines of the operations log skipped at start as not valid entries.",
            value=view.oplog_invalid_entries,
        )

    # --- guests -----------------------------------------------------------------------------

    def _domains(self, domains: dict[str, DomainView]) -> Iterator[Metric]:
        yield from self._guest_families(domains)
        yield from self._host_side_families(domains)

    @staticmethod
    def _guest_families(domains: dict[str, DomainView]) -> Iterator[Metric]:
        """What libvirt reports of each guest: identity (and its OpenStack instance's), state,
        CPU, memory, disk I/O."""
        info = _gauge("info", "Domain identity.", ["domain", "uuid"])
        openstack = _gauge(  # the peers' (inovex's) labels
            "openstack_info",
            "The domain's OpenStack instance, from Nova's metadata in its XML (instance_id is the"
            " domain's UUID).",
            ["domain", "instance_name", "instance_id", "flavor_name", "project_name",
             "project_id", "user_name", "user_id"])
        state = _gauge("state", "libvirt state code (1 running, 3 paused, 5 shut off...).")
        reason = _gauge("state_reason", "libvirt reason code of the state.")
        cpu = _counter("cpu_seconds", "Guest CPU time.")
        vcpus = _gauge("vcpus", "Virtual CPUs.")
        cur = _gauge("memory_balloon_current_bytes", "Balloon size (memory the guest has).")
        maxi = _gauge("memory_balloon_maximum_bytes", "Maximum memory.")
        balloon = {k: _gauge(f"memory_{k}_bytes", doc) for k, _, doc in GUEST_BALLOON}
        guest_counters = {k: _counter(f"memory_{k[:-6]}", doc) for k, _, doc in GUEST_COUNTERS}
        used = _gauge(
            "memory_used_bytes", "Guest memory in use, and where the figure comes from.",
            ["domain", "source"],
        )
        block_read = _counter("block_read_bytes", "Bytes read from the disk.", ["domain", "target"])
        block_write = _counter("block_write_bytes", "Bytes written to the disk.",
                               ["domain", "target"])
        for name, dom in sorted(domains.items()):
            s = dom.stats
            info.add_metric([name, dom.uuid], 1)
            if (o := dom.openstack) is not None:
                openstack.add_metric([name, o.name, dom.uuid, o.flavor_name, o.project_name,
                                      o.project_id, o.user_name, o.user_id], 1)
            state.add_metric([name], dom.state)
            reason.add_metric([name], dom.reason)
            if s.cpu_time_ns is not None:
                cpu.add_metric([name], s.cpu_time_ns / 1e9)
            if s.vcpus is not None:
                vcpus.add_metric([name], s.vcpus)
            if s.balloon_current_bytes is not None:
                cur.add_metric([name], s.balloon_current_bytes)
            if s.balloon_maximum_bytes is not None:
                maxi.add_metric([name], s.balloon_maximum_bytes)
            for families, table in ((balloon, GUEST_BALLOON), (guest_counters, GUEST_COUNTERS)):
                for key, attribute, _ in table:
                    value = getattr(s, attribute)
                    if value is not None:
                        families[key].add_metric([name], value)
            memory = guest_memory_used(dom.stats, dom.process)
            if memory is not None:
                used.add_metric([name, memory[1]], memory[0])
            for disk in s.disks:
                if disk.read_bytes is not None:
                    block_read.add_metric([name, disk.target], disk.read_bytes)
                if disk.write_bytes is not None:
                    block_write.add_metric([name, disk.target], disk.write_bytes)
        yield from (info, openstack, state, reason, cpu, vcpus, cur, maxi, *balloon.values(),
                    *guest_counters.values(), used, block_read, block_write)

    @staticmethod
    def _host_side_families(domains: dict[str, DomainView]) -> Iterator[Metric]:
        """What this host knows of each domain: its disks and its QEMU process."""
        disk = _gauge(
            "disk_info", "Disk source, image format and cache mode.",
            ["domain", "target", "source", "format", "cache"],
        )
        rss = _gauge("qemu_resident_memory_bytes", "RSS of the domain's QEMU process.")
        qread = _counter("qemu_read_bytes", "Bytes the QEMU process read from storage.")
        qwrite = _counter("qemu_write_bytes", "Bytes the QEMU process wrote to storage.")
        iosrc = _gauge("qemu_io_source_info", "Where the QEMU I/O figures come from.",
                       ["domain", "source"])
        for name, dom in sorted(domains.items()):
            for d in dom.disks:
                disk.add_metric([name, d.target, d.source, d.format, d.cache], 1)
            if dom.process is not None:
                p = dom.process
                rss.add_metric([name], p.rss_bytes)
                if p.read_bytes is not None:
                    qread.add_metric([name], p.read_bytes)
                if p.write_bytes is not None:
                    qwrite.add_metric([name], p.write_bytes)
                iosrc.add_metric([name, p.io_source], 1)
        yield from (disk, rss, qread, qwrite, iosrc)

    # --- host -------------------------------------------------------------------------------

    def _node(self, view: View, host: HostSample | None) -> Iterator[Metric]:
        info = GaugeMetricFamily("libvirt_node_info", "The hypervisor host.",
                                 labels=["hostname", "kernel"])
        info.add_metric([view.hostname, view.kernel], 1)
        yield info
        if host is None:
            return
        for key, field_name in MEMINFO.items():
            if key in host.memory:
                yield GaugeMetricFamily(
                    f"libvirt_node_memory_{key}_bytes", f"/proc/meminfo {field_name}.",
                    value=host.memory[key],
                )
        for key, doc in (
            ("pageout", "/proc/vmstat pgpgout as bytes."),
            ("dirtied", "/proc/vmstat nr_dirtied as bytes."),
            ("written", "/proc/vmstat nr_written as bytes."),
        ):
            if key in host.vmstat:
                yield CounterMetricFamily(
                    f"libvirt_node_memory_{key}_bytes", doc, value=host.vmstat[key]
                )
        for key, value in sorted(host.dirty_limits.items()):
            scaled = value / 100 if key.endswith("ratio") else value
            yield GaugeMetricFamily(f"libvirt_node_vm_{key}", f"vm.{key} (ratios as 0-1).",
                                    value=scaled)
        for key, name in (
            ("memory_some", "memory_waiting"), ("memory_full", "memory_stalled"),
            ("io_some", "io_waiting"), ("io_full", "io_stalled"),
        ):
            if key in host.pressure:
                yield CounterMetricFamily(
                    f"libvirt_node_pressure_{name}_seconds",
                    f"PSI {key.replace('_', ' ')} stall time.", value=host.pressure[key],
                )

    # --- inventory --------------------------------------------------------------------------

    def _inventory(self, domains: dict[str, DomainView]) -> Iterator[Metric]:
        count = GaugeMetricFamily("libvirt_snapshots", "Snapshots the domain has.", labels=D)
        depth = GaugeMetricFamily("libvirt_snapshot_current_depth",
                                  "Depth of the current snapshot (root = 1; 0 = none).", labels=D)
        max_depth = GaugeMetricFamily("libvirt_snapshot_max_depth",
                                      "Depth of the deepest snapshot.", labels=D)
        oldest = GaugeMetricFamily("libvirt_snapshot_oldest_creation_timestamp_seconds",
                                   "Creation time of the oldest snapshot.", labels=D)
        current = GaugeMetricFamily("libvirt_snapshot_current_info",
                                    "The current snapshot's name.", labels=["domain", "snapshot"])
        image = GaugeMetricFamily("libvirt_domain_image_size_bytes",
                                  "Bytes the domain's disk images occupy on disk.", labels=D)
        free = GaugeMetricFamily(
            "libvirt_domain_image_filesystem_free_bytes",
            "Free bytes on each filesystem holding the domain's images or memory files.",
            labels=["domain", "mountpoint"],
        )
        for name, dom in sorted(domains.items()):
            tree = {s.name: s for s in dom.snapshots}
            current_name = next((s.name for s in dom.snapshots if s.current), None)
            count.add_metric([name], len(tree))
            depth.add_metric([name], depth_of(tree, current_name))
            max_depth.add_metric([name], max((depth_of(tree, n) for n in tree), default=0))
            if tree:
                oldest.add_metric([name], min(s.creation_time for s in tree.values()))
            if current_name is not None:
                current.add_metric([name, current_name], 1)
            if dom.image_size_bytes is not None:
                image.add_metric([name], dom.image_size_bytes)
            for mountpoint, free_bytes in sorted(dom.filesystems.items()):
                free.add_metric([name, mountpoint], free_bytes)
        yield from (count, depth, max_depth, oldest, current, image, free)


def _gauge(name: str, doc: str, labels: list[str] = D) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"libvirt_domain_{name}", doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str] = D) -> CounterMetricFamily:
    return CounterMetricFamily(f"libvirt_domain_{name}", doc, labels=labels)
