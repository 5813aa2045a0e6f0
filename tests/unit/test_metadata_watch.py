"""The metadata watch on a real directory with real inotify, written the way libvirt writes it
(NAME.xml.new renamed onto NAME.xml, NAME.xml removed on delete; measured, libvirt-facts.md)."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.model.observations import (
    DomainStatusSaved,
    ManagedSaveImage,
    MetadataWatchState,
    SnapshotFileEvent,
)
from libvirt_snapshot_exporter.sources.metadata_watch import MetadataWatch, default_directory


def write(path: Path, text: str = "<domainsnapshot/>") -> None:
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    new.rename(path)


class Watched:
    def __init__(self, top: Path, status: Path) -> None:
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.states: list[bool] = []
        self.watch = MetadataWatch(str(top), str(status), self.events.put)

    def next(self, timeout: float = 5.0):
        """The next file event or status save; the watch's own state goes to self.states."""
        while isinstance(event := self.events.get(timeout=timeout), MetadataWatchState):
            self.states.append(event.watching)
        return event

    def wait_ok(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.watch.ok:
            assert time.monotonic() < deadline, self.watch.reason
            time.sleep(0.01)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    top, status = tmp_path / "snapshot", tmp_path / "run"
    top.mkdir()
    status.mkdir()
    return top, status


@pytest.fixture
def watched(dirs):
    w = Watched(*dirs)
    w.watch.start()
    w.wait_ok()
    yield w
    w.watch.stop()


def test_create_rewrite_and_delete_of_a_domain_that_appears_later(dirs, watched) -> None:
    top, _ = dirs
    (top / "vm1").mkdir()
    time.sleep(0.1)  # its watch is added from the event of the directory
    before = time.time()
    write(top / "vm1" / "s1.xml")
    ev = watched.next()
    assert watched.states == [True]  # said once it watches: the tracker then waits for files
    assert (ev.domain, ev.snapshot, ev.change) == ("vm1", "s1", "created")
    assert before <= ev.time <= time.time()
    write(top / "vm1" / "s1.xml")
    assert watched.next().change == "rewritten"
    (top / "vm1" / "s1.xml").unlink()
    assert watched.next() == SnapshotFileEvent(pytest.approx(time.time(), abs=1), "vm1", "s1",
                                               "removed")
    assert watched.events.empty()  # nothing for NAME.xml.new itself


def test_files_there_at_start_are_known_not_new(dirs) -> None:
    top, status = dirs
    (top / "vm1").mkdir()
    write(top / "vm1" / "old.xml")
    w = Watched(top, status)
    w.watch.start()
    try:
        w.wait_ok()
        assert isinstance(w.events.get(timeout=1), MetadataWatchState) and w.events.empty()
        write(top / "vm1" / "old.xml")
        assert w.next().change == "rewritten"
    finally:
        w.watch.stop()


def test_status_saves_of_running_domains(dirs, watched) -> None:
    _, status = dirs
    write(status / "vm1.xml", "<domstatus/>")
    (status / "vm1.pid").write_text("123")
    assert watched.next() == DomainStatusSaved(pytest.approx(time.time(), abs=1), "vm1")
    time.sleep(0.1)
    assert watched.events.empty()


# The head of a status XML as libvirt 9.0 saves it during a save (measured 2026-12-06; 11.3's
# is alike): the async job and its start in ms, before the domain's own XML, which has
# elements of its own.
SAVING = """<domstatus state='paused' reason='save' pid='9601'>
  <taint flag='high-privileges'/>
  <job type='none' async='save' flags='0x0' asyncStarted='1796600724190'/>
  <domain type='qemu'>
    <name>vm1</name>
"""


def test_status_saves_name_the_async_job_and_its_start(dirs, watched) -> None:
    _, status = dirs
    write(status / "vm1.xml", SAVING)
    assert watched.next() == DomainStatusSaved(pytest.approx(time.time(), abs=1), "vm1",
                                               "save", 1796600724.19)
    write(status / "vm1.xml", "<domstatus state='running' reason='restored'>\n"
                              "<job type='destroy' async='none'/>\n<domain><job async='x'/>")
    assert watched.next().job == ""  # a sync job alone, and none in the domain's own XML


def test_a_managed_save_image_created_beside_the_snapshot_directory(dirs) -> None:
    """libvirt's save directory is the snapshot directory's sibling: a managed save creates
    <domain>.save there as it begins writing it (a save to a file writes elsewhere)."""
    top, status = dirs
    (top.parent / "save").mkdir()
    w = Watched(top, status)
    w.watch.start()
    try:
        w.wait_ok()
        (top.parent / "save" / "vm1.save").write_bytes(b"LibvirtQemudSave")
        (top.parent / "save" / "notes.txt").write_text("not an image")
        assert w.next() == ManagedSaveImage(pytest.approx(time.time(), abs=1), "vm1")
        time.sleep(0.1)
        assert w.events.empty()
    finally:
        w.watch.stop()


def test_missing_directory_is_reported_and_watched_once_it_exists(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("libvirt_snapshot_exporter.sources.metadata_watch.RETRY_SECONDS", 0.1)
    top = tmp_path / "snapshot"
    w = Watched(top, tmp_path)
    w.watch.start()
    try:
        time.sleep(0.2)
        assert not w.watch.ok and "No such file" in w.watch.reason
        top.mkdir()
        w.wait_ok()
        (top / "vm").mkdir()
        time.sleep(0.1)
        write(top / "vm" / "s.xml")
        assert w.next().change == "created"
    finally:
        w.watch.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_unreadable_directory_is_reported(dirs) -> None:
    top, status = dirs
    top.chmod(0o700)
    pid = os.fork()
    if pid == 0:  # a child without root's privileges, as the systemd unit would run it
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            w = Watched(top, status)
            w.watch.start()
            time.sleep(0.3)
            code = 0 if not w.watch.ok and "Permission denied" in w.watch.reason else 3
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0


def test_no_directory_for_the_uri_is_reported() -> None:
    w = MetadataWatch("", "/run/libvirt/qemu", lambda ev: None)
    w.start()
    assert not w.ok and "libvirt.snapshot-directory" in w.reason
    w.stop()


@pytest.mark.parametrize(("uri", "expected"), [
    ("qemu:///system", "/var/lib/libvirt/qemu/snapshot"),
    ("qemu:///system?socket=/var/run/libvirt/libvirt-sock-ro", "/var/lib/libvirt/qemu/snapshot"),
    ("qemu+unix:///system", "/var/lib/libvirt/qemu/snapshot"),
    ("qemu+unix:///system?socket=/var/lib/lse-trixie/run/libvirt/libvirt-sock", ""),
    ("qemu+ssh://hv1/system", ""),
    ("qemu+tcp://hv1/system", ""),
    ("test:///default", ""),
])
def test_default_directory(uri: str, expected: str) -> None:
    assert default_directory(uri) == expected


def test_session_default_follows_xdg(monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "/home/u/.cfg")
    assert default_directory("qemu:///session") == "/home/u/.cfg/libvirt/qemu/snapshot"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert default_directory("qemu:///session") == "/home/u/.config/libvirt/qemu/snapshot"
