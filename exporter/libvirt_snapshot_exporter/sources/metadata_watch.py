"""libvirt's snapshot metadata directory as a source: the exact end of every create, revert and
delete, at no cost while nothing happens.

libvirt keeps one file per snapshot, `<top>/<domain>/<snapshot>.xml`. Measured on libvirt 9.0
and 11.3 (../shared/libvirt-facts.md): each write is `NAME.xml.new` renamed onto `NAME.xml`, a
delete removes `NAME.xml`, and both happen within about 5 ms of the API call's return; a create's
file appears at its end, a revert rewrites the files whose current flag changed, and nothing marks
the start of anything. A thread reads inotify and puts one SnapshotFileEvent per file change into
the collection loop's inbox. It also watches libvirt's status directory (the pid directory,
`<domain>.xml` of each running domain), saved as every job begins and ends: the start of a delete
that no poll caught. Each saved status is read for the domain's async job (a save's start,
a restore's end: status_job). And libvirt's save directory beside `<top>`, where a managed
save creates `<domain>.save` as it begins writing: a managed save, not one to a file. No
libvirt here: this source works beside the adapter, not through it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from inotify_simple import INotify, flags

from ..model.observations import (
    DomainStatusSaved,
    ManagedSaveImage,
    MetadataWatchState,
    SnapshotFileEvent,
)
from ..model.printable import printable

log = logging.getLogger(__name__)

SUFFIX = ".xml"
SAVE_SUFFIX = ".save"  # a managed save image, <save directory>/<domain>.save
RETRY_SECONDS = 10.0  # a missing or unreadable directory is tried again this often
# Sockets of the system daemon: a qemu:///system URI naming another socket is another libvirtd
# (the 11.3 chroot), whose directory cannot be guessed.
SYSTEM_SOCKETS = {f"{run}/libvirt/libvirt-sock{ro}" for run in ("/run", "/var/run")
                  for ro in ("", "-ro")}

_TOP_MASK = (flags.CREATE | flags.MOVED_TO | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR)
_DOMAIN_MASK = (flags.MOVED_TO | flags.DELETE | flags.MOVED_FROM | flags.DELETE_SELF
                | flags.MOVE_SELF | flags.ONLYDIR)
_GONE = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED


STATUS_HEAD = 64 * 1024  # the <job> element comes before the domain's own XML (libvirt 9.0, 11.3)
_JOB = re.compile(r"<job\s([^>]*)>")
_ATTRIBUTE = re.compile(r"(\w+)='([^']*)'")


def status_job(path: str) -> tuple[str, float | None]:
    """The async job a status XML names and when it began (its asyncStarted, ms): ("", None)
    for none, and for a file gone (renamed over again) or unreadable. Read without following a
    link or waiting on a FIFO, and only its head."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return "", None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "", None
        head = os.read(fd, STATUS_HEAD).decode("utf-8", "replace")
    except OSError:
        return "", None
    finally:
        os.close(fd)
    match = _JOB.search(head.split("<domain ", 1)[0])
    attributes = dict(_ATTRIBUTE.findall(match.group(1))) if match else {}
    job = attributes.get("async", "none")
    started = attributes.get("asyncStarted", "")
    if job == "none":
        return "", None
    return job, int(started) / 1000.0 if started.isdigit() else None


def default_directory(uri: str) -> str:
    """The metadata directory libvirt uses for this URI; empty where it cannot be known here
    (a remote host, the test driver, a system daemon on a socket of its own)."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    if driver != "qemu" or parts.netloc or transport not in ("", "unix"):
        return ""
    socket = parse_qs(parts.query).get("socket", [""])[0]
    if parts.path == "/system" and socket in ("", *SYSTEM_SOCKETS):
        return "/var/lib/libvirt/qemu/snapshot"
    if parts.path == "/session" and not socket:
        config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        return os.path.join(config, "libvirt", "qemu", "snapshot")
    return ""


class MetadataWatch:
    """inotify on `<top>/<domain>/` of every domain; `ok` and `reason` say whether it works."""

    def __init__(self, top: str, status_directory: str,
                 put: Callable[[SnapshotFileEvent | DomainStatusSaved | ManagedSaveImage
                                | MetadataWatchState], None],
                 ) -> None:
        self.top = top
        self.status_directory = status_directory
        # libvirt's qemu driver keeps its save directory beside its snapshot directory
        self.save_directory = os.path.join(os.path.dirname(top.rstrip("/")), "save") if top else ""
        self._status_wd: int | None = None
        self._save_wd: int | None = None
        self._put = put
        self.ok = False
        self.reason = "not started"
        self._inotify: INotify | None = None
        self._dirs: dict[int, str] = {}  # watch descriptor -> domain ("" for the top itself)
        self._files: dict[str, set[str]] = {}  # domain -> snapshot files seen, for created/rewritten
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="metadata-watch", daemon=True)

    def start(self) -> None:
        if not self.top:
            self.reason = "no directory for this libvirt URI (set libvirt.snapshot-directory)"
            log.warning("snapshot metadata directory: %s; operation ends come from polls",
                        self.reason)
            return
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    # --- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        logged = ""
        while True:
            try:
                self._watch_top()
                if self._read_until_top_gone():
                    self._close()
                    return
                raise FileNotFoundError(2, "removed", self.top)
            except Exception as exc:  # noqa: BLE001 - whatever it is, polls go on without us
                self._close()
                if self.ok:
                    self._put(MetadataWatchState(time.time(), False))
                self.ok = False
                if not isinstance(exc, OSError):
                    log.exception("snapshot metadata watch failed")
                self.reason = f"cannot watch {self.top}: {getattr(exc, 'strerror', None) or exc}"
                if self.reason != logged:
                    log.warning("snapshot metadata directory: %s; operation ends come from polls"
                                " (retried every %.0f s)", self.reason, RETRY_SECONDS)
                    logged = self.reason
                if self._stopped(RETRY_SECONDS):
                    return

    def _stopped(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._stop_r], [], [], timeout)
        return bool(ready)

    def _watch_top(self) -> None:
        """Watch the top directory and every domain directory in it; OSError when the top
        cannot be read (missing, no permission). Files there now are known, not new."""
        self._inotify = INotify()
        top = Path(self.top)
        if not stat.S_ISDIR(top.stat().st_mode):  # the stat's own error says why (EACCES, ENOENT)
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", self.top)
        self._dirs[self._inotify.add_watch(self.top, _TOP_MASK)] = ""
        for entry in top.iterdir():
            if entry.is_dir():
                self._add_domain(entry.name, announce=False)
        try:
            self._status_wd = self._inotify.add_watch(self.status_directory,
                                                      flags.MOVED_TO | flags.ONLYDIR)
        except OSError as exc:  # delete starts stay bracketed by polls
            log.warning("cannot watch libvirt's status directory %s: %s; the start of a "
                        "delete no poll catches is bracketed", self.status_directory, exc.strerror)
        try:
            self._save_wd = self._inotify.add_watch(self.save_directory,
                                                    flags.CREATE | flags.ONLYDIR)
        except OSError as exc:  # a save's kind then waits for a poll of the stopped domain
            log.warning("cannot watch libvirt's save directory %s: %s; a save's kind comes "
                        "from polls", self.save_directory, exc.strerror)
        if not self.ok and self.reason != "not started":
            log.info("snapshot metadata directory %s watched again", self.top)
        self.ok, self.reason = True, ""
        self._put(MetadataWatchState(time.time(), True))

    def _add_domain(self, domain: str, announce: bool) -> None:
        assert self._inotify is not None
        path = os.path.join(self.top, domain)
        try:
            wd = self._inotify.add_watch(path, _DOMAIN_MASK)
            names = {n[: -len(SUFFIX)] for n in os.listdir(path) if n.endswith(SUFFIX)}
        except OSError as exc:  # gone again, or not readable: that domain alone
            log.debug("cannot watch %s: %s", printable(path), printable(exc))
            return
        self._dirs[wd] = domain
        self._files[domain] = names
        if announce:  # written before the watch was on: seen now, at their latest
            now = time.time()
            for name in sorted(names):
                self._put(SnapshotFileEvent(now, domain, name, "created"))

    def _read_until_top_gone(self) -> bool:
        """Read events until stop (True) or until the top directory goes (False)."""
        assert self._inotify is not None
        while True:
            ready, _, _ = select.select([self._inotify, self._stop_r], [], [])
            if self._stop_r in ready:
                return True
            events = self._inotify.read(timeout=0)
            now = time.time()  # within ~5 ms of the API call's return (measured)
            for event in events:
                if not self._handle(event, now):
                    return False

    def _handle(self, event, now: float) -> bool:
        """One inotify event; False when it says the top directory is gone."""
        if event.mask & flags.Q_OVERFLOW:
            log.warning("snapshot metadata watch: inotify queue overflowed; polls catch up")
            return True
        if event.wd == self._status_wd:
            if event.name.endswith(SUFFIX):
                job, started = status_job(os.path.join(self.status_directory, event.name))
                self._put(DomainStatusSaved(now, event.name[: -len(SUFFIX)], job, started))
            return True
        if event.wd == self._save_wd:
            if event.name.endswith(SAVE_SUFFIX):
                self._put(ManagedSaveImage(now, event.name[: -len(SAVE_SUFFIX)]))
            return True
        domain = self._dirs.get(event.wd)
        if domain is None:
            return True
        if domain == "":
            if event.mask & _GONE:
                return False
            if event.mask & flags.ISDIR:
                self._add_domain(event.name, announce=True)
            return True
        if event.mask & _GONE:
            self._dirs.pop(event.wd, None)
            self._files.pop(domain, None)
            return True
        if not event.name.endswith(SUFFIX) or event.mask & flags.ISDIR:
            return True  # NAME.xml.new: the rename onto NAME.xml follows
        name = event.name[: -len(SUFFIX)]
        known = self._files.setdefault(domain, set())
        if event.mask & (flags.DELETE | flags.MOVED_FROM):
            known.discard(name)
            change = "removed"
        else:
            change = "rewritten" if name in known else "created"
            known.add(name)
        self._put(SnapshotFileEvent(now, domain, name, change))
        return True

    def _close(self) -> None:
        if self._inotify is not None:
            with contextlib.suppress(OSError):
                self._inotify.close()
        self._inotify = None
        self._status_wd = self._save_wd = None
        self._dirs.clear()
        self._files.clear()
