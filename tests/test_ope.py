"""Off-policy estimators on synthetic logs whose true values are known, and on bad input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from engine.errors import InvalidRequest
from engine.ope import (
    ESTIMATORS,
    IPS,
    SNIPS,
    BanditFeedback,
    Bootstrap,
    DirectMethod,
    DoublyRobust,
    RidgeRewardModel,
    SelfNormalizedDoublyRobust,
    by_slot,
)

K, D = 5, 3


@dataclass(frozen=True)
class World:
    """Linear click probabilities ``p(x, a) = base_a + x . theta_a`` with x uniform in [-1, 1]^D."""

    base: np.ndarray
    theta: np.ndarray

    @classmethod
    def make(cls, seed: int) -> World:
        rng = np.random.default_rng(seed)
        return cls(rng.uniform(0.3, 0.6, K), rng.uniform(-0.08, 0.08, (K, D)))

    def contexts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(-1, 1, (n, D))

    def click_probability(self, x: np.ndarray) -> np.ndarray:
        return self.base + x @ self.theta.T  # (n, K)


def softmax(scores: np.ndarray, beta: float) -> np.ndarray:
    e = np.exp(beta * (scores - scores.max(axis=1, keepdims=True)))
    return e / e.sum(axis=1, keepdims=True)


def policies(world: World) -> dict[str, callable]:  # type: ignore[valid-type]
    return {
        "near-greedy": lambda x: softmax(world.click_probability(x), 40.0),
        "uniform": lambda x: np.full((x.shape[0], K), 1.0 / K),
        "worst-first": lambda x: softmax(-world.click_probability(x), 15.0),
    }


def logging_policy(world: World, x: np.ndarray) -> np.ndarray:
    """Half uniform, half a context-dependent softmax: every propensity is at least 1 / (2K)."""
    return 0.5 / K + 0.5 * softmax(world.click_probability(x) + np.sin(3 * x[:, :1] + np.arange(K)), 3.0)


def one_hot_features(x: np.ndarray) -> np.ndarray:
    """Per-(context, action) rows ``onehot(a) (x) [1, x]``: shape (n, K, K * (D + 1))."""
    n = x.shape[0]
    z = np.zeros((n, K, K * (D + 1)))
    xb = np.hstack([np.ones((n, 1)), x])
    for a in range(K):
        z[:, a, a * (D + 1) : (a + 1) * (D + 1)] = xb
    return z


def simulate(world: World, seed: int, n: int, target) -> BanditFeedback:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = world.contexts(rng, n)
    mu = logging_policy(world, x)
    action = np.array([rng.choice(K, p=row) for row in mu])
    rows = np.arange(n)
    reward = (rng.random(n) < world.click_probability(x)[rows, action]).astype(float)
    z = one_hot_features(x)
    model = RidgeRewardModel(alpha=1.0).fit(z[rows, action], reward)
    return BanditFeedback(
        reward=reward,
        propensity=mu[rows, action],
        action=action,
        target_pmf=target(x),
        reward_prediction=model.predict(z),
    )


def true_value(world: World, target) -> float:  # type: ignore[no-untyped-def]
    x = world.contexts(np.random.default_rng(12345), 400_000)
    return float((target(x) * world.click_probability(x)).sum(axis=1).mean())


def test_the_logging_policys_own_ips_equals_its_empirical_mean_reward_exactly() -> None:
    rng = np.random.default_rng(4)
    n = 2_000
    propensity = rng.uniform(0.05, 1.0, n)
    reward = rng.binomial(1, 0.3, n) * rng.uniform(0.5, 5.0, n)
    feedback = BanditFeedback(reward=reward, propensity=propensity, target_probability=propensity.copy())
    estimate = IPS().estimate(feedback, Bootstrap(n_resamples=200, seed=1))
    assert estimate.value == np.mean(reward)
    assert SNIPS().estimate(feedback).value == pytest.approx(np.mean(reward), abs=1e-12)
    assert estimate.ess == pytest.approx(n)
    assert estimate.n == n
    assert estimate.ci_low < estimate.value < estimate.ci_high


def test_the_weighted_estimators_cover_the_true_values_at_about_their_confidence_and_dm_is_close() -> None:
    """3 worlds x 3 target policies x IPS, SNIPS, DR, SNDR: 36 intervals at 95% confidence.

    About 1.8 misses are expected by chance; at most 4 are allowed, each by less than half the
    interval's width. DM's interval holds the reward model fixed, so only its value is checked.
    """
    misses, checked = [], 0
    for world_seed in (1, 2, 3):
        world = World.make(world_seed)
        for name, target in policies(world).items():
            truth = true_value(world, target)
            feedback = simulate(world, seed=100 + world_seed, n=4_000, target=target)
            for estimator_name, estimator in ESTIMATORS.items():
                estimate = estimator().estimate(feedback, Bootstrap(n_resamples=400, seed=world_seed))
                assert abs(estimate.value - truth) < 0.05, (name, estimator_name, truth, estimate)
                assert estimate.ci_high - estimate.ci_low < 0.12, (name, estimator_name, estimate)
                if estimator_name == "dm":
                    assert abs(estimate.value - truth) < 0.025, (name, truth, estimate)
                    continue
                checked += 1
                if not estimate.ci_low <= truth <= estimate.ci_high:
                    width = estimate.ci_high - estimate.ci_low
                    outside = max(estimate.ci_low - truth, truth - estimate.ci_high)
                    misses.append((name, estimator_name, truth, estimate, outside / width))
    assert checked == 36
    assert len(misses) <= 4, misses
    assert all(m[-1] < 0.5 for m in misses), misses


def test_the_estimators_tell_a_good_policy_from_a_bad_one_and_the_weights_shrink_the_ess() -> None:
    world = World.make(7)
    good = simulate(world, seed=8, n=3_000, target=policies(world)["near-greedy"])
    bad = simulate(world, seed=8, n=3_000, target=policies(world)["worst-first"])
    for estimator in (IPS(), SNIPS(), DirectMethod(), DoublyRobust(), SelfNormalizedDoublyRobust()):
        assert estimator.estimate(bad).ci_high < estimator.estimate(good).ci_low, estimator
    assert IPS().estimate(good).ess < 0.8 * good.n
    assert DirectMethod().estimate(good).ess == good.n


def test_clipping_caps_the_weights_and_lowers_the_estimate() -> None:
    reward = np.array([1.0, 0.0, 1.0, 1.0])
    feedback = BanditFeedback(reward=reward, propensity=np.array([0.1, 0.5, 0.5, 0.5]), target_probability=np.array([1.0, 0.5, 0.5, 0.5]))
    assert IPS().estimate(feedback, Bootstrap(n_resamples=50)).value == pytest.approx((10 + 1 + 1) / 4)
    assert IPS(clip=2.0).estimate(feedback, Bootstrap(n_resamples=50)).value == pytest.approx((2 + 1 + 1) / 4)
    assert SNIPS(clip=2.0).estimate(feedback, Bootstrap(n_resamples=50)).value == pytest.approx(4 / 5)
    with pytest.raises(InvalidRequest, match="^clip: must be > 0"):
        IPS(clip=0.0).estimate(feedback)


def test_dr_with_a_perfect_reward_model_is_the_dm_value_and_the_same_seed_gives_the_same_interval() -> None:
    rng = np.random.default_rng(3)
    n = 500
    prediction = rng.uniform(0, 1, (n, 3))
    target_pmf = rng.dirichlet(np.ones(3), n)
    action = rng.integers(0, 3, n)
    feedback = BanditFeedback(
        reward=prediction[np.arange(n), action],
        propensity=np.full(n, 1 / 3),
        action=action,
        target_pmf=target_pmf,
        reward_prediction=prediction,
    )
    dm = DirectMethod().estimate(feedback)
    assert DoublyRobust().estimate(feedback).value == pytest.approx(dm.value, abs=1e-12)
    assert SelfNormalizedDoublyRobust().estimate(feedback).value == pytest.approx(dm.value, abs=1e-12)
    assert dm.value == pytest.approx(float((target_pmf * prediction).sum(axis=1).mean()))
    assert DoublyRobust().estimate(feedback, Bootstrap(seed=5)) == DoublyRobust().estimate(feedback, Bootstrap(seed=5))
    assert DoublyRobust().estimate(feedback, Bootstrap(seed=5)) != DoublyRobust().estimate(feedback, Bootstrap(seed=6))


def test_multi_slot_logs_are_evaluated_per_slot() -> None:
    reward = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    slot = np.array([0, 0, 0, 1, 1, 1])
    feedback = BanditFeedback(reward=reward, propensity=np.full(6, 0.5), target_probability=np.full(6, 0.5), slot=slot)
    per_slot = by_slot(IPS(), feedback, Bootstrap(n_resamples=100))
    assert sorted(per_slot) == [0, 1]
    assert per_slot[0].value == pytest.approx(2 / 3) and per_slot[0].n == 3
    assert per_slot[1].value == pytest.approx(1 / 3) and per_slot[1].n == 3


def test_ridge_recovers_a_linear_reward_model() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2_000, 4))
    y = 0.3 + z @ np.array([0.5, -1.0, 0.0, 2.0])
    fitted = RidgeRewardModel(alpha=1e-6).fit(z, y)
    assert np.allclose(fitted.coef_, [0.5, -1.0, 0.0, 2.0], atol=1e-6)
    assert fitted.intercept_ == pytest.approx(0.3, abs=1e-6)
    assert fitted.predict(z[:3][None]).shape == (1, 3)


def _ok() -> dict[str, object]:
    return {
        "reward": [1.0, 0.0],
        "propensity": [0.5, 0.25],
        "action": np.array([0, 1]),
        "target_pmf": [[0.5, 0.5], [0.2, 0.8]],
        "reward_prediction": [[0.1, 0.2], [0.3, 0.4]],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"propensity": [0.0, 0.25]}, r"^propensity: must be within \(0, 1\], got 0.0 at index \(0,\)"),
        ({"propensity": [0.5, 1.5]}, r"^propensity: must be within \(0, 1\], got 1.5 at index \(1,\)"),
        ({"propensity": [-0.1, 0.5]}, r"^propensity: must be within \(0, 1\]"),
        ({"propensity": [0.5]}, r"^propensity: has 1 entries, reward has 2"),
        ({"reward": [np.nan, 0.0]}, r"^reward: must be finite, got nan at index \(0,\)"),
        ({"reward": [[1.0, 0.0]]}, r"^reward: must be one-dimensional"),
        ({"reward": []}, r"^reward: must hold at least one decision"),
        ({"target_pmf": [[0.5, 0.5], [0.2, 0.9]]}, r"^target_pmf: must be within \[0, 1\], got 0.9|^target_pmf: row 1 sums to"),
        ({"target_pmf": [[0.5, 0.6], [0.2, 0.8]]}, r"^target_pmf: row 0 sums to 1.1"),
        ({"target_pmf": [[1.5, -0.5], [0.2, 0.8]]}, r"^target_pmf: must be within \[0, 1\], got 1.5 at index \(0, 0\)"),
        ({"target_pmf": [[0.5, 0.5]]}, r"^target_pmf: must have shape \(n, k\) with n = 2"),
        ({"reward_prediction": [[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]]}, r"^reward_prediction: shape \(2, 3\) differs"),
        ({"reward_prediction": [[0.1, np.inf], [0.3, 0.4]]}, r"^reward_prediction: must be finite, got inf at index \(0, 1\)"),
        ({"action": np.array([0, 2])}, r"^action: indices must be below target_pmf's 2 columns"),
        ({"action": np.array([0.0, 1.0])}, r"^action: must hold integers"),
        ({"action": np.array([-1, 1])}, r"^action: must be >= 0"),
        ({"target_probability": [0.5, 0.3]}, r"^target_probability: row 1 is 0.3 but target_pmf gives 0.8"),
        ({"target_pmf": None}, r"^target_probability: required unless target_pmf and action are given"),
        ({"slot": np.array([0, 1, 2])}, r"^slot: must have shape \(2,\)"),
    ],
)
def test_bad_input_names_the_argument(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        BanditFeedback(**{**_ok(), **change})  # type: ignore[arg-type]


def test_model_based_estimators_say_which_argument_they_need() -> None:
    feedback = BanditFeedback(reward=[1.0], propensity=[0.5], target_probability=[0.5])
    with pytest.raises(InvalidRequest, match="^target_pmf: required by DM"):
        DirectMethod().estimate(feedback)
    with pytest.raises(InvalidRequest, match="^target_pmf: required by DR"):
        DoublyRobust().estimate(feedback)
    with pytest.raises(InvalidRequest, match="^n_resamples: must be at least 2"):
        IPS().estimate(feedback, Bootstrap(n_resamples=1))
    with pytest.raises(InvalidRequest, match=r"^confidence: must be within \(0, 1\)"):
        IPS().estimate(feedback, Bootstrap(confidence=1.0))
