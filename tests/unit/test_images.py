"""The images source on real files: allocated size, free space of their filesystem, and what
it says when a file cannot be read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.sources.images import image_usage, mountpoint


def test_size_is_allocated_bytes_and_free_space_is_per_mount(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    image.write_bytes(os.urandom(1 << 20))
    sparse = tmp_path / "sparse.raw"
    with sparse.open("wb") as f:
        f.truncate(1 << 30)  # a 1 GiB file that holds nothing
    usage = image_usage([str(image), str(sparse)])
    assert usage.size_bytes == os.stat(image).st_blocks * 512 + os.stat(sparse).st_blocks * 512
    assert usage.size_bytes < 1 << 29
    mount = mountpoint(str(tmp_path))
    assert list(usage.free_bytes) == [mount]
    assert usage.free_bytes[mount] == pytest.approx(
        os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize, rel=0.05)
    assert usage.errors == ()


def test_a_file_that_is_gone_is_skipped_and_no_files_is_none(tmp_path: Path) -> None:
    assert image_usage([str(tmp_path / "deleted-overlay.qcow2")]).size_bytes == 0
    assert image_usage([]).size_bytes is None
    assert image_usage(["rbd:pool/image"]).size_bytes is None  # network disks have no file


def test_a_file_that_cannot_be_read_is_an_error_naming_it(tmp_path: Path) -> None:
    """A symlink loop fails stat for root too (a chmod would not)."""
    loop = tmp_path / "disk.qcow2"
    loop.symlink_to(loop)
    usage = image_usage([str(loop)])
    assert usage.errors == (f"{loop}: Too many levels of symbolic links",)
    assert usage.size_bytes == 0


def test_mountpoint_of_a_path_below_root() -> None:
    assert mountpoint("/proc/self") == "/proc"
    assert mountpoint("/") == "/"
