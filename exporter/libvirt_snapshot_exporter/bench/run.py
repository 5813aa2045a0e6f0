"""One bench run: for each setting compared (kind, disk cache mode) and each repeat, a chain
of snapshots created (each the child of the previous one), every create timed from the client
side while the flight recorder traces it, then the chain deleted, timed too; each operation
judged once its trace is complete. Then the domain is left as it was found: no snapshot and
no file of bench's, its definition and cache mode as found (cleanup, or the commands that
finish it when told to leave at once). libvirt calls run on worker threads so that Ctrl-C is
answered at once even while a call that cannot be aborted (an internal create, a save) is in
flight.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model.guest import cpu_ratio
from ..model.operation import FinishedOperation
from ..sources.qemu_process import ProcessReader, read_qemu_pid
from ..verdict.keeper import completed
from ..verdict.recorder import POST_SECONDS
from . import recording
from .cache_mode import CacheSwitch
from .checks import PROG
from .console import Abandoned, Interrupts, Progress
from .control import ControlError, Domain, GuestReading, SnapshotPlan, plan_snapshot
from .found import Found
from .recording import Recorder
from .report import OperationRecord, RunInfo, verdict_text
from .settings import Setting

SETTLE_SECONDS = 1.0  # quiet time traced before every operation, at least
AFTER_RESTART_SECONDS = POST_SECONDS  # quiet time after a cache mode change, as after an operation


class Bench:
    def __init__(self, domain: Domain, args: argparse.Namespace, info: RunInfo,
                 compared: list[Setting], recorder: Recorder, interrupts: Interrupts,
                 progress: Progress) -> None:
        self.domain = domain
        self.args = args
        self.info = info
        self.settings = compared
        self.recorder = recorder
        self.interrupts = interrupts
        self.progress = progress
        self.disks = domain.disks()
        self.found = Found.read(domain)
        self.cache = CacheSwitch(domain, self.found.caches, self._step)
        self.records: list[OperationRecord] = []
        self.guests: list[GuestReading] = []
        self.made: list[SnapshotPlan] = []  # created or being created, not yet deleted
        self._runs: dict[int, Setting] = {}  # run number -> its setting
        self._disk_cache = ",".join(sorted(set(self.found.caches)))
        self._guest_reading: GuestReading | None = None
        self._processes = ProcessReader()
        self._where = ""  # run and level, for the progress line
        self._stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(info.started))

    def _plan(self, run: int, level: int) -> SnapshotPlan:
        setting = self._runs[run]
        name = f"bench-{self._stamp}-r{run}-l{level}"
        return plan_snapshot(self.domain.name, name, setting.kind, setting.live, self.disks)

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

    def _step(self, what: str, fn: Callable[[], Any]) -> Any:
        """A call whose failure is the caller's to handle (ControlError)."""
        _s, _e, result, error = self._call(what, fn)
        if error is not None:
            raise error
        return result

    def _show(self, what: str, started: float | None) -> None:
        if not self.progress.enabled:
            return
        parts = [self._where, what]
        if started is not None:
            parts.append(f"{time.time() - started:6.1f} s")
        parts.append(self.recorder.figures())
        self.progress.show("  ".join(p for p in parts if p))

    def _settle(self, minimum: float, stop_on_interrupt: bool, what: str = "tracing") -> None:
        """Trace a quiet time of at least `minimum` seconds, and until the traces of the
        operations before are complete; a create phase stops early on Ctrl-C."""
        until = time.time() + minimum
        # Once interrupted, what is left to do is cleaning up: no waiting for traces.
        while time.time() < until or (self._pending() and not self.interrupts.count):
            if self.interrupts.count > 1:
                raise Abandoned
            if stop_on_interrupt and self.interrupts.count:
                return
            self._complete()
            self._show(what, None)
            time.sleep(0.1)

    def _pending(self) -> bool:
        return any(r.trace is None and r.entry is not None for r in self.records)

    def _complete(self) -> None:
        """Judge each operation whose trace is now complete (they complete in order, so the
        operations before it are judged already)."""
        for trace in self.recorder.completed():
            index, record = next((i, r) for i, r in enumerate(self.records)
                                 if r.entry is not None and r.entry.id == trace.id)
            earlier = [r.entry for r in self.records[:index] if r.entry is not None]
            paused = None if self.info.domain_state != "running" else recording.paused_seconds(
                self.domain.pauses(), record.start, record.end)
            record.trace = trace
            try:
                record.entry = completed(dataclasses.replace(record.entry, paused_seconds=paused),
                                         trace, earlier)
            except Exception as exc:  # noqa: BLE001 - a trace it cannot judge: no verdict
                self.progress.show("")
                print(f"{PROG}: no verdict on the {record.operation} of {record.snapshot}: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                continue
            self.progress.line(f"{self._where_of(record.run, record.level)} {record.operation} "
                               f"{record.snapshot}: verdict {verdict_text(record)}")

    def _where_of(self, run: int, level: int) -> str:
        return f"run {run}/{len(self.settings) * self.args.repeat} level {level}/{self.args.levels}"

    def _guest(self) -> GuestReading | None:
        """Guest memory and CPU time, read between operations only (memoryStats would wait)."""
        pid = read_qemu_pid(Path(self.args.pid_directory), self.domain.name)
        process = self._processes.read(pid) if pid else None
        _s, _e, reading, error = self._call("reading guest", lambda: self.domain.guest(
            time.time(), process))
        if error is not None or reading is None:
            return None
        self.guests.append(reading)
        return reading

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        """Every setting, every repeat; stops after cleaning up when interrupted. Raises
        ControlError."""
        self._guest_reading = self._guest()
        run = 0
        for setting in self.settings:
            self._settle(0, stop_on_interrupt=True)  # nothing of the last one in the next
            if self.interrupts.count:
                return
            self._where = f"cache {setting.cache}" if setting.cache else ""
            if self.cache.set(setting.cache):
                # QEMU restored the guest's memory just now: that is in no operation's trace
                self._settle(AFTER_RESTART_SECONDS, stop_on_interrupt=True, what="restarted")
                self._guest_reading = self._guest()  # a new QEMU: its CPU time starts again
            self._disk_cache = ",".join(sorted({d.cache for d in self.domain.disks()}))
            for _ in range(self.args.repeat):
                run += 1
                self._runs[run] = setting
                self._create_chain(run)
                self._delete_chain(run)
                if self.interrupts.count:
                    return
        self._settle(0, stop_on_interrupt=True)

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
        setting = self._runs[run]
        creating = operation == "create"
        self._where = self._where_of(run, level)
        first = self._guest_reading
        key = f"{operation} {name}"
        self.recorder.begin(key)
        self._settle(SETTLE_SECONDS, stop_on_interrupt=creating)
        if creating and self.interrupts.count:
            self.recorder.drop()
            return None
        before = self._guest()
        if creating:
            self.made.append(plan)
            start, end, _r, error = self._call(f"create {setting.kind} {name}",
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
            setting, self._disk_cache, str(error or ""), before, after,
            _guest_cpu_ratio(first, before))
        memory_written = (self.domain.memory_written()
                          if creating and error is None and setting.kind == "external" else None)
        record.entry = self._entry(record, memory_written)
        self.recorder.end(key, record.entry)
        self.records.append(record)
        self.progress.line(f"{self._where} {operation} {name}: {record.duration:.2f} s"
                           f"{'' if error is None else ' FAILED: ' + str(error)}")
        return record

    def _entry(self, record: OperationRecord, memory_written: int | None) -> FinishedOperation:
        """The operation as the exporter's log would have it, before its trace is complete."""
        kind = record.setting.kind
        guest = record.guest_before
        return FinishedOperation(
            domain=self.domain.name, snapshot=record.snapshot, operation=record.operation,
            kind="internal" if kind == "internal" else "external",
            memory=kind == "external" or (kind == "internal" and not self.info.offline),
            depth=record.level, start=round(record.start, 3), end=round(record.end, 3),
            duration_seconds=round(record.duration, 3), outcome=record.outcome,
            error=record.error or None, start_source="client", end_source="client",
            qemu_version=self.info.qemu_version,
            disk_cache=tuple(record.disk_cache.split(",")),
            guest_memory_used_bytes=guest.memory_used_bytes if guest else None,
            guest_memory_total_bytes=guest.memory_total_bytes if guest else None,
            guest_cpu_ratio=record.guest_cpu_ratio, job_memory_processed_bytes=memory_written)

    def _existing(self) -> list[str]:
        _s, _e, names, error = self._call("listing snapshots", self.domain.snapshot_names)
        if error is not None:
            raise error
        return names

    # --- leaving the domain as found ---------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Delete what is left of ours, remove our files, put the cache mode back, and check
        the domain is as found. Returns what is not (empty when all is well)."""
        self.recorder.stop()  # what follows is no operation of the study
        self._complete()
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
        if Found.read(self.domain).sources == self.found.sources:
            if not self.made:
                for plan in self._plans():
                    for path in plan.files:
                        try:
                            path.unlink(missing_ok=True)
                        except OSError as exc:
                            problems.append(f"cannot remove {path}: {exc.strerror}")
            try:  # never with a snapshot's overlays in place: the found definition has none
                self.cache.restore()
            except ControlError as exc:
                problems.append(f"cannot put the cache mode back: {exc}")
        return problems + self.found.differences(Found.read(self.domain))

    def _plans(self) -> list[SnapshotPlan]:
        """Every plan of the run: the external ones name the files bench may have made."""
        return [self._plan(r, n) for r in self._runs for n in range(1, self.args.levels + 1)]

    def leftovers(self, why: str) -> str:
        """What bench leaves behind (second Ctrl-C, failed cleanup), and the commands that
        remove it."""
        uri, name = self.info.uri, self.domain.name
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
        found_file = Path(tempfile.gettempdir()) / f"{name}.bench-{self._stamp}.xml"
        cache_lines, cache_commands = self.cache.leftovers(uri, found_file)
        lines += cache_lines
        commands += cache_commands
        if not commands:
            return f"{PROG}: {why}; nothing of the bench remains on domain {name!r}"
        return "\n".join([*lines, "Remove them with, in this order:", *commands])

    def finish(self) -> None:
        """Every trace complete (cut short by Ctrl-C), every operation judged."""
        self.recorder.stop()
        self._complete()


def _guest_cpu_ratio(first: GuestReading | None, last: GuestReading | None) -> float | None:
    return None if first is None or last is None else cpu_ratio(first, last)
