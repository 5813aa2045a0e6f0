"""The bench's picture: durations by level beside the host's memory and writeback over time.

matplotlib is an optional extra (`pip install 'libvirt-snapshot-exporter[plot]'`): the exporter
and a bench without --plot never need it.
"""

from __future__ import annotations

from pathlib import Path

from .report import GIB, OperationRecord, Setting
from .sampler import Sampler

MIB = 2**20


def available() -> bool:
    """True when matplotlib can be imported (checked before a run, not after it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(path: Path, records: list[OperationRecord], setting: Setting, sampler: Sampler) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplot_mosaic([["level", "memory"], ["level", "dirty"]], figsize=(13, 7),
                                   width_ratios=(1, 2), sharex=False)
    left, memory, dirty = axes["level"], axes["memory"], axes["dirty"]
    levels = list(range(1, setting.levels + 1))
    for run in sorted({r.run for r in records}):
        for operation, style in (("create", "o-"), ("delete", "x--")):
            ops = {r.level: r for r in records
                   if r.run == run and r.operation == operation and r.outcome == "success"}
            xs = [n for n in levels if n in ops]
            if xs:
                left.plot(xs, [ops[n].duration for n in xs], style, label=f"run {run} {operation}")
    left.set_xticks(levels)
    left.set_xlabel("snapshot level")
    left.set_ylabel("duration (s)")
    left.set_ylim(bottom=0)
    left.set_title(f"{setting.domain}: {setting.kind_label}\nQEMU {setting.qemu_version}, "
                   f"cache {setting.disk_cache}", fontsize="medium")
    left.legend(fontsize="small")

    t0 = setting.started
    times = [s.time - t0 for s in sampler.host]
    for axis, unit, scale, keys in (
        (memory, "GiB", GIB, (("available", "MemAvailable"), ("free", "MemFree"),
                              ("cached", "Cached"))),
        (dirty, "MiB", MIB, (("dirty", "Dirty"), ("writeback", "Writeback"))),
    ):
        for key, label in keys:
            axis.plot(times, [s.memory.get(key, 0) / scale for s in sampler.host], label=label)
        for r in records:
            colour = "tab:red" if r.operation == "create" else "tab:grey"
            axis.axvspan(r.start - t0, r.end - t0, color=colour, alpha=0.15, lw=0)
        axis.set_ylabel(f"host memory ({unit})")
        axis.set_ylim(bottom=0)
    memory.set_title("host during the run (red: creates, grey: deletes)", fontsize="medium")
    memory.legend(fontsize="small", loc="lower left")
    dirty.set_xlabel("seconds since start")
    rate = dirty.twinx()
    qemu = [s for s in sampler.qemu if s.write_rate is not None]
    rate.plot([s.time - t0 for s in qemu], [s.write_rate / MIB for s in qemu], ":", color="black",
              label="QEMU writes (MiB/s)")
    rate.set_ylabel("QEMU writes (MiB/s)")
    rate.set_ylim(bottom=0)
    handles, labels = dirty.get_legend_handles_labels()
    extra_handles, extra_labels = rate.get_legend_handles_labels()
    dirty.legend(handles + extra_handles, labels + extra_labels, fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
