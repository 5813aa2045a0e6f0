"""What `bench` writes: the study's table on stdout, one CSV row per operation, each operation's
trace and verdict as JSON.

Column names follow the exporter's operations log (`duration_seconds`, `host_dirty_peak_bytes`,
`paused_seconds`, ...), so a bench run and the exporter's record of the same snapshots can be
compared field by field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..model.operation import FinishedOperation
from ..model.trace import Trace
from .control import GuestReading
from .settings import Setting

GIB = 2**30


@dataclass
class OperationRecord:
    """One timed create or delete, as the client saw it, and once its trace is complete, as
    the exporter would log it (`entry`, with its host figures and verdict)."""

    run: int
    level: int
    operation: str  # create | delete
    snapshot: str
    start: float
    end: float
    outcome: str  # success | failure
    setting: Setting
    disk_cache: str  # the disks' cache modes while it ran, comma-separated
    error: str = ""
    guest_before: GuestReading | None = None
    guest_after: GuestReading | None = None
    guest_cpu_ratio: float | None = None  # over the quiet time before the operation
    entry: FinishedOperation | None = None
    trace: Trace | None = None  # once complete
    plot: Path | None = None  # the trace's PNG (--plot)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class RunInfo:
    """What the study wrote down for every row besides the times and the setting."""

    domain: str
    uri: str
    domain_state: str
    levels: int
    repeat: int
    disks: list[dict[str, str]]  # as found
    qemu_version: str
    libvirt_version: str
    host_memory_total_bytes: int | None
    hostname: str
    kernel: str
    started: float

    @property
    def offline(self) -> bool:
        return self.domain_state == "shutoff"


def duration_text(seconds: float) -> str:
    """Like the study: '44.4 s', '3 min 3 s'; short ones with two decimals."""
    if seconds >= 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s"


def verdict_text(record: OperationRecord) -> str:
    """The verdict's short form, '' while there is none."""
    verdict = record.entry.verdict if record.entry is not None else None
    return "" if verdict is None else verdict.short()


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def _level_cell(op: OperationRecord | None) -> str:
    if op is None:
        return ""
    if op.outcome != "success":
        return "failed"
    verdict = verdict_text(op)
    return duration_text(op.duration) + (f" ({verdict})" if verdict else "")


def table(records: list[OperationRecord], info: RunInfo) -> str:
    """A Markdown table in the shape of the hand-run study: one row per run, each create's
    duration with its verdict (pace-setter and slowdown)."""
    header = ["run", "guest memory used / total (GiB)", "guest CPU %",
              *[f"level {n}" for n in range(1, info.levels + 1)], "delete (all)",
              "kind / flags", "cache", "QEMU", "host RAM"]
    rows = []
    for run in sorted({r.run for r in records}):
        ops = [r for r in records if r.run == run]
        creates = {r.level: r for r in ops if r.operation == "create"}
        deletes = [r for r in ops if r.operation == "delete"]
        first = creates.get(1)
        guest = first.guest_before if first else None
        memory = "-" if guest is None or guest.memory_used_bytes is None else (
            f"{_gib(guest.memory_used_bytes)} / {_gib(guest.memory_total_bytes)}")
        cpu = "-" if first is None or first.guest_cpu_ratio is None else (
            f"{first.guest_cpu_ratio * 100:.0f}")
        if deletes and all(d.outcome == "success" for d in deletes):
            delete = duration_text(sum(d.duration for d in deletes))
        else:
            delete = "failed" if deletes else ""
        host = info.host_memory_total_bytes
        rows.append([str(run), memory, cpu,
                     *[_level_cell(creates.get(n)) for n in range(1, info.levels + 1)], delete,
                     ops[0].setting.label(info.offline), ops[0].disk_cache, info.qemu_version,
                     "-" if host is None else f"{host / GIB:.1f} GiB"])
    return markdown(header, rows)


def plot_name(record: OperationRecord) -> str:
    return f"r{record.run}-l{record.level}-{record.operation}"


def row(record: OperationRecord, info: RunInfo) -> dict[str, Any]:
    """One CSV/JSON row: the operation, its host and guest figures (the exporter's log's
    fields), its verdict."""
    entry = record.entry
    after = record.guest_after
    verdict = entry.verdict if entry is not None else None
    figures = {k: getattr(entry, k) if entry is not None else None for k in (
        "host_memory_available_start_bytes", "host_memory_free_start_bytes",
        "host_memory_available_min_bytes", "host_memory_free_min_bytes",
        "host_cached_start_bytes", "host_dirty_peak_bytes", "host_writeback_peak_bytes",
        "qemu_written_bytes", "memory_stall_seconds", "io_stall_seconds",
        "guest_memory_used_bytes", "guest_memory_total_bytes", "guest_cpu_ratio",
        "qemu_write_rate_bytes_per_second")}
    paused = entry.paused_seconds if entry is not None else None
    return {
        "domain": info.domain,
        "run": record.run,
        "level": record.level,
        "operation": record.operation,
        "snapshot": record.snapshot,
        "kind": record.setting.kind,
        "flags": record.setting.flags,
        "outcome": record.outcome,
        "error": record.error,
        "duration_seconds": round(record.duration, 3),
        "start": round(record.start, 3),
        "end": round(record.end, 3),
        **figures,
        "paused_seconds": None if paused is None else round(paused, 3),
        "guest_memory_used_after_bytes": after.memory_used_bytes if after else None,
        "guest_memory_source": record.guest_before.memory_source if record.guest_before else "none",
        "disk_cache": record.disk_cache,
        "storage": entry.storage if entry is not None else None,
        "qemu_version": info.qemu_version,
        "host_memory_total_bytes": info.host_memory_total_bytes,
        "pace_setter": verdict.pace_setter if verdict else None,
        "expected_seconds": None if verdict is None or verdict.expected_seconds is None
        else round(verdict.expected_seconds, 3),
        "slowdown": None if verdict is None or verdict.slowdown is None
        else round(verdict.slowdown, 3),
        "conditions_present": " ".join(verdict.present) if verdict else None,
        "trace_plot": record.plot.name if record.plot else None,
    }


def write_csv(path: Path, records: list[OperationRecord], info: RunInfo) -> None:
    rows = [row(r, info) for r in records]
    with open(path, "w", newline="") as out:
        if not rows:
            return
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, records: list[OperationRecord], info: RunInfo,
               guests: list[GuestReading]) -> None:
    """Everything behind the table: the run, each operation with its whole verdict and its
    trace (the flight recorder's JSON, as /api/operations/<id>/trace serves it), and the
    guest readings."""
    operations = []
    for r in records:
        verdict = r.entry.verdict if r.entry is not None else None
        operations.append({**row(r, info), "verdict": verdict.to_json() if verdict else None,
                           "trace": r.trace.to_json() if r.trace else None})
    data = {
        "run": asdict(info),
        "operations": operations,
        "guest_readings": [asdict(g) for g in guests],
    }
    path.write_text(json.dumps(data, indent=1))
