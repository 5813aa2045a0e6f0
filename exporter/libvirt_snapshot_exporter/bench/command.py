"""`libvirt-snapshot-exporter bench DOMAIN`: the hand-run snapshot study as one command.

For each repeat it creates a chain of snapshots (each the child of the previous one), timing
every create from the client side while the host and QEMU are sampled, then deletes the chain,
timing that too, and leaves the domain as it found it: no snapshot and no file of its own left,
on success, on error and on Ctrl-C. libvirt calls run on worker threads so that Ctrl-C is
answered at once even while a call that cannot be aborted (an internal create) is in flight.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..host import HostReader
from ..observations import Versions
from ..state import cpu_ratio
from . import plot
from .checks import EXIT_USAGE, PROG, UsageError, check_arguments, confirm, parser, preflight
from .console import Abandoned, Interrupts, Progress
from .control import Control, ControlError, Domain, GuestReading, SnapshotPlan, plan_snapshot
from .report import OperationRecord, Setting, table, write_csv, write_json
from .sampler import Sampler

SETTLE_SECONDS = 1.0  # quiet time sampled before and after every operation
SAMPLE_INTERVAL = 0.25
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


class Bench:
    def __init__(self, domain: Domain, args: argparse.Namespace, setting: Setting,
                 sampler: Sampler, interrupts: Interrupts, progress: Progress) -> None:
        self.domain = domain
        self.args = args
        self.setting = setting
        self.sampler = sampler
        self.interrupts = interrupts
        self.progress = progress
        self.disks = domain.disks()
        self.found_snapshots = domain.snapshot_names()
        self.found_current = domain.current_snapshot()
        self.found_sources = self._sources()
        self.records: list[OperationRecord] = []
        self.guests: list[GuestReading] = []
        self.made: list[SnapshotPlan] = []  # created or being created, not yet deleted
        self._guest_reading: GuestReading | None = None
        self._where = ""  # run and level, for the progress line
        self._stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(setting.started))

    def _plan(self, run: int, level: int) -> SnapshotPlan:
        name = f"bench-{self._stamp}-r{run}-l{level}"
        return plan_snapshot(self.domain.name, name, self.args.kind, self.args.live, self.disks)

    def _sources(self) -> tuple[list[str], list[str]]:
        live = [d.source for d in self.domain.disks()]
        persistent = [d.source for d in self.domain.disks(inactive=True)] if (
            self.domain.persistent()) else []
        return live, persistent

    # --- waiting, with Ctrl-C answered at once -----------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any]) -> tuple[float, float, Any, Exception | None]:
        """Run a libvirt call on a worker thread; returns (start, end, result, error)."""
        box: dict[str, Any] = {}

        def work() -> None:
            box["start"] = time.time()
            try:
                box["result"] = fn()
            except Exception as exc:  # noqa: BLE001 - handed to the main thread
                box["error"] = exc
            box["end"] = time.time()

        self.interrupts.doing = what
        worker = threading.Thread(target=work, name="bench-call", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            if self.interrupts.count > 1:
                raise Abandoned
            self._show(what, box.get("start"))
        self.interrupts.doing = ""
        error = box.get("error")
        if error is not None and not isinstance(error, ControlError):
            raise error
        return box["start"], box["end"], box.get("result"), error

    def _show(self, what: str, started: float | None) -> None:
        if not self.progress.enabled:
            return
        host, qemu = self.sampler.latest()
        parts = [self._where, what]
        if started is not None:
            parts.append(f"{time.time() - started:6.1f} s")
        if host is not None:
            m = host.memory
            parts.append(f"MemFree {m.get('free', 0) / 2**30:.2f} GiB  Dirty "
                         f"{m.get('dirty', 0) / 2**20:.0f} MiB  Writeback "
                         f"{m.get('writeback', 0) / 2**20:.0f} MiB")
        if qemu is not None and qemu.write_rate is not None:
            parts.append(f"QEMU writes {qemu.write_rate / 2**20:.0f} MiB/s")
        self.progress.show("  ".join(p for p in parts if p))

    def _settle(self, stop_on_interrupt: bool) -> None:
        """Sample a quiet second; a create phase stops early on Ctrl-C."""
        until = time.time() + SETTLE_SECONDS
        while time.time() < until:
            if self.interrupts.count > 1:
                raise Abandoned
            if stop_on_interrupt and self.interrupts.count:
                return
            self._show("sampling", None)
            time.sleep(0.1)

    def _guest(self) -> GuestReading | None:
        """Guest memory and CPU time, read between operations only (memoryStats would wait)."""
        process = self.sampler.latest()[1]
        _s, _e, reading, error = self._call("reading guest", lambda: self.domain.guest(
            time.time(), process.process if process else None))
        if error is not None or reading is None:
            return None
        self.guests.append(reading)
        return reading

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        """Every repeat; stops after cleaning up when interrupted. Raises ControlError."""
        self._guest_reading = self._guest()
        for run in range(1, self.args.repeat + 1):
            self._create_chain(run)
            self._delete_chain(run)
            if self.interrupts.count:
                return
        self._settle(stop_on_interrupt=False)

    def _create_chain(self, run: int) -> None:
        for level in range(1, self.args.levels + 1):
            record = self._operation(run, level, "create")
            if record is None:
                return  # interrupted before it began
            if record.outcome == "failure":
                raise ControlError(f"create of {record.snapshot} failed: {record.error}")

    def _delete_chain(self, run: int) -> None:
        """Leaves first, so each delete is of a snapshot without children, as in the study."""
        for level in range(self.args.levels, 0, -1):
            if self._plan(run, level) in self.made:
                record = self._operation(run, level, "delete")
                if record.outcome == "failure":
                    raise ControlError(f"delete of {record.snapshot} failed: {record.error}")

    def _operation(self, run: int, level: int, operation: str) -> OperationRecord | None:
        plan = self._plan(run, level)
        name = plan.name
        creating = operation == "create"
        self._where = f"run {run}/{self.args.repeat} level {level}/{self.args.levels}"
        first = self._guest_reading
        self._settle(stop_on_interrupt=creating)
        if creating and self.interrupts.count:
            return None
        before = self._guest()
        if creating:
            self.made.append(plan)
            start, end, _r, error = self._call(f"create {self.args.kind} {name}",
                                               lambda: self.domain.create(plan))
            if error is not None and name not in self._existing():
                self.made.remove(plan)
        else:
            start, end, _r, error = self._call(f"delete {name}", lambda: self.domain.delete(name))
            if error is None:
                self.made.remove(plan)
        after = self._guest()
        self._guest_reading = after
        record = OperationRecord(
            run, level, operation, name, start, end, "failure" if error else "success",
            str(error or ""), before, after, _guest_cpu_ratio(first, before))
        self.records.append(record)
        self.progress.line(f"{self._where} {operation} {name}: {record.duration:.2f} s"
                           f"{'' if error is None else ' FAILED: ' + str(error)}")
        return record

    def _existing(self) -> list[str]:
        _s, _e, names, error = self._call("listing snapshots", self.domain.snapshot_names)
        if error is not None:
            raise error
        return names

    # --- leaving the domain as found ---------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Delete what is left of ours, remove our files, and check the domain is as found.
        Returns what is not (empty when all is well)."""
        _s, _e, exists, error = self._call("checking the domain", self.domain.exists)
        if error is not None:
            raise error
        if not exists:
            self.made.clear()  # its snapshot metadata went with it
            return [f"domain {self.domain.name!r} disappeared during the run"]
        problems = []
        existing = self._existing()
        for plan in reversed(list(self.made)):
            if plan.name not in existing:
                self.made.remove(plan)
                continue
            _s, _e, _r, error = self._call(f"delete {plan.name}",
                                           lambda p=plan: self.domain.delete(p.name))
            if error is None:
                self.made.remove(plan)
            else:
                problems.append(f"cannot delete snapshot {plan.name}: {error}")
        sources = self._sources()
        if sources != self.found_sources:
            problems.append(f"disk sources differ: found {self.found_sources}, now {sources}")
        elif not self.made:
            for plan in self._plans():
                for path in plan.files:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as exc:
                        problems.append(f"cannot remove {path}: {exc.strerror}")
        snapshots = self._existing()
        if snapshots != self.found_snapshots:
            problems.append(f"snapshots differ: found {self.found_snapshots}, now {snapshots}")
        current = self.domain.current_snapshot()
        if not problems and current != self.found_current:
            problems.append(f"current snapshot was {self.found_current}, now {current}")
        return problems

    def _plans(self) -> list[SnapshotPlan]:
        """Every plan of the run: the external ones name the files bench may have made."""
        return [self._plan(r, n)
                for r in range(1, self.args.repeat + 1) for n in range(1, self.args.levels + 1)]

    def leftovers(self, why: str) -> str:
        """What bench leaves behind (second Ctrl-C, failed cleanup), and the commands that
        remove it."""
        uri, name = self.setting.uri, self.domain.name
        lines = [f"{PROG}: {why}. On domain {name!r} remain:"]
        commands = []
        for plan in reversed(self.made):
            note = ""
            doing = self.interrupts.doing
            if doing.endswith(" " + plan.name):
                note = (" (its create is still running: wait until it ends)"
                        if doing.startswith("create") else " (being deleted now)")
            lines.append(f"  snapshot {plan.name}{note}")
            lines += [f"    overlay {p} (removed by snapshot-delete)" for p in plan.overlays]
            if plan.memory_file:
                lines.append(f"    memory file {plan.memory_file}")
            commands.append(f"  virsh -c {uri} snapshot-delete {name} {plan.name}")
        files = [p.memory_file for p in self._plans() if p.memory_file and p.memory_file.exists()]
        for path in files:
            if not any(path == p.memory_file for p in self.made):
                lines.append(f"  memory file {path}")
        commands += [f"  rm -f {path}" for path in files]
        if not commands:
            return f"{PROG}: {why}; nothing of the bench remains on domain {name!r}"
        return "\n".join([*lines, "Remove them with, in this order:", *commands])

    def finish(self) -> None:
        """Per-operation host context, once samples after the last operation exist."""
        self.sampler.stop()
        for r in self.records:
            g = r.guest_before
            ctx = self.sampler.context(r.start, r.end, g.memory_used_bytes if g else None,
                                       g.memory_total_bytes if g else None, r.guest_cpu_ratio)
            r.context = ctx.public()


def _guest_cpu_ratio(first: GuestReading | None, last: GuestReading | None) -> float | None:
    return None if first is None or last is None else cpu_ratio(first, last)


def _setting(args: argparse.Namespace, domain: Domain, versions: Versions, host: HostReader) -> Setting:
    disks = domain.disks()
    total = host.read().memory.get("total")
    return Setting(
        domain=domain.name, uri=args.uri, kind=args.kind, flags="--live" if args.live else "",
        domain_state=domain.state(),
        levels=args.levels, repeat=args.repeat,
        disk_cache=",".join(sorted({d.cache for d in disks})),
        disks=[{"target": d.target, "source": d.source, "format": d.format, "cache": d.cache}
               for d in disks],
        qemu_version=versions.hypervisor, libvirt_version=versions.daemon,
        host_memory_total_bytes=total, hostname=host.hostname(), kernel=host.kernel(),
        started=time.time(),
    )


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        check_arguments(args)
        control = Control(args.uri)
        versions = control.versions()
        domain = control.domain(args.domain)
        preflight(domain, args, versions)
        if not confirm(domain, args):
            print(f"{PROG}: nothing done", file=sys.stderr)
            return EXIT_FAILED
        bench = Bench(domain, args, _setting(args, domain, versions, HostReader()),
                      Sampler(domain.name, SAMPLE_INTERVAL, pid_directory=args.pid_directory), Interrupts(),
                      Progress(sys.stdout.isatty()))
    except (UsageError, ControlError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{PROG}: nothing done", file=sys.stderr)
        return EXIT_INTERRUPTED
    bench.interrupts.install()
    bench.sampler.start()
    return _execute(bench, args)


def _execute(bench: Bench, args: argparse.Namespace) -> int:
    code = 0
    try:
        try:
            bench.run()
        except ControlError as exc:
            bench.progress.show("")
            _error(f"{exc}; deleting the snapshots made so far")
            code = EXIT_FAILED
        except Exception:
            bench.cleanup()  # a bug must not leave snapshots behind either
            raise
        try:
            problems = bench.cleanup()
        except ControlError as exc:
            problems = [f"cannot check the domain: {exc}"]
    except Abandoned:
        bench.progress.show("")
        print(bench.leftovers("left without cleaning up"), file=sys.stderr)
        return EXIT_INTERRUPTED
    bench.progress.show("")
    bench.finish()
    if bench.records:
        print(table(bench.records, bench.setting))
    try:
        _write_outputs(bench, args)
    except OSError as exc:
        _error(f"cannot write results: {exc}")
        code = code or EXIT_FAILED
    if problems:
        _error("the domain is not as found: " + "; ".join(problems))
        print(bench.leftovers("cleanup is incomplete"), file=sys.stderr)
        return EXIT_FAILED
    if bench.interrupts.count:
        print(f"{PROG}: interrupted; the snapshots made were deleted, the domain is as found",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def _write_outputs(bench: Bench, args: argparse.Namespace) -> None:
    if args.output:
        write_csv(args.output, bench.records, bench.setting)
    if args.json:
        write_json(args.json, bench.records, bench.setting, bench.sampler, bench.guests)
    if args.plot:
        plot.write_plot(args.plot, bench.records, bench.setting, bench.sampler)
