"""The operations log read back from whatever the state directory holds: every record checked,
bad lines skipped and counted, special files refused without blocking, one lock per directory;
the index by id and by domain kept in step with adds, amends and evictions; what changed appended,
the file rewritten when it holds twice the entries or anything but clean lines."""

from __future__ import annotations

import dataclasses
import json
import os
import threading

import pytest
from libvirt_snapshot_exporter.model.operation import FinishedOperation, InvalidRecord
from libvirt_snapshot_exporter.store.oplog import (
    LOG_NAME,
    MAX_LINE_BYTES,
    OperationsLog,
    StateDirectoryInUse,
)
from lse_devtools.special_files import make_special

GOOD = {
    "domain": "vm1", "snapshot": "s1", "operation": "create", "kind": "internal",
    "memory": True, "depth": 1, "start": 1700000000.0, "end": 1700000040.5,
    "duration_seconds": 40.5, "paused_seconds": 40.5, "outcome": "success", "error": None,
    "start_source": "control", "end_source": "event", "uncertainty_seconds": 0.01,
    "qemu_version": "7.2.0", "disk_cache": ["none"], "job_time_elapsed_ms": None,
    "job_downtime_ms": None, "host_memory_available_start_bytes": 2**33,
    "guest_cpu_ratio": 0.5,
}


def _log_with(tmp_path, *lines: bytes) -> OperationsLog:
    (tmp_path / LOG_NAME).write_bytes(b"".join(line + b"\n" for line in lines))
    return OperationsLog(str(tmp_path))


def _good(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_valid_entries_come_back_as_written(tmp_path):
    log = _log_with(tmp_path, _good(snapshot="a"), _good(snapshot="b"))
    entries, total = log.page(0, 10)
    assert total == 2 and [e.snapshot for e in entries] == ["b", "a"]
    assert entries[1] == FinishedOperation.from_json(GOOD | {"snapshot": "a"})
    assert {k: v for k, v in entries[1].to_json().items() if k in GOOD} == GOOD | {"snapshot": "a"}
    assert log.load_ok and log.invalid_entries == 0


@pytest.mark.parametrize("line", [
    b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xfe\xff\x00{",  # not UTF-8
    _good(snapshot="x")[:-1] + b"\xff\"}",  # valid JSON shape, one stray byte
    "\ufeff".encode() + _good(),  # a BOM: not JSON
    json.dumps({**GOOD, "snapshot": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"),
])
def test_bytes_that_are_not_utf8_are_skipped(tmp_path, line):
    log = _log_with(tmp_path, _good(snapshot="kept"), line)
    entries, total = log.page(0, 10)
    assert [e.snapshot for e in entries] == ["kept"] and total == 1
    assert log.invalid_entries == 1 and log.load_ok


@pytest.mark.parametrize("line", [
    b"42", b"null", b"[]", b'"text"', b"{}", b"true", b"{", b"NaN",
    b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's recursion limit
    b'{"domain": "' + b"x" * MAX_LINE_BYTES + b'"}',  # longer than any entry
    _good(domain=1), _good(memory="yes"), _good(operation="explode"), _good(kind=None),
    _good(outcome="maybe"), _good(start="yesterday"), _good(start=-1), _good(start=1e20),
    _good(end=GOOD["start"] - 1), _good(duration_seconds=-1), _good(depth=-1),
    _good(depth=True), _good(depth=1.5), _good(disk_cache=[1]), _good(disk_cache="none"),
    _good(guest_cpu_ratio="high"), _good(snapshot=["a"]), _good(error={"a": 1}),
    _good(paused_seconds=-0.5),
    _good()[:-1] + b', "qemu_written_bytes": NaN}',
    _good()[:-1] + b', "qemu_written_bytes": Infinity}',
    _good()[:-1] + b', "qemu_written_bytes": -Infinity}',
    _good()[:-1] + b', "qemu_written_bytes": 1e309}',
    _good()[:-1] + b', "qemu_written_bytes": 1' + b"0" * 5000 + b"}",
    _good()[:-1] + b', "qemu_written_bytes": 1' + b"0" * 400 + b"}",  # too big for a float
    _good()[:-1] + b', "start": 1' + b"0" * 400 + b"}",
    json.dumps({k: v for k, v in GOOD.items() if k != "end"}).encode(),
])
def test_records_of_the_wrong_shape_are_skipped(tmp_path, line):
    log = _log_with(tmp_path, line, _good(snapshot="kept"))
    entries, _ = log.page(0, 10)
    assert [e.snapshot for e in entries] == ["kept"]
    assert log.invalid_entries == 1 and log.load_ok


def test_blank_lines_are_not_counted(tmp_path):
    log = _log_with(tmp_path, b"", _good(), b"   ")
    assert log.page(0, 10)[1] == 1 and log.invalid_entries == 0


def test_unknown_fields_are_dropped_and_old_entries_without_optional_ones_kept():
    old = {k: GOOD[k] for k in ("domain", "operation", "kind", "memory", "start", "end",
                                "duration_seconds", "outcome")}
    kept = FinishedOperation.from_json({**old, "extra": {"nested": [1]}}).to_json()
    assert "extra" not in kept
    assert {k: kept[k] for k in old} == old and kept["qemu_written_bytes"] is None
    with pytest.raises(InvalidRecord, match="'outcome'"):
        FinishedOperation.from_json({**old, "outcome": 1})


def test_one_log_line_for_all_skipped_lines(tmp_path, caplog):
    _log_with(tmp_path, b"\xff", b"42", b"null", _good())
    lines = [r for r in caplog.records if "operations log" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "skipped 3 of 4 lines" in lines[0].getMessage()
    assert "line 1: not UTF-8" in lines[0].getMessage()


def test_skipped_lines_are_gone_after_the_next_write(tmp_path):
    log = _log_with(tmp_path, b"\xff", _good(snapshot="a"))
    log.add(FinishedOperation.from_json({**GOOD, "snapshot": "b"}))
    log.flush()
    written = (tmp_path / LOG_NAME).read_text().splitlines()
    assert [json.loads(line)["snapshot"] for line in written] == ["a", "b"]


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_special_file_in_place_of_the_log_is_reported_not_read(tmp_path, kind, caplog):
    make_special(tmp_path / LOG_NAME, kind)
    done: list[OperationsLog] = []
    reader = threading.Thread(target=lambda: done.append(OperationsLog(str(tmp_path))),
                              daemon=True)
    reader.start()
    reader.join(10)
    assert done, f"reading a {kind} where the log should be did not return"
    log = done[0]
    assert not log.load_ok and log.page(0, 10) == ([], 0)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    why = "Is a directory" if kind == "directory" else "not a regular file"
    assert len(errors) == 1 and why in errors[0], errors


@pytest.mark.parametrize("kind", ["dangling symlink", "symlink to a device"])
def test_a_symlink_in_place_of_the_log_is_not_followed(tmp_path, kind, caplog):
    """The exporter writes its log by a rename: a symbolic link there is someone else's, and
    following it would read what it points to (any file, with CAP_DAC_READ_SEARCH)."""
    make_special(tmp_path / LOG_NAME, kind)
    log = OperationsLog(str(tmp_path))
    assert not log.load_ok and log.page(0, 10) == ([], 0)
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "a symbolic link, not followed" in error
    log.add(FinishedOperation.from_json(GOOD))
    log.flush()
    assert (tmp_path / LOG_NAME).is_file() and not (tmp_path / LOG_NAME).is_symlink()


def test_state_directory_that_is_a_file_is_served_through(tmp_path, caplog):
    state = tmp_path / "state"
    state.write_text("not a directory\n")
    log = OperationsLog(str(state))
    assert not log.load_ok
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(state) in errors[0], errors
    log.add(FinishedOperation.from_json(GOOD))
    log.flush()
    assert not log.last_write_ok and log.page(0, 10)[1] == 1


def test_second_log_on_one_directory_is_refused(tmp_path):
    first = OperationsLog(str(tmp_path))
    with pytest.raises(StateDirectoryInUse, match=f"pid {os.getpid()}"):
        OperationsLog(str(tmp_path))
    assert first.load_ok


def test_memory_only_log_takes_no_lock(tmp_path):
    OperationsLog("")
    OperationsLog("")


def test_pages_newest_first():
    log = OperationsLog("", size=50)
    for number in range(60):
        log.add(FinishedOperation.from_json({**GOOD, "snapshot": str(number)}))
    entries, total = log.page(5, 3)
    assert total == 50 and [e.snapshot for e in entries] == ["54", "53", "52"]
    assert log.page(49, 10)[0][0].snapshot == "10" and log.page(50, 10)[0] == []


def test_lock_file_that_cannot_be_opened_still_lets_the_log_be_read(tmp_path, caplog):
    """Here a symlink, which O_NOFOLLOW refuses (as a read-only file system refuses to create
    the file): the log is read all the same, and one line says the directory is unlocked."""
    (tmp_path / LOG_NAME).write_bytes(_good() + b"\n")
    (tmp_path / "operations.lock").symlink_to(tmp_path / "elsewhere")
    log = OperationsLog(str(tmp_path))
    assert log.load_ok and log.page(0, 10)[1] == 1
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "cannot lock operations.lock" in error and "unnoticed" in error, error


VERDICT = {"pace_setter": "storage-slow", "expected_seconds": 9.7, "slowdown": 3.1,
           "shares": {"storage-slow": 0.9, "cpu": 0.01}, "present": ["dirty-throttling"],
           "figures": {"samples": 240, "device_utilisation": 0.97, "slowdown": None},
           "model": "written"}


def test_a_verdict_comes_back_as_written_and_a_bad_one_is_refused(tmp_path):
    log = _log_with(tmp_path, _good(snapshot="judged", verdict=VERDICT),
                    _good(snapshot="pending", verdict=None),
                    *(_good(verdict={**VERDICT, key: value}) for key, value in (
                        ("pace_setter", "gremlins"), ("slowdown", -1), ("present", ["haunted"]),
                        ("shares", {"cpu": "lots"}), ("figures", [1]),
                        ("model", "guesswork"))),
                    _good(verdict="slow"))
    entries, total = log.page(0, 10)
    assert [e.snapshot for e in entries] == ["pending", "judged"] and total == 2
    assert entries[1].verdict.pace_setter == "storage-slow"
    assert entries[1].to_json()["verdict"] == VERDICT
    assert entries[0].verdict is None and log.invalid_entries == 7


def test_amend_replaces_the_entry_with_the_same_id_and_is_written(tmp_path):
    log = OperationsLog(str(tmp_path))
    first = FinishedOperation.from_json(GOOD)
    second = FinishedOperation.from_json({**GOOD, "snapshot": "s2", "start": GOOD["start"] + 1})
    log.add(first)
    log.add(second)
    log.flush()
    judged = FinishedOperation.from_json({**GOOD, "verdict": VERDICT})
    assert judged.id == first.id != second.id
    assert log.amend(judged)
    assert not log.amend(FinishedOperation.from_json({**GOOD, "domain": "gone"}))
    log.close()
    again = OperationsLog(str(tmp_path))
    entries, _ = again.page(0, 10)
    assert [e.verdict for e in entries] == [None, judged.verdict]


def _op(n: int, domain: str = "vm1", **fields) -> FinishedOperation:
    return FinishedOperation.from_json({**GOOD, "snapshot": f"s{n}", "domain": domain,
                                        "start": GOOD["start"] + n, **fields})


def test_the_index_follows_adds_amends_and_evictions():
    log = OperationsLog(None, 3)
    ops = [_op(n, f"vm{n % 2}") for n in range(5)]
    for op in ops:
        log.add(op)
    assert [log.get(op.id) for op in ops] == [None, None, *ops[2:]]
    assert log.page(0, 10) == (ops[:1:-1], 3) and log.page(1, 1) == ([ops[3]], 3)
    assert not log.amend(dataclasses.replace(ops[1], error="late"))  # evicted
    judged = dataclasses.replace(ops[2], verdict=FinishedOperation.from_json(
        {**GOOD, "verdict": VERDICT}).verdict)
    version = log.version
    assert log.amend(judged) and log.get(ops[2].id) is judged and log.version == version + 1
    assert log.page(0, 10)[0] == [ops[4], ops[3], judged]
    assert log.of_domain("vm0", 10) == ([ops[4], judged], 2)
    assert log.of_domain("vm1", 1) == ([ops[3]], 1) and log.of_domain("vm9", 5) == ([], 0)
    log.add(_op(5, "vm1"))
    log.add(_op(6, "vm1"))
    assert sorted(log.domains()) == ["vm0", "vm1"] and log.of_domain("vm0", 5)[1] == 1
    log.add(_op(7, "vm1"))  # vm0's last one leaves
    assert log.domains() == ["vm1"] and log.get(ops[4].id) is None


def test_an_id_logged_twice_finds_the_newer_until_it_leaves(tmp_path):
    old, new = _op(1), _op(1, error="again")
    assert old.id == new.id
    (tmp_path / LOG_NAME).write_text("".join(json.dumps(op.to_json()) + "\n" for op in (old, new)))
    log = OperationsLog(str(tmp_path), 2)
    assert log.get(old.id) == new  # read back from the file: indexed too
    log.add(_op(2))  # the older of the two leaves: the index keeps the newer
    assert log.get(old.id) == new
    log.add(_op(3))
    assert log.get(old.id) is None


def test_pages_across_the_ring_s_wrap_newest_first():
    log = OperationsLog(None, 7)
    ops = [_op(n) for n in range(19)]
    for op in ops:
        log.add(op)
    newest = ops[::-1][:7]
    for offset in range(9):
        for limit in range(1, 9):
            assert log.page(offset, limit) == (newest[offset:offset + limit], 7)
    assert [e.snapshot for e in log._entries] == [f"s{n}" for n in range(12, 19)]  # oldest first


def test_a_figure_that_is_not_finite_is_never_written(tmp_path, caplog):
    """JSON has no Infinity: a log written with it loses the entry at the next start. The
    writer refuses it (one line); the other entries are written and read back."""
    log = OperationsLog(str(tmp_path))
    good = FinishedOperation.from_json(GOOD)
    bad = dataclasses.replace(FinishedOperation.from_json({**GOOD, "snapshot": "bad"}),
                              guest_cpu_ratio=float("inf"))
    for entry in (good, bad):
        log.add(entry)
    log.flush()
    log.add(dataclasses.replace(good, id="0123456789abcdef"))
    log.flush()
    text = (tmp_path / LOG_NAME).read_text()
    assert "Infinity" not in text and len(text.splitlines()) == 2
    log.close()
    again = OperationsLog(str(tmp_path))
    assert again.invalid_entries == 0 and again.page(0, 10)[1] == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "not written to the log" in errors[0], errors


def test_only_the_tail_a_log_can_hold_is_read(tmp_path, caplog):
    """A file far longer than operations.log-size entries (here 64 MiB of lines that are no
    entries before the two newest) costs the bytes of those entries, not its size."""
    with open(tmp_path / LOG_NAME, "wb") as handle:
        handle.write((b"x" * 1023 + b"\n") * 65536)
        handle.write(_good(snapshot="a") + b"\n" + _good(snapshot="b") + b"\n")
    log = OperationsLog(str(tmp_path), size=2)
    assert [e.snapshot for e in log.page(0, 10)[0]] == ["b", "a"]
    assert log.invalid_entries <= 8 and log.load_ok
    assert any("first" in r.getMessage() and "bytes skipped" in r.getMessage()
               for r in caplog.records)


def _lines_on_disk(tmp_path) -> list[str]:
    return (tmp_path / LOG_NAME).read_text().splitlines()


def test_a_flush_appends_what_changed_and_an_amend_wins_when_read_back(tmp_path):
    log = OperationsLog(str(tmp_path))
    log.add(_op(1))
    log.flush()
    log.add(_op(2))
    log.flush()
    judged = _op(1, verdict=VERDICT)
    log.amend(judged)
    log.flush()
    assert [json.loads(line)["snapshot"] for line in _lines_on_disk(tmp_path)] == ["s1", "s2", "s1"]
    log.close()
    again = OperationsLog(str(tmp_path))
    assert again.page(0, 10) == ([_op(2), judged], 2) and again.invalid_entries == 0
    again.add(_op(3))  # the amended entry read back: the file is rewritten, one line each
    again.flush()
    assert [json.loads(line)["snapshot"] for line in _lines_on_disk(tmp_path)] == ["s1", "s2", "s3"]


def test_the_file_is_rewritten_once_it_holds_twice_the_entries_kept(tmp_path):
    log = OperationsLog(str(tmp_path), size=3)
    for n in range(20):
        log.add(_op(n))
        log.flush()
        assert len(_lines_on_disk(tmp_path)) <= 6
    log.close()
    assert OperationsLog(str(tmp_path), size=3).page(0, 10) == ([_op(19), _op(18), _op(17)], 3)


def test_a_line_torn_by_a_crash_never_has_the_next_appended_to_it(tmp_path):
    (tmp_path / LOG_NAME).write_bytes(_good(snapshot="s1") + b"\n" + _good(snapshot="s2")[:40])
    log = OperationsLog(str(tmp_path))
    assert log.invalid_entries == 1
    log.add(_op(3))
    log.flush()
    log.close()
    again = OperationsLog(str(tmp_path))
    assert [e.snapshot for e in again.page(0, 10)[0]] == ["s3", "s1"] and again.invalid_entries == 0


def test_an_append_that_fails_is_kept_and_the_next_flush_replaces_the_file(tmp_path):
    log = OperationsLog(str(tmp_path))
    log.add(_op(1))
    log.flush()
    path = tmp_path / LOG_NAME
    path.unlink()
    os.mkfifo(path)  # no reader: opening it to append fails at once, never waits
    log.add(_op(2))
    log.flush()
    assert log.write_errors == 1 and not log.last_write_ok
    log.flush()
    assert log.last_write_ok and path.is_file()
    assert [json.loads(line)["snapshot"] for line in _lines_on_disk(tmp_path)] == ["s1", "s2"]


def test_while_writes_fail_every_entry_waits_for_the_one_rewrite_that_follows(tmp_path):
    log = OperationsLog(str(tmp_path))
    log.add(_op(1))
    log.flush()
    path = tmp_path / LOG_NAME
    path.unlink()
    path.mkdir()  # neither appended to nor renamed over
    for n in (2, 3):
        log.add(_op(n))
        log.flush()
    assert log.write_errors == 2
    path.rmdir()
    log.flush()  # nothing added since: the failed writes alone make it write
    assert log.last_write_ok
    assert [json.loads(line)["snapshot"] for line in _lines_on_disk(tmp_path)] == ["s1", "s2", "s3"]
