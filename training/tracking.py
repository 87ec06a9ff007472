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

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from training.evaluate import Evaluation, PolicyEvaluation

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
    """One MLflow run: log metrics (per step, e.g. per epoch), artifacts and tags."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


@contextmanager
def tracked_run(
    tracking_uri: str,
    experiment: str,
    config: Any,
    *,
    run_name: str | None = None,
    tags: Mapping[str, object] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[TrackedRun]:
    """A run with ``config`` as its params and the git commit as a tag; FAILED if the block raises.

    For any trainer::

        with tracked_run(uri, "recbandit-embeddings", config, run_name="lightfm") as run:
            for epoch in range(config.epochs):
                run.log_metrics({"precision_at_10": p}, step=epoch)
            run.log_artifact(model_path, "model")
    """
    from mlflow.entities import Param, RunTag

    client = tracking_client(tracking_uri)
    all_tags = {"mlflow.runName": run_name or experiment, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    run = client.create_run(experiment_id(client, experiment), tags={k: str(v) for k, v in all_tags.items()})
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in params_of(config).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    try:
        yield TrackedRun(client, run_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


# -- an evaluation in MLflow ----------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedEvaluation:
    parent_run_id: str
    child_run_ids: dict[str, str]


def estimate_metrics(policy: PolicyEvaluation) -> dict[str, float]:
    """``<estimator>_value|_ci_low|_ci_high|_ess`` over all slots, and ``slot<k>_…`` per slot."""
    metrics: dict[str, float] = {}
    for prefix, estimates in [("", policy.overall), *((f"slot{k}_", e) for k, e in policy.per_slot.items())]:
        for name, e in estimates.items():
            metrics |= {f"{prefix}{name}_value": e.value, f"{prefix}{name}_ci_low": e.ci_low,
                        f"{prefix}{name}_ci_high": e.ci_high, f"{prefix}{name}_ess": e.ess}
    metrics["n"] = float(next(iter(policy.overall.values())).n)
    return metrics


def data_tags(evaluation: Evaluation) -> dict[str, object]:
    d = evaluation.data
    iso = lambda ts: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))  # noqa: E731
    return {"data.source": d.source, "data.first_ts": iso(d.first_ts), "data.last_ts": iso(d.last_ts),
            "data.events": d.events, "data.examples": d.examples, "data.slots": d.slots}


def log_evaluation(evaluation: Evaluation, tracking_uri: str, experiment: str = EVALUATION_EXPERIMENT) -> LoggedEvaluation:
    """A parent run for the evaluation and a child run per policy, with the comparison plot."""
    tags = data_tags(evaluation)
    children: dict[str, str] = {}
    with tracked_run(tracking_uri, experiment, evaluation.config, run_name="evaluate", tags=tags) as parent:
        for policy in evaluation.policies:
            children[policy.name] = _log_policy(policy, evaluation, tracking_uri, experiment, parent.run_id, tags)
        best = evaluation.best
        primary = evaluation.config.primary_estimator
        parent.log_metrics({**evaluation.throughput, **{f"best_{k}": v for k, v in estimate_metrics(best).items()
                                                        if k.startswith(primary)}})
        parent.set_tags({"best_policy": best.name, "primary_estimator": primary})
        with tempfile.TemporaryDirectory() as tmp:
            plot_candidates(evaluation, Path(tmp) / "candidates.png")
            parent.log_artifact(Path(tmp) / "candidates.png")
            (Path(tmp) / "evaluation.json").write_text(json.dumps(evaluation_summary(evaluation), indent=2))
            parent.log_artifact(Path(tmp) / "evaluation.json")
    return LoggedEvaluation(parent.run_id, children)


def _log_policy(policy: PolicyEvaluation, evaluation: Evaluation, tracking_uri: str, experiment: str,
                parent_run_id: str, tags: dict[str, object]) -> str:
    c = evaluation.config
    config = {"policy": policy.name, **(policy.candidate.to_dict() if policy.candidate else {}),
              "estimators": list(c.estimators), "primary_estimator": c.primary_estimator, "clip": c.clip,
              "n_resamples": c.n_resamples, "confidence": c.confidence, "seed": c.seed,
              "reward_model_folds": c.reward_model_folds}
    kind = "candidate" if policy.candidate else "baseline"
    with tracked_run(tracking_uri, experiment, config, run_name=policy.name, parent_run_id=parent_run_id,
                     tags={**tags, "policy_kind": kind}) as run:
        metrics = estimate_metrics(policy)
        if policy.replay is not None:
            metrics |= {"replay_loss": policy.replay.replay_loss,
                        "examples_per_second": policy.replay.examples_per_second}
        run.log_metrics(metrics)
        if policy.candidate is not None and policy.replay is not None and policy.replay.model_path:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "policy"
                folder.mkdir()
                (folder / "model.vw").write_bytes(policy.replay.model_path.read_bytes())
                (folder / "policy.json").write_text(json.dumps(
                    {**policy.candidate.to_dict(), "vw_arguments": policy.candidate.vw_arguments()}, indent=2))
                run.log_artifact(folder)
    return run.run_id


def evaluation_summary(evaluation: Evaluation) -> dict[str, object]:
    return {
        "data": dataclasses.asdict(evaluation.data),
        "throughput": evaluation.throughput,
        "best": evaluation.best.name,
        "policies": {p.name: {k: dataclasses.asdict(e) for k, e in p.overall.items()} for p in evaluation.policies},
    }


def plot_candidates(evaluation: Evaluation, path: Path) -> None:
    """Every policy's value with its interval, one marker per estimator (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies, keys = evaluation.policies, evaluation.config.estimators
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.45 * len(policies)))
    for j, key in enumerate(keys):
        offset = (j - (len(keys) - 1) / 2) * 0.14
        ys = [i + offset for i in range(len(policies))]
        values = [p.overall[key].value for p in policies]
        errors = [[v - p.overall[key].ci_low for v, p in zip(values, policies)],
                  [p.overall[key].ci_high - v for v, p in zip(values, policies)]]
        ax.errorbar(values, ys, xerr=errors, fmt="o", markersize=4, capsize=2, label=key.upper())
    ax.set_yticks(range(len(policies)), [p.name for p in policies], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"estimated reward per slot ({evaluation.config.confidence:.0%} bootstrap interval)")
    ax.set_title(f"off-policy estimates on {evaluation.data.examples:,} slots of {evaluation.data.events:,} events")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
