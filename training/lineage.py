"""Dataset lineage: which store a run read, which rows, from when to when, and a digest of them.

Every evaluation and embeddings run logs its input as an MLflow dataset (``run.inputs``): a
:class:`mlflow.data.meta_dataset.MetaDataset` whose source is the store that was read (the event
log ``events.db``, an exported ``.jsonl``/``.parquet``, an interactions CSV), whose digest is a
hash of the rows actually used, and whose profile holds the row count and the time range.
MLflow's UI shows these on the run page and compares runs by digest: two evaluations with the same
digest saw the same data.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class DatasetFacts:
    """What a run read: ``rows`` rows of ``store`` dated ``first_ts`` to ``last_ts``, hashed to ``digest``.

    ``extra`` goes into the profile beside the count and the range (for an evaluation: the
    decisions the slot examples came from).
    """

    name: str
    store: str
    rows: int
    first_ts: float | None
    last_ts: float | None
    digest: str
    extra: tuple[tuple[str, Any], ...] = ()

    def profile(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "first_time": iso_time(self.first_ts),
            "last_time": iso_time(self.last_ts),
            **dict(self.extra),
        }


def iso_time(ts: float | None) -> str | None:
    """``ts`` (seconds since the epoch) as ISO 8601 in UTC, or ``None``."""
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def digest_lines(lines: Iterable[str]) -> str:
    """A SHA-256 of the rows, each hashed as UTF-8 with its line ending; the first 16 hex digits."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def digest_file(path: Path) -> str:
    """A SHA-256 of the file's bytes; the first 16 hex digits."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def mlflow_dataset(facts: DatasetFacts):  # type: ignore[no-untyped-def]
    """The facts as an MLflow dataset entity: a ``MetaDataset`` of the local store, with the profile."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset

    with warnings.catch_warnings():  # the local scheme is registered twice ("" and "file"): same source
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(facts.store).resolve()))
    meta = MetaDataset(source, name=facts.name, digest=facts.digest).to_dict()
    return Dataset(name=meta["name"], digest=meta["digest"], source_type=meta["source_type"], source=meta["source"],
                   profile=json.dumps(facts.profile()))


def log_dataset(client: MlflowClient, run_id: str, facts: DatasetFacts, context: str) -> None:
    """Log ``facts`` as an input of the run; ``context`` is ``evaluation`` or ``training``."""
    from mlflow.entities import DatasetInput, InputTag

    entity = mlflow_dataset(facts)
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])
