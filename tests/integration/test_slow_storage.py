"""The slow-storage bed (lse_devtools.slow_storage) leaves nothing behind, also after a failure
and after a run that was killed; each stressor (lse_devtools.stressors) puts the host back when
its block fails.

Issue 15's tests of each slow condition on a real guest, the snapshot at the device's rate
among them, are test_slow_conditions.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lse_devtools import stressors
from lse_devtools.slow_storage import (
    diskstats,
    leftovers,
    remains,
    slow_storage,
    throttled_storage,
    throttles,
)

# host_only: the beds (a FUSE device, a throttled loop device) and the stressors are the host's;
# no libvirt is involved.
pytestmark = [pytest.mark.libvirt, pytest.mark.host_only]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_bed_is_taken_down_after_a_failure_and_after_a_killed_run():
    with pytest.raises(RuntimeError, match="test failed"), slow_storage(size_mib=64) as storage:
        raise RuntimeError("test failed")
    assert remains(storage.base) == [] and not alive(storage.daemon_pid)

    # A run killed with its bed up: the next bed takes that one down first.
    base, daemon = killed_with_its_bed_up("slow_storage", "daemon_pid")
    assert remains(base) and base in leftovers()
    with slow_storage(size_mib=64) as storage:
        assert remains(base) == [] and not alive(int(daemon))
    assert remains(storage.base) == [] and not alive(storage.daemon_pid)


def killed_with_its_bed_up(bed: str, field: str) -> tuple[Path, str]:
    """A process that put up a bed (slow_storage's `bed` function) killed before it could take
    it down: the bed's directory and its `field`."""
    code = (f"import time\nfrom lse_devtools.slow_storage import {bed}\n"
            f"with {bed}(size_mib=64) as s:\n"
            f"    print(s.base, s.{field}, flush=True)\n    time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    base, value = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    return Path(base), value


def throttle_of(device: str) -> int:
    """The root blkio group's write limit on the device, 0 if none."""
    return throttles().get(Path(f"/sys/block/{device}/dev").read_text().strip(), 0)


def test_throttled_bed_writes_at_its_rate_and_leaves_no_throttle_behind():
    """The throttled bed writes at its rate with its device all but idle; its write limit goes
    with it, after a failure and after a run that was killed (a limit left on a loop device
    would slow whatever uses that device next)."""
    with throttled_storage(size_mib=256, rate=20e6) as storage:
        assert throttle_of(storage.device) == 20_000_000
        before, start = diskstats(storage.device), time.monotonic()
        subprocess.run(["dd", "if=/dev/zero", f"of={storage.directory}/f", "bs=1M", "count=60",
                        "conv=fdatasync", "status=none"], check=True)
        seconds = time.monotonic() - start
        after = diskstats(storage.device)
        written = (after["sectors_written"] - before["sectors_written"]) * 512
        busy = (after["io_ticks_ms"] - before["io_ticks_ms"]) / 1000 / seconds
        # 2026-12-06: 300 MiB in 10.5 s at 30 MB/s, the device busy 3.5 % of it.
        assert written >= 60 << 20 and 0.8 * written / 20e6 <= seconds, (written, seconds)
        assert busy < 0.3, busy
        device = storage.device
    assert remains(storage.base) == [] and throttle_of(device) == 0

    with pytest.raises(RuntimeError, match="test failed"), throttled_storage(size_mib=64) as storage:
        raise RuntimeError("test failed")
    assert remains(storage.base) == [] and throttle_of(storage.device) == 0

    base, device = killed_with_its_bed_up("throttled_storage", "device")
    assert throttle_of(device) and any(x.startswith("write limit on") for x in remains(base))
    assert base in leftovers()
    with slow_storage(size_mib=64) as storage:  # either kind of bed takes it down
        assert remains(base) == [] and throttle_of(device) == 0
    assert remains(storage.base) == []


def processes_with(text: str) -> list[int]:
    """Pids whose command line contains text."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in proc.joinpath("cmdline").read_bytes().replace(b"\0", b" "):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_stressors_put_the_host_back_when_the_block_fails():
    """Each stressor, its block raising: the host as before, no stressor process left."""
    vm = Path("/proc/sys/vm")
    before = {k: (vm / k).read_text() for k in stressors.DIRTY_KEYS}
    with pytest.raises(RuntimeError), stressors.dirty_limits(64 << 20, 16 << 20):
        assert (vm / "dirty_bytes").read_text().strip() == str(64 << 20)
        raise RuntimeError
    with pytest.raises(RuntimeError), stressors.dirty_limits(dirty_ratio=60, background_ratio=30):
        raise RuntimeError
    assert {k: (vm / k).read_text() for k in stressors.DIRTY_KEYS} == before

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        affinity = os.sched_getaffinity(sleeper.pid)
        with pytest.raises(RuntimeError), stressors.rt_cpu_hog(sleeper.pid) as cpu:
            assert os.sched_getaffinity(sleeper.pid) == {cpu}
            assert processes_with("while :; do :; done")
            raise RuntimeError
        assert os.sched_getaffinity(sleeper.pid) == affinity
        assert not processes_with("while :; do :; done")
    finally:
        sleeper.kill()
        sleeper.wait()

    pool = vm / "nr_hugepages"
    saved_pool = pool.read_text()
    with pytest.raises(RuntimeError), stressors.memory_hog(stressors.mem_available() - (512 << 20)):
        assert processes_with("MAP_POPULATE")
        raise RuntimeError
    assert not processes_with("MAP_POPULATE")
    # All but 1 GiB of free memory, its bulk in the huge page pool: the pool put back when the
    # block fails, and when the test process is killed (the hog gets SIGTERM and does it).
    with pytest.raises(RuntimeError), stressors.memory_hog(1 << 30, keep="MemFree") as held:
        assert int(pool.read_text()) > int(saved_pool) and held > 0
        raise RuntimeError
    assert pool.read_text() == saved_pool and not processes_with("MAP_POPULATE")
    code = ("import time\nfrom lse_devtools import stressors\n"
            "with stressors.memory_hog(1 << 30, keep='MemFree') as held:\n"
            "    print(held, flush=True)\n    time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert int(child.stdout.readline()) > 0 and int(pool.read_text()) > int(saved_pool)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 10
    while (pool.read_text() != saved_pool or processes_with("MAP_POPULATE")) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool.read_text() == saved_pool and not processes_with("MAP_POPULATE")

    with slow_storage(size_mib=64) as storage:
        with pytest.raises(RuntimeError), stressors.competing_writer(storage.directory, 16) as path:
            time.sleep(1)
            assert path.exists() and processes_with(str(path))
            raise RuntimeError
        assert not path.exists() and not processes_with(str(path))
