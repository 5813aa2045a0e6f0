"""The rate the verdict expects, seeded by a bench run on this host (`bench --json`, the config
key verdict.rate-seed): its creates count as past operations of the host beside those in the
operations log, so the first snapshots a new exporter sees are judged against the storage's
measured rate, not against nothing. Each row's storage (bench's trace's) keeps it to that
storage's operations; a seed written before storages were told apart teaches only operations
of unknown storage. Pure apart from reading the file once at start, through store/safe_file.py
(a regular file of at most MAX_SEED_BYTES: a FIFO is refused, never waited on), and each row
is checked as strictly as a line of the operations log (FinishedOperation.from_json): a figure
that is not a finite number of sane magnitude, or a duration too small to divide by, stops the
start with one line rather than making a rate infinite."""

from __future__ import annotations

import json
from typing import Any

from ..config import ConfigError
from ..model.operation import FinishedOperation, InvalidRecord, number
from ..store.safe_file import BadFile, no_constants, read_bounded

KEY = "verdict.rate-seed"
# A bench run's JSON with every operation's trace inline: some 0.5 MB an operation at most, so
# a run of over a hundred operations; drop the traces (jq 'del(.operations[].trace)') of a
# bigger one, they are not read.
MAX_SEED_BYTES = 64 * 2**20


def load_rate_seed(path: str) -> tuple[FinishedOperation, ...]:
    """The bench run's successful creates, as the operations log would hold them. Raises
    ConfigError (one line naming the key and the file) for a file that is no bench output."""
    try:
        data = json.loads(read_bounded(path, MAX_SEED_BYTES).decode("utf-8"),
                          parse_constant=no_constants)
    except BadFile as exc:
        raise ConfigError(f"{KEY}: cannot read {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{KEY}: {path} is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"{KEY}: {path} is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise ConfigError(f"{KEY}: {path} is not JSON: {' '.join(str(exc).split())[:80]}") \
            from None
    rows = data.get("operations") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(f"{KEY}: {path} is not a bench --json output (no operations list)")
    seed = []
    for index, row in enumerate(rows, 1):
        try:
            record = _record(row)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{KEY}: {path}: operation {index}: bad or missing {exc}") \
                from None
        except InvalidRecord as exc:
            raise ConfigError(f"{KEY}: {path}: operation {index}: {exc}") from None
        if record is not None:
            seed.append(record)
    return tuple(seed)


def _record(row: Any) -> FinishedOperation | None:
    """A bench row as the log's entry of it, checked as one (InvalidRecord names the field)."""
    if not isinstance(row, dict):
        raise InvalidRecord(f"not an object but {type(row).__name__}")
    if row["operation"] != "create" or row["outcome"] != "success":
        return None
    written, cache = row["qemu_written_bytes"], row["disk_cache"]
    if not isinstance(cache, str):
        raise InvalidRecord(f"bad 'disk_cache': {str(cache)[:40]}")
    return FinishedOperation.from_json({
        "domain": row["domain"], "operation": "create",
        "kind": "internal" if row["kind"] == "internal" else "external",
        "memory": row["kind"] != "disk-only", "start": row["start"], "end": row["end"],
        "duration_seconds": row["duration_seconds"], "outcome": "success",
        "snapshot": row["snapshot"], "start_source": "bench", "end_source": "bench",
        "disk_cache": cache.split(","), "storage": row.get("storage"),
        "qemu_written_bytes": int(written) if number(written) else written,
    })
