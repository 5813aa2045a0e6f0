"""What `bench` accepts: its arguments, and the domains it may touch.

Everything here runs before the domain is touched, so a refusal costs nothing: one line naming
the problem, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ..config import OneLineParser
from ..model.observations import DiskInfo, Versions
from . import plot
from .control import EXTERNAL_DELETE_VERSION, Domain
from .settings import cache_modes, kinds

PROG = "libvirt-snapshot-exporter bench"
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or a domain bench must not touch: one line, exit 2."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Time a chain of snapshots of DOMAIN, repeatedly, beside "
                "the host's memory, page cache and writeback; then delete them.")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--libvirt.uri", dest="uri", default="qemu:///system", metavar="URI",
                   help="libvirt URI of this host's hypervisor (default: qemu:///system)")
    p.add_argument("--libvirt.pid-directory", dest="pid_directory", default="/run/libvirt/qemu",
                   metavar="DIR", help="where libvirt writes <domain>.pid for each QEMU "
                   "(default: /run/libvirt/qemu)")
    p.add_argument("--levels", type=_positive, default=3, help="snapshots per chain (default: 3)")
    p.add_argument("--repeat", type=_positive, default=5, help="chains to time (default: 5)")
    p.add_argument("--kind", type=kinds, default=["internal"], metavar="KIND[,KIND...]",
                   help="internal (memory and disks inside the qcow2), external (memory file and "
                   "overlays next to each disk image) or disk-only (overlays only); several, "
                   "comma-separated, are compared (default: internal)")
    p.add_argument("--cache", type=cache_modes, metavar="MODE[,MODE...]",
                   help="run under each of these disk cache modes (none, writethrough, "
                   "writeback, directsync, unsafe), comma-separated, and compare them; the "
                   "domain is saved and started again for each (managed save) and put back as "
                   "found (default: as found)")
    p.add_argument("--live", action="store_true",
                   help="with --kind external: copy memory while the guest runs")
    p.add_argument("--output", type=Path, metavar="CSV", help="one row per operation")
    p.add_argument("--json", type=Path, metavar="JSON", help="operations with their verdicts and "
                   "traces")
    p.add_argument("--plot", type=Path, metavar="PNG", help="durations and host memory, and beside "
                   "it one PNG of each operation's trace (matplotlib)")
    p.add_argument("--yes", action="store_true", help="do not ask before snapshotting the domain")
    p.add_argument("--allow-existing", action="store_true",
                   help="run on a domain that already has snapshots (they are left alone)")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    if args.live and "external" not in args.kind:
        raise UsageError("--live needs --kind external: libvirt copies memory live only to an "
                         "external memory file")
    if args.plot and not plot.available():
        raise UsageError("--plot needs matplotlib: pip install 'libvirt-snapshot-exporter[plot]'")
    for option in ("output", "json", "plot"):
        path = getattr(args, option)
        if path is not None and path.is_dir():
            raise UsageError(f"--{option}: {path} is a directory")
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"--{option}: directory {path.resolve().parent} does not exist")
    host = urlsplit(args.uri).hostname
    if host not in (None, "", "localhost", "127.0.0.1", "::1"):
        raise UsageError(f"--libvirt.uri {args.uri} names another host ({host}): bench samples "
                         "this host's memory and QEMU processes, run it on the hypervisor itself")


def preflight(domain: Domain, args: argparse.Namespace, versions: Versions) -> None:
    """Refuse what cannot be done, or undone, before touching the domain."""
    state = domain.state()
    if state == "other":
        raise UsageError(f"domain {domain.name!r} is neither running, paused nor shut off")
    existing = domain.snapshot_names()
    if existing and not args.allow_existing:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise UsageError(f"domain {domain.name!r} already has {len(existing)} snapshot(s) "
                         f"({shown}); delete them or pass --allow-existing")
    disks = domain.disks()
    if not disks:
        raise UsageError(f"domain {domain.name!r} has no disk to snapshot")
    for kind in args.kind:
        _preflight_kind(kind, disks, versions)
    if args.live and state != "running":
        raise UsageError(f"--live needs a running domain; {domain.name!r} is "
                         f"{'shut off' if state == 'shutoff' else state}")
    if "external" in args.kind and state == "shutoff":
        raise UsageError(f"domain {domain.name!r} is shut off: it has no memory to save; "
                         "use --kind disk-only or internal")
    if args.cache and state == "shutoff":
        raise UsageError(f"--cache needs a running or paused domain; {domain.name!r} is shut "
                         "off, and its snapshots are made by qemu-img, which does not use the "
                         "domain's cache mode")
    if args.cache and not domain.persistent():
        raise UsageError(f"--cache needs a persistent domain: {domain.name!r} is transient, and "
                         "its cache mode can only be changed through a managed save (libvirt "
                         "cannot change it live)")


def _preflight_kind(kind: str, disks: list[DiskInfo], versions: Versions) -> None:
    if kind == "internal":
        other = [d for d in disks if d.format != "qcow2"]
        if other:
            raise UsageError("internal snapshots need every disk in qcow2: " + ", ".join(
                f"{d.target} is {d.format or 'of unknown format'} ({d.source})" for d in other))
        return
    if versions.daemon_number < EXTERNAL_DELETE_VERSION:
        raise UsageError(f"--kind {kind} needs libvirt >= 9.0 to delete external snapshots "
                         f"again (this daemon is {versions.daemon})")
    for d in disks:
        if not Path(d.source).is_file():
            raise UsageError(f"--kind {kind} needs file-backed disks: {d.target} is "
                             f"{d.source or 'without a source'}")
        if not os.access(Path(d.source).parent, os.W_OK):
            raise UsageError(f"--kind {kind}: cannot write overlays next to {d.source}")


def confirm(domain: Domain, args: argparse.Namespace) -> bool:
    """Ask on a terminal; without one, only --yes may go on."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to snapshot {domain.name!r} without confirmation: no "
                         "terminal to ask on; pass --yes")
    state = domain.state()
    pause = "; ".join({
        "internal": "internal: the guest is paused during each create",
        "external": "external: the guest is paused briefly" if args.live else
        "external: the guest is paused while its memory is saved",
        "disk-only": "disk-only: the guest keeps running",
    }[kind] for kind in args.kind) if state == "running" else f"the domain is {state}"
    caches = ""
    if args.cache:
        caches = (f" under cache {', '.join(args.cache)}: for each, the domain is saved and "
                  "started again (managed save; its guest waits meanwhile), and put back as "
                  "found at the end,")
    print(f"{PROG}: {args.repeat} x {args.levels} {'/'.join(args.kind)} snapshots of {domain.name!r} will be "
          f"created and deleted{caches} ({pause}). Continue? [y/N] ", end="", file=sys.stderr,
          flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")
