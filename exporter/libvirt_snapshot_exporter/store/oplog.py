"""The operations log: the last N finished operations, kept in memory and on disk.

The file is JSON lines. A finished operation is appended as one line, and appended again when
its verdict comes (the later line wins when it is read back): a flush writes what changed, not the
log (re-serialising the whole log after every change took half the exporter's CPU in a soak of
continuous snapshots, issue 23). The file is rewritten whole, through a temporary file and a
rename (a crash leaves the old file or the new one), once it holds twice the lines the log keeps,
and after a start that read back anything but clean lines or an append that failed: a line torn
by a crash is skipped when read back, and never has another appended to it. A state directory
that cannot be read or written is reported (one log line and a metric) and serving goes on with
the history in memory; the write is tried again at the next flush. Whatever the file holds (bytes
that are not UTF-8, lines that are not entries, a directory, a FIFO or a device in its place),
reading it back never stops the start: bad lines are skipped and counted. A lock file keeps a
second exporter off the same directory, which would silently overwrite half of the history.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import math
import os
import stat
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..model.operation import FinishedOperation
from ..model.printable import printable
from .atomic_file import write_atomically
from .safe_file import BadFile, MissingFile, no_constants, open_regular

log = logging.getLogger(__name__)

LOG_NAME = "operations.jsonl"
LOCK_NAME = "operations.lock"
MAX_LINE_BYTES = 64 * 1024  # an entry is under 2 KiB; a longer line is not one
# What is read back at most per entry the log keeps (operations.log-size): a file longer than
# that many of them is read from its tail, the newest entries.
MAX_ENTRY_BYTES = 4 * 1024


class StateDirectoryInUse(Exception):
    """Another process holds the state directory's lock; the message is one line."""


class OperationsLog:
    def __init__(self, directory: str, size: int = 1000) -> None:
        self.directory = Path(directory) if directory else None
        self.size = size
        self._entries = Entries(size)
        self._lock = threading.Lock()
        self.write_errors = 0
        self.last_write_ok = True
        self.load_ok = True  # False when the log could not be read back at start
        self.invalid_entries = 0  # lines skipped when it was read back
        self.version = 0  # bumped by every add() and amend(): what was rendered from it can be cached
        self._pending: list[FinishedOperation] = []  # added or amended since the last flush
        self._lines_on_disk = 0  # lines the file holds: rewritten whole past 2 x size
        self._rewrite = False  # the next flush rewrites the file whole
        self._lock_fd: int | None = None
        self._unwritable: set[str] = set()  # ids of entries not written (said once each)
        if self.directory is not None:
            problems = [p for p in (self._take_lock(), self._load()) if p]
            if problems:
                log.error("state directory %s: %s", self.directory, "; ".join(problems))

    @property
    def path(self) -> Path | None:
        return self.directory / LOG_NAME if self.directory else None

    def _take_lock(self) -> str:
        """'' once the lock is held, else why it could not be taken; raises
        StateDirectoryInUse when another process holds it."""
        path = self.directory / LOCK_NAME
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o600)
        except OSError as exc:
            try:  # a read-only file system still lets an existing file be locked
                fd = os.open(path, os.O_RDONLY | flags)
            except OSError:
                return _unlocked(exc)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise StateDirectoryInUse(
                f"state.directory {self.directory}: in use by another exporter"
                f"{f' (pid {holder})' if holder.isdigit() else ''}") from None
        except OSError as exc:
            os.close(fd)
            return _unlocked(exc)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd  # held until close()
        return ""

    def _load(self) -> str:
        """'' when the log was read back (or there is none yet), else why it was not. Opened
        as store/safe_file.py opens every file: a regular file, not through a symbolic link
        (the exporter writes it by a rename), never waited on; of a file longer than the log
        can hold (MAX_ENTRY_BYTES an entry), only the tail is read."""
        try:
            handle = open_regular(self.path, follow_symlinks=False)
        except MissingFile:
            return ""
        except BadFile as exc:
            self.load_ok = False
            self._rewrite = True
            return _unread(str(exc))
        with handle:
            try:
                self._read(handle)
            except OSError as exc:
                self.load_ok = False
                self._rewrite = True
                return _unread(exc.strerror)
        return ""

    def _read(self, handle: BinaryIO) -> None:
        first_error = ""
        lines = 0
        budget = self.size * MAX_ENTRY_BYTES
        skipped = os.fstat(handle.fileno()).st_size - budget
        if skipped > 0:  # the oldest lines, which the log could not keep anyway
            handle.seek(skipped - 1)
            if handle.read(1) != b"\n":
                next(_lines(handle), None)  # the rest of a line cut in two
        for number, line in enumerate(_lines(handle, budget), 1):
            lines = number
            if line is not None and not line.strip():
                continue
            try:
                if line is None:
                    raise ValueError(f"longer than {MAX_LINE_BYTES} bytes")
                entry = FinishedOperation.from_json(
                    json.loads(line.decode("utf-8"), parse_constant=no_constants))
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                self.invalid_entries += 1
                reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
                first_error = first_error or f"line {number}: {reason[:80]}"
                continue
            if not self._entries.replace(entry):
                self._entries.append(entry)
        self._lines_on_disk = lines
        # Anything but one clean line per entry is rewritten at the next flush: bad lines,
        # an entry amended, a skipped head, a torn last line (appending to it would lose the next).
        self._rewrite = lines != len(self._entries) or skipped > 0 or not _ends_a_line(handle)
        if skipped > 0:
            log.warning("operations log %s: longer than %d entries can be (%d bytes each): its "
                        "first %d bytes skipped", self.path, self.size, MAX_ENTRY_BYTES, skipped)
        if self.invalid_entries:
            log.warning("operations log %s: skipped %d of %d lines that are not valid entries "
                        "(first: %s)", self.path, self.invalid_entries, lines, first_error)

    def add(self, entry: FinishedOperation) -> None:
        """Kept in memory at once; on disk at the next flush (the collection loop flushes
        once per cycle, so a burst of operations costs one write, not one each)."""
        with self._lock:
            self._entries.append(entry)
            self.version += 1
            self._pending.append(entry)

    def amend(self, entry: FinishedOperation) -> bool:
        """Replace the entry with the same id (its verdict came after it); False when it has
        left the log."""
        with self._lock:
            if not self._entries.replace(entry):
                return False
            self.version += 1
            self._pending.append(entry)
            return True

    def get(self, entry_id: str) -> FinishedOperation | None:
        """The entry with this id, None when it is not in the log: one look-up in the index,
        as cheap for a missing id and a full log as for anything else."""
        with self._lock:
            return self._entries.get(entry_id)

    def page(self, offset: int, limit: int) -> tuple[list[FinishedOperation], int]:
        """Up to limit entries from offset, newest first, and how many the log holds."""
        with self._lock:
            return self._entries.newest(offset, limit), len(self._entries)

    def of_domain(self, domain: str, limit: int) -> tuple[list[FinishedOperation], int]:
        """Up to limit of the domain's entries, newest first, and how many it has: the cost of
        `limit`, however long the log."""
        with self._lock:
            return self._entries.of_domain(domain, limit)

    def domains(self) -> list[str]:
        """The domains that have entries in the log."""
        with self._lock:
            return self._entries.domains()

    def flush(self) -> None:
        """Write the log if anything was added since the last write, or the last one failed."""
        with self._lock:
            if self._pending or not self.last_write_ok:
                self._flush_locked()

    def close(self) -> None:
        """Write what is pending and let the state directory go to the next exporter."""
        self.flush()
        with self._lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases its flock
                self._lock_fd = None

    def _flush_locked(self) -> None:
        if self.directory is None:
            self._pending.clear()
            return
        rewrite = self._rewrite or self._lines_on_disk + len(self._pending) > 2 * self.size
        entries = self._entries if rewrite else self._pending
        lines = [line for e in entries if (line := self._line(e))]
        try:
            if rewrite:
                write_atomically(self.directory, LOG_NAME, "".join(lines).encode(), fsync=True)
            else:
                self._append("".join(lines).encode())
        except OSError as exc:
            # An append may have left half a line: the next write is the whole log, so what
            # is pending need not be kept (while the directory stays unwritable, nor grow).
            self._rewrite = True
            self._pending.clear()
            self.write_errors += 1
            if self.last_write_ok:
                log.error("cannot write operations log in %s: %s (history kept in memory)",
                          self.directory, exc)
            self.last_write_ok = False
            return
        if not self.last_write_ok:
            log.info("operations log in %s writable again", self.directory)
        self.last_write_ok = True
        self._lines_on_disk = len(lines) + (0 if rewrite else self._lines_on_disk)
        self._rewrite = False
        self._pending.clear()

    def _append(self, data: bytes) -> None:
        """At the file's end, on disk before the flush returns (what must survive a power cut);
        only to a regular file, opened as it is read back: not through a symbolic link, never
        waited on (OSError otherwise, and the next flush replaces it)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _line(self, entry: FinishedOperation) -> str:
        """An entry's line; '' for one with a figure that is not finite (the writers refuse
        it: JSON has no such number, and the next start would drop the line), said once."""
        try:
            return json.dumps(entry.to_json(), sort_keys=True, allow_nan=False) + "\n"
        except ValueError:
            if entry.id not in self._unwritable:
                self._unwritable.add(entry.id)
                log.error("operation %s of %s not written to the log: a figure is not finite",
                          entry.id, printable(entry.domain))
            return ""


class Entries:
    """The log's entries, oldest first, in a ring of `size` slots, indexed by id and by domain,
    so that adding, evicting, amending and finding an entry cost the same with 100,000 entries
    as with 10, and a page costs its own length. An id logged twice (an edited file) finds the
    newer entry. Not locked: OperationsLog holds its lock around every call."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring: list[FinishedOperation] = []
        self._added = 0  # entries ever appended: the next one's sequence number
        self._by_id: dict[str, int] = {}  # id -> sequence number of its newest entry
        self._by_domain: dict[str, deque[int]] = {}  # domain -> its sequence numbers, oldest first

    def __len__(self) -> int:
        return len(self._ring)

    def __iter__(self) -> Iterator[FinishedOperation]:
        start = self._start()
        return itertools.chain(self._ring[start:], self._ring[:start])

    def _start(self) -> int:
        """The oldest entry's slot."""
        return self._added % self.size if len(self._ring) == self.size else 0

    def append(self, entry: FinishedOperation) -> None:
        sequence = self._added
        slot = sequence % self.size
        if len(self._ring) < self.size:
            self._ring.append(entry)
        else:  # the oldest leaves
            evicted = self._ring[slot]
            if self._by_id.get(evicted.id) == sequence - self.size:
                del self._by_id[evicted.id]
            of_domain = self._by_domain[evicted.domain]
            of_domain.popleft()
            if not of_domain:
                del self._by_domain[evicted.domain]
            self._ring[slot] = entry
        self._by_id[entry.id] = sequence
        self._by_domain.setdefault(entry.domain, deque()).append(sequence)
        self._added += 1

    def get(self, entry_id: str) -> FinishedOperation | None:
        sequence = self._by_id.get(entry_id)
        return None if sequence is None else self._ring[sequence % self.size]

    def replace(self, entry: FinishedOperation) -> bool:
        """The entry with the same id (the same operation, so the same domain) becomes this one;
        False when there is none (or it is another domain's: an edited file)."""
        sequence = self._by_id.get(entry.id)
        if sequence is None or self._ring[sequence % self.size].domain != entry.domain:
            return False
        self._ring[sequence % self.size] = entry
        return True

    def newest(self, offset: int, limit: int) -> list[FinishedOperation]:
        """Up to limit entries from the offset-th newest, newest first."""
        end = len(self._ring) - offset  # oldest first, exclusive
        if end <= 0 or limit <= 0:
            return []
        begin = max(0, end - limit)
        first, last = self._start() + begin, self._start() + end
        if first >= self.size:
            chosen = self._ring[first - self.size:last - self.size]
        elif last <= self.size:
            chosen = self._ring[first:last]
        else:
            chosen = self._ring[first:] + self._ring[:last - self.size]
        chosen.reverse()
        return chosen

    def of_domain(self, domain: str, limit: int) -> tuple[list[FinishedOperation], int]:
        sequences = self._by_domain.get(domain, ())
        return ([self._ring[s % self.size] for s in itertools.islice(reversed(sequences), limit)],
                len(sequences))

    def domains(self) -> list[str]:
        return list(self._by_domain)


def _unlocked(exc: OSError) -> str:
    return f"cannot lock {LOCK_NAME} ({exc.strerror}): a second exporter on it would go unnoticed"


def _unread(why: str) -> str:
    return f"cannot read {LOG_NAME} ({why}): the history starts empty, kept in memory"


def _ends_a_line(handle: BinaryIO) -> bool:
    """Whether the file is empty or ends with a newline (a crash during an append may have left
    half a line)."""
    size = os.fstat(handle.fileno()).st_size
    return size == 0 or os.pread(handle.fileno(), 1, size - 1) == b"\n"


def _lines(handle: BinaryIO, budget: float = math.inf) -> Iterator[bytes | None]:
    """The file's lines, up to `budget` bytes (a file that grows as it is read); None for one
    longer than MAX_LINE_BYTES, which is skipped unread."""
    while budget > 0 and (line := handle.readline(MAX_LINE_BYTES + 1)):
        budget -= len(line)
        if len(line) > MAX_LINE_BYTES:
            while line and not line.endswith(b"\n"):
                line = handle.readline(MAX_LINE_BYTES)
                budget -= len(line)
            yield None
        else:
            yield line
