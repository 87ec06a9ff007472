"""Atomic model checkpoints: the VW model file plus a manifest saying what it has learned.

``checkpoint.json`` names the model file and ``learned_seq``, the last outcome (in log order) the
model includes. Both are written to a temporary name, fsynced and renamed, the manifest last, so a
crash at any point leaves the previous checkpoint intact. On start the engine loads the model and
re-learns the outcomes after ``learned_seq`` from the log, so no learning is lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST = "checkpoint.json"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    model_file: str
    model_id: str
    learned_seq: int
    examples_learned: int
    ts: float
    bandit: dict[str, object]
    policy: dict[str, str] | None = None  # the registered policy (model_name, version, alias) it came from


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync the result, then rename it over ``path`` and fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_checkpoint(directory: Path, save_model: Callable[[str], None], checkpoint: Checkpoint) -> None:
    atomic_write(directory / checkpoint.model_file, save_model)

    def write_manifest(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(asdict(checkpoint), indent=2))

    atomic_write(directory / MANIFEST, write_manifest)
    for old in directory.glob("model-*.vw"):
        if old.name != checkpoint.model_file:
            old.unlink(missing_ok=True)


def read_checkpoint(directory: Path) -> Checkpoint | None:
    manifest = directory / MANIFEST
    if not manifest.exists():
        return None
    data = json.loads(manifest.read_text())
    return Checkpoint(**data)
