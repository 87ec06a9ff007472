"""Write the joined event log (decisions with their rewards) as JSON Lines or Parquet.

The export is the log's whole history: what retention archived, then what the log holds
(:meth:`~engine.eventlog.EventLog.history`). JSON Lines keeps every record whole. Parquet has one row per filled slot, with the features and
candidates as JSON text, which is the shape off-policy evaluation and notebooks want.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.eventlog import EventLog


def _private(path: Path) -> Path:
    """Create ``path`` empty and readable by its owner alone: the export holds users' ids and features."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(path, 0o600)
    return path


def export_jsonl(log: EventLog, path: Path) -> int:
    count = 0
    with open(_private(path), "w") as out:
        for record in log.history():
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            count += 1
    return count


def export_parquet(log: EventLog, path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for record in log.history():
        shared = {
            "event_id": record["event_id"],
            "ts": record["ts"],
            "user_id": record["user_id"],
            "model_version": record["model_version"],
            "user_features": json.dumps(record["user_features"]),
            "context": json.dumps(record["context"]),
            "candidates": json.dumps(record["candidates"]),
            "num_candidates": len(record["candidates"]),  # type: ignore[arg-type]
            "deferred": record["deferred"],
        }
        for slot in record["slots"]:  # type: ignore[attr-defined]
            rows.append({**shared, **slot})
    pq.write_table(pa.Table.from_pylist(rows), _private(path))
    return len(rows)
