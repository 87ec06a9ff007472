"""Write the joined event log (decisions with their rewards) as JSON Lines or Parquet.

The export is the log's whole history: what retention archived, then what the log holds
(:meth:`~engine.logreader.LogReader.history`). JSON Lines keeps every record whole. Parquet has one row per filled slot, with the features and
candidates as JSON text, which is the shape off-policy evaluation and notebooks want.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.logreader import LogReader


def _private(path: Path) -> Path:
    """Create ``path`` empty and readable by its owner alone: the export holds users' ids and features."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(path, 0o600)
    return path


def export_jsonl(log: LogReader, path: Path) -> int:
    count = 0
    with open(_private(path), "w") as out:
        for event in log.history():
            out.write(json.dumps(event.to_export(), separators=(",", ":")) + "\n")
            count += 1
    return count


def export_parquet(log: LogReader, path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for event in log.history():
        record = event.to_export()
        slots = record.pop("slots")
        del record["rewards"]  # the labelled rewards stay in the JSON Lines export
        shared = {
            **record,
            "user_features": json.dumps(record["user_features"]),
            "context": json.dumps(record["context"]),
            "candidates": json.dumps(record["candidates"]),
            "portrait": json.dumps(record["portrait"]),
            "num_candidates": len(event.decision.candidates),
        }
        for slot in slots:  # type: ignore[attr-defined]
            rows.append({**shared, **slot})
    pq.write_table(pa.Table.from_pylist(rows), _private(path))
    return len(rows)
