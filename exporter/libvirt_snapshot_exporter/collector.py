"""Exposition of the last published view; a scrape never calls libvirt.

Metric families are built with prometheus_client and formatted by its encoders, chosen by its
content negotiation (choose_encoder: the text format or OpenMetrics) and restricted by its
registry to `name[]` filters. In the formats Prometheus asks for (the text format and
OpenMetrics 1.0.0), without a filter, what belongs to one domain is formatted once and cached
until that domain's data changes (the collection loop prepares it in the background), so a
scrape of a thousand domains mostly concatenates text; exporter, host and in-flight series are
formatted on every scrape. Filtered scrapes and other formats build every family afresh.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from . import __version__
from .state import (
    DURATION_BUCKETS,
    DomainOperations,
    DomainView,
    Histogram,
    StateStore,
    View,
    guest_memory_used,
)
from .tracker import depth_of

D = ["domain"]
DO = ["domain", "operation"]

GUEST_BALLOON = (
    ("available", "balloon.available", "Guest-reported total usable memory."),
    ("usable", "balloon.usable", "Guest-reported memory usable without swapping."),
    ("unused", "balloon.unused", "Guest-reported free memory."),
)
GUEST_COUNTERS = (
    ("swap_in_bytes_total", "balloon.swap_in", 1024, "Guest swap-in."),
    ("swap_out_bytes_total", "balloon.swap_out", 1024, "Guest swap-out."),
    ("major_faults_total", "balloon.major_fault", 1, "Guest major page faults."),
)
NODE_MEMORY = (
    ("total", "MemTotal"), ("free", "MemFree"), ("available", "MemAvailable"),
    ("buffers", "Buffers"), ("cached", "Cached"), ("dirty", "Dirty"),
    ("writeback", "Writeback"), ("shmem", "Shmem"), ("active_file", "Active(file)"),
    ("inactive_file", "Inactive(file)"),
)
LAST_CONTEXT = (
    ("host_memory_available_start_bytes", "Host MemAvailable when the operation began."),
    ("host_memory_available_min_bytes", "Lowest host MemAvailable while it ran."),
    ("host_memory_free_min_bytes", "Lowest host MemFree while it ran."),
    ("host_dirty_peak_bytes", "Highest host Dirty while it ran."),
    ("host_writeback_peak_bytes", "Highest host Writeback while it ran."),
    ("qemu_written_bytes", "Bytes the QEMU process wrote while it ran."),
    ("qemu_write_rate_bytes_per_second", "Bytes the QEMU process wrote per second of it."),
    ("memory_stall_seconds", "Host PSI memory 'some' stall accumulated while it ran."),
    ("io_stall_seconds", "Host PSI io 'some' stall accumulated while it ran."),
    ("guest_memory_used_bytes", "Guest memory in use when it began."),
    ("guest_cpu_ratio", "Guest CPU use (share of its vCPUs) just before it began."),
)


def _histogram(name: str, doc: str, table: dict[tuple[str, ...], Histogram]) -> Metric:
    family = HistogramMetricFamily(
        name, doc, labels=["domain", "operation", "kind", "memory", "outcome"]
    )
    for labels, hist in sorted(table.items()):
        buckets = [(_bound(b), c) for b, c in zip(DURATION_BUCKETS, hist.buckets, strict=True)]
        buckets.append(("+Inf", hist.count))
        family.add_metric(list(labels), buckets, hist.total)
    return family


def _bound(value: float) -> str:
    return repr(float(value))


class SnapshotCollector:
    """Builds the metric families: global ones, and those of one domain."""

    def global_families(self, view: View, now: float) -> Iterator[Metric]:
        yield from self._self_metrics(view, now)
        yield from self._node(view)
        yield from self._in_flight(view, now)

    def domain_families(self, name: str, dom: DomainView) -> Iterator[Metric]:
        yield from self._domains({name: dom})
        yield from self._inventory({name: dom})

    def operation_families(self, ops: DomainOperations) -> Iterator[Metric]:
        yield from self._operations(ops)

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
        for name, status in sorted(view.collectors.items()):
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
        def gauge(name: str, doc: str, labels: list[str] = D) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"libvirt_domain_{name}", doc, labels=labels)

        def counter(name: str, doc: str, labels: list[str] = D) -> CounterMetricFamily:
            return CounterMetricFamily(f"libvirt_domain_{name}", doc, labels=labels)

        info = gauge("info", "Domain identity.", ["domain", "uuid"])
        state = gauge("state", "libvirt state code (1 running, 3 paused, 5 shut off...).")
        reason = gauge("state_reason", "libvirt reason code of the state.")
        cpu = counter("cpu_seconds", "Guest CPU time.")
        vcpus = gauge("vcpus", "Virtual CPUs.")
        cur = gauge("memory_balloon_current_bytes", "Balloon size (memory the guest has).")
        maxi = gauge("memory_balloon_maximum_bytes", "Maximum memory.")
        balloon = {k: gauge(f"memory_{k}_bytes", doc) for k, _, doc in GUEST_BALLOON}
        guest_counters = {k: counter(f"memory_{k[:-6]}", doc) for k, _, _, doc in GUEST_COUNTERS}
        used = gauge(
            "memory_used_bytes", "Guest memory in use, and where the figure comes from.",
            ["domain", "source"],
        )
        block_read = counter("block_read_bytes", "Bytes read from the disk.", ["domain", "target"])
        block_write = counter("block_write_bytes", "Bytes written to the disk.",
                              ["domain", "target"])
        disk = gauge(
            "disk_info", "Disk source, image format and cache mode.",
            ["domain", "target", "source", "format", "cache"],
        )
        rss = gauge("qemu_resident_memory_bytes", "RSS of the domain's QEMU process.")
        qread = counter("qemu_read_bytes", "Bytes the QEMU process read from storage.")
        qwrite = counter("qemu_write_bytes", "Bytes the QEMU process wrote to storage.")
        iosrc = gauge("qemu_io_source_info", "Where the QEMU I/O figures come from.",
                      ["domain", "source"])
        for name, dom in sorted(domains.items()):
            s = dom.stats
            info.add_metric([name, dom.uuid], 1)
            state.add_metric([name], dom.state)
            reason.add_metric([name], dom.reason)
            if "cpu.time" in s:
                cpu.add_metric([name], s["cpu.time"] / 1e9)
            if "vcpu.current" in s:
                vcpus.add_metric([name], s["vcpu.current"])
            if "balloon.current" in s:
                cur.add_metric([name], s["balloon.current"] * 1024)
            if "balloon.maximum" in s:
                maxi.add_metric([name], s["balloon.maximum"] * 1024)
            for key, stat, _ in GUEST_BALLOON:
                if stat in s:
                    balloon[key].add_metric([name], s[stat] * 1024)
            for key, stat, scale, _ in GUEST_COUNTERS:
                if stat in s:
                    guest_counters[key].add_metric([name], s[stat] * scale)
            memory = guest_memory_used(dom.stats, dom.process)
            if memory is not None:
                used.add_metric([name, memory[1]], memory[0])
            for i in range(int(s.get("block.count", 0))):
                target = s.get(f"block.{i}.name", str(i))
                if f"block.{i}.rd.bytes" in s:
                    block_read.add_metric([name, target], s[f"block.{i}.rd.bytes"])
                if f"block.{i}.wr.bytes" in s:
                    block_write.add_metric([name, target], s[f"block.{i}.wr.bytes"])
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
        yield from (info, state, reason, cpu, vcpus, cur, maxi, *balloon.values(),
                    *guest_counters.values(), used, block_read, block_write, disk, rss, qread,
                    qwrite, iosrc)

    # --- host -------------------------------------------------------------------------------

    def _node(self, view: View) -> Iterator[Metric]:
        info = GaugeMetricFamily("libvirt_node_info", "The hypervisor host.",
                                 labels=["hostname", "kernel"])
        info.add_metric([view.hostname, view.kernel], 1)
        yield info
        host = view.host
        if host is None:
            return
        for key, field_name in NODE_MEMORY:
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

    # --- operations -------------------------------------------------------------------------

    def _in_flight(self, view: View, now: float) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"libvirt_snapshot_{name}", doc, labels=DO)

        running = gauge("operation_in_progress", "1 while a snapshot operation runs.")
        started = gauge("operation_start_timestamp_seconds", "When the running operation began.")
        elapsed = gauge("operation_elapsed_seconds", "How long the running operation has run.")
        processed = gauge("operation_memory_processed_bytes",
                          "External snapshot memory phase: bytes copied so far.")
        remaining = gauge("operation_memory_remaining_bytes",
                          "External snapshot memory phase: bytes left.")
        estimate = gauge("operation_progress_estimate_ratio",
                         "Internal create: bytes QEMU wrote since the start / guest memory used.")
        for item in view.in_flight:
            op = item.operation
            labels = [op.domain, op.operation]
            running.add_metric(labels, 1)
            started.add_metric(labels, op.start)
            elapsed.add_metric(labels, max(0.0, now - op.start))
            if op.memory_processed_bytes is not None:
                processed.add_metric(labels, op.memory_processed_bytes)
                remaining.add_metric(labels, op.memory_remaining_bytes or 0)
            if item.progress_estimate is not None:
                estimate.add_metric(labels, item.progress_estimate)
        yield from (running, started, elapsed, processed, remaining, estimate)


    def _operations(self, ops: DomainOperations) -> Iterator[Metric]:
        yield _histogram(
            "libvirt_snapshot_operation_duration_seconds",
            "Duration of each finished snapshot operation.", ops.durations,
        )
        yield _histogram(
            "libvirt_snapshot_operation_guest_paused_seconds",
            "How long each snapshot operation kept the guest paused.", ops.paused,
        )

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"libvirt_snapshot_{name}", doc, labels=DO)

        last_duration = gauge("last_operation_duration_seconds",
                              "Duration of the domain's last finished operation of this type.")
        last_end = gauge("last_operation_end_timestamp_seconds", "When it ended.")
        last_success = gauge("last_operation_success", "1 if it succeeded, 0 if it failed.")
        last_depth = gauge("last_operation_depth",
                           "Depth (level) of the snapshot it created, deleted or reverted to.")
        context = {key: gauge(f"last_operation_{key}", doc) for key, doc in LAST_CONTEXT}
        for operation, entry in sorted(ops.last.items()):
            labels = [entry["domain"], operation]
            last_duration.add_metric(labels, entry["duration_seconds"])
            last_end.add_metric(labels, entry["end"])
            last_success.add_metric(labels, 1 if entry["outcome"] == "success" else 0)
            last_depth.add_metric(labels, entry["depth"])
            for key, family in context.items():
                if entry.get(key) is not None:
                    family.add_metric(labels, entry[key])
        yield from (last_duration, last_end, last_success, last_depth, *context.values())

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


class _Families:
    """What generate_latest needs: an object whose collect() yields families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def _merged(families: Iterable[Metric]) -> list[Metric]:
    """One family per name (each domain builds its own), as both formats require."""
    by_name: dict[str, Metric] = {}
    for family in families:
        merged = by_name.get(family.name)
        if merged is None:
            merged = by_name[family.name] = Metric(family.name, family.documentation,
                                                   family.type, family.unit)
        merged.samples.extend(family.samples)
    return list(by_name.values())


Encoder = Callable[[Any], bytes]
EOF_LINE = "# EOF\n"  # OpenMetrics' last line


def negotiate(accept: str) -> tuple[Encoder, str]:
    """prometheus_client's choice of format for an Accept header; its default format for a
    header it cannot parse (a version such as 'x.y' makes it raise)."""
    try:
        return choose_encoder(accept)
    except (TypeError, ValueError):
        return choose_encoder("")


# The formats Prometheus asks for (its scrape_protocols) and the default: these are kept
# formatted per domain. Any other (an odd version, an odd escaping) is built whole per scrape.
CACHED_FORMATS = frozenset(negotiate(accept)[1] for accept in (
    "", "text/plain;version=0.0.4", "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
))
TEXT_FORMAT = negotiate("")


def _format(families: Iterable[Metric], encoder: Encoder
            ) -> tuple[dict[str, str], dict[str, str], str]:
    """Exposition split by family: ({family: HELP, TYPE, UNIT lines}, {family: sample lines},
    and what ends the whole: OpenMetrics' '# EOF' line, else nothing)."""
    text = encoder(_Families(families)).decode()
    trailer = EOF_LINE if text.endswith(EOF_LINE) else ""
    text = text[:len(text) - len(trailer)]
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    family = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("# HELP "):
            family = line.split(" ", 3)[2]
            headers[family] = [line]
            samples[family] = []
        elif line.startswith("# "):
            headers[family].append(line)
        else:
            samples[family].append(line)
    return ({k: "".join(v) for k, v in headers.items()},
            {k: "".join(v) for k, v in samples.items()}, trailer)


class MetricsRenderer:
    """Renders /metrics, caching each domain's text, in each format asked for so far among
    CACHED_FORMATS, until its DomainView or its operations change (the daemon publishes the
    same objects again when nothing changed)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.collector = SnapshotCollector()
        self._lock = threading.Lock()
        self._formats: dict[str, Encoder] = {TEXT_FORMAT[1]: TEXT_FORMAT[0]}
        # name -> (what was formatted, {format: {family: sample lines}})
        self._domains: dict[str, tuple[DomainView, dict[str, dict[str, str]]]] = {}
        self._operations: dict[str, tuple[DomainOperations, dict[str, dict[str, str]]]] = {}
        self._headers: dict[str, dict[str, str]] = {}  # format -> {family: header lines}

    def prepare(self) -> None:
        """Format what changed since the last call; the collection loop calls it after each
        publish, so a scrape finds the text ready."""
        view = self.store.view
        operations = self.store.operations.domains()
        with self._lock:
            self._refresh(self._domains, view.domains, self.collector.domain_families)
            self._refresh(self._operations, operations,
                          lambda _name, ops: self.collector.operation_families(ops))

    def _refresh(self, cache: dict[str, tuple[Any, dict[str, dict[str, str]]]],
                 current: dict[str, Any], families: Callable[[str, Any], Iterable[Metric]]
                 ) -> None:
        for name in [n for n in cache if n not in current]:
            del cache[name]
        for name, data in current.items():
            cached = cache.get(name)
            if cached is None or cached[0] is not data:
                cached = cache[name] = (data, {})
            for content_type, encoder in self._formats.items():
                if content_type not in cached[1]:
                    headers, text, _ = _format(families(name, data), encoder)
                    self._headers.setdefault(content_type, {}).update(headers)
                    cached[1][content_type] = text

    def render(self, accept: str = "", names: Sequence[str] = ()) -> tuple[bytes, str]:
        """The exposition the Accept header asks for, of the families named (all if none),
        and its content type."""
        encoder, content_type = negotiate(accept)
        if not names and content_type in CACHED_FORMATS:
            with self._lock:
                self._formats.setdefault(content_type, encoder)
            return self._render_cached(encoder, content_type), content_type
        registry = CollectorRegistry(auto_describe=True)  # names for restricted_registry
        registry.register(_Families(_merged(self._all_families())))
        return encoder(registry.restricted_registry(names) if names else registry), content_type

    def _all_families(self) -> Iterator[Metric]:
        view = self.store.view
        yield from self.collector.global_families(view, time.time())
        for name, dom in sorted(view.domains.items()):
            yield from self.collector.domain_families(name, dom)
        for _, ops in sorted(self.store.operations.domains().items()):
            yield from self.collector.operation_families(ops)

    def _render_cached(self, encoder: Encoder, content_type: str) -> bytes:
        self.prepare()
        headers, text, trailer = _format(
            self.collector.global_families(self.store.view, time.time()), encoder)
        parts = [headers[f] + text[f] for f in headers]
        with self._lock:
            cached = [t[content_type] for _, t in self._domains.values()]
            cached += [t[content_type] for _, t in self._operations.values()]
            for family, header in self._headers.get(content_type, {}).items():
                parts.append(header)
                parts.extend(chunk[family] for chunk in cached if family in chunk)
        parts.append(trailer)
        return "".join(parts).encode()
