"""`libvirt-snapshot-exporter bench DOMAIN`: the hand-run snapshot study as one command.

This is its entry point: the arguments and what is refused before the domain is touched
(checks.py), the run (run.py), then the tables, the files and the exit code.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..model.observations import Versions
from ..sources.host import HostReader
from . import comparison, plot
from .checks import EXIT_USAGE, PROG, UsageError, check_arguments, confirm, parser, preflight
from .console import Abandoned, Interrupts, Progress
from .control import Control, ControlError, Domain
from .recording import Recorder
from .report import RunInfo, table, write_csv, write_json
from .run import Bench
from .settings import settings

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


def _info(args: argparse.Namespace, domain: Domain, versions: Versions, host: HostReader) -> RunInfo:
    return RunInfo(
        domain=domain.name, uri=args.uri, domain_state=domain.state(),
        levels=args.levels, repeat=args.repeat,
        disks=[{"target": d.target, "source": d.source, "format": d.format, "cache": d.cache}
               for d in domain.disks()],
        qemu_version=versions.hypervisor, libvirt_version=versions.daemon,
        host_memory_total_bytes=host.read().memory.get("total"), hostname=host.hostname(),
        kernel=host.kernel(), started=time.time(),
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
        images = [d.source for d in domain.disks() if d.source.startswith("/")]
        bench = Bench(domain, args, _info(args, domain, versions, HostReader()),
                      settings(args.kind, args.cache, args.live),
                      Recorder(domain.name, args.pid_directory, images), Interrupts(),
                      Progress(sys.stdout.isatty()))
    except (UsageError, ControlError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{PROG}: nothing done", file=sys.stderr)
        return EXIT_INTERRUPTED
    bench.interrupts.install()
    bench.recorder.start()
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
        print(table(bench.records, bench.info))
        if len({(r.setting.label(bench.info.offline), r.disk_cache) for r in bench.records}) > 1:
            print()
            print(comparison.table(bench.records, bench.info.offline))
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
    traced = [r for r in bench.records if r.trace is not None]
    if args.plot:
        for r in traced:
            r.plot = plot.trace_path(args.plot, r)
    if args.output:
        write_csv(args.output, bench.records, bench.info)
    if args.json:
        write_json(args.json, bench.records, bench.info, bench.guests)
    if args.plot:
        plot.write_plot(args.plot, bench.records, bench.info)
        for r in traced:
            plot.write_trace_plot(r.plot, r, bench.info)
