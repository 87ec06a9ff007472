"""Rebuild the model from the event log, the source of truth, when its checkpoint cannot be trusted."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from engine.bandit import EXAMPLE_FORMAT, BanditConfig
from engine.checkpoint import MANIFEST, read_manifest
from engine.core import EngineConfig
from engine.datadir import lock_data_dir
from engine.errors import CorruptCheckpoint, StartupRefused
from engine.eventlog import EventLog
from engine.logreader import EVENT_LOG
from engine.learning import Learner


@dataclass(frozen=True, slots=True)
class RebuiltModel:
    event_log: Path
    outcomes_learned: int
    model_version: str
    bandit: BanditConfig


def rebuild_model(config: EngineConfig) -> RebuiltModel:
    """Learn every final outcome in the log, in ``seq`` order, into a fresh model, and checkpoint it.

    The data directory stays locked throughout. The fresh model takes the bandit configuration of
    the checkpoint in place when its manifest can be read and is of today's
    :data:`~engine.bandit.EXAMPLE_FORMAT` (its model file is never loaded), else ``config.bandit``. The old manifest is kept beside the new one as ``checkpoint.json.bad-<ts>``.
    """
    directory = Path(config.data_dir)
    event_log = directory / EVENT_LOG
    if not event_log.is_file():
        raise StartupRefused(f"no event log at {event_log}: nothing to rebuild the model from")
    with ExitStack() as stack:
        stack.callback(lock_data_dir(directory).release)
        log = EventLog(event_log, config.rewards)
        stack.callback(log.close)
        bandit = _bandit_of_manifest(directory) or config.bandit
        _set_aside_manifest(directory)
        learner = Learner(directory, log, bandit, threading.Event(),
                          checkpoint_interval=config.checkpoint_interval,
                          maintenance_interval=config.maintenance_interval)
        learned = learner.learn_pending()
        learner.checkpoint()
        learner.bandit.close()
    return RebuiltModel(event_log, learned, learner.model_version, bandit)


def _bandit_of_manifest(directory: Path) -> BanditConfig | None:
    try:
        manifest = read_manifest(directory)
    except CorruptCheckpoint:
        return None
    if manifest is None or manifest.example_format != EXAMPLE_FORMAT:  # its settings were chosen for other lines
        return None
    return BanditConfig.from_dict(manifest.bandit)


def _set_aside_manifest(directory: Path) -> None:
    manifest = directory / MANIFEST
    if manifest.exists():
        manifest.rename(manifest.with_name(f"{MANIFEST}.bad-{time.strftime('%Y%m%dT%H%M%S')}"))
