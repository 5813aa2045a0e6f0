"""The rate the verdict expects, seeded by a bench run on this host (`bench --json`, the config
key verdict.rate-seed): its creates count as past operations of the host beside those in the
operations log, so the first snapshots a new exporter sees are judged against the storage's
measured rate, not against nothing. Each row's storage (bench's trace's) keeps it to that
storage's operations; a seed written before storages were told apart teaches only operations
of unknown storage. Pure apart from reading the file once at start."""

from __future__ import annotations

import json
from typing import Any

from ..config import ConfigError
from ..model.operation import FinishedOperation

KEY = "verdict.rate-seed"


def load_rate_seed(path: str) -> tuple[FinishedOperation, ...]:
    """The bench run's successful creates, as the operations log would hold them. Raises
    ConfigError (one line naming the key and the file) for a file that is no bench output."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(f"{KEY}: cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{KEY}: {path} is not JSON: {exc}") from exc
    rows = data.get("operations") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(f"{KEY}: {path} is not a bench --json output (no operations list)")
    seed = []
    for number, row in enumerate(rows, 1):
        try:
            record = _record(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{KEY}: {path}: operation {number}: bad or missing {exc}") from exc
        if record is not None:
            seed.append(record)
    return tuple(seed)


def _record(row: Any) -> FinishedOperation | None:
    if row["operation"] != "create" or row["outcome"] != "success":
        return None
    written = row["qemu_written_bytes"]
    return FinishedOperation(
        domain=str(row["domain"]), operation="create",
        kind="internal" if row["kind"] == "internal" else "external",
        memory=row["kind"] != "disk-only", start=float(row["start"]), end=float(row["end"]),
        duration_seconds=float(row["duration_seconds"]), outcome="success",
        snapshot=str(row["snapshot"]), start_source="bench", end_source="bench",
        disk_cache=tuple(str(row["disk_cache"]).split(",")),
        storage=None if row.get("storage") is None else str(row["storage"]),
        qemu_written_bytes=None if written is None else int(written))
