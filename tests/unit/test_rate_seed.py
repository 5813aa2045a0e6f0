"""A bench run seeds the rate the verdict expects: its creates are read as the log would hold
them (tests/unit/bench/six-settings.json is a real `bench --json` output of 2026-12-01, internal
and external under writeback, none and unsafe, its traces left out), and a file that is no
bench output stops the exporter with one line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.config import ConfigError
from libvirt_snapshot_exporter.verdict.judge import reference
from libvirt_snapshot_exporter.verdict.rate_seed import MAX_SEED_BYTES, load_rate_seed

SIX = Path(__file__).parent / "bench" / "six-settings.json"


def test_the_runs_creates_seed_the_rate_of_its_writeback_internal_ones():
    seed = load_rate_seed(str(SIX))
    assert len(seed) == 12 and all(r.operation == "create" and r.outcome == "success"
                                   for r in seed)
    assert {(r.kind, r.disk_cache) for r in seed} == {
        (kind, (cache,)) for kind in ("internal", "external")
        for cache in ("writeback", "none", "unsafe")}
    writeback = [r for r in seed if r.kind == "internal" and r.disk_cache == ("writeback",)]
    # Neither cache=none (direct I/O, its own cause) nor unsafe (no flush, 0.4x) teach it.
    assert reference(seed, seed[0]) == max(r.qemu_written_bytes / r.duration_seconds
                                       for r in writeback)
    assert 250e6 < reference(seed, seed[0]) < 400e6  # ~890 MiB in 2.8-3.0 s on the local disk


@pytest.mark.parametrize("content, needle", [
    ("{", "is not JSON"),
    ("[1, 2]", "is not a bench --json output"),
    ('{"operations": [{"operation": "create", "outcome": "success"}]}',
     "operation 1: bad or missing 'qemu_written_bytes'"),
])
def test_a_file_that_is_no_bench_output_is_one_line_naming_it(tmp_path, content, needle):
    bad = tmp_path / "seed.json"
    bad.write_text(content)
    with pytest.raises(ConfigError, match="verdict.rate-seed") as raised:
        load_rate_seed(str(bad))
    assert needle in str(raised.value) and "\n" not in str(raised.value)


def test_the_exporter_refuses_to_start_on_a_bad_seed_and_accepts_a_good_one(tmp_path):
    missing = tmp_path / "none.json"
    result = subprocess.run([sys.executable, "-m", "libvirt_snapshot_exporter",
                             f"--verdict.rate-seed={missing}", "--check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.strip().count("\n") == 0
    assert f"verdict.rate-seed: cannot read {missing}" in result.stderr
    good = subprocess.run([sys.executable, "-m", "libvirt_snapshot_exporter",
                           f"--verdict.rate-seed={SIX}", "--check-config"],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr


def test_the_seed_is_read_as_written(tmp_path):
    data = json.loads(SIX.read_text())
    data["operations"] = [o for o in data["operations"] if o["kind"] == "internal"][:1]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(data))
    (record,) = load_rate_seed(str(path))
    row = data["operations"][0]
    assert (record.domain, record.snapshot, record.duration_seconds, record.qemu_written_bytes,
            record.memory, record.start_source) == (
        row["domain"], row["snapshot"], row["duration_seconds"], row["qemu_written_bytes"],
        True, "bench")


def test_each_row_seeds_the_storage_it_names_alone(tmp_path):
    """bench rows name the storage under the guest's disk: a seed from the local disk sets no
    expectation for a create on another storage; a seed from before storages were named only
    for operations whose storage is unknown too."""
    data = json.loads(SIX.read_text())
    for row in data["operations"]:
        row["storage"] = "vda"
    path = tmp_path / "named.json"
    path.write_text(json.dumps(data))
    seed = load_rate_seed(str(path))
    on_vda = next(r for r in seed if r.kind == "internal" and r.disk_cache == ("writeback",))
    assert on_vda.storage == "vda" and reference(seed, on_vda) is not None
    assert reference(seed, dataclasses.replace(on_vda, storage="loop3")) is None
    unnamed = load_rate_seed(str(SIX))
    assert reference(unnamed, on_vda) is None
    assert reference(unnamed, dataclasses.replace(on_vda, storage=None)) is not None


def _seed_with(tmp_path: Path, **changes) -> Path:
    data = json.loads(SIX.read_text())
    data["operations"][0].update(changes)
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("changes, needle", [
    ({"qemu_written_bytes": 10**400}, "operation 1: bad 'qemu_written_bytes'"),
    ({"duration_seconds": 1e-300}, "operation 1: bad 'duration_seconds'"),  # an infinite rate
    ({"start": 10**400}, "operation 1: bad 'start'"),
    ({"domain": 42}, "operation 1: bad 'domain'"),
    ({"disk_cache": ["none"]}, "operation 1: bad 'disk_cache'"),
])
def test_a_row_is_checked_as_strictly_as_the_log(tmp_path, changes, needle):
    with pytest.raises(ConfigError) as raised:
        load_rate_seed(str(_seed_with(tmp_path, **changes)))
    assert needle in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("content, needle", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"operations": [' + "1" * 5000 + "]}", "is not JSON"),  # too many digits for an int
    ('{"operations": [NaN]}', "NaN is not a JSON number"),
    ('{"operations": [[1]]}', "operation 1: not an object"),
    ("\xff", "is not UTF-8"),
])
def test_a_file_that_no_parser_should_choke_on_is_one_line(tmp_path, content, needle):
    bad = tmp_path / "seed.json"
    bad.write_bytes(content.encode("latin-1"))
    with pytest.raises(ConfigError) as raised:
        load_rate_seed(str(bad))
    assert needle in str(raised.value) and "\n" not in str(raised.value)


def test_a_fifo_seed_is_refused_at_once_check_config_included(tmp_path):
    fifo = tmp_path / "seed.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_rate_seed(str(fifo))
    result = subprocess.run([sys.executable, "-m", "libvirt_snapshot_exporter",
                             f"--verdict.rate-seed={fifo}", "--check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result
    assert "not a regular file" in result.stderr


def test_a_seed_too_big_is_refused_and_a_symlink_to_a_seed_followed(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.truncate(MAX_SEED_BYTES + 1)
    with pytest.raises(ConfigError, match="larger than"):
        load_rate_seed(str(big))
    link = tmp_path / "link.json"
    link.symlink_to(SIX)
    assert len(load_rate_seed(str(link))) == 12
