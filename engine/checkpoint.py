"""Atomic model checkpoints: the VW model file plus a manifest saying what it has learned.

``checkpoint.json`` names the model file and ``learned_seq``, the last outcome (in log order) the
model includes. Both are written to a temporary name, fsynced and renamed, the manifest last, so a
crash at any point leaves the previous checkpoint intact. On start the engine loads the model and
re-learns the outcomes after ``learned_seq`` from the log, so no learning is lost.

The manifest also records the sha256 of the model file and the id of the event log it learned
from. A checkpoint is refused (:class:`~engine.errors.StartupRefused`) when its model file is
missing or differs, or when it does not fit the log: another log, or a log that ends before
``learned_seq``. The log is the source of truth: ``recbandit rebuild-model`` relearns it whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine.bandit import EXAMPLE_FORMAT
from engine.errors import CorruptCheckpoint, StartupRefused, rebuild_advice

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
    checksums: dict[str, str] = field(default_factory=dict)  # file name → sha256 (hex) of every file it names
    log_id: str | None = None  # the event log it learned from (``EventLog.log_id``); None: written before ids
    example_format: int = 1  # the layout of the lines it learned from (engine.bandit.EXAMPLE_FORMAT); 1: before formats


def check_example_format(checkpoint: Checkpoint, where: str, data_dir: str | os.PathLike[str]) -> None:
    """Refuse a model learned from lines of another layout (:data:`~engine.bandit.EXAMPLE_FORMAT`):
    it would find few of its weights in today's lines. ``where`` names the model for the message."""
    if checkpoint.example_format != EXAMPLE_FORMAT:
        raise StartupRefused(
            f"{where} learned from examples of format {checkpoint.example_format}, and this recbandit builds "
            f"format {EXAMPLE_FORMAT} (the item id and the hour outside the interactions), in which it would find "
            f"few of its weights; {rebuild_advice(data_dir)} with this format")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a private file (0600), fsync it, rename it over ``path`` and fsync the folder.

    The temporary's name is this writer's own, so processes writing the same file at once (serving
    processes installing one artifact into a data directory they share) never write into each other's.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        write(str(tmp))
        os.chmod(tmp, 0o600)  # a writer that replaced the file created it with the umask's mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp.with_name(tmp.name + ".writing")):  # VW's save writes "<path>.writing" first
            leftover.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_checkpoint(directory: Path, save_model: Callable[[str], None], checkpoint: Checkpoint) -> Checkpoint:
    """Write the model file, then the manifest with the model file's sha256; return the checkpoint written."""
    model = directory / checkpoint.model_file
    atomic_write(model, save_model)
    checkpoint = replace(checkpoint, checksums={checkpoint.model_file: sha256_of(model)})

    def write_manifest(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(asdict(checkpoint), indent=2))

    atomic_write(directory / MANIFEST, write_manifest)
    for old in directory.glob("model-*.vw"):
        if old.name != checkpoint.model_file:
            old.unlink(missing_ok=True)
    return checkpoint


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint in ``directory``, None when there is none; refuse one whose model file is missing or differs."""
    checkpoint = read_manifest(directory)
    if checkpoint is None:
        return None
    model = directory / checkpoint.model_file
    if not model.is_file():
        raise CorruptCheckpoint(directory, f"the checkpoint's model file {model} is missing")
    expected = checkpoint.checksums.get(checkpoint.model_file)
    if expected is not None and sha256_of(model) != expected:
        raise CorruptCheckpoint(
            directory, f"the checkpoint's model file {model} does not match its sha256 in {MANIFEST} (truncated or damaged?)"
        )
    return checkpoint


def read_manifest(directory: Path) -> Checkpoint | None:
    """The manifest in ``directory`` without looking at the files it names; refuse one that cannot be read."""
    manifest = directory / MANIFEST
    try:
        data = json.loads(manifest.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise CorruptCheckpoint(directory, f"the checkpoint manifest {manifest} is not valid JSON ({error})") from None
    try:
        checkpoint = Checkpoint(**data)
    except TypeError as error:
        raise CorruptCheckpoint(directory, f"the checkpoint manifest {manifest} is not a checkpoint ({error})") from None
    if problem := _wrong_fields(checkpoint):
        raise CorruptCheckpoint(directory, f"the checkpoint manifest {manifest} is not a checkpoint ({problem})")
    return checkpoint


_FIELD_TYPES = {"model_file": str, "model_id": str, "learned_seq": int, "examples_learned": int, "ts": (int, float),
                "bandit": dict, "policy": (dict, type(None)), "checksums": dict, "log_id": (str, type(None)),
                "example_format": int}


def _wrong_fields(checkpoint: Checkpoint) -> str | None:
    """What is wrong with a manifest's fields, or None: each of its type, and a model file of its own
    directory (a bare ``model-*.vw`` name, never a path)."""
    for name, kind in _FIELD_TYPES.items():
        if not isinstance(getattr(checkpoint, name), kind) or isinstance(getattr(checkpoint, name), bool):
            return f"{name} has the wrong type"
    name = checkpoint.model_file
    if Path(name).name != name or not (name.startswith("model-") and name.endswith(".vw")):
        return f"model_file must be a model-*.vw file of the data directory, got {name[:60]!r}"
    return None


def check_fits_log(checkpoint: Checkpoint, directory: Path, log_id: str, last_assigned_seq: int) -> None:
    """Refuse a checkpoint learned from another event log, or from outcomes this log never had."""
    if checkpoint.log_id is not None and checkpoint.log_id != log_id:
        raise StartupRefused(
            f"the checkpoint in {directory} belongs to another event log (the log was replaced or deleted?): "
            f"restore the events.db it learned from, or {rebuild_advice(directory)}"
        )
    if checkpoint.learned_seq > last_assigned_seq:
        raise StartupRefused(
            f"the checkpoint in {directory} has learned outcomes up to {checkpoint.learned_seq} but the event log "
            f"ends at {last_assigned_seq} (restored from an older backup?): restore the matching events.db, "
            f"or {rebuild_advice(directory)}"
        )


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
