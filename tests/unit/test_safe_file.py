"""The one way every file the exporter reads is opened (store/safe_file.py): a regular file,
read once within a bound, never waited on, a symbolic link followed only when asked."""

from __future__ import annotations

import threading

import pytest
from libvirt_snapshot_exporter.store.safe_file import BadFile, MissingFile, read_bounded
from lse_devtools.special_files import make_special


def test_a_regular_file_is_read_whole_up_to_its_bound(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100) == b"x" * 100
    with pytest.raises(BadFile, match="larger than 99 bytes"):
        read_bounded(path, 99)


@pytest.mark.parametrize("kind, why", [
    ("missing", "No such file or directory"), ("directory", "Is a directory"),
    ("fifo", "not a regular file"), ("device", "not a regular file"),
])
def test_what_is_no_regular_file_is_refused_at_once(tmp_path, kind, why):
    path = tmp_path / "f"
    if kind != "missing":
        make_special(path, kind)
    failed: list[BadFile] = []

    def read() -> None:
        try:
            read_bounded(path, 2**20)
        except BadFile as exc:
            failed.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert failed and why in str(failed[0]), kind
    assert isinstance(failed[0], MissingFile) == (kind == "missing")


def test_a_symlink_is_followed_only_when_asked(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"data")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_bounded(link, 10) == b"data"
    with pytest.raises(BadFile, match="a symbolic link, not followed"):
        read_bounded(link, 10, follow_symlinks=False)
