"""The bench's pictures: durations by level beside the host's memory and writeback over the
run, and one picture of each operation's trace with the charts of the exporter's operation
page (verdict/explain.py's charts: the same series, derived by the same code) and its verdict in
words.

matplotlib is an optional extra (`pip install 'libvirt-snapshot-exporter[plot]'`): the exporter
and a bench without --plot never need it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..model.trace import Point
from ..verdict.explain import MB, charts, failure_sentence, pace_sentence
from .report import OperationRecord, RunInfo, duration_text, plot_name, verdict_text

GB = 10**9  # decimal, as the operation page's charts and words


def available() -> bool:
    """True when matplotlib can be imported (checked before a run, not after it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def trace_path(path: Path, record: OperationRecord) -> Path:
    """Where the picture of an operation's trace goes: beside the run's, named after it."""
    return path.with_name(f"{path.stem}-{plot_name(record)}{path.suffix or '.png'}")


GAP_SECONDS = 1.0  # between two points of the run: nothing traced (a cache mode change)


def _timeline(records: Sequence[OperationRecord]) -> list[Point | None]:
    """The run's points, from its traces (they overlap: one host reading is in each trace
    recording at that moment, with the same time), None where nothing was traced between
    two of them, so that no line is drawn across."""
    points: dict[float, Point] = {}
    for r in records:
        for p in r.trace.points if r.trace else ():
            points.setdefault(p.t, p)
    timeline: list[Point | None] = []
    for t in sorted(points):
        if timeline and t - timeline[-1].t > GAP_SECONDS:
            timeline.append(None)
        timeline.append(points[t])
    return timeline


NAN = float("nan")


def _durations(axis: Any, records: list[OperationRecord], info: RunInfo) -> None:
    """Each run's creates and deletes by level, a colour per run."""
    levels = list(range(1, info.levels + 1))
    for run in sorted({r.run for r in records}):
        ops = [r for r in records if r.run == run]
        for operation, style in (("create", "o-"), ("delete", "x--")):
            done = {r.level: r for r in ops if r.operation == operation and r.outcome == "success"}
            xs = [n for n in levels if n in done]
            if xs:
                axis.plot(xs, [done[n].duration for n in xs], style, color=f"C{(run - 1) % 10}",
                          label=f"run {run} {operation} ({ops[0].setting.label(info.offline)}, "
                          f"cache {ops[0].disk_cache})")
    axis.set_xticks(levels)
    axis.set_xlabel("snapshot level")
    axis.set_ylabel("duration (s)")
    axis.set_ylim(bottom=0)
    axis.set_title(f"{info.domain}\nQEMU {info.qemu_version}", fontsize="medium")
    axis.legend(fontsize="x-small")


def _qemu_rate(timeline: list[Point | None], t0: float) -> tuple[list[float], list[float]]:
    """QEMU's write rate (MB/s) between the points of the run: none across a gap, or across
    a restart of QEMU (its counter starts again)."""
    qemu = [p for p in timeline if p is None or "qemu_write_bytes" in p.counters]
    xs, ys = [], []
    for a, b in zip(qemu, qemu[1:], strict=False):
        written = None if a is None or b is None else (
            b.counters["qemu_write_bytes"] - a.counters["qemu_write_bytes"])
        ok = written is not None and written >= 0 and b.t > a.t
        xs.append(b.t - t0 if ok else NAN)
        ys.append(written / (b.t - a.t) / MB if ok else NAN)
    return xs, ys


def write_plot(path: Path, records: list[OperationRecord], info: RunInfo) -> None:
    plt = _pyplot()
    fig, axes = plt.subplot_mosaic([["level", "memory"], ["level", "dirty"]], figsize=(13, 7),
                                   width_ratios=(1, 2), sharex=False)
    memory, dirty = axes["memory"], axes["dirty"]
    _durations(axes["level"], records, info)
    t0 = info.started
    timeline = _timeline(records)
    times = [NAN if p is None else p.t - t0 for p in timeline]
    for axis, unit, scale, keys in (
        (memory, "GB", GB, (("available", "MemAvailable"), ("free", "MemFree"),
                            ("cached", "Cached"))),
        (dirty, "MB", MB, (("dirty", "Dirty"), ("writeback", "Writeback"))),
    ):
        for key, label in keys:
            axis.plot(times, [p.gauges[key] / scale if p is not None and key in p.gauges else NAN
                              for p in timeline], label=label)
        for r in records:
            colour = "tab:red" if r.operation == "create" else "tab:grey"
            axis.axvspan(r.start - t0, r.end - t0, color=colour, alpha=0.15, lw=0)
        axis.set_ylabel(f"host memory ({unit})")
        axis.set_ylim(bottom=0)
    memory.set_title("host during the run (red: creates, grey: deletes)", fontsize="medium")
    memory.legend(fontsize="small", loc="lower left")
    dirty.set_xlabel("seconds since start")
    rate = dirty.twinx()
    rate.plot(*_qemu_rate(timeline, t0), ":", color="black", label="QEMU writes (MB/s)")
    rate.set_ylabel("QEMU writes (MB/s)")
    rate.set_ylim(bottom=0)
    handles, labels = dirty.get_legend_handles_labels()
    extra_handles, extra_labels = rate.get_legend_handles_labels()
    dirty.legend(handles + extra_handles, labels + extra_labels, fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_trace_plot(path: Path, record: OperationRecord, info: RunInfo) -> None:
    """One operation's trace: the operation page's charts, the operation shaded from its
    start (0 s) to its end, its verdict in words above."""
    plt = _pyplot()
    data = charts(record.trace)
    panels = data["charts"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.1 * len(panels) + 1.4),
                             sharex=True, squeeze=False)
    for axis, chart in zip(axes[:, 0], panels, strict=True):
        for series in chart["series"]:
            axis.plot(data["x"], [NAN if v is None else v for v in series["values"]],
                      label=series["label"])
        axis.axvspan(0, data["end"], color="tab:red", alpha=0.12, lw=0)
        axis.set_ylabel(chart["unit"])
        axis.set_ylim(bottom=0)
        axis.set_title(chart["title"], fontsize="small", loc="left")
        axis.legend(fontsize="x-small", loc="upper right")
    axes[-1, 0].set_xlabel("seconds from the start of the operation (shaded)")
    entry = record.entry
    heading = (f"{info.domain}: {record.operation} {record.snapshot} "
               f"({record.setting.label(info.offline)}, cache {record.disk_cache}): "
               f"{duration_text(record.duration)}" + (f", {verdict_text(record)}"
                                                      if verdict_text(record) else ""))
    words = "no verdict"
    if entry is not None and entry.outcome != "success":
        words = failure_sentence(entry)  # a failed operation is not judged
    elif entry is not None and entry.verdict is not None:
        words = pace_sentence(entry.verdict, entry)
    fig.suptitle(heading + "\n" + "\n".join(textwrap.wrap(words, 130)), fontsize="small",
                 x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
