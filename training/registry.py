"""The policy registry: every evaluation's best candidate becomes a version of ``recbandit-policy``.

The alias ``champion`` marks the policy servers should follow. It moves to a new version only when
that version's interval lower bound, by the primary estimator, beats the champion's estimate on
the same log (the champion's configuration is replayed in the same evaluation). ``promote
--force`` moves it regardless and says so in the version's tags. :class:`RegistryPolicySource` is
what a server follows (the :class:`engine.policy_source.PolicySource` the ``recbandit`` command hands
it): which version is champion, then that version's VW model file and its settings.

A version is an MLflow model (:mod:`training.policy_model`): ``mlflow.pyfunc.load_model(
"models:/recbandit-policy@champion")`` scores decisions; the server reads the VW file inside it.
Nothing is registered from a log too small to separate candidates (:class:`RegistrationFloor`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from engine.bandit import EXAMPLE_FORMAT, BanditConfig
from engine.ope import Estimate
from training.evaluate import Evaluation, EvaluationConfig, PolicyEvaluation, evaluate
from engine.logreader import event_log_path
from training.replay import PolicyCandidate
from training.tracking import data_tags, tracked_evaluation, tracking_client

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

MODEL_NAME = "recbandit-policy"
CHAMPION = "champion"


@dataclass(frozen=True)
class Promotion:
    """What happened to the alias, and why."""

    promoted: bool
    reason: str
    version: str
    champion_version: str | None


@dataclass(frozen=True)
class ChampionPolicy:
    """The policy a server should serve: load ``model_path`` with ``vw_arguments`` already in it."""

    version: str
    model_path: Path
    bandit: BanditConfig
    cb_type: str
    vw_arguments: str
    example_format: int = EXAMPLE_FORMAT  # the layout of the lines it learned from (engine.bandit.EXAMPLE_FORMAT)


@dataclass(frozen=True)
class RegistrationFloor:
    """The least log a best candidate is registered from.

    ``min_decisions`` decisions with a final reward, and an effective sample size of ``min_ess``
    for the best candidate by the primary estimator: Kish's ``(sum w)^2 / sum w^2`` of its
    importance weights, about the number of logged decisions that agree with it. Below either,
    bootstrap intervals are too wide (or too optimistic) to tell candidates apart.
    """

    min_decisions: int = 100
    min_ess: float = 30.0

    def refusal(self, evaluation: Evaluation) -> str | None:
        """Why nothing may be registered from ``evaluation``, or ``None`` when it may."""
        decisions = evaluation.data.events
        ess = evaluation.best.overall[evaluation.config.primary_estimator].ess
        if decisions >= self.min_decisions and ess >= self.min_ess:
            return None
        return (f"not registering: the log has {decisions:,} decision{'s' if decisions != 1 else ''} "
                f"and the best candidate an effective sample size of {ess:.1f}; at least "
                f"{self.min_decisions:,} decisions (and an effective sample size of {self.min_ess:g} for the "
                "best candidate) are needed to separate candidates; pass --min-decisions / --min-ess to change")


def decide_promotion(candidate: Estimate, champion: Estimate | None) -> tuple[bool, str]:
    """Promote when there is no champion, or the candidate's lower bound beats the champion's value."""
    if champion is None:
        return True, "no champion yet"
    if candidate.ci_low > champion.value:
        return True, f"lower bound {candidate.ci_low:.4f} > champion's estimate {champion.value:.4f}"
    return False, f"lower bound {candidate.ci_low:.4f} <= champion's estimate {champion.value:.4f}"


def champion_version(client: MlflowClient) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException:
        return None


def registered_version(client: MlflowClient, version: str) -> ModelVersion:
    """Version ``version`` of ``recbandit-policy``; ValueError when there is no such version."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(MODEL_NAME, version)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ValueError(f"version {version} of {MODEL_NAME} does not exist") from None
        if err.error_code == "INVALID_PARAMETER_VALUE":
            raise ValueError(f"version: must be a version number, got {version!r}") from None
        raise


def candidate_of(version: ModelVersion) -> PolicyCandidate:
    return PolicyCandidate.from_dict(json.loads(version.tags["policy"]))


def register_policy(client: MlflowClient, run_id: str, policy: PolicyEvaluation, evaluation: Evaluation) -> str:
    """A new version of ``recbandit-policy`` from the run's ``policy/`` artifacts; returns its number."""
    from mlflow.exceptions import MlflowException

    assert policy.candidate is not None
    try:
        client.create_registered_model(MODEL_NAME, description="recbandit's VW policies; @champion is served")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    primary = evaluation.config.primary_estimator
    estimate = policy.overall[primary]
    tags = {
        "policy": json.dumps(policy.candidate.to_dict()),
        "vw_arguments": policy.candidate.vw_arguments(),
        "example_format": str(EXAMPLE_FORMAT),
        "primary_estimator": primary,
        f"{primary}_value": f"{estimate.value:.6f}",
        f"{primary}_ci_low": f"{estimate.ci_low:.6f}",
        f"{primary}_ci_high": f"{estimate.ci_high:.6f}",
        **{k: str(v) for k, v in data_tags(evaluation).items()},
    }
    source = f"{client.get_run(run_id).info.artifact_uri}/policy"
    return str(client.create_model_version(MODEL_NAME, source, run_id=run_id, tags=tags).version)


def set_champion(client: MlflowClient, version: str, reason: str, *, forced: bool = False) -> None:
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    for key, value in {"promotion.reason": reason, "promotion.forced": str(forced).lower()}.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)


def _record_refusal(client: MlflowClient, version: str, reason: str) -> None:
    client.set_model_version_tag(MODEL_NAME, version, "promotion.refused", reason)


def with_champion(config: EvaluationConfig, client: MlflowClient) -> tuple[EvaluationConfig, ModelVersion | None]:
    """The config with the champion's configuration among the candidates, so it is replayed too."""
    champion = champion_version(client)
    if champion is None:
        return config, None
    candidate = candidate_of(champion)
    if candidate not in config.candidates:
        config = replace(config, candidates=(*config.candidates, candidate))
    return config, champion


def evaluate_and_register(
    source: str | Path,
    config: EvaluationConfig,
    tracking_uri: str,
    *,
    floor: RegistrationFloor = RegistrationFloor(),
    progress: bool = False,
) -> tuple[Evaluation, str | None, Promotion]:
    """Evaluate (with the champion replayed alongside), track, register the best, maybe promote it.

    When the champion's own configuration is the best, nothing new is registered. When the log is
    below ``floor``, nothing is registered either: the version is ``None`` and the promotion's
    reason says why.
    """
    client = tracking_client(tracking_uri)
    config, champion = with_champion(config, client)
    evaluation, logged = tracked_evaluation(source, config, tracking_uri, progress=progress)
    current = str(champion.version) if champion else None
    refusal = floor.refusal(evaluation)
    if refusal is not None:
        client.set_tag(logged.parent_run_id, "promotion", f"refused: {refusal}")
        return evaluation, None, Promotion(False, refusal, "", current)
    best = evaluation.best
    if champion is not None and best.candidate == candidate_of(champion):
        promotion = Promotion(False, "the champion's configuration is still the best", str(champion.version), current)
        client.set_tag(logged.parent_run_id, "promotion", f"refused: {promotion.reason}")
        return evaluation, promotion.version, promotion
    version = register_policy(client, logged.child_run_ids[best.name], best, evaluation)
    champion_estimate = None
    if champion is not None:
        champion_estimate = evaluation.policy(candidate_of(champion).name).overall[config.primary_estimator]
    promotion = _apply(client, version, champion, best.overall[config.primary_estimator], champion_estimate)
    client.set_tag(logged.parent_run_id, "registered_version", version)
    client.set_tag(logged.parent_run_id, "promotion", f"{'promoted' if promotion.promoted else 'refused'}: {promotion.reason}")
    return evaluation, version, promotion


def promote(
    tracking_uri: str,
    version: str,
    *,
    force: bool = False,
    source: str | Path | None = None,
    config: EvaluationConfig = EvaluationConfig(),
) -> Promotion:
    """Move ``champion`` to ``version``: forced, or if it beats the champion on the log at ``source``."""
    if source is None and not force:
        raise ValueError("source: an event log to compare on is required unless force is set")
    client = tracking_client(tracking_uri)
    target = registered_version(client, str(version))
    champion = champion_version(client)
    current = str(champion.version) if champion else None
    if force:
        reason = f"forced by recbandit promote --force (champion was {current or 'none'})"
        set_champion(client, str(version), reason, forced=True)
        return Promotion(True, reason, str(version), current)
    assert source is not None
    candidate = candidate_of(target)
    candidates = (candidate,) if champion is None else tuple(dict.fromkeys((candidate, candidate_of(champion))))
    evaluation = evaluate(source, replace(config, candidates=candidates, compare_python_replay=False))
    primary = config.primary_estimator
    champion_estimate = evaluation.policy(candidate_of(champion).name).overall[primary] if champion else None
    return _apply(client, str(version), champion, evaluation.policy(candidate.name).overall[primary], champion_estimate)


def _apply(client: MlflowClient, version: str, champion: ModelVersion | None, candidate: Estimate,
           champion_estimate: Estimate | None) -> Promotion:
    promoted, reason = decide_promotion(candidate, champion_estimate)
    current = str(champion.version) if champion else None
    if promoted:
        set_champion(client, version, reason)
    else:
        _record_refusal(client, version, reason)
    return Promotion(promoted, reason, version, current)


def champion_policy(tracking_uri: str, dst_dir: str | Path | None = None) -> ChampionPolicy | None:
    """The champion's version, its VW model downloaded to a local path, and its settings.

    ``None`` when no version is champion yet. A server polls this and swaps when the version
    changes: ``VWBandit(policy.bandit, model_path=str(policy.model_path))``.
    """
    champion = champion_version(tracking_client(tracking_uri))
    return None if champion is None else download_policy(champion, tracking_uri, dst_dir)


def download_policy(version: ModelVersion, tracking_uri: str, dst_dir: str | Path | None = None) -> ChampionPolicy:
    """A registered version's VW model downloaded to a local path, with its settings.

    The version's source is an MLflow model folder; the VW file is the artifact its ``MLmodel``
    names (``model.vw`` at the top for versions registered before policies were models).
    """
    import mlflow.artifacts

    from training.policy_model import quiet_mlflow, vw_model_path

    dst = Path(dst_dir or tempfile.mkdtemp(prefix="recbandit-champion-")) / f"v{version.version}"
    dst.mkdir(parents=True, exist_ok=True)
    with quiet_mlflow():
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst), tracking_uri=tracking_uri)
    candidate = candidate_of(version)
    return ChampionPolicy(str(version.version), vw_model_path(Path(local)), candidate.bandit, candidate.cb_type,
                          version.tags.get("vw_arguments", candidate.vw_arguments()),
                          int(version.tags.get("example_format", "1")))  # untagged: registered before formats


class RegistryPolicySource:
    """The champion of ``tracking_uri``'s registry, as the :class:`~engine.policy_source.PolicySource`
    a server follows."""

    model_name = MODEL_NAME
    alias = CHAMPION

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def champion_version(self) -> str | None:
        champion = champion_version(tracking_client(self.tracking_uri))
        return None if champion is None else str(champion.version)

    def download(self, version: str, dst_dir: Path) -> ChampionPolicy:
        registered = registered_version(tracking_client(self.tracking_uri), version)
        return download_policy(registered, self.tracking_uri, dst_dir)


def run_promote(args: SimpleNamespace) -> int:
    from training.tracking import default_tracking_uri

    source = args.log or args.data_dir
    if not args.force:
        event_log_path(source)  # refused before anything is created
    uri = args.tracking_uri or default_tracking_uri(args.data_dir)
    _check_registry_exists(uri)
    config = EvaluationConfig(primary_estimator=args.estimator)
    promotion = promote(uri, args.version, force=args.force, source=source, config=config)
    verdict = "is now champion" if promotion.promoted else "not promoted"
    print(f"recbandit-policy version {promotion.version} {verdict}: {promotion.reason}")
    return 0 if promotion.promoted else 1


def _check_registry_exists(tracking_uri: str) -> None:
    """Refuse a local registry that does not exist, rather than create an empty one (and its folder)."""
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        if not store.exists():
            raise FileNotFoundError(
                f"no policy registry at {store}: nothing is registered yet (run `recbandit evaluate` first)"
            )
