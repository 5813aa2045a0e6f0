"""What `bench` writes: the study's table on stdout, one CSV row per operation, raw samples as
JSON.

Column names follow the exporter's operations log (`duration_seconds`, `host_dirty_peak_bytes`,
...), so a bench run and the exporter's record of the same snapshots can be compared field by
field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..context import write_rate
from .control import GuestReading
from .sampler import Sampler

GIB = 2**30


@dataclass
class OperationRecord:
    """One timed create or delete, as the client saw it."""

    run: int
    level: int
    operation: str  # create | delete
    snapshot: str
    start: float
    end: float
    outcome: str  # success | failure
    error: str = ""
    guest_before: GuestReading | None = None
    guest_after: GuestReading | None = None
    guest_cpu_ratio: float | None = None  # over the quiet second before the operation
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Setting:
    """What the study wrote down for each row besides the times."""

    domain: str
    uri: str
    kind: str
    flags: str
    domain_state: str
    levels: int
    repeat: int
    disk_cache: str
    disks: list[dict[str, str]]
    qemu_version: str
    libvirt_version: str
    host_memory_total_bytes: int | None
    hostname: str
    kernel: str
    started: float

    @property
    def kind_label(self) -> str:
        offline = "(shut off)" if self.domain_state == "shutoff" else ""
        return " ".join(x for x in (self.kind, self.flags, offline) if x)


def duration_text(seconds: float) -> str:
    """Like the study: '44.4 s', '3 min 3 s'; short ones with two decimals."""
    if seconds >= 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s"


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def table(records: list[OperationRecord], setting: Setting) -> str:
    """A Markdown table in the shape of the hand-run study: one row per run."""
    header = ["run", "guest memory used / total (GiB)", "guest CPU %",
              *[f"level {n}" for n in range(1, setting.levels + 1)], "delete (all)",
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
        levels = []
        for n in range(1, setting.levels + 1):
            op = creates.get(n)
            levels.append("" if op is None else
                          duration_text(op.duration) if op.outcome == "success" else "failed")
        if deletes and all(d.outcome == "success" for d in deletes):
            delete = duration_text(sum(d.duration for d in deletes))
        else:
            delete = "failed" if deletes else ""
        host = setting.host_memory_total_bytes
        rows.append([str(run), memory, cpu, *levels, delete, setting.kind_label,
                     setting.disk_cache, setting.qemu_version,
                     "-" if host is None else f"{host / GIB:.1f} GiB"])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def row(record: OperationRecord, setting: Setting) -> dict[str, Any]:
    """One CSV/JSON row: the operation, then its host and guest context."""
    written = record.context.get("qemu_written_bytes")
    after = record.guest_after
    return {
        "domain": setting.domain,
        "run": record.run,
        "level": record.level,
        "operation": record.operation,
        "snapshot": record.snapshot,
        "kind": setting.kind,
        "flags": setting.flags,
        "outcome": record.outcome,
        "error": record.error,
        "duration_seconds": round(record.duration, 3),
        "start": round(record.start, 3),
        "end": round(record.end, 3),
        **record.context,
        "qemu_write_rate_bytes_per_second": write_rate(written, record.duration),
        "guest_memory_used_after_bytes": after.memory_used_bytes if after else None,
        "guest_memory_source": record.guest_before.memory_source if record.guest_before else "none",
        "disk_cache": setting.disk_cache,
        "qemu_version": setting.qemu_version,
        "host_memory_total_bytes": setting.host_memory_total_bytes,
    }


def write_csv(path: Path, records: list[OperationRecord], setting: Setting) -> None:
    rows = [row(r, setting) for r in records]
    with open(path, "w", newline="") as out:
        if not rows:
            return
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, records: list[OperationRecord], setting: Setting, sampler: Sampler,
               guests: list[GuestReading]) -> None:
    """Everything behind the table: the setting, each operation, and every raw sample."""
    data = {
        "setting": asdict(setting),
        "operations": [row(r, setting) for r in records],
        "samples": {
            "host": [{"time": round(s.time, 3), **s.memory, **s.pressure} for s in sampler.host],
            "qemu": [{"time": round(s.time, 3), "pid": s.process.pid,
                      "write_bytes": s.process.write_bytes, "rss_bytes": s.process.rss_bytes,
                      "write_rate_bytes_per_second": s.write_rate,
                      "io_source": s.process.io_source} for s in sampler.qemu],
            "guest": [asdict(g) for g in guests],
        },
    }
    path.write_text(json.dumps(data, indent=1))
