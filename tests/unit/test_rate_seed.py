"""A bench run seeds the rate the verdict expects: its creates are read as the log would hold
them (tests/unit/bench/six-settings.json is a real `bench --json` output of 2026-12-01, internal
and external under writeback, none and unsafe, its traces left out), and a file that is no
bench output stops the exporter with one line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.config import ConfigError
from libvirt_snapshot_exporter.verdict.judge import reference
from libvirt_snapshot_exporter.verdict.rate_seed import load_rate_seed

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
