"""Metric families of operations (a snapshot's, a save's, a restore's): finished ones
(histograms, per-domain counts and sums, the last operation's figures) and those in flight.

Histogram buckets live where they are aggregated: per hypervisor, without a domain label
(`libvirt_snapshot_operation_*`). Each domain has a count and a sum of the same observations
(`libvirt_snapshot_domain_operation_*`, a summary without quantiles), or, with
`collector.domain-histograms`, a histogram of that name with its buckets: the queries of
`_count` and `_sum` read either alike.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from ..model.operation import LAST_OPERATION_FIGURES
from ..store.view import (
    DURATION_BUCKETS,
    DomainOperations,
    Histogram,
    HistogramTable,
    HostOperations,
    OperationLabels,
    View,
)

OPERATION_LABELS = ["operation", "kind", "memory", "outcome"]
DO = ["domain", "operation"]
DURATION_DOC = ("Duration of each finished operation (a snapshot's create, delete or revert, a save, "
                "a restore)")
PAUSED_DOC = "How long each operation kept the guest paused"


def _histogram(name: str, doc: str, table: HistogramTable, domain: str | None = None
               ) -> Metric:
    """A histogram family of the table; one domain's (with a domain label) if given."""
    prefix = [] if domain is None else [domain]
    family = HistogramMetricFamily(name, doc, labels=["domain"] * len(prefix) + OPERATION_LABELS)
    for labels, hist in sorted(table.items()):
        buckets = [(repr(float(b)), c) for b, c in zip(DURATION_BUCKETS, hist.buckets,
                                                       strict=True)]
        buckets.append(("+Inf", hist.count))
        family.add_metric([*prefix, *labels], buckets, hist.total)
    return family


def _summary(name: str, doc: str, table: HistogramTable, domain: str) -> Metric:
    family = SummaryMetricFamily(name, doc, labels=["domain", *OPERATION_LABELS])
    for labels, hist in sorted(table.items()):
        family.add_metric([domain, *labels], hist.count, hist.total)
    return family


HOST_HISTOGRAMS = {  # HostOperations' tables: (family, help)
    "durations": ("libvirt_snapshot_operation_duration_seconds", f"{DURATION_DOC}, all domains."),
    "paused": ("libvirt_snapshot_operation_guest_paused_seconds", f"{PAUSED_DOC}, all domains."),
}


def host_operation_families(host: HostOperations) -> Iterator[Metric]:
    """The hypervisor's histograms (every domain's operations, buckets 0.1 s to 1 h) and
    verdict counts."""
    for table, (name, doc) in HOST_HISTOGRAMS.items():
        yield _histogram(name, doc, getattr(host, table))
    yield host_verdict_family(host.verdicts)


def host_histogram_family(table: str, labels: OperationLabels, histogram: Histogram) -> Metric:
    """One series of one of the hypervisor's histograms (HOST_HISTOGRAMS): what the exposition
    formats anew when an operation changes it, the others kept as they were."""
    name, doc = HOST_HISTOGRAMS[table]
    return _histogram(name, doc, {labels: histogram})


def host_verdict_family(verdicts: dict[tuple[str, str], int]) -> Metric:
    family = CounterMetricFamily(
        "libvirt_snapshot_operation_verdicts",
        "Finished operations by what set their pace (their verdict), all domains.",
        labels=["operation", "pace_setter"])
    for (operation, pace), count in sorted(verdicts.items()):
        family.add_metric([operation, pace], count)
    return family


def domain_operation_families(ops: DomainOperations, buckets: bool, external_url: str
                              ) -> Iterator[Metric]:
    """One domain's counts and sums (with buckets if asked) and its last operations, each
    with the URL of its page under the exporter's external URL."""
    for name, doc, table in (
        ("libvirt_snapshot_domain_operation_duration_seconds", DURATION_DOC, ops.durations),
        ("libvirt_snapshot_domain_operation_guest_paused_seconds", PAUSED_DOC, ops.paused),
    ):
        if buckets:
            yield _histogram(name, f"{doc}, per domain.", table, ops.domain)
        else:
            yield _summary(name, f"{doc}, per domain (count and sum).", table, ops.domain)
    yield from _last_operations(ops, external_url)


def _last_operations(ops: DomainOperations, external_url: str) -> Iterator[Metric]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"libvirt_snapshot_{name}", doc, labels=DO)

    info = GaugeMetricFamily(
        "libvirt_snapshot_last_operation_info",
        "The domain's last finished operation of this type: its id and the URL of its page "
        "(verdict and trace), for alerts and dashboards to link.", labels=[*DO, "id", "url"])
    last_duration = gauge("last_operation_duration_seconds",
                          "Duration of the domain's last finished operation of this type.")
    last_end = gauge("last_operation_end_timestamp_seconds", "When it ended.")
    last_success = gauge("last_operation_success", "1 if it succeeded, 0 if it failed.")
    last_paused = gauge("last_operation_guest_paused_seconds", "How long it kept the guest paused.")
    last_down = gauge("last_operation_guest_down_seconds",
                      "A restore's: how long the guest was stopped, from its save's start "
                      "until this restore resumed it.")
    last_depth = gauge("last_operation_depth",
                       "Depth (the study's level) of the snapshot it created, deleted or reverted "
                       "to; none for a save or a restore.")
    context = {key: gauge(f"last_operation_{key}", doc) for key, doc in LAST_OPERATION_FIGURES}
    pace = GaugeMetricFamily(
        "libvirt_snapshot_last_operation_verdict_info",
        "What set the pace of the domain's last operation of this type (see README, Verdict).",
        labels=[*DO, "pace_setter"])
    conditions = GaugeMetricFamily(
        "libvirt_snapshot_last_operation_condition_info",
        "A condition present during it that did not set its pace (throttling, reclaim...).",
        labels=[*DO, "condition"])
    expected = gauge("last_operation_expected_duration_seconds",
                     "How long it should have taken: its bytes at this host's usual rate.")
    slowdown = gauge("last_operation_slowdown_ratio", "Its duration over the expected one.")
    for operation, entry in sorted(ops.last.items()):
        labels = [entry.domain, operation]
        info.add_metric([*labels, entry.id, f"{external_url}/operations/{entry.id}"], 1)
        last_duration.add_metric(labels, entry.duration_seconds)
        last_end.add_metric(labels, entry.end)
        last_success.add_metric(labels, 1 if entry.outcome == "success" else 0)
        if entry.paused_seconds is not None:
            last_paused.add_metric(labels, entry.paused_seconds)
        if entry.down_seconds is not None:
            last_down.add_metric(labels, entry.down_seconds)
        if entry.depth is not None:
            last_depth.add_metric(labels, entry.depth)
        for key, family in context.items():
            if getattr(entry, key) is not None:
                family.add_metric(labels, getattr(entry, key))
        verdict = entry.verdict
        if verdict is not None:
            pace.add_metric([*labels, verdict.pace_setter], 1)
            for condition in verdict.present:
                conditions.add_metric([*labels, condition], 1)
            if verdict.expected_seconds is not None:
                expected.add_metric(labels, verdict.expected_seconds)
            if verdict.slowdown is not None:
                slowdown.add_metric(labels, verdict.slowdown)
    yield from (info, last_duration, last_end, last_success, last_paused, last_down, last_depth,
                *context.values(), pace, conditions, expected, slowdown)


def in_flight_families(view: View, now: float) -> Iterator[Metric]:
    """Operations running now: their series exist only while they run."""
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"libvirt_snapshot_{name}", doc, labels=DO)

    running = gauge("operation_in_progress", "1 while an operation runs.")
    running_id = GaugeMetricFamily(
        "libvirt_snapshot_operation_in_progress_info",
        "The running operation's id: its page, once it has ended, is /operations/<id>.",
        labels=[*DO, "id"])
    started = gauge("operation_start_timestamp_seconds", "When the running operation began.")
    elapsed = gauge("operation_elapsed_seconds", "How long the running operation has run.")
    processed = gauge("operation_memory_processed_bytes",
                      "External snapshot memory phase: bytes copied so far.")
    remaining = gauge("operation_memory_remaining_bytes",
                      "External snapshot memory phase: bytes left.")
    estimate = gauge("operation_progress_estimate_ratio",
                     "Internal create: bytes QEMU wrote since the start / guest memory used.")
    for item in view.in_flight:
        op = item.facts
        labels = [op.domain, op.operation]
        running.add_metric(labels, 1)
        running_id.add_metric([*labels, item.id], 1)
        started.add_metric(labels, op.start)
        elapsed.add_metric(labels, max(0.0, now - op.start))
        if op.memory_processed_bytes is not None:
            processed.add_metric(labels, op.memory_processed_bytes)
            remaining.add_metric(labels, op.memory_remaining_bytes or 0)
        if item.progress_estimate is not None:
            estimate.add_metric(labels, item.progress_estimate)
    yield from (running, running_id, started, elapsed, processed, remaining, estimate)
