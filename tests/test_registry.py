"""The recbandit-policy registry: guarded promotion, forced promotion, and what servers poll."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.bandit import BanditConfig, VWBandit
from engine.ope import Estimate
from server.cli import main
from tests.test_evaluate import make_log
from training.evaluate import EvaluationConfig
from training.registry import (
    CHAMPION,
    MODEL_NAME,
    champion_policy,
    decide_promotion,
    evaluate_and_register,
    promote,
)
from training.replay import PolicyCandidate
from training.tracking import tracking_client

EXPLORER = PolicyCandidate(BanditConfig("epsilon", 1.0), "ips")  # explores uniformly: a weak policy
LEARNER = PolicyCandidate(BanditConfig("squarecb"), "mtr")


def _estimate(value: float, low: float, high: float) -> Estimate:
    return Estimate(value, low, high, 100.0, 1000)


@pytest.mark.parametrize(
    ("candidate", "champion", "promoted"),
    [
        (_estimate(0.5, 0.45, 0.55), None, True),
        (_estimate(0.5, 0.45, 0.55), _estimate(0.44, 0.40, 0.48), True),
        (_estimate(0.5, 0.45, 0.55), _estimate(0.45, 0.40, 0.50), False),  # equal is not better
        (_estimate(0.5, 0.40, 0.60), _estimate(0.45, 0.44, 0.46), False),  # higher value, lower bound below
    ],
)
def test_the_lower_bound_must_beat_the_champions_estimate(candidate: Estimate, champion: Estimate | None, promoted: bool) -> None:
    assert decide_promotion(candidate, champion)[0] is promoted


def test_promotion_is_taken_when_the_lower_bound_beats_the_champion_refused_when_not_and_forced_on_demand(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    make_log(data, events=500)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking_client(uri)
    config = EvaluationConfig(n_resamples=300, compare_python_replay=False)
    assert champion_policy(uri) is None

    _, first, promotion = evaluate_and_register(data, EvaluationConfig(candidates=(EXPLORER,), n_resamples=300), uri)
    assert (first, promotion.promoted, promotion.reason) == ("1", True, "no champion yet")

    evaluation, second, promotion = evaluate_and_register(data, EvaluationConfig(candidates=(LEARNER,), n_resamples=300), uri)
    assert second == "2" and promotion.promoted and promotion.champion_version == "1"
    assert [p.name for p in evaluation.candidates] == [LEARNER.name, EXPLORER.name]  # the champion, replayed alongside
    assert evaluation.policy(LEARNER.name).overall["dr"].ci_low > evaluation.policy(EXPLORER.name).overall["dr"].value
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "2"
    assert float(client.get_model_version(MODEL_NAME, "2").tags["dr_ci_low"]) > 0

    refused = promote(uri, "1", source=data, config=config)
    assert not refused.promoted and refused.reason.startswith("lower bound")
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "2"
    assert client.get_model_version(MODEL_NAME, "1").tags["promotion.refused"] == refused.reason

    _, again, promotion = evaluate_and_register(data, EvaluationConfig(candidates=(LEARNER,), n_resamples=300), uri)
    assert (again, promotion.promoted) == ("2", False)  # the champion's own configuration: nothing new
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")] == ["2", "1"]

    assert main(["promote", "--version", "1", "--force", "--tracking-uri", uri, "--data-dir", str(data)]) == 0
    forced = client.get_model_version(MODEL_NAME, "1")
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"
    assert forced.tags["promotion.forced"] == "true" and "champion was 2" in forced.tags["promotion.reason"]

    assert main(["promote", "--version", "2", "--tracking-uri", uri, "--data-dir", str(data), "--log", str(data)]) == 0
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "2"

    policy = champion_policy(uri, tmp_path / "served")
    assert policy is not None and policy.version == "2"
    assert policy.bandit == LEARNER.bandit and policy.cb_type == "mtr"
    assert policy.vw_arguments == LEARNER.vw_arguments()
    assert policy.model_path.is_file() and str(policy.model_path).startswith(str(tmp_path / "served"))
    bandit = VWBandit(policy.bandit, model_path=str(policy.model_path))
    try:
        pmf = bandit.pmf("shared |User segment=premium |Context channel=web hour=12 weekday=tue",
                         [f"|Item id=item-{i} category=c{i % 3} price:{10.0 + 5 * i!r}" for i in range(6)])
    finally:
        bandit.close()
    assert max(pmf) > 0.5  # the registered model learned the log: not the untrained uniform pmf


def test_promote_without_force_needs_a_log_and_an_existing_version(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    with pytest.raises(ValueError, match="^source: an event log to compare on is required"):
        promote(uri, "1")
    with pytest.raises(ValueError, match="^version 7 of recbandit-policy does not exist$"):
        promote(uri, "7", force=True)
