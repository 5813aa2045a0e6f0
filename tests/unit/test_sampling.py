"""The sampling steps on libvirt's test driver and real files: each domain's QEMU process (this
test's own, through a pid file), disks and images, the host's figures, and a source that
cannot read its figures failing alone."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from libvirt_snapshot_exporter.config import build
from libvirt_snapshot_exporter.loop.context_keeper import ContextKeeper
from libvirt_snapshot_exporter.loop.domain_cache import LoopParts
from libvirt_snapshot_exporter.loop.domain_polls import DomainPolls
from libvirt_snapshot_exporter.loop.sampling import Sampler
from libvirt_snapshot_exporter.model.observations import CONTROL_JOB
from libvirt_snapshot_exporter.sources.host import HostReader
from libvirt_snapshot_exporter.sources.libvirt.adapter import LibvirtAdapter
from libvirt_snapshot_exporter.sources.qemu_process import ProcessReader
from lse_devtools.test_driver import URI, running_guest

PROC = Path(__file__).parent / "proc"


@dataclass
class Bed:
    adapter: LibvirtAdapter
    polls: DomainPolls
    sampler: Sampler
    parts: LoopParts
    contexts: ContextKeeper
    pids: Path
    procfs: Path


def fake_procfs(path: Path) -> Path:
    """The host files captured on a build machine: /proc/meminfo, vmstat, pressure/memory."""
    (path / "pressure").mkdir(parents=True)
    shutil.copy(PROC / "meminfo", path)
    shutil.copy(PROC / "vmstat", path)
    shutil.copy(PROC / "pressure-memory", path / "pressure" / "memory")
    return path


@pytest.fixture
def bed(tmp_path, request, monkeypatch) -> Iterator[Bed]:
    """On the real /proc, where this process is the domains' QEMU; on the captured host files
    for a test parametrised with "captured"."""
    monkeypatch.setattr(psutil, "PROCFS_PATH", psutil.PROCFS_PATH)  # HostReader sets it
    captured = getattr(request, "param", "") == "captured"
    procfs = fake_procfs(tmp_path / "proc") if captured else Path("/proc")
    pids = tmp_path / "pids"
    pids.mkdir()
    adapter = LibvirtAdapter(URI, lambda _obs: None, pid_directory=str(pids))
    assert adapter.ensure_connected()
    parts, contexts = LoopParts.on(adapter), ContextKeeper()
    polls = DomainPolls(parts, build({"libvirt_uri": URI}, None), parts.tracker.observe,
                        lambda _name: None)
    sampler = Sampler(parts, HostReader(str(procfs)), ProcessReader(), contexts, None)
    yield Bed(adapter, polls, sampler, parts, contexts, pids, procfs)
    adapter.close()


def test_every_domain_gets_its_statistics_process_disks_and_images(bed, tmp_path):
    image = tmp_path / "vm.img"
    image.write_bytes(os.urandom(1 << 20))
    with running_guest(str(image)) as dom:
        name = dom.name()
        (bed.pids / f"{name}.pid").write_text(f"{os.getpid()}\n")  # this process as its QEMU
        now = time.time()
        bed.polls.poll(now)
        bed.sampler.sample_domains(now)
        bed.parts.later.finish(5.0)  # the bulk statistics and the disk XML answer
        bed.sampler.sample_domains(now + 1)  # images: of the disks read meanwhile
        cache = bed.parts.domains[name]
        assert cache.process.pid == os.getpid() and cache.process.io_source == "proc_io"
        assert [(d.target, d.source, d.cache) for d in cache.disks] == [("vda", str(image), "none")]
        assert cache.image_size == image.stat().st_blocks * 512 and cache.filesystems
        statuses = bed.parts.health.statuses()  # the test driver's bulk statistics: state only
        assert all(statuses[s].success for s in ("guests", "qemu_process", "images")), statuses


def test_disks_are_read_again_at_once_under_a_new_qemu(bed, tmp_path):
    """A start from a managed save (bench's cache switch) gives a new QEMU: its disks, and so
    the cache mode the next create is judged by, are read before the next sampling."""
    image = tmp_path / "vm.img"
    image.write_bytes(b"\0" * 4096)
    with running_guest(str(image)) as dom:
        name = dom.name()
        pid_file = bed.pids / f"{name}.pid"
        pid_file.write_text(f"{os.getpid()}\n")
        now = time.time()
        bed.polls.poll(now)
        bed.sampler.sample_domains(now)
        bed.parts.later.finish(5.0)
        cache = bed.parts.domains[name]
        assert cache.disks_pid == os.getpid() and cache.disk_cache_modes() == ("none",)
        pid_file.write_text(f"{os.getppid()}\n")  # restarted: another process
        cache.next_resync = 0.0  # its next poll is a full one, as after a lifecycle event
        bed.polls.poll(now + 1)
        assert cache.pid == os.getppid() and cache.disk_cache_modes() == ()
        bed.sampler.refresh_outdated_disks(now + 1)
        bed.parts.later.finish(5.0)
        assert cache.disks_pid == os.getppid() and cache.disk_cache_modes() == ("none",)


def test_an_image_that_cannot_be_read_fails_images_alone_and_holds_up_no_other_domain(bed,
                                                                                     tmp_path):
    good, loop = tmp_path / "good.img", tmp_path / "loop.img"
    good.write_bytes(b"x" * 4096)
    loop.symlink_to(loop)  # stat fails, for root too
    with running_guest(str(loop)) as broken, running_guest(str(good)) as fine:
        now = time.time()
        bed.polls.poll(now)
        bed.sampler.sample_domains(now)
        bed.parts.later.finish(5.0)
        bed.sampler.sample_domains(now + 1)
        assert bed.parts.domains[fine.name()].image_size == good.stat().st_blocks * 512
        assert bed.parts.domains[broken.name()].image_size is None
        statuses = bed.parts.health.statuses()
        assert not statuses["images"].success and statuses["qemu_process"].success


def test_between_samplings_only_busy_domains_have_their_process_read(bed):
    with running_guest() as busy, running_guest() as idle:
        for dom in (busy, idle):
            (bed.pids / f"{dom.name()}.pid").write_text(f"{os.getpid()}\n")
        bed.polls.poll(time.time())
        poll = bed.adapter.poll_domain(busy.name()).result()
        # As a poll during an async job reads it: controlInfo in JOB for half a second.
        bed.parts.tracker.observe(dataclasses.replace(poll, control_state=CONTROL_JOB,
                                                control_time_ms=500))
        assert bed.parts.tracker.is_busy(busy.name())
        bed.sampler.sample_busy_processes(time.time())
        assert bed.parts.domains[busy.name()].process.pid == os.getpid()
        assert bed.parts.domains[idle.name()].process is None


@pytest.mark.parametrize("bed", ["captured"], indirect=True)
def test_the_host_sample_goes_to_the_contexts_and_is_none_while_it_fails(bed):
    bed.sampler.sample_host()
    sample = bed.sampler.host_sample
    assert sample.memory["cached"] == 285168 * 1024 and "memory_some" in sample.pressure
    assert bed.parts.health.statuses()["host"].success
    bed.contexts.begin("vm1/1", "vm1", sample.time - 1, None, None, None)
    assert bed.contexts.current("vm1/1").get("host_cached_start_bytes") == 285168 * 1024
    (bed.procfs / "vmstat").unlink()
    bed.parts.health.new_cycle()
    bed.parts.health.run("host", bed.sampler.sample_host)
    assert bed.sampler.host_sample is None and not bed.parts.health.statuses()["host"].success
