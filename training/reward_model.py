r"""The reward model of DM and DR: cross-fitted, calibrated predictions :math:`\hat q(x, a)`.

DM and DR need :math:`\hat q(x, a) \approx E[r \mid x, a]` for every candidate ``a`` of every
example, and their value is only as good as its calibration: DM of the logging policy is the
mean of :math:`\hat q` at the logged pmf, so a model that predicts twice the observed reward on
average reads twice the value. Three choices make :math:`\hat q` honest.

**The model follows the rewards.** With two reward values :math:`l < h` (a click, 0 or 1) the
target is :math:`z = (r - l)/(h - l) \in \{0, 1\}` and the model is a logistic regression,
:math:`\hat z = \sigma(w^\top \phi(x, a))` (VW ``--loss_function logistic --link logistic``,
labels :math:`\pm 1`), read back as :math:`\hat q = l + (h - l)\,\hat z`: it stays inside the
reward range and its loss, the cross-entropy, is proper for a probability. With more values
(summed rewards, purchase amounts) it is a squared-loss regression, :math:`\hat q = w^\top
\phi(x, a)`; with one value, that value. :math:`\phi` holds the (user, context, item) features
with the server's interactions (``-q UI -q CI``).

**Cross-fitting.** Events are split into ``folds`` interleaved folds; the models that predict a
fold never saw its rewards, so no example's prediction has seen its own reward.

**Calibration on rewards the model did not see.** VW's online fit is not calibrated where rewards
are rare: on the Open Bandit Dataset sample (random/all, 38 clicks in 10,000 impressions) the mean
prediction of a squared-loss model at the logged items was 0.6 to 2.5 times the click rate
depending only on the order of the training rows, and of a logistic one 0.5 to 1.6 times
depending on the learning rate (0.3 to 1.5 times fitted by BFGS with an L2 penalty, which also
pulls the intercept); calibrated as below it is 1.01 times. For each held-out fold the events of
the other folds are split into two interleaved halves :math:`A` and :math:`B`; :math:`f_A` is
fitted on :math:`A` and scores the logged items of :math:`B`, :math:`f_B` the other way round,
which gives an out-of-sample score :math:`s_i` for every training row. A map with the model's
own link :math:`g` (the logit, or the identity),

.. math:: c(s) = g^{-1}\bigl(\alpha + \beta\, g(s)\bigr), \qquad \beta \ge 0,

is fitted to those :math:`(s_i, z_i)` by the model's own loss (Platt scaling for the logistic
model, a least-squares line for the squared one), and the held-out fold gets
:math:`\hat q = \tfrac12\bigl(c(f_A) + c(f_B)\bigr)`: the map is applied to the very models whose
out-of-sample scores it was fitted on. Because :math:`\alpha` is free, its first-order condition
:math:`\sum_i \bigl(c(s_i) - z_i\bigr) = 0` makes the calibrated mean equal the observed mean on
those rows. :math:`\beta` keeps what the scores rank correctly and shrinks what they do not:
where the features do not predict the reward, :math:`\beta \to 0` and :math:`\hat q` tends to the
mean reward. A negative :math:`\beta` would reverse the ranking, so it is clamped to 0. The price
is that each model sees half the training rows, so where the features do predict the reward,
:math:`\hat q` is shrunk towards the mean more than one model on all of them would be. DR with the
logged propensities is unbiased whatever :math:`\hat q` is (:math:`\hat q` sets its variance), so
it stays the estimator to rank by; DM is as good as :math:`\hat q`.

References: J. Platt, *Probabilistic outputs for support vector machines* (1999), for the map and
its targets; V. Chernozhukov et al., *Double/debiased machine learning* (2018), for cross-fitting.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from engine.bandit import regression_line
from training.replay import SlotExample

FEATURE_ARGUMENTS = "-q UI -q CI -b 18 --quiet"
LOGISTIC_ARGUMENTS = "--loss_function logistic --link logistic"
PASSES = 5
_EDGE = 1e-9  # scores are kept this far inside (0, 1) before the logit


@dataclass(frozen=True)
class RewardScale:
    """Which model the rewards call for, and how a reward maps to its target ``z`` and back.

    ``kind`` is ``"binary"`` for exactly two reward values ``low < high`` (``z`` = 0 or 1),
    ``"continuous"`` for more (``z`` is the reward), ``"constant"`` for one (``low == high``).
    """

    kind: Literal["constant", "binary", "continuous"]
    low: float
    high: float

    @classmethod
    def of(cls, rewards: Sequence[float]) -> RewardScale:
        values = np.unique(np.asarray(rewards, dtype=float))
        if len(values) == 0:
            raise ValueError("rewards: at least one reward to fit a reward model on")
        kind: Literal["constant", "binary", "continuous"] = (
            "constant" if len(values) == 1 else "binary" if len(values) == 2 else "continuous")
        return cls(kind, float(values[0]), float(values[-1]))

    @property
    def logistic(self) -> bool:
        return self.kind == "binary"

    def target(self, rewards: np.ndarray) -> np.ndarray:
        return (rewards - self.low) / (self.high - self.low) if self.logistic else rewards

    def reward(self, targets: np.ndarray) -> np.ndarray:
        return self.low + (self.high - self.low) * targets if self.logistic else targets

    def label(self, reward: float) -> str:
        """The VW label of a training row: ±1 for the logistic model, the reward itself otherwise."""
        if self.logistic:
            return "1 " if reward == self.high else "-1 "
        return f"{reward!r} "

    def vw_arguments(self) -> str:
        return f"{FEATURE_ARGUMENTS} {LOGISTIC_ARGUMENTS}" if self.logistic else FEATURE_ARGUMENTS


@dataclass(frozen=True)
class Calibration:
    r"""The map :math:`c(s) = g^{-1}(\alpha + \beta\, g(s))`; ``g`` is the logit when ``logistic``."""

    logistic: bool
    intercept: float
    slope: float

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        if not self.logistic:
            return self.intercept + self.slope * scores
        return _sigmoid(self.intercept + self.slope * _logit(scores))


def fit_calibration(scores: np.ndarray, targets: np.ndarray, logistic: bool) -> Calibration:
    r"""Fit :class:`Calibration` to out-of-sample ``scores`` of rows with the given ``targets``.

    Squared model: least squares, :math:`\beta = \max(0, \operatorname{cov}(s, z) / \operatorname{var}(s))`,
    :math:`\alpha = \bar z - \beta \bar s`. Logistic model: Platt scaling, the cross-entropy of
    :math:`\sigma(\alpha + \beta\,\operatorname{logit} s)` against Platt's targets
    :math:`t_+ = (N_+ + 1)/(N_+ + 2)` and :math:`t_- = 1/(N_- + 2)` for the :math:`N_+` ones and
    :math:`N_-` zeros (finite even when a half holds no positive reward; the mean target differs
    from the mean reward by less than :math:`1/n`), minimised by Newton's method with step halving.
    If the best slope is negative, or the scores are all equal, the map is the constant mean (target).
    """
    scores, targets = np.asarray(scores, dtype=float), np.asarray(targets, dtype=float)
    if not logistic:
        covariance = float(np.mean((scores - scores.mean()) * (targets - targets.mean())))
        slope = max(0.0, covariance / scores.var()) if np.ptp(scores) else 0.0
        return Calibration(False, float(targets.mean() - slope * scores.mean()), slope)
    positives = targets.sum()
    platt = np.where(targets > 0.5, (positives + 1) / (positives + 2), 1 / (len(targets) - positives + 2))
    constant = Calibration(True, float(_logit(platt.mean())), 0.0)
    if not np.ptp(scores):
        return constant
    intercept, slope = _logistic_fit(_logit(scores), platt)
    return Calibration(True, intercept, slope) if slope >= 0 else constant


def _logistic_fit(x: np.ndarray, t: np.ndarray, steps: int = 100) -> tuple[float, float]:
    """Minimise the mean cross-entropy of σ(α + βx) against ``t`` (Newton, halving steps that do not descend)."""
    design = np.column_stack([np.ones_like(x), x])

    def loss(w: np.ndarray) -> float:
        z = design @ w
        return float(np.mean(np.logaddexp(0.0, z) - t * z))

    w = np.array([_logit(t.mean()), 0.0])
    for _ in range(steps):
        p = _sigmoid(design @ w)
        gradient = design.T @ (p - t) / len(t)
        hessian = design.T @ (design * (p * (1 - p))[:, None]) / len(t) + 1e-12 * np.eye(2)
        step, size, current = np.linalg.solve(hessian, gradient), 1.0, loss(w)
        while loss(w - size * step) > current and size > 1e-8:
            size /= 2
        w = w - size * step
        if np.abs(size * step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z), without overflow


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, _EDGE, 1 - _EDGE)
    return np.log(p) - np.log1p(-p)


# -- cross-fitting --------------------------------------------------------------------------------


def reward_predictions(examples: Sequence[SlotExample], workdir: Path, folds: int = 2) -> list[np.ndarray]:
    """Cross-fitted, calibrated reward predictions ``q(x, a)`` for every candidate of every example.

    The model is chosen from the rewards (:class:`RewardScale`), fitted and calibrated as the
    module docstring says; ``workdir`` holds VW's files while it runs.
    """
    scale = RewardScale.of([ex.reward for ex in examples])
    if scale.kind == "constant":
        return [np.full(len(ex.actions), scale.low) for ex in examples]
    workdir.mkdir(parents=True, exist_ok=True)
    fold_of = _interleaved([ex.event_id for ex in examples], folds)
    predictions: list[np.ndarray] = [np.empty(0)] * len(examples)
    for fold in range(folds):
        held_out = np.flatnonzero(fold_of == fold)
        training = np.flatnonzero(fold_of != fold)
        if len(held_out):
            fitted = _calibrated_fold(examples, training, held_out, scale, workdir, fold)
            for i, q in zip(held_out, fitted, strict=True):
                predictions[i] = q
    return predictions


def _calibrated_fold(examples: Sequence[SlotExample], training: np.ndarray, held_out: np.ndarray,
                     scale: RewardScale, workdir: Path, fold: int) -> list[np.ndarray]:
    """``q`` for every candidate of the ``held_out`` rows, from the two half models of ``training``."""
    half_of = _interleaved([examples[i].event_id for i in training], 2)
    halves = [training[half_of == h] for h in (0, 1)]
    if not all(len(h) for h in halves):  # too few events to split: the mean reward is all there is
        mean = float(np.mean([examples[i].reward for i in training])) if len(training) else 0.0
        return [np.full(len(examples[i].actions), mean) for i in held_out]
    models = [_fit(examples, rows, scale, workdir / f"reward-{fold}-{h}.vw", (fold, h))
              for h, rows in enumerate(halves)]
    scores = np.empty(len(training))
    for h, model in enumerate(models):  # each half model scores the other half's logged items
        other = half_of == 1 - h
        logged = _write((_logged_line(examples[i]) for i in training[other]), workdir / "logged.txt")
        scores[other] = _score(model, logged)
    rewards = np.array([examples[i].reward for i in training])
    calibrate = fit_calibration(scores, scale.target(rewards), scale.logistic)
    candidates = (regression_line(examples[i].shared, action) for i in held_out for action in examples[i].actions)
    data = _write(candidates, workdir / "candidates.txt")  # one line per candidate: it dwarfs the log
    q = scale.reward(np.mean([calibrate(_score(model, data)) for model in models], axis=0))
    for used in (logged, data, *models):
        used.unlink()
    offsets = np.cumsum([0] + [len(examples[i].actions) for i in held_out])
    return [q[offsets[j] : offsets[j + 1]] for j in range(len(held_out))]


def _fit(examples: Sequence[SlotExample], rows: np.ndarray, scale: RewardScale, model: Path,
         seed: tuple[int, int]) -> Path:
    """Fit the reward model on the logged items of ``rows`` by VW's driver, saved to ``model``.

    ``PASSES`` passes over the rows, shuffled once (seeded): in log order rewards arrive in runs —
    clicks become final at once, misses when their window closes — and an online learner would end
    up fitting the last run. VW's holdout is off: the calibration does not trust the fit anyway.
    """
    import vowpalwabbit

    order = np.random.default_rng(list(seed)).permutation(rows)
    lines = (_logged_line(examples[i], scale.label(examples[i].reward)) for i in order)
    data, cache = _write(lines, model.with_suffix(".txt")), model.with_suffix(".cache")
    passes = f"--passes {PASSES} --holdout_off --cache_file {cache} -k"
    vw = vowpalwabbit.Workspace(f"{scale.vw_arguments()} {passes} -d {data} -f {model}")
    vw.run_parser()
    vw.finish()
    for used in (data, cache):
        used.unlink()
    return model


def _score(model: Path, data: Path) -> np.ndarray:
    """The model's prediction for each line of ``data`` (a probability for the logistic model)."""
    import vowpalwabbit

    scores = data.with_suffix(".scores")
    vw = vowpalwabbit.Workspace(f"-i {model} -t --quiet -d {data} -p {scores}")
    vw.run_parser()
    vw.finish()
    with open(scores) as lines:
        values = np.array([float(line.split()[0]) for line in lines if line.strip()])
    scores.unlink()
    return values


def _logged_line(example: SlotExample, label: str = "") -> str:
    """The (context, logged item) row of ``example`` (:func:`engine.bandit.regression_line`)."""
    return regression_line(example.shared, example.actions[example.chosen], label)


def _write(lines: Iterable[str], path: Path) -> Path:
    with open(path, "w") as out:
        out.writelines(line + "\n" for line in lines)
    return path


def _interleaved(keys: Sequence[Hashable], parts: int) -> np.ndarray:
    """The part (0 … ``parts`` − 1) of each row: its key's order of first appearance, modulo ``parts``."""
    order = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return np.array([order[key] % parts for key in keys], dtype=int)
