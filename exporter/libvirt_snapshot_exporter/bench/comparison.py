"""The study's open questions side by side: one row per compared setting (kind, cache mode)
with its creates' and deletes' durations, how long the guest was paused, and what set the
pace (pure: from bench's records)."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence

from .report import OperationRecord, duration_text, markdown

MIB = 2**20


def groups(records: Sequence[OperationRecord],
           offline: bool) -> list[tuple[str, str, list[OperationRecord]]]:
    """(kind / flags, cache, its records) per setting, in the order they ran. A setting is
    what the operations ran under: the same kind and flags with the same cache modes are one,
    whether the mode was asked for or found."""
    found: dict[tuple[str, str], list[OperationRecord]] = {}
    for r in records:
        found.setdefault((r.setting.label(offline), r.disk_cache), []).append(r)
    return [(label, cache, ops) for (label, cache), ops in found.items()]


def _p50_max(values: Sequence[float], text: Callable[[float], str] = duration_text) -> str:
    if not values:
        return "-"
    return f"{text(statistics.median(values))} / {text(max(values))}"


def _slowdown(value: float) -> str:
    return f"{value:.1f}x"


def _verdicts(creates: Sequence[OperationRecord]) -> str:
    """'size 2, storage-slow 1': how many creates each pace-setter paced, most first."""
    counts = Counter(r.entry.verdict.pace_setter for r in creates
                     if r.entry is not None and r.entry.verdict is not None)
    return ", ".join(f"{pace} {n}" for pace, n in
                     sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def table(records: Sequence[OperationRecord], offline: bool) -> str:
    header = ["kind / flags", "cache", "creates", "create p50 / max", "guest paused p50 / max",
              "delete p50 / max", "QEMU wrote p50", "verdicts (creates)", "slowdown p50 / max"]
    rows = []
    for label, cache, ops in groups(records, offline):
        creates = [r for r in ops if r.operation == "create"]
        done = [r for r in creates if r.outcome == "success"]
        deletes = [r.duration for r in ops if r.operation == "delete" and r.outcome == "success"]
        failed = len(creates) - len(done)
        paused = [r.entry.paused_seconds for r in done
                  if r.entry is not None and r.entry.paused_seconds is not None]
        written = [r.entry.qemu_written_bytes for r in done
                   if r.entry is not None and r.entry.qemu_written_bytes is not None]
        slowdowns = [r.entry.verdict.slowdown for r in done if r.entry is not None
                     and r.entry.verdict is not None and r.entry.verdict.slowdown is not None]
        rows.append([
            label, cache, f"{len(done)}" + (f" ({failed} failed)" if failed else ""),
            _p50_max([r.duration for r in done]), _p50_max(paused), _p50_max(deletes),
            f"{statistics.median(written) / MIB:.0f} MiB" if written else "-",
            _verdicts(done), _p50_max(slowdowns, _slowdown),
        ])
    return markdown(header, rows)
