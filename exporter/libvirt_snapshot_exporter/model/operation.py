"""A finished operation as it is recorded (FinishedOperation), and what its JSON form may hold:
every entry read back from disk is checked here.

The log file outlives the process and anyone with access to the state directory can edit it, so
an entry is trusted only once it has the shape the collector writes: known fields, each of its
type, finite numbers and timestamps that a clock can show. Unknown fields are dropped, so the
pages and the JSON API only ever see what they were written for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Timestamps a calendar can show (time.localtime refuses beyond the year 9999).
MAX_TIMESTAMP = 253402300799.0


class InvalidRecord(ValueError):
    """An entry that is not what the collector writes; the message says which field."""


# No figure of an operation comes near it (bytes: 8 EiB; timestamps: MAX_TIMESTAMP), and any
# product or quotient of two figures within it and MIN_DURATION stays finite.
MAX_MAGNITUDE = 2.0**63
# A duration is 0 or at least this: finer than any clock the exporter or bench times with, so
# bytes over a duration (a rate) stay finite (bytes over 1e-300 s would be infinite).
MIN_DURATION = 1e-6


def number(value: Any) -> bool:
    """A finite number within MAX_MAGNITUDE: what every figure read back (the log, a trace, a
    rate seed) must be. math.isfinite alone raises OverflowError on a JSON integer of 309
    digits or more, and 1e300 is finite but turns infinite once multiplied."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < MAX_MAGNITUDE  # False for NaN; an int of any size compares exactly



def _duration(value: Any) -> bool:
    return _non_negative(value) and (value == 0 or value >= MIN_DURATION)


def _timestamp(value: Any) -> bool:
    return number(value) and 0 <= value <= MAX_TIMESTAMP


def _non_negative(value: Any) -> bool:
    return number(value) and value >= 0


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda value: value in allowed


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _figures(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and (v is None or number(v)) for k, v in value.items())


PACE_SETTERS = ("size", "storage-slow", "storage-contended", "cpu", "qemu-cpu", "cache-mode",
                "qcow2-metadata", "mixed", "too-short", "unknown")
# What an operation's expected duration is modelled on (verdict/judge.py's MODELS)
MODELS = ("written", "read", "duration")
CONDITIONS = ("dirty-throttling", "direct-reclaim", "kswapd-reclaim", "memory-pressure",
              "low-memfree-ample-memavailable")


@dataclass(frozen=True)
class Verdict:
    """What set an operation's pace, with the evidence (verdict/judge.py makes it from the trace)."""

    pace_setter: str  # one of PACE_SETTERS
    expected_seconds: float | None  # from the bytes QEMU wrote at the rate this host sustains
    slowdown: float | None  # duration / expected
    shares: Mapping[str, float] = field(default_factory=dict)  # cause -> share of time (0-1)
    present: tuple[str, ...] = ()  # CONDITIONS seen that did not set the pace
    figures: Mapping[str, float | None] = field(default_factory=dict)  # what it rests on
    model: str | None = None  # one of MODELS; None in verdicts logged before models existed

    def short(self) -> str:
        """'storage-slow, 3.0x'; 'size' while no rate is learned: the landing page's column,
        bench's rows and plots."""
        return self.pace_setter + ("" if self.slowdown is None else f", {self.slowdown:.1f}x")

    def to_json(self) -> dict[str, Any]:
        return {
            "pace_setter": self.pace_setter,
            "expected_seconds": _round(self.expected_seconds),
            "slowdown": _round(self.slowdown),
            "shares": {k: round(v, 3) for k, v in self.shares.items()},
            "present": list(self.present),
            "figures": {k: _round(v) for k, v in self.figures.items()},
            "model": self.model,
        }

    @classmethod
    def from_json(cls, value: Any) -> Verdict:
        if not isinstance(value, dict):
            raise InvalidRecord(f"bad 'verdict': {_short(value)}")
        checks = {
            "pace_setter": _one_of(*PACE_SETTERS),
            "expected_seconds": _optional(_non_negative),
            "slowdown": _optional(_non_negative),
            "shares": _figures,
            "present": lambda v: isinstance(v, list) and all(c in CONDITIONS for c in v),
            "figures": _figures,
        }
        for key, check in checks.items():
            if key not in value or not check(value[key]):
                raise InvalidRecord(f"bad 'verdict.{key}': {_short(value.get(key))}")
        if value.get("model") not in (None, *MODELS):
            raise InvalidRecord(f"bad 'verdict.model': {_short(value['model'])}")
        if value["pace_setter"] == "mixed" and len(value["shares"]) < 2:
            raise InvalidRecord("bad 'verdict': 'mixed' with fewer than two shares")
        return cls(value["pace_setter"], value["expected_seconds"], value["slowdown"],
                   dict(value["shares"]), tuple(value["present"]), dict(value["figures"]),
                   value.get("model"))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def new_operation_id() -> str:
    """An operation's id, given as the tracker first sees it and kept in its log entry, its
    trace and its page's URL; safe in a URL and a file name."""
    return secrets.token_hex(8)


def operation_id(domain: str, snapshot: str, operation: str, start: float) -> str:
    """The id of an entry logged without one (before ids were logged), derived from it as
    exporters then did, so its trace and page keep their URL."""
    key = f"{domain}\0{snapshot}\0{operation}\0{start:.3f}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


ID = re.compile(r"[0-9a-f]{16}")


def figure(help_text: str = "") -> Any:
    """A figure of the host or guest around an operation: a number, None where not read; with
    a help text, also a metric of the domain's last operation."""
    return field(default=None, metadata={"figure": True, "help": help_text})


# a snapshot's operations, and a save with the restore that starts the domain from it
SNAPSHOT_OPERATIONS = ("create", "delete", "revert")
OPERATIONS = (*SNAPSHOT_OPERATIONS, "save", "restore")
# a snapshot's: internal | external; a save's and a restore's: managed (libvirt keeps the
# image, the next start restores it) | file (virsh save FILE, virsh restore FILE) | unknown
# (the restore began before any poll saw the saved domain shut off: nothing else tells)
KIND_UNKNOWN = "unknown"
KINDS = ("internal", "external", "managed", "file", KIND_UNKNOWN)
REQUIRED = {
    "domain": _text,
    "operation": _one_of(*OPERATIONS),
    "kind": _one_of(*KINDS),
    "memory": lambda value: isinstance(value, bool),
    "start": _timestamp,
    "end": _timestamp,
    "duration_seconds": _duration,
    "outcome": _one_of("success", "failure"),
}
OPTIONAL = {
    "snapshot": _optional(_text),
    "instance_name": _optional(_text),
    "depth": _optional(lambda value: isinstance(value, int) and not isinstance(value, bool)
                       and value >= 0),
    "paused_seconds": _optional(_non_negative),
    "down_seconds": _optional(_non_negative),
    "error": _optional(_text),
    "start_source": _optional(_text),
    "end_source": _optional(_text),
    "uncertainty_seconds": _optional(_non_negative),
    "qemu_version": _optional(_text),
    "disk_cache": _optional(_texts),
    "storage": _optional(_text),
    "job_time_elapsed_ms": _optional(number),
    "job_downtime_ms": _optional(number),
    "job_memory_processed_bytes": _optional(number),
    "verdict": lambda value: True,  # checked by Verdict.from_json
    "id": _optional(lambda value: isinstance(value, str) and bool(ID.fullmatch(value))),
}


@dataclass(frozen=True)
class FinishedOperation:
    """One finished operation: what the log keeps, the metrics show and the API serves. Fields
    that may be absent are None (an entry written by an older exporter, a figure not read)."""

    domain: str
    operation: str  # one of OPERATIONS
    kind: str  # one of KINDS
    memory: bool
    start: float
    end: float
    duration_seconds: float
    outcome: str  # success | failure
    snapshot: str | None = None
    # the OpenStack instance's name as the domain's Nova metadata gave it when the operation
    # ended: kept, so a deleted instance's history still reads with its name
    instance_name: str | None = None
    depth: int | None = None  # in the snapshot tree, the root being 1 (the study's level)
    paused_seconds: float | None = None
    # a restore's: the guest stopped from its save's start until this restore resumed it
    down_seconds: float | None = None
    error: str | None = None
    start_source: str | None = None
    end_source: str | None = None
    uncertainty_seconds: float | None = None
    qemu_version: str | None = None
    disk_cache: tuple[str, ...] | None = None
    # what its disks live on (verdict/recorder.py's storage_of): the rate it is judged against
    # is learned from the operations on the same storage
    storage: str | None = None
    job_time_elapsed_ms: float | None = None
    job_downtime_ms: float | None = None
    # an external memory snapshot's guest memory, written by libvirt's iohelper, not QEMU
    job_memory_processed_bytes: int | None = None
    # the host and guest around it (model/context.py folds them); each with a help text is also
    # a libvirt_snapshot_last_operation_<name> gauge (exposition/operation_families.py)
    host_memory_available_start_bytes: int | None = figure("Host MemAvailable when the operation began.")
    host_memory_free_start_bytes: int | None = figure()
    host_memory_available_min_bytes: int | None = figure("Lowest host MemAvailable while it ran.")
    host_memory_free_min_bytes: int | None = figure("Lowest host MemFree while it ran.")
    host_cached_start_bytes: int | None = figure()
    host_dirty_peak_bytes: int | None = figure("Highest host Dirty while it ran.")
    host_writeback_peak_bytes: int | None = figure("Highest host Writeback while it ran.")
    qemu_written_bytes: int | None = figure("Bytes the QEMU process wrote while it ran.")
    qemu_write_rate_bytes_per_second: int | None = figure("Bytes the QEMU process wrote per second of it.")
    memory_stall_seconds: float | None = figure("Host PSI memory 'some' stall accumulated while it ran.")
    io_stall_seconds: float | None = figure("Host PSI io 'some' stall accumulated while it ran.")
    guest_memory_used_bytes: int | None = figure("Guest memory in use when it began.")
    guest_memory_total_bytes: int | None = figure()
    guest_cpu_ratio: float | None = figure("Guest CPU use (share of its vCPUs) just before it began.")
    verdict: Verdict | None = None  # once its trace is complete, a few seconds after its end
    id: str = ""  # given as it was first seen (tracker); derived for entries logged without

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", operation_id(self.domain, self.snapshot or "",
                                                        self.operation, self.start))

    def to_json(self) -> dict[str, Any]:
        entry = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.disk_cache is not None:
            entry["disk_cache"] = list(self.disk_cache)
        if self.verdict is not None:
            entry["verdict"] = self.verdict.to_json()
        return entry

    def checked(self) -> FinishedOperation:
        """The entry as the log would read it back; InvalidRecord when it would not be (a
        figure not finite or out of range): what is written must read back, or history is
        lost at the next start."""
        return FinishedOperation.from_json(self.to_json())

    @classmethod
    def from_json(cls, entry: Any) -> FinishedOperation:
        """Raises InvalidRecord naming the first field that is wrong; unknown fields dropped."""
        fields = _checked(entry)
        if fields.get("disk_cache") is not None:
            fields["disk_cache"] = tuple(fields["disk_cache"])
        if fields.get("verdict") is not None:
            fields["verdict"] = Verdict.from_json(fields["verdict"])
        return cls(**fields)


FIGURES = tuple(f for f in dataclasses.fields(FinishedOperation) if f.metadata.get("figure"))
OPTIONAL.update({f.name: _optional(number) for f in FIGURES})
# (name, help) of each figure that is a metric of the domain's last operation
LAST_OPERATION_FIGURES = tuple((f.name, f.metadata["help"]) for f in FIGURES if f.metadata["help"])


def _checked(entry: Any) -> dict[str, Any]:
    """The entry with its known fields only; InvalidRecord names the first field that is wrong."""
    if not isinstance(entry, dict):
        raise InvalidRecord(f"not an object but {type(entry).__name__}")
    for key, check in REQUIRED.items():
        if key not in entry:
            raise InvalidRecord(f"no {key!r}")
        if not check(entry[key]):
            raise InvalidRecord(f"bad {key!r}: {_short(entry[key])}")
    for key, check in OPTIONAL.items():
        if key in entry and not check(entry[key]):
            raise InvalidRecord(f"bad {key!r}: {_short(entry[key])}")
    if entry["end"] < entry["start"]:
        raise InvalidRecord("'end' before 'start'")
    return {key: entry[key] for key in (*REQUIRED, *OPTIONAL) if key in entry}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class OperationFacts:
    """What is known of an operation while it runs: the tracker's Operation keeps (and
    refines) these; the view publishes a copy of them in each InFlight."""

    domain: str
    operation: str  # one of OPERATIONS
    start: float
    start_source: str  # control | event | job_completed | poll | creation_time | status
    start_uncertainty: float
    snapshot: str = ""
    kind: str = "internal"  # one of KINDS; a save's in flight: unknown until its end tells
    memory: bool = False
    depth: int | None = 0  # None for a save or a restore: no snapshot, no depth series
    memory_processed_bytes: int | None = None  # an external memory snapshot's, from its job
    memory_remaining_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.operation not in SNAPSHOT_OPERATIONS:
            self.depth = None


@dataclass(frozen=True)
class InFlight:
    """An operation in flight as the view publishes it: its id, a copy of its facts (the
    tracker goes on refining its own), its figures so far and how far it is."""

    id: str
    facts: OperationFacts
    context: dict[str, Any] = dataclasses.field(default_factory=dict)
    progress_estimate: float | None = None
