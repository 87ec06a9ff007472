"""MLflow tracking: where runs go, how an evaluation is logged, and a small API for trainers.

The default tracking store is a sqlite file in the data directory (``sqlite:///<data_dir>/mlflow.db``)
with artifacts beside it in ``<data_dir>/mlartifacts``; ``MLFLOW_TRACKING_URI`` overrides it.
Every function takes the tracking URI explicitly and talks through an ``MlflowClient``, so nothing
depends on MLflow's process-wide state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.lineage import DatasetFacts, iso_time, log_dataset

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from training.evaluate import Evaluation, EvaluationConfig, PolicyEvaluation
    from training.replay import PolicyCandidate

EVALUATION_EXPERIMENT = "recbandit-evaluate"


def default_tracking_uri(data_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a sqlite file in ``data_dir``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(data_dir).resolve() / 'mlflow.db'}"


def tracking_client(tracking_uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (artifacts beside a local sqlite store) when new."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    uri = client.tracking_uri
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def params_of(config: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a (nested) dataclass or mapping into MLflow params; sequences become JSON."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    params: dict[str, str] = {}
    for key, value in dict(config).items():
        name = f"{prefix}{key}"
        if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or isinstance(value, Mapping):
            params.update(params_of(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            params[name] = json.dumps([_plain(v) for v in value])[:6000]
        else:
            params[name] = str(value)
    return params


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


@functools.cache
def git_commit() -> str | None:
    """The commit of the working tree this code runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class TrackedRun:
    """One MLflow run: log metrics (per step, e.g. per epoch), artifacts, tags and its input data."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.end_time: float | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if math.isfinite(float(v))]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_input(self, facts: DatasetFacts, context: str) -> None:
        """The dataset the run read (store, rows, time range, digest): ``run.inputs.dataset_inputs``."""
        log_dataset(self.client, self.run_id, facts, context)


def context_tags() -> dict[str, str]:
    """What ``mlflow.start_run`` would set: ``mlflow.user``, ``mlflow.source.name``/``type``, and the commit."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {k: str(v) for k, v in resolve_tags().items()}
    commit = git_commit()
    if commit:
        tags.setdefault("mlflow.source.git.commit", commit)
    return tags


@contextmanager
def tracked_run(
    tracking_uri: str,
    experiment: str,
    config: Any,
    *,
    run_name: str | None = None,
    tags: Mapping[str, object] | None = None,
    parent_run_id: str | None = None,
    start_time: float | None = None,
) -> Iterator[TrackedRun]:
    """A run with ``config`` as its params and the source, user and commit as tags; FAILED if the block raises.

    ``start_time`` (seconds since the epoch) dates a run recorded after its work; set
    ``run.end_time`` in the block to date its end the same way. For any trainer::

        with tracked_run(uri, "recbandit-embeddings", config, run_name="lightfm") as run:
            for epoch in range(config.epochs):
                run.log_metrics({"precision_at_10": p}, step=epoch)
            run.log_artifact(model_path, "model")
    """
    from mlflow.entities import Param

    client = tracking_client(tracking_uri)
    all_tags: dict[str, object] = {**context_tags(), "mlflow.runName": run_name or experiment, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(client, experiment), tags={k: str(v) for k, v in all_tags.items()},
                            start_time=None if start_time is None else int(start_time * 1000))
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in params_of(config).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    tracked = TrackedRun(client, run_id)
    try:
        yield tracked
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    end = None if tracked.end_time is None else int(tracked.end_time * 1000)
    client.set_terminated(run_id, "FINISHED", end_time=end)


# -- an evaluation in MLflow ----------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedEvaluation:
    parent_run_id: str
    child_run_ids: dict[str, str]


def estimate_metrics(policy: PolicyEvaluation) -> dict[str, float]:
    """Metrics grouped by slashes: ``<estimator>/value|ci_low|ci_high|ess`` over all slots,
    ``slot<k>/<estimator>/…`` per slot, and ``n`` (MLflow's UI groups the charts by prefix)."""
    metrics: dict[str, float] = {}
    for scope, estimates in [("", policy.overall), *((f"slot{k}/", e) for k, e in policy.per_slot.items())]:
        for name, e in estimates.items():
            metrics |= {f"{scope}{name}/value": e.value, f"{scope}{name}/ci_low": e.ci_low,
                        f"{scope}{name}/ci_high": e.ci_high, f"{scope}{name}/ess": e.ess}
    metrics["n"] = float(next(iter(policy.overall.values())).n)
    return metrics


def data_tags(evaluation: Evaluation) -> dict[str, object]:
    d = evaluation.data
    return {"data.source": d.source, "data.first_ts": iso_time(d.first_ts), "data.last_ts": iso_time(d.last_ts),
            "data.events": d.events, "data.examples": d.examples, "data.slots": d.slots, "data.digest": d.digest}


def evaluation_dataset(evaluation: Evaluation) -> DatasetFacts:
    """The slot examples an evaluation used, as lineage: the store, their count, time range and digest."""
    from engine.logreader import event_log_path

    d = evaluation.data
    store = event_log_path(d.source)  # the file read: events.db in a data directory, or the export
    return DatasetFacts(name=store.name, store=str(store), rows=d.examples, first_ts=d.first_ts,
                        last_ts=d.last_ts, digest=d.digest, extra=(("decisions", d.events), ("slots", d.slots)))


def candidate_params(candidate: PolicyCandidate) -> dict[str, object]:
    """The candidate's settings with the exploration parameter it runs with (the default filled in)."""
    return {**candidate.to_dict(), "exploration_parameter": candidate.bandit.parameter}


def evaluation_params(config: EvaluationConfig) -> dict[str, object]:
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {**values, "candidates": [candidate_params(c) for c in config.candidates]}


def tracked_evaluation(
    source: str | Path,
    config: EvaluationConfig,
    tracking_uri: str,
    *,
    experiment: str = EVALUATION_EXPERIMENT,
    progress: bool = False,
) -> tuple[Evaluation, LoggedEvaluation]:
    """Evaluate inside a parent run (so its duration covers the replay), then a child run per policy.

    Each child run is dated by its policy's own replay and estimation; a candidate's child run
    holds the policy as an MLflow model (``policy/``, see :mod:`training.policy_model`). The
    working directory of the replay lives until everything is logged, then goes.
    """
    from training.evaluate import evaluate
    from training.plots import plot_candidates

    with tracked_run(tracking_uri, experiment, evaluation_params(config), run_name="evaluate",
                     tags={"data.source": str(source)}) as parent, tempfile.TemporaryDirectory(prefix="recbandit-evaluate-") as work:
        evaluation = evaluate(source, config, Path(work), progress=progress)
        parent.set_tags(data_tags(evaluation))
        parent.log_input(evaluation_dataset(evaluation), "evaluation")
        children = {p.name: _log_policy(p, evaluation, tracking_uri, experiment, parent.run_id, Path(work))
                    for p in evaluation.policies}
        best, primary = evaluation.best, config.primary_estimator
        parent.log_metrics({**{f"throughput/{k}": v for k, v in evaluation.throughput.items()},
                            **{f"best/{k}": v for k, v in estimate_metrics(best).items() if k.startswith(f"{primary}/")}})
        parent.set_tags({"best_policy": best.name, "primary_estimator": primary,
                         "best_policy_separated": str(evaluation.separated).lower()})
        plot_candidates(evaluation, Path(work) / "candidates.png")
        parent.log_artifact(Path(work) / "candidates.png")
        (Path(work) / "evaluation.json").write_text(json.dumps(evaluation_summary(evaluation), indent=2))
        parent.log_artifact(Path(work) / "evaluation.json")
    return evaluation, LoggedEvaluation(parent.run_id, children)


def _log_policy(policy: PolicyEvaluation, evaluation: Evaluation, tracking_uri: str, experiment: str,
                parent_run_id: str, work: Path) -> str:
    from training.policy_model import save_policy_model

    c = evaluation.config
    config = {"policy": policy.name, **(candidate_params(policy.candidate) if policy.candidate else {}),
              "estimators": list(c.estimators), "primary_estimator": c.primary_estimator, "clip": c.clip,
              "n_resamples": c.n_resamples, "confidence": c.confidence, "seed": c.seed,
              "reward_model_folds": c.reward_model_folds}
    kind = "candidate" if policy.candidate else "baseline"
    with tracked_run(tracking_uri, experiment, config, run_name=policy.name, parent_run_id=parent_run_id,
                     tags={**data_tags(evaluation), "policy_kind": kind}, start_time=policy.started) as run:
        metrics = estimate_metrics(policy)
        if policy.replay is not None:
            metrics |= {"replay/loss": policy.replay.replay_loss,
                        "replay/examples_per_second": policy.replay.examples_per_second}
        run.log_metrics(metrics)
        run.log_input(evaluation_dataset(evaluation), "evaluation")
        if policy.candidate is not None and policy.replay is not None and policy.replay.model_path:
            settings = {**candidate_params(policy.candidate), "vw_arguments": policy.candidate.vw_arguments()}
            folder = save_policy_model(policy.replay.model_path, settings, work / f"model-{run.run_id}" / "policy")
            run.log_artifact(folder)
        run.end_time = policy.finished
    return run.run_id


def evaluation_summary(evaluation: Evaluation) -> dict[str, object]:
    return {
        "data": dataclasses.asdict(evaluation.data),
        "throughput": evaluation.throughput,
        "best": evaluation.best.name,
        "best_separated": evaluation.separated,
        "policies": {p.name: {k: dataclasses.asdict(e) for k, e in p.overall.items()} for p in evaluation.policies},
    }
