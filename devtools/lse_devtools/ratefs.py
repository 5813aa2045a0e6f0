"""A passthrough FUSE filesystem whose writes go at a disk's pace: the bottom layer of the
slow-storage test bed (slow_storage.py), run as a process of its own.

Every write reserves len/rate seconds of one shared device clock, so concurrent writers queue
as on one disk. Backing writes use O_DIRECT: a buffered backing write would be throttled by
balance_dirty_pages waiting for dirty pages only this daemon can clean (a deadlock under tight
dirty limits). Only writes that are not block-aligned fall back to buffered I/O.

Run as:  python -m lse_devtools.ratefs BACKING_DIR MOUNTPOINT --rate BYTES_PER_SECOND
It serves in the foreground until unmounted (fusermount3 -u MOUNTPOINT).
"""

from __future__ import annotations

import argparse
import errno
import mmap
import os
import sys
import threading
import time
from collections import Counter

import mfusepy

ALIGN = 4096  # O_DIRECT alignment of offsets, lengths and buffers


class DeviceClock:
    """One disk's queue: a write may start when the previous one has had its len/rate. Up to
    `burst` seconds of idle time are credited, so the gaps between one writer's back-to-back
    requests (the loop device sends one at a time) do not cost bandwidth."""

    def __init__(self, rate: float, burst: float = 0.05) -> None:
        self.rate = rate
        self.burst = burst
        self._lock = threading.Lock()
        self._free_at = 0.0

    def reserve(self, size: int) -> float:
        """Book size bytes of device time; returns the monotonic time the write completes."""
        with self._lock:
            start = max(time.monotonic() - self.burst, self._free_at)
            self._free_at = start + size / self.rate
            return self._free_at


class RateLimitedPassthrough(mfusepy.Operations):
    """Passthrough of the files of one directory (flat: the bed keeps one image in it)."""

    use_ns = True

    def __init__(self, backing: str, rate: float) -> None:
        self.backing = backing
        self.clock = DeviceClock(rate)
        self._direct: dict[int, int] = {}  # buffered fh -> O_DIRECT fd of the same file
        self._buffers = threading.local()
        self.counts: Counter[str] = Counter()

    def _path(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _open_direct(self, fh: int, path: str, flags: int) -> None:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            self._direct[fh] = os.open(self._path(path), os.O_WRONLY | os.O_DIRECT)

    def getattr(self, path: str, fh: int | None = None) -> dict:
        st = os.lstat(self._path(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
        attrs = {k: getattr(st, k) for k in keys}
        for k in ("st_atime", "st_mtime", "st_ctime"):
            attrs[k] = attrs.pop(k + "_ns")
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def statfs(self, path: str) -> dict:
        sv = os.statvfs(self._path(path))
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                            "f_bavail", "f_files", "f_ffree", "f_namemax")}

    def create(self, path: str, mode: int, fi: object = None) -> int:
        fh = os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
        self._open_direct(fh, path, os.O_RDWR)
        return fh

    def open(self, path: str, flags: int) -> int:
        fh = os.open(self._path(path), flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_DIRECT))
        self._open_direct(fh, path, flags)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def _aligned(self, size: int) -> mmap.mmap:
        buf = getattr(self._buffers, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._buffers.buf = mmap.mmap(-1, max(size, 1 << 20))  # page-aligned
        return buf

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        done = self.clock.reserve(len(data))
        direct = self._direct.get(fh)
        if direct is not None and offset % ALIGN == 0 and len(data) % ALIGN == 0:
            buf = self._aligned(len(data))
            buf[:len(data)] = data
            written = os.pwrite(direct, memoryview(buf)[:len(data)], offset)
            self.counts["direct"] += 1
        else:
            written = os.pwrite(fh, data, offset)
            self.counts["buffered"] += 1
        self.counts["bytes"] += written
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._path(path), length)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        (os.fdatasync if datasync else os.fsync)(fh)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        direct = self._direct.pop(fh, None)
        if direct is not None:
            os.close(direct)
        os.close(fh)
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._path(path))
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._path(path), ns=times)
        return 0

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._path(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--rate", type=float, required=True, help="write bytes per second")
    args = parser.parse_args(argv)
    ops = RateLimitedPassthrough(os.path.abspath(args.backing), args.rate)
    mfusepy.FUSE(ops, args.mountpoint, foreground=True, allow_other=True,
                 fsname="lse-ratefs")
    # Unmounted: say what went through, for whoever reads the bed's daemon.log.
    print(f"ratefs: {dict(ops.counts)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
