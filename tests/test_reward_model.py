"""The reward model of DM and DR: calibrated on rare rewards, chosen from the rewards, and its map."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine.bandit import example_lines
from training.replay import SlotExample
from training.reward_model import Calibration, RewardScale, fit_calibration, reward_predictions


ClickProbability = Callable[[dict[str, str], int], float]


def uniform_log(seed: int, events: int, click_probability: ClickProbability, values: tuple[float, ...] = (1.0,),
                items: int = 20, levels: int = 60) -> list[SlotExample]:
    """A log shaped like the Open Bandit Dataset's ``random`` campaign: one slot, items shown uniformly.

    Users carry three categorical features of ``levels`` values each, the context a position; the
    reward of the shown item is one of ``values`` with ``click_probability(user, item)``, else 0.
    """
    rng = np.random.default_rng(seed)
    catalog = [(f"item-{j}", {"price": float(rng.uniform(5, 50)), "brand": f"b{rng.integers(8)}"}) for j in range(items)]
    examples = []
    for i in range(events):
        user = {f"u{k}": f"v{rng.integers(levels)}" for k in range(3)}
        shared, actions = example_lines(user, {"position": str(1 + i % 3)}, catalog)
        chosen = int(rng.integers(items))
        clicked = rng.random() < click_probability(user, chosen)
        examples.append(SlotExample(
            event_id=f"event-{i}", ts=float(i), slot=0, shared=shared, actions=tuple(actions), chosen=chosen,
            reward=float(rng.choice(values)) if clicked else 0.0, probability=1 / items,
            logging_pmf=(1 / items,) * items,
        ))
    return examples


def rare_clicks(seed: int) -> ClickProbability:
    """About 4 clicks in 1,000 impressions, items a little apart: the click rate of the OBD sample."""
    lift = np.exp(np.random.default_rng(seed + 1).normal(0.0, 0.3, 20))
    return lambda user, item: 0.004 * lift[item] / lift.mean()


def logged_and_dm(examples: list[SlotExample], q: list[np.ndarray]) -> tuple[float, float]:
    """The mean prediction at the logged items, and DM of the logging policy (Σ_a π(a|x) q(x, a) on average)."""
    logged = float(np.mean([row[ex.chosen] for ex, row in zip(examples, q, strict=True)]))
    dm = float(np.mean([np.dot(ex.logging_pmf, row) for ex, row in zip(examples, q, strict=True)]))
    return logged, dm


@pytest.mark.parametrize(("values", "kind"), [((1.0,), "binary"), ((20.0, 35.0, 50.0), "continuous")])
def test_on_a_rare_reward_log_the_mean_prediction_and_dm_of_the_logging_policy_match_the_observed_reward(
        values: tuple[float, ...], kind: str, tmp_path: Path) -> None:
    examples = uniform_log(0, 10_000, rare_clicks(0), values)
    rewards = np.array([ex.reward for ex in examples])
    assert RewardScale.of(rewards).kind == kind and 25 <= np.count_nonzero(rewards) <= 60
    q = reward_predictions(examples, tmp_path / "work")
    logged, dm = logged_and_dm(examples, q)
    observed = rewards.mean()
    assert logged == pytest.approx(observed, rel=0.10)  # the old squared-loss model: 2.1× the clicks, 0.66× the purchases
    assert dm == pytest.approx(observed, rel=0.10)
    assert all(rewards.min() <= row.min() and row.max() <= rewards.max() for row in q)
    assert not any((tmp_path / "work").iterdir())


def test_calibration_keeps_what_the_features_predict(tmp_path: Path) -> None:
    favourite = {f"v{k}": k for k in range(4)}  # each of four user segments prefers one item

    def taste(user: dict[str, str], item: int) -> float:
        return 0.6 if favourite[user["u0"]] == item else 0.05

    examples = uniform_log(1, 3_000, taste, items=6, levels=4)
    q = reward_predictions(examples, tmp_path)
    favourite_of = [favourite[ex.shared.split("u0=")[1].split()[0]] for ex in examples]
    best = np.array([row[f] for row, f in zip(q, favourite_of, strict=True)])
    others = np.array([np.delete(row, f).max() for row, f in zip(q, favourite_of, strict=True)])
    assert np.mean(best > others) > 0.9 and best.mean() > 0.4 and others.mean() < 0.2  # truth: 0.6 and 0.05
    logged, _ = logged_and_dm(examples, q)
    assert logged == pytest.approx(np.mean([ex.reward for ex in examples]), rel=0.05)


@pytest.mark.parametrize(
    ("rewards", "kind", "low", "high", "labels"),
    [
        ([0.0, 1.0, 0.0], "binary", 0.0, 1.0, ["-1 ", "1 ", "-1 "]),
        ([-1.0, 1.0], "binary", -1.0, 1.0, ["-1 ", "1 "]),
        ([0.0, 2.0, 5.0], "continuous", 0.0, 5.0, ["0.0 ", "2.0 ", "5.0 "]),
        ([0.5, 0.5], "constant", 0.5, 0.5, None),
    ],
)
def test_the_model_follows_the_rewards(rewards, kind, low, high, labels) -> None:  # type: ignore[no-untyped-def]
    scale = RewardScale.of(rewards)
    assert (scale.kind, scale.low, scale.high) == (kind, low, high)
    assert scale.logistic == (kind == "binary")
    assert ("--loss_function logistic --link logistic" in scale.vw_arguments()) == scale.logistic
    if labels is not None:
        assert [scale.label(r) for r in rewards] == labels
        assert np.allclose(scale.reward(scale.target(np.array(rewards))), rewards)
    with pytest.raises(ValueError, match="^rewards: at least one reward"):
        RewardScale.of([])


def test_one_reward_value_is_predicted_everywhere_without_fitting(tmp_path: Path) -> None:
    examples = uniform_log(2, 50, lambda user, item: 0.0, items=4)
    q = reward_predictions(examples, tmp_path / "unused")
    assert all(np.array_equal(row, np.zeros(4)) for row in q) and not (tmp_path / "unused").exists()


def test_platt_scaling_recovers_a_miscalibrated_score_and_matches_the_mean() -> None:
    rng = np.random.default_rng(3)
    scores = 1 / (1 + np.exp(-rng.normal(-3.0, 1.0, 50_000)))
    truth = Calibration(True, -1.0, 0.5)
    targets = (rng.random(len(scores)) < truth(scores)).astype(float)
    fitted = fit_calibration(scores, targets, logistic=True)
    assert fitted.intercept == pytest.approx(-1.0, abs=0.15) and fitted.slope == pytest.approx(0.5, abs=0.05)
    assert abs(fitted(scores).mean() - targets.mean()) < 1 / len(targets)


def test_a_line_recovers_a_miscalibrated_regression_and_matches_the_mean() -> None:
    rng = np.random.default_rng(4)
    scores = rng.uniform(0, 10, 1_000)
    targets = 2.0 + 0.5 * scores + rng.normal(0, 0.1, len(scores))
    fitted = fit_calibration(scores, targets, logistic=False)
    assert fitted.intercept == pytest.approx(2.0, abs=0.05) and fitted.slope == pytest.approx(0.5, abs=0.01)
    assert fitted(scores).mean() == pytest.approx(targets.mean())


@pytest.mark.parametrize("logistic", [True, False])
def test_scores_that_rank_backwards_or_not_at_all_calibrate_to_the_mean(logistic: bool) -> None:
    targets = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    backwards = np.where(targets > 0, 0.1, 0.4)
    for scores in (backwards, np.full(len(targets), 0.2)):
        fitted = fit_calibration(scores, targets, logistic)
        assert fitted.slope == 0.0
        assert np.allclose(fitted(scores), targets.mean(), atol=1 / len(targets))  # Platt's targets: within 1/n


def test_a_half_without_a_click_still_calibrates_to_a_small_finite_rate() -> None:
    scores = np.linspace(0.01, 0.2, 100)
    fitted = fit_calibration(scores, np.zeros(100), logistic=True)
    assert np.all(np.isfinite(fitted(scores))) and 0 < fitted(scores).max() < 0.02
